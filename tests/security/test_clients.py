"""The remote client and the command line against a server that requires tokens; tokens on the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from passerelle.auth import AuthenticationError, PermissionDeniedError
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from tests.security.conftest import Secured
from tests.test_cli import run


def test_the_remote_client_sends_its_token(secured: Secured, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "client", url=secured.url, token=secured.tokens["viewer"])
    with RemoteClient(settings) as client:
        assert [m.name for m in client.list_models()] == ["churn"]
        with pytest.raises(PermissionDeniedError, match="held by the role admin"):
            client.list_tokens()


def test_the_remote_client_without_a_token_gets_one_readable_line(secured: Secured, tmp_path: Path) -> None:
    client = RemoteClient(Settings(home=tmp_path / "client", url=secured.url))
    with client, pytest.raises(AuthenticationError) as caught:
        client.list_models()
    message = str(caught.value)
    assert message.startswith("authentication required: send an API token as 'Authorization: Bearer")
    assert "\n" not in message


def test_tokens_through_the_remote_client(secured: Secured, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "client", url=secured.url, token=secured.tokens["admin"])
    with RemoteClient(settings) as admin:
        created = admin.create_token(
            "remote-made", "predictor", expires_in=dt.timedelta(days=1), endpoints=["churn-api"], reason="r"
        )
        assert created.token.endpoints == ["churn-api"]
        assert created.token.created_by == "token:admin"
        assert created.token.expires_at is not None
        listed = {t.name: t for t in admin.list_tokens()}
        assert listed["remote-made"].status == "active"
        assert listed["remote-made"].prefix == created.secret[:12]
        revoked = admin.revoke_token("remote-made", reason="done")
        assert (revoked.status, revoked.revoked_by) == ("revoked", "token:admin")


def test_the_cli_through_a_server_with_and_without_a_token(
    secured: Secured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PASSERELLE_URL", secured.url)
    code, out, err = run(capsys, "models", "list")
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: authentication required")
    monkeypatch.setenv("PASSERELLE_TOKEN", secured.tokens["admin"])
    code, out, err = run(capsys, "tokens", "create", "--name", "cli-remote", "--role", "viewer", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["token"]["created_by"] == "token:admin"
    monkeypatch.setenv("PASSERELLE_TOKEN", created["secret"])
    code, out, err = run(capsys, "models", "list", "--json")
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)] == ["churn"]


def test_tokens_on_the_local_store_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "tokens",
        "create",
        "--name",
        "ci-bot",
        "--role",
        "operator",
        "--expires",
        "90d",
        "--reason",
        "ci",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("created token ci-bot (role operator), valid until ")
    secret = lines[1]
    assert secret.startswith("psl_")
    assert len(secret) == 47
    assert "not shown again" in err
    code, out, _ = run(capsys, "tokens", "list", "--json")
    (listed,) = json.loads(out)
    assert (listed["name"], listed["status"], listed["created_by"]) == ("ci-bot", "active", "tester")
    assert secret not in out
    assert run(capsys, "tokens", "revoke", "ci-bot", "--reason", "rotated")[0] == 0
    code, out, _ = run(capsys, "tokens", "list", "--json")
    (listed,) = json.loads(out)
    assert (listed["status"], listed["revoked_by"]) == ("revoked", "tester")
    assert run(capsys, "tokens", "list")[0] == 0
    code, out, _ = run(capsys, "audit", "--json")
    actions = [(e["action"], e["actor"]) for e in json.loads(out)]
    assert actions[:2] == [("token.revoke", "tester"), ("token.create", "tester")]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--role", "root"],
            "role 'root' does not exist: choose viewer, predictor, scientist, operator or admin",
        ),
        (["--role", "viewer", "--expires", "soon"], "--expires 'soon': use a number with ms, s, m, h or d"),
    ],
)
def test_unusable_options_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    code, _, err = run(capsys, "tokens", "create", "--name", "x", *args)
    assert code == 2
    assert said in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
