"""The HTTP application: the management API, its error handling, access control, and more routers.

Every router is included with the permissions its routes need, as a :class:`Guarded` next to
it: routes answering GET need ``read``, the others ``write``, and ``overrides`` sets single
routes. A router added without them still works with authentication off, and is refused to
every token with it on (and ``tests/security`` fails on it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from passerelle.__about__ import __version__
from passerelle.api import admin, datasets, pipelines, privacy, registry, tokens
from passerelle.api.deps import PUBLIC, AccessControl, Gatekeeper, Guarded
from passerelle.api.errors import install_error_handlers
from passerelle.api.monitoring import router as monitoring_router
from passerelle.auth import Permission
from passerelle.client import LocalClient
from passerelle.settings import Settings, load_settings

READ, REGISTER, OPERATE, ADMIN = Permission.READ, Permission.REGISTER, Permission.OPERATE, Permission.ADMIN

MANAGEMENT_ROUTERS: tuple[Guarded | APIRouter, ...] = (
    # untimed: loading a model, reading a dataset, checking every artifact may rightly take
    # longer than the request timeout.
    Guarded(
        registry.router,
        read=READ,
        write=REGISTER,
        untimed=("POST /api/v1/models/{name}/versions", "GET /api/v1/versions/{ref}/artifact"),
    ),
    Guarded(
        datasets.router,
        read=READ,
        write=REGISTER,
        untimed=("POST /api/v1/datasets/{name}/versions", "POST /api/v1/datasets/{name}/versions/upload"),
    ),
    # The audit log is for every reader; checking every artifact and the settings are not.
    Guarded(
        admin.router,
        read=READ,
        write=ADMIN,
        overrides={"GET /api/v1/doctor": ADMIN, "GET /api/v1/config": ADMIN},
        untimed=("GET /api/v1/doctor", "POST /api/v1/gc"),
    ),
    # Notifiers make the server connect to addresses given in a request and hold webhook
    # credentials: an administrator's business, not every operator's.
    Guarded(
        monitoring_router,
        read=READ,
        write=OPERATE,
        overrides={
            "PUT /api/v1/notifiers/{name}": ADMIN,
            "DELETE /api/v1/notifiers/{name}": ADMIN,
            "POST /api/v1/notifiers/{name}/test": ADMIN,
        },
        untimed=("POST /api/v1/monitors/run", "GET /api/v1/endpoints/{name}/monitor/report"),
    ),
    # A definition names a command the server will run as its own account: defining one is an
    # administrator's act; running and cancelling the defined ones is a scientist's.
    Guarded(pipelines.router, read=READ, write=REGISTER, overrides={"PUT /api/v1/pipelines/{name}": ADMIN}),
    # Erasing personal data and sweeping the log delete rows for good.
    Guarded(privacy.router, read=READ, write=ADMIN, untimed=("POST /api/v1/predictions/retention",)),
    Guarded(tokens.router, read=ADMIN, write=ADMIN),
)


class Health(BaseModel):
    status: str


def create_app(
    settings: Settings | None = None,
    *,
    routers: Sequence[Guarded | APIRouter] = (),
    app_class: type[FastAPI] = FastAPI,
) -> FastAPI:
    """A FastAPI app serving the management API on the store ``settings`` name.

    ``routers`` are matched before the management routes (their paths do not overlap): the
    serving gateway passes its inference routes, ``/readyz`` and ``/metrics`` here. Their
    handlers get the same client through :func:`passerelle.api.deps.acting_client`, the same
    error handling and the same access control. ``app_class`` is the application's class (the
    gateway's answers its inference routes itself).
    """
    settings = settings or load_settings()
    client = LocalClient(settings)

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

    app = app_class(
        title="passerelle",
        version=__version__,
        summary="Management API of passerelle: the model registry, datasets, the audit log.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.passerelle_client = client
    access = AccessControl(settings, lambda: client.ctx.store)
    access.bind(app)
    app.state.access = access
    # Added first, so it runs inside the request-id middleware: its refusals carry the id too.
    app.add_middleware(Gatekeeper, access=access)
    install_error_handlers(app)

    @app.get("/healthz", summary="Liveness", tags=["health"], response_model=Health)
    def healthz() -> Health:
        """Answers while the process serves HTTP; it checks nothing else (readiness does)."""
        return Health(status="ok")

    access.declare(app.router.routes[-1], PUBLIC)
    access.public_paths(app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url)
    # The routers passed in (inference, console) go first: Starlette tries routes in order,
    # and a prediction should not be matched against every management route before its own.
    for router in (*routers, *MANAGEMENT_ROUTERS):
        access.include(app, router)
    return app


def _open(client: LocalClient) -> None:
    _ = client.ctx.store, client.ctx.artifacts
