"""The served application: management API, inference routes, and one gateway per worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from passerelle.api.app import create_app
from passerelle.api.endpoints import router as endpoints_router
from passerelle.api.inference import build_router
from passerelle.serving.gateway import Gateway, Limits
from passerelle.serving.metrics import ServingMetrics
from passerelle.settings import Settings


def create_serving_app(
    settings: Settings,
    *,
    fsync: bool = True,
    worker: str | None = None,
    limits: Limits | None = None,
    background: bool = True,
) -> FastAPI:
    app = create_app(settings, routers=[build_router(), endpoints_router])
    # The gateway shares the management API's stores: one connection pool per worker.
    gateway = Gateway(
        app.state.passerelle_client.ctx,
        worker=worker,
        metrics=ServingMetrics(CollectorRegistry()),
        fsync=fsync,
        limits=limits,
        background=background,
    )
    app.state.gateway = gateway
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            await gateway.start()
            try:
                yield state
            finally:
                await gateway.stop()

    app.router.lifespan_context = lifespan
    return app
