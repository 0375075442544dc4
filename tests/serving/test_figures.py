"""Operational figures: histogram percentiles, upserts into the store, merges across workers."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from passerelle.errors import StoreError
from passerelle.serving.figures import (
    HISTOGRAM_SIZE,
    LATENCY_BOUNDS_MS,
    FigureRecorder,
    histogram_percentile,
    latency_bucket,
    series,
    summary,
)
from passerelle.store import Store
from passerelle.store.schema import Figure

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(backend: str) -> Iterator[Store]:
    s = Store(backend)
    try:
        yield s
    finally:
        s.dispose()


def bucket_width(value: float) -> float:
    index = latency_bucket(value)
    lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
    return LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)] - lower


def test_bounds_are_fixed_and_log_spaced() -> None:
    assert len(LATENCY_BOUNDS_MS) == 60
    assert HISTOGRAM_SIZE == 61
    assert LATENCY_BOUNDS_MS[0] == 0.1
    assert LATENCY_BOUNDS_MS[-1] == 60_000
    ratios = np.diff(np.log(LATENCY_BOUNDS_MS))
    assert ratios.min() > np.log(1.2)
    assert ratios.max() < np.log(1.3)
    assert latency_bucket(0.1) == 0
    assert latency_bucket(0.11) == 1
    assert latency_bucket(120_000) == 60


@pytest.mark.parametrize("seed", range(5))
def test_histogram_percentiles_are_within_one_bucket_of_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = np.concatenate(
        [rng.lognormal(np.log(4), 0.6, 3000), rng.lognormal(np.log(80), 0.8, 300), rng.uniform(0.05, 0.3, 50)]
    )
    hist = [0] * HISTOGRAM_SIZE
    for value in latencies:
        hist[latency_bucket(float(value))] += 1
    for q in (1, 25, 50, 90, 95, 99, 99.9):
        exact = float(np.percentile(latencies, q))
        estimate = histogram_percentile(hist, q)
        assert estimate is not None
        assert abs(estimate - exact) <= max(bucket_width(exact), bucket_width(estimate)), (q, exact, estimate)
    assert histogram_percentile([0] * HISTOGRAM_SIZE, 50) is None


def test_a_rank_in_the_open_last_bucket_reports_the_last_bound() -> None:
    hist = [0] * HISTOGRAM_SIZE
    hist[-1] = 3
    assert histogram_percentile(hist, 99) == LATENCY_BOUNDS_MS[-1]


def test_flush_adds_to_the_rows_of_each_worker_and_summary_merges_them(store: Store) -> None:
    rng = np.random.default_rng(3)
    first, second = FigureRecorder("host-a:1"), FigureRecorder("host-b:7")
    everything: list[float] = []
    for recorder, rounds in ((first, 3), (second, 2)):
        for _ in range(rounds):
            latencies = rng.lognormal(np.log(6), 0.5, 400)
            everything.extend(latencies.tolist())
            for i, value in enumerate(latencies):
                recorder.record(
                    "churn",
                    "churn",
                    3,
                    float(value),
                    rows=2,
                    error=i % 50 == 0,
                    rejected_rows=1 if i % 100 == 0 else 0,
                    rejections={"age: above maximum": 1} if i % 100 == 0 else None,
                    at=T0 + dt.timedelta(seconds=i % 60),
                )
            recorder.record("churn", "churn", 4, 1.0, at=T0)
            recorder.record_shadow("churn", "churn", 4, compared=10, disagreed=3, dropped=1, at=T0)
            assert recorder.flush(store) == 2
            assert recorder.pending == 0
    assert first.flush(store) == 0

    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(Figure)) == 4
        counts = session.execute(select(Figure.worker, Figure.requests).where(Figure.version == 3)).all()
    assert sorted(counts) == [("host-a:1", 1200), ("host-b:7", 800)]

    figures = summary(store, "churn", since=T0)
    assert set(figures) == {("churn", 3), ("churn", 4)}
    served = figures[("churn", 3)]
    assert served.requests == 2000
    assert served.rows == 4000
    assert served.errors == 40
    assert served.error_rate == pytest.approx(0.02)
    assert served.rejected_rows == 20
    assert served.rejections == {"age: above maximum": 20}
    assert sum(served.latency_hist) == 2000
    for q, value in ((50, served.p50_ms), (95, served.p95_ms), (99, served.p99_ms)):
        exact = float(np.percentile(everything, q))
        assert value is not None
        assert abs(value - exact) <= bucket_width(exact), (q, exact, value)
    shadow = figures[("churn", 4)]
    assert (shadow.shadow_compared, shadow.shadow_disagreed, shadow.shadow_dropped) == (50, 15, 5)
    assert shadow.disagreement_rate == pytest.approx(0.3)
    assert shadow.p50_ms == pytest.approx(1.0, abs=bucket_width(1.0))

    assert set(summary(store, "churn", since=T0, version=4)) == {("churn", 4)}
    assert summary(store, "churn", since=T0 + dt.timedelta(minutes=1)) == {}
    assert summary(store, "other", since=T0) == {}


def test_series_per_step(store: Store) -> None:
    recorder = FigureRecorder("w", bucket_seconds=60)
    for minute in range(6):
        for _ in range(minute + 1):
            recorder.record("fraud", "fraud", 1, 5.0, at=T0 + dt.timedelta(minutes=minute, seconds=30))
    recorder.record("fraud", "fraud", 2, 9.0, error=True, at=T0 + dt.timedelta(minutes=2))
    recorder.flush(store)

    per_minute = series(store, "fraud", T0, 60)
    assert [(p.at, p.version, p.requests) for p in per_minute if p.version == 1] == [
        (T0 + dt.timedelta(minutes=m), 1, m + 1) for m in range(6)
    ]
    assert [(p.at, p.errors) for p in per_minute if p.version == 2] == [(T0 + dt.timedelta(minutes=2), 1)]

    per_three = series(store, "fraud", T0, 180, version=1)
    assert [(p.at, p.requests) for p in per_three] == [(T0, 6), (T0 + dt.timedelta(minutes=3), 15)]
    assert series(store, "fraud", T0 + dt.timedelta(minutes=4), 60, version=1)[0].requests == 5


def test_recorders_sharing_a_worker_name_still_add_up(store: Store) -> None:
    recorders = [FigureRecorder("same") for _ in range(4)]
    for recorder in recorders:
        for _ in range(25):
            recorder.record("churn", "churn", 1, 3.0, at=T0)
    barrier = threading.Barrier(len(recorders))
    errors: list[BaseException] = []

    def flush(recorder: FigureRecorder) -> None:
        barrier.wait()
        try:
            recorder.flush(store)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(r,)) for r in recorders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert summary(store, "churn", since=T0)[("churn", 1)].requests == 100


def test_a_failed_flush_keeps_the_figures_for_the_next(store: Store, tmp_path: Path) -> None:
    broken = Store(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    recorder = FigureRecorder("w")
    recorder.record("churn", "churn", 1, 2.0, at=T0)
    try:
        with pytest.raises(StoreError):
            recorder.flush(broken)
    finally:
        broken.dispose()
    recorder.record("churn", "churn", 1, 2.0, at=T0)
    assert recorder.pending == 1
    recorder.flush(store)
    assert summary(store, "churn", since=T0)[("churn", 1)].requests == 2


def test_background_flushes_and_a_last_flush_on_stop(store: Store) -> None:
    recorder = FigureRecorder("w", bucket_seconds=5)
    recorder.start(store, interval_s=0.05)
    try:
        since = recorder.bucket_of()
        recorder.record("churn", "churn", 1, 2.0)
        deadline = time.monotonic() + 5
        while not summary(store, "churn", since=since) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert summary(store, "churn", since=since)[("churn", 1)].requests == 1
        recorder.record("churn", "churn", 1, 2.0)
    finally:
        recorder.stop()
    assert recorder.pending == 0
    assert summary(store, "churn", since=since - dt.timedelta(seconds=5))[("churn", 1)].requests == 2
