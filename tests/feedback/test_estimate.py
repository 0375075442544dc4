"""Estimated performance before labels, and its reconciliation with the realized figures."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from passerelle import performance as perf
from passerelle.errors import InvalidInputError


def _world(
    n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """An overconfident model: its probabilities are sharper (and shifted) against the truth."""
    x = rng.normal(size=n)
    p_true = 1.0 / (1.0 + np.exp(-(1.5 * x - 0.3)))
    y = (rng.random(n) < p_true).astype(np.int64)
    p_model = 1.0 / (1.0 + np.exp(-(3.0 * x - 0.1)))
    return np.column_stack([1.0 - p_model, p_model]), y, p_true


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibrated_estimates_land_within_a_few_points_of_the_realized_figures(method: str) -> None:
    rng = np.random.default_rng(21)
    ref_proba, ref_y, _ = _world(5000, rng)
    proba, y, _ = _world(5000, rng)
    calibrator = perf.Calibrator.fit(ref_proba, ref_y, [0, 1], method=method)  # type: ignore[arg-type]

    figures = {r.name: r for r in perf.estimated_vs_realized(proba, y, classes=[0, 1], calibrator=calibrator)}
    trusting = {r.name: r for r in perf.estimated_vs_realized(proba, y, classes=[0, 1], resamples=20)}

    assert set(figures) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        r = figures[name]
        assert r.estimated.estimated
        assert r.estimated.interval == "simulation"
        assert r.realized is not None
        assert not r.realized.estimated
        assert r.gap == pytest.approx(r.realized.value - r.estimated.value)
        assert abs(r.gap) < 0.03, r
        # Without calibration an overconfident model looks far better than it is.
        assert trusting[name].gap < -0.05
    assert abs(figures["log_loss"].gap) < 0.05


def test_with_true_probabilities_the_realized_accuracy_falls_in_the_estimate_interval() -> None:
    rng = np.random.default_rng(22)
    runs, hits = 120, 0
    for _ in range(runs):
        _, _, p_true = _world(400, rng)
        y = (rng.random(400) < p_true).astype(int)
        proba = np.column_stack([1.0 - p_true, p_true])
        est = perf.estimate_classification(
            proba, classes=[0, 1], resamples=100, seed=int(rng.integers(1 << 30))
        )
        realized = float(np.mean(proba.argmax(axis=1) == y))
        hits += est["accuracy"].low <= realized <= est["accuracy"].high
    assert 0.88 <= hits / runs <= 0.99


def test_estimates_before_any_label_and_for_several_classes() -> None:
    rng = np.random.default_rng(23)
    logits = rng.normal(size=(600, 3)) * 2.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in proba])
    unlabelled = np.array([None] * 600, dtype=object)

    before = {r.name: r for r in perf.estimated_vs_realized(proba, unlabelled, classes=[0, 1, 2])}
    calibrator = perf.Calibrator.fit(proba, y, [0, 1, 2])

    assert set(before) == {"accuracy", "log_loss"}
    assert before["accuracy"].realized is None
    assert np.isnan(before["accuracy"].gap)
    assert before["accuracy"].labelled == 0
    assert before["accuracy"].estimated.value == pytest.approx(float(proba.max(axis=1).mean()))
    calibrated = calibrator.transform(proba)
    assert calibrated.sum(axis=1) == pytest.approx(np.ones(600))
    half = y.astype(object)
    half[::2] = None
    after = {r.name: r for r in perf.estimated_vs_realized(proba, half, classes=[0, 1, 2])}
    assert after["accuracy"].labelled == 300
    assert abs(after["accuracy"].gap) < 0.08


def test_calibration_needs_enough_reference_rows() -> None:
    with pytest.raises(InvalidInputError, match="at least 10 labelled reference rows"):
        perf.Calibrator.fit([[0.5, 0.5]] * 3, [0, 1, 0], [0, 1])
