"""Who a request acts as, what it may do, and how much of it: the single place where that is decided.

Handlers get their client through :data:`ClientDep`, which acts as :func:`acting_user`. What
a request may do is decided before any handler runs, by :class:`Gatekeeper`, an ASGI
middleware in front of every route of the app:

- every route has a declared :class:`Permission` (or is public). Declarations sit next to
  each router's inclusion, as :class:`Guarded` (see :mod:`passerelle.api.app`); a route
  nothing declares is refused to every token, so a route cannot be forgotten;
- with authentication on (``settings.auth``), a request to a route that is not public needs
  a valid token (401 otherwise) whose role holds the route's permission (403 otherwise,
  naming the roles that do). Checked tokens are remembered for ``token_cache_seconds``:
  the hot path costs a hash and dictionary lookups, no database query;
- whatever the authentication: a body larger than the limit is refused with 413 as soon as
  it is known, a caller over its rate limit gets 429 with Retry-After, and a request whose
  answer has not started within the timeout gets 504 (408 when its body stopped arriving).

With authentication off, the caller may say who it is in the ``X-Passerelle-User`` header
and is believed, as it always was: that is for a server only this machine can reach.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from passerelle.api.errors import AnswerTimeoutError, RequestTimeoutError, error_response
from passerelle.api.wire import USER_HEADER
from passerelle.auth import (
    AuthenticationError,
    Authenticator,
    Permission,
    PermissionDeniedError,
    Principal,
    RateLimitedError,
    RateLimiter,
    roles_with,
)
from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError, PasserelleError, PayloadTooLargeError
from passerelle.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from passerelle.store import Store

log = logging.getLogger("passerelle.api")

_USER_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,199}$")

# -- identity of a request, for handlers -------------------------------------------------------


def app_client(request: Request) -> LocalClient:
    """The one :class:`LocalClient` of the app (its database and artifact store connections)."""
    client: LocalClient = request.app.state.passerelle_client
    return client


def principal_of(request: Request) -> Principal | None:
    """The checked token the request came with; None when authentication is off (or the route public)."""
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else None


def acting_user(
    request: Request,
    user: Annotated[
        str | None,
        Header(
            alias=USER_HEADER,
            description="Who acts, as recorded in the audit log; default: the server's configured user. "
            "Ignored when the server requires tokens: the token's name is recorded instead.",
            max_length=200,
        ),
    ] = None,
) -> str:
    """The identity a request acts as, as recorded in the audit log.

    With authentication on it is the token: ``token:<name>``, whatever the header says (a
    header anyone can set must not choose whom the audit log blames). Without, the caller
    says who it is in the header and is believed.
    """
    principal = principal_of(request)
    if principal is not None:
        return principal.actor
    access: AccessControl | None = getattr(request.app.state, "access", None)
    if access is not None and access.auth:
        # Only a public route can get here without a token; none of them acts on anything.
        raise AuthenticationError("authentication required")
    if user is None or not user.strip():
        return app_client(request).ctx.actor
    user = user.strip()
    if not _USER_RE.match(user):
        raise InvalidInputError(f"header {USER_HEADER}: use at most 200 printable ASCII characters")
    return user


class _ActingClient(LocalClient):
    """The app's client as one user: the app's connections, the request's actor.

    Built per request, so it costs no connection: the services of a LocalClient open the
    stores only when first used, and by then they are the app's.
    """

    def __init__(self, base: LocalClient, actor: str) -> None:
        super().__init__(base.settings, actor=actor)
        self.ctx._store = base.ctx.store
        self.ctx._artifacts = base.ctx.artifacts

    def close(self) -> None:
        """Nothing to release: the stores belong to the app's client, closed with the app."""


def acting_client(
    base: Annotated[LocalClient, Depends(app_client)],
    actor: Annotated[str, Depends(acting_user)],
) -> LocalClient:
    return _ActingClient(base, actor)


ClientDep = Annotated[LocalClient, Depends(acting_client)]


# -- what each route needs ---------------------------------------------------------------------

#: a route anyone may call, token or not
PUBLIC: Final = "public"
#: what a route needs: a permission, several (any of which will do), or nothing
Requirement = Permission | tuple[Permission, ...] | Literal["public"]

