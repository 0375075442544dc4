"""Every state change is recorded: who, when, what, before and after, and why."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from passerelle.store import Store
from passerelle.store.schema import AuditRecord


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
    """Add an audit record inside the caller's transaction, so it commits with the change."""
    session.add(
        AuditRecord(
            actor=actor, action=action, target=target, before=before, after=after, reason=reason or ""
        )
    )


def list_entries(
    store: Store,
    *,
    since: dt.datetime | None = None,
    target: str | None = None,
    action: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if target is not None:
        query = query.where((AuditRecord.target == target) | AuditRecord.target.startswith(f"{target}:"))
    if action is not None:
        query = query.where(AuditRecord.action == action)
    with store.read() as session:
        rows = session.scalars(query).all()
        return [
            AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.before, r.after, r.reason) for r in rows
        ]
