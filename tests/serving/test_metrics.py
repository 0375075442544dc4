"""Prometheus exposition: collectors on the app's own registry, and multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from passerelle.serving.metrics import MULTIPROC_ENV, ServingMetrics, worker_exited


def test_exposition_contains_every_series() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    version = ("churn", "churn", "3")
    metrics.requests.labels(*version, "200").inc()
    metrics.request_rows.labels(*version).inc(5)
    metrics.errors.labels(*version, "model").inc()
    metrics.rejected_rows.labels("churn", "age", "above maximum").inc(2)
    metrics.request_latency.labels(*version).observe(0.004)
    metrics.batch_rows.labels("churn", "3").observe(12)
    metrics.queue_rows.labels("churn", "3").set(7)
    metrics.queue_wait.labels("churn", "3").observe(0.001)
    metrics.shadow_dropped.labels("churn", "churn", "4").inc(3)
    metrics.shadow_requests.labels("churn", "churn", "4").inc(10)
    metrics.shadow_disagreements.labels("churn", "churn", "4").inc(1)
    metrics.log_queue_depth.set(42)
    metrics.log_lag.set(0.5)

    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = parse(body)
    v3 = {"endpoint": "churn", "model": "churn", "version": "3"}
    v4 = {"endpoint": "churn", "model": "churn", "version": "4"}
    expected: list[tuple[str, dict[str, str], float]] = [
        ("passerelle_requests_total", {**v3, "code": "200"}, 1),
        ("passerelle_request_rows_total", v3, 5),
        ("passerelle_errors_total", {**v3, "kind": "model"}, 1),
        (
            "passerelle_rejected_rows_total",
            {"endpoint": "churn", "column": "age", "reason": "above maximum"},
            2,
        ),
        ("passerelle_request_latency_seconds_bucket", {**v3, "le": "0.005"}, 1),
        ("passerelle_request_latency_seconds_bucket", {**v3, "le": "0.003"}, 0),
        ("passerelle_batch_rows_bucket", {"model": "churn", "version": "3", "le": "16.0"}, 1),
        ("passerelle_queue_rows", {"model": "churn", "version": "3"}, 7),
        ("passerelle_queue_wait_seconds_count", {"model": "churn", "version": "3"}, 1),
        ("passerelle_shadow_dropped_total", v4, 3),
        ("passerelle_shadow_requests_total", v4, 10),
        ("passerelle_shadow_disagreements_total", v4, 1),
        ("passerelle_log_queue_depth", {}, 42),
        ("passerelle_log_lag_seconds", {}, 0.5),
    ]
    for name, labels, value in expected:
        assert samples.get((name, frozenset(labels.items()))) == value, (name, labels)


def parse(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_two_apps_in_one_process_do_not_share_collectors() -> None:
    first, second = ServingMetrics(CollectorRegistry()), ServingMetrics(CollectorRegistry())
    first.requests.labels("e", "m", "1", "200").inc()
    assert b"passerelle_requests_total{" not in second.render()[0]
    assert b"passerelle_requests_total{" not in generate_latest()


WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from passerelle.serving.metrics import ServingMetrics

    metrics = ServingMetrics(CollectorRegistry())
    metrics.requests.labels("churn", "churn", "3", "200").inc(int(sys.argv[1]))
    metrics.queue_rows.labels("churn", "3").set(int(sys.argv[1]))
    metrics.log_lag.set(float(sys.argv[1]))
    sys.stdout.write(metrics.render()[0].decode())
    """
)


def test_multiprocess_mode_merges_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}

    def worker(n: int) -> tuple[int, str]:
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(n)], env=env, stdout=subprocess.PIPE, text=True
        )
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        return process.pid, out

    first, _ = worker(2)
    _, out = worker(5)
    merged = parse(out.encode())
    version = {"model": "churn", "version": "3"}
    requests = (
        "passerelle_requests_total",
        frozenset({**version, "endpoint": "churn", "code": "200"}.items()),
    )
    queue = ("passerelle_queue_rows", frozenset(version.items()))
    assert merged[requests] == 7
    assert merged[queue] == 7
    assert merged[("passerelle_log_lag_seconds", frozenset())] == 5

    with monkeypatch.context() as patch:
        patch.setenv(MULTIPROC_ENV, str(tmp_path))
        worker_exited(first)
    _, out = worker(0)
    merged = parse(out.encode())
    # counters keep what the dead worker counted; its live gauges are gone
    assert merged[requests] == 7
    assert merged[queue] == 5