# The path parameter naming the endpoint a route is about: /…/endpoints/{name}/… and the
# Open Inference Protocol's /v2/models/{name}/… (there, a "model" is an endpoint).
_ENDPOINT_IN_PATH = re.compile(r"/(?:endpoints|v2/models)/\{(\w+)(?::\w+)?\}")
_READS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class RouteRule:
    """What one route needs: any one of ``permissions`` (none: public)."""

    permissions: frozenset[Permission]
    #: the path parameter naming the endpoint the route is about, if it is about one
    endpoint_param: str | None = None
    #: whether the answer must start within the request timeout (long work is exempt)
    timed: bool = True

    @property
    def public(self) -> bool:
        return not self.permissions


@dataclass(frozen=True)
class Guarded:
    """A router and the permissions its routes need, declared where the router is included.

    Routes answering only GET (and HEAD) need ``read``; every other route needs ``write``;
    ``overrides`` sets single routes, keyed ``"METHOD /full/path"`` as in the OpenAPI
    document (``"POST /api/v1/endpoints/{name}/feedback"``). ``untimed`` names, the same
    way, routes whose work may rightly outlast the request timeout (loading a model, checking
    every artifact): they get no 504, only the 408 of a body that stops arriving. A key
    naming no route of the router is refused when the app is built, so a renamed route
    cannot lose its declaration silently.
    """

    router: APIRouter
    read: Requirement
    write: Requirement
    overrides: Mapping[str, Requirement] = field(default_factory=dict)
    untimed: Collection[str] = ()

    @property
    def routes(self) -> list[BaseRoute]:
        """The router's routes, so that a Guarded reads like the router it guards."""
        return self.router.routes

    def rule(self, methods: set[str], path: str) -> RouteRule:
        default = self.read if methods and methods <= _READS else self.write
        found = (req for key, req in self.overrides.items() if _key_matches(key, methods, path))
        timed = not any(_key_matches(key, methods, path) for key in self.untimed)
        return rule_of(next(found, default), path, timed=timed)

    def declared(self) -> set[str]:
        return {*self.overrides, *self.untimed}


def rule_of(requirement: Requirement, path: str, *, timed: bool = True) -> RouteRule:
    if requirement == PUBLIC:
        return RouteRule(frozenset(), timed=timed)
    needed = (requirement,) if isinstance(requirement, Permission) else requirement
    found = _ENDPOINT_IN_PATH.search(path)
    return RouteRule(frozenset(Permission(p) for p in needed), found.group(1) if found else None, timed)


def _key_matches(key: str, methods: set[str], path: str) -> bool:
    method, _, key_path = key.partition(" ")
    return key_path == path and method.upper() in methods


@dataclass(frozen=True)
class RouteEntry:
    """One route of an app as the gatekeeper sees it."""

    path: str
    methods: frozenset[str]
    rule: RouteRule | None
    matcher: Any = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{','.join(sorted(self.methods - {'HEAD'}) or sorted(self.methods))} {self.path}"


@dataclass(frozen=True)
class _Matched:
    entry: RouteEntry | None
    params: Mapping[str, Any]


_NO_ROUTE = _Matched(None, {})
_MATCH_CACHE_MAX = 4096
#: an unknown path rebuilds the route table at most this often
_REBUILD_AFTER_S = 1.0


