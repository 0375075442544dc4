"""The command line against a remote server: the same commands, no local store at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skops.io

from passerelle.cli import main
from tests.api.conftest import Server
from tests.helpers import small_model


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def remote_env(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a user whose settings name only the server: an empty home, no database."""
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("PASSERELLE_URL", server.url)
    monkeypatch.setenv("PASSERELLE_HOME", str(home))
    monkeypatch.setenv("PASSERELLE_USER", "cli-user")
    return home


def test_the_cli_works_through_the_server(
    capsys: pytest.CaptureFixture[str], remote_env: Path, server: Server, tmp_path: Path
) -> None:
    model, frame = small_model()
    model_path = tmp_path / "model.skops"
    skops.io.dump(model, model_path)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)

    code, out, err = cli(
        capsys,
        "register", str(model_path), "--name", "churn", "--sample", str(sample),
        "--metric", "auc=0.91", "--tag", "team=risk", "--reason", "first",
    )  # fmt: skip
    assert code == 0, err
    assert "registered churn:1 (sklearn" in out
    assert cli(capsys, "alias", "set", "churn", "champion", "1")[0] == 0

    # Real processes, with nothing but the server's URL to go on.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env |= {"PASSERELLE_URL": server.url, "PASSERELLE_HOME": str(remote_env)}
    command = str(Path(sys.executable).parent / "passerelle")
    listed = subprocess.run(
        [command, "models", "list"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "churn" in listed.stdout
    assert "@champion→1" in listed.stdout
    shown = subprocess.run(
        [command, "versions", "show", "churn:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    for fragment in ("churn:1", "auc=0.91", "team=risk", "income", "model.skops"):
        assert fragment in shown.stdout

    code, out, err = cli(capsys, "versions", "show", "nope:1")
    assert code == 1
    assert err.strip() == "error: model 'nope' does not exist"
    code, out, _ = cli(capsys, "audit", "--json")
    entries = json.loads(out)
    assert {e["actor"] for e in entries} == {"cli-user"}
    assert cli(capsys, "doctor")[0] == 0

    assert list(remote_env.iterdir()) == []  # no database, no artifacts, no cache


def test_config_shows_the_server_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSERELLE_URL", "https://alice:pw@passerelle.example.com/")
    monkeypatch.setenv("PASSERELLE_TOKEN", "t0ken")
    code, out, _ = cli(capsys, "config", "--json")
    assert code == 0
    values = json.loads(out)
    assert values["url"] == "https://alice:***@passerelle.example.com"
    assert values["token"] == "********"
    assert "t0ken" not in out
    assert "pw" not in out


def test_an_unreachable_server_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PASSERELLE_URL", url)
    code, _, err = cli(capsys, "models", "list")
    assert code == 1
    assert err.startswith(f"error: cannot reach the passerelle server at {url}: ")
    assert len(err.strip().splitlines()) == 1
