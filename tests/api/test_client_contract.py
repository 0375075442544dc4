"""One client contract, run against both kinds of client.

Every test takes ``any_kind_client``: a :class:`LocalClient` on a fresh store, then a
:class:`RemoteClient` talking to a real server on a fresh store. Exact messages are
asserted, so an error says the same thing whichever way the store is reached.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from passerelle.alerts import RuleSpec
from passerelle.api.app import create_app
from passerelle.api.endpoints import router as endpoints_router
from passerelle.client import Client, LocalClient
from passerelle.context import Context
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    PasserelleError,
    SchemaError,
    TrustRequiredError,
    UnknownFlavorError,
)
from passerelle.feedback import FeedbackItem, FeedbackResult, UnknownFeedback
from passerelle.monitor import RunSummary, floor_time, parse_spec
from passerelle.pipelines import Evaluation, Pipeline, Scheduler, TrainStep
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from tests.api.conftest import serve, settings_for
from tests.api.models import Shift
from tests.conftest import free_port
from tests.feedback.conftest import ENDPOINT, T0, binary, deploy, new_id, ship
from tests.helpers import small_frame, small_model


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    frame, label = small_frame()
    path = tmp_path / "train.parquet"
    frame.assign(churned=label).to_parquet(path, index=False)
    return path


def test_register_an_object_with_sample_metrics_params_tags_and_dataset(
    any_kind_client: Client, train_file: Path
) -> None:
    model, frame = small_model()
    dataset = any_kind_client.register_dataset(train_file, "churn-train", reason="training data")

    info = any_kind_client.register(
        model,
        "churn",
        sample=frame,
        metrics={"auc": np.float64(0.91)},
        params={"C": 1.0, "solver": "lbfgs"},
        tags={"team": "retention"},
        dataset="churn-train",
        description="first try",
        reason="weekly retrain",
    )

    assert (info.ref, info.model, info.number, info.flavor) == ("churn:1", "churn", 1, "sklearn")
    assert info.metrics == {"auc": 0.91}
    assert info.params == {"C": 1.0, "solver": "lbfgs"}
    assert info.tags == {"team": "retention"}
    assert info.dataset == "churn-train:1"
    assert info.lineage["dataset_fingerprint"] == dataset.fingerprint
    assert info.description == "first try"
    assert info.created_by == "tester"
    assert info.signature is not None
    assert [c["name"] for c in info.signature["columns"]] == ["age", "income", "score"]
    assert info.signature["format"] == "table"
    assert info.output_schema is not None
    assert info.output_schema["classes"] == [0, 1]
    assert info.environment["packages"]["scikit-learn"]
    assert [(f.path, len(f.sha256)) for f in info.files] == [("model.skops", 64)]
    assert not info.trusted
    assert any_kind_client.get_version("churn:1") == info


def test_register_a_file_and_a_numpy_sample(any_kind_client: Client, tmp_path: Path) -> None:
    frame, labels = small_frame()
    model = LogisticRegression(max_iter=500).fit(frame.to_numpy(), labels)
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)

    info = any_kind_client.register(path, "churn", sample=frame.to_numpy())

    assert info.flavor == "sklearn"
    assert info.lineage["source"] == str(path.resolve())
    assert info.signature is not None
    assert info.signature["format"] == "array"
    assert [c["name"] for c in info.signature["columns"]] == ["x0", "x1", "x2"]


def test_register_a_code_reference(any_kind_client: Client) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    info = any_kind_client.register("tests.api.models:double", "doubler", sample=frame)
    assert info.flavor == "python"
    np.testing.assert_allclose(any_kind_client.load("doubler").predict(frame), [8.0, 12.0])


def test_loaded_model_predicts_like_the_original(any_kind_client: Client) -> None:
    model, frame = small_model()
    any_kind_client.register(model, "churn", sample=frame)
    any_kind_client.set_alias("churn", "champion", 1)

    for ref in ("churn:1", "churn@champion", "churn", "churn:1"):  # the second load of churn:1 is cached
        loaded = any_kind_client.load(ref)
        assert loaded.info.ref == "churn:1"
        np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
        np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))

    with pytest.raises(SchemaError, match="column 'income'") as caught:
        loaded.predict(frame.drop(columns=["income"]))
    assert caught.value.problems


def test_models_and_versions_are_listed_and_shown(any_kind_client: Client) -> None:
    model, frame = small_model()
    assert any_kind_client.list_models() == []
    any_kind_client.register(model, "churn", sample=frame)
    any_kind_client.register(model, "churn", metrics={"auc": 0.5})
    any_kind_client.register(model, "attrition")

    models = any_kind_client.list_models()
    assert [(m.name, m.versions, m.latest) for m in models] == [("attrition", 1, 1), ("churn", 2, 2)]
    info, versions = any_kind_client.get_model("churn")
    assert info.name == "churn"
    assert [v.ref for v in versions] == ["churn:1", "churn:2"]
    assert any_kind_client.get_version("churn").number == 2
    assert any_kind_client.get_version(" churn:1 ").number == 1


def test_aliases_are_set_moved_and_removed(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.register(model, "churn")

    assert any_kind_client.set_alias("churn", "champion", 1, reason="launch").aliases == ["champion"]
    assert any_kind_client.get_version("churn@champion").number == 1
    moved = any_kind_client.set_alias("churn", "champion", 2)
    assert (moved.number, moved.aliases) == (2, ["champion"])
    assert any_kind_client.get_model("churn")[0].aliases == {"champion": 2}

    any_kind_client.remove_alias("churn", "champion", reason="retired")
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_version("churn@champion")
    assert str(caught.value) == "alias churn@champion does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.remove_alias("churn", "champion")
    assert str(caught.value) == "alias churn@champion does not exist"
    with pytest.raises(InvalidInputError) as reserved:
        any_kind_client.set_alias("churn", "latest", 1)
    assert str(reserved.value) == "alias 'latest' is reserved; choose a name such as 'champion'"


def test_tags_are_set_and_removed(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn", tags={"team": "risk"})

    info = any_kind_client.set_tags("churn:1", {"stage": "review", "n": np.int64(3)}, reason="review")
    assert info.tags == {"team": "risk", "stage": "review", "n": 3}
    info = any_kind_client.set_tags("churn:1", remove=["team"])
    assert info.tags == {"stage": "review", "n": 3}
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.set_tags("churn:1", remove=["team"])
    assert str(caught.value) == "version churn:1 has no tag 'team'"


def test_archiving_and_restoring(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.register(model, "churn")

    assert any_kind_client.set_archived("churn:2", True, reason="superseded").archived
    assert any_kind_client.get_version("churn").number == 1
    assert any_kind_client.get_model("churn")[0].latest == 1
    assert any_kind_client.load("churn:2").info.archived  # still loadable by number
    assert not any_kind_client.set_archived("churn:2", False).archived
    assert any_kind_client.get_version("churn").number == 2


def test_archiving_an_aliased_version_is_a_conflict(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.set_alias("churn", "champion", 1)

    with pytest.raises(ConflictError) as caught:
        any_kind_client.set_archived("churn@champion", True)

    assert str(caught.value) == (
        "cannot archive churn:1: alias @champion points to it; move or remove the alias first"
    )
    assert not any_kind_client.get_version("churn:1").archived


def test_datasets_are_registered_listed_and_shown(any_kind_client: Client, train_file: Path) -> None:
    first = any_kind_client.register_dataset(train_file, "churn-train", tags={"source": "crm"})
    assert (first.ref, first.created, first.format, first.rows) == ("churn-train:1", True, "parquet", 200)
    assert first.fingerprint.startswith("sha256:")
    assert first.tags == {"source": "crm"}
    assert [c["name"] for c in first.signature["columns"]] == ["age", "income", "score", "churned"]
    assert "income" in first.profile["columns"]

    again = any_kind_client.register_dataset(train_file, "churn-train")
    assert (again.ref, again.created) == ("churn-train:1", False)

    csv = train_file.with_suffix(".csv")
    pd.read_parquet(train_file).head(50).to_csv(csv, index=False)
    second = any_kind_client.register_dataset(csv, "churn-train")
    assert (second.ref, second.format, second.rows) == ("churn-train:2", "csv", 50)

    assert [(d.name, d.versions, d.latest) for d in any_kind_client.list_datasets()] == [
        ("churn-train", 2, 2)
    ]
    assert any_kind_client.get_dataset("churn-train").number == 2
    assert any_kind_client.get_dataset("churn-train:1").fingerprint == first.fingerprint
    assert [v.ref for v in any_kind_client.dataset_versions("churn-train")] == [
        "churn-train:1",
        "churn-train:2",
    ]


def test_dataset_errors(any_kind_client: Client, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_dataset("nope")
    assert str(caught.value) == "dataset 'nope' does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.dataset_versions("nope")
    assert str(caught.value) == "dataset 'nope' does not exist"
    with pytest.raises(InvalidReferenceError) as bad:
        any_kind_client.get_dataset("churn-train@champion")
    assert str(bad.value) == "invalid dataset reference 'churn-train@champion': expected NAME or NAME:VERSION"
    missing = tmp_path / "missing.csv"
    with pytest.raises(InvalidInputError) as unreadable:
        any_kind_client.register_dataset(missing, "churn-train")
    assert str(unreadable.value) == f"cannot read {missing}: no such file"
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="as parquet"):
        any_kind_client.register_dataset(garbage, "churn-train")
    assert any_kind_client.list_datasets() == []


def test_audit_records_every_change(any_kind_client: Client) -> None:
    model, _ = small_model()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    any_kind_client.register(model, "churn", reason="first")
    any_kind_client.set_alias("churn", "champion", 1, reason="launch")
    any_kind_client.set_tags("churn:1", {"stage": "prod"})

    entries = any_kind_client.audit(since=start)
    assert [e.action for e in entries] == ["version.tags", "alias.set", "version.register", "model.create"]
    assert {e.actor for e in entries} == {"tester"}
    assert entries[1].target == "churn@champion"
    assert entries[1].after == {"version": 1}
    assert entries[1].reason == "launch"
    assert entries[2].after is not None
    assert entries[2].after["flavor"] == "sklearn"
    assert [e.action for e in any_kind_client.audit(action="alias.set")] == ["alias.set"]
    assert [e.action for e in any_kind_client.audit(target="churn", limit=2)] == [
        "version.tags",
        "version.register",
    ]
    assert any_kind_client.audit(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []


def test_doctor_and_gc(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")

    report = any_kind_client.doctor()

    assert report.ok
    assert report.versions_checked == 1
    assert report.schema_revision
    assert report.orphans == []
    assert any_kind_client.gc(dry_run=True) == []
    assert any_kind_client.gc() == []


def test_not_found_says_the_same_thing(any_kind_client: Client) -> None:
    for call, message in (
        (lambda: any_kind_client.get_model("nope"), "model 'nope' does not exist"),
        (lambda: any_kind_client.get_version("nope:1"), "model 'nope' does not exist"),
        (lambda: any_kind_client.load("nope"), "model 'nope' does not exist"),
        (lambda: any_kind_client.set_tags("nope:1", {"a": 1}), "model 'nope' does not exist"),
        (lambda: any_kind_client.set_alias("nope", "champion", 1), "model 'nope' does not exist"),
    ):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert str(caught.value) == message
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_version("churn:7")
    assert str(caught.value) == "version churn:7 does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.register(model, "churn", dataset="nope")
    assert str(caught.value) == "dataset 'nope' does not exist"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            "churn:x",
            "invalid model reference 'churn:x': the version after ':' must be a positive whole number",
        ),
        (
            "churn@1",
            "invalid model reference 'churn@1': the alias after '@' must be a name such as 'champion'",
        ),
        ("a/b", "invalid model reference 'a/b': expected NAME, NAME:VERSION or NAME@ALIAS"),
        ("..", "invalid model reference '..': expected NAME, NAME:VERSION or NAME@ALIAS"),
    ],
)
def test_bad_references_are_refused(any_kind_client: Client, ref: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        any_kind_client.get_version(ref)
    assert str(caught.value) == message


def test_bad_registrations_are_refused(any_kind_client: Client) -> None:
    model, frame = small_model()
    with pytest.raises(InvalidReferenceError, match="invalid model name 'bad name'"):
        any_kind_client.register(model, "bad name")
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", metrics={"auc": float("nan")})
    assert str(caught.value) == "metric 'auc' must be finite, got nan"
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", metrics={"auc": "high"})
    assert str(caught.value) == "metric 'auc' must be a number, got 'high'"
    with pytest.raises(InvalidInputError, match="the model rejects the sample"):
        any_kind_client.register(model, "churn", sample=frame.drop(columns=["score"]))
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", closed=["age"])
    assert str(caught.value) == "closed columns need a sample to infer the signature from"
    with pytest.raises(UnknownFlavorError):
        any_kind_client.register(model, "churn", flavor="nope")
    assert any_kind_client.list_models() == []


def test_closed_columns_are_enforced_after_loading(any_kind_client: Client) -> None:
    frame = pd.DataFrame({"plan": ["basic", "premium"] * 10, "usage": np.linspace(0, 1, 20)})

    info = any_kind_client.register(
        "tests.api.models:usage_times_two", "usage", sample=frame, closed=["plan"]
    )

    assert info.signature is not None
    plan = next(c for c in info.signature["columns"] if c["name"] == "plan")
    assert plan["closed"]
    assert sorted(plan["categories"]) == ["basic", "premium"]
    loaded = any_kind_client.load("usage")
    np.testing.assert_allclose(loaded.predict(frame.head(2)), frame["usage"].head(2) * 2)
    with pytest.raises(SchemaError, match="column 'plan'"):
        loaded.predict(pd.DataFrame({"plan": ["gold"], "usage": [0.5]}))


def test_trust_is_required_for_foreign_code(any_kind_client: Client) -> None:
    frame, labels = small_frame()
    model = make_pipeline(Shift(1.0), LogisticRegression(max_iter=500)).fit(frame, labels)

    with pytest.raises(TrustRequiredError) as caught:
        any_kind_client.register(model, "custom", sample=frame)
    assert str(caught.value) == (
        "loading this model would trust code outside scikit-learn and numpy: tests.api.models.Shift; "
        "register it with trust=True (--trust) if you vouch for it"
    )
    assert any_kind_client.list_models() == []

    info = any_kind_client.register(model, "custom", sample=frame, trust=True)
    assert info.trusted
    assert info.untrusted == ["tests.api.models.Shift"]
    np.testing.assert_array_equal(any_kind_client.load("custom:1").predict(frame), model.predict(frame))


# -- feedback: its routes are served with the endpoints' (`passerelle serve`) -------------------


@pytest.fixture(params=["local", "remote"])
def labelling(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Client, Context]]:
    """Each kind of client, and the store behind it, where churn-api's predictions are logged."""
    settings = settings_for(tmp_path / "server")
    local = LocalClient(settings)
    with local:
        deploy(local.ctx, ENDPOINT, [("churn", 1, 100)])
        if request.param == "local":
            yield local, local.ctx
            return
        with (
            serve(create_app(settings, routers=[endpoints_router])) as url,
            RemoteClient(Settings(home=tmp_path / "client", url=url)) as remote,
        ):
            yield remote, local.ctx


