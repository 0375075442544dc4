"""Prometheus collectors of the serving engine, created on a registry the caller passes in.

Nothing is registered on prometheus_client's global registry: every app (and every test)
owns its :class:`~prometheus_client.CollectorRegistry`, so two apps in one process never
collide and tests need no clean-up.

Several worker processes
------------------------
Each worker process keeps its own counters; a scrape reaches one worker only. Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by the workers *before they start*
(prometheus_client chooses its storage when it is first imported): every worker then
writes its values to memory-mapped files there and :meth:`ServingMetrics.render`, in any
worker, merges the files of all of them. Empty the folder when the server (re)starts, and
call :func:`worker_exited` with the pid of a worker that died so its live gauges disappear.
Counters and histograms are summed across workers; the queue gauges are summed over live
workers; ``log_lag_seconds`` reports the largest lag of the live workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: request latency in seconds: 0.5 ms to 5 s, denser where online models usually answer
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: time a request waits in a batcher's queue before its model call starts
QUEUE_WAIT_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: rows per model call: powers of two up to the largest sensible batch
BATCH_ROWS_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(13))


def multiprocess_dir() -> str | None:
    """The folder shared by worker processes, when multiprocess mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None


def worker_exited(pid: int) -> None:
    """Forget the live gauges of a worker process that ended (multiprocess mode only)."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class ServingMetrics:
    """Every serving collector, on ``registry``.

    Label values are strings; a version is its number (``"3"``). ``code`` is the HTTP
    status code or another short outcome name chosen by the front end.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns = "passerelle"
        version = ("endpoint", "model", "version")
        self.requests = Counter(
            "requests",
            "Prediction requests answered, by outcome code.",
            [*version, "code"],
            namespace=ns,
            registry=registry,
        )
        self.request_rows = Counter(
            "request_rows",
            "Rows received in prediction requests.",
            version,
            namespace=ns,
            registry=registry,
        )
        self.errors = Counter(
            "errors",
            "Failed predictions, by kind (model, schema, overloaded, shadow, ...).",
            [*version, "kind"],
            namespace=ns,
            registry=registry,
        )
        self.rejected_rows = Counter(
            "rejected_rows",
            "Input rows refused by the signature checks, by column and reason.",
            ["endpoint", "column", "reason"],
            namespace=ns,
            registry=registry,
        )
        self.request_latency = Histogram(
            "request_latency_seconds",
            "Time to answer a prediction request.",
            version,
            buckets=LATENCY_BUCKETS_S,
            namespace=ns,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "batch_rows",
            "Rows per model call after micro-batching.",
            ["model", "version"],
            buckets=BATCH_ROWS_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.queue_rows = Gauge(
            "queue_rows",
            "Rows waiting in a version's batching queue.",
            ["model", "version"],
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "Time a request waited in a batching queue before its model call started.",
            ["model", "version"],
            buckets=QUEUE_WAIT_BUCKETS_S,
            namespace=ns,
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "shadow_dropped",
            "Rows not mirrored to a shadow version because its queue was full.",
            version,
            namespace=ns,
            registry=registry,
        )
        self.shadow_requests = Counter(
            "shadow_requests",
            "Rows mirrored to a shadow version and compared with the served answer.",
            version,
            namespace=ns,
            registry=registry,
        )
        self.shadow_disagreements = Counter(
            "shadow_disagreements",
            "Mirrored rows whose shadow answer disagrees with the served one.",
            version,
            namespace=ns,
            registry=registry,
        )
        self.log_queue_depth = Gauge(
            "log_queue_depth",
            "Prediction log records not yet written to the store.",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.log_lag = Gauge(
            "log_lag_seconds",
            "Age of the oldest prediction log record not yet written to the store.",
            namespace=ns,
            registry=registry,
            multiprocess_mode="livemax",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every collector and its content type.

        In multiprocess mode the values of every worker sharing the folder are merged,
        whichever worker answers the scrape.
        """
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST
