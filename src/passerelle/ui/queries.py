"""The few read-only queries the console needs and the services do not offer in that shape.

Every page must stay fast on a store with millions of logged predictions, so each query here
reads aggregates (serving figures, monitor figures) through an index, for many endpoints at
once where the services would ask once per endpoint, and never the ``predictions`` table.
They only read: every change the console makes goes through the client and its services.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Text, and_, case, cast, func, select

from passerelle.endpoints import EndpointInfo
from passerelle.policy import Policy
from passerelle.registry import ModelInfo
from passerelle.serving.figures import histogram_percentile
from passerelle.store import Store
from passerelle.store.schema import (
    Alias,
    Endpoint,
    EndpointRevision,
    Figure,
    Model,
    ModelVersion,
    MonitorResult,
)

#: endpoints read per ``IN (...)`` list: well under every database's limit on bound parameters
_CHUNK = 500


@dataclass
class Traffic:
    """Serving figures of one endpoint version (or ``"all"`` of them) over a period or a step."""

    requests: int = 0
    errors: int = 0
    shadow_compared: int = 0
    shadow_disagreed: int = 0
    hist: np.ndarray[Any, np.dtype[np.int64]] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, requests: int, errors: int, compared: int, disagreed: int, hist: Any) -> None:
        self.requests += requests
        self.errors += errors
        self.shadow_compared += compared
        self.shadow_disagreed += disagreed
        if len(hist):
            more = np.asarray(hist, dtype=np.int64)
            if len(more) > len(self.hist):
                self.hist = np.pad(self.hist, (0, len(more) - len(self.hist)))
            self.hist[: len(more)] += more

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p99_ms(self) -> float | None:
        return histogram_percentile(self.hist.tolist(), 99) if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        return histogram_percentile(self.hist.tolist(), 50) if self.requests else None

    @property
    def agreement(self) -> float | None:
        if not self.shadow_compared:
            return None
        return 1.0 - self.shadow_disagreed / self.shadow_compared


def _chunks(names: Sequence[str]) -> list[Sequence[str]]:
    return [names[i : i + _CHUNK] for i in range(0, len(names), _CHUNK)]


# The histograms are read as JSON text and parsed here: the ORM's JSON handling costs more than
# the rest of a page when a chart reads a few thousand one-minute rows.
_FIGURE_COLUMNS = (
    Figure.endpoint,
    Figure.model,
    Figure.version,
    Figure.bucket,
    Figure.requests,
    Figure.errors,
    Figure.shadow_compared,
    Figure.shadow_disagreed,
    cast(Figure.latency_hist, Text).label("hist"),
)


def _hist(text: str | None) -> Any:
    return orjson.loads(text) if text else ()


def recent_traffic(
    store: Store, endpoints: Sequence[str], *, since: dt.datetime
) -> dict[str, dict[str, Traffic]]:
    """Per endpoint, its figures since ``since``: by version ref, and ``"all"`` merged.

    One query per few hundred endpoints, each an index range on (endpoint, bucket).
    """
    out: dict[str, dict[str, Traffic]] = {name: {} for name in endpoints}
    with store.read() as session:
        for names in _chunks(list(endpoints)):
            rows = session.execute(
                select(*_FIGURE_COLUMNS).where(Figure.endpoint.in_(names), Figure.bucket >= since)
            ).all()
            for row in rows:
                figures = out.setdefault(row.endpoint, {})
                hist = _hist(row.hist)
                for key in (f"{row.model}:{row.version}", "all"):
                    figures.setdefault(key, Traffic()).add(
                        row.requests, row.errors, row.shadow_compared, row.shadow_disagreed, hist
                    )
    return out


@dataclass(frozen=True)
class Step:
    """The figures of one version over one step of a time series."""

    at: dt.datetime
    ref: str
    requests: int
    error_rate: float | None
    p99_ms: float | None
    #: the length of the step
    seconds: float


def traffic_series(store: Store, endpoint: str, *, since: dt.datetime, step_s: int) -> list[Step]:
    """The serving figures of ``endpoint`` per version and step of ``step_s`` seconds, oldest first."""
    merged: dict[tuple[int, str], Traffic] = {}
    with store.read() as session:
        rows = session.execute(
            select(*_FIGURE_COLUMNS).where(Figure.endpoint == endpoint, Figure.bucket >= since)
        ).all()
    for row in rows:
        if not row.requests:
            continue  # a shadow's comparisons: no served traffic in them
        key = (int(row.bucket.timestamp()) // step_s * step_s, f"{row.model}:{row.version}")
        merged.setdefault(key, Traffic()).add(row.requests, row.errors, 0, 0, _hist(row.hist))
    return [
        Step(dt.datetime.fromtimestamp(start, dt.UTC), ref, t.requests, t.error_rate, t.p99_ms, float(step_s))
        for (start, ref), t in sorted(merged.items())
    ]


def shadow_totals(store: Store, endpoint: str, *, since: dt.datetime) -> dict[str, tuple[int, int]]:
    """Rows compared with each shadow since ``since`` and how many disagreed, summed by the database."""
    with store.read() as session:
        rows = session.execute(
            select(
                Figure.model,
                Figure.version,
                func.sum(Figure.shadow_compared),
                func.sum(Figure.shadow_disagreed),
            )
            .where(Figure.endpoint == endpoint, Figure.bucket >= since)
            .group_by(Figure.model, Figure.version)
        ).all()
    return {f"{model}:{version}": (int(c or 0), int(d or 0)) for model, version, c, d in rows}


def endpoint_infos(store: Store) -> list[EndpointInfo]:
    """Every endpoint with the policy of its current revision, in one query."""
    query = (
        select(Endpoint, EndpointRevision.policy)
        .join(
            EndpointRevision,
            and_(
                EndpointRevision.endpoint_id == Endpoint.id,
                EndpointRevision.number == Endpoint.current_revision,
            ),
        )
        .order_by(Endpoint.name)
    )
    with store.read() as session:
        return [
            EndpointInfo(
                name=endpoint.name,
                created_at=endpoint.created_at,
                created_by=endpoint.created_by,
                revision=endpoint.current_revision,
                policy=Policy.model_validate(policy),
                updated_at=endpoint.updated_at,
            )
            for endpoint, policy in session.execute(query)
        ]


def models_summary(store: Store) -> list[ModelInfo]:
    """Every model with its number of versions, its latest live version and its aliases.

    Counted by the database: listing a registry of thousands of versions reads one row per model.
    """
    counts = (
        select(
            Model,
            func.count(ModelVersion.id),
            func.max(case((ModelVersion.archived.is_(False), ModelVersion.number))),
        )
        .outerjoin(ModelVersion, ModelVersion.model_id == Model.id)
        .group_by(Model.id)
        .order_by(Model.name)
    )
    aliases = select(Alias.model_id, Alias.name, ModelVersion.number).join(
        ModelVersion, ModelVersion.id == Alias.version_id
    )
    with store.read() as session:
        named: dict[int, dict[str, int]] = {}
        for model_id, alias, number in session.execute(aliases):
            named.setdefault(model_id, {})[alias] = number
        return [
            ModelInfo(
                name=model.name,
                description=model.description,
                created_at=model.created_at,
                created_by=model.created_by,
                latest=latest,
                versions=int(count),
                aliases=dict(sorted(named.get(model.id, {}).items())),
            )
            for model, count, latest in session.execute(counts)
        ]


@dataclass(frozen=True)
class WindowFigures:
    """One monitored window of one version (``ref`` "all": every version), without its details."""

    start: dt.datetime
    end: dt.datetime
    ref: str
    status: str
    rows: int
    figures: dict[str, float | None]
    evaluated_at: dt.datetime


def monitor_windows(
    store: Store, endpoint: str, *, since: dt.datetime, until: dt.datetime
) -> list[WindowFigures]:
    """The windows of ``endpoint`` starting in [since, until), oldest first, figures only.

    The details (drift reports, sketches) are what make a result large; the charts need none.
    """
    query = (
        select(
            MonitorResult.window_start,
            MonitorResult.window_end,
            MonitorResult.model,
            MonitorResult.version,
            MonitorResult.status,
            MonitorResult.rows,
            MonitorResult.figures,
            MonitorResult.evaluated_at,
        )
        .where(
            MonitorResult.endpoint == endpoint,
            MonitorResult.window_start >= since,
            MonitorResult.window_start < until,
        )
        .order_by(MonitorResult.window_start, MonitorResult.version, MonitorResult.model)
    )
    with store.read() as session:
        rows = session.execute(query).all()
    return [
        WindowFigures(
            start=row.window_start,
            end=row.window_end,
            ref=f"{row.model}:{row.version}" if row.version else "all",
            status=row.status,
            rows=int(row.rows),
            figures=_figures(row.figures),
            evaluated_at=row.evaluated_at,
        )
        for row in rows
    ]


def _figures(raw: Any) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): (float(v) if isinstance(v, int | float) else None) for k, v in raw.items()}


def latest_status(store: Store, endpoints: Sequence[str]) -> dict[str, tuple[str, dt.datetime]]:
    """The status and end of each endpoint's newest judged window (the whole endpoint's row).

    One short index read per endpoint, newest first, instead of a scan of every window since
    some date: the newest window is a handful of rows whatever the history.
    """
    out: dict[str, tuple[str, dt.datetime]] = {}
    with store.read() as session:
        for name in endpoints:
            rows = session.execute(
                select(
                    MonitorResult.window_start,
                    MonitorResult.version,
                    MonitorResult.status,
                    MonitorResult.window_end,
                )
                .where(MonitorResult.endpoint == name)
                .order_by(MonitorResult.window_start.desc())
                .limit(16)
            ).all()
            if rows:
                newest = rows[0].window_start
                whole = next((r for r in rows if r.window_start == newest and r.version == 0), None)
                if whole is not None:
                    out[name] = (whole.status, whole.window_end)
    return out
