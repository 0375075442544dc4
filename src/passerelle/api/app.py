"""The HTTP application: the management API, its error handling, and room for more routers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from passerelle.__about__ import __version__
from passerelle.api import admin, datasets, registry
from passerelle.api.errors import install_error_handlers
from passerelle.client import LocalClient
from passerelle.settings import Settings, load_settings

MANAGEMENT_ROUTERS: tuple[APIRouter, ...] = (registry.router, datasets.router, admin.router)


class Health(BaseModel):
    status: str


def create_app(settings: Settings | None = None, *, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """A FastAPI app serving the management API on the store ``settings`` name.

    ``routers`` are added after the management routes: the serving gateway passes its
    inference routes, ``/readyz`` and ``/metrics`` here. Their handlers get the same client
    through :func:`passerelle.api.deps.acting_client` and the same error handling.
    """
    client = LocalClient(settings or load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opening the stores here (migrations included) makes a misconfigured server fail at
        # start rather than on its first request, and keeps concurrent first requests from
        # racing to open them.
        await run_in_threadpool(_open, client)
        try:
            yield
        finally:
            await run_in_threadpool(client.close)

    app = FastAPI(
        title="passerelle",
        version=__version__,
        summary="Management API of passerelle: the model registry, datasets, the audit log.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.passerelle_client = client
    install_error_handlers(app)

    @app.get("/healthz", summary="Liveness", tags=["health"], response_model=Health)
    def healthz() -> Health:
        """Answers while the process serves HTTP; it checks nothing else (readiness does)."""
        return Health(status="ok")

    for router in (*MANAGEMENT_ROUTERS, *routers):
        app.include_router(router)
    return app


def _open(client: LocalClient) -> None:
    _ = client.ctx.store, client.ctx.artifacts
