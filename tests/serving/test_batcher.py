"""Micro-batching: alone = immediate, coalescing under load, isolation of bad requests, overload."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from passerelle.flavors.base import Predictor
from passerelle.serving.batcher import Batcher, BatchOutput, Overloaded, predictor_call
from passerelle.serving.metrics import ServingMetrics
from passerelle.serving.threads import limit_native_threads, threads_per_worker


class EchoModel:
    """Predicts each row's ``id``; remembers when each call started and how many rows it had."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.calls: list[tuple[float, int]] = []

    def __call__(self, frame: pd.DataFrame) -> BatchOutput:
        self.calls.append((time.perf_counter(), len(frame)))
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if (frame["id"] < 0).any():
            raise ValueError("negative id")
        ids = frame["id"].to_numpy()
        return BatchOutput(ids, np.column_stack([1 - ids / 1e6, ids / 1e6]), [0, 1])


def rows(*ids: int) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids), "x": [float(i) for i in ids]})


T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def test_a_lone_request_is_dispatched_at_once() -> None:
    model = EchoModel()

    async def main() -> None:
        async with Batcher(model, name="churn:1", max_wait_ms=1000) as batcher:
            for i in range(3):
                started = time.perf_counter()
                out = await batcher.submit(rows(i))
                assert out.predictions.tolist() == [i]
                # well before max_wait (1 s), with room for a loaded test machine
                assert model.calls[-1][0] - started < 0.5

    run(main)
    assert [n for _, n in model.calls] == [1, 1, 1]


def test_max_wait_only_holds_an_idle_model_below_a_useful_batch() -> None:
    model = EchoModel()

    async def main() -> None:
        async with Batcher(model, name="churn:1", max_wait_ms=500, min_batch_rows=4) as batcher:
            started = time.perf_counter()
            await batcher.submit(rows(1))
            assert 0.45 <= model.calls[-1][0] - started < 2
            started = time.perf_counter()
            await asyncio.gather(*(batcher.submit(rows(i)) for i in range(4)))
            assert model.calls[-1][0] - started < 0.3

    run(main)
    assert [n for _, n in model.calls] == [1, 4]


def test_concurrent_requests_are_coalesced_and_answered_with_their_own_rows() -> None:
    model = EchoModel(delay_s=0.02)
    registry = CollectorRegistry()
    rng = random.Random(7)

    async def client(batcher: Batcher, first: int, count: int) -> tuple[list[int], list[int]]:
        await asyncio.sleep(rng.uniform(0, 0.05))
        ids = list(range(first, first + count))
        out = await batcher.submit(rows(*ids))
        assert out.proba is not None
        assert out.proba.shape == (count, 2)
        return ids, out.predictions.tolist()

    async def main() -> None:
        async with Batcher(model, name="churn:3", metrics=ServingMetrics(registry)) as batcher:
            sizes = [rng.randint(1, 3) for _ in range(64)]
            starts = np.cumsum([0, *sizes[:-1]]).tolist()
            answers = await asyncio.gather(
                *(client(batcher, s, n) for s, n in zip(starts, sizes, strict=True))
            )
            for sent, got in answers:
                assert got == sent
            assert batcher.stats.requests == 64
            assert batcher.queued_rows == 0

    run(main)
    requests_per_call = 64 / len(model.calls)
    assert requests_per_call >= 8
    labels = {"model": "churn", "version": "3"}
    assert registry.get_sample_value("passerelle_batch_rows_count", labels) == len(model.calls)
    assert registry.get_sample_value("passerelle_queue_wait_seconds_count", labels) == 64
    assert registry.get_sample_value("passerelle_queue_rows", labels) == 0


def test_batches_respect_max_batch_rows_and_a_large_request_goes_alone() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def main() -> None:
        async with Batcher(model, name="churn:1", max_batch_rows=64) as batcher:
            first = asyncio.ensure_future(batcher.submit(rows(0)))
            await asyncio.sleep(0.02)  # the first call is now running and holds the model
            queued = [
                asyncio.ensure_future(batcher.submit(rows(*range(i * 30, i * 30 + 30)))) for i in range(1, 5)
            ]
            big = asyncio.ensure_future(batcher.submit(rows(*range(1000, 1100))))
            await asyncio.sleep(0.01)
            assert batcher.queued_rows == 220
            gate.set()
            await asyncio.gather(first, *queued, big)
            assert big.result().predictions.tolist() == list(range(1000, 1100))

    run(main)
    sizes = [n for _, n in model.calls]
    assert sizes == [1, 60, 60, 100]


