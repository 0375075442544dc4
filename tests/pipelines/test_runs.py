"""Runs end to end with a real training script in a subprocess: success, failures, gates, promotion."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from passerelle import audit
from passerelle.errors import ConflictError, InvalidInputError, NotFoundError
from passerelle.pipelines import (
    RunInfo,
    cancel_run,
    claim,
    execute,
    get_run,
    list_runs,
    logs,
    runs,
    start_run,
    wait,
)
from tests.pipelines.conftest import Project


def test_a_run_trains_registers_evaluates_and_records_everything(project: Project) -> None:
    project.apply(params={"script": "train.py", "C": 1.0, "mode": "ok"})
    run = project.run(C="0.5")
    assert run.state == "succeeded", run.error
    assert run.model_version == "churn:1"
    assert run.params == {"script": "train.py", "C": 0.5, "mode": "ok"}
    assert run.inputs["train"]["dataset"] == "churn-train:1"
    assert run.inputs["train"]["fingerprint"].startswith("sha256:")
    assert run.inputs["holdout"]["dataset"] == "churn-holdout:1"
    assert run.environment_hash.startswith("sha256:")
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.finished_at >= run.started_at
    # the register policy moves @challenger, and the evaluation is kept on the version
    assert run.promotion == {"policy": "register", "candidate": "churn:1", "alias": "churn@challenger"}
    version = project.client.get_version("churn@challenger")
    assert version.ref == "churn:1"
    assert version.dataset == "churn-train:1"
    assert version.params == {"script": "train.py", "C": 0.5, "mode": "ok"}
    assert version.metrics["train_rows"] == 300
    assert "note" not in version.metrics  # not a number: left out, and the log says so
    assert 0.6 < version.metrics["holdout.roc_auc"] <= 1.0
    assert "holdout.roc_auc[contract=two-year]" in version.metrics
    assert version.tags["pipeline_run"] == run.id
    assert version.tags["gates"] == "passed"
    gates = {g["gate"]: g for g in run.evaluation["gates"]}
    assert gates["auc >= champion.auc - 0.05"]["detail"].startswith("no champion to compare with")
    assert gates["p99_ms <= 2000"]["passed"] is True
    text = "".join(logs(project.ctx, run.id))
    assert "training on " in text
    assert "==> " in text
    assert "'note' left out" in text
    assert "registered churn:1" in text
    # every state change was audited
    actions = [e.action for e in audit.list_entries(project.ctx.store, target=f"pipeline:{run.ref}")]
    assert actions == ["pipeline.run.succeeded", "pipeline.run.start", "pipeline.run.queue"]


def test_a_failing_command_shows_its_log_tail_and_leaves_the_champion(project: Project) -> None:
    champion = project.champion()
    before = project.client.endpoints.get("churn-api").revision
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "fail"})
    run = project.run()
    assert run.state == "failed"
    assert run.error is not None
    assert run.error.startswith(
        "the training command failed with exit status 3: ValueError: the label column"
    )
    assert "last lines of the log:" in run.error
    assert "training on " in run.error
    assert run.model_version is None
    assert project.client.get_version("churn@champion").ref == champion
    assert project.client.endpoints.get("churn-api").revision == before


def test_a_command_that_writes_no_model(project: Project) -> None:
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "nomodel"})
    run = project.run()
    assert run.state == "failed"
    assert run.error is not None
    assert "produced no model in its output folder (found: notes.txt)" in run.error
    assert list_runs(project.ctx, "retrain-churn", state="queued") == []  # not worth retrying


def test_a_timeout_stops_the_process_group(project: Project) -> None:
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "sleep"}, train={"timeout": "1s"})
    started = time.monotonic()
    run = project.run()
    assert time.monotonic() - started < 30
    assert run.state == "failed"
    assert run.error is not None
    assert run.error.startswith("the training step timed out after 1 s (train.timeout)")


def test_a_failed_attempt_is_retried_after_its_backoff(project: Project) -> None:
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "flaky"}, retries=1, retry_backoff="1s")
    first = project.run()
    assert first.state == "failed"
    assert first.error is not None
    assert "temporary failure: the data store timed out" in first.error
    [retry] = list_runs(project.ctx, "retrain-churn", state="queued")
    assert (retry.attempt, retry.retry_of, retry.trigger) == (2, first.id, "manual")
    assert first.finished_at is not None
    assert retry.not_before is not None
    assert retry.not_before >= first.finished_at + dt.timedelta(seconds=1)
    assert retry.trigger_detail["dataset_version"] == "churn-train:1"
    # not started before its backoff, whoever asks
    assert not claim(project.ctx, retry.id, "eager", now=first.finished_at)
    seen: list[RunInfo] = []
    final = wait(project.ctx, first.id, poll_s=0.2, on_run=seen.append)
    assert [r.id for r in seen] == [first.id, retry.id]
    assert (final.id, final.state, final.attempt) == (retry.id, "failed", 2)
    # retries: 1 means two attempts in all
    assert list_runs(project.ctx, "retrain-churn", state="queued") == []


def test_the_second_attempt_trains_on_the_same_data(project: Project) -> None:
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "fail"}, retries=1, retry_backoff=0)
    first = project.run()
    project.add_data("churn-train", 300, seed=5)  # a newer version arrives meanwhile
    [retry] = list_runs(project.ctx, "retrain-churn", state="queued")
    second = execute(project.ctx, retry.id, holder="test")
    assert first.inputs["train"]["dataset"] == second.inputs["train"]["dataset"] == "churn-train:1"


def test_an_incompatible_signature_is_refused_with_the_diff(project: Project) -> None:
    champion = project.champion(extra_column="tenure")
    project.apply(promotion={"policy": "champion", "endpoint": "churn-api"})
    run = project.run()
    assert run.state == "rejected"
    assert run.error == (
        f"churn:2 is not compatible with the champion {champion}, "
        "refused for promotion: missing column 'tenure'"
    )
    assert project.client.get_version("churn:2").tags["gates"] == "refused"
    assert project.client.get_version("churn@champion").ref == champion
    policy = project.client.endpoints.get("churn-api").policy
    assert [r.ref for r in policy.routes] == [champion]


FIT_PY = """\
import pandas as pd
from sklearn.linear_model import LogisticRegression