def test_feedback_joins_by_id_and_by_key_and_keeps_unknown_labels(labelling: tuple[Client, Context]) -> None:
    client, ctx = labelling
    ids = ship(
        ctx,
        [
            binary(0.8, at=T0),
            binary(0.3, at=T0, key="C-1"),
            binary(0.9, at=T0 + dt.timedelta(hours=3), key="C-1"),
        ],
    )
    ghost = new_id()

    result = client.record_feedback(
        ENDPOINT,
        [
            FeedbackItem(label=1, prediction_id=ids[0]),
            {"key": "C-1", "label": np.int64(0), "time": T0 + dt.timedelta(hours=1)},
            {"prediction_id": ghost, "label": 1},
        ],
        reason="weekly labels",
    )

    assert result == FeedbackResult(
        2, 0, [UnknownFeedback(2, ghost, None, "no prediction with this id (yet)")]
    )
    assert client.record_feedback(ENDPOINT, [{"id": ids[1], "label": 1}]) == FeedbackResult(1, 1)
    assert client.record_feedback(ENDPOINT, []) == FeedbackResult(0, 0)
    calls = client.audit(action="feedback.record")
    assert [(e.actor, e.reason, (e.after or {})["matched"]) for e in calls] == [
        ("tester", "", 0),
        ("tester", "", 1),
        ("tester", "weekly labels", 2),
    ]
    [relabel] = client.audit(action="feedback.relabel")
    assert (relabel.target, relabel.before, relabel.after) == (
        f"{ENDPOINT}:{ids[1]}",
        {**(relabel.before or {}), "label": 0},
        {**(relabel.after or {}), "label": 1},
    )


