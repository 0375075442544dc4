"""Shadow traffic: bounded queue with counted drops, batched shadow calls, comparisons, isolation."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from passerelle.serving.batcher import BatchOutput
from passerelle.serving.metrics import ServingMetrics
from passerelle.serving.shadow import ShadowDispatcher, ShadowResult, ShadowTarget, compare, should_mirror

TARGET = ShadowTarget("churn", "churn", 4)
LABELS = {"endpoint": "churn", "model": "churn", "version": "4"}


def frame(*ids: int) -> pd.DataFrame:
    return pd.DataFrame({"id": list(ids)})


def served(*ids: int) -> BatchOutput:
    """The served answer: label = id is odd, p(odd) = 0.9 for odd ids, 0.2 otherwise."""
    odd = np.array([i % 2 for i in ids])
    p1 = np.where(odd == 1, 0.9, 0.2)
    return BatchOutput(odd, np.column_stack([1 - p1, p1]), [0, 1])


class ShadowModel:
    """Agrees with :func:`served` except on multiples of 3; fails on negative ids."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls: list[int] = []

    def __call__(self, table: pd.DataFrame) -> BatchOutput:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(len(table))
        ids = table["id"].to_numpy()
        if (ids < 0).any():
            raise RuntimeError("the shadow version is broken")
        labels = np.where(ids % 3 == 0, 1 - ids % 2, ids % 2)
        p1 = np.where(labels == 1, 0.8, 0.3)
        return BatchOutput(labels, np.column_stack([1 - p1, p1]), [0, 1])


class Collected:
    def __init__(self) -> None:
        self.results: list[ShadowResult] = []
        self.lock = threading.Lock()

    def __call__(self, results: list[ShadowResult]) -> None:
        with self.lock:
            self.results.extend(results)


