"""The command line: every command, readable errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skops.io

from passerelle.cli import main
from tests.helpers import small_model


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    model, frame = small_model()
    model_path = tmp_path / "model.skops"
    skops.io.dump(model, model_path)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    return {"model": model_path, "sample": sample}


def test_register_show_alias_archive_audit(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, out, _ = run(
        capsys,
        "register", str(files["model"]), "--name", "churn", "--sample", str(files["sample"]),
        "--metric", "auc=0.91", "--param", "C=1.0", "--tag", "team=risk", "--reason", "first",
    )  # fmt: skip
    assert code == 0, out
    assert "registered churn:1 (sklearn" in out
    assert run(capsys, "register", str(files["model"]), "--name", "churn")[0] == 0

    code, out, _ = run(capsys, "versions", "show", "churn:1")
    assert code == 0
    for fragment in ("churn:1", "auc=0.91", "team=risk", "income", "float", "model.skops", "scikit-learn"):
        assert fragment in out

    code, out, _ = run(capsys, "versions", "show", "churn:1", "--json")
    data = json.loads(out)
    assert data["metrics"] == {"auc": 0.91}
    assert len(data["files"][0]["sha256"]) == 64

    assert run(capsys, "alias", "set", "churn", "champion", "1", "--reason", "launch")[0] == 0
    code, out, _ = run(capsys, "models", "list")
    assert "@champion→1" in out
    code, out, _ = run(capsys, "models", "show", "churn")
    assert code == 0
    assert "@champion" in out
    assert run(capsys, "versions", "tag", "churn:2", "stage=review")[0] == 0
    assert run(capsys, "versions", "archive", "churn:2", "--reason", "test")[0] == 0
    assert run(capsys, "versions", "restore", "churn:2")[0] == 0
    assert run(capsys, "alias", "rm", "churn", "champion")[0] == 0

    code, out, _ = run(capsys, "audit", "--since", "1d", "--json")
    actions = [e["action"] for e in json.loads(out)]
    assert actions[0] == "alias.remove"
    assert "version.archive" in actions
    assert "version.restore" in actions
    assert run(capsys, "audit")[0] == 0
    code, out, _ = run(capsys, "doctor")
    assert code == 0
    assert "ok" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["versions", "show", "nope"], "model 'nope' does not exist"),
        (["versions", "show", "churn:x"], "invalid model reference 'churn:x'"),
        (["register", "/no/such/file", "--name", "m"], "no such file"),
        (["register", "{model}", "--name", "m", "--flavor", "keras"], "unknown flavor 'keras'"),
        (["register", "{model}", "--name", "m", "--metric", "auc=high"], "not a number"),
        (["register", "{model}", "--name", "m", "--dataset", "ghost"], "dataset 'ghost' does not exist"),
        (["alias", "set", "m", "champion", "3"], "model 'm' does not exist"),
        (["audit", "--since", "yesterday"], "--since 'yesterday'"),
        (["datasets", "register", "/no/such.csv", "--name", "d"], "no such file"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *[a.replace("{model}", str(files["model"])) for a in args])
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out


def test_doctor_exits_1_on_a_corrupted_artifact(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    assert run(capsys, "register", str(files["model"]), "--name", "churn")[0] == 0
    stored = next((tmp_path / "home" / "artifacts").rglob("model.skops"))
    stored.write_bytes(b"garbage")
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    assert "checksum mismatch" in out


def test_config_masks_secrets(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_S3_SECRET_ACCESS_KEY", "topsecret")
    code, out, _ = run(capsys, "config", "--json")
    values = json.loads(out)
    assert code == 0
    assert values["s3_secret_access_key"] == "********"
    assert "topsecret" not in out


def test_datasets_commands(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, _ = run(capsys, "datasets", "register", str(files["sample"]), "--name", "churn-train")
    assert code == 0
    assert "registered dataset churn-train:1" in out
    code, out, _ = run(capsys, "datasets", "register", str(files["sample"]), "--name", "churn-train")
    assert "nothing new registered" in out
    assert "churn-train" in run(capsys, "datasets", "list")[1]
    code, out, _ = run(capsys, "datasets", "show", "churn-train:1")
    assert code == 0
    assert "income" in out


def test_db_upgrade_and_current(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0
    head = out.strip().rsplit(" ", 1)[-1]
    assert head.isdigit()
    assert f"current: {head}  head: {head}" in run(capsys, "db", "current")[1]


def test_gc_removes_orphans(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan = tmp_path / "home" / "artifacts" / "models" / "churn" / "deadbeef"
    orphan.mkdir(parents=True)
    (orphan / "model.skops").write_bytes(b"x")
    monkeypatch.setenv("PASSERELLE_ORPHAN_GRACE_SECONDS", "0")
    out = run(capsys, "gc", "--dry-run")[1]
    assert "would remove models/churn/deadbeef" in out
    assert orphan.exists()
    run(capsys, "gc")
    assert not orphan.exists()


def test_console_script_runs_as_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PASSERELLE_HOME": str(tmp_path / "h")}
    exe = Path(sys.executable).with_name("passerelle")
    done = subprocess.run([str(exe), "versions", "show", "churn:x"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: invalid model reference")
    assert "Traceback" not in done.stderr
    done = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("passerelle ")
