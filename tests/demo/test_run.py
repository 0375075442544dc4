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
    with LocalClient(Settings(home=tmp_path / "store")) as client:
        model, versions = client.get_model("churn")
        assert len(versions) == 3
        assert set(model.aliases) == {"champion", "challenger"}
        champion = client.get_version("churn@champion")
        assert champion.dataset == "churn-train:1"
        assert champion.metrics["auc"] > 0.75
        assert client.doctor().ok
        endpoint = client.get_endpoint("churn-api").endpoint
        assert [r.weight for r in endpoint.policy.routes] == [90, 10]
        assert len(endpoint.policy.shadows) == 1
        assert len(client.predictions_tail("churn-api", limit=1000)) == 300
