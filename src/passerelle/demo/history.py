"""Past traffic for the demo: days of an endpoint's life, written through the real prediction log.

A monitor judges closed windows of prediction time, hours or days long; a demo cannot wait
that long. This module answers generated customers with the endpoint's real versions, split
as its policy splits them, stamps each answer with a time in the past, and writes the
records through :class:`~passerelle.predictionlog.PredictionLog` and its shipper, the path
the gateway's answers take. From some window on the customers drift; their true churn is
known, so labels can be sent back later, like the ones that arrive weeks after a prediction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from passerelle.client import LocalClient
from passerelle.demo.data import FEATURES, LABEL, Drift, generate_churn
from passerelle.policy import STICKY_BUCKETS, sticky_bucket
from passerelle.predictionlog import LogShipper, PredictionLog, PredictionRecord, new_prediction_id


@dataclass(frozen=True)
class Replayed:
    """One replayed prediction and the truth the demo can send back as feedback."""

    prediction_id: str
    at: dt.datetime
    version: int
    label: int


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def replay(
    client: LocalClient,
    endpoint: str,
    routes: list[tuple[int, int]],
    *,
    start: dt.datetime,
    windows: int,
    window: dt.timedelta,
    rows: int,
    drift: Drift,
    drift_from: int,
    seed: int = 100,
) -> list[Replayed]:
    """``windows`` windows of ``rows`` predictions each from ``start``; drifted from window ``drift_from``.

    ``routes`` are ``(version of churn, weight)`` pairs; each customer goes to a version by the
    stable bucket of its id, as a sticky policy would send it.
    """
    models = {version: client.load(f"churn:{version}") for version, _ in routes}
    revision = client.get_endpoint(endpoint).endpoint.revision
    bounds: list[tuple[int, int]] = []
    edge = 0
    for version, weight in routes:
        edge += weight * STICKY_BUCKETS // 100
        bounds.append((edge, version))
    home = Path(client.ctx.settings.home).resolve()
    log = PredictionLog(home / "predictions", worker="demo-history", fsync=False)
    out: list[Replayed] = []
    try:
        for w in range(windows):
            frame = generate_churn(rows, seed=seed + w, drift=drift if w >= drift_from else None)
            begins = start + w * window
            versions = [
                next(v for b, v in bounds if sticky_bucket(str(key)) < b) for key in frame["customer_id"]
            ]
            frame["_version"] = versions
            records: list[PredictionRecord] = []
            for chosen, part in frame.groupby("_version", sort=True):
                number = int(str(chosen))
                model = models[number]
                features = part[FEATURES]
                labels = model.predict(features)
                proba = model.predict_proba(features) if model.has_proba else None
                classes = model.classes or []
                inputs = features.astype(object).where(features.notna(), None).to_dict("records")
                for i, (index, row_inputs) in enumerate(zip(part.index, inputs, strict=True)):
                    at = begins + window * (int(index) / rows)
                    outputs: dict[str, Any] = {"prediction": _plain(labels[i])}
                    if proba is not None:
                        outputs["proba"] = {str(c): float(p) for c, p in zip(classes, proba[i], strict=True)}
                    pid = new_prediction_id()
                    records.append(
                        PredictionRecord(
                            id=pid,
                            endpoint=endpoint,
                            revision=revision,
                            model="churn",
                            version=number,
                            at=at,
                            latency_ms=0.0,
                            inputs={str(k): _plain(v) for k, v in row_inputs.items()},
                            outputs=outputs,
                            key=str(part["customer_id"].loc[index]),
                            source="replay",
                        )
                    )
                    out.append(Replayed(pid, at, number, int(part[LABEL].loc[index])))
            log.append_sync(records)
    finally:
        log.close()
    shipper = LogShipper(home / "predictions", client.ctx.store)
    while shipper.ship_once():
        pass
    return out


def labels_frame(replayed: list[Replayed], *, until: dt.datetime, lag: dt.timedelta) -> pd.DataFrame:
    """The labels known by ``until`` when each arrives ``lag`` after its prediction."""
    known = [r for r in replayed if r.at + lag <= until]
    return pd.DataFrame(
        {
            "prediction_id": [r.prediction_id for r in known],
            "label": [r.label for r in known],
            "time": [r.at + lag for r in known],
        }
    )
