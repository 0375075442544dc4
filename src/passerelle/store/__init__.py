"""The metadata store: one SQLAlchemy code path for SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from passerelle._deps import require
from passerelle.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works: it only has to be the same for every process sharing a database.
_PG_MIGRATION_LOCK = 0x7061_7373
# libpq connection parameters, unless the database URL sets its own. Without them a database host
# that accepts connections and never answers, or that vanishes mid-conversation, holds a request
# for as long as TCP keeps trying (minutes); with them the request fails with StoreError (503).
PG_CONNECT_ARGS: dict[str, int] = {
    # seconds for a new connection, handshake included
    "connect_timeout": 5,
    # milliseconds sent data may stay unacknowledged before the connection is dropped
    "tcp_user_timeout": 30_000,
    # probe an idle connection after 30 s, every 10 s, 3 times, so a dead peer is noticed
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """How every JSON column is written, on both databases.

    JSON has no NaN or infinity: PostgreSQL refuses them, while SQLite would keep Python's
    non-standard ``NaN``. Both store null instead, so that what works on one works on the other.
    """
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # only then walk the value: most documents hold finite numbers only
        return json.dumps(_finite(value), allow_nan=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would BEGIN lazily and let two writers both
    # read a stale max(number); we issue BEGIN ourselves (IMMEDIATE for writes).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("passerelle_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def create_store_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=json_dumps)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        require("psycopg", "postgres")
        given = set(parsed.query)
        defaults = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in given}
        return create_engine(url, pool_pre_ping=True, connect_args=defaults, json_serializer=json_dumps)
    raise StoreError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}")


class Store:
    """Owns the engine and hands out sessions; applies migrations once per process."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        try:
            self.engine = create_store_engine(url)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the metadata store: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(passerelle_write=True), expire_on_commit=False
        )
        if migrate:
            self.upgrade()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> str:
        """Bring the schema to the newest revision; safe when several processes start at once."""
        from passerelle.store.migrate import upgrade

        try:
            return upgrade(self)
        except OperationalError as exc:
            raise StoreError(f"cannot reach the metadata store: {exc.orig}") from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._guard(), self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that serialises writers (BEGIN IMMEDIATE on SQLite)."""
        with self._guard(), self._writes() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreError(f"the metadata store failed: {exc.orig}") from exc

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.read() as session:
            session.execute(text("SELECT 1"))
