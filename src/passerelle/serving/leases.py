"""Named leases in the metadata store, so one worker among many runs a periodic job.

Every worker of every replica may call :func:`acquire` before a round of a periodic job
(a canary step, a monitor); the one that gets ``True`` runs it. The holder renews its lease
by acquiring it again before it expires; a lease whose holder died expires after ``ttl_s``
and is then taken over by the next worker that asks.

Acquiring is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement: the row is
inserted, or updated only when it is ours or expired, and ``RETURNING`` tells whether that
happened. PostgreSQL runs it atomically under the row lock; on SQLite it runs inside
``BEGIN IMMEDIATE`` (:meth:`Store.write`), which already serialises writers. On
PostgreSQL the database clock decides expiry, so replicas with drifting clocks still agree.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from passerelle.store import Store
from passerelle.store.schema import Lease

__all__ = ["acquire", "holder", "release"]


def _now(session: Session) -> dt.datetime:
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        assert isinstance(now, dt.datetime)
        return now.astimezone(dt.UTC)
    return dt.datetime.now(dt.UTC)


def acquire(store: Store, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``ttl_s`` seconds; True when ``holder`` now holds it."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
    with store.write() as session:
        now = _now(session)
        expires = now + dt.timedelta(seconds=ttl_s)
        statement = insert(Lease).values(name=name, holder=holder, expires_at=expires)
        statement = statement.on_conflict_do_update(
            index_elements=[Lease.name],
            set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
            where=(Lease.holder == holder) | (Lease.expires_at <= now),
        )
        taken = session.execute(statement.returning(Lease.holder)).first()
    return taken is not None


def release(store: Store, name: str, holder: str) -> bool:
    """Give up the lease ``name`` if ``holder`` holds it; True when it did."""
    with store.write() as session:
        result = session.execute(
            delete(Lease).where(Lease.name == name, Lease.holder == holder).returning(Lease.name)
        )
        return result.first() is not None


def holder(store: Store, name: str) -> str | None:
    """Who holds the lease ``name`` now, or None when nobody does (never taken, released or expired)."""
    with store.read() as session:
        lease = session.get(Lease, name)
        if lease is None or lease.expires_at <= _now(session):
            return None
        return lease.holder
