"""Shadow traffic: served requests mirrored to other versions, off the response path.

:meth:`ShadowDispatcher.offer` is called right after a request was answered. It never
blocks and never raises: it queues a copy of the rows, or drops them (and counts the drop)
when the queue is full, so a slow or broken shadow version can neither slow down nor fail
the served traffic. A background task coalesces the queued rows of each shadow version
into batched calls, run in the dispatcher's own executor (never the served versions'),
compares each answer with the served one and hands the results to ``on_result``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from passerelle.serving.batcher import BatchOutput, ModelCall, concat_frames, frame_key, run_call
from passerelle.serving.threads import one_openmp_thread

if TYPE_CHECKING:
    from passerelle.serving.metrics import ServingMetrics

__all__ = ["ShadowDispatcher", "ShadowResult", "ShadowTarget", "compare", "should_mirror"]

logger = logging.getLogger(__name__)


class ShadowTarget(NamedTuple):
    """A shadow version of an endpoint."""

    endpoint: str
    model: str
    version: int

    def __str__(self) -> str:
        return f"{self.endpoint}/{self.model}:{self.version}"


@dataclass(frozen=True, eq=False)
class ShadowResult:
    """A shadow version's answer to one mirrored request.

    ``agreement`` and ``score_diff`` have one entry per row, in the order of
    ``prediction_ids``; both are empty when the shadow call failed (``error`` is set).
    ``score_diff`` is the absolute difference of the served class's probability (the
    positive class of a binary classifier, else the class the served version chose), or of
    the values of a regressor; NaN where it cannot be computed (a side without
    probabilities, or a class the shadow version does not know).
    ``latency_ms`` is the duration of the shadow call that included these rows.
    """

    prediction_ids: list[str]
    target_key: ShadowTarget
    predictions: np.ndarray[Any, Any] | None
    proba: np.ndarray[Any, Any] | None
    latency_ms: float
    error: str | None
    agreement: list[bool]
    score_diff: list[float]

    @property
    def disagreed(self) -> int:
        return sum(not a for a in self.agreement)


def should_mirror(percent: float, prediction_id: str) -> bool:
    """Whether ``prediction_id`` falls in the mirrored ``percent`` (0 to 100) of the traffic.

    Decided on a hash of the id, so every worker and replica decides the same for the same
    prediction, and a retried request is mirrored or not as before.
    """
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1_000_000 < percent * 10_000


def _is_regression(served: BatchOutput, shadow: BatchOutput) -> bool:
    if served.proba is not None or shadow.proba is not None:
        return False
    kinds = {np.asarray(served.predictions).dtype.kind, np.asarray(shadow.predictions).dtype.kind}
    return kinds <= {"f"}


def compare(
    served: BatchOutput, shadow: BatchOutput, *, regression_rtol: float = 0.01
) -> tuple[list[bool], list[float]]:
    """Row by row: does the shadow answer agree with the served one, and by how much do they differ.

    Classifiers agree on a row when they predict the same label. Regressors agree when the
    values are within ``regression_rtol`` of each other (relative to the larger one).
    """
    rows = len(served)
    if len(shadow) != rows:
        raise ValueError(f"cannot compare {len(shadow)} shadow rows with {rows} served rows")
    left = np.asarray(served.predictions).reshape(rows, -1)
    right = np.asarray(shadow.predictions).reshape(rows, -1)
    if _is_regression(served, shadow):
        a = left.astype(np.float64)
        b = right.astype(np.float64)
        diff = np.abs(a - b)
        close = diff <= regression_rtol * np.maximum(np.abs(a), np.abs(b))
        agree = np.all(close, axis=1)
        return [bool(x) for x in agree], [float(x) for x in diff.max(axis=1)]
    if left.shape[1] != right.shape[1]:
        agreement = [False] * rows
    else:
        agreement = [list(x) == list(y) for x, y in zip(left.tolist(), right.tolist(), strict=True)]
    return agreement, _proba_diff(served, shadow)


def _proba_diff(served: BatchOutput, shadow: BatchOutput) -> list[float]:
    rows = len(served)
    if served.proba is None or shadow.proba is None:
        return [float("nan")] * rows
    mine = np.asarray(served.proba, dtype=np.float64).reshape(rows, -1)
    theirs = np.asarray(shadow.proba, dtype=np.float64).reshape(rows, -1)
    columns = mine.shape[1]
    chosen = np.full(rows, 1) if columns == 2 else mine.argmax(axis=1)
    if served.classes is not None and shadow.classes is not None:
        # Two versions may list their classes in another order, or not the same classes.
        position = {_plain(c): i for i, c in enumerate(shadow.classes)}
        mapping = np.array([position.get(_plain(c), -1) for c in served.classes])
        other = mapping[chosen]
    elif theirs.shape[1] == columns:
        other = chosen
    else:
        return [float("nan")] * rows
    out: list[float] = []
    for row in range(rows):
        column = int(other[row])
        if column < 0 or column >= theirs.shape[1]:
            out.append(float("nan"))
        else:
            out.append(float(abs(mine[row, chosen[row]] - theirs[row, column])))
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _joined(outputs: list[BatchOutput]) -> BatchOutput | None:
    """The served answers of several requests as one, or None when they do not line up."""
    if len(outputs) == 1:
        return outputs[0]
    first = outputs[0]
    with_proba = first.proba is not None
    kind = np.asarray(first.predictions).dtype
    for out in outputs:
        if (out.proba is not None) != with_proba or out.classes != first.classes:
            return None
        if np.asarray(out.predictions).dtype != kind:  # concatenating would change how they compare
            return None
    try:
        predictions = np.concatenate([np.asarray(o.predictions) for o in outputs])
        proba = np.concatenate([np.asarray(o.proba) for o in outputs]) if with_proba else None
    except ValueError:  # shapes differ
        return None
    return BatchOutput(predictions, proba, first.classes)


class _Item(NamedTuple):
    target: ShadowTarget
    call: ModelCall
    frame: pd.DataFrame
    prediction_ids: list[str]
    served: BatchOutput
    key: tuple[Any, ...] | None


class ShadowDispatcher:
    """Mirrors served requests to shadow versions in the background.

    ``max_queue_rows`` bounds the rows waiting for a shadow call, all shadow versions
    together; ``batch_rows`` bounds the rows of one shadow call; rows wait up to ``linger_s``
    for others to share their call (less when ``batch_rows`` are queued already). ``on_result`` is called
    from the dispatcher's worker thread with the results of each round; what it raises is
    logged and ignored. Start the dispatcher inside the event loop that serves requests;
    :meth:`offer` may be called from that loop or from any thread.
    """

    def __init__(
        self,
        *,
        max_queue_rows: int = 2048,
        batch_rows: int = 256,
        on_result: Callable[[list[ShadowResult]], None],
        metrics: ServingMetrics | None,
        executor: concurrent.futures.Executor | None = None,
        regression_rtol: float = 0.01,
        linger_s: float = 0.05,
    ) -> None:
        if max_queue_rows < 1 or batch_rows < 1:
            raise ValueError("max_queue_rows and batch_rows must be at least 1")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.linger_s = linger_s
        self.on_result = on_result
        self.metrics = metrics
        self.regression_rtol = regression_rtol
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="passerelle-shadow", initializer=one_openmp_thread
        )
        self._lock = threading.Lock()
        self._items: collections.deque[_Item] = collections.deque()
        self._rows = 0
        self._dropped_rows = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a shadow call or inside the one running; the bound applies to them."""
        return self._rows

    @property
    def dropped_rows(self) -> int:
        """Rows dropped since the dispatcher was created because the queue was full or closed."""
        return self._dropped_rows

    def start(self) -> None:
        """Start the background task, in the running event loop."""
        if self._task is not None:
            raise RuntimeError("the shadow dispatcher is already started")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="passerelle-shadow")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Refuse new offers, finish the queued ones for up to ``timeout_s``, then drop the rest."""
        with self._lock:
            self._closed = True
        task = self._task
        timed_out = False
        if task is not None:
            self._wakeup()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                timed_out = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with self._lock:
            left = list(self._items)
            self._items.clear()
        for item in left:
            self._count_drop(item.target, len(item.frame))
        with self._lock:
            self._rows = 0
        if self._own_executor:
            # A shadow call still running after the timeout is abandoned, not awaited:
            # shutting down must not wait for a slow shadow version.
            self._executor.shutdown(wait=not timed_out, cancel_futures=True)

    def offer(
        self,
        target_key: ShadowTarget,
        call: ModelCall,
        frame: pd.DataFrame,
        prediction_ids: Sequence[str],
        served: BatchOutput,
        *,
        key: tuple[Any, ...] | None = None,
        copy: bool = True,
    ) -> bool:
        """Queue a copy of ``frame`` for ``target_key``; False when it was dropped instead.

        ``key`` is :func:`~passerelle.serving.batcher.frame_key` of ``frame`` when the caller
        knows it; ``copy=False`` keeps ``frame`` itself, for a caller that never changes it.
        """
        rows = 0
        try:
            rows = len(frame)
            if len(prediction_ids) != rows or len(served) != rows:
                raise ValueError(
                    f"{rows} rows, {len(prediction_ids)} prediction ids and {len(served)} served answers"
                )
            with self._lock:
                accepted = not self._closed and self._rows + rows <= self.max_queue_rows
                if accepted:
                    self._rows += rows
            if not accepted:
                self._count_drop(target_key, rows)
                return False
            try:
                # A copy unless told otherwise, since the caller may reuse or mutate its frame.
                kept = frame.copy() if copy else frame
                item = _Item(target_key, call, kept, list(prediction_ids), served, key)
            except BaseException:
                with self._lock:
                    self._rows -= rows
                raise
            with self._lock:
                self._items.append(item)
            self._wakeup()
            return True
        except Exception:
            logger.exception("could not mirror a request to %s", target_key)
            with contextlib.suppress(Exception):
                self._count_drop(target_key, rows)
            return False

    # -- internals ---------------------------------------------------------------------

    def _count_drop(self, target: ShadowTarget, rows: int) -> None:
        with self._lock:
            self._dropped_rows += rows
        if self.metrics is not None:
            self.metrics.shadow_dropped.labels(target.endpoint, target.model, str(target.version)).inc(rows)

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to wake
                loop.call_soon_threadsafe(wake.set)

    def _take(self) -> list[_Item]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    async def _run(self) -> None:
        loop, wake = self._loop, self._wake
        assert loop is not None
        assert wake is not None
        while True:
            if self._items and self.linger_s > 0 and not self._closed and self._rows < self.batch_rows:
                # Nobody waits for a shadow answer: gathering rows for a moment turns one model
                # call per request into a few large ones, a fraction of the CPU (and of the GIL
                # the served requests need).
                await asyncio.sleep(self.linger_s)
            items = self._take()
            if items:
                try:
                    await loop.run_in_executor(self._executor, self._process, items)
                except Exception:
                    # The task must outlive any surprise, or every later offer would be dropped.
                    logger.exception("shadow processing failed")
                finally:
                    with self._lock:
                        self._rows -= sum(len(item.frame) for item in items)
                continue
            if self._closed:
                return
            await wake.wait()
            wake.clear()

    def _process(self, items: list[_Item]) -> None:
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for item in items:
            key = item.key if item.key is not None else frame_key(item.frame)
            # By the call itself, not id(): a bound method (Runner.call) is a new object at each
            # access, and equal to the others of the same runner.
            groups.setdefault((item.target, item.call, key), []).append(item)
        results: list[ShadowResult] = []
        for group in groups.values():
            chunk: list[_Item] = []
            rows = 0
            for item in group:
                if chunk and rows + len(item.frame) > self.batch_rows:
                    results.extend(self._run_chunk(chunk))
                    chunk, rows = [], 0
                chunk.append(item)
                rows += len(item.frame)
            if chunk:
                results.extend(self._run_chunk(chunk))
        for result in results:
            self._observe(result)
        try:
            self.on_result(results)
        except Exception:
            logger.exception("the shadow result handler failed")

    def _run_chunk(self, chunk: list[_Item]) -> list[ShadowResult]:
        target, call = chunk[0].target, chunk[0].call
        frames = [item.frame for item in chunk]
        start = time.perf_counter()
        try:
            frame = frames[0] if len(frames) == 1 else concat_frames(frames)
            out = run_call(call, frame)
        except Exception as exc:
            if len(chunk) > 1:
                # Like the served batcher: one bad request must not fail its neighbours.
                return [result for item in chunk for result in self._run_chunk([item])]
            latency_ms = (time.perf_counter() - start) * 1000
            failure = f"{type(exc).__name__}: {exc}"
            return [ShadowResult(chunk[0].prediction_ids, target, None, None, latency_ms, failure, [], [])]
        latency_ms = (time.perf_counter() - start) * 1000
        # One comparison for the whole chunk, when the served answers line up into one.
        together = _joined([item.served for item in chunk])
        compared: tuple[list[bool], list[float]] | None = None
        if together is not None:
            with contextlib.suppress(Exception):  # compared request by request below, to name the error
                compared = compare(together, out, regression_rtol=self.regression_rtol)
        results: list[ShadowResult] = []
        offset = 0
        for item in chunk:
            rows = len(item.frame)
            mine = out.slice(offset, offset + rows)
            error: str | None = None
            agreement: list[bool] = []
            score_diff: list[float] = []
            if compared is not None:
                agreement = compared[0][offset : offset + rows]
                score_diff = compared[1][offset : offset + rows]
            else:
                try:
                    agreement, score_diff = compare(item.served, mine, regression_rtol=self.regression_rtol)
                except Exception as exc:
                    error = f"cannot compare with the served answer: {exc}"
            offset += rows
            results.append(
                ShadowResult(
                    item.prediction_ids,
                    target,
                    mine.predictions,
                    mine.proba,
                    latency_ms,
                    error,
                    agreement,
                    score_diff,
                )
            )
        return results

    def _observe(self, result: ShadowResult) -> None:
        if self.metrics is None:
            return
        target = result.target_key
        labels = (target.endpoint, target.model, str(target.version))
        if result.error is not None:
            self.metrics.errors.labels(*labels, "shadow").inc(len(result.prediction_ids))
            return
        self.metrics.shadow_requests.labels(*labels).inc(len(result.agreement))
        self.metrics.shadow_disagreements.labels(*labels).inc(result.disagreed)
