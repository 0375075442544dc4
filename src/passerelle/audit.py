"""Every state change is recorded: who, when, what, before and after, and why.

The records form a hash chain: each one carries the sha256 of its own content and of the
previous record's hash, so that an edit, a deletion or an insertion made in the database
behind passerelle's back shows in :func:`verify_chain` (``passerelle doctor``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from passerelle.errors import InvalidInputError
from passerelle.store import Store, json_dumps
from passerelle.store.schema import AuditRecord, utcnow

#: ``prev_hash`` of the first record of a log.
GENESIS = "0" * 64
#: Records read per query when verifying, so that memory does not grow with the log.
VERIFY_BATCH = 1000
# Any constant works: it only has to be the same for every process sharing a database
# and differ from the other advisory locks passerelle takes (the migration lock).
_PG_AUDIT_LOCK = 0x6175_6469
_HEAD = "passerelle.audit.head"
_ANCHOR = re.compile(r"^(?P<id>\d+):(?P<hash>[0-9a-f]{64})$")


def current_user(configured: str | None = None) -> str:
    """The identity recorded for local use: the configured user, else the OS user."""
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str
    #: the hash of the record before this one (:data:`GENESIS` for the first record)
    prev_hash: str | None = None
    #: sha256 of this record's content and ``prev_hash``; the newest one anchors the whole log
    hash: str | None = None


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found. ``checked`` counts the records found intact, in id order,
    before the first broken one (all of them when ``ok``)."""

    ok: bool
    checked: int
    first_broken_id: int | None = None
    problem: str | None = None


def canonical(
    *,
    id: int,
    at: dt.datetime,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    reason: str,
    prev_hash: str | None,
) -> bytes:
    """The bytes a record's hash covers: JSON with sorted keys and no spaces, non-ASCII escaped,
    the time in UTC with microseconds.

    Changing this function changes every hash: records written before would all look
    tampered with. The 0006 migration keeps its own frozen copy for the same reason.
    """
    document = {
        "id": id,
        "at": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": actor,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "reason": reason,
        "prev_hash": prev_hash,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def record_hash(
    *,
    id: int,
    at: dt.datetime,
    actor: str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    reason: str,
    prev_hash: str | None,
) -> str:
    data = canonical(
        id=id,
        at=at,
        actor=actor,
        action=action,
        target=target,
        before=before,
        after=after,
        reason=reason,
        prev_hash=prev_hash,
    )
    return hashlib.sha256(data).hexdigest()


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    """Add an audit record inside the caller's transaction, so it commits with the change.

    The record is chained onto the newest one. On PostgreSQL the transaction takes an
    advisory lock first, held until it ends, so that two transactions cannot chain onto the
    same predecessor; SQLite write transactions are serialised already (BEGIN IMMEDIATE).
    """
    prev_hash = _chain_head(session)
    entry = AuditRecord(
        at=utcnow(),
        actor=actor,
        action=action,
        target=target,
        # What the hash covers must be what a reader gets back: JSON turns tuples into
        # lists and keys into strings, so the values are stored as JSON gives them back.
        before=_as_stored(before),
        after=_as_stored(after),
        reason=reason or "",
        prev_hash=prev_hash,
    )
    session.add(entry)
    session.flush()  # the id is part of what the hash covers
    entry.hash = record_hash(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        before=entry.before,
        after=entry.after,
        reason=entry.reason,
        prev_hash=prev_hash,
    )
    session.info[_HEAD] = (_transaction(session), entry.hash)


def _transaction(session: Session) -> object:
    return session.get_nested_transaction() or session.get_transaction()


def _chain_head(session: Session) -> str | None:
    """The hash to chain onto: remembered within one transaction, read once otherwise.

    The memory is tied to the innermost transaction, so a savepoint rolled back (taking its
    records with it) makes the next record read the head again.
    """
    transaction = _transaction(session)
    remembered = session.info.get(_HEAD)
    if remembered is not None and remembered[0] is transaction:
        head: str = remembered[1]
        return head
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK})
    newest = session.execute(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)).first()
    return GENESIS if newest is None else newest.hash


