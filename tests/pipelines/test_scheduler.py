"""The periodic work: stale runs, triggers (schedule, dataset, alert), cooldown, and several servers."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

from sqlalchemy import update

from passerelle import alerts
from passerelle.alerts import RuleSpec
from passerelle.context import Context
from passerelle.pipelines import (
    Scheduler,
    alert_trigger,
    cancel_run,
    claim,
    get_pipeline,
    get_run,
    install_alert_trigger,
    list_runs,
    run_claimed,
    start_run,
    tick,
)
from passerelle.settings import Settings
from passerelle.store.schema import MonitorResult, PipelineRun
from tests.pipelines.conftest import Project

NOW = dt.datetime.now(dt.UTC)


def _age_heartbeat(ctx: Context, run_id: str, seconds: float) -> None:
    with ctx.store.write() as session:
        session.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id)
            .values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds))
        )


def test_a_run_whose_heartbeat_went_stale_is_interrupted_and_queued_again(project: Project) -> None:
    project.apply(retries=1)
    run = start_run(project.ctx, "retrain-churn")
    assert claim(project.ctx, run.id, "server-a")
    _age_heartbeat(project.ctx, run.id, 600)
    report = tick(project.ctx, "server-b", capacity=0)
    assert report.interrupted == [run.id]
    old = get_run(project.ctx, run.id)
    assert old.state == "interrupted"
    assert old.error is not None
    assert "from server-a: the process running it stopped" in old.error
    [again] = list_runs(project.ctx, "retrain-churn", state="queued")
    assert (again.attempt, again.retry_of, again.trigger) == (2, run.id, "manual")
    assert report.queued == [again.id]
    # a fresh heartbeat is left alone
    assert claim(project.ctx, again.id, "server-b")
    assert tick(project.ctx, "server-b", capacity=0).interrupted == []
    assert get_run(project.ctx, again.id).state == "running"


def test_without_retry_interrupted_an_interrupted_run_stays_so(project: Project) -> None:
    project.apply(retries=1, retry_interrupted=False)
    run = start_run(project.ctx, "retrain-churn")
    assert claim(project.ctx, run.id, "server-a")
    _age_heartbeat(project.ctx, run.id, 600)
    assert tick(project.ctx, "server-b", capacity=0).interrupted == [run.id]
    assert list_runs(project.ctx, "retrain-churn", state="queued") == []


def test_a_server_stopping_mid_run_marks_it_interrupted_and_queues_it_again(project: Project) -> None:
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "sleep"}, retries=1)
    run = start_run(project.ctx, "retrain-churn")
    scheduler = Scheduler(project.ctx, interval_s=0.2, holder="server-a")
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while not (project.folder / "started").exists():
            assert time.monotonic() < deadline, "the training command never started"
            time.sleep(0.1)
        assert get_run(project.ctx, run.id).state == "running"
    finally:
        scheduler.stop()
    stopped = get_run(project.ctx, run.id)
    assert stopped.state == "interrupted"
    assert stopped.error == "stopped with the process running it"
    [again] = list_runs(project.ctx, "retrain-churn", state="queued")
    assert again.retry_of == run.id


def test_cooldown_holds_under_a_trigger_storm(project: Project) -> None:
    project.apply(triggers=["alert", "manual"], cooldown="1h")
    for i in range(25):
        with project.ctx.store.write() as session:
            alert_trigger(session, "retrain-churn", {"alert_id": i, "rule": "drift", "endpoint": "churn-api"})
    [run] = list_runs(project.ctx, "retrain-churn")
    assert (run.trigger, run.trigger_detail["alert_id"]) == ("alert", 0)
    state = get_pipeline(project.ctx, "retrain-churn").trigger_state
    assert state["suppressed"] == 24
    assert state["pending"]["detail"]["alert_id"] == 24  # the latest one is kept, once
    assert state["recent_suppressed"][-1]["why"].startswith("cooldown (")
    # the storm's run ends; within the cooldown nothing more starts
    cancel_run(project.ctx, run.id, reason="the storm is over")
    assert tick(project.ctx, "server", now=NOW + dt.timedelta(minutes=30), capacity=0).queued == []
    # after it, the deferred trigger fires once
    later = tick(project.ctx, "server", now=NOW + dt.timedelta(hours=2), capacity=0)
    [second] = later.queued
    assert get_run(project.ctx, second).trigger_detail["alert_id"] == 24
    assert tick(project.ctx, "server", now=NOW + dt.timedelta(hours=4), capacity=0).queued == []


def test_a_firing_alert_rule_with_a_pipeline_queues_a_run(project: Project) -> None:
    champion = project.champion()
    project.apply(triggers=["alert", "manual"])
    alerts.set_rule(
        project.ctx, "churn-api", RuleSpec("drift", "drift.share > 0.3", pipeline="retrain-churn")
    )
    release = install_alert_trigger()
    try:
        start = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
        result = MonitorResult(
            endpoint="churn-api",
            model="churn",
            version=1,
            status="ok",
            rows=100,
            figures={"drift.share": 0.6},
        )
        with project.ctx.store.write() as session:
            alerts.evaluate_window(
                session,
                "churn-api",
                [result],
                window_start=start,
                window_end=start + dt.timedelta(hours=1),
                now=dt.datetime.now(dt.UTC),
            )
    finally:
        release()
    [run] = list_runs(project.ctx, "retrain-churn")
    assert run.state == "queued"
    assert run.trigger == "alert"
    assert (run.trigger_detail["rule"], run.trigger_detail["endpoint"]) == ("drift", "churn-api")
    assert (run.trigger_detail["model"], run.trigger_detail["version"]) == (
        "churn",
        int(champion.split(":")[1]),
    )
    assert isinstance(run.trigger_detail["alert_id"], int)


def test_a_due_schedule_queues_one_run(project: Project) -> None:
    project.apply(triggers=["schedule"], schedule="0 3 * * *")
    due = dt.datetime.fromisoformat(get_pipeline(project.ctx, "retrain-churn").trigger_state["schedule_next"])
    assert due > NOW - dt.timedelta(minutes=1)
    assert tick(project.ctx, "server", now=due - dt.timedelta(seconds=1), capacity=0).queued == []
    [queued] = tick(project.ctx, "server", now=due + dt.timedelta(hours=1), capacity=0).queued
    run = get_run(project.ctx, queued)
    assert (run.trigger, run.trigger_detail["cron"]) == ("schedule", "0 3 * * *")
    state = get_pipeline(project.ctx, "retrain-churn").trigger_state
    assert dt.datetime.fromisoformat(state["schedule_next"]) == due + dt.timedelta(days=1)


def test_a_new_dataset_version_triggers_a_run_that_trains_on_it(project: Project) -> None:
    project.apply(triggers=["dataset", "manual"])
    assert tick(project.ctx, "server", capacity=0).queued == []  # what was there before does not fire
    project.add_data("churn-train", 300, seed=7)

    def inline(run_id: str) -> None:
        run_claimed(project.ctx, run_id, "server")

    report = tick(project.ctx, "server", start=inline)
    [run_id] = report.started
    assert report.queued == [run_id]
    run = get_run(project.ctx, run_id)
    assert run.trigger == "dataset"
    assert run.trigger_detail["dataset_version"] == "churn-train:2"
    assert run.state == "succeeded", run.error
    assert run.inputs["train"]["dataset"] == "churn-train:2"
    assert project.client.get_version(run.model_version or "").dataset == "churn-train:2"


def test_a_watched_path_triggers_when_its_content_changes(project: Project) -> None:
    data = project.folder / "data" / "churn-train-0.csv"
    project.apply(input={"path": str(data), "dataset": None}, triggers=["dataset"], watch_interval=0)
    assert tick(project.ctx, "server", capacity=0).queued == []
    data.write_text(data.read_text() + data.read_text().splitlines()[1] + "\n")
    [queued] = tick(project.ctx, "server", capacity=0).queued
    assert get_run(project.ctx, queued).trigger_detail["path"] == str(data)


def test_two_servers_on_one_postgresql_start_a_run_once(pg_project: Project, tmp_path: Path) -> None:
    pg_project.apply(triggers=["dataset", "manual"])
    pg_project.add_data("churn-train", 300, seed=9)
    url = pg_project.ctx.settings.database_url
    servers = [Context(Settings(home=tmp_path / f"home-{i}", database_url=url)) for i in range(2)]
    started: list[tuple[str, str]] = []
    barrier = threading.Barrier(2)

    def server(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            tick(servers[i], f"server-{i}", start=lambda run_id: started.append((f"server-{i}", run_id)))

    threads = [threading.Thread(target=server, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    [run] = list_runs(pg_project.ctx, "retrain-churn")
    assert [r for _, r in started] == [run.id]
    assert get_run(pg_project.ctx, run.id).state == "running"
    for ctx in servers:
        ctx.close()


def test_claiming_a_run_is_exclusive_on_postgresql(pg_project: Project, tmp_path: Path) -> None:
    pg_project.apply(concurrency=2)
    run = start_run(pg_project.ctx, "retrain-churn")
    url = pg_project.ctx.settings.database_url
    contexts = [Context(Settings(home=tmp_path / f"home-{i}", database_url=url)) for i in range(4)]
    won: list[bool] = []
    barrier = threading.Barrier(len(contexts))

    def race(i: int) -> None:
        barrier.wait()
        won.append(claim(contexts[i], run.id, f"server-{i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(contexts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == [False, False, False, True]
    for ctx in contexts:
        ctx.close()
