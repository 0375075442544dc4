"""Operational figures of the serving engine, kept as time series in the ``figures`` table.

Each worker process accumulates, per endpoint version and time bucket, its request and
error counts, rows, rejected rows, shadow comparisons and a latency histogram on fixed
bounds, and adds them to its own row of the table every few seconds. Because every worker
and replica uses the same bounds, histograms merge exactly: percentiles over any set of
workers and buckets come from the summed histogram, within one bucket of the exact value.
Prometheus answers "now, on this worker"; these figures answer "since Tuesday, on every
replica" for the console, the canary controller and the monitors.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from passerelle.store import Store
from passerelle.store.schema import Figure

__all__ = [
    "LATENCY_BOUNDS_MS",
    "FigureRecorder",
    "FigureSummary",
    "SeriesPoint",
    "histogram_percentile",
    "latency_bucket",
    "series",
    "summary",
]

logger = logging.getLogger(__name__)

#: Upper bounds (inclusive, milliseconds) of the latency histogram: 60 bounds spaced by a
#: factor of about 1.25 from 0.1 ms to 60 s, plus one last bucket for anything slower.
#: Stored histograms depend on them: never change them, only append.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.1, 0.125, 0.157, 0.197, 0.246, 0.309, 0.387, 0.485, 0.607, 0.761,
    0.954, 1.19, 1.5, 1.88, 2.35, 2.94, 3.69, 4.62, 5.79, 7.26,
    9.09, 11.4, 14.3, 17.9, 22.4, 28.1, 35.2, 44.1, 55.2, 69.2,
    86.7, 109.0, 136.0, 171.0, 214.0, 268.0, 335.0, 420.0, 527.0, 660.0,
    827.0, 1040.0, 1300.0, 1630.0, 2040.0, 2550.0, 3200.0, 4010.0, 5020.0, 6290.0,
    7880.0, 9880.0, 12400.0, 15500.0, 19400.0, 24300.0, 30500.0, 38200.0, 47900.0, 60000.0,
)  # fmt: skip
HISTOGRAM_SIZE = len(LATENCY_BOUNDS_MS) + 1
# Several recorders sharing a worker name would race on inserting the same row; each try
# re-reads, so a few are plenty.
_UPSERT_RETRIES = 5


def latency_bucket(latency_ms: float) -> int:
    """Index of the histogram bucket holding ``latency_ms``."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def histogram_percentile(hist: Sequence[int], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) of a latency histogram, in milliseconds.

    Linear interpolation inside the bucket that holds the rank, between the bucket's lower
    and upper bounds; a rank in the last, open bucket reports the last bound. None when the
    histogram is empty.
    """
    total = sum(hist)
    if total <= 0:
        return None
    rank = min(max(q, 0.0), 100.0) / 100 * total
    seen = 0
    for index, count in enumerate(hist):
        if count <= 0:
            continue
        if seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]


def add_hist(total: list[int], more: Sequence[int]) -> list[int]:
    if len(total) < len(more):
        total = total + [0] * (len(more) - len(total))
    out = list(total)
    for index, count in enumerate(more):
        out[index] += int(count)
    return out


def _add_counts(total: dict[str, int], more: dict[str, Any]) -> dict[str, int]:
    out = dict(total)
    for key, count in more.items():
        out[key] = out.get(key, 0) + int(count)
    return out


@dataclass
class _Figures:
    requests: int = 0
    errors: int = 0
    rows: int = 0
    rejected_rows: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_SIZE)
    shadow_compared: int = 0
    shadow_disagreed: int = 0
    shadow_dropped: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def add(self, other: _Figures) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.rows += other.rows
        self.rejected_rows += other.rejected_rows
        self.hist = add_hist(self.hist, other.hist)
        self.shadow_compared += other.shadow_compared
        self.shadow_disagreed += other.shadow_disagreed
        self.shadow_dropped += other.shadow_dropped
        self.rejections = _add_counts(self.rejections, other.rejections)


# (endpoint, model, version, bucket start)
_Key = tuple[str, str, int, dt.datetime]


class FigureRecorder:
    """Accumulates this worker's figures in memory and adds them to the store on :meth:`flush`.

    ``worker`` must be unique among the processes sharing a database (host name and pid,
    say): each worker owns its rows, so workers never contend for the same row.
    ``record`` and ``record_shadow`` may be called from any thread.
    """

    def __init__(self, worker: str, bucket_seconds: int = 60) -> None:
        if bucket_seconds < 1:
            raise ValueError("bucket_seconds must be at least 1")
        self.worker = worker
        self.bucket_seconds = bucket_seconds
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Figures] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._store: Store | None = None

    def bucket_of(self, at: dt.datetime | None = None) -> dt.datetime:
        """Start of the bucket holding ``at`` (now by default)."""
        stamp = time.time() if at is None else at.timestamp()
        start = int(stamp // self.bucket_seconds) * self.bucket_seconds
        return dt.datetime.fromtimestamp(start, dt.UTC)

    def _figures(self, endpoint: str, model: str, version: int, at: dt.datetime | None) -> _Figures:
        key = (endpoint, model, int(version), self.bucket_of(at))
        figures = self._pending.get(key)
        if figures is None:
            figures = self._pending[key] = _Figures()
        return figures

    def record(
        self,
        endpoint: str,
        model: str,
        version: int,
        latency_ms: float,
        *,
        rows: int = 1,
        error: bool = False,
        rejected_rows: int = 0,
        rejections: dict[str, int] | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """One answered (or failed) request of ``rows`` rows.

        ``rejections`` counts rejected rows by reason, e.g. ``{"age: above maximum": 3}``.
        """
        index = latency_bucket(latency_ms)
        with self._lock:
            figures = self._figures(endpoint, model, version, at)
            figures.requests += 1
            figures.errors += int(error)
            figures.rows += rows
            figures.rejected_rows += rejected_rows
            figures.hist[index] += 1
            if rejections:
                figures.rejections = _add_counts(figures.rejections, rejections)

    def record_shadow(
        self,
        endpoint: str,
        model: str,
        version: int,
        compared: int,
        disagreed: int,
        dropped: int,
        *,
        at: dt.datetime | None = None,
    ) -> None:
        """Rows mirrored to the shadow version ``model:version``: compared, disagreeing, dropped."""
        with self._lock:
            figures = self._figures(endpoint, model, version, at)
            figures.shadow_compared += compared
            figures.shadow_disagreed += disagreed
            figures.shadow_dropped += dropped

    @property
    def pending(self) -> int:
        """Series (endpoint version and bucket) accumulated since the last flush."""
        return len(self._pending)

    def flush(self, store: Store) -> int:
        """Add the accumulated figures to the store and forget them; returns the series written.

        When the store cannot be written, the figures are kept for the next flush.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            self._upsert(store, pending)
        except BaseException:
            with self._lock:
                for key, figures in pending.items():
                    current = self._pending.get(key)
                    if current is None:
                        self._pending[key] = figures
                    else:
                        current.add(figures)
            raise
        return len(pending)

    def _upsert(self, store: Store, pending: dict[_Key, _Figures]) -> None:
        endpoints = sorted({key[0] for key in pending})
        buckets = sorted({key[3] for key in pending})
        for attempt in range(_UPSERT_RETRIES):
            try:
                with store.write() as session:
                    # FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers.
                    rows = session.scalars(
                        select(Figure)
                        .where(
                            Figure.worker == self.worker,
                            Figure.endpoint.in_(endpoints),
                            Figure.bucket.in_(buckets),
                        )
                        .with_for_update()
                    ).all()
                    existing = {(r.endpoint, r.model, r.version, r.bucket): r for r in rows}
                    for key, figures in pending.items():
                        row = existing.get(key)
                        if row is None:
                            session.add(
                                Figure(
                                    endpoint=key[0],
                                    model=key[1],
                                    version=key[2],
                                    bucket=key[3],
                                    worker=self.worker,
                                    requests=figures.requests,
                                    errors=figures.errors,
                                    rows=figures.rows,
                                    rejected_rows=figures.rejected_rows,
                                    latency_hist=list(figures.hist),
                                    shadow_compared=figures.shadow_compared,
                                    shadow_disagreed=figures.shadow_disagreed,
                                    shadow_dropped=figures.shadow_dropped,
                                    rejections=dict(figures.rejections),
                                )
                            )
                            continue
                        row.requests += figures.requests
                        row.errors += figures.errors
                        row.rows += figures.rows
                        row.rejected_rows += figures.rejected_rows
                        # New objects, so that the JSON columns are seen as changed.
                        row.latency_hist = add_hist(list(row.latency_hist or []), figures.hist)
                        row.shadow_compared += figures.shadow_compared
                        row.shadow_disagreed += figures.shadow_disagreed
                        row.shadow_dropped += figures.shadow_dropped
                        row.rejections = _add_counts(dict(row.rejections or {}), figures.rejections)
                return
            except DBIntegrityError:
                if attempt == _UPSERT_RETRIES - 1:
                    raise

    def start(self, store: Store, interval_s: float = 5.0) -> None:
        """Flush every ``interval_s`` seconds from a background thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("the figure recorder is already started")
        self._store = store
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(store, interval_s), name="passerelle-figures", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and flush what is left."""
        thread, store = self._thread, self._store
        if thread is None or store is None:
            return
        self._stopping.set()
        thread.join()
        self._thread = None
        try:
            self.flush(store)
        except Exception:
            logger.warning("could not write the last serving figures", exc_info=True)

    def _run(self, store: Store, interval_s: float) -> None:
        failing = False
        while not self._stopping.wait(interval_s):
            try:
                self.flush(store)
            except Exception as exc:
                # The whole traceback once per outage; a line per retry after that.
                logger.warning(
                    "could not write serving figures; will retry: %s",
                    str(exc).splitlines()[0] if str(exc) else exc,
                    exc_info=not failing,
                )
                failing = True
            else:
                if failing:
                    logger.info("serving figures written again")
                failing = False


