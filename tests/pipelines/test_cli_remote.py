"""The pipeline commands with PASSERELLE_URL: a real gateway (`passerelle serve`'s app on a free port)
whose own scheduler executes the runs, and the command line acting on it through the remote client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from passerelle.cli import main
from passerelle.client import LocalClient
from tests.pipelines.conftest import make_project
from tests.serving.conftest import serving

#: the name the served app runs its scheduler under (tests.serving.conftest.serving)
SERVER_WORKER = "test-worker"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.timeout(120)
def test_pipeline_commands_act_on_the_server_which_executes_the_runs(
    tmp_path: Path, prebuilt: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    project = make_project(tmp_path / "project", tmp_path / "server", prebuilt)
    settings = project.ctx.settings
    path = project.write({"retrain-churn": project.definition()})
    project.client.close()
    with serving(settings) as (url, _gateway):
        monkeypatch.setenv("PASSERELLE_URL", url)
        monkeypatch.setenv("PASSERELLE_HOME", str(tmp_path / "client"))
        monkeypatch.chdir(tmp_path)  # the file's folder, not the current one, is the training folder

        code, out, err = cli(capsys, "pipeline", "apply", "-f", str(path), "--reason", "from a laptop")
        assert (code, err) == (0, "")
        assert "pipeline retrain-churn → model churn, triggers manual, promotion register" in out
        code, out, _ = cli(capsys, "pipeline", "list")
        assert code == 0
        assert "retrain-churn" in out

        code, out, err = cli(capsys, "pipeline", "run", "retrain-churn", "--wait")
        assert code == 0, err
        assert "run retrain-churn#1" in out
        assert "succeeded" in out
        assert "model version: churn:1" in out
        code, out, _ = cli(capsys, "pipeline", "logs", "retrain-churn#1")
        assert code == 0
        assert "training on " in out
        assert "registered churn:1" in out

        code, out, err = cli(capsys, "pipeline", "run", "retrain-churn", "--wait", "--param", "mode=fail")
        assert code == 2
        assert "run retrain-churn#2" in out
        assert "the training command failed with exit status 3: ValueError: the label column is empty" in err

        # Queued only; the log is followed from the server while its scheduler starts and runs it.
        code, out, _ = cli(capsys, "pipeline", "run", "retrain-churn", "--json")
        assert code == 0
        third = json.loads(out)
        assert third["state"] == "queued"
        code, out, _ = cli(capsys, "pipeline", "logs", third["id"], "--follow")
        assert code == 0
        assert "registered churn:2" in out
        code, out, _ = cli(capsys, "pipeline", "show", "retrain-churn#3")
        assert code == 0
        assert "succeeded" in out
        assert "train: churn-train:1 sha256:" in out

        code, out, _ = cli(capsys, "pipeline", "runs", "retrain-churn", "--json")
        assert code == 0
        runs = json.loads(out)
        assert [(r["number"], r["state"]) for r in runs] == [
            (3, "succeeded"),
            (2, "failed"),
            (1, "succeeded"),
        ]
        assert {r["holder"] for r in runs} == {SERVER_WORKER}  # none ran in the command's process
        code, out, _ = cli(capsys, "lineage", "churn:1")
        assert code == 0
        assert "registered: run retrain-churn#1 (succeeded, trigger manual)" in out

        code, out, err = cli(capsys, "pipeline", "cancel", "retrain-churn#9")
        assert (code, out) == (1, "")
        assert "pipeline run retrain-churn#9 does not exist" in err
        code, _, err = cli(capsys, "pipeline", "tick")
        assert code == 1
        assert "`pipeline tick` runs the scheduler on the store itself" in err

        # A definition sent over HTTP is checked as a file is, naming the key.
        body = {
            "definition": {
                **project.definition(),
                "evaluation": {"holdout": "h", "label": "y", "gates": ["acu > 1"]},
            }
        }
        refused = httpx.put(f"{url}/api/v1/pipelines/retrain-churn", json=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["message"].startswith(
            "pipelines.retrain-churn.evaluation.gates[0]: unknown metric 'acu'"
        )

    with LocalClient(settings) as local:
        [applied] = local.audit(action="pipeline.create")
        assert applied.reason == "from a laptop"
        assert local.get_pipeline("retrain-churn").source == str(path.resolve())
