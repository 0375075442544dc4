"""A real gateway with authentication on (uvicorn on a free port, in a thread), and its tokens.

The store is prepared through a :class:`LocalClient`, which is what the operating system user
holding the database has: every right. Tokens are created there, one per role, plus tokens
limited to one endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from passerelle.auth import ROLES
from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.serving.app import create_serving_app
from passerelle.serving.server import background_server
from passerelle.settings import Settings
from tests.api.conftest import settings_for
from tests.helpers import small_model

#: a small cache time keeps the revocation test short
CACHE_SECONDS = 1.0


@dataclass
class Secured:
    url: str
    settings: Settings
    #: the operating system user on the server's store
    local: LocalClient
    frame: pd.DataFrame
    #: token name → secret
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[token]}"}

    def new_token(self, name: str, role: str) -> dict[str, str]:
        """Headers with a token of its own (rate limits count per token)."""
        self.tokens[name] = self.local.create_token(name, role).secret
        return self.headers(name)

    def records(self, n: int = 2) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.frame.head(n).to_dict("records")
        return rows


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the gateway did not load its endpoints in time")


@contextmanager
def secured_server(
    home: Path, prepare: Callable[[LocalClient, pd.DataFrame], None] | None = None, **values: Any
) -> Iterator[Secured]:
    """A gateway requiring tokens, serving churn-api and fraud-api, with a token per role.

    ``prepare`` adds to the store before the gateway starts; ``values`` are settings.
    """
    settings = settings_for(home, auth=True, token_cache_seconds=CACHE_SECONDS, **values)
    with LocalClient(settings) as local:
        model, frame = small_model()
        local.register(model, "churn", sample=frame)
        local.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], monitor=False))
        local.deploy("fraud-api", DeploySpec(routes=[("churn:1", 100)], monitor=False))
        if prepare is not None:
            prepare(local, frame)
        secured = Secured("", settings, local, frame)
        for role in ROLES:
            secured.tokens[role] = local.create_token(role, role).secret
        for name, role in (("churn-predictor", "predictor"), ("churn-viewer", "viewer")):
            secured.tokens[name] = local.create_token(name, role, endpoints=["churn-api"]).secret
        app = create_serving_app(settings, fsync=False, worker="secured")
        with background_server(app) as url:
            secured.url = url
            wait_ready(url)
            yield secured


@pytest.fixture(scope="package")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One gateway for the package's tests: each test uses tokens and names of its own."""
    with secured_server(tmp_path_factory.mktemp("secured")) as found:
        yield found