@dataclass(frozen=True)
class FigureSummary:
    """Figures of one endpoint version, merged over workers and buckets.

    Percentiles are None when no request was recorded; rates are 0 when nothing was counted.
    """

    model: str
    version: int
    requests: int
    errors: int
    error_rate: float
    rows: int
    rejected_rows: int
    rejections: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    shadow_compared: int
    shadow_disagreed: int
    disagreement_rate: float
    shadow_dropped: int
    latency_hist: list[int]


@dataclass(frozen=True)
class SeriesPoint(FigureSummary):
    """Figures of one endpoint version over one step, starting at ``at``."""

    at: dt.datetime


def _summarise(model: str, version: int, figures: _Figures) -> dict[str, Any]:
    return {
        "model": model,
        "version": version,
        "requests": figures.requests,
        "errors": figures.errors,
        "error_rate": figures.errors / figures.requests if figures.requests else 0.0,
        "rows": figures.rows,
        "rejected_rows": figures.rejected_rows,
        "rejections": dict(figures.rejections),
        "p50_ms": histogram_percentile(figures.hist, 50),
        "p95_ms": histogram_percentile(figures.hist, 95),
        "p99_ms": histogram_percentile(figures.hist, 99),
        "shadow_compared": figures.shadow_compared,
        "shadow_disagreed": figures.shadow_disagreed,
        "disagreement_rate": (
            figures.shadow_disagreed / figures.shadow_compared if figures.shadow_compared else 0.0
        ),
        "shadow_dropped": figures.shadow_dropped,
        "latency_hist": list(figures.hist),
    }


