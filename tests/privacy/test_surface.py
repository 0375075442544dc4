"""Erasure and retention over HTTP (the remote client) and on the command line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from passerelle.api import privacy
from passerelle.api.app import create_app
from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.predictionlog import ERASE_ACTION, hash_key, redaction_secret
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from tests.api.conftest import serve, settings_for
from tests.privacy.conftest import audit_rows, days_ago, endpoint, logged, stored
from tests.test_cli import run


def test_the_remote_client_erases_and_sweeps_like_the_local_one(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "server", prediction_retention_rows=1)
    with LocalClient(settings) as local:
        endpoint(local.ctx, "churn-api", key_column="customer_id")
        endpoint(local.ctx, "plain-api")
        mine = logged(local.ctx, "churn-api", days_ago(1), key="C000042", label=1)
        theirs = logged(local.ctx, "churn-api", days_ago(2), key="C000007")
        with (
            serve(create_app(settings, routers=[privacy.router])) as url,
            RemoteClient(Settings(home=tmp_path / "client", url=url)) as remote,
        ):
            with pytest.raises(NotFoundError, match=r"^endpoint 'ghost' does not exist and has no logged"):
                remote.erase_predictions("ghost", "C000042")
            with pytest.raises(InvalidInputError, match="endpoint 'plain-api' has no key column"):
                remote.erase_predictions("plain-api", "C000042")
            erased = remote.erase_predictions("churn-api", "C000042", reason="request #7")
            assert (erased.endpoint, erased.predictions, erased.shadows, erased.feedback) == (
                "churn-api",
                1,
                1,
                1,
            )
            assert remote.apply_retention(dry_run=True) == {"churn-api": 0, "plain-api": 0}
            logged(local.ctx, "churn-api", days_ago(0.5))
            assert remote.apply_retention() == {"churn-api": 1, "plain-api": 0}
        assert mine not in stored(local.ctx)["predictions"]
        assert theirs not in stored(local.ctx)["predictions"], "beyond the one row the server keeps"
        (entry,) = audit_rows(local.ctx, ERASE_ACTION)
        assert entry.actor == "tester"
        assert entry.after is not None
        assert entry.after["key_hash"] == erased.key_hash


def test_cli_erase_and_retention(
    capsys: pytest.CaptureFixture[str], registered: tuple[Settings, LocalClient, pd.DataFrame]
) -> None:
    _, client, _ = registered
    code, out, err = run(
        capsys, "deploy", "churn-api", "--model", "churn:1", "--key-column", "customer_id",
        "--redact", "email", "--redact", "customer_id", "--retention-days", "30",
    )  # fmt: skip
    assert code == 0, err
    assert "not logged: email, customer_id" in out
    assert "logged predictions kept: 30 days" in out
    code, _, err = run(capsys, "deploy", "churn-api", "--model", "churn:1", "--redact", "a", "--no-redact")
    assert code == 1
    assert err.strip() == "error: give either --redact or --no-redact, not both"
    endpoint(client.ctx, "plain-api")
    old = logged(client.ctx, "churn-api", days_ago(40))
    hashed = hash_key(redaction_secret(client.settings), "C000042")
    logged(client.ctx, "churn-api", days_ago(1), key=hashed, label=0)

    code, _, err = run(capsys, "predictions", "erase", "ghost", "--key", "C000042")
    assert code == 1
    assert err.strip() == "error: endpoint 'ghost' does not exist and has no logged predictions"
    code, _, err = run(capsys, "predictions", "erase", "plain-api", "--key", "C000042")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "endpoint 'plain-api' has no key column (deploy --key-column), so name it: COLUMN=VALUE" in err
    code, _, err = run(capsys, "predictions", "erase", "churn-api", "--key", "account=C000042")
    assert code == 2
    assert "keyed by the column 'customer_id', not 'account'" in err
    # The key column is redacted: the key in clear still finds its hashed rows.
    code, out, err = run(
        capsys, "predictions", "erase", "churn-api", "--key", "C000042", "--reason", "GDPR art. 17"
    )
    assert code == 0, err
    assert out.startswith("churn-api: erased 1 prediction(s), 1 shadow answer(s), 1 label(s)")
    assert out.strip().endswith(hashed)

    code, out, err = run(capsys, "predictions", "retention", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == ["churn-api: would delete 1 prediction(s)"]
    assert old in stored(client.ctx)["predictions"]
    code, out, err = run(capsys, "predictions", "retention", "--json")
    assert code == 0, err
    assert '"churn-api": 1' in out
    assert old not in stored(client.ctx)["predictions"]
