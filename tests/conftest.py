"""Shared fixtures: isolated homes, a fresh PostgreSQL database, and an S3 server over real HTTP.

Under ``PASSERELLE_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a test that needs PostgreSQL
fails when the server cannot be reached, instead of skipping.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.client import LocalClient
from passerelle.settings import Settings

PG_ADMIN_URL = os.environ.get("PASSERELLE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("PASSERELLE_REQUIRE_SERVICES") == "1"


def service_missing(what: str) -> None:
    """Skip, or fail when CI demands every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (PASSERELLE_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's PASSERELLE_* settings or writes into the work tree."""
    for key in list(os.environ):
        if key.startswith("PASSERELLE_") and key not in {"PASSERELLE_REQUIRE_SERVICES", "PASSERELLE_TEST_PG"}:
            monkeypatch.delenv(key)
    monkeypatch.setenv("PASSERELLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PASSERELLE_USER", "tester")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    if not _pg_available():
        service_missing("PostgreSQL on 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    name = f"passerelle_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        service_missing(f"PostgreSQL ({exc.__class__.__name__}: {exc})")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of each supported backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'passerelle.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def client(settings: Settings) -> Iterator[LocalClient]:
    with LocalClient(settings) as c:
        assert isinstance(c, LocalClient)
        yield c


@pytest.fixture
def any_client(backend: str, tmp_path: Path) -> Iterator[LocalClient]:
    """A client on each backend (SQLite and PostgreSQL)."""
    with LocalClient(Settings(home=tmp_path / "home", database_url=backend)) as c:
        assert isinstance(c, LocalClient)
        yield c


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, spoken to over real HTTP."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path) -> Settings:
    import boto3

    bucket = f"models-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    return Settings(
        home=tmp_path / "home",
        artifact_uri=f"s3://{bucket}/passerelle",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",  # type: ignore[arg-type]
        s3_region="us-east-1",
    )