def ids_for(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def test_mirrored_requests_are_batched_and_compared() -> None:
    collected = Collected()
    model = ShadowModel()
    registry = CollectorRegistry()

    async def main() -> None:
        dispatcher = ShadowDispatcher(on_result=collected, metrics=ServingMetrics(registry), batch_rows=16)
        for i in range(0, 40, 2):
            assert dispatcher.offer(TARGET, model, frame(i, i + 1), [f"p{i}", f"p{i + 1}"], served(i, i + 1))
        dispatcher.start()
        await dispatcher.stop()

    asyncio.run(main())
    assert sum(model.calls) == 40
    assert len(model.calls) == 3  # 16 + 16 + 8 rows
    by_id = {
        pid: (a, d)
        for r in collected.results
        for pid, a, d in zip(r.prediction_ids, r.agreement, r.score_diff, strict=True)
    }
    assert len(by_id) == 40
    for i in range(40):
        agree, diff = by_id[f"p{i}"]
        assert agree == (i % 3 != 0)
        served_p1 = 0.9 if i % 2 else 0.2
        shadow_p1 = 0.3 if (i % 2 == 1) == (i % 3 == 0) else 0.8
        assert diff == pytest.approx(abs(served_p1 - shadow_p1))
    assert all(r.error is None and r.latency_ms >= 0 for r in collected.results)
    assert registry.get_sample_value("passerelle_shadow_requests_total", LABELS) == 40
    assert registry.get_sample_value("passerelle_shadow_disagreements_total", LABELS) == 14


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    gate = threading.Event()
    collected = Collected()
    registry = CollectorRegistry()

    async def main() -> None:
        dispatcher = ShadowDispatcher(
            on_result=collected, metrics=ServingMetrics(registry), max_queue_rows=4, batch_rows=4
        )
        dispatcher.start()
        try:
            assert dispatcher.offer(TARGET, ShadowModel(gate), frame(1, 2, 3), ids_for(3), served(1, 2, 3))
            await asyncio.sleep(0.02)  # the shadow call now holds the three rows
            assert dispatcher.offer(TARGET, ShadowModel(gate), frame(4), ids_for(1), served(4))
            started = time.perf_counter()
            for _ in range(500):
                assert not dispatcher.offer(TARGET, ShadowModel(gate), frame(5, 6), ids_for(2), served(5, 6))
            assert time.perf_counter() - started < 1
            assert dispatcher.dropped_rows == 1000
            assert dispatcher.queued_rows == 4
        finally:
            gate.set()
            await dispatcher.stop()

    asyncio.run(main())
    assert registry.get_sample_value("passerelle_shadow_dropped_total", LABELS) == 1000
    assert sum(len(r.prediction_ids) for r in collected.results) == 4


def test_shadow_errors_stay_in_the_shadow_results() -> None:
    collected = Collected()
    registry = CollectorRegistry()
    model = ShadowModel()

    async def main() -> None:
        dispatcher = ShadowDispatcher(on_result=collected, metrics=ServingMetrics(registry))
        dispatcher.start()
        assert dispatcher.offer(TARGET, model, frame(1, 2), ["a1", "a2"], served(1, 2))
        assert dispatcher.offer(TARGET, model, frame(-1, 5), ["b1", "b2"], served(-1, 5))
        assert dispatcher.offer(TARGET, model, frame(7), ["c1"], served(7))
        await dispatcher.stop()

    asyncio.run(main())
    by_request = {tuple(r.prediction_ids): r for r in collected.results}
    broken = by_request[("b1", "b2")]
    assert broken.error == "RuntimeError: the shadow version is broken"
    assert broken.predictions is None
    assert broken.agreement == []
    assert by_request[("a1", "a2")].error is None
    assert by_request[("c1",)].agreement == [True]
    assert registry.get_sample_value("passerelle_errors_total", {**LABELS, "kind": "shadow"}) == 2
    assert registry.get_sample_value("passerelle_shadow_requests_total", LABELS) == 3


def test_a_failing_result_handler_or_bad_offer_never_reaches_the_caller() -> None:
    def broken_handler(results: list[ShadowResult]) -> None:
        raise RuntimeError("the log is down")

    async def main() -> None:
        dispatcher = ShadowDispatcher(on_result=broken_handler, metrics=None)
        dispatcher.start()
        assert dispatcher.offer(TARGET, ShadowModel(), frame(1), ["x"], served(1))
        # mismatched lengths: a caller bug, still no exception on the serving path
        assert not dispatcher.offer(TARGET, ShadowModel(), frame(1, 2), ["y"], served(1, 2))
        await dispatcher.stop()
        assert dispatcher.dropped_rows == 2
        # offers after stop are dropped too
        assert not dispatcher.offer(TARGET, ShadowModel(), frame(1), ["z"], served(1))

    asyncio.run(main())


def test_offers_from_another_thread_are_picked_up() -> None:
    collected = Collected()

    async def main() -> None:
        dispatcher = ShadowDispatcher(on_result=collected, metrics=None)
        dispatcher.start()
        thread = threading.Thread(
            target=lambda: [
                dispatcher.offer(TARGET, ShadowModel(), frame(i), [f"t{i}"], served(i)) for i in range(10)
            ]
        )
        thread.start()
        thread.join()
        for _ in range(100):
            if len(collected.results) == 10:
                break
            await asyncio.sleep(0.01)
        assert len(collected.results) == 10
        await dispatcher.stop()

    asyncio.run(main())


def test_stop_gives_up_on_a_stuck_shadow_call_after_its_timeout() -> None:
    gate = threading.Event()
    collected = Collected()

    async def main() -> None:
        # No lingering: the first row's call starts at once and gets stuck, the second row waits.
        dispatcher = ShadowDispatcher(on_result=collected, metrics=None, linger_s=0)
        dispatcher.start()
        assert dispatcher.offer(TARGET, ShadowModel(gate), frame(1), ["s1"], served(1))
        await asyncio.sleep(0.01)
        assert dispatcher.offer(TARGET, ShadowModel(gate), frame(2), ["s2"], served(2))
        started = time.perf_counter()
        await dispatcher.stop(timeout_s=0.1)
        assert time.perf_counter() - started < 2
        assert dispatcher.dropped_rows == 1

    try:
        asyncio.run(main())
    finally:
        gate.set()


def test_compare_regressors_and_reordered_classes() -> None:
    agree, diff = compare(
        BatchOutput(np.array([10.0, 10.0, 0.0])),
        BatchOutput(np.array([10.05, 12.0, 0.0])),
        regression_rtol=0.01,
    )
    assert agree == [True, False, True]
    assert diff == pytest.approx([0.05, 2.0, 0.0])

    mine = BatchOutput(np.array(["b", "c"]), np.array([[0.1, 0.7, 0.2], [0.2, 0.2, 0.6]]), ["a", "b", "c"])
    theirs = BatchOutput(np.array(["b", "b"]), np.array([[0.5, 0.2, 0.3], [0.5, 0.3, 0.2]]), ["b", "c", "a"])
    agree, diff = compare(mine, theirs)
    assert agree == [True, False]
    assert diff == pytest.approx([0.2, 0.3])

    agree, diff = compare(BatchOutput(np.array([1, 0])), BatchOutput(np.array([1, 1])))
    assert agree == [True, False]
    assert all(math.isnan(d) for d in diff)


def test_should_mirror_is_deterministic_and_proportional() -> None:
    ids = [f"pred-{i}" for i in range(20_000)]
    picked = [i for i in ids if should_mirror(25, i)]
    assert 4_600 < len(picked) < 5_400
    assert picked == [i for i in ids if should_mirror(25, i)]
    assert set(picked) <= {i for i in ids if should_mirror(50, i)}
    assert not any(should_mirror(0, i) for i in ids[:100])
    assert all(should_mirror(100, i) for i in ids[:100])


class Version:
    """Offers a bound method, as the gateway does (``runner.call``): a new object at each access."""

    def __init__(self, model: ShadowModel) -> None:
        self.model = model

    def call(self, table: pd.DataFrame) -> BatchOutput:
        return self.model(table)


def test_rows_offered_close_together_share_one_shadow_call() -> None:
    collected = Collected()
    model = ShadowModel()
    version = Version(model)

    async def main() -> None:
        dispatcher = ShadowDispatcher(on_result=collected, metrics=None, linger_s=0.2)
        dispatcher.start()
        for i in range(5):
            assert dispatcher.offer(TARGET, version.call, frame(i), [f"s{i}"], served(i))
            await asyncio.sleep(0.01)  # as requests answered one after the other
        for _ in range(200):
            if len(collected.results) == 5:
                break
            await asyncio.sleep(0.01)
        await dispatcher.stop()

    asyncio.run(main())
    assert model.calls == [5]
    assert [r.prediction_ids for r in collected.results] == [[f"s{i}"] for i in range(5)]
    assert [r.agreement for r in collected.results] == [[i % 3 != 0] for i in range(5)]
