"""The served application: management API, inference routes, and one gateway per worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from passerelle.api.app import create_app
from passerelle.api.deps import PUBLIC, Guarded, Requirement
from passerelle.api.endpoints import feedback_router
from passerelle.api.endpoints import router as endpoints_router
from passerelle.api.inference import build_router
from passerelle.auth import Permission
from passerelle.serving import lane
from passerelle.serving.gateway import Gateway, Limits
from passerelle.serving.lane import ServingApp
from passerelle.serving.metrics import ServingMetrics
from passerelle.settings import Settings
from passerelle.ui import router as console_router


def create_serving_app(
    settings: Settings,
    *,
    fsync: bool = True,
    worker: str | None = None,
    limits: Limits | None = None,
    background: bool = True,
) -> FastAPI:
    read, predict, feedback = Permission.READ, Permission.PREDICT, Permission.FEEDBACK
    # /metrics is public like the health routes: Prometheus scrapes without a token, and it
    # holds counts and latencies, never inputs.
    health: dict[str, Requirement] = {
        f"GET {path}": PUBLIC
        for path in ("/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready")
    }
    routers = [
        # OIP v2 clients read a model's metadata and readiness before they infer.
        Guarded(build_router(), read=(predict, read), write=predict, overrides=health),
        Guarded(feedback_router, read=read, write=feedback),
        Guarded(
            endpoints_router,
            read=read,
            write=Permission.OPERATE,
            overrides={
                "POST /api/v1/endpoints/{name}/feedback": feedback,
                "POST /api/v1/endpoints/{name}/feedback/rejoin": feedback,
            },
            # A new policy is applied only once its versions are proven to load.
            untimed=(
                "PUT /api/v1/endpoints/{name}",
                "POST /api/v1/endpoints/{name}/weights",
                "POST /api/v1/endpoints/{name}/promote",
                "POST /api/v1/endpoints/{name}/rollback",
                "GET /api/v1/endpoints/{name}/predictions/export",
            ),
        ),
        # Browsers send a session cookie, not a bearer token: the console checks it itself, with
        # the same roles (passerelle.ui.session).
        Guarded(console_router, read=PUBLIC, write=PUBLIC),
    ]
    app = create_app(settings, routers=routers, app_class=ServingApp)
    if limits is None:
        limits = Limits(max_rows=settings.max_rows_per_request, max_body_bytes=settings.max_body_bytes)
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
    lane.install(app, gateway)
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
