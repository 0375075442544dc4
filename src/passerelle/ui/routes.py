"""The console's HTTP routes: thin handlers that gather a page, render it, or run one action.

Pages are GET; every action is a GET of a confirmation page (what will change, a required
reason) followed by a POST of that form, which goes through the client so it lands as a
revision or an audit record. A refused action shows the server's message on the confirmation
page, with the status the API would answer.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from passerelle.__about__ import __version__
from passerelle.api.errors import kind_of
from passerelle.auth import AuthenticationError, Authenticator, Permission, PermissionDeniedError
from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError
from passerelle.policy import parse_duration
from passerelle.ui import pages, queries
from passerelle.ui.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    CsrfError,
    Viewer,
    acting_client,
    check_form,
    new_csrf_secret,
    safe_next,
    sign_in,
    viewer_of,
)

log = logging.getLogger("passerelle.ui")
#: shown where a figure is unknown
DASH = "\u2013"

router = APIRouter(include_in_schema=False)

#: the longest reason kept with an action
MAX_REASON = 2000
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_NAV = (
    ("overview", "/", "Overview"),
    ("models", "/models", "Models"),
    ("monitoring", "/monitoring", "Monitoring"),
    ("alerts", "/alerts", "Alerts"),
    ("pipelines", "/pipelines", "Pipelines"),
)


# ------------------------------------------------------------------------------------------ rendering


def _when(moment: Any) -> str:
    if isinstance(moment, dt.datetime):
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return DASH if moment in (None, "") else str(moment)


def _pct(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or value != value:
        return DASH
    return f"{value * 100:.{digits}f}%"


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return DASH if value is None or isinstance(value, float) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _ms(value: Any) -> str:
    return DASH if not isinstance(value, int | float) else f"{value:,.1f} ms"


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value //= 1024
    return str(value)


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("passerelle.ui", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, pct=_pct, num=_num, ms=_ms, size=_size, svg=Markup, urlpart=quote)
    return env


def _render(
    request: Request, template: str, context: Mapping[str, Any], *, status: int = 200, active: str = ""
) -> HTMLResponse:
    viewer: Viewer | None = getattr(request.state, "console_viewer", None)
    page = (
        _environment()
        .get_template(template)
        .render(
            **context,
            viewer=viewer,
            nav=_NAV,
            active=active,
            version=__version__,
            path=request.url.path,
            Permission=Permission,
        )
    )
    response = HTMLResponse(page, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
    )
    fresh = getattr(request.state, "console_new_csrf", None)
    if fresh:
        response.set_cookie(
            CSRF_COOKIE, fresh, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
    return response


def _error_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, AuthenticationError):
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        status, title = 401, "Sign in again"
    elif isinstance(exc, PermissionDeniedError | CsrfError):
        status, title = 403, "Not allowed"
    elif isinstance(exc, NotFoundError):
        status, title = 404, "Not found"
    elif isinstance(exc, PasserelleError):
        status, title = kind_of(exc).status, "Refused"
    else:
        request_id = uuid.uuid4().hex[:12]
        log.exception("console page %s failed (request %s)", request.url.path, request_id)
        exc = PasserelleError(
            f"the page could not be built; the server log has the details (request {request_id})"
        )
        status, title = 500, "Something went wrong"
    return _render(
        request, "error.html", {"title": title, "message": str(exc), "status": status}, status=status
    )


def _base_client(request: Request) -> LocalClient:
    client: LocalClient = request.app.state.passerelle_client
    return client


def _authenticator(request: Request) -> tuple[bool, Authenticator | None]:
    """Whether tokens are required, and the app's token checker (shared with the API's)."""
    access = getattr(request.app.state, "access", None)
    if access is not None:
        return bool(access.auth), access.authenticator
    # An app built without the API's access control (a test harness, an embedding application):
    # the settings decide, with a token checker of the console's own.
    auth = _base_client(request).settings.auth
    found: Authenticator | None = getattr(request.app.state, "console_authenticator", None)
    if auth and found is None:
        base = _base_client(request)
        found = Authenticator(lambda: base.ctx.store)
        request.app.state.console_authenticator = found
    return auth, found


def _viewer(request: Request) -> Viewer:
    auth, authenticator = _authenticator(request)
    cookies = dict(request.cookies)
    if not auth and not cookies.get(CSRF_COOKIE):
        cookies[CSRF_COOKIE] = request.state.console_new_csrf = new_csrf_secret()
    viewer = viewer_of(auth=auth, authenticator=authenticator, cookies=cookies)
    request.state.console_viewer = viewer
    viewer.require(Permission.READ, "read")
    return viewer


def _gateway_state(request: Request) -> tuple[dict[str, int] | None, dict[str, str]]:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        return None, {}
    return {name: live.revision for name, live in dict(gateway.live).items()}, dict(gateway.load_errors)


def _page(
    request: Request, template: str, build: Callable[[Viewer, LocalClient], Mapping[str, Any]], *, active: str
) -> Response:
    try:
        viewer = _viewer(request)
        context = build(viewer, acting_client(_base_client(request), viewer))
        return _render(request, template, context, active=active)
    except Exception as exc:
        return _error_page(request, exc)


# ------------------------------------------------------------------------------------------ pages


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        loaded, errors = _gateway_state(request)
        data = pages.overview(client, loaded=loaded, load_errors=errors, visible=viewer.sees)
        return {"title": "Overview", "data": data}

    return _page(request, "overview.html", build, active="overview")


@router.get("/models", response_class=HTMLResponse)
def models(request: Request) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_unlimited("the registry")
        return {"title": "Models", "models": queries.models_summary(client.ctx.store)}

    return _page(request, "models.html", build, active="models")


@router.get("/models/{name}", response_class=HTMLResponse)
def model(request: Request, name: str) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_unlimited("the registry")
        return {"title": f"Model {name}", "page": pages.model_page(client, name)}

    return _page(request, "model.html", build, active="models")


@router.get("/models/{name}/{number}", response_class=HTMLResponse)
def version(request: Request, name: str, number: str) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_unlimited("the registry")
        if not number.isdigit():
            raise NotFoundError(f"model {name!r} has no version {number!r}: versions are numbers")
        return {"title": f"{name}:{number}", "page": pages.version_page(client, f"{name}:{number}")}

    return _page(request, "version.html", build, active="models")


def _range_of(request: Request, default: str) -> pages.Range:
    return pages.pick_range(request.query_params.get("range"), default)


@router.get("/endpoints/{name}", response_class=HTMLResponse)
def endpoint(request: Request, name: str) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_endpoint(name)
        loaded, errors = _gateway_state(request)
        page = pages.endpoint_page(
            client, name, range_=_range_of(request, "24h"), loaded=loaded, load_errors=errors
        )
        done = request.query_params.get("done", "")
        notice = ""
        if done.isdigit():
            revision = next((r.revision for r in page.revisions if r.revision.number == int(done)), None)
            if revision is not None:
                notice = f"Revision {revision.number} ({revision.kind}) is now recorded: {revision.reason}"
        return {
            "title": f"Endpoint {name}",
            "page": page,
            "range_options": pages.RANGES,
            "notice": notice,
            "can_operate": viewer.may(Permission.OPERATE) and not viewer.limited,
        }

    return _page(request, "endpoint.html", build, active="overview")


@router.get("/endpoints/{name}/monitoring", response_class=HTMLResponse)
def monitoring(request: Request, name: str) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_endpoint(name)
        page = pages.monitoring_page(
            client, name, range_=_range_of(request, "7d"), window=request.query_params.get("window")
        )
        return {"title": f"Monitoring {name}", "page": page, "range_options": pages.RANGES}

    return _page(request, "monitoring.html", build, active="monitoring")


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring_index(request: Request) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        return {"title": "Monitoring", "rows": pages.monitors(client, visible=viewer.sees)}

    return _page(request, "monitoring_index.html", build, active="monitoring")


@router.get("/alerts", response_class=HTMLResponse)
def alerts(request: Request) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        endpoint = request.query_params.get("endpoint") or None
        if endpoint:
            viewer.require_endpoint(endpoint)
        page = pages.alerts_page(
            client, state=request.query_params.get("state", "open"), endpoint=endpoint, visible=viewer.sees
        )
        acked = request.query_params.get("acked", "")
        silenced = request.query_params.get("silenced", "")
        notice = ""
        if acked.isdigit():
            notice = f"Alert {acked} is acknowledged: it is not notified again until it resolves."
        elif silenced.isdigit():
            notice = f"Silence {silenced} is in force."
        return {
            "title": "Alerts",
            "page": page,
            "filters": pages.ALERT_FILTERS,
            "notice": notice,
            "alert_state": pages.alert_state,
            "can_operate": viewer.may(Permission.OPERATE) and not viewer.limited,
        }

    return _page(request, "alerts.html", build, active="alerts")


@router.get("/pipelines", response_class=HTMLResponse)
def pipelines_list(request: Request) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_unlimited("pipelines")
        return {
            "title": "Pipelines",
            "page": pages.pipelines_page(client),
            "run_state": pages.run_state,
            "can_run": viewer.may(Permission.REGISTER),
        }

    return _page(request, "pipelines.html", build, active="pipelines")


@router.get("/pipelines/runs/{run_id}", response_class=HTMLResponse)
def pipeline_run(request: Request, run_id: str) -> Response:
    def build(viewer: Viewer, client: LocalClient) -> Mapping[str, Any]:
        viewer.require_unlimited("pipelines")
        page = pages.run_page(client, run_id)
        return {"title": f"Run {page.run.ref}", "page": page, "run_state": pages.run_state}

    return _page(request, "run.html", build, active="pipelines")


# ------------------------------------------------------------------------------------------ actions


class _Action:
    """One action: its confirmation page, what it needs, and what it does once confirmed."""

    def __init__(
        self,
        *,
        permission: Permission,
        what: str,
        summary: Callable[[LocalClient, Mapping[str, str]], tuple[str, list[str], dict[str, str]]],
        run: Callable[[LocalClient, Mapping[str, str], str], str],
        cancel: Callable[[Mapping[str, str]], str],
        endpoint: Callable[[Mapping[str, str]], str | None] = lambda _: None,
    ) -> None:
        self.permission, self.what, self.summary, self.run = permission, what, summary, run
        self.cancel, self.endpoint = cancel, endpoint


def _confirm_page(
    request: Request,
    action: _Action,
    fields: Mapping[str, str],
    *,
    error: str = "",
    reason: str = "",
    status: int = 200,
) -> Response:
    try:
        viewer = _viewer(request)
        scope = action.endpoint(fields)
        if scope is not None:
            viewer.require_endpoint(scope)
        client = acting_client(_base_client(request), viewer)
        title, lines, hidden = action.summary(client, fields)
    except Exception as exc:
        return _error_page(request, exc)
    allowed = viewer.may(action.permission) and not viewer.limited
    refusal = ""
    if not allowed:
        try:
            viewer.require(action.permission, action.what)
            viewer.require_unlimited(action.what)
        except PermissionDeniedError as exc:
            refusal = str(exc)
    return _render(
        request,
        "confirm.html",
        {
            "title": title,
            "lines": lines,
            "hidden": hidden,
            "action_url": request.url.path,
            "cancel_url": action.cancel(fields),
            "error": error or refusal,
            "reason": reason,
            "allowed": allowed,
            "max_reason": MAX_REASON,
        },
        status=status if not refusal else 403,
    )


async def _confirmed(request: Request, action: _Action, path_fields: Mapping[str, str]) -> Response:
    form = await request.form()
    fields = {**{k: str(v) for k, v in form.items() if isinstance(v, str)}, **path_fields}
    # Checking the session and changing the store both wait on the database: off the event loop.
    return await run_in_threadpool(_confirm_and_run, request, action, fields)


def _confirm_and_run(request: Request, action: _Action, fields: dict[str, str]) -> Response:
    reason = fields.pop("reason", "").strip()
    given_csrf = fields.pop("csrf", None)
    try:
        viewer = _viewer(request)
        check_form(viewer, given_csrf, request.headers.get("origin"), request.headers.get("host"))
        scope = action.endpoint(fields)
        if scope is not None:
            viewer.require_endpoint(scope)
        viewer.require(action.permission, action.what)
        viewer.require_unlimited(action.what)
    except Exception as exc:
        return _error_page(request, exc)
    if not reason:
        return _confirm_page(
            request, action, fields, error="reason: say why; it is kept with the change", status=422
        )
    if len(reason) > MAX_REASON:
        return _confirm_page(
            request,
            action,
            fields,
            error=f"reason: at most {MAX_REASON} characters",
            reason=reason,
            status=422,
        )
    client = acting_client(_base_client(request), viewer)
    try:
        target = action.run(client, fields, reason)
    except PasserelleError as exc:
        return _confirm_page(
            request, action, fields, error=str(exc), reason=reason, status=kind_of(exc).status
        )
    except Exception as exc:
        return _error_page(request, exc)
    return RedirectResponse(target, status_code=303)


def _endpoint_url(name: str, **query: str) -> str:
    url = f"/endpoints/{quote(name)}"
    return f"{url}?{urlencode(query)}" if query else url


def _policy_lines(client: LocalClient, name: str) -> tuple[list[str], str]:
    info = client.get_endpoint(name).endpoint
    return [f"Now (revision {info.revision}): {pages.policy_text(info.policy)}"], pages.policy_text(
        info.policy
    )


def _promote_summary(client: LocalClient, fields: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    name, ref = fields["name"], fields.get("ref", "").strip()
    if not ref:
        raise InvalidInputError("ref: name the version to promote, such as churn:4 or churn@challenger")
    lines, _ = _policy_lines(client, name)
    version_info = client.get_version(ref)
    lines.append(
        f"After: {version_info.ref} takes 100% of the traffic and becomes {version_info.model}@champion"
    )
    return f"Promote {version_info.ref} on {name}", lines, {"ref": ref}


def _promote(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    revision = client.promote(fields["name"], fields["ref"].strip(), reason=reason)
    return _endpoint_url(fields["name"], done=str(revision.number))


def _rollback_summary(
    client: LocalClient, fields: Mapping[str, str]
) -> tuple[str, list[str], dict[str, str]]:
    name, to = fields["name"], fields.get("to", "")
    if not to.isdigit():
        raise InvalidInputError(f"to: the revision to roll back to is a number, got {to!r}")
    lines, _ = _policy_lines(client, name)
    old = client.endpoints.revision(name, int(to))
    lines.append(f"After: the policy of revision {old.number} again: {pages.policy_text(old.policy)}")
    lines.append(
        f"Revision {old.number} was made by {old.created_by} at {_when(old.created_at)}: {old.reason or DASH}"
    )
    return f"Roll {name} back to revision {old.number}", lines, {"to": to}


def _rollback(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    revision = client.rollback(fields["name"], to=int(fields["to"]), reason=reason)
    return _endpoint_url(fields["name"], done=str(revision.number))


_WEIGHT = "weight:"


def _weights_of(fields: Mapping[str, str]) -> list[tuple[str, int]]:
    routes: list[tuple[str, int]] = []
    for key, value in fields.items():
        if not key.startswith(_WEIGHT):
            continue
        ref, text = key[len(_WEIGHT) :], value.strip()
        try:
            weight = int(text)
        except ValueError:
            raise InvalidInputError(
                f"weight of {ref}: a whole percentage from 0 to 100, got {text!r}"
            ) from None
        routes.append((ref, weight))
    if not routes:
        raise InvalidInputError("weights: give a weight for at least one version")
    return routes


def _weights_summary(client: LocalClient, fields: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    name = fields["name"]
    routes = _weights_of(fields)
    lines, _ = _policy_lines(client, name)
    lines.append("After: " + " · ".join(f"{ref} {weight}%" for ref, weight in routes))
    total = sum(w for _, w in routes)
    if total != 100:
        lines.append(f"These weights add up to {total}%, not 100%: the server will refuse them.")
    return f"Change the weights of {name}", lines, {f"{_WEIGHT}{ref}": str(w) for ref, w in routes}


def _weights(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    revision = client.set_weights(fields["name"], _weights_of(fields), reason=reason)
    return _endpoint_url(fields["name"], done=str(revision.number))


def _alert_of(client: LocalClient, alert_id: str) -> Any:
    if not alert_id.isdigit():
        raise NotFoundError(f"alert {alert_id!r} does not exist")
    found = [a for a in client.list_alerts(limit=10_000) if a.id == int(alert_id)]
    if not found:
        raise NotFoundError(f"alert {alert_id} does not exist")
    return found[0]


def _ack_summary(client: LocalClient, fields: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    alert = _alert_of(client, fields["alert_id"])
    lines = [
        f"Alert {alert.id}: {alert.rule} on {alert.endpoint} ({alert.severity}), {alert.state}",
        alert.summary,
        "After: it stays firing until its condition clears, but is not notified again.",
    ]
    return f"Acknowledge alert {alert.id}", lines, {}


def _ack(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    alert = client.ack_alert(int(fields["alert_id"]), reason=reason)
    return "/alerts?" + urlencode({"acked": str(alert.id)})


def _silence_summary(client: LocalClient, fields: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    name, rule = fields["name"], fields.get("rule", "*").strip() or "*"
    duration = fields.get("duration", "2h").strip() or "2h"
    seconds = parse_duration(duration, "duration")
    client.get_endpoint(name)
    what = "every alert rule" if rule == "*" else f"the rule {rule}"
    lines = [
        f"Mute the notifications of {what} of {name} for {duration} "
        f"(until {_when(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))}).",
        "Alerts still change state while silenced; only their notifications are held.",
    ]
    return f"Silence {name}", lines, {"rule": rule, "duration": duration}


def _silence(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    seconds = parse_duration(fields.get("duration", "2h"), "duration")
    made = client.silence(
        fields["name"],
        rule=fields.get("rule", "*") or "*",
        duration=dt.timedelta(seconds=seconds),
        comment=reason,
    )
    return "/alerts?" + urlencode({"silenced": str(made.id), "endpoint": fields["name"]})


def _run_summary(client: LocalClient, fields: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    from passerelle import pipelines

    info = pipelines.get_pipeline(client.ctx, fields["name"])
    last = info.last_run
    lines = [
        f"Queue a manual run of the pipeline {info.name} (defined in {info.source or 'python'}).",
        "A server running pipelines picks it up within seconds; its log appears on the run's page.",
    ]
    if last is not None:
        lines.append(f"Its last run: #{last.number}, {last.state}, created {_when(last.created_at)}.")
    return f"Start a run of {info.name}", lines, {}


def _run(client: LocalClient, fields: Mapping[str, str], reason: str) -> str:
    from passerelle import pipelines

    run = pipelines.start_run(client.ctx, fields["name"], "manual", reason=reason)
    return f"/pipelines/runs/{quote(run.id)}"


_ENDPOINT: Callable[[Mapping[str, str]], str | None] = lambda fields: fields.get("name")  # noqa: E731

PROMOTE = _Action(
    permission=Permission.OPERATE,
    what="promote",
    summary=_promote_summary,
    run=_promote,
    cancel=lambda f: _endpoint_url(f["name"]),
    endpoint=_ENDPOINT,
)
ROLLBACK = _Action(
    permission=Permission.OPERATE,
    what="roll back",
    summary=_rollback_summary,
    run=_rollback,
    cancel=lambda f: _endpoint_url(f["name"]),
    endpoint=_ENDPOINT,
)
WEIGHTS = _Action(
    permission=Permission.OPERATE,
    what="change weights",
    summary=_weights_summary,
    run=_weights,
    cancel=lambda f: _endpoint_url(f["name"]),
    endpoint=_ENDPOINT,
)
ACK = _Action(
    permission=Permission.OPERATE,
    what="acknowledge alerts",
    summary=_ack_summary,
    run=_ack,
    cancel=lambda f: "/alerts",
)
SILENCE = _Action(
    permission=Permission.OPERATE,
    what="silence alerts",
    summary=_silence_summary,
    run=_silence,
    cancel=lambda f: "/alerts",
    endpoint=_ENDPOINT,
)
RUN = _Action(
    permission=Permission.REGISTER,
    what="start pipeline runs",
    summary=_run_summary,
    run=_run,
    cancel=lambda f: "/pipelines",
)


def _query(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items()}


@router.get("/endpoints/{name}/promote", response_class=HTMLResponse)
def promote_form(request: Request, name: str) -> Response:
    return _confirm_page(request, PROMOTE, {**_query(request), "name": name})


@router.post("/endpoints/{name}/promote")
async def promote_post(request: Request, name: str) -> Response:
    return await _confirmed(request, PROMOTE, {"name": name})


@router.get("/endpoints/{name}/rollback", response_class=HTMLResponse)
def rollback_form(request: Request, name: str) -> Response:
    return _confirm_page(request, ROLLBACK, {**_query(request), "name": name})


@router.post("/endpoints/{name}/rollback")
async def rollback_post(request: Request, name: str) -> Response:
    return await _confirmed(request, ROLLBACK, {"name": name})


@router.get("/endpoints/{name}/weights", response_class=HTMLResponse)
def weights_form(request: Request, name: str) -> Response:
    return _confirm_page(request, WEIGHTS, {**_query(request), "name": name})


@router.post("/endpoints/{name}/weights")
async def weights_post(request: Request, name: str) -> Response:
    return await _confirmed(request, WEIGHTS, {"name": name})


@router.get("/endpoints/{name}/silence", response_class=HTMLResponse)
def silence_form(request: Request, name: str) -> Response:
    return _confirm_page(request, SILENCE, {**_query(request), "name": name})


@router.post("/endpoints/{name}/silence")
async def silence_post(request: Request, name: str) -> Response:
    return await _confirmed(request, SILENCE, {"name": name})


@router.get("/alerts/{alert_id}/ack", response_class=HTMLResponse)
def ack_form(request: Request, alert_id: str) -> Response:
    return _confirm_page(request, ACK, {"alert_id": alert_id})


@router.post("/alerts/{alert_id}/ack")
async def ack_post(request: Request, alert_id: str) -> Response:
    return await _confirmed(request, ACK, {"alert_id": alert_id})


@router.get("/pipelines/{name}/run", response_class=HTMLResponse)
def run_form(request: Request, name: str) -> Response:
    return _confirm_page(request, RUN, {"name": name})


@router.post("/pipelines/{name}/run")
async def run_post(request: Request, name: str) -> Response:
    return await _confirmed(request, RUN, {"name": name})


# ------------------------------------------------------------------------------------------ sign-in


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    auth, authenticator = _authenticator(request)
    if not auth:
        return RedirectResponse("/", status_code=303)
    error = ""
    if request.cookies.get(SESSION_COOKIE):
        # Sent back here with a cookie: say why it no longer works (expired, revoked).
        try:
            viewer_of(auth=True, authenticator=authenticator, cookies=dict(request.cookies))
        except PasserelleError as exc:
            error = str(exc)
    return _render(
        request,
        "login.html",
        {"title": "Sign in", "next": safe_next(request.query_params.get("next")), "error": error},
    )


@router.post("/login")
async def login(request: Request) -> Response:
    auth, authenticator = _authenticator(request)
    if not auth or authenticator is None:
        return RedirectResponse("/", status_code=303)
    form = await request.form()
    token = form.get("token")
    target = safe_next(form.get("next"))
    try:
        principal = await run_in_threadpool(sign_in, authenticator, token if isinstance(token, str) else "")
    except (AuthenticationError, PermissionDeniedError) as exc:
        return _render(
            request, "login.html", {"title": "Sign in", "next": target, "error": str(exc)}, status=401
        )
    except PasserelleError as exc:
        return _error_page(request, exc)
    log.info("console: %s signed in", principal.actor)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        str(token).strip(),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    given = form.get("csrf")
    return await run_in_threadpool(_logout, request, given if isinstance(given, str) else None)


def _logout(request: Request, given: str | None) -> Response:
    try:
        viewer = _viewer(request)
        check_form(viewer, given, request.headers.get("origin"), request.headers.get("host"))
    except AuthenticationError:
        pass  # signed out already, or the token was revoked: clearing the cookie is all that is left
    except Exception as exc:
        return _error_page(request, exc)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ------------------------------------------------------------------------------------------ assets


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("passerelle.ui") / "static" / name).read_bytes()


@router.get("/static/console/{name}")
def asset(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        return Response("no such file", status_code=404, media_type="text/plain")
    return Response(_asset(name), media_type=media, headers={"Cache-Control": "public, max-age=3600"})