def test_feedback_refuses_bad_rows_in_the_same_words(labelling: tuple[Client, Context]) -> None:
    client, ctx = labelling
    ids = ship(ctx, [binary(0.8, at=T0), binary(0.3, at=T0)])
    wrong = "label 'yes' (str) does not fit churn:1, which predicts integer classes"

    with pytest.raises(SchemaError) as caught:
        client.record_feedback(
            ENDPOINT, [{"prediction_id": ids[0], "label": 1}, {"prediction_id": ids[1], "label": "yes"}]
        )
    assert str(caught.value) == f"1 feedback row refused: row 1: {wrong}"
    assert caught.value.problems == [{"row": 1, "column": "label", "reason": wrong}]

    kept = client.record_feedback(
        ENDPOINT,
        [{"prediction_id": ids[0], "label": 1}, {"prediction_id": ids[1], "label": "yes"}],
        on_invalid="reject",
    )
    assert kept == FeedbackResult(1, 0, [], [(1, wrong)])

    malformed: list[Any] = [
        {"label": 1},
        {"prediction_id": ids[0], "key": "C-1", "label": 1},
        {"prediction_id": ids[0], "label": float("nan")},
        {"prediction_id": ids[0], "label": 1, "time": dt.datetime(2026, 3, 4, 10, 0)},
        {"prediction_id": ids[0], "label": 1, "time": "0001-01-01T00:00:00+05:00"},
        7,
    ]
    with pytest.raises(SchemaError) as caught:
        client.record_feedback(ENDPOINT, malformed)
    assert str(caught.value) == (
        "6 feedback rows refused: row 0: give either prediction_id or key; "
        "row 1: give either prediction_id or key; row 2: label is missing; "
        "row 3: time 2026-03-04T10:00:00 has no time zone; give one, such as +00:00; "
        "row 4: time 0001-01-01T00:00:00+05:00 is out of range; and 1 more"
    )
    assert caught.value.problems[5]["reason"] == "expected an object with prediction_id or key, and label"
    with pytest.raises(SchemaError) as caught:
        client.record_feedback(ENDPOINT, [{"prediction_id": ids[0], "label": pd.NA, "time": pd.NaT}])
    assert str(caught.value) == "1 feedback row refused: row 0: label is missing"
    with pytest.raises(InvalidInputError) as caught_input:
        client.record_feedback(ENDPOINT, [], on_invalid="maybe")  # type: ignore[arg-type]
    assert str(caught_input.value) == "on_invalid must be raise or reject, got 'maybe'"


