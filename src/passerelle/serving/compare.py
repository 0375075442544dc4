"""Champion versus shadow on the same requests, from the prediction log."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select

from passerelle.store import Store
from passerelle.store.schema import Prediction, ShadowPrediction

#: bound the rows read so a comparison stays interactive on a large log
MAX_ROWS = 200_000


class VersionLatency(BaseModel):
    ref: str
    role: str  # served or shadow
    rows: int
    p50_ms: float | None
    p99_ms: float | None


class ShadowComparison(BaseModel):
    served: str
    shadow: str
    compared: int
    errors: int
    agreement_rate: float | None
    mean_score_diff: float | None
    max_score_diff: float | None


class Comparison(BaseModel):
    endpoint: str
    since: dt.datetime
    latencies: list[VersionLatency]
    pairs: list[ShadowComparison]


def _score(outputs: dict[str, Any] | None) -> float | None:
    """The probability of the predicted class (or the value itself for a regressor)."""
    if not outputs:
        return None
    proba = outputs.get("proba")
    if isinstance(proba, dict) and proba:
        return float(max(proba.values()))
    value = outputs.get("prediction")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare(store: Store, endpoint: str, *, since: dt.datetime) -> Comparison:
    with store.read() as session:
        served_rows = session.execute(
            select(
                Prediction.id, Prediction.model, Prediction.version, Prediction.latency_ms, Prediction.outputs
            )
            .where(Prediction.endpoint == endpoint, Prediction.at >= since)
            .limit(MAX_ROWS)
        ).all()
        shadow_rows = session.execute(
            select(
                ShadowPrediction.prediction_id,
                ShadowPrediction.model,
                ShadowPrediction.version,
                ShadowPrediction.latency_ms,
                ShadowPrediction.outputs,
                ShadowPrediction.error,
            )
            .where(ShadowPrediction.endpoint == endpoint, ShadowPrediction.at >= since)
            .limit(MAX_ROWS)
        ).all()
    served: dict[str, tuple[str, dict[str, Any]]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    for pid, model, version, latency, outputs in served_rows:
        ref = f"{model}:{version}"
        served[pid] = (ref, outputs)
        latencies.setdefault((ref, "served"), []).append(latency)
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for pid, model, version, latency, outputs, error in shadow_rows:
        ref = f"{model}:{version}"
        latencies.setdefault((ref, "shadow"), []).append(latency)
        match = served.get(pid)
        if match is None:
            continue
        served_ref, served_out = match
        acc = pairs.setdefault((served_ref, ref), {"compared": 0, "errors": 0, "agree": 0, "diffs": []})
        if error is not None or outputs is None:
            acc["errors"] += 1
            continue
        acc["compared"] += 1
        acc["agree"] += int(outputs.get("prediction") == served_out.get("prediction"))
        a, b = _score(outputs), _score(served_out)
        if a is not None and b is not None:
            acc["diffs"].append(abs(a - b))
    return Comparison(
        endpoint=endpoint,
        since=since,
        latencies=[
            VersionLatency(
                ref=ref,
                role=role,
                rows=len(values),
                p50_ms=float(np.percentile(values, 50)) if values else None,
                p99_ms=float(np.percentile(values, 99)) if values else None,
            )
            for (ref, role), values in sorted(latencies.items())
        ],
        pairs=[
            ShadowComparison(
                served=served_ref,
                shadow=shadow_ref,
                compared=acc["compared"],
                errors=acc["errors"],
                agreement_rate=acc["agree"] / acc["compared"] if acc["compared"] else None,
                mean_score_diff=float(np.mean(acc["diffs"])) if acc["diffs"] else None,
                max_score_diff=float(np.max(acc["diffs"])) if acc["diffs"] else None,
            )
            for (served_ref, shadow_ref), acc in sorted(pairs.items())
        ],
    )
