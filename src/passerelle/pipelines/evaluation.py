"""Scoring a candidate and its champion on one holdout, and judging the gates.

Figures come from :mod:`passerelle.performance` (each with its interval), per slice when the
definition declares slices, plus the latency of single-row predictions, measured the way a
gateway calls a model. Everything here is pure: the caller loads the models and the holdout.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from passerelle import performance
from passerelle.errors import InvalidInputError, PasserelleError
from passerelle.pipelines.definition import (
    CLASSIFICATION_METRICS,
    LATENCY_METRICS,
    METRIC_ALIASES,
    Evaluation,
    Gate,
    figure_key,
)
from passerelle.registry import LoadedModel

__all__ = ["Scored", "features_of", "judge", "score"]

# Bootstrap resamples behind the intervals: the gates read the point values, the intervals
# are shown beside them, so a modest count keeps an evaluation quick.
RESAMPLES = 200


@dataclass
class Scored:
    """The figures of one version on the holdout: ``figures[key]`` (NaN when undefined)."""

    ref: str
    task: str
    rows: int
    figures: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "task": self.task,
            "rows": self.rows,
            "figures": {k: _json_number(v) for k, v in sorted(self.figures.items())},
            "intervals": {
                k: [_json_number(lo), _json_number(hi)] for k, (lo, hi) in sorted(self.intervals.items())
            },
        }


def _json_number(value: float) -> float | None:
    # JSON has no NaN: an undefined figure is stored as null.
    return value if math.isfinite(value) else None


def features_of(holdout: pd.DataFrame, spec: Evaluation) -> pd.DataFrame:
    """The holdout's model inputs: every column but the label and the dropped ones."""
    missing = [c for c in [spec.label, *spec.drop] if c not in holdout.columns]
    if missing:
        shown = ", ".join(map(str, holdout.columns))
        raise InvalidInputError(
            f"the holdout has no column {missing[0]!r} (evaluation.label/drop); its columns: {shown}"
        )
    return holdout.drop(columns=[spec.label, *spec.drop])


def _task(spec: Evaluation, model: LoadedModel, predictions: np.ndarray[Any, Any]) -> str:
    if spec.task is not None:
        return spec.task
    if model.has_proba:
        return "classification"
    return "regression" if np.issubdtype(np.asarray(predictions).dtype, np.floating) else "classification"


def _frame(
    model: LoadedModel, features: pd.DataFrame, labels: pd.Series[Any], task: str
) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    predictions = np.asarray(model.predict(features))
    frame = pd.DataFrame({"label": labels.to_numpy(), "prediction": predictions})
    if task == "classification" and model.has_proba and model.classes is not None:
        proba = np.asarray(model.predict_proba(features), dtype=np.float64)
        for i, cls in enumerate(model.classes):
            frame[performance.PROBA_PREFIX + str(cls)] = proba[:, i]
    return frame, predictions


def _metrics(frame: pd.DataFrame, task: str, spec: Evaluation) -> dict[str, performance.Metric]:
    if frame.empty:
        return {}
    return performance.evaluate(
        frame,
        task="classification" if task == "classification" else "regression",
        positive=spec.positive,
        resamples=RESAMPLES,
    )


