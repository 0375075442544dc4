"""kill -9 of the process running a pipeline, on SQLite and PostgreSQL.

`passerelle pipeline run NAME --wait` runs the run in its own process; it is killed while the
training command works, just before the candidate is registered, and in the middle of the
registration. A new process ticking the scheduler then finds the run's heartbeat stale, marks it
``interrupted``, and queues a new attempt only when the definition says ``retry_interrupted``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from passerelle.client import LocalClient
from passerelle.pipelines import get_run, list_runs, run_claimed, tick
from passerelle.settings import Settings
from tests.pipelines.conftest import FEATURES, Project, churn_frame
from tests.scaleout.conftest import EXE, environment

#: a training command that copies a model trained beforehand, once the file ``go`` exists
WAIT_PY = textwrap.dedent(
    """
    import argparse, json, os, pathlib, shutil, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    if not pathlib.Path("go").exists():
        pathlib.Path("waiting").write_text(str(os.getpid()))
        while not pathlib.Path("go").exists():
            time.sleep(0.05)
    shutil.copy("prebuilt.skops", pathlib.Path(args.out) / "model.skops")
    (pathlib.Path(args.out) / "metrics.json").write_text(json.dumps({"train_rows": 300}))
    """
)

#: where the runner is killed: inside the training command, or at a failpoint
WHERE = [
    pytest.param("training", True, id="training-retried"),
    pytest.param("pipelines.before_register", False, id="before-register-not-retried"),
    pytest.param("register.before_commit", True, id="in-registration-retried"),
]


@pytest.fixture
def project(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """Train and holdout datasets, a champion churn:1, and the waiting training script."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "wait.py").write_text(WAIT_PY)
    frame = churn_frame(300, seed=0)
    sio.dump(
        LogisticRegression(max_iter=500).fit(frame[FEATURES], frame["churned"]), folder / "prebuilt.skops"
    )
    settings = Settings(home=tmp_path / "home", database_url=backend, orphan_grace_seconds=0)
    with LocalClient(settings) as client:
        assert isinstance(client, LocalClient)
        p = Project(client, folder)
        p.add_data("churn-train", 300, seed=0)
        p.add_data("churn-holdout", 200, seed=1)
        assert p.champion(endpoint=None) == "churn:1"
        yield p


def _kill_runner(project: Project, where: str) -> tuple[str, int | None]:
    """Start `passerelle pipeline run --wait`, kill -9 it at ``where``; the training's pid if it runs."""
    log = project.folder / "runner.stderr"
    scratch = project.folder / "tmp"
    scratch.mkdir()
    if where != "training":
        (project.folder / "go").write_text("")  # the training goes straight through
    failpoints = "" if where == "training" else f"{where}=pause"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [EXE, "pipeline", "run", "retrain-churn", "--wait"],
            cwd=project.folder,
            # The killed runner leaves its scratch folder behind: keep it in the test's own folder.
            env=environment(
                project.client.ctx.settings, PASSERELLE_FAILPOINTS=failpoints, TMPDIR=str(scratch)
            ),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while not _reached(project, where, log):
            assert proc.poll() is None, f"the runner ended first:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{where} not reached within 60 s:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    [run] = list_runs(project.ctx, "retrain-churn")
    training = int((project.folder / "waiting").read_text()) if where == "training" else None
    return run.id, training


def _reached(project: Project, where: str, log: Path) -> bool:
    if where == "training":
        return (project.folder / "waiting").is_file()
    return f"failpoint {where} reached" in log.read_text(errors="replace")


@pytest.mark.parametrize(("where", "retry_interrupted"), WHERE)
def test_kill_9_of_a_pipeline_run_leaves_it_interrupted_and_retried_as_defined(
    project: Project, where: str, retry_interrupted: bool
) -> None:
    project.apply(
        params={"script": "wait.py", "C": 1.0, "mode": "ok"},
        retries=1,
        retry_interrupted=retry_interrupted,
    )
    records = len(project.client.audit(action="version.register"))
    run_id, training = _kill_runner(project, where)
    try:
        # Dead, but its heartbeat is still fresh: a tick right away leaves it alone.
        assert get_run(project.ctx, run_id).state == "running"
        assert tick(project.ctx, "restarted", capacity=0).interrupted == []

        # Once the heartbeat is older than the staleness limit, the run is interrupted.
        time.sleep(1.2)
        report = tick(project.ctx, "restarted", capacity=0, stale_after_s=1.0)
        assert report.interrupted == [run_id]
        interrupted = get_run(project.ctx, run_id)
        assert interrupted.state == "interrupted"
        assert interrupted.error is not None
        assert interrupted.error.startswith("no heartbeat since")
        assert interrupted.model_version is None
        assert list_runs(project.ctx, "retrain-churn", state="running") == []
        # No version came of it, not even half of one, and the champion did not move.
        client = project.client
        assert [v.ref for v in client.get_model("churn")[1]] == ["churn:1"]
        assert client.get_version("churn@champion").ref == "churn:1"
        assert len(client.audit(action="version.register")) == records
        # What the registration had written without committing is an orphan, swept.
        assert len(client.gc()) == (1 if where == "register.before_commit" else 0)
        health = client.doctor()
        assert health.ok, health.problems
        assert health.orphans == []
        queued = list_runs(project.ctx, "retrain-churn", state="queued")
        if not retry_interrupted:
            assert queued == []
            assert report.queued == []
            return
        [retry] = queued
        assert report.queued == [retry.id]
        assert (retry.attempt, retry.retry_of) == (2, run_id)
    finally:
        if training is not None:
            # The dead runner's training command outlives it in its own session.
            with contextlib.suppress(ProcessLookupError):
                os.kill(training, signal.SIGKILL)

    # The new attempt runs to its end in the process that restarted.
    (project.folder / "go").write_text("")

    def inline(run_id: str) -> None:
        run_claimed(project.ctx, run_id, "restarted")

    ran = tick(project.ctx, "restarted", start=inline)
    assert ran.started == [retry.id]
    done = get_run(project.ctx, retry.id)
    assert done.state == "succeeded", done.error
    assert done.model_version == "churn:2"
    assert [v.ref for v in project.client.get_model("churn")[1]] == ["churn:1", "churn:2"]
    # The register policy names it the challenger; the champion stays until someone promotes.
    assert project.client.get_version("churn@challenger").ref == "churn:2"
    assert project.client.get_version("churn@champion").ref == "churn:1"
    assert {r.state for r in list_runs(project.ctx, "retrain-churn")} == {"interrupted", "succeeded"}
    assert project.client.doctor().ok