def test_feedback_kept_labels_are_listed_and_rejoined(labelling: tuple[Client, Context]) -> None:
    client, ctx = labelling
    late = binary(0.8, at=T0)
    client.record_feedback(ENDPOINT, [{"prediction_id": late.id, "label": 1}])

    [waiting] = client.feedback_unmatched(ENDPOINT)
    assert (waiting.endpoint, waiting.prediction_id, waiting.key, waiting.label) == (
        ENDPOINT,
        late.id,
        None,
        1,
    )
    assert (waiting.status, waiting.reason, waiting.received_by) == (
        "waiting",
        "no prediction with this id (yet)",
        "tester",
    )
    assert waiting.label_at.tzinfo is not None
    assert client.feedback_unmatched(ENDPOINT, status="waiting", limit=1) == [waiting]
    assert client.feedback_unmatched(ENDPOINT, status="invalid") == []
    assert client.rejoin_feedback(ENDPOINT) == 0

    ship(ctx, [late])
    assert client.rejoin_feedback(ENDPOINT) == 1
    assert client.feedback_unmatched(ENDPOINT) == []

    for call, error, message in (
        (lambda: client.feedback_unmatched(ENDPOINT, status="lost"), InvalidInputError,
         "status must be waiting or invalid, got 'lost'"),
        (lambda: client.feedback_unmatched(ENDPOINT, limit=0), InvalidInputError,
         "limit must be from 1 to 100000, got 0"),
        (lambda: client.feedback_unmatched("ghost"), NotFoundError,
         "endpoint 'ghost' does not exist and has no logged predictions"),
        (lambda: client.rejoin_feedback("ghost"), NotFoundError,
         "endpoint 'ghost' does not exist and has no logged predictions"),
        (lambda: client.record_feedback("ghost", [{"prediction_id": late.id, "label": 1}]), NotFoundError,
         "endpoint 'ghost' does not exist and has no logged predictions"),
    ):  # fmt: skip
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value) == message


