"""A real passerelle server on a free port, and clients of both kinds.

The server is uvicorn in a thread of the test process serving ``create_app``: requests go
through real sockets, HTTP parsing and multipart handling, as they would in production.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from passerelle.api.app import create_app
from passerelle.client import Client, LocalClient
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from tests.conftest import free_port


@dataclass(frozen=True)
class Server:
    url: str
    settings: Settings  # the server's own settings (its home, database and artifact store)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the test server did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def settings_for(home: Path, **values: Any) -> Settings:
    """Settings on ``home`` alone, whatever the environment says (module fixtures run before
    the per-test isolation of the environment)."""
    home = home.resolve()
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'passerelle.db'}",
        artifact_uri=str(home / "artifacts"),
        user="tester",
        **values,
    )


@contextmanager
def running_server(home: Path) -> Iterator[Server]:
    settings = settings_for(home)
    with serve(create_app(settings)) as url:
        yield Server(url, settings)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server on a fresh store of its own."""
    with running_server(tmp_path / "server") as found:
        yield found


@pytest.fixture
def remote(server: Server, tmp_path: Path) -> Iterator[RemoteClient]:
    """A remote client whose own home (its artifact cache) is apart from the server's."""
    with RemoteClient(Settings(home=tmp_path / "client", url=server.url)) as client:
        assert isinstance(client, RemoteClient)
        yield client


@pytest.fixture(params=["local", "remote"])
def any_kind_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """Each kind of client in turn, on a fresh store: in-process, then through a real server."""
    if request.param == "local":
        with LocalClient(Settings(home=tmp_path / "server")) as local:
            yield local
    else:
        yield request.getfixturevalue("remote")