def _latency(model: LoadedModel, features: pd.DataFrame, rows: int) -> dict[str, float]:
    count = min(rows, len(features))
    if count == 0:
        return {}
    timings = []
    for i in range(count):
        row = features.iloc[[i]]
        started = time.perf_counter()
        model.predict(row)
        if model.has_proba:
            model.predict_proba(row)
        timings.append((time.perf_counter() - started) * 1000.0)
    values = np.asarray(timings)
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def score(model: LoadedModel, holdout: pd.DataFrame, spec: Evaluation) -> Scored:
    """Every figure of ``model`` on ``holdout``: overall, per declared slice, gaps, latency."""
    features = features_of(holdout, spec)
    labels = holdout[spec.label]
    try:
        frame, predictions = _frame(model, features, labels, spec.task or "classification")
    except PasserelleError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"{model.info.ref} cannot score the holdout: {type(exc).__name__}: {exc}"
        ) from exc
    task = _task(spec, model, predictions)
    if task == "regression" and any(c.startswith(performance.PROBA_PREFIX) for c in frame.columns):
        frame = frame[["label", "prediction"]]
    scored = Scored(model.info.ref, task, len(holdout))
    for name, metric in _metrics(frame, task, spec).items():
        scored.figures[name] = float(metric.value)
        scored.intervals[name] = (float(metric.low), float(metric.high))
    per_slice: dict[str, dict[str, list[float]]] = {}
    for column, values in spec.slices.items():
        if column not in holdout.columns:
            raise InvalidInputError(f"the holdout has no column {column!r} to slice by (evaluation.slices)")
        text = holdout[column].astype(str).to_numpy()
        for value in values:
            mask = text == str(value)
            metrics = _metrics(frame.loc[mask], task, spec)
            for name, metric in metrics.items():
                key = figure_key(name, (column, str(value)))
                scored.figures[key] = float(metric.value)
                scored.intervals[key] = (float(metric.low), float(metric.high))
                per_slice.setdefault(column, {}).setdefault(name, []).append(float(metric.value))
    for column, by_metric in per_slice.items():
        for name, values_ in by_metric.items():
            finite = [v for v in values_ if math.isfinite(v)]
            gap = max(finite) - min(finite) if len(finite) >= 2 else math.nan
            scored.figures[figure_key(name, gap=column)] = gap
    scored.figures.update(_latency(model, features, spec.latency_rows))
    return scored


def _lookup(scored: Scored, key: str) -> float | None:
    value = scored.figures.get(key)
    return None if value is None else float(value)


def _why_missing(metric: str, scored: Scored) -> str:
    canonical = METRIC_ALIASES.get(metric, metric)
    if metric in LATENCY_METRICS:
        return "latency was not measured (evaluation.latency_rows is 0)"
    kind = "classification" if canonical in CLASSIFICATION_METRICS or metric in CLASSIFICATION_METRICS else ""
    if kind and scored.task != kind:
        return f"{metric} is not computed for a {scored.task} model"
    if canonical in ("roc_auc", "log_loss", "calibration_error"):
        return f"{metric} needs class probabilities, which {scored.ref} does not give"
    return f"{metric} was not computed for {scored.ref}"


def judge(gates: list[Gate], candidate: Scored, champion: Scored | None) -> list[dict[str, Any]]:
    """One verdict per gate: the value, the threshold, passed or not, and why."""
    out: list[dict[str, Any]] = []
    for gate in gates:
        verdict: dict[str, Any] = {"gate": gate.text, "value": None, "threshold": None, "passed": False}
        value = _lookup(candidate, gate.key)
        if value is None:
            verdict["detail"] = _why_missing(gate.metric, candidate)
            out.append(verdict)
            continue
        verdict["value"] = _json_number(value)
        if not math.isfinite(value):
            verdict["detail"] = f"{gate.key} is undefined on the holdout rows (e.g. only one class present)"
            out.append(verdict)
            continue
        if gate.number is not None:
            threshold = gate.number
        else:
            assert gate.champion_key is not None
            assert gate.champion_metric is not None
            if champion is None:
                verdict.update(passed=True, detail="no champion to compare with: the first version passes")
                out.append(verdict)
                continue
            base = _lookup(champion, gate.champion_key)
            if base is None or not math.isfinite(base):
                why = (
                    _why_missing(gate.champion_metric, champion)
                    if base is None
                    else f"{gate.champion_key} of the champion is undefined on the holdout"
                )
                verdict["detail"] = f"cannot compare with the champion {champion.ref}: {why}"
                out.append(verdict)
                continue
            threshold = base + gate.offset
        verdict["threshold"] = threshold
        verdict["passed"] = gate.holds(value, threshold)
        verdict["detail"] = f"{gate.key} = {value:.4g} {gate.op} {threshold:.4g}" + (
            "" if verdict["passed"] else " does not hold"
        )
        out.append(verdict)
    return out
