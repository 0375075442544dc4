"""kill -9 with real processes: what was acknowledged is in the log, then in the database, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from passerelle.predictionlog import LogShipper, PredictionLog, read_log
from passerelle.store import Store
from passerelle.store.schema import Prediction, ShadowPrediction
from tests.predictionlog.records import prediction, shadow

ROOT = Path(__file__).resolve().parents[2]

# Many concurrent "requests"; each prints its id only once append() has returned, which is the
# moment the gateway would send the answer.
_APPENDER = """
import asyncio, datetime as dt, sys
from pathlib import Path
from passerelle.predictionlog import PredictionLog, PredictionRecord, ShadowRecord, new_prediction_id

async def main(directory: str, tasks: int) -> None:
    log = PredictionLog(Path(directory), worker="crashy", segment_bytes=32 * 1024)
    out = sys.stdout

    async def request(n: int) -> None:
        i = 0
        while True:
            now = dt.datetime.now(dt.UTC)
            record = PredictionRecord(
                new_prediction_id(), "churn", 1, "churn", 1, now, 0.5,
                {"task": n, "i": i, "plan": "pro"}, {"prediction": i % 2, "proba": {"0": 0.4, "1": 0.6}},
            )
            await log.append([record])
            out.write(record.id + "\\n")
            out.flush()
            if i % 3 == 0:
                log.append_shadow([ShadowRecord(record.id, "churn", "churn", 2, now, 0.7, {"prediction": 1})])
            i += 1

    await asyncio.gather(*(request(n) for n in range(tasks)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

_SHIPPER = """
import sys
from pathlib import Path
from passerelle.predictionlog import LogShipper
from passerelle.store import Store
LogShipper(Path(sys.argv[1]), Store(sys.argv[2]), batch_size=int(sys.argv[3])).ship_once()
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _stored_ids(store: Store) -> list[str]:
    with store.read() as session:
        return list(session.execute(select(Prediction.id)).scalars())


def _shadow_count(store: Store) -> int:
    with store.read() as session:
        return int(session.execute(select(func.count()).select_from(ShadowPrediction)).scalar_one())


def _segment_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.suffix in {".seg", ".done"}]


def test_kill_9_loses_no_acknowledged_prediction(store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(directory), "32"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.decode().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, errors = proc.communicate(timeout=30)
    assert len(acknowledged) >= 400, errors.decode()
    # Lines printed before the kill are acknowledged too; a cut-off last line is not an id.
    acknowledged += [line.decode() for line in rest.split(b"\n") if len(line) == 36]
    assert proc.returncode == -signal.SIGKILL

    logged = [r for r in read_log(directory) if r["t"] == "p"]
    logged_ids = {r["id"] for r in logged}
    assert set(acknowledged) <= logged_ids
    assert len(logged) == len(logged_ids)
    assert len(_segment_files(directory)) > 1  # rotation happened under the load
    shadows = sum(1 for r in read_log(directory) if r["t"] == "s")

    # The writer is dead, so any shipper takes its segments over.
    shipper = LogShipper(directory, store, batch_size=100)
    shipper.ship_once()
    assert shipper.last_error is None
    stored = _stored_ids(store)
    assert len(stored) == len(set(stored)) == len(logged_ids)
    assert set(stored) == logged_ids
    assert _shadow_count(store) == shadows
    assert _segment_files(directory) == []


def test_kill_9_between_insert_and_position_reships_without_duplicates(
    store: Store, backend: str, tmp_path: Path
) -> None:
    directory = tmp_path / "log"
    with PredictionLog(directory, worker="w0") as log:
        records = [prediction(i) for i in range(250)]
        log.append_sync(records)
        log.append_shadow([shadow(r) for r in records[:40]])
    proc = subprocess.Popen(
        [sys.executable, "-c", _SHIPPER, str(directory), backend, "100"],
        env=_env(PASSERELLE_FAILPOINTS="predictionlog.shipped_batch=pause"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "failpoint predictionlog.shipped_batch reached" in line, line + proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()

    # The first batch is committed, but its position was never saved.
    assert len(_stored_ids(store)) == 100
    assert not (directory / "w0-00000001.pos").exists()

    LogShipper(directory, store, batch_size=100).ship_once()
    stored = _stored_ids(store)
    assert len(stored) == len(set(stored)) == 250
    assert set(stored) == {r.id for r in records}
    assert _shadow_count(store) == 40
    assert _segment_files(directory) == []
