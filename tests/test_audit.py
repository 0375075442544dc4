"""The audit log: a hash chain that doctor verifies, its listing from the CLI and the API."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from passerelle import audit
from passerelle.api.app import create_app
from passerelle.cli import main
from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from passerelle.store import Store
from passerelle.store.migrate import alembic_config, current_revision, head_revision
from passerelle.store.schema import AuditRecord, UTCDateTime
from tests.api.conftest import serve, settings_for
from tests.helpers import small_model

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def store(backend: str) -> Iterator[Store]:
    opened = Store(backend)
    try:
        yield opened
    finally:
        opened.dispose()


def write(store: Store, count: int, *, actor: str = "tester", action: str = "test.write") -> None:
    for i in range(count):
        with store.write() as session:
            audit.record(session, actor=actor, action=action, target=f"thing:{i}", after={"i": i})


def sql(store: Store, statement: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def ids(store: Store) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT id FROM audit_log ORDER BY id")).scalars())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_hash_covers_a_fixed_canonical_form() -> None:
    fields: dict[str, Any] = {
        "id": 7,
        "at": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        "actor": "alice",
        "action": "alias.set",
        "target": "churn@champion",
        "before": {"version": 1},
        "after": {"version": 2, "note": "é"},
        "reason": "launch",
        "prev_hash": audit.GENESIS,
    }
    expected = json.dumps(
        {**fields, "at": "2026-01-02T03:04:05.000006Z"}, sort_keys=True, separators=(",", ":")
    ).encode()

    assert audit.canonical(**fields) == expected
    # Pinned: a change of the canonical form would make every stored record look tampered with.
    assert audit.record_hash(**fields) == "3a34d287dbf99b998c52c3c250041a717d06d8eb3933bae6c4df88cb95a5a4d7"
    assert audit.record_hash(**fields) == hashlib.sha256(expected).hexdigest()


def test_the_chain_holds_after_many_operations(any_client: LocalClient) -> None:
    model, _ = small_model()
    any_client.register(model, "churn", reason="first")
    any_client.register(model, "churn")
    any_client.set_alias("churn", "champion", 1, reason="launch")
    any_client.set_tags("churn:2", {"stage": "review"}, reason="résumé ✓ 検証")
    any_client.set_archived("churn:2", True)
    any_client.set_archived("churn:2", False)
    any_client.remove_alias("churn", "champion")
    # Values JSON gives back differently (tuples, integer keys, floats) still verify.
    unusual: dict[Any, Any] = {"pair": (1, 2), 3: "three", "ratio": 0.1 + 0.2, "nested": {"none": None}}
    with any_client.ctx.store.write() as session:
        audit.record(session, actor="bob", action="test.values", target="x", before=unusual)

    entries = any_client.audit(limit=1000)
    chain = audit.verify_chain(any_client.ctx.store)

    assert chain == audit.ChainReport(ok=True, checked=len(entries))
    assert len(entries) == 9
    assert entries[-1].prev_hash == audit.GENESIS
    for newer, older in itertools.pairwise(entries):
        assert newer.prev_hash == older.hash
        assert newer.id > older.id
    assert entries[0].before == {"pair": [1, 2], "3": "three", "ratio": 0.1 + 0.2, "nested": {"none": None}}
    report = any_client.doctor()
    assert report.ok
    assert report.audit_chain.checked == 9
    assert any_client.doctor(audit_anchor=f"{entries[3].id}:{entries[3].hash}").ok


def test_a_record_holding_a_non_finite_number_still_verifies(store: Store) -> None:
    # The database keeps NaN as null; the hash must cover what it keeps.
    with store.write() as session:
        audit.record(session, actor="a", action="test.nan", target="x", after={"gap": float("nan")})
    assert audit.list_entries(store)[0].after == {"gap": None}
    assert audit.verify_chain(store) == audit.ChainReport(ok=True, checked=1)


def test_a_savepoint_rolled_back_takes_its_records_out_of_the_chain(store: Store) -> None:
    with store.write() as session:
        audit.record(session, actor="a", action="test.kept", target="x")
        savepoint = session.begin_nested()
        audit.record(session, actor="a", action="test.undone", target="x")
        savepoint.rollback()  # as when an alert's pipeline trigger fails
        audit.record(session, actor="a", action="test.kept", target="y")
        audit.record(session, actor="a", action="test.kept", target="z")

    entries = audit.list_entries(store)
    assert [e.target for e in entries] == ["z", "y", "x"]
    assert entries[1].prev_hash == entries[2].hash
    assert audit.verify_chain(store) == audit.ChainReport(ok=True, checked=3)


def test_concurrent_threads_keep_one_chain(store: Store) -> None:
    def work(n: int) -> None:
        for i in range(12):
            with store.write() as session:
                audit.record(session, actor=f"t{n}", action="test.write", target=f"t{n}:{i}")
                if i % 3 == 0:
                    audit.record(session, actor=f"t{n}", action="test.second", target=f"t{n}:{i}")

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(work, n) for n in range(6)]:
            future.result()

    entries = audit.list_entries(store, limit=1000)
    assert len(entries) == 6 * 16
    assert len({e.prev_hash for e in entries}) == len(entries)  # no two records chained on one
    assert audit.verify_chain(store, batch=7) == audit.ChainReport(ok=True, checked=len(entries))


_WORKER = """
import sys, time
from pathlib import Path
from passerelle import audit
from passerelle.store import Store
store = Store(sys.argv[1])
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
for i in range(int(sys.argv[3])):
    with store.write() as session:
        audit.record(session, actor=sys.argv[4], action="test.write", target=f"p:{i}")
        audit.record(session, actor=sys.argv[4], action="test.second", target=f"p:{i}")
