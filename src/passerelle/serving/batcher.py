"""Adaptive micro-batching: concurrent requests to one version become one model call.

Rules, in order of importance:

- A request that arrives while the model is idle and nothing is queued is dispatched at
  once; it never waits for a timer. Requests that arrive in the same event loop turn still
  share that call, since dispatching happens on the next turn.
- While a call runs, arriving requests queue. When it ends, everything queued (up to
  ``max_batch_rows``; a request larger than that goes alone) becomes the next call. Under
  load, batches therefore grow by themselves with the model's latency, and without load
  nothing is delayed.
- ``max_wait_ms`` only matters when ``min_batch_rows`` (a "useful batch") is above 1: the
  dispatcher may then hold an idle model for up to ``max_wait_ms`` while fewer rows than
  that are queued. The default ``min_batch_rows=1`` keeps "alone = immediate".
- When a coalesced call raises, each request of the batch is run again on its own, so
  only the faulty request gets the exception.
- The queue is bounded by rows: beyond ``max_queue_rows``, :meth:`Batcher.submit` raises
  :class:`Overloaded` at once, and a request still queued after ``queue_timeout_s`` is
  failed with :class:`Overloaded` too. Both carry a ``retry_after_s`` estimate.

Model calls run in an executor (by default a dedicated single thread per batcher), so the
event loop keeps accepting requests while the model computes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from passerelle.errors import PasserelleError
from passerelle.serving.threads import one_openmp_thread

if TYPE_CHECKING:
    from passerelle.flavors.base import Predictor
    from passerelle.serving.metrics import ServingMetrics

__all__ = [
    "BatchOutput",
    "Batcher",
    "BatcherStats",
    "ModelCall",
    "Overloaded",
    "concat_frames",
    "frame_key",
    "predictor_call",
]


class Overloaded(PasserelleError):
    """The version cannot take more work now; try again after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message or f"the model is overloaded; retry after {retry_after_s:.2f} s")


@dataclass(frozen=True, eq=False)
class BatchOutput:
    """What one model call returns: one prediction per row and, for classifiers, probabilities.

    ``classes`` labels the ``proba`` columns when the model knows them; shadow comparisons
    use it to line up the columns of two versions.
    """

    predictions: np.ndarray[Any, Any]
    proba: np.ndarray[Any, Any] | None = None
    classes: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.predictions)

    def slice(self, start: int, stop: int) -> BatchOutput:
        """The rows ``start`` to ``stop`` (excluded)."""
        proba = None if self.proba is None else self.proba[start:stop]
        return BatchOutput(self.predictions[start:stop], proba, self.classes)

    def check_rows(self, rows: int) -> None:
        """Raise :class:`ValueError` unless every output has exactly ``rows`` rows."""
        if len(self.predictions) != rows:
            raise ValueError(f"the model returned {len(self.predictions)} predictions for {rows} rows")
        if self.proba is not None and len(self.proba) != rows:
            raise ValueError(f"the model returned {len(self.proba)} probability rows for {rows} rows")


ModelCall = Callable[[pd.DataFrame], BatchOutput]


def predictor_call(predictor: Predictor, *, proba: bool = True) -> ModelCall:
    """A model call over a loaded predictor: its predictions, and probabilities when it has them."""
    classes = list(predictor.classes) if predictor.classes is not None else None
    with_proba = proba and predictor.has_proba

    def call(frame: pd.DataFrame) -> BatchOutput:
        predictions = np.asarray(predictor.predict(frame))
        probabilities = np.asarray(predictor.predict_proba(frame)) if with_proba else None
        return BatchOutput(predictions, probabilities, classes)

    return call


def run_call(call: ModelCall, frame: pd.DataFrame) -> BatchOutput:
    """``call(frame)``, refusing an answer that is not a :class:`BatchOutput` of the right length."""
    out = call(frame)
    if not isinstance(out, BatchOutput):
        raise TypeError(f"a model call must return a BatchOutput, not {type(out).__name__}")
    out.check_rows(len(frame))
    return out