def _rows(
    store: Store,
    endpoint: str,
    since: dt.datetime,
    until: dt.datetime | None,
    model: str | None,
    version: int | None,
) -> Iterable[tuple[str, int, dt.datetime, _Figures]]:
    query = select(
        Figure.model,
        Figure.version,
        Figure.bucket,
        Figure.requests,
        Figure.errors,
        Figure.rows,
        Figure.rejected_rows,
        Figure.latency_hist,
        Figure.shadow_compared,
        Figure.shadow_disagreed,
        Figure.shadow_dropped,
        Figure.rejections,
    ).where(Figure.endpoint == endpoint, Figure.bucket >= since)
    if until is not None:
        query = query.where(Figure.bucket < until)
    if model is not None:
        query = query.where(Figure.model == model)
    if version is not None:
        query = query.where(Figure.version == version)
    with store.read() as session:
        fetched = session.execute(query).all()
    for row in fetched:
        yield (
            row.model,
            row.version,
            row.bucket,
            _Figures(
                requests=row.requests,
                errors=row.errors,
                rows=row.rows,
                rejected_rows=row.rejected_rows,
                hist=list(row.latency_hist or []),
                shadow_compared=row.shadow_compared,
                shadow_disagreed=row.shadow_disagreed,
                shadow_dropped=row.shadow_dropped,
                rejections=dict(row.rejections or {}),
            ),
        )


def summary(
    store: Store,
    endpoint: str,
    *,
    since: dt.datetime,
    model: str | None = None,
    version: int | None = None,
    until: dt.datetime | None = None,
) -> dict[tuple[str, int], FigureSummary]:
    """Figures of each version of ``endpoint`` over the buckets starting in [since, until)."""
    merged: dict[tuple[str, int], _Figures] = {}
    for row_model, row_version, _bucket, figures in _rows(store, endpoint, since, until, model, version):
        merged.setdefault((row_model, row_version), _Figures()).add(figures)
    return {key: FigureSummary(**_summarise(*key, figures)) for key, figures in sorted(merged.items())}


def series(
    store: Store,
    endpoint: str,
    since: dt.datetime,
    step_seconds: int,
    *,
    model: str | None = None,
    version: int | None = None,
    until: dt.datetime | None = None,
) -> list[SeriesPoint]:
    """Figures of each version of ``endpoint`` per step of ``step_seconds``, oldest first.

    Steps start at multiples of ``step_seconds`` since the epoch; make it a multiple of the
    recorders' bucket size. Steps without any figure are left out.
    """
    if step_seconds < 1:
        raise ValueError("step_seconds must be at least 1")
    merged: dict[tuple[dt.datetime, str, int], _Figures] = {}
    for row_model, row_version, bucket, figures in _rows(store, endpoint, since, until, model, version):
        start = int(bucket.timestamp() // step_seconds) * step_seconds
        at = dt.datetime.fromtimestamp(start, dt.UTC)
        merged.setdefault((at, row_model, row_version), _Figures()).add(figures)
    return [
        SeriesPoint(**_summarise(row_model, row_version, figures), at=at)
        for (at, row_model, row_version), figures in sorted(merged.items())
    ]
