"""Records for the prediction log tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from passerelle.predictionlog import PredictionRecord, ShadowRecord, new_prediction_id


def prediction(
    i: int = 0,
    *,
    endpoint: str = "churn",
    at: dt.datetime | None = None,
    inputs: dict[str, Any] | None = None,
    version: int = 1,
) -> PredictionRecord:
    return PredictionRecord(
        id=new_prediction_id(),
        endpoint=endpoint,
        revision=2,
        model="churn",
        version=version,
        at=at or dt.datetime.now(dt.UTC),
        latency_ms=1.25,
        inputs=inputs if inputs is not None else {"age": 30 + i, "plan": "pro"},
        outputs={"prediction": "yes" if i % 2 else "no", "proba": {"no": 0.25, "yes": 0.75}},
        key=f"customer-{i}",
        request_id=f"req-{i}",
    )


def shadow(of: PredictionRecord, *, version: int = 2, outputs: dict[str, Any] | None = None) -> ShadowRecord:
    return ShadowRecord(
        prediction_id=of.id,
        endpoint=of.endpoint,
        model=of.model,
        version=version,
        at=of.at,
        latency_ms=2.5,
        outputs=outputs if outputs is not None else {"prediction": "no"},
        error=None,
    )
