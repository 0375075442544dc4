"""What users and orchestrators touch: the command line and its exit codes, lineage, the HTTP API,
and the Airflow operator (called without Airflow installed)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import httpx
import pytest

from passerelle import alerts
from passerelle.alerts import RuleSpec
from passerelle.api.app import create_app
from passerelle.api.pipelines import LOG_OFFSET_HEADER, RUN_STATE_HEADER
from passerelle.api.pipelines import router as pipelines_router
from passerelle.cli import main
from passerelle.integrations import airflow
from passerelle.integrations.airflow import PasserellePipelineOperator, PipelineRunFailed
from passerelle.lineage import graph
from passerelle.pipelines import Scheduler, execute, install_alert_trigger, list_runs
from passerelle.serving.server import background_server
from passerelle.store.schema import MonitorResult
from tests.pipelines.conftest import Project


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as done:
        return int(done.code or 0)
    return 0


# ------------------------------------------------------------------------------------- command line


def test_run_wait_exit_codes(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.apply()
    assert cli("pipeline", "run", "retrain-churn", "--wait") == 0
    out = capsys.readouterr().out
    assert "run retrain-churn#1" in out
    assert "succeeded" in out
    assert "model version: churn:1" in out
    assert "promotion: register → churn@challenger" in out

    project.apply(evaluation={"gates": ["accuracy >= 0.99"]})
    assert cli("pipeline", "run", "retrain-churn", "--wait") == 1
    captured = capsys.readouterr()
    assert "FAIL accuracy >= 0.99" in captured.out
    assert "churn:2 rejected by its gates: accuracy >= 0.99" in captured.err

    assert cli("pipeline", "run", "retrain-churn", "--wait", "--param", "mode=fail") == 2
    err = capsys.readouterr().err
    assert "the training command failed with exit status 3: ValueError: the label column is empty" in err


def test_run_without_wait_queues_and_the_other_commands_show_it(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    project.apply()
    assert cli("pipeline", "run", "retrain-churn", "--json") == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["state"] == "queued"
    assert cli("pipeline", "run", "retrain-churn") == 1  # one active run at a time
    assert "already has an active run retrain-churn#1" in capsys.readouterr().err
    execute(project.ctx, queued["id"], holder="test")
    assert cli("pipeline", "runs", "retrain-churn") == 0
    assert "retrain-churn#1" in capsys.readouterr().out
    assert cli("pipeline", "show", "retrain-churn#1") == 0
    shown = capsys.readouterr().out
    assert "succeeded" in shown
    assert "train: churn-train:1 sha256:" in shown
    assert "pass auc >= 0.6" in shown
    assert cli("pipeline", "logs", queued["id"], "--follow") == 0
    assert "registered churn:1" in capsys.readouterr().out
    assert cli("pipeline", "list") == 0
    assert "retrain-churn" in capsys.readouterr().out
    assert cli("pipeline", "show", "nope#3") == 1
    assert "pipeline run nope#3 does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ lineage


def _alert_run(project: Project) -> tuple[str, str]:
    """churn:1 serves churn-api; an alert on it queues a run whose candidate goes to shadow."""
    champion = project.champion()
    project.apply(triggers=["alert", "manual"], promotion={"policy": "shadow", "endpoint": "churn-api"})
    alerts.set_rule(
        project.ctx, "churn-api", RuleSpec("drift", "drift.share > 0.3", pipeline="retrain-churn")
    )
    release = install_alert_trigger()
    try:
        start = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
        with project.ctx.store.write() as session:
            alerts.evaluate_window(
                session,
                "churn-api",
                [MonitorResult(endpoint="churn-api", model="churn", version=1, figures={"drift.share": 0.9})],
                window_start=start,
                window_end=start + dt.timedelta(hours=1),
                now=dt.datetime.now(dt.UTC),
            )
    finally:
        release()
    [run] = list_runs(project.ctx, "retrain-churn")
    done = execute(project.ctx, run.id, holder="test")
    assert done.state == "succeeded", done.error
    return champion, done.id


def test_lineage_from_the_alert_to_the_shadow_revision(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, run_id = _alert_run(project)
    found = graph(project.ctx, "churn:2")
    nodes = {n["id"]: n for n in found["nodes"]}
    edges = {(e["from"], e["to"], e["kind"]) for e in found["edges"]}
    run_node = f"run:{run_id}"
    alert_node = next(n for n in nodes if n.startswith("alert:"))
    assert (run_node, "version:churn:2", "registered") in edges
    assert ("dataset:churn-train:1", run_node, "input") in edges
    assert ("dataset:churn-holdout:1", run_node, "holdout") in edges
    assert (alert_node, run_node, "triggered") in edges
    assert ("version:churn:2", "revision:churn-api/2", "shadows") in edges
    assert nodes[alert_node]["rule"] == "drift"
    assert nodes["dataset:churn-train:1"]["fingerprint"].startswith("sha256:")
    assert found["served"] == [{"endpoint": "churn-api", "revision": 2, "role": "shadows"}]
    # downstream of the champion: the alert it raised, and the run that alert triggered
    upstream_of_champion = graph(project.ctx, champion)
    kinds = {
        (e["from"].split(":")[0], e["to"].split(":")[0], e["kind"]) for e in upstream_of_champion["edges"]
    }
    assert ("version", "alert", "raised") in kinds
    assert ("alert", "run", "triggered") in kinds
    assert ("version", "revision", "serves") in kinds

    assert cli("lineage", "churn:2") == 0
    tree = capsys.readouterr().out
    assert "upstream" in tree
    assert "downstream" in tree
    assert "triggered: alert #" in tree
    assert "shadows: churn-api revision 2" in tree
    assert cli("lineage", "churn:2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["ref"] == "churn:2"


# ---------------------------------------------------------------------------------- HTTP and Airflow


@pytest.fixture
def server(project: Project) -> Iterator[str]:
    app = create_app(project.ctx.settings, routers=[pipelines_router])
    with background_server(app) as url:
        yield url


def test_http_api_queues_runs_and_serves_their_state_logs_and_lineage(project: Project, server: str) -> None:
    project.apply()
    with httpx.Client(base_url=server, timeout=30) as http:
        [listed] = http.get("/api/v1/pipelines").json()
        assert listed["name"] == "retrain-churn"
        queued = http.post("/api/v1/pipelines/retrain-churn/runs", json={"params": {"C": 0.3}})
        assert queued.status_code == 202
        run = queued.json()
        assert (run["state"], run["params"]["C"]) == ("queued", 0.3)
        again = http.post("/api/v1/pipelines/retrain-churn/runs", json={})
        assert again.status_code == 409
        assert "already has an active run" in again.json()["error"]["message"]
        unknown = http.post("/api/v1/pipelines/retrain-churn/runs", json={"params": {"depth": 3}})
        assert unknown.status_code == 422
        execute(project.ctx, run["id"], holder="test")
        shown = http.get("/api/v1/pipelines/runs/retrain-churn%231").json()
        assert (shown["id"], shown["state"], shown["model_version"]) == (run["id"], "succeeded", "churn:1")
        logs = http.get(f"/api/v1/pipelines/runs/{run['id']}/logs")
        assert "registered churn:1" in logs.text
        assert logs.headers[RUN_STATE_HEADER] == "succeeded"
        rest = http.get(
            f"/api/v1/pipelines/runs/{run['id']}/logs", params={"offset": logs.headers[LOG_OFFSET_HEADER]}
        )
        assert rest.text == ""
        assert [r["id"] for r in http.get("/api/v1/pipelines/retrain-churn/runs").json()] == [run["id"]]
        lineage = http.get("/api/v1/lineage/churn:1").json()
        assert f"run:{run['id']}" in {n["id"] for n in lineage["nodes"]}
        assert http.get("/api/v1/pipelines/nope").status_code == 404


def test_airflow_operator_runs_the_pipeline_in_process(project: Project) -> None:
    assert airflow._Base is airflow._PlainOperator  # Airflow is not installed here
    project.apply()
    operator = PasserellePipelineOperator(
        task_id="retrain", pipeline="retrain-churn", pipeline_params={"C": 0.2}, settings=project.ctx.settings
    )
    result = operator.execute({})
    assert result["state"] == "succeeded"
    assert result["params"]["C"] == 0.2
    assert result["created_by"] == "tester"

    failing = PasserellePipelineOperator(
        task_id="retrain",
        pipeline="retrain-churn",
        pipeline_params={"mode": "fail"},
        settings=project.ctx.settings,
    )
    with pytest.raises(
        PipelineRunFailed, match=r"run retrain-churn#2 ended failed: the training command failed"
    ) as caught:
        failing.execute({})
    assert caught.value.exit_code == 2
    assert caught.value.run["state"] == "failed"


def test_airflow_operator_follows_a_run_on_a_server(project: Project, server: str) -> None:
    project.apply(evaluation={"gates": ["accuracy >= 0.99"]})
    scheduler = Scheduler(project.ctx, interval_s=0.2, holder="server")
    scheduler.start()
    try:
        rejected = PasserellePipelineOperator(
            task_id="retrain", pipeline="retrain-churn", url=server, poll_s=0.2, settings=project.ctx.settings
        )
        with pytest.raises(
            PipelineRunFailed, match="ended rejected: churn:1 rejected by its gates"
        ) as caught:
            rejected.execute({})
        assert caught.value.exit_code == 1
        tolerant = PasserellePipelineOperator(
            task_id="retrain",
            pipeline="retrain-churn",
            url=server,
            poll_s=0.2,
            rejected_ok=True,
            settings=project.ctx.settings,
        )
        assert tolerant.execute({})["state"] == "rejected"
    finally:
        scheduler.stop()