def _route_contexts(routes: list[BaseRoute]) -> Iterator[tuple[Any, BaseRoute, str | None, set[str] | None]]:
    """(matcher, original route, effective path, methods) of every route, included routers unfolded."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers stayed whole: routes are copied in
        for route in routes:
            yield route, route, getattr(route, "path", None), getattr(route, "methods", None)
        return
    for context in iter_route_contexts(routes):
        yield context, context.original_route, context.path, context.methods


class AccessControl:
    """The permissions of an app's routes, its token checks and its limits. One per app."""

    def __init__(self, settings: Settings, store: Store | Callable[[], Store]) -> None:
        self.auth = settings.auth
        self.authenticator = Authenticator(store, ttl_s=settings.token_cache_seconds)
        self.limiter = (
            RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
            if settings.rate_limit_per_s > 0
            else None
        )
        self.max_body_bytes = settings.max_body_bytes
        self.max_upload_bytes = settings.max_upload_bytes
        self.timeout_s = settings.request_timeout_s
        #: whether a request must be matched to its route before the app runs
        self.needs_routes = self.auth or self.limiter is not None or self.timeout_s > 0
        self._app: FastAPI | None = None
        self._rules: dict[int, RouteRule] = {}
        self._guards: dict[int, Guarded] = {}
        self._built_at = 0.0
        self._public_paths: set[str] = set()
        self._table: list[RouteEntry] | None = None
        self._table_of = -1
        self._matches: dict[tuple[str, str], _Matched] = {}

    def bind(self, app: FastAPI) -> None:
        self._app = app

    def include(self, app: FastAPI, item: Guarded | APIRouter) -> None:
        """Include a router in ``app`` with the permissions of its routes.

        A bare :class:`APIRouter` is included too, but declares nothing: with authentication
        on, its routes are refused to every token until it is wrapped in :class:`Guarded`.
        """
        router = item.router if isinstance(item, Guarded) else item
        before = len(app.router.routes)
        app.include_router(router)
        self._table = None
        if not isinstance(item, Guarded):
            return
        added = app.router.routes[before:]
        # Kept by inclusion rather than by route: a route added to the router later gets the
        # router's rules too.
        self._guards.update((id(entry), item) for entry in added)
        used: set[str] = set()
        for _matcher, _route, path, methods in _route_contexts(added):
            if path is not None:
                used |= {key for key in item.declared() if _key_matches(key, set(methods or ()), path)}
        unknown = sorted(item.declared() - used)
        if unknown:
            raise ValueError(f"permissions are declared for routes the router does not have: {unknown}")

    def declare(self, route: BaseRoute, requirement: Requirement) -> None:
        self._rules[id(route)] = rule_of(requirement, getattr(route, "path", ""))
        self._table = None

    def public_paths(self, *paths: str | None) -> None:
        """Routes the framework adds itself (the OpenAPI document, the docs page): public."""
        self._public_paths.update(p for p in paths if p)
        self._table = None

    def table(self, *, fresh: bool = False) -> list[RouteEntry]:
        """Every route of the app with its rule (None: nothing declares one)."""
        app = self._app
        assert app is not None, "AccessControl.bind(app) first"
        routes = app.router.routes
        if fresh or self._table is None or self._table_of != len(routes):
            entries = []
            for top in routes:
                guard = self._guards.get(id(top))
                for matcher, route, path, methods in _route_contexts([top]):
                    if path is None:
                        continue
                    rule = self._rules.get(id(route))
                    if rule is None and guard is not None:
                        rule = guard.rule(set(methods or ()), path)
                    if rule is None and path in self._public_paths:
                        rule = RouteRule(frozenset())
                    entries.append(RouteEntry(path, frozenset(methods or ()), rule, matcher))
            self._table, self._table_of, self._built_at = entries, len(routes), time.monotonic()
            self._matches.clear()
        return self._table

    def match(self, scope: Scope) -> _Matched:
        key = (scope["method"], scope["path"])
        found = self._matches.get(key)
        if found is not None:
            return found
        found = self._scan(scope, self.table())
        if found is _NO_ROUTE:
            # Not remembered (unknown paths are unbounded), but a route added to an included
            # router since the table was built must not pass for an unknown one.
            if time.monotonic() - self._built_at >= _REBUILD_AFTER_S:
                found = self._scan(scope, self.table(fresh=True))
            return found
        if len(self._matches) >= _MATCH_CACHE_MAX:
            self._matches.clear()
        self._matches[key] = found
        return found

    @staticmethod
    def _scan(scope: Scope, entries: list[RouteEntry]) -> _Matched:
        for entry in entries:
            matched, child = entry.matcher.matches(scope)
            if matched is Match.FULL:
                return _Matched(entry, dict(child.get("path_params", {})))
        return _NO_ROUTE

    def authorize(self, principal: Principal, matched: _Matched, method: str, path: str) -> None:
        entry = matched.entry
        if entry is None:
            return  # no such route: the app answers 404 or 405 to this authenticated caller
        rule = entry.rule
        if rule is None:
            log.error("%s %s has no declared permission: it is refused to every token", method, entry.path)
            raise PermissionDeniedError(
                f"{method} {entry.path} has no declared permission, so the server refuses it to every "
                "token; the router that defines it must be included with Guarded(...) in passerelle.api.app"
            )
        if rule.public:
            return
        who = f"token {principal.name!r}"
        if not any(principal.allows(p) for p in rule.permissions):
            needs = " or ".join(sorted(p.value for p in rule.permissions))
            roles = roles_with(rule.permissions)
            role_text = roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + f" or {roles[-1]}"
            scoped = " limited to endpoints" if principal.endpoints else ""
            raise PermissionDeniedError(
                f"{who} has the role {principal.role}{scoped}, which may not {method} {path}: "
                f"that needs the {needs} permission, held by the role {role_text}"
            )
        if principal.endpoints:
            endpoint = matched.params.get(rule.endpoint_param) if rule.endpoint_param else None
            limited = ", ".join(principal.endpoints)
            if endpoint is None:
                raise PermissionDeniedError(
                    f"{who} is limited to the endpoint(s) {limited}: {method} {path} is not about one of them"
                )
            if endpoint not in principal.endpoints:
                raise PermissionDeniedError(
                    f"{who} is limited to the endpoint(s) {limited}; it may not act on endpoint {endpoint!r}"
                )

    def body_limit(self, content_type: bytes | None) -> tuple[int, str]:
        if content_type is not None and content_type.lower().startswith(b"multipart/form-data"):
            return self.max_upload_bytes, "max_upload_bytes"
        return self.max_body_bytes, "max_body_bytes"


