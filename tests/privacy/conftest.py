"""Helpers for the data protection tests: endpoints and rows put straight into the store."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from passerelle.client import LocalClient
from passerelle.context import Context
from passerelle.settings import Settings
from passerelle.store.schema import (
    AuditRecord,
    Endpoint,
    EndpointRevision,
    Feedback,
    FeedbackUnmatched,
    Prediction,
    ShadowPrediction,
)
from tests.serving.conftest import registered  # noqa: F401 - a fixture, for the served tests

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def endpoint(ctx: Context, name: str, **policy: Any) -> None:
    """An endpoint whose current revision has ``policy`` (beside one route to churn:1)."""
    with ctx.store.write() as session:
        row = Endpoint(name=name, created_by="tester", current_revision=1)
        session.add(row)
        session.flush()
        document = {"routes": [{"model": "churn", "version": 1, "weight": 100}], **policy}
        session.add(
            EndpointRevision(
                endpoint_id=row.id, number=1, policy=document, kind="deploy", created_by="tester"
            )
        )


def logged(
    ctx: Context,
    name: str,
    at: dt.datetime,
    *,
    key: str | None = None,
    shadow: bool = True,
    label: Any = None,
    inputs: dict[str, Any] | None = None,
) -> str:
    """A shipped prediction, with a shadow answer and a label when asked; its id."""
    pid = str(uuid.uuid4())
    with ctx.store.write() as session:
        session.add(
            Prediction(
                id=pid,
                endpoint=name,
                revision=1,
                model="churn",
                version=1,
                at=at,
                latency_ms=1.0,
                inputs=inputs or {"age": 40},
                outputs={"prediction": 1},
                key=key,
            )
        )
        if shadow:
            session.add(
                ShadowPrediction(
                    prediction_id=pid,
                    model="churn",
                    version=2,
                    endpoint=name,
                    at=at,
                    latency_ms=2.0,
                    outputs={},
                )
            )
        if label is not None:
            session.add(
                Feedback(
                    prediction_id=pid,
                    endpoint=name,
                    prediction_at=at,
                    label=label,
                    label_at=at,
                    received_by="tester",
                    key=key,
                )
            )
    return pid


def kept_label(ctx: Context, name: str, received_at: dt.datetime, *, key: str | None = None) -> int:
    """A label that matched no prediction (yet)."""
    with ctx.store.write() as session:
        row = FeedbackUnmatched(
            endpoint=name,
            key=key,
            prediction_id=None if key else str(uuid.uuid4()),
            label=1,
            label_at=received_at,
            received_at=received_at,
            received_by="tester",
        )
        session.add(row)
        session.flush()
        return row.id


def stored(ctx: Context) -> dict[str, set[Any]]:
    """The ids left in each table the prediction log and feedback write."""
    with ctx.store.read() as session:
        return {
            "predictions": set(session.scalars(select(Prediction.id))),
            "shadows": set(session.scalars(select(ShadowPrediction.prediction_id))),
            "feedback": set(session.scalars(select(Feedback.prediction_id))),
            "feedback_unmatched": set(session.scalars(select(FeedbackUnmatched.id))),
        }


def audit_rows(ctx: Context, action: str) -> list[AuditRecord]:
    with ctx.store.read() as session:
        return list(
            session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id))
        )


@pytest.fixture
def local(backend: str, tmp_path: Path) -> Iterator[LocalClient]:
    """A client on each backend, with a server-wide default of 60 days."""
    settings = Settings(home=tmp_path / "home", database_url=backend, prediction_retention_days=60)
    with LocalClient(settings) as client:
        yield client