# -- monitors, alerts and notifiers: their routes are in the management API -------------------------


def test_a_monitor_is_set_shown_run_reported_and_removed(labelling: tuple[Client, Context]) -> None:
    client, _ = labelling
    assert client.list_monitors() == []
    now = dt.datetime.now(dt.UTC)
    # Windows close at the delay past each hour: half an hour from now, so that none closes while
    # the test runs and the windows each run evaluates are known.
    delay = int((now - floor_time(now, 3600) + dt.timedelta(minutes=30)).total_seconds()) % 3600
    start = now - dt.timedelta(hours=3)
    closed = sum(
        1 for k in range(1, 5) if floor_time(start, 3600) + dt.timedelta(hours=k, seconds=delay) <= now
    )
    spec = parse_spec(window="1h", delay=delay, drift={"drift_share": 0.3}, metric="auc")

    info = client.set_monitor(ENDPOINT, spec, start=start, reason="watch it")

    assert (info.endpoint, info.window_s, info.delay_s, info.reference) == (ENDPOINT, 3600, delay, "training")
    assert info.config == {"drift": {"drift_share": 0.3}, "metric": "auc", "label_column": None}
    assert (info.enabled, info.created_by, info.next_window) == (True, "tester", floor_time(start, 3600))
    assert info.spec == spec
    assert client.get_monitor(ENDPOINT) == info
    assert client.list_monitors() == [info]
    [entry] = client.audit(action="monitor.set")
    assert (entry.actor, entry.target, entry.reason) == ("tester", ENDPOINT, "watch it")

    # Closed windows without traffic: judged "no_traffic", with no alert to move.
    [run] = client.run_monitors(ENDPOINT)
    assert closed in (2, 3)
    assert (run.endpoint, run.windows, run.transitions, run.skipped) == (ENDPOINT, closed, [], "")
    assert [(r.ref, r.status, r.rows) for r in run.results] == [("all", "no_traffic", 0)] * closed
    assert client.run_monitors() == [RunSummary(ENDPOINT, 0, [], [], 0)]
    results = client.monitor_results(ENDPOINT)
    assert results == run.results
    assert [r.window_start for r in results] == [
        info.next_window + dt.timedelta(hours=h) for h in range(closed)
    ]
    assert all("sketch" not in r.details for r in results)
    assert client.monitor_results(ENDPOINT, since=results[1].window_start, version="all") == results[1:]
    assert client.monitor_results(ENDPOINT, until=results[0].window_start) == []
    page = client.monitor_report(ENDPOINT)
    assert page.startswith("<!DOCTYPE html>")
    assert ENDPOINT in page

    client.remove_monitor(ENDPOINT, reason="retired")
    assert client.get_monitor(ENDPOINT).enabled is False
    assert client.run_monitors(ENDPOINT)[0].skipped == "disabled"
    assert client.monitor_results(ENDPOINT) == results  # the results stay

    for call, error, message in (
        (lambda: client.get_monitor("ghost"), NotFoundError, "endpoint 'ghost' has no monitor"),
        (lambda: client.set_monitor("ghost", spec), NotFoundError, "endpoint 'ghost' does not exist"),
        (lambda: client.monitor_results("ghost"), NotFoundError, "endpoint 'ghost' has no monitor"),
        (lambda: client.run_monitors("ghost"), NotFoundError, "endpoint 'ghost' has no monitor"),
        (lambda: client.monitor_report("ghost"), NotFoundError, "endpoint 'ghost' has no monitor"),
        (lambda: client.set_monitor(ENDPOINT, parse_spec(window="400d")), InvalidInputError,
         "window must be at most 366 days, got 34560000 s"),
        (lambda: client.monitor_results(ENDPOINT, version="churn"), InvalidInputError,
         "version must be 'all' or like churn:3, got 'churn'"),
    ):  # fmt: skip
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value) == message
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with pytest.raises(InvalidInputError, match=r"^start \S+ is in the future$"):
        client.set_monitor(ENDPOINT, spec, start=later)


