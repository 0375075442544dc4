"""The metadata store with real processes: migrations, concurrent writers, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from passerelle.client import LocalClient
from passerelle.settings import Settings
from passerelle.store import Store
from passerelle.store.migrate import current_revision, head_revision
from tests.helpers import small_model

ROOT = Path(__file__).resolve().parents[1]


def test_migrations_apply_on_first_use(backend: str) -> None:
    store = Store(backend)
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision(store)
        tables = set(inspect(store.engine).get_table_names())
        assert {"models", "model_versions", "artifact_files", "aliases", "datasets", "audit_log"} <= tables
        # A second open is a no-op, not a failure.
        assert Store(backend).upgrade() == head_revision(store)
    finally:
        store.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.dispose()


def _env(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_HOME=str(home),
        PASSERELLE_DATABASE_URL=database_url,
        PASSERELLE_USER="tester",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


_WORKER = """
import json, sys, time
from pathlib import Path
from passerelle.client import LocalClient
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
with LocalClient() as c:
    numbers = [c.register(Path(sys.argv[1]), "churn").number for _ in range(int(sys.argv[3]))]
print(json.dumps(numbers))
"""


def test_concurrent_registrations_get_distinct_numbers(backend: str, tmp_path: Path) -> None:
    import skops.io

    model, _ = small_model()
    artifact = tmp_path / "model.skops"
    skops.io.dump(model, artifact)
    go = tmp_path / "go"
    env = _env(tmp_path / "home", backend)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(artifact), str(go), "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(1.5)  # let every process import and wait at the barrier
    go.touch()
    numbers: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        numbers += json.loads(out)
    assert sorted(numbers) == list(range(1, 7))
    with LocalClient(Settings(home=tmp_path / "home", database_url=backend)) as c:
        assert c.get_model("churn")[0].versions == 6
        assert c.doctor().ok


_REGISTER = """
import sys
from pathlib import Path
from passerelle.client import LocalClient
with LocalClient() as c:
    c.register(Path(sys.argv[1]), "churn", reason="crash test")
"""


@pytest.mark.parametrize(
    "point",
    ["artifacts.file_written", "register.before_commit", "register.in_transaction", "register.committed"],
)
def test_kill_during_registration_leaves_no_half_version(backend: str, tmp_path: Path, point: str) -> None:
    """kill -9 at each stage: either a whole, loadable version or nothing visible, and orphans are swept."""
    import skops.io

    model, frame = small_model()
    folder = tmp_path / "mlflow-like"
    folder.mkdir()
    skops.io.dump(model, folder / "model.skops")
    artifact = folder / "model.skops"
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=backend, orphan_grace_seconds=0)
    with LocalClient(settings) as c:
        c.register(artifact, "churn")  # version 1 exists before the crash
    proc = subprocess.Popen(
        [sys.executable, "-c", _REGISTER, str(artifact)],
        env=_env(home, backend, PASSERELLE_FAILPOINTS=f"{point}=pause"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"failpoint {point} reached" in line, line + proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    with LocalClient(settings) as c:
        versions = c.get_model("churn")[1]
        expected = 2 if point == "register.committed" else 1
        assert [v.number for v in versions] == list(range(1, expected + 1))
        for v in versions:
            c.load(v.ref).predict(frame)  # every visible version is whole
        orphans = c.gc()
        assert len(orphans) == (0 if point == "register.committed" else 1)
        report = c.doctor()
        assert report.ok, report.problems
        assert report.orphans == []
        registered = c.audit(action="version.register")
        assert len(registered) == expected


def test_json_columns_store_non_finite_numbers_as_null_on_every_database(backend: str) -> None:
    # PostgreSQL refuses NaN in JSON while SQLite would keep it: both get null, so a document a
    # monitor or a run writes on one database is written on the other too.
    from passerelle.store.schema import FeedbackUnmatched, utcnow

    store = Store(backend)
    try:
        label = {"gap": float("nan"), "nested": [1.5, float("inf"), {"x": -float("inf")}], "ok": 2}
        with store.write() as session:
            row = FeedbackUnmatched(
                endpoint="e", label=label, label_at=utcnow(), received_by="test", prediction_id="p"
            )
            session.add(row)
            session.flush()
            rid = row.id
        with store.read() as session:
            stored = session.get(FeedbackUnmatched, rid)
            assert stored is not None
            assert stored.label == {"gap": None, "nested": [1.5, None, {"x": None}], "ok": 2}
    finally:
        store.dispose()
