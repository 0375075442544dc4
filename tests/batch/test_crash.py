"""A `passerelle score` killed midway leaves no output: it is whole or absent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from passerelle.batch import list_runs
from tests.batch.conftest import Churn


def test_kill_9_after_some_chunks_leaves_no_output(churn: Churn, tmp_path: Path) -> None:
    out = tmp_path / "scored.parquet"
    env = {
        **os.environ,
        "PASSERELLE_FAILPOINTS": "batch.chunk_written=pause",
        "PASSERELLE_HOME": str(churn.client.settings.home),
    }
    command = [
        str(Path(sys.executable).with_name("passerelle")),
        "score",
        "churn:1",
        "--input",
        str(churn.parquet),
        "--output",
        str(out),
        "--batch-rows",
        "300",
        "--quiet",
    ]
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = child.stderr.readline()
            if "failpoint batch.chunk_written reached" in line or not line:
                break
        assert "failpoint batch.chunk_written reached" in line, line
        # The first chunk is written, to a temporary file next to the output.
        parts = list(tmp_path.glob(".scored.parquet.*.part"))
        assert len(parts) == 1
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()
    (record,) = list_runs(churn.client.ctx)
    assert record.status == "running"
    assert record.finished_at is None

    # A new run scores the file in full; the dead run's temporary file is not in its way.
    info = churn.client.score("churn:1", churn.parquet, out)
    assert info.status == "succeeded"
    assert len(pd.read_parquet(out)) == 1_200
