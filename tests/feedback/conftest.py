"""Helpers for the feedback tests: predictions inserted straight into the store."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from typing import Any

import pytest

from passerelle.client import LocalClient
from passerelle.context import Context
from passerelle.store.schema import Endpoint, EndpointRevision, Model, ModelVersion, Prediction

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
ENDPOINT = "churn-api"
_ids = itertools.count(1)


def new_id() -> str:
    return f"0196a1b2-0000-7000-8000-{next(_ids):012d}"


def prediction(
    *,
    at: dt.datetime,
    prediction: Any = 1,
    proba: dict[str, float] | None = None,
    key: str | None = None,
    model: str = "churn",
    version: int = 1,
    endpoint: str = ENDPOINT,
    pid: str | None = None,
) -> Prediction:
    outputs: dict[str, Any] = {"prediction": prediction}
    if proba is not None:
        outputs["proba"] = proba
    return Prediction(
        id=pid or new_id(),
        endpoint=endpoint,
        revision=1,
        model=model,
        version=version,
        at=at,
        latency_ms=1.0,
        inputs={"tenure": 3},
        outputs=outputs,
        key=key,
    )


def binary(p1: float, *, at: dt.datetime, **fields: Any) -> Prediction:
    """A churn-style prediction with integer classes 0 and 1."""
    return prediction(at=at, prediction=int(p1 >= 0.5), proba={"0": 1.0 - p1, "1": p1}, **fields)


def ship(ctx: Context, rows: Iterable[Prediction]) -> list[str]:
    """What the log shipper does: put prediction rows in the database."""
    rows = list(rows)
    with ctx.store.write() as session:
        session.add_all(rows)
    return [r.id for r in rows]


def register_version(ctx: Context, name: str, number: int, output_schema: dict[str, Any] | None) -> None:
    """A registry row with an output schema, without an artifact (only the schema is read)."""
    with ctx.store.write() as session:
        model = session.query(Model).filter_by(name=name).one_or_none()
        if model is None:
            model = Model(name=name, created_by="tester")
            session.add(model)
            session.flush()
        session.add(
            ModelVersion(
                model_id=model.id,
                number=number,
                flavor="sklearn",
                artifact_key=f"models/{name}/{number}",
                output_schema=output_schema,
                created_by="tester",
            )
        )


def deploy(ctx: Context, endpoint: str, routes: list[tuple[str, int, int]]) -> None:
    """An endpoint whose current revision routes to (model, version, weight)."""
    with ctx.store.write() as session:
        row = Endpoint(name=endpoint, created_by="tester", current_revision=1)
        session.add(row)
        session.flush()
        policy = {"routes": [{"model": m, "version": v, "weight": w} for m, v, w in routes]}
        session.add(
            EndpointRevision(endpoint_id=row.id, number=1, policy=policy, kind="deploy", created_by="tester")
        )


@pytest.fixture
def ctx(any_client: LocalClient) -> Context:
    return any_client.ctx
