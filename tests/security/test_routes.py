"""Every route of both apps declares what it needs, so that no route can be forgotten."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from passerelle.api.app import create_app
from passerelle.api.deps import Guarded, RouteEntry, access_of
from passerelle.auth import Permission
from passerelle.serving.app import create_serving_app
from passerelle.serving.server import background_server
from passerelle.settings import Settings
from passerelle.ui import router as console_router
from tests.security.conftest import Secured

#: what anyone may call: a change here is a decision, to be made in docs/security.md too
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/openapi.json",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
}


def _apps(tmp_path: Path) -> dict[str, FastAPI]:
    settings = Settings(home=tmp_path / "home", auth=True)
    return {"management": create_app(settings), "serving": create_serving_app(settings, background=False)}


def _undeclared(entries: list[RouteEntry]) -> list[str]:
    return [entry.label for entry in entries if entry.rule is None]


@pytest.mark.parametrize("kind", ["management", "serving"])
def test_every_route_declares_a_permission_or_is_public(tmp_path: Path, kind: str) -> None:
    app = _apps(tmp_path)[kind]
    entries = access_of(app).table()
    assert len(entries) > 30
    assert not _undeclared(entries), (
        f"routes of the {kind} app without a permission: {_undeclared(entries)}; include their router as "
        "Guarded(router, read=..., write=...) in passerelle.api.app or passerelle.serving.app"
    )
    public = {entry.path for entry in entries if entry.rule is not None and entry.rule.public}
    # The console's pages pass the gatekeeper and check their own session cookie, with the same
    # roles (tests/ui/test_routes.py proves a page refuses a visitor without one).
    console = {route.path for route in console_router.routes if isinstance(route, APIRoute | Route)}
    assert public - console == {p for p in PUBLIC if any(e.path == p for e in entries)}
    if kind == "serving":
        assert public == PUBLIC | console


def test_representative_routes_need_their_family(tmp_path: Path) -> None:
    entries = {e.label: e.rule for e in access_of(_apps(tmp_path)["serving"]).table()}
    expected = {
        "GET /api/v1/models": {Permission.READ},
        "POST /api/v1/models/{name}/versions": {Permission.REGISTER},
        "POST /api/v1/datasets/{name}/versions/upload": {Permission.REGISTER},
        "POST /v1/endpoints/{name}/predict": {Permission.PREDICT},
        "POST /v2/models/{name}/infer": {Permission.PREDICT},
        "GET /v2/models/{name}": {Permission.PREDICT, Permission.READ},
        "POST /v1/endpoints/{name}/feedback": {Permission.FEEDBACK},
        "POST /api/v1/endpoints/{name}/feedback": {Permission.FEEDBACK},
        "PUT /api/v1/endpoints/{name}": {Permission.OPERATE},
        "POST /api/v1/endpoints/{name}/promote": {Permission.OPERATE},
        "POST /api/v1/endpoints/{name}/rollback": {Permission.OPERATE},
        "GET /api/v1/audit": {Permission.READ},
        "GET /api/v1/config": {Permission.ADMIN},
        "POST /api/v1/gc": {Permission.ADMIN},
        "POST /api/v1/tokens": {Permission.ADMIN},
        "GET /api/v1/tokens": {Permission.ADMIN},
    }
    for label, permissions in expected.items():
        rule = entries[label]
        assert rule is not None, label
        assert rule.permissions == permissions, label
    assert entries["POST /v1/endpoints/{name}/predict"].endpoint_param == "name"  # type: ignore[union-attr]
    assert entries["GET /api/v1/models/{name}"].endpoint_param is None  # type: ignore[union-attr]


def test_an_override_naming_no_route_is_refused(tmp_path: Path) -> None:
    router = APIRouter()

    @router.get("/things")
    def things() -> list[str]:
        return []

    guarded = Guarded(
        router, read=Permission.READ, write=Permission.ADMIN, overrides={"GET /thing": "public"}
    )
    with pytest.raises(ValueError, match=r"routes the router does not have: \['GET /thing'\]"):
        create_app(Settings(home=tmp_path / "home"), routers=[guarded])


def test_a_router_included_without_permissions_is_refused_to_every_token(
    secured: Secured, tmp_path: Path
) -> None:
    router = APIRouter()

    @router.get("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {"secret": "data"}

    app = create_app(secured.settings, routers=[router])
    assert _undeclared(access_of(app).table()) == ["GET /api/v1/forgotten"]
    with background_server(app) as url:
        assert httpx.get(f"{url}/api/v1/forgotten").status_code == 401
        response = httpx.get(f"{url}/api/v1/forgotten", headers=secured.headers("admin"))
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert message.startswith("GET /api/v1/forgotten has no declared permission")
    assert "Guarded(...)" in message
    # Without authentication it is served, as every route was before tokens existed.
    with background_server(
        create_app(secured.settings.model_copy(update={"auth": False}), routers=[router])
    ) as url:
        assert httpx.get(f"{url}/api/v1/forgotten").json() == {"secret": "data"}


def test_a_route_added_to_a_guarded_router_later_gets_its_rules(secured: Secured) -> None:
    router = APIRouter()

    @router.get("/api/v1/early")
    def early() -> dict[str, str]:
        return {}

    guarded = Guarded(router, read=Permission.READ, write=Permission.ADMIN)
    app = create_app(secured.settings, routers=[guarded])
    with background_server(app) as url:
        assert httpx.get(f"{url}/api/v1/early", headers=secured.headers("viewer")).status_code == 200

        @router.get("/api/v1/late")
        def late() -> dict[str, str]:
            return {"added": "late"}

        time.sleep(1.05)  # the gatekeeper looks again at most once a second
        assert httpx.get(f"{url}/api/v1/late", headers=secured.headers("viewer")).json() == {"added": "late"}
        refused = httpx.get(f"{url}/api/v1/late", headers=secured.headers("predictor"))
    assert refused.status_code == 403
    assert "needs the read permission" in refused.json()["error"]["message"]