def _as_stored(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    # Hashed as the database will hand it back, non-finite numbers as null included.
    stored: dict[str, Any] = json.loads(json_dumps(value))
    return stored


def list_entries(
    store: Store,
    *,
    since: dt.datetime | None = None,
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Records newest first; ``target`` also matches what is under it (a model and its versions)."""
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if target is not None:
        query = query.where((AuditRecord.target == target) | AuditRecord.target.startswith(f"{target}:"))
    if action is not None:
        query = query.where(AuditRecord.action == action)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    with store.read() as session:
        rows = session.scalars(query).all()
        return [
            AuditEntry(
                r.id, r.at, r.actor, r.action, r.target, r.before, r.after, r.reason, r.prev_hash, r.hash
            )
            for r in rows
        ]


def parse_since(value: str, *, what: str = "since", now: dt.datetime | None = None) -> dt.datetime:
    """``7d``, ``12h``, ``30m`` (back from now) or an ISO 8601 date/time (UTC unless it says) → UTC."""
    from passerelle.policy import parse_duration

    text_ = value.strip()
    try:
        when = dt.datetime.fromisoformat(text_)
    except ValueError:
        try:
            seconds = parse_duration(text_, what)
        except InvalidInputError:
            raise InvalidInputError(
                f"{what} {value!r}: use a duration such as 7d, 12h or 30m, or an ISO date"
            ) from None
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)
    return when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_anchor(value: str) -> tuple[int, str]:
    """``ID:HASH`` as printed by ``passerelle audit head`` → (id, hash)."""
    match = _ANCHOR.match(value.strip().lower())
    if not match:
        raise InvalidInputError(
            f"audit anchor {value!r}: expected ID:HASH as printed by `passerelle audit head`"
        )
    return int(match.group("id")), match.group("hash")


def verify_chain(store: Store, *, anchor: str | None = None, batch: int = VERIFY_BATCH) -> ChainReport:
    """Walk the log in id order and report the first record that breaks the chain.

    ``anchor`` (``ID:HASH``, kept outside the database) also requires record ID to still
    carry HASH: the one check a rewrite of the whole chain cannot pass.
    """
    anchored = parse_anchor(anchor) if anchor is not None else None
    if batch < 1:
        raise InvalidInputError(f"batch must be at least 1, got {batch}")
    columns = (
        AuditRecord.id,
        AuditRecord.at,
        AuditRecord.actor,
        AuditRecord.action,
        AuditRecord.target,
        AuditRecord.before,
        AuditRecord.after,
        AuditRecord.reason,
        AuditRecord.prev_hash,
        AuditRecord.hash,
    )
    expected = GENESIS
    previous_id: int | None = None
    checked = 0
    anchor_seen = False
    with store.read() as session:
        while True:
            query = select(*columns).order_by(AuditRecord.id).limit(batch)
            if previous_id is not None:
                query = query.where(AuditRecord.id > previous_id)
            rows = session.execute(query).all()
            if not rows:
                break
            for row in rows:
                problem = _check(row, expected, previous_id)
                if problem is None and anchored is not None and row.id == anchored[0]:
                    anchor_seen = True
                    if row.hash != anchored[1]:
                        problem = (
                            f"record {row.id} no longer carries the anchored hash {anchored[1][:12]}…: "
                            "the log was rewritten up to it"
                        )
                if problem is not None:
                    return ChainReport(ok=False, checked=checked, first_broken_id=row.id, problem=problem)
                expected = row.hash
                previous_id = row.id
                checked += 1
    if anchored is not None and not anchor_seen:
        return ChainReport(
            ok=False,
            checked=checked,
            first_broken_id=anchored[0],
            problem=f"the anchored record {anchored[0]} is missing: the log was truncated or rewritten",
        )
    return ChainReport(ok=True, checked=checked)


def _check(row: Any, expected: str, previous_id: int | None) -> str | None:
    if row.hash is None:
        return f"record {row.id} has no hash: it was written behind passerelle's back"
    if row.prev_hash != expected:
        if previous_id is None:
            return f"record {row.id} is not the first record of the log: records before it were deleted"
        return (
            f"record {row.id} does not follow record {previous_id}: a record between them was "
            "deleted, inserted or renumbered"
        )
    actual = record_hash(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        before=row.before,
        after=row.after,
        reason=row.reason,
        prev_hash=row.prev_hash,
    )
    if actual != row.hash:
        return f"record {row.id} was changed after it was written: its content does not match its hash"
    return None