def train(input_path, output_dir, params):
    frame = pd.read_csv(input_path)
    features = frame[["age", "income", "score"]]
    return LogisticRegression(C=params["C"], max_iter=500).fit(features, frame["churned"])
"""


def test_gates_that_pass_promote_to_shadow_in_a_new_revision(project: Project) -> None:
    # trained by a Python entry point that returns the fitted model
    (project.folder / "fit.py").write_text(FIT_PY)
    champion = project.champion()
    project.apply(
        train={"entry_point": "fit:train", "command": None},
        params={"C": 2.0},
        promotion={"policy": "shadow", "endpoint": "churn-api", "shadow_percent": 50},
    )
    run = project.run()
    assert run.state == "succeeded", run.error
    assert project.client.get_version("churn:2").flavor == "sklearn"
    assert project.client.get_version("churn:2").params["C"] == 2.0
    assert run.promotion["revision"] == 2
    endpoint = project.client.endpoints.get("churn-api")
    assert endpoint.revision == 2
    assert [r.ref for r in endpoint.policy.routes] == [champion]
    assert [(s.ref, s.percent) for s in endpoint.policy.shadows] == [("churn:2", 50.0)]
    [latest, _] = project.client.endpoints.revisions("churn-api")
    assert latest.reason == f"pipeline retrain-churn#1 (run {run.id}): gates passed"
    # the champion was scored on the same holdout, and its figures kept beside the candidate's
    assert run.evaluation["champion"]["ref"] == champion
    version = project.client.get_version("churn:2")
    assert "champion.roc_auc" in version.metrics
    assert version.tags["evaluated_against"] == champion


def test_gates_that_fail_reject_the_run_and_leave_the_champion(project: Project) -> None:
    champion = project.champion()
    project.apply(
        promotion={"policy": "champion", "endpoint": "churn-api"},
        evaluation={"gates": ["auc >= champion.auc + 0.5", "accuracy >= 0.5"]},
    )
    run = project.run()
    assert run.state == "rejected"
    assert run.error == "churn:2 rejected by its gates: auc >= champion.auc + 0.5"
    [failed, passed] = run.evaluation["gates"]
    assert failed["passed"] is False
    assert failed["detail"].endswith("does not hold")
    assert passed["passed"] is True
    assert project.client.get_version("churn@champion").ref == champion
    assert project.client.endpoints.get("churn-api").revision == 1
    assert project.client.get_version("churn:2").tags["gates"] == "failed"


def test_one_active_run_at_a_time_and_declared_params_only(project: Project) -> None:
    project.apply()
    queued = start_run(project.ctx, "retrain-churn")
    with pytest.raises(
        ConflictError, match=rf"already has an active run retrain-churn#1 \(queued, id {queued.id}\)"
    ):
        start_run(project.ctx, "retrain-churn")
    with pytest.raises(InvalidInputError, match=r"has no parameter 'depth' \(declared: script, C, mode\)"):
        start_run(project.ctx, "retrain-churn", params={"depth": "3"})
    with pytest.raises(InvalidInputError, match="does not accept alert runs"):
        start_run(project.ctx, "retrain-churn", "alert")
    with pytest.raises(NotFoundError, match="pipeline 'nope' does not exist"):
        start_run(project.ctx, "nope")
    assert get_run(project.ctx, "retrain-churn#1").id == queued.id
    with pytest.raises(NotFoundError, match="pipeline run retrain-churn#9 does not exist"):
        get_run(project.ctx, "retrain-churn#9")


def test_cancelling_a_running_run_stops_its_training(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.2)
    project.apply(params={"script": "fast.py", "C": 1.0, "mode": "sleep"})
    run = start_run(project.ctx, "retrain-churn")
    outcome: list[RunInfo] = []
    worker = threading.Thread(target=lambda: outcome.append(execute(project.ctx, run.id, holder="server")))
    worker.start()
    deadline = time.monotonic() + 60
    while not (project.folder / "started").exists():
        assert time.monotonic() < deadline, "the training command never started"
        time.sleep(0.1)
    cancel_run(project.ctx, run.ref, reason="wrong data")
    worker.join(60)
    [final] = outcome
    assert final.state == "cancelled"
    assert final.error == "cancelled by tester: wrong data"
    assert "no longer holds the run" in "".join(logs(project.ctx, run.id))
    with pytest.raises(ConflictError, match="is cancelled; only active runs are cancelled"):
        cancel_run(project.ctx, run.id)
