"""Monitors over windows of logged traffic: drift, insufficient windows, once-only evaluation, late labels."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading

import pytest
from sqlalchemy import func, select

from passerelle import _failpoints, alerts, feedback, monitor
from passerelle.demo.data import Drift
from passerelle.endpoints import DeploySpec
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.store.schema import MonitorResult, ReferenceProfile
from tests.monitoring.conftest import HOUR, T0, ChurnEndpoint

DRIFT = Drift(mean_shift={"tenure_months": 1.0, "monthly_charges": 0.8}, scale={"data_usage_gb": 1.8})


def _set(endpoint: ChurnEndpoint, **kw: object) -> monitor.MonitorInfo:
    spec = monitor.parse_spec(window="1h", delay="0s", **kw)  # type: ignore[arg-type]
    with endpoint.ctx.store.write() as session:
        return monitor.set_monitor_in(session, "churn-api", spec, "tester", start=T0)


def test_windows_are_judged_against_the_training_reference(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1500, seed=1)
    churn_endpoint.log(T0 + HOUR, 1500, seed=2, drift=DRIFT)
    runs = monitor.run(churn_endpoint.ctx, now=T0 + 2 * HOUR)
    assert [r.windows for r in runs] == [2]
    stored = monitor.results(churn_endpoint.ctx, "churn-api", version="churn:1")
    assert [r.window_start for r in stored] == [T0, T0 + HOUR]
    calm, drifted = stored
    assert calm.status == "ok", calm.details.get("drift", {}).get("drifted_columns")
    assert calm.figures["drift.column.tenure_months"] == 0.0
    assert drifted.status == "drift"
    assert drifted.figures["drift.column.tenure_months"] == 1.0
    assert drifted.figures["drift.column.data_usage_gb"] == 1.0
    share = drifted.figures["drift.share"]
    assert share is not None
    assert share > 0.1
    assert drifted.figures["rows"] == 1500
    overall = monitor.results(churn_endpoint.ctx, "churn-api", version="all")
    assert [r.status for r in overall] == ["ok", "drift"]
    # The reference was summarised once and kept.
    with churn_endpoint.ctx.store.read() as session:
        assert session.scalar(select(func.count()).select_from(ReferenceProfile)) == 1


def test_a_window_is_evaluated_once_and_a_rerun_does_nothing(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1200, seed=1)
    summaries: list[list[monitor.RunSummary]] = []

    def go(holder: str) -> None:
        summaries.append(monitor.run(churn_endpoint.ctx, now=T0 + HOUR, holder=holder))

    threads = [threading.Thread(target=go, args=(f"worker-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.windows for runs in summaries for s in runs) == 1
    assert monitor.run(churn_endpoint.ctx, now=T0 + HOUR)[0].windows == 0
    with churn_endpoint.ctx.store.read() as session:
        assert session.scalar(select(func.count()).select_from(MonitorResult)) == 2  # churn:1 and all


def test_small_windows_merge_until_there_is_enough_to_judge(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    for i in range(3):
        churn_endpoint.log(T0 + i * HOUR, 400, seed=10 + i, drift=DRIFT)
    monitor.run(churn_endpoint.ctx, now=T0 + 3 * HOUR)
    stored = monitor.results(churn_endpoint.ctx, "churn-api", version="churn:1")
    assert [r.status for r in stored] == ["insufficient", "insufficient", "drift"]
    assert "drift.share" not in stored[0].figures
    # The third window was judged on all 1,200 rows of the three.
    assert stored[2].details["drift"]["window_rows"] == 1200
    assert [r.rows for r in stored] == [400, 400, 400]


def test_a_window_without_traffic_is_recorded_as_such(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    monitor.run(churn_endpoint.ctx, now=T0 + HOUR + dt.timedelta(minutes=1))
    (overall,) = monitor.results(churn_endpoint.ctx, "churn-api")
    assert overall.status == "no_traffic"
    assert overall.figures["rows"] == 0


def test_late_labels_recompute_the_window_they_belong_to(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    ids = churn_endpoint.log(T0, 1200, seed=1)
    churn_endpoint.log(T0 + HOUR, 1200, seed=2)
    monitor.run(churn_endpoint.ctx, now=T0 + 2 * HOUR)
    first = monitor.results(churn_endpoint.ctx, "churn-api", version="churn:1")[0]
    assert "performance.accuracy" not in first.figures
    assert first.figures["estimated.accuracy"] is not None
    # Labels for the first window arrive days later.
    labels = [{"prediction_id": pid, "label": i % 2} for i, pid in enumerate(ids[:600])]
    feedback.record_feedback(churn_endpoint.ctx, "churn-api", labels)
    summary = monitor.run(churn_endpoint.ctx, now=T0 + 2 * HOUR)[0]
    assert summary.relabelled_windows == 1
    first, second = monitor.results(churn_endpoint.ctx, "churn-api", version="churn:1")
    assert first.figures["performance.n"] == 600
    assert first.figures["labels.coverage"] == pytest.approx(0.5)
    low, value, high = (first.figures[f"performance.accuracy{s}"] for s in (".low", "", ".high"))
    assert None not in (low, value, high)
    assert low <= value <= high  # type: ignore[operator]
    assert "performance.accuracy" not in second.figures


def test_bad_configuration_is_refused_with_the_reason(churn_endpoint: ChurnEndpoint) -> None:
    with pytest.raises(InvalidInputError, match="window"):
        monitor.parse_spec(window="10s")
    with pytest.raises(InvalidInputError, match="no_such_field"):
        monitor.parse_spec(drift={"no_such_field": 1})
    with pytest.raises(NotFoundError, match="nope"):
        monitor.set_monitor(churn_endpoint.ctx, "nope", monitor.MonitorSpec())
    with pytest.raises(NotFoundError, match="dataset"):
        monitor.set_monitor(churn_endpoint.ctx, "churn-api", monitor.MonitorSpec(reference="missing-data"))


def test_deploy_attaches_a_default_monitor_unless_told_not_to(churn_endpoint: ChurnEndpoint) -> None:
    ctx = churn_endpoint.ctx
    info = monitor.get_monitor(ctx, "churn-api")
    assert info.window_s == monitor.DEFAULT_WINDOW_S
    assert info.reference == monitor.TRAINING
    assert {r.name for r in alerts.list_rules(ctx, "churn-api")} == {r.name for r in alerts.DEFAULT_RULES}
    churn_endpoint.client.deploy("bare-api", DeploySpec(routes=[("churn:1", 100)], monitor=False))
    with pytest.raises(NotFoundError, match="no monitor"):
        monitor.get_monitor(ctx, "bare-api")
    assert alerts.list_rules(ctx, "bare-api") == []
    # Updating an endpoint keeps its monitor as it is.
    monitor.set_monitor(ctx, "churn-api", monitor.parse_spec(window="6h"))
    churn_endpoint.client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], sticky_key="customer_id"))
    assert monitor.get_monitor(ctx, "churn-api").window_s == 6 * 3600


def test_drift_held_for_two_windows_fires_the_default_alert(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1500, seed=1)
    for i in (1, 2):
        churn_endpoint.log(T0 + i * HOUR, 1500, seed=1 + i, drift=DRIFT)
    summary = monitor.run(churn_endpoint.ctx, now=T0 + 3 * HOUR)[0]
    moves = [(t.alert.rule, t.before, t.after) for t in summary.transitions]
    assert ("data-drift", "pending", "firing") in moves, moves
    fired = [a for a in alerts.list_alerts(churn_endpoint.ctx, "churn-api") if a.state == "firing"]
    assert {a.rule for a in fired} >= {"data-drift"}
    (drift_alert,) = [a for a in fired if a.rule == "data-drift"]
    assert (drift_alert.model, drift_alert.version) == ("churn", 1)


def test_the_scheduler_runs_due_monitors_in_the_background(churn_endpoint: ChurnEndpoint) -> None:
    ctx = churn_endpoint.ctx
    past = dt.datetime.now(dt.UTC) - 3 * HOUR
    monitor.set_monitor(ctx, "churn-api", monitor.parse_spec(window="1h", delay="0s"), start=past)
    scheduler = monitor.Scheduler(ctx, interval_s=0.05, holder="test")
    scheduler.start()
    try:
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
        while scheduler.ticks < 2 and dt.datetime.now(dt.UTC) < deadline:
            threading.Event().wait(0.05)
    finally:
        scheduler.stop()
    stored = monitor.results(ctx, "churn-api", version="all")
    assert len(stored) == 3
    assert {r.status for r in stored} == {"no_traffic"}


def test_a_run_that_dies_before_committing_leaves_the_window_to_the_next_run(
    churn_endpoint: ChurnEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1200, seed=1)
    monkeypatch.setitem(_failpoints._ACTIVE, "monitor.before_commit", "raise")
    with pytest.raises(_failpoints.FailpointError):
        monitor.run_monitor(churn_endpoint.ctx, "churn-api", now=T0 + HOUR)
    assert monitor.results(churn_endpoint.ctx, "churn-api") == []
    assert monitor.get_monitor(churn_endpoint.ctx, "churn-api").next_window == T0
    monkeypatch.delitem(_failpoints._ACTIVE, "monitor.before_commit")
    assert monitor.run_monitor(churn_endpoint.ctx, "churn-api", now=T0 + HOUR).windows == 1
    assert sorted(r.ref for r in monitor.results(churn_endpoint.ctx, "churn-api")) == ["all", "churn:1"]


def test_a_killed_monitor_process_loses_and_doubles_nothing(churn_endpoint: ChurnEndpoint) -> None:
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1200, seed=1)
    home = churn_endpoint.ctx.settings.home
    script = (
        "import datetime as dt\n"
        "from passerelle import monitor\n"
        "from passerelle.context import Context\n"
        "from passerelle.settings import Settings\n"
        f"ctx = Context(Settings(home={str(home)!r}))\n"
        f"monitor.run_monitor(ctx, 'churn-api', now=dt.datetime.fromisoformat({(T0 + HOUR).isoformat()!r}),"
        " holder='worker-0')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_FAILPOINTS"] = "monitor.before_commit=pause"
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "failpoint monitor.before_commit reached" in line, line + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert monitor.results(churn_endpoint.ctx, "churn-api") == []
    # The same worker, restarted, takes its lease back and evaluates the window once.
    summary = monitor.run_monitor(churn_endpoint.ctx, "churn-api", now=T0 + HOUR, holder="worker-0")
    assert summary.windows == 1
    with churn_endpoint.ctx.store.read() as session:
        assert session.scalar(select(func.count()).select_from(MonitorResult)) == 2


def test_redacted_columns_are_neither_compared_nor_reported_missing(churn_endpoint: ChurnEndpoint) -> None:
    churn_endpoint.client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], redact=["age"]))
    _set(churn_endpoint)
    churn_endpoint.log(T0, 1500, seed=1, without=("age",))
    monitor.run(churn_endpoint.ctx, now=T0 + HOUR)
    (result,) = monitor.results(churn_endpoint.ctx, "churn-api", version="churn:1")
    assert result.status == "ok"
    assert result.figures["schema.changed"] == 0.0
    assert "drift.column.age" not in result.figures
    assert "drift.column.tenure_months" in result.figures
