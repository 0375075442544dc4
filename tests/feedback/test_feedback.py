"""Labels joined to logged predictions, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from passerelle import audit
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError, SchemaError
from passerelle.feedback import (
    FeedbackItem,
    ab_test,
    coverage,
    estimated_performance,
    label_lag,
    labelled,
    read_items,
    record_feedback,
    rejoin_unmatched,
    unmatched,
    window_performance,
)
from passerelle.settings import Settings
from tests.feedback.conftest import (
    ENDPOINT,
    T0,
    binary,
    deploy,
    new_id,
    prediction,
    register_version,
    ship,
)

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def test_labels_join_by_prediction_id(ctx: Context) -> None:
    ids = ship(ctx, [binary(0.8, at=T0), binary(0.3, at=T0 + HOUR), binary(0.6, at=T0 + 2 * HOUR)])

    result = record_feedback(
        ctx, ENDPOINT, [{"prediction_id": ids[0], "label": 1}, FeedbackItem(label=1, prediction_id=ids[1])]
    )

    assert (result.matched, result.updated, result.unknown, result.rejected) == (2, 0, [], [])
    frame = labelled(ctx, ENDPOINT, T0, T0 + DAY)
    assert frame["prediction_id"].tolist() == ids[:2]
    assert frame["label"].tolist() == [1, 1]
    assert frame["prediction"].tolist() == [1, 0]
    assert frame["proba_1"].tolist() == pytest.approx([0.8, 0.3])
    assert list(frame.columns) == [
        "prediction_id", "at", "model", "version", "prediction", "proba_0", "proba_1", "label", "label_at",
    ]  # fmt: skip
    assert (frame["label_at"] > frame["at"]).all()  # no time given: the time it was received
    everything = labelled(ctx, ENDPOINT, T0, T0 + DAY, include_unlabelled=True)
    assert len(everything) == 3
    assert everything["label"].isna().tolist() == [False, False, True]


def test_a_label_by_key_joins_the_latest_prediction_made_at_or_before_its_time(ctx: Context) -> None:
    first, second, third = ship(
        ctx,
        [
            binary(0.9, at=T0, key="C-1"),
            binary(0.2, at=T0 + DAY, key="C-1"),
            binary(0.7, at=T0 + 3 * DAY, key="C-1"),
        ],
    )
    ship(ctx, [binary(0.4, at=T0 + 2 * DAY, key="C-2")])

    result = record_feedback(
        ctx,
        ENDPOINT,
        [
            {"key": "C-1", "label": 0, "time": T0 + 2 * DAY},  # between the 2nd and 3rd
            {"key": "C-1", "label": 1, "time": (T0 + 3 * DAY).isoformat()},  # exactly at the 3rd
            {"key": "C-1", "label": 1, "time": T0 - HOUR},  # before any prediction of C-1
            {"key": "C-2", "label": 1},  # no time: now, so the latest
        ],
    )

    assert (result.matched, result.updated) == (3, 0)
    assert [(u.index, u.key) for u in result.unknown] == [(2, "C-1")]
    assert "no prediction with key 'C-1' at or before 2026-03-02T08:00:00+00:00" in result.unknown[0].reason
    frame = labelled(ctx, ENDPOINT).set_index("prediction_id")
    assert frame.loc[second, "label"] == 0
    assert frame.loc[third, "label"] == 1
    assert first not in frame.index
    assert len(frame) == 3


def test_late_labels_change_the_figures_of_the_window_they_belong_to(ctx: Context) -> None:
    day1 = ship(ctx, [binary(p, at=T0 + i * HOUR) for i, p in enumerate([0.9, 0.8, 0.2, 0.1])])
    day2 = ship(ctx, [binary(p, at=T0 + DAY + i * HOUR) for i, p in enumerate([0.9, 0.7, 0.3, 0.4])])
    # Day 2's labels come quickly: three right, one wrong.
    record_feedback(
        ctx, ENDPOINT, [{"prediction_id": i, "label": y} for i, y in zip(day2, [1, 1, 0, 1], strict=True)]
    )

    def accuracy() -> dict[pd.Timestamp, float]:
        figures = window_performance(ctx, ENDPOINT, T0, T0 + 2 * DAY, every="1D")
        rows = figures[figures["metric"] == "accuracy"]
        return dict(zip(rows["window_start"], rows["value"], strict=True))

    before = accuracy()
    assert before == {pd.Timestamp(T0.date(), tz="UTC") + DAY: 0.75}

    # Day 1's labels arrive five days late, given with their real time.
    late = [
        {"prediction_id": i, "label": y, "time": T0 + 5 * DAY}
        for i, y in zip(day1, [1, 0, 0, 0], strict=True)
    ]
    record_feedback(ctx, ENDPOINT, late)
    after = accuracy()
    assert after[pd.Timestamp(T0.date(), tz="UTC")] == 0.75
    assert after[pd.Timestamp(T0.date(), tz="UTC") + DAY] == 0.75

    # A correction to day 1 moves day 1 only.
    record_feedback(ctx, ENDPOINT, [{"prediction_id": day1[1], "label": 1}])
    corrected = accuracy()
    assert corrected[pd.Timestamp(T0.date(), tz="UTC")] == 1.0
    assert corrected[pd.Timestamp(T0.date(), tz="UTC") + DAY] == 0.75
    figures = window_performance(ctx, ENDPOINT, T0, T0 + 2 * DAY, every="1D")
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "calibration_error"} <= set(
        figures["metric"]
    )
    assert set(figures["n"][figures["metric"] == "accuracy"]) == {4}


def test_duplicates_the_last_wins_and_every_change_is_audited(ctx: Context) -> None:
    one, two = ship(ctx, [binary(0.8, at=T0), binary(0.6, at=T0)])
    record_feedback(ctx, ENDPOINT, [{"prediction_id": one, "label": 0}])

    again = record_feedback(
        ctx,
        ENDPOINT,
        [
            {"prediction_id": one, "label": 1},
            {"prediction_id": two, "label": 0},
            {"prediction_id": two, "label": 1},  # the same batch: still the last one wins
        ],
        reason="labels corrected by the retention team",
    )
    same = record_feedback(ctx, ENDPOINT, [{"prediction_id": two, "label": 1}])

    assert (again.matched, again.updated) == (3, 2)
    assert (same.matched, same.updated) == (1, 0)  # the same label again changes nothing
    frame = labelled(ctx, ENDPOINT).set_index("prediction_id")
    assert frame.loc[one, "label"] == 1
    assert frame.loc[two, "label"] == 1
    relabels = audit.list_entries(ctx.store, action="feedback.relabel")
    assert sorted(e.target for e in relabels) == sorted([f"{ENDPOINT}:{one}", f"{ENDPOINT}:{two}"])
    by_target = {e.target: e for e in relabels}
    entry = by_target[f"{ENDPOINT}:{one}"]
    assert entry.before is not None
    assert entry.after is not None
    assert (entry.before["label"], entry.after["label"]) == (0, 1)
    assert entry.actor == "tester"
    assert by_target[f"{ENDPOINT}:{two}"].before["label"] == 0  # type: ignore[index]
    summaries = audit.list_entries(ctx.store, action="feedback.record", target=ENDPOINT)
    assert [s.after["updated"] for s in summaries] == [0, 2, 0]  # type: ignore[index]
    assert summaries[1].reason == "labels corrected by the retention team"


def test_unknown_ids_are_reported_kept_and_joined_once_the_prediction_ships(ctx: Context) -> None:
    shipped = ship(ctx, [binary(0.7, at=T0)])
    late_id, other_id = new_id(), new_id()

    result = record_feedback(
        ctx,
        ENDPOINT,
        [
            {"prediction_id": shipped[0], "label": 1},
            {"prediction_id": late_id, "label": 0},
            {"key": "C-9", "label": 1, "time": T0 + HOUR},
            {"prediction_id": other_id, "label": 0},
        ],
    )

    assert result.matched == 1
    assert [(u.index, u.prediction_id, u.key) for u in result.unknown] == [
        (1, late_id, None),
        (2, None, "C-9"),
        (3, other_id, None),
    ]
    assert result.unknown[0].reason == "no prediction with this id (yet)"
    kept = unmatched(ctx, ENDPOINT)
    assert [(k.prediction_id, k.key, k.label, k.status) for k in kept] == [
        (late_id, None, 0, "waiting"),
        (None, "C-9", 1, "waiting"),
        (other_id, None, 0, "waiting"),
    ]
    assert rejoin_unmatched(ctx, ENDPOINT) == 0  # nothing shipped yet

    # The prediction log ships: two of the three predictions reach the database.
    ship(ctx, [binary(0.2, at=T0, pid=late_id), binary(0.9, at=T0 + 30 * dt.timedelta(minutes=1), key="C-9")])
    # Meanwhile a newer label for late_id was sent directly: it must stay the winner.
    record_feedback(ctx, ENDPOINT, [{"prediction_id": late_id, "label": 1}])

    assert rejoin_unmatched(ctx, ENDPOINT) == 2
    frame = labelled(ctx, ENDPOINT).set_index("prediction_id")
    assert frame.loc[late_id, "label"] == 1
    assert len(frame) == 3
    assert [k.prediction_id for k in unmatched(ctx, ENDPOINT)] == [other_id]
    rejoins = audit.list_entries(ctx.store, action="feedback.rejoin", target=ENDPOINT)
    assert rejoins[0].after == {"joined": 2, "updated": 0, "superseded": 1, "invalid": 0}


def test_a_kept_label_that_does_not_fit_its_prediction_is_marked_invalid(ctx: Context) -> None:
    waiting = new_id()
    ship(ctx, [binary(0.5, at=T0)])
    record_feedback(ctx, ENDPOINT, [{"prediction_id": waiting, "label": "churned"}])
    ship(ctx, [binary(0.5, at=T0, pid=waiting)])

    assert rejoin_unmatched(ctx, ENDPOINT) == 0
    [kept] = unmatched(ctx, ENDPOINT)
    assert kept.status == "invalid"
    assert "does not fit churn:1, which predicts integer classes" in kept.reason
    assert rejoin_unmatched(ctx, ENDPOINT) == 0  # not retried


def test_labels_of_the_wrong_type_are_refused_naming_the_row(ctx: Context) -> None:
    ids = ship(ctx, [binary(0.8, at=T0), binary(0.3, at=T0), binary(0.3, at=T0)])
    items: list[dict[str, Any]] = [
        {"prediction_id": ids[0], "label": 1},
        {"prediction_id": ids[1], "label": "yes"},
        {"prediction_id": ids[2], "label": 2},
    ]

    with pytest.raises(SchemaError) as caught:
        record_feedback(ctx, ENDPOINT, items)

    message = str(caught.value)
    assert message.startswith("2 feedback rows refused: ")
    assert "row 1: label 'yes' (str) does not fit churn:1, which predicts integer classes" in message
    assert "row 2: label 2 is not one of the classes of churn:1 (0, 1)" in message
    assert [p["row"] for p in caught.value.problems] == [1, 2]
    assert isinstance(caught.value, InvalidInputError)
    assert labelled(ctx, ENDPOINT).empty  # nothing of a refused batch is stored

    result = record_feedback(ctx, ENDPOINT, items, on_invalid="reject")
    assert result.matched == 1
    assert [i for i, _ in result.rejected] == [1, 2]
    # A whole number given as 1.0 (JSON, CSV) is the class 1.
    assert record_feedback(ctx, ENDPOINT, [{"prediction_id": ids[1], "label": 0.0}]).matched == 1
    assert labelled(ctx, ENDPOINT)["label"].tolist() == [1, 0]


def test_label_types_follow_the_registered_output_schema(ctx: Context) -> None:
    register_version(ctx, "churn", 7, {"prediction": "string", "proba": True, "classes": ["no", "yes"]})
    register_version(ctx, "spend", 1, {"prediction": "float", "proba": False, "classes": None})
    text = ship(ctx, [prediction(at=T0, version=7, prediction="yes", proba={"no": 0.1, "yes": 0.9})])[0]
    amount = ship(ctx, [prediction(at=T0, model="spend", prediction=12.5)])[0]

    with pytest.raises(
        SchemaError, match=r"row 0: label 1 \(int\) does not fit churn:7, which predicts text"
    ):
        record_feedback(ctx, ENDPOINT, [{"prediction_id": text, "label": 1}])
    with pytest.raises(SchemaError, match=r"row 0: label 'Yes' is not one of the classes of churn:7"):
        record_feedback(ctx, ENDPOINT, [{"prediction_id": text, "label": "Yes"}])
    with pytest.raises(
        SchemaError, match=r"label 'high' \(str\) does not fit spend:1, which predicts numeric"
    ):
        record_feedback(ctx, ENDPOINT, [{"prediction_id": amount, "label": "high"}])

    record_feedback(
        ctx, ENDPOINT, [{"prediction_id": text, "label": "yes"}, {"prediction_id": amount, "label": 14}]
    )
    spend = labelled(ctx, ENDPOINT, model="spend")
    assert spend["label"].tolist() == [14.0]
    assert spend["label"].dtype == np.float64


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"label": 1}, "give either prediction_id or key"),
        ({"prediction_id": "x", "key": "C-1", "label": 1}, "give either prediction_id or key"),
        ({"prediction_id": "x"}, "label is missing"),
        ({"prediction_id": "x", "label": None}, "label is missing"),
        ({"prediction_id": "x", "label": [1, 2]}, "must be a single value"),
        ({"prediction_id": "x", "label": 1, "time": "2026-03-01T10:00:00"}, "has no time zone"),
        ({"prediction_id": "x", "label": 1, "time": "yesterday"}, "is not an ISO 8601"),
        ({"prediction_id": "x" * 41, "label": 1}, "is not a prediction id"),
        ({"prediction_id": "x", "label": 1, "score": 3}, "unknown field(s) score"),
    ],
)
def test_malformed_items_are_refused_naming_the_row(
    tmp_path: Path, item: dict[str, object], reason: str
) -> None:
    offline = Context(Settings(home=tmp_path / "home"))
    with pytest.raises(SchemaError) as caught:
        record_feedback(offline, ENDPOINT, [{"key": "C-0", "label": 1}, item])
    assert "store" not in offline.__dict__  # refused before the database is opened
    message = str(caught.value)
    assert message.startswith("1 feedback row refused: row 1: ")
    assert reason in message


def test_a_prediction_of_another_endpoint_is_refused_and_unknown_endpoints_are_errors(ctx: Context) -> None:
    elsewhere = ship(ctx, [binary(0.5, at=T0, endpoint="fraud-api")])[0]
    ship(ctx, [binary(0.5, at=T0)])
    with pytest.raises(SchemaError, match="was answered by endpoint 'fraud-api', not 'churn-api'"):
        record_feedback(ctx, ENDPOINT, [{"prediction_id": elsewhere, "label": 1}])
    with pytest.raises(NotFoundError, match="endpoint 'nope' does not exist"):
        record_feedback(ctx, "nope", [{"prediction_id": elsewhere, "label": 1}])


def test_coverage_and_label_lag(ctx: Context) -> None:
    ids = ship(ctx, [binary(0.5, at=T0 + i * HOUR) for i in range(10)])
    lags = [1, 2, 3, 10]
    record_feedback(
        ctx,
        ENDPOINT,
        [{"prediction_id": ids[i], "label": 1, "time": T0 + i * HOUR + h * HOUR} for i, h in enumerate(lags)],
    )

    cov = coverage(ctx, ENDPOINT, T0, T0 + DAY)
    assert (cov.predictions, cov.labelled, cov.ratio) == (10, 4, 0.4)
    assert coverage(ctx, ENDPOINT, T0 + 2 * HOUR, T0 + 6 * HOUR).ratio == 0.5
    assert math.isnan(coverage(ctx, ENDPOINT, T0 + 2 * DAY, T0 + 3 * DAY).ratio)
    assert coverage(ctx, ENDPOINT, T0, T0 + DAY, model="churn", version=2).predictions == 0

    lag = label_lag(ctx, ENDPOINT, T0, T0 + DAY)
    hours = np.array(lags, dtype=float) * 3600
    assert lag.count == 4
    assert lag.p50_s == pytest.approx(np.percentile(hours, 50))
    assert lag.p90_s == pytest.approx(np.percentile(hours, 90))
    assert lag.p99_s == pytest.approx(np.percentile(hours, 99))
    assert lag.mean_s == pytest.approx(hours.mean())
    assert lag.max_s == 36000.0
    assert label_lag(ctx, ENDPOINT, T0, T0 + DAY, model="churn", version=1).count == 4
    assert label_lag(ctx, ENDPOINT, T0 + 2 * DAY).count == 0


def test_feedback_from_a_csv_file(ctx: Context, tmp_path: Path) -> None:
    ids = ship(ctx, [binary(0.8, at=T0), binary(0.3, at=T0, key="00042")])
    path = tmp_path / "labels.csv"
    path.write_text(f"prediction_id,key,label\n{ids[0]},,1\n,00042,0\n")

    items = read_items(path)

    assert items == [FeedbackItem(label=1, prediction_id=ids[0]), FeedbackItem(label=0, key="00042")]
    assert record_feedback(ctx, ENDPOINT, items).matched == 2


def test_ab_verdict_between_the_two_routes_of_an_endpoint(ctx: Context) -> None:
    deploy(ctx, ENDPOINT, [("churn", 1, 70), ("churn", 2, 30)])
    rng = np.random.default_rng(4)
    rows, labels = [], []
    for i in range(1400):
        version = 1 if i % 2 else 2
        right = rng.random() < (0.65 if version == 1 else 0.9)
        label = int(rng.random() < 0.5)
        p1 = 0.8 if (label == 1) == right else 0.2
        row = binary(p1, at=T0 + i * dt.timedelta(minutes=1), version=version)
        rows.append(row)
        labels.append({"prediction_id": row.id, "label": label})
    ship(ctx, rows)

    early = ab_test(ctx, ENDPOINT, T0, T0 + DAY)
    assert early.verdict == "not enough data yet"
    assert early.message.startswith("not enough data yet (about ")

    record_feedback(ctx, ENDPOINT, labels)
    verdict = ab_test(ctx, ENDPOINT, T0, T0 + DAY, mde=0.05)
    assert (verdict.a_ref, verdict.b_ref) == ("churn:1", "churn:2")
    assert verdict.verdict == "B better"
    assert verdict.low > 0
    assert "mSPRT" in verdict.test
    assert str(verdict).startswith("B better: accuracy")
    auc = ab_test(ctx, ENDPOINT, T0, T0 + DAY, metric="roc_auc", mde=0.15, design="fixed")
    assert auc.verdict == "B better"
    assert "DeLong" in auc.test
    with pytest.raises(InvalidInputError, match="cannot compare churn:1 with itself"):
        ab_test(ctx, ENDPOINT, a="churn:1", b="churn:1")


def test_estimated_performance_before_labels_and_the_gap_once_they_land(ctx: Context) -> None:
    rng = np.random.default_rng(7)

    def traffic(start: dt.datetime, n: int) -> tuple[list[str], list[int]]:
        x = rng.normal(size=n)
        truth = (rng.random(n) < 1 / (1 + np.exp(-1.5 * x))).astype(int)
        model_p = 1 / (1 + np.exp(-3.0 * x))  # overconfident
        rows = [binary(float(p), at=start + i * dt.timedelta(seconds=30)) for i, p in enumerate(model_p)]
        return ship(ctx, rows), truth.tolist()

    ref_ids, ref_truth = traffic(T0, 1500)
    new_ids, new_truth = traffic(T0 + DAY, 1500)
    record_feedback(
        ctx, ENDPOINT, [{"prediction_id": i, "label": y} for i, y in zip(ref_ids, ref_truth, strict=True)]
    )

    report = estimated_performance(ctx, ENDPOINT, T0 + DAY, T0 + 2 * DAY, model="churn", version=1)
    assert (report.calibration, report.reference_rows) == ("isotonic", 1500)
    accuracy = {f.name: f for f in report.figures}["accuracy"]
    assert accuracy.estimated.estimated
    assert accuracy.realized is None
    assert math.isnan(accuracy.gap)

    record_feedback(
        ctx, ENDPOINT, [{"prediction_id": i, "label": y} for i, y in zip(new_ids, new_truth, strict=True)]
    )
    report = estimated_performance(ctx, ENDPOINT, T0 + DAY, T0 + 2 * DAY, model="churn", version=1)
    accuracy = {f.name: f for f in report.figures}["accuracy"]
    assert accuracy.realized is not None
    assert accuracy.labelled == 1500
    assert abs(accuracy.gap) < 0.04

    none = estimated_performance(ctx, ENDPOINT, T0, T0 + DAY, model="churn", version=1)
    assert none.calibration == "none: 0 labelled reference rows, 200 needed"