def test_alert_rules_alerts_and_silences(labelling: tuple[Client, Context]) -> None:
    client, _ = labelling
    spec = RuleSpec(
        "data-drift",
        "drift.share>0.3",
        for_windows=2,
        keep_firing_windows=1,
        inhibited_by=("schema",),
        notify=("ops",),
        labels={"team": "ml"},
    )

    rule = client.set_alert_rule(ENDPOINT, spec, reason="drift matters")

    assert (rule.endpoint, rule.name, rule.expression, rule.severity) == (
        ENDPOINT,
        "data-drift",
        "drift.share > 0.3",
        "warning",
    )
    assert (rule.for_windows, rule.keep_firing_windows, rule.inhibited_by, rule.notify) == (
        2,
        1,
        ("schema",),
        ("ops",),
    )
    assert (rule.labels, rule.pipeline, rule.enabled) == ({"team": "ml"}, None, True)
    assert rule.created_by == "tester"
    assert client.list_alert_rules() == [rule]
    assert client.list_alert_rules(ENDPOINT) == [rule]
    assert client.list_alerts() == []
    assert client.list_alerts(ENDPOINT, state="open", limit=5) == []

    silence = client.silence(ENDPOINT, rule="data-drift", duration=dt.timedelta(hours=2), comment="upgrade")
    assert (silence.endpoint, silence.rule, silence.comment, silence.active) == (
        ENDPOINT,
        "data-drift",
        "upgrade",
        True,
    )
    assert silence.ends_at - silence.starts_at == dt.timedelta(hours=2)
    assert client.list_silences(active_only=True) == [silence]
    expired = client.expire_silence(silence.id, reason="upgrade done")
    assert (expired.id, expired.active) == (silence.id, False)
    assert client.list_silences(ENDPOINT, active_only=True) == []
    assert client.list_silences() == [expired]

    client.remove_alert_rule(ENDPOINT, "data-drift", reason="too noisy")
    assert client.list_alert_rules(ENDPOINT) == []
    assert [e.reason for e in client.audit(action="alert.rule.remove")] == ["too noisy"]

    expression_error = (
        "invalid alert expression 'drift.share >> 1': expected '<figure> <op> <number>' with op one of "
        "> >= < <= == !=, such as 'drift.share > 0.3'"
    )
    for call, error, message in (
        (lambda: client.set_alert_rule(ENDPOINT, RuleSpec("x", "drift.share >> 1")), InvalidInputError,
         expression_error),
        (lambda: client.set_alert_rule("ghost", spec), NotFoundError, "endpoint 'ghost' does not exist"),
        (lambda: client.remove_alert_rule(ENDPOINT, "data-drift"), NotFoundError,
         "endpoint 'churn-api' has no alert rule 'data-drift'"),
        (lambda: client.list_alerts(state="loud"), InvalidInputError,
         "state must be open or one of pending, firing, resolved, cleared, got 'loud'"),
        (lambda: client.ack_alert(999), NotFoundError, "alert 999 does not exist"),
        (lambda: client.ack_alert(2**40), NotFoundError, "alert 1099511627776 does not exist"),
        (lambda: client.expire_silence(0), NotFoundError, "silence 0 does not exist"),
        (lambda: client.silence(ENDPOINT, rule="data-drift", duration=dt.timedelta(hours=1)), NotFoundError,
         "endpoint 'churn-api' has no alert rule 'data-drift'; use rule '*' to silence every rule"),
        (lambda: client.silence(ENDPOINT, duration=dt.timedelta(0)), InvalidInputError,
         "the silence duration must be positive, got datetime.timedelta(0)"),
    ):  # fmt: skip
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value) == message
    with pytest.raises(ConflictError, match=rf"^silence {silence.id} already ended at \S+$"):
        client.expire_silence(silence.id)