store.dispose()
"""


def test_concurrent_processes_keep_one_chain(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL's advisory lock across processes (SQLite's writers queue on one file lock,
    which the threads above already exercise)."""
    store = Store(postgres_url)
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, postgres_url, str(go), "30", f"p{n}"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err

        entries = audit.list_entries(store, limit=1000)
        assert len(entries) == 2 * 30 * 2
        assert {e.actor for e in entries} == {"p0", "p1"}
        assert audit.verify_chain(store) == audit.ChainReport(ok=True, checked=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        store.dispose()


def test_an_edited_record_fails_doctor_naming_it(
    store: Store, backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", backend)
    write(store, 5)
    third = ids(store)[2]
    assert run(capsys, "doctor")[0] == 0

    sql(store, "UPDATE audit_log SET reason = 'nothing happened' WHERE id = :id", id=third)

    report = audit.verify_chain(store)
    assert (report.ok, report.checked, report.first_broken_id) == (False, 2, third)
    assert report.problem == (
        f"record {third} was changed after it was written: its content does not match its hash"
    )
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    assert f"audit log: broken at record {third}" in out
    assert f"problem: audit chain: record {third} was changed after it was written" in out
    code, out, _ = run(capsys, "doctor", "--json")
    assert code == 1
    assert json.loads(out)["audit_chain"]["first_broken_id"] == third


def test_a_deleted_record_is_detected(store: Store) -> None:
    write(store, 5)
    first, second, third, *_ = ids(store)

    sql(store, "DELETE FROM audit_log WHERE id = :id", id=second)
    report = audit.verify_chain(store)
    assert (report.ok, report.first_broken_id) == (False, third)
    assert report.problem == (
        f"record {third} does not follow record {first}: a record between them was deleted, "
        "inserted or renumbered"
    )

    sql(store, "DELETE FROM audit_log WHERE id = :id", id=first)
    report = audit.verify_chain(store)
    assert report.first_broken_id == third
    assert report.problem == (
        f"record {third} is not the first record of the log: records before it were deleted"
    )


@pytest.mark.parametrize("forged_hash", [None, "f" * 64], ids=["no-hash", "made-up-hash"])
def test_a_forged_record_is_detected(
    store: Store,
    backend: str,
    forged_hash: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", backend)
    write(store, 3)
    head = audit.list_entries(store, limit=1)[0]
    with store.engine.begin() as conn:
        conn.execute(
            sa.insert(AuditRecord).values(
                at=head.at,
                actor="mallory",
                action="alias.set",
                target="churn@champion",
                reason="",
                prev_hash=head.hash,
                hash=forged_hash,
            )
        )
    forged = ids(store)[-1]

    report = audit.verify_chain(store)

    assert (report.ok, report.checked, report.first_broken_id) == (False, 3, forged)
    assert report.problem == (
        f"record {forged} has no hash: it was written behind passerelle's back"
        if forged_hash is None
        else f"record {forged} was changed after it was written: its content does not match its hash"
    )
    code, out, err = run(capsys, "audit", "head")
    if forged_hash is None:
        assert (code, out) == (1, "")
        assert f"the newest audit record, {forged}, has no hash" in err
    else:
        assert (code, out.strip()) == (0, f"{forged}:{forged_hash}")
    # Writing goes on; the forged record stays reported.
    write(store, 1)
    assert audit.verify_chain(store).first_broken_id == forged


def test_renumbered_records_are_detected(store: Store) -> None:
    write(store, 4)
    first, second, third, _ = ids(store)
    sql(store, "UPDATE audit_log SET id = :tmp WHERE id = :a", tmp=first + 1000, a=second)
    sql(store, "UPDATE audit_log SET id = :a WHERE id = :b", a=second, b=third)
    sql(store, "UPDATE audit_log SET id = :b WHERE id = :tmp", b=third, tmp=first + 1000)

    report = audit.verify_chain(store)

    assert (report.ok, report.first_broken_id) == (False, second)


def test_a_rewritten_chain_passes_alone_and_fails_against_its_anchor(
    store: Store, backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", backend)
    write(store, 4)
    code, out, _ = run(capsys, "audit", "head")
    assert code == 0
    anchor = out.strip()
    head = audit.list_entries(store, limit=1)[0]
    assert anchor == f"{head.id}:{head.hash}"
    code, out, _ = run(capsys, "audit", "head", "--json")
    assert json.loads(out) == {"id": head.id, "at": head.at.isoformat(), "hash": head.hash}
    write(store, 2)
    code, out, _ = run(capsys, "doctor", "--audit-anchor", anchor)
    assert code == 0
    assert f"audit log: 6 record(s) chained intact, anchor {head.id} confirmed" in out

    # Someone with the database's credentials edits a record and recomputes every hash after it.
    sql(store, "UPDATE audit_log SET reason = 'nothing to see' WHERE id = :id", id=ids(store)[1])
    with store.write() as session:
        rows = session.scalars(sa.select(AuditRecord).order_by(AuditRecord.id)).all()
        prev = audit.GENESIS
        for row in rows:
            row.prev_hash = prev
            row.hash = prev = audit.record_hash(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                target=row.target,
                before=row.before,
                after=row.after,
                reason=row.reason,
                prev_hash=prev,
            )

    assert audit.verify_chain(store).ok  # what no check inside the database can see
    report = audit.verify_chain(store, anchor=anchor)
    assert (report.ok, report.first_broken_id) == (False, head.id)
    code, out, _ = run(capsys, "doctor", "--audit-anchor", anchor)
    assert code == 1
    assert f"record {head.id} no longer carries the anchored hash" in out

    sql(store, "DELETE FROM audit_log WHERE id >= :id", id=head.id)
    report = audit.verify_chain(store, anchor=anchor)
    assert report.problem == f"the anchored record {head.id} is missing: the log was truncated or rewritten"
    with pytest.raises(InvalidInputError, match="expected ID:HASH"):
        audit.verify_chain(store, anchor="12:nothex")


def test_the_migration_chains_the_records_written_before_it(backend: str) -> None:
    store = Store(backend, migrate=False)
    try:
        cfg = alembic_config(store)
        with store.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
            conn.commit()
            assert current_revision(conn) == "0005"
        log = sa.table(
            "audit_log",
            sa.column("at", UTCDateTime()),
            sa.column("actor", sa.String()),
            sa.column("action", sa.String()),
            sa.column("target", sa.String()),
            sa.column("before", sa.JSON()),
            sa.column("after", sa.JSON()),
            sa.column("reason", sa.Text()),
        )
        rows = [
            {
                "at": NOW - dt.timedelta(minutes=3000 - i, microseconds=i),
                "actor": "alice" if i % 2 else "bob",
                "action": "version.tags",
                "target": f"churn:{i}",
                "before": {"tags": {"n": i}} if i % 3 else None,
                "after": {"tags": {"n": i + 1, "é": [1.5, None, True]}},
                "reason": "pourquoi pas ✓" if i % 5 else "",
            }
            for i in range(2345)
        ]
        with store.engine.begin() as conn:
            conn.execute(sa.insert(log), rows)

        assert store.upgrade() == head_revision(store)

        report = audit.verify_chain(store)
        assert report == audit.ChainReport(ok=True, checked=2345)
        oldest = audit.list_entries(store, limit=2345)[-1]
        assert (oldest.prev_hash, oldest.reason, oldest.before) == (audit.GENESIS, "", None)
        write(store, 2)
        assert audit.verify_chain(store) == audit.ChainReport(ok=True, checked=2347)
    finally:
        store.dispose()


@pytest.fixture
def dated(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Records 10 days, 3 days and 1 hour old, by two actors."""
    for age, actor, action, target in (
        (dt.timedelta(days=10), "alice", "alias.set", "churn@champion"),
        (dt.timedelta(days=3), "bob", "version.tags", "churn:2"),
        (dt.timedelta(hours=1), "alice", "version.tags", "fraud:1"),
    ):
        with monkeypatch.context() as patch, store.write() as session:
            patch.setattr(audit, "utcnow", lambda age=age: dt.datetime.now(dt.UTC) - age)
            audit.record(session, actor=actor, action=action, target=target, reason=f"{actor} did it")
    return store


def test_cli_audit_since_and_filters(
    dated: Store, backend: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", backend)

    def targets(*args: str) -> list[str]:
        code, out, err = run(capsys, "audit", *args, "--json")
        assert code == 0, err
        return [e["target"] for e in json.loads(out)]

    assert targets() == ["fraud:1", "churn:2", "churn@champion"]
    assert targets("--since", "7d") == ["fraud:1", "churn:2"]
    assert targets("--since", "2h") == ["fraud:1"]
    assert targets("--since", (NOW - dt.timedelta(days=5)).strftime("%Y-%m-%d %H:%M")) == [
        "fraud:1",
        "churn:2",
    ]
    assert targets("--actor", "alice") == ["fraud:1", "churn@champion"]
    assert targets("--since", "7d", "--actor", "alice") == ["fraud:1"]
    assert targets("--action", "version.tags", "--limit", "1") == ["fraud:1"]
    assert targets("--target", "churn") == ["churn:2"]
    code, out, _ = run(capsys, "audit", "--since", "30d")
    assert code == 0
    assert "bob did it" in out

    for args, message in (
        (
            ["--since", "yesterday"],
            "--since 'yesterday': use a duration such as 7d, 12h or 30m, or an ISO date",
        ),
        (["tail"], "unknown audit view 'tail': the only one is head"),
        (["head", "--actor", "bob"], "audit head takes no filter"),
    ):
        code, out, err = run(capsys, "audit", *args)
        assert code == 1
        assert message in err
        assert len(err.strip().splitlines()) == 1, err


def test_audit_head_of_an_empty_log(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "head")
    assert (code, out) == (0, "")
    assert "the audit log is empty" in err


def test_api_filters_and_doctor(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "server")
    store = Store(settings.effective_database_url)
    try:
        with serve(create_app(settings)) as url:
            for actor, action in (("alice", "alias.set"), ("bob", "version.tags"), ("alice", "version.tags")):
                with store.write() as session:
                    audit.record(session, actor=actor, action=action, target="churn:1")
            with (
                httpx.Client(base_url=url) as http,
                RemoteClient(Settings(home=tmp_path / "client", url=url)) as remote,
            ):
                body = http.get("/api/v1/audit", params={"since": "7d", "actor": "alice"}).json()
                assert [(e["actor"], e["action"]) for e in body] == [
                    ("alice", "version.tags"),
                    ("alice", "alias.set"),
                ]
                [bob] = http.get("/api/v1/audit", params={"actor": "bob", "limit": 1}).json()
                assert body[0]["prev_hash"] == bob["hash"]
                future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
                assert http.get("/api/v1/audit", params={"since": future}).json() == []
                bad = http.get("/api/v1/audit", params={"since": "yesterday"})
                assert bad.status_code == 422
                assert bad.json()["error"]["message"].startswith(
                    "query parameter 'since' 'yesterday': use a duration"
                )

                assert [e.action for e in remote.audit(actor="bob", since=NOW - dt.timedelta(days=1))] == [
                    "version.tags"
                ]
                assert remote.audit(limit=1)[0] == audit.list_entries(store, limit=1)[0]
                report = remote.doctor()
                assert report.ok
                assert report.audit_chain == audit.ChainReport(ok=True, checked=3)

                sql(store, "UPDATE audit_log SET actor = 'carol' WHERE id = :id", id=ids(store)[0])
                report = remote.doctor()
                assert not report.ok
                assert report.audit_chain.first_broken_id == ids(store)[0]
                assert report.problems == [
                    f"audit chain: record {ids(store)[0]} was changed after it was written: "
                    "its content does not match its hash"
                ]
                anchorless = http.get("/api/v1/doctor", params={"audit_anchor": "nope"})
                assert anchorless.status_code == 422
                assert anchorless.json()["error"]["message"] == (
                    "audit anchor 'nope': expected ID:HASH as printed by `passerelle audit head`"
                )
    finally:
        store.dispose()
