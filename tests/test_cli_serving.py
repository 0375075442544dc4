"""The serving commands: deploy, weights, promote, rollback, endpoints, predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from passerelle.client import LocalClient
from passerelle.settings import Settings
from tests.helpers import small_model
from tests.test_cli import run


@pytest.fixture
def store(tmp_path: Path) -> LocalClient:
    client = LocalClient(Settings(home=tmp_path / "home"))
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    client.register(small_model(seed=1)[0], "churn", sample=frame)
    client.register(small_model(seed=2)[0], "churn", sample=frame)
    client.set_alias("churn", "champion", 1)
    return client


def test_deploy_promote_rollback_show(capsys: pytest.CaptureFixture[str], store: LocalClient) -> None:
    code, out, err = run(capsys, "deploy", "churn-api", "--model", "churn@champion", "--reason", "launch")
    assert code == 0, err
    assert "revision 1 (deploy) → churn:1=100%" in out
    code, out, err = run(
        capsys, "deploy", "churn-api", "--route", "churn:1=90", "--route", "churn:2=10",
        "--shadow", "churn:3=50", "--sticky-key", "customer_id",
    )  # fmt: skip
    assert code == 0, err
    assert "churn:1=90%, churn:2=10%" in out
    assert "shadow churn:3 on 50% of traffic" in out
    code, out, _ = run(
        capsys, "endpoints", "weights", "churn-api", "churn:1=50", "churn:2=50", "--reason", "ramp"
    )
    assert "churn:1=50%, churn:2=50%" in out
    code, out, _ = run(capsys, "promote", "churn-api", "churn:2", "--reason", "better")
    assert code == 0
    assert "now @champion" in out
    assert store.get_version("churn@champion").number == 2
    code, out, _ = run(capsys, "rollback", "churn-api", "--to", "1")
    assert "churn:1=100%" in out
    code, out, _ = run(capsys, "endpoints", "list")
    assert "churn-api" in out
    code, out, _ = run(capsys, "endpoints", "show", "churn-api", "--json")
    detail = json.loads(out)
    assert [r["kind"] for r in detail["revisions"]] == ["rollback", "promote", "weights", "update", "deploy"]
    assert detail["revisions"][2]["reason"] == "ramp"
    code, out, _ = run(capsys, "endpoints", "show", "churn-api")
    assert "revisions" in out
    assert "no traffic in the last 5 minutes" in out


def test_canary_deploy(capsys: pytest.CaptureFixture[str], store: LocalClient) -> None:
    code, out, err = run(
        capsys, "deploy", "churn-api", "--model", "churn:1", "--canary", "churn:2",
        "--steps", "10,50,100", "--step-interval", "5m", "--max-p99-ms", "50",
    )  # fmt: skip
    assert code == 0, err
    assert "churn:1=90%, churn:2=10%" in out
    assert "canary churn:2: steps [10, 50, 100], 300s each" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy", "churn-api"], "give --model REF"),
        (["deploy", "churn-api", "--route", "churn:1=90", "--route", "churn:2=20"], "sum to 100, got 110"),
        (["deploy", "churn-api", "--model", "churn:9"], "churn:9 does not exist"),
        (
            ["deploy", "churn-api", "--model", "churn:1", "--canary", "churn:2", "--steps", "5,50"],
            "must be 100",
        ),
        (
            ["deploy", "churn-api", "--model", "churn:1", "--canary", "churn:2", "--step-interval", "x"],
            "step-interval",
        ),
        (["deploy", "bad name", "--model", "churn:1"], "invalid endpoint name"),
        (["promote", "ghost", "churn:1"], "endpoint 'ghost' does not exist"),
        (["rollback", "ghost"], "endpoint 'ghost' does not exist"),
        (["endpoints", "show", "ghost"], "endpoint 'ghost' does not exist"),
        (["predictions", "tail", "ghost"], "endpoint 'ghost' does not exist"),
    ],
)
def test_serving_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], store: LocalClient, args: list[str], message: str
) -> None:
    code, _, err = run(capsys, *args)
    assert code == 1
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_rollback_without_history(capsys: pytest.CaptureFixture[str], store: LocalClient) -> None:
    run(capsys, "deploy", "churn-api", "--model", "churn:1")
    code, _, err = run(capsys, "rollback", "churn-api")
    assert code == 1
    assert "no earlier revision" in err


def test_predictions_tail_and_export(
    capsys: pytest.CaptureFixture[str], store: LocalClient, tmp_path: Path
) -> None:
    import asyncio

    from passerelle.serving.app import create_serving_app

    run(capsys, "deploy", "churn-api", "--model", "churn:1")
    app = create_serving_app(store.settings, worker="cli-test", background=False)
    gateway = app.state.gateway
    frame = small_model()[1].head(4)

    async def answer() -> list[str]:
        await gateway.start()
        try:
            columns = {c: frame[c].tolist() for c in frame.columns}
            result = await gateway.predict("churn-api", columns, len(frame))
            return result.prediction_ids
        finally:
            await gateway.stop()

    ids = asyncio.run(answer())
    gateway.shipper.ship_once()
    code, out, _ = run(capsys, "predictions", "tail", "churn-api", "--json")
    assert code == 0
    assert {r["id"] for r in json.loads(out)} == set(ids)
    out_file = tmp_path / "export.parquet"
    code, out, _ = run(capsys, "predictions", "export", "churn-api", "--output", str(out_file))
    assert code == 0, out
    assert "exported 4 prediction(s)" in out
    exported = pd.read_parquet(out_file)
    assert set(exported["id"]) == set(ids)
    code, _, err = run(capsys, "predictions", "export", "churn-api", "--output", str(out_file))
    assert code == 1
    assert "--overwrite" in err
    code, out, _ = run(capsys, "endpoints", "compare", "churn-api")
    assert code == 0
    assert "no shadow answers" in out
