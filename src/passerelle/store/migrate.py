"""Apply Alembic migrations under a lock shared by every process using the database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from passerelle.store import Store


def alembic_config(store: Store) -> Config:
    from passerelle.store import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", store.url.replace("%", "%%"))
    return cfg


def head_revision(store: Store) -> str:
    head = ScriptDirectory.from_config(alembic_config(store)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(store: Store) -> Iterator[Connection]:
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            from passerelle.store import _PG_MIGRATION_LOCK

            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        return
    database = make_url(store.url).database
    if database and database != ":memory:":
        with FileLock(f"{database}.migrate.lock", timeout=120), store.engine.connect() as conn:
            yield conn
    else:
        with store.engine.connect() as conn:
            yield conn


def upgrade(store: Store) -> str:
    """Upgrade to head if needed; returns the revision now in place."""
    head = head_revision(store)
    with store.engine.connect() as conn:
        if current_revision(conn) == head:
            return head
    with _migration_lock(store) as conn:
        # Another process may have finished the work while we waited for the lock.
        if current_revision(conn) != head:
            cfg = alembic_config(store)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    return head
