"""A real gateway (uvicorn on a free port, in a thread) on a store with two churn versions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from passerelle.client import LocalClient
from passerelle.serving.app import create_serving_app
from passerelle.serving.gateway import Gateway, Limits
from passerelle.serving.server import background_server
from passerelle.settings import Settings
from tests.helpers import small_model


@dataclass
class Served:
    url: str
    settings: Settings
    client: LocalClient
    gateway: Gateway
    frame: pd.DataFrame


@contextmanager
def serving(settings: Settings, *, limits: Limits | None = None) -> Iterator[tuple[str, Gateway]]:
    app = create_serving_app(settings, limits=limits, worker="test-worker")
    with background_server(app) as url:
        yield url, app.state.gateway


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[tuple[Settings, LocalClient, pd.DataFrame]]:
    settings = Settings(home=tmp_path / "home")
    with LocalClient(settings) as client:
        model, frame = small_model(seed=0)
        client.register(model, "churn", sample=frame)
        model2, _ = small_model(seed=1)
        client.register(model2, "churn", sample=frame)
        client.set_alias("churn", "champion", 1)
        yield settings, client, frame


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
