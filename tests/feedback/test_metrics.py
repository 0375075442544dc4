"""Realized figures: the same values as scikit-learn, and intervals that cover what they claim."""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from passerelle import performance as perf
from passerelle.errors import InvalidInputError


def _binary(n: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.35 * y + rng.random(n) * 0.65, 0.0, 1.0)
    return y, np.column_stack([1.0 - p1, p1])


def _multiclass(n: int, k: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def test_binary_figures_match_scikit_learn() -> None:
    y, proba = _binary(2000, seed=1)
    pred = proba.argmax(axis=1)

    figures = perf.classification_metrics(y, pred, proba, classes=[0, 1])

    assert figures["accuracy"].value == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert figures["precision"].value == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert figures["recall"].value == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert figures["f1"].value == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert figures["roc_auc"].value == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=1e-12)
    assert figures["log_loss"].value == pytest.approx(skm.log_loss(y, y_proba=proba), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y, proba[:, 1], n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], proba[:, 1]), minlength=10)
    ece = float(np.sum(counts[counts > 0] / len(y) * np.abs(prob_true - prob_pred)))
    assert figures["calibration_error"].value == pytest.approx(ece, abs=1e-12)
    # Sample counts: proportions count their own denominators.
    assert figures["accuracy"].n == 2000
    assert figures["precision"].n == int((pred == 1).sum())
    assert figures["recall"].n == int((y == 1).sum())
    assert {m.interval for m in figures.values()} == {"wilson", "bootstrap", "delong"}
    for m in figures.values():
        assert m.low <= m.value <= m.high, m


def test_text_classes_with_a_chosen_positive_class_match_scikit_learn() -> None:
    y01, proba = _binary(800, seed=2)
    names = np.array(["stays", "churns"], dtype=object)
    # Column order given explicitly: "stays" first although it sorts last.
    y = names[1 - y01]
    pred = names[1 - proba.argmax(axis=1)]
    by_name = proba[:, ::-1]

    figures = perf.classification_metrics(y, pred, by_name, classes=["stays", "churns"], positive="churns")

    assert figures["precision"].value == pytest.approx(skm.precision_score(y, pred, pos_label="churns"))
    assert figures["recall"].value == pytest.approx(skm.recall_score(y, pred, pos_label="churns"))
    assert figures["f1"].value == pytest.approx(skm.f1_score(y, pred, pos_label="churns"))
    assert figures["roc_auc"].value == pytest.approx(skm.roc_auc_score(y == "churns", by_name[:, 1]))
    assert figures["log_loss"].value == pytest.approx(
        skm.log_loss(y, y_proba=by_name[:, ::-1], labels=["churns", "stays"])
    )


def test_multiclass_figures_match_scikit_learn() -> None:
    y, proba = _multiclass(1500, 4, seed=3)
    pred = proba.argmax(axis=1)

    figures = perf.classification_metrics(y, pred, proba, classes=[0, 1, 2, 3], resamples=50)

    assert figures["accuracy"].value == pytest.approx(skm.accuracy_score(y, pred))
    assert figures["precision"].value == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert figures["recall"].value == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert figures["f1"].value == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert figures["roc_auc"].value == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert figures["log_loss"].value == pytest.approx(skm.log_loss(y, y_proba=proba))
    conf, hit = proba.max(axis=1), (pred == y).astype(float)
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], conf)
    ece = sum(abs((hit[bins == b] - conf[bins == b]).sum()) for b in range(10)) / len(y)
    assert figures["calibration_error"].value == pytest.approx(ece)
    for m in figures.values():
        assert m.low <= m.value <= m.high, m


def test_regression_figures_match_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(50.0, 12.0, 1000)
    f = y + rng.normal(0.0, 4.0, 1000)

    figures = perf.regression_metrics(y, f)

    assert figures["mae"].value == pytest.approx(skm.mean_absolute_error(y, f))
    assert figures["rmse"].value == pytest.approx(skm.root_mean_squared_error(y, f))
    assert figures["mape"].value == pytest.approx(skm.mean_absolute_percentage_error(y, f))
    assert figures["r2"].value == pytest.approx(skm.r2_score(y, f))
    for m in figures.values():
        assert m.interval == "bootstrap"
        assert m.n == 1000
        assert m.low <= m.value <= m.high, m