def test_notifiers_are_set_masked_tested_and_removed(any_kind_client: Client) -> None:
    client = any_kind_client
    config = {
        "url": "https://alerts:s3cret@hooks.example.com/passerelle?token=t0ken",
        "headers": {"Authorization": "Bearer b34rer"},
    }

    info = client.set_notifier("ops", "webhook", config, reason="on-call")

    assert (info.name, info.kind, info.enabled, info.created_by) == ("ops", "webhook", True, "tester")
    assert info.config["url"] == "https://alerts:***@hooks.example.com/passerelle?token=***"
    assert info.config["headers"] == {"Authorization": "***"}
    assert client.list_notifiers() == [info]
    for secret in ("s3cret", "t0ken", "b34rer"):
        assert secret not in repr(client.list_notifiers())
        assert secret not in repr(client.audit(action="notifier.set"))
    assert client.notifications() == []

    # Nothing listens on this port: the failure says where and why, through either client.
    refused = f"http://127.0.0.1:{free_port()}/hook"
    client.set_notifier("ops", "webhook", {"url": refused}, enabled=False)
    with pytest.raises(PasserelleError) as caught:
        client.test_notifier("ops")
    assert str(caught.value).startswith(f'webhook "ops": {refused} unreachable')

    client.remove_notifier("ops", reason="replaced")
    assert client.list_notifiers() == []
    for call, error, message in (
        (lambda: client.set_notifier("pager", "pager", {}), InvalidInputError,
         "unknown notifier kind 'pager': expected one of webhook, slack, smtp"),
        (lambda: client.set_notifier("ops", "webhook", {"url": "ftp://x"}), InvalidInputError,
         "webhook config 'url' must be an http:// or https:// URL, got 'ftp://x'"),
        (lambda: client.remove_notifier("ops"), NotFoundError, "notifier 'ops' does not exist"),
        (lambda: client.test_notifier("ops"), NotFoundError, "notifier 'ops' does not exist"),
        (lambda: client.notifications(status="lost"), InvalidInputError,
         "status must be one of pending, sent, failed, got 'lost'"),
        (lambda: client.notifications(limit=0), InvalidInputError,
         "limit must be a whole number from 1 to 10,000, got 0"),
    ):  # fmt: skip
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value) == message


# ------------------------------------------------------------------------------ retraining pipelines

#: a stand-in for training: copies a model trained beforehand into the output folder
COPY_PY = (
    "import shutil, sys\n"
    "shutil.copy('prebuilt.skops', sys.argv[1] + '/model.skops')\n"
    "print('copied the model')\n"
)


@dataclass
class Retraining:
    client: Client
    #: the project: copy.py and prebuilt.skops
    folder: Path
    #: while entered, queued runs are executed where the store is (the server's scheduler, remotely)
    executing: Callable[[], AbstractContextManager[object]]


@pytest.fixture(params=["local", "remote"])
def retraining(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Retraining]:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "copy.py").write_text(COPY_PY)
    model, _ = small_model()
    skops.io.dump(model, folder / "prebuilt.skops")
    settings = settings_for(tmp_path / "server")
    with LocalClient(settings) as local:
        if request.param == "local":
            # A local client executes a run in the process that waits on it.
            yield Retraining(local, folder, nullcontext)
            return

        @contextmanager
        def scheduler() -> Iterator[object]:
            running = Scheduler(local.ctx, interval_s=0.1, holder="server")
            running.start()
            try:
                yield running
            finally:
                running.stop()

        with (
            serve(create_app(settings)) as url,
            RemoteClient(Settings(home=tmp_path / "client", url=url)) as remote,
        ):
            yield Retraining(remote, folder, scheduler)


def _recipe(name: str = "retrain-churn", workdir: Path | None = None, **changes: Any) -> Pipeline:
    return Pipeline(
        name=name,
        model="churn",
        train=TrainStep(command="python copy.py {output}", workdir=str(workdir) if workdir else None),
        evaluation=Evaluation(holdout="churn-holdout", label="churned", latency_rows=0, gates=["auc >= 0.6"]),
        retries=0,
        **changes,
    )


def test_a_pipeline_is_applied_run_to_its_end_and_its_log_and_lineage_read(
    retraining: Retraining, tmp_path: Path
) -> None:
    client = retraining.client
    frame, label = small_frame(seed=1)
    holdout = tmp_path / "holdout.parquet"
    frame.assign(churned=label).to_parquet(holdout, index=False)
    client.register_dataset(holdout, "churn-holdout")

    [stored] = client.apply_pipelines(
        [_recipe(workdir=retraining.folder)], source="contract", reason="first recipe"
    )
    assert (stored.name, stored.source) == ("retrain-churn", "contract")
    assert stored.definition["train"]["workdir"] == str(retraining.folder.resolve())
    assert [p.name for p in client.list_pipelines()] == ["retrain-churn"]
    assert client.get_pipeline("retrain-churn").last_run is None
    assert client.audit(action="pipeline.create")[0].reason == "first recipe"

    queued = client.run_pipeline("retrain-churn", reason="contract")
    assert (queued.ref, queued.state, queued.trigger) == ("retrain-churn#1", "queued", "manual")
    seen: list[str] = []
    with retraining.executing():
        final = client.wait_run(queued.ref, poll_s=0.1, timeout_s=60, on_run=lambda r: seen.append(r.id))
    assert (final.id, final.state, final.model_version) == (queued.id, "succeeded", "churn:1"), final.error
    assert seen == [queued.id]
    # Remotely the server's scheduler ran it; locally the process that waited.
    assert (final.holder == "server") is isinstance(client, RemoteClient)
    assert client.get_run("retrain-churn#1").state == "succeeded"
    assert [r.id for r in client.list_runs("retrain-churn")] == [queued.id]
    assert [r.id for r in client.list_runs(state="succeeded", limit=5)] == [queued.id]
    assert client.list_runs(state="failed") == []
    last = client.get_pipeline("retrain-churn").last_run
    assert last is not None
    assert last.id == queued.id
    assert client.get_version("churn@challenger").ref == "churn:1"

    text, offset = client.run_logs(queued.ref)
    assert "copied the model" in text
    assert "registered churn:1" in text
    assert offset == len(text.encode())
    assert client.run_logs(queued.id, offset=offset) == ("", offset)
    assert client.run_logs(queued.id, offset=offset - 8) == (text[-8:], offset)

    found = client.lineage("churn:1")
    edges = {(e["from"], e["to"], e["kind"]) for e in found["edges"]}
    assert (f"run:{queued.id}", found["root"], "registered") in edges
    assert f"run:{queued.id}" in {n["id"] for n in found["nodes"]}


def test_pipeline_refusals_and_cancelling_say_the_same_thing(retraining: Retraining) -> None:
    client = retraining.client
    folder = retraining.folder
    # One bad definition stores none of them.
    with pytest.raises(InvalidInputError) as caught:
        client.apply_pipelines([_recipe("first", folder), _recipe(workdir=folder, triggers=["schedule"])])
    assert str(caught.value) == (
        "pipelines.retrain-churn.schedule: the schedule trigger needs a cron expression here, "
        "e.g. '0 3 * * 1'"
    )
    assert client.list_pipelines() == []
    # Without a training folder, the one current where it is applied.
    [here] = client.apply_pipelines([_recipe("here")])
    assert here.definition["train"]["workdir"] == str(Path.cwd().resolve())
    client.apply_pipelines([_recipe(workdir=folder)])

    queued = client.run_pipeline("retrain-churn")
    assert client.run_logs(queued.id) == ("", 0)
    cancelled = client.cancel_run(queued.ref, reason="wrong data")
    assert (cancelled.id, cancelled.state) == (queued.id, "cancelled")
    assert cancelled.error is not None
    assert cancelled.error.endswith(": wrong data")
    assert client.wait_run(queued.id, poll_s=0.1, timeout_s=10).state == "cancelled"
    again = client.run_pipeline("retrain-churn", params=None)
    unknown_run = "pipeline run '0123abcd' does not exist (give its id or PIPELINE#NUMBER)"
    unknown_pipeline = "pipeline 'nope' does not exist; define it and run `passerelle pipeline apply`"
    for call, error, message in (
        (lambda: client.cancel_run("retrain-churn#9"), NotFoundError,
         "pipeline run retrain-churn#9 does not exist"),
        (lambda: client.cancel_run("0123abcd"), NotFoundError, unknown_run),
        (lambda: client.get_run("0123abcd"), NotFoundError, unknown_run),
        (lambda: client.run_logs("0123abcd"), NotFoundError, unknown_run),
        (lambda: client.cancel_run(queued.ref), ConflictError,
         "run retrain-churn#1 is cancelled; only active runs are cancelled"),
        (lambda: client.run_pipeline("retrain-churn"), ConflictError,
         f"pipeline 'retrain-churn' already has an active run retrain-churn#2 (queued, id {again.id}); "
         "one at a time (concurrency: 1)"),
        (lambda: client.run_pipeline("here", params={"depth": 3}), InvalidInputError,
         "pipeline 'here' has no parameter 'depth' (declared: none)"),
        (lambda: client.run_pipeline("here", trigger="schedule"), InvalidInputError,
         "pipeline 'here' does not accept schedule runs (triggers: manual); add schedule to its triggers"),
        (lambda: client.run_pipeline("nope"), NotFoundError, unknown_pipeline),
        (lambda: client.get_pipeline("nope"), NotFoundError, unknown_pipeline),
        (lambda: client.list_runs("nope"), NotFoundError, unknown_pipeline),
        (lambda: client.list_runs(limit=0), InvalidInputError,
         "limit must be a whole number from 1 to 1000, got 0"),
        (lambda: client.run_logs(queued.id, offset=-1), InvalidInputError,
         "offset must be a whole number of bytes, 0 or more, got -1"),
        (lambda: client.lineage("nope:1"), NotFoundError, "model 'nope' does not exist"),
    ):  # fmt: skip
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value) == message
