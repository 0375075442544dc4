"""`passerelle demo` end to end, as `make demo` runs it, in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from passerelle.client import LocalClient
from passerelle.settings import Settings


def test_demo_registers_serves_and_logs(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("passerelle")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    done = subprocess.run(
        [str(exe), "demo", "--fast", "--home", str(tmp_path / "store")],
        cwd=tmp_path,
        env={**env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "churn@champion → churn:" in done.stdout
    assert "scoring 5 customers" in done.stdout
    assert "traffic split seen by the clients" in done.stdout
    assert "requests compared, agreement" in done.stdout
    # The monitoring story: drift seen, alerts fired, a report written, the loop closed by retraining.
    assert "the monitor judged 8 windows" in done.stdout
    assert "data-drift on churn:" in done.stdout
    assert (tmp_path / "store" / "demo" / "report.html").stat().st_size > 10_000
    assert "the data-drift alert queued run retrain-churn#1: succeeded" in done.stdout
    assert "promoted churn:4 to champion" in done.stdout
    with LocalClient(Settings(home=tmp_path / "store")) as client:
        model, versions = client.get_model("churn")
        assert len(versions) == 4  # three trained by hand, one by the retraining pipeline
        assert set(model.aliases) == {"champion", "challenger"}
        champion = client.get_version("churn@champion")
        assert champion.number == 4
        assert champion.dataset == "churn-fresh:1"
        assert champion.metrics["holdout.roc_auc"] > champion.metrics["champion.roc_auc"] + 0.005
        assert client.doctor().ok
        endpoint = client.get_endpoint("churn-api").endpoint
        assert [(r.ref, r.weight) for r in endpoint.policy.routes] == [("churn:4", 100)]
        kinds = [r.kind for r in client.get_endpoint("churn-api").revisions]
        assert "promote" in kinds