def frame_key(frame: pd.DataFrame) -> tuple[Any, ...]:
    """Frames with equal keys concatenate without changing any column's type.

    Building ``DataFrame.dtypes`` costs tens of microseconds; a caller that knows the types
    of the frame it built (the gateway's fast path) passes the same tuple to
    :meth:`Batcher.submit` instead.
    """
    return tuple(frame.dtypes.items())


_FLOAT = np.dtype(np.float64)


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``frames`` (of equal :func:`frame_key`) as one frame with a fresh index.

    Frames of float columns only, as single-row requests mostly are, are stacked as one
    block: the same frame ``pd.concat`` gives, at half its cost. The block stays row-major
    (``copy=False``): tree ensembles walk it row by row and are about three times slower
    on a column-major copy.
    """
    first = frames[0]
    columns = first.columns
    if all(f.columns is columns for f in frames) and all(dtype == _FLOAT for dtype in first.dtypes):
        matrix = np.ascontiguousarray(
            np.concatenate([f.to_numpy(dtype=np.float64, copy=False) for f in frames])
        )
        return pd.DataFrame(matrix, columns=columns, copy=False)
    return pd.concat(frames, ignore_index=True)


def run_coalesced(call: ModelCall, frames: Sequence[pd.DataFrame]) -> list[BatchOutput | Exception]:
    """One call over all ``frames``; when it fails, one call per frame so a bad one fails alone."""
    if len(frames) == 1:
        return [_run_alone(call, frames[0])]
    try:
        out = run_call(call, concat_frames(frames))
    except Exception:
        return [_run_alone(call, frame) for frame in frames]
    results: list[BatchOutput | Exception] = []
    start = 0
    for frame in frames:
        results.append(out.slice(start, start + len(frame)))
        start += len(frame)
    return results


def _run_alone(call: ModelCall, frame: pd.DataFrame) -> BatchOutput | Exception:
    try:
        return run_call(call, frame)
    except Exception as exc:
        return exc


def _timed(call: ModelCall, frames: Sequence[pd.DataFrame]) -> tuple[list[BatchOutput | Exception], float]:
    start = time.perf_counter()
    results = run_coalesced(call, frames)
    return results, time.perf_counter() - start


#: seconds between two writes of the queue gauge on arrivals
GAUGE_INTERVAL_S = 0.1


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    GONE = "gone"


class _Pending:
    __slots__ = ("enqueued", "frame", "future", "key", "rows", "state", "timer")

    def __init__(
        self,
        frame: pd.DataFrame,
        future: asyncio.Future[BatchOutput],
        enqueued: float,
        key: tuple[Any, ...] | None,
    ) -> None:
        self.frame: pd.DataFrame | None = frame
        self.rows = len(frame)
        self.key = frame_key(frame) if key is None else key
        self.future = future
        self.enqueued = enqueued
        self.state = _State.QUEUED
        self.timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class BatcherStats:
    """Counts since the batcher was created."""

    calls: int
    rows: int
    requests: int
    rejected: int
    expired: int
    isolated_failures: int


class Batcher:
    """Coalesces concurrent :meth:`submit` calls into model calls run in an executor.

    ``name`` is the version it serves, as ``model:version``; it labels the metrics.
    Use one batcher per loaded version, from one event loop. See the module documentation
    for the batching rules.
    """

    def __init__(
        self,
        call: ModelCall,
        *,
        name: str,
        max_batch_rows: int = 256,
        max_wait_ms: float = 2.0,
        max_queue_rows: int = 4096,
        executor: concurrent.futures.Executor | None = None,
        metrics: ServingMetrics | None = None,
        min_batch_rows: int = 1,
        queue_timeout_s: float = 5.0,
    ) -> None:
        if max_batch_rows < 1 or max_queue_rows < 1 or min_batch_rows < 1:
            raise ValueError("max_batch_rows, max_queue_rows and min_batch_rows must be at least 1")
        if max_wait_ms < 0 or queue_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and queue_timeout_s > 0")
        self.call = call
        self.name = name
        self.max_batch_rows = max_batch_rows
        self.max_wait_ms = max_wait_ms
        self.max_queue_rows = max_queue_rows
        self.min_batch_rows = min(min_batch_rows, max_batch_rows)
        self.queue_timeout_s = queue_timeout_s
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"passerelle-batch-{name}", initializer=one_openmp_thread
        )
        model, sep, version = name.rpartition(":")
        labels = (model, version) if sep else (name, "")
        self._batch_rows = metrics.batch_rows.labels(*labels) if metrics else None
        self._queue_gauge = metrics.queue_rows.labels(*labels) if metrics else None
        self._queue_wait = metrics.queue_wait.labels(*labels) if metrics else None
        self._gauge_at = float("-inf")

        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued = 0
        self._queued_rows = 0
        self._running = False
        self._wakeup: asyncio.Handle | None = None
        self._wakeup_at = 0.0
        self._idle: asyncio.Event | None = None
        self._closed = False
        # Seconds per model call, smoothed; only used to estimate Retry-After.
        self._call_seconds = 0.01

        self._calls = 0
        self._rows = 0
        self._requests = 0
        self._rejected = 0
        self._expired = 0
        self._isolated = 0

    # -- public ------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a model call (not counting the call in progress)."""
        return self._queued_rows

    @property
    def busy(self) -> bool:
        """True while a model call is in progress."""
        return self._running

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(
            calls=self._calls,
            rows=self._rows,
            requests=self._requests,
            rejected=self._rejected,
            expired=self._expired,
            isolated_failures=self._isolated,
        )

    def retry_after(self) -> float:
        """Seconds after which the queue as it is now should have been worked off."""
        calls_ahead = self._queued_rows / self.max_batch_rows + (1 if self._running else 0)
        return min(60.0, max(0.1, calls_ahead * self._call_seconds))

    async def submit(self, frame: pd.DataFrame, key: tuple[Any, ...] | None = None) -> BatchOutput:
        """Predict ``frame``; returns the outputs of these rows only.

        ``key``, when given, must be what :func:`frame_key` returns for ``frame``.
        Raises :class:`Overloaded` when the queue is full or the request waited too long,
        and whatever the model call raised for this request.
        """
        loop = asyncio.get_running_loop()
        self._bind(loop)
        if self._closed:
            raise Overloaded(1.0, f"{self.name} is shutting down")
        rows = len(frame)
        # An empty queue always accepts, so that one request larger than the bound can
        # still be served (alone) instead of being refused forever.
        if self._queued and self._queued_rows + rows > self.max_queue_rows:
            self._rejected += 1
            raise Overloaded(
                self.retry_after(),
                f"{self.name} has {self._queued_rows} rows queued (at most {self.max_queue_rows})",
            )
        pending = _Pending(frame, loop.create_future(), loop.time(), key)
        pending.timer = loop.call_later(self.queue_timeout_s, self._expire, pending)
        self._queue.append(pending)
        self._queued += 1
        self._queued_rows += rows
        self._requests += 1
        if self._idle is not None:
            self._idle.clear()
        self._gauge(arriving=True)
        self._schedule()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending.state is _State.QUEUED:
                self._forget(pending)
                self._gauge()
                self._check_idle()
            raise

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued ones finish (up to ``timeout_s``), release the executor."""
        self._closed = True
        if self._loop is not None and (self._running or self._queued):
            idle = self._idle_event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), timeout_s)
        self.close()

    def close(self) -> None:
        """Fail the queued requests and release the executor this batcher created, without waiting.

        Call it from the event loop the batcher serves.
        """
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        for pending in list(self._queue):
            if pending.state is _State.QUEUED:
                self._forget(pending)
                if not pending.future.done():
                    pending.future.set_exception(Overloaded(1.0, f"{self.name} is shutting down"))
        self._queue.clear()
        self._gauge()
        if self._own_executor:
            self._executor.shutdown(wait=not self._running, cancel_futures=True)

    async def __aenter__(self) -> Batcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- internals ---------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        if self._loop is not None and (self._running or self._queued):
            raise RuntimeError(f"batcher {self.name} is busy on another event loop")
        self._loop = loop
        self._wakeup = None
        self._idle = None

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not (self._running or self._queued):
                self._idle.set()
        return self._idle

    def _check_idle(self) -> None:
        if self._idle is not None and not (self._running or self._queued):
            self._idle.set()

    def _gauge(self, *, arriving: bool = False) -> None:
        if self._queue_gauge is None:
            return
        if arriving and self._loop is not None:
            # A multiprocess gauge write costs as much as the rest of submit(): for arrivals,
            # at most one every GAUGE_INTERVAL_S (dispatches and expiries always write).
            now = self._loop.time()
            if now - self._gauge_at < GAUGE_INTERVAL_S:
                return
            self._gauge_at = now
        self._queue_gauge.set(self._queued_rows)

    def _forget(self, pending: _Pending) -> None:
        pending.state = _State.GONE
        # The deque keeps the entry until the dispatcher passes it; dropping the frame
        # now keeps memory bounded by the live rows.
        pending.frame = None
        if pending.timer is not None:
            pending.timer.cancel()
        self._queued -= 1
        self._queued_rows -= pending.rows

    def _expire(self, pending: _Pending) -> None:
        if pending.state is not _State.QUEUED:
            return
        self._forget(pending)
        self._expired += 1
        self._gauge()
        if not pending.future.done():
            pending.future.set_exception(
                Overloaded(
                    self.retry_after(),
                    f"the request waited more than {self.queue_timeout_s:g} s in the queue of {self.name}",
                )
            )
        self._check_idle()

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or self._running or not self._queued:
            return
        now = loop.time()
        due = now
        if self._queued_rows < self.min_batch_rows:
            oldest = next(p.enqueued for p in self._queue if p.state is _State.QUEUED)
            due = oldest + self.max_wait_ms / 1000
        if self._wakeup is not None:
            if self._wakeup_at <= due:
                return
            self._wakeup.cancel()
        self._wakeup_at = due
        # call_soon rather than a direct call: requests submitted in the same loop turn
        # join this call instead of waiting for the next one.
        self._wakeup = loop.call_soon(self._dispatch) if due <= now else loop.call_at(due, self._dispatch)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            pending = self._queue[0]
            if pending.state is not _State.QUEUED or pending.future.done():
                self._queue.popleft()
                if pending.state is _State.QUEUED:
                    self._forget(pending)
                continue
            if batch and (pending.key != batch[0].key or rows + pending.rows > self.max_batch_rows):
                break
            self._queue.popleft()
            batch.append(pending)
            rows += pending.rows
        return batch

    def _dispatch(self) -> None:
        self._wakeup = None
        loop = self._loop
        if loop is None or self._running:
            return
        batch = self._take()
        if not batch:
            self._check_idle()
            return
        now = loop.time()
        frames: list[pd.DataFrame] = []
        for pending in batch:
            if pending.timer is not None:
                pending.timer.cancel()
            pending.state = _State.RUNNING
            self._queued -= 1
            self._queued_rows -= pending.rows
            assert pending.frame is not None
            frames.append(pending.frame)
            pending.frame = None
            if self._queue_wait is not None:
                self._queue_wait.observe(now - pending.enqueued)
        rows = sum(len(f) for f in frames)
        self._calls += 1
        self._rows += rows
        if self._batch_rows is not None:
            self._batch_rows.observe(rows)
        self._gauge()
        self._running = True
        try:
            future = loop.run_in_executor(self._executor, _timed, self.call, frames)
        except RuntimeError:  # the executor was shut down
            self._finish(batch, [Overloaded(1.0, f"{self.name} is shutting down")] * len(batch))
            return
        future.add_done_callback(functools.partial(self._finished, batch))

    def _finished(
        self, batch: list[_Pending], future: asyncio.Future[tuple[list[BatchOutput | Exception], float]]
    ) -> None:
        error = Overloaded(1.0, f"{self.name} is shutting down") if future.cancelled() else future.exception()
        if error is not None:
            self._finish(batch, [error] * len(batch))
            return
        results, seconds = future.result()
        self._call_seconds = 0.8 * self._call_seconds + 0.2 * seconds
        if len(batch) > 1:
            self._isolated += sum(isinstance(r, Exception) for r in results)
        self._finish(batch, results)

    def _finish(self, batch: list[_Pending], outcomes: Sequence[BatchOutput | BaseException]) -> None:
        self._running = False
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.state = _State.GONE
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        self._schedule()
        self._check_idle()