def test_a_bad_request_fails_alone() -> None:
    model = EchoModel(delay_s=0.01)

    async def main() -> None:
        async with Batcher(model, name="churn:1") as batcher:
            blocker = asyncio.ensure_future(batcher.submit(rows(99)))
            await asyncio.sleep(0.002)
            ids = [1, 2, -3, 4, 5, 6]
            results = await asyncio.gather(*(batcher.submit(rows(i)) for i in ids), return_exceptions=True)
            await blocker
            for i, result in zip(ids, results, strict=True):
                if i < 0:
                    assert isinstance(result, ValueError)
                else:
                    assert isinstance(result, BatchOutput)
                    assert result.predictions.tolist() == [i]
            assert batcher.stats.isolated_failures == 1

    run(main)


def test_a_wrong_model_answer_is_an_error_of_that_request() -> None:
    async def main() -> None:
        async with Batcher(lambda f: BatchOutput(np.zeros(len(f) + 1)), name="m:1") as batcher:
            with pytest.raises(ValueError, match="2 predictions for 1 rows"):
                await batcher.submit(rows(1))
        async with Batcher(lambda f: f, name="m:2") as batcher:  # type: ignore[arg-type,return-value]
            with pytest.raises(TypeError, match="BatchOutput"):
                await batcher.submit(rows(1))

    run(main)


def test_overload_is_refused_at_once_with_a_retry_delay() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def main() -> None:
        async with Batcher(model, name="churn:1", max_queue_rows=10) as batcher:
            running = asyncio.ensure_future(batcher.submit(rows(0)))
            await asyncio.sleep(0.02)
            queued = [asyncio.ensure_future(batcher.submit(rows(1, 2, 3, 4))) for _ in range(2)]
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            with pytest.raises(Overloaded) as caught:
                await batcher.submit(rows(5, 6, 7))
            assert time.perf_counter() - started < 0.5
            assert caught.value.retry_after_s > 0
            assert batcher.stats.rejected == 1
            gate.set()
            await asyncio.gather(running, *queued)

    run(main)


def test_a_request_queued_past_its_deadline_fails_with_overloaded() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def main() -> None:
        async with Batcher(model, name="churn:1", queue_timeout_s=0.1) as batcher:
            running = asyncio.ensure_future(batcher.submit(rows(0)))
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            with pytest.raises(Overloaded, match="waited more than"):
                await batcher.submit(rows(1))
            assert 0.09 <= time.perf_counter() - started < 2
            assert batcher.queued_rows == 0
            gate.set()
            await running
            assert batcher.stats.expired == 1

    run(main)
    assert [n for _, n in model.calls] == [1]


def test_a_cancelled_request_leaves_the_queue() -> None:
    gate = threading.Event()
    model = EchoModel(gate=gate)

    async def main() -> None:
        async with Batcher(model, name="churn:1") as batcher:
            running = asyncio.ensure_future(batcher.submit(rows(0)))
            await asyncio.sleep(0.01)
            waiting = asyncio.ensure_future(batcher.submit(rows(1, 2)))
            await asyncio.sleep(0.01)
            assert batcher.queued_rows == 2
            waiting.cancel()
            await asyncio.sleep(0)
            assert batcher.queued_rows == 0
            gate.set()
            await running

    run(main)
    assert [n for _, n in model.calls] == [1]


def test_closing_drains_queued_requests_then_refuses_new_ones() -> None:
    model = EchoModel(delay_s=0.02)

    async def main() -> None:
        batcher = Batcher(model, name="churn:1")
        pending = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.aclose()
        assert [p.result().predictions.tolist() for p in pending] == [[i] for i in range(5)]
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(rows(9))

    run(main)


class Threshold(Predictor):
    """Says "yes" above 1.5, with a probability growing with ``a``."""

    classes = ["no", "yes"]

    @property
    def has_proba(self) -> bool:
        return True

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return np.where(table["a"] > 1.5, "yes", "no")

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        p = (table["a"].to_numpy() / 4).clip(0, 1)
        return np.column_stack([1 - p, p])


def test_predictor_call_returns_labels_probabilities_and_classes() -> None:
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    out = predictor_call(Threshold())(x)
    assert out.predictions.tolist() == ["no", "no", "yes", "yes"]
    assert out.proba is not None
    assert out.proba[:, 1].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert out.classes == ["no", "yes"]
    assert predictor_call(Threshold(), proba=False)(x).proba is None


def test_limit_native_threads_caps_loaded_pools_and_restores_them() -> None:
    from threadpoolctl import threadpool_info

    before = {(p["internal_api"], p["num_threads"]) for p in threadpool_info()}
    restore = limit_native_threads(1)
    try:
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        assert threads_per_worker(10_000) == 1
    finally:
        restore()
    assert {(p["internal_api"], p["num_threads"]) for p in threadpool_info()} == before