def test_undefined_figures_are_nan_not_errors() -> None:
    figures = perf.classification_metrics([0, 0, 0], [0, 0, 0], [[0.9, 0.1]] * 3, classes=[0, 1])
    assert figures["accuracy"].value == 1.0
    assert np.isnan(figures["recall"].value)
    assert figures["recall"].n == 0
    assert np.isnan(figures["roc_auc"].value)
    assert np.isnan(perf.regression_metrics([1.0, 1.0], [1.0, 2.0])["r2"].value)
    with pytest.raises(InvalidInputError, match="missing values"):
        perf.classification_metrics([0, None], [0, 1])
    with pytest.raises(InvalidInputError, match="shape"):
        perf.classification_metrics([0, 1], [0, 1], [[1.0, 0.0, 0.0]] * 2, classes=[0, 1])


def test_bootstrap_intervals_are_seeded() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(size=300)
    f = y + rng.normal(size=300)
    first = perf.regression_metrics(y, f, seed=11)["mae"]
    again = perf.regression_metrics(y, f, seed=11)["mae"]
    other = perf.regression_metrics(y, f, seed=12)["mae"]
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)


def test_wilson_intervals_cover_the_true_accuracy_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(6)
    truth, n, runs = 0.85, 200, 4000
    successes = rng.binomial(n, truth, size=runs)

    low, high = perf.wilson_interval(successes, np.full(runs, n))

    covered = float(np.mean((low <= truth) & (truth <= high)))
    assert 0.93 <= covered <= 0.97


def test_delong_intervals_cover_the_true_auc_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    shift, runs, n = 1.0, 300, 300
    truth = float(stats.norm.cdf(shift / np.sqrt(2.0)))  # binormal AUC
    hits = 0
    for _ in range(runs):
        y = rng.random(n) < 0.4
        score = rng.normal(size=n) + shift * y
        proba = np.column_stack([1.0 - score, score])  # only the ranking of column 1 matters
        auc = perf.classification_metrics(y.astype(int), y.astype(int), proba, classes=[0, 1], resamples=0)[
            "roc_auc"
        ]
        hits += auc.low <= truth <= auc.high
    assert 0.92 <= hits / runs <= 0.98


def test_bootstrap_intervals_cover_the_true_mae_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(8)
    runs, n = 200, 200
    truth = np.sqrt(2.0 / np.pi)  # E|e| for standard normal errors
    hits = 0
    for seed in range(runs):
        y = rng.normal(size=n)
        mae = perf.regression_metrics(y, y + rng.normal(size=n), seed=seed)["mae"]
        hits += mae.low <= truth <= mae.high
    assert 0.88 <= hits / runs <= 0.99


def test_figures_per_window_from_a_labelled_frame() -> None:
    start = pd.Timestamp("2026-03-02T00:00:00Z")
    frame = pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(6)],
            "at": [start + pd.Timedelta(hours=h) for h in (1, 2, 3, 25, 26, 27)],
            "model": ["churn"] * 6,
            "version": [1, 1, 1, 1, 1, 2],
            "prediction": [1, 0, 1, 1, 1, 0],
            "proba_0": [0.2, 0.7, 0.4, 0.1, 0.3, 0.9],
            "proba_1": [0.8, 0.3, 0.6, 0.9, 0.7, 0.1],
            "label": pd.Series([1, 0, 0, 1, None, 0], dtype=object),
            "label_at": [start] * 6,
        }
    )

    figures = perf.by_window(frame, dt.timedelta(days=1))
    accuracy = figures[figures["metric"] == "accuracy"]

    assert accuracy[["window_start", "version", "value", "n"]].values.tolist() == [
        [start, 1, pytest.approx(2 / 3), 3],
        [start + pd.Timedelta(days=1), 1, 1.0, 1],
        [start + pd.Timedelta(days=1), 2, 1.0, 1],
    ]
    assert (figures["window_end"] - figures["window_start"] == pd.Timedelta(days=1)).all()
    assert perf.by_window(frame.iloc[:0], "1D").empty


def test_versions_with_different_classes_each_keep_their_probability_figures() -> None:
    start = pd.Timestamp("2026-03-02T00:00:00Z")
    nan = float("nan")
    frame = pd.DataFrame(
        {
            "at": [start] * 6,
            "model": ["churn"] * 6,
            "version": [1, 1, 1, 2, 2, 2],
            "prediction": [1, 0, 1, 2, 0, 1],
            "proba_0": [0.2, 0.7, 0.4, 0.1, 0.6, 0.2],
            "proba_1": [0.8, 0.3, 0.6, 0.2, 0.3, 0.5],
            "proba_2": [nan, nan, nan, 0.7, 0.1, 0.3],
            "label": [1, 0, 0, 2, 0, 1],
        }
    )

    figures = perf.by_window(frame, "1D")
    auc = figures[figures["metric"] == "roc_auc"].set_index("version")["value"]

    assert auc[1] == pytest.approx(skm.roc_auc_score([1, 0, 0], [0.8, 0.3, 0.6]))
    assert set(auc.index) == {1, 2}