def access_of(app: Any) -> AccessControl:
    """The :class:`AccessControl` of an app built by :func:`passerelle.api.app.create_app`."""
    access: AccessControl = app.state.access
    return access


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """Content-Type, Content-Length and Authorization, in one pass (ASGI header names are lower case)."""
    content_type = length = authorization = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value
        elif key == b"content-length":
            length = value
        elif key == b"authorization":
            authorization = value
    return content_type, length, authorization


def _request_id(scope: Scope) -> str:
    found = scope.get("state", {}).get("request_id")
    return found if isinstance(found, str) else uuid.uuid4().hex


def bearer_token(header: bytes | None) -> str:
    """The secret of an ``Authorization: Bearer <secret>`` header."""
    value = header.decode("latin-1") if header is not None else ""
    if not value.strip():
        raise AuthenticationError(
            "authentication required: send an API token as 'Authorization: Bearer <token>' "
            "(passerelle's clients send the token set in PASSERELLE_TOKEN)"
        )
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return secret.strip()


# -- the middleware -----------------------------------------------------------------------------


class Gatekeeper:
    """Authentication, permissions and limits in front of every route of an app."""

    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.guard(self.app, scope, receive, send)

    async def guard(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run ``app`` on this HTTP request if it is admitted, with its body limit and timeout.

        The serving gateway's inference lane calls this directly with its own handler, so its
        routes get the same checks as every other route without the middleware chain.
        """
        access = self.access
        content_type, declared, authorization = _headers(scope)
        limit, limit_name = access.body_limit(content_type)
        matched = access.match(scope) if access.needs_routes else _NO_ROUTE
        rule = matched.entry.rule if matched.entry is not None else None
        try:
            if access.auth or access.limiter is not None:
                await self._admit(scope, matched, authorization)
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLargeError(
                    f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes ({limit_name})"
                )
        except PasserelleError as exc:
            await error_response(exc, _request_id(scope))(scope, receive, send)
            return
        timed = rule is None or rule.timed
        await _Exchange(app, scope, receive, send, limit, limit_name, access.timeout_s, timed).run()

    async def _admit(self, scope: Scope, matched: _Matched, authorization: bytes | None) -> None:
        access = self.access
        public = matched.entry is not None and matched.entry.rule is not None and matched.entry.rule.public
        principal: Principal | None = None
        if access.auth and not public:
            secret = bearer_token(authorization)
            principal = access.authenticator.remembered(secret)
            if principal is None:
                principal = await run_in_threadpool(access.authenticator.authenticate, secret)
            access.authorize(principal, matched, scope["method"], scope["path"])
            scope.setdefault("state", {})["principal"] = principal
        limiter = access.limiter
        if limiter is not None and not public:
            if principal is not None:
                caller, who = principal.name, f"token {principal.name!r}"
            else:
                host = (scope.get("client") or ("unknown", 0))[0]
                caller, who = f"address:{host}", f"address {host}"
            wait = limiter.take(caller)
            if wait > 0:
                raise RateLimitedError(
                    f"too many requests from {who}: the limit is {limiter.rate:g} a second with bursts "
                    f"of {limiter.burst:g}; retry after {math.ceil(wait * 10) / 10:g} s",
                    retry_after_s=wait,
                )


class _Exchange:
    """One request going through the app, with the body limit and the timeout applied to it.

    Whatever answers first is the answer: the app, or a 413/408/504 sent from here. Once one of
    the latter is sent, whatever the app still sends is dropped. The app is not cancelled: a
    model call or a transaction under way finishes (cancelling half a change would be worse
    than an answer nobody reads), and the connection is closed so nothing waits on it.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int,
        limit_name: str,
        timeout_s: float,
        timed: bool = True,
    ) -> None:
        self.app, self.scope, self._receive, self._send = app, scope, receive, send
        self.limit, self.limit_name, self.timeout_s = limit, limit_name, timeout_s
        #: whether the answer has a deadline too, or only the arrival of the body
        self.timed = timed
        self.received = 0
        self.body_done = False
        self.waiting_for_body = False
        self.started = False
        self.answered = False
        self.answer: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        if self.timeout_s > 0:
            self.timer = self.loop.call_at(self.last_activity + self.timeout_s, self._expire)
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.answered:
                raise
            # The caller has its answer; what the app made of the cut-off request is no news.
            log.debug("request %s ended after its answer", _request_id(self.scope), exc_info=True)
        finally:
            if self.timer is not None:
                self.timer.cancel()
        if self.answer is not None:
            await self.answer

    async def receive(self) -> Message:
        if not self.body_done:
            self.waiting_for_body = True
        try:
            message = await self._receive()
        finally:
            self.waiting_for_body = False
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        self.last_activity = self.loop.time()
        if not message.get("more_body", False):
            self.body_done = True
        if self.received > self.limit:
            if not self.answered and not self.started:
                self.answered = True
                error = PayloadTooLargeError(
                    f"request body exceeds the limit of {self.limit} bytes ({self.limit_name})"
                )
                await self._answer_with(error, close=False)
            return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def _expire(self) -> None:
        self.timer = None
        if self.started or self.answered:
            return
        now = self.loop.time()
        due = self.last_activity + self.timeout_s
        if now < due:
            # A piece of the body arrived since this was scheduled.
            self.timer = self.loop.call_at(due, self._expire)
            return
        if not self.timed and not self.waiting_for_body:
            if not self.body_done:
                # The app may read the rest of the body later: look again then.
                self.timer = self.loop.call_at(now + self.timeout_s, self._expire)
            return
        self.answered = True
        error: PasserelleError
        if self.waiting_for_body:
            error = RequestTimeoutError(
                f"the request body stopped arriving: nothing came for {self.timeout_s:g} s "
                "(request_timeout_s)"
            )
        else:
            error = AnswerTimeoutError(
                f"no answer within {self.timeout_s:g} s (request_timeout_s); the request may still take "
                f"effect: check before sending a change again (request id {_request_id(self.scope)})"
            )
        self.answer = self.loop.create_task(self._answer_with(error, close=True))

    async def _answer_with(self, error: PasserelleError, *, close: bool) -> None:
        # Closing: the app may still be working on this request, and the connection must not
        # carry the caller's next request meanwhile.
        response = error_response(error, _request_id(self.scope), {"Connection": "close"} if close else None)
        await response(self.scope, self._receive, self._send)
