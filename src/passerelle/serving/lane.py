"""The inference lane: prediction requests answered straight from ASGI.

A prediction through the FastAPI app passes about twenty layers (the framework's middlewares,
ours, routing, dependency resolution, request and response objects), and each await of the
request resumes all of them: that cost more than the model call itself. The lane matches the
three inference routes on the raw path and answers them from the gateway directly, with what
every route gets from the app: the request id (``X-Request-ID``), authentication, permissions,
rate limits, the body limit and the request timeout (through the same
:class:`~passerelle.api.deps.Gatekeeper`), and the same error bodies. The FastAPI routes stay
registered: they document the requests in OpenAPI, and answer any other method (405).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from passerelle.api.deps import Gatekeeper
from passerelle.api.errors import (
    REQUEST_ID_HEADER,
    error_response,
    incoming_request_id,
    internal_error_response,
)
from passerelle.api.inference import Reply, check_body_size, infer_reply, predict_reply
from passerelle.entropy import random_hex
from passerelle.errors import PasserelleError

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from passerelle.api.deps import AccessControl
    from passerelle.serving.gateway import Gateway

log = logging.getLogger("passerelle.api")

# What Starlette's ``{name}`` and ``{version:int}`` match, so both agree on every path.
_PREDICT = re.compile(r"/v1/endpoints/([^/]+)/predict")
_INFER = re.compile(r"/v2/models/([^/]+)/infer")
_INFER_VERSION = re.compile(r"/v2/models/([^/]+)/versions/([0-9]+)/infer")
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()

Handler = Callable[["Gateway", bytes, "Scope"], Awaitable[Reply]]


def route(scope: Scope) -> Handler | None:
    """The lane's handler for this request, or None when the app answers it."""
    if scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path.startswith("/v1/"):
        found = _PREDICT.fullmatch(path)
        if found is not None:
            name = found.group(1)
            return lambda gateway, body, _scope: predict_reply(gateway, name, body)
    elif path.startswith("/v2/"):
        found = _INFER.fullmatch(path)
        if found is not None:
            name = found.group(1)
            return lambda gateway, body, scope: infer_reply(gateway, name, body, _headers(scope), None)
        found = _INFER_VERSION.fullmatch(path)
        if found is not None:
            name, version = found.group(1), int(found.group(2))
            return lambda gateway, body, scope: infer_reply(gateway, name, body, _headers(scope), version)
    return None


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI header names are lower case already.
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}


class InferenceLane:
    """Answers the inference routes of one serving app; see the module documentation."""

    def __init__(self, gateway: Gateway, access: AccessControl) -> None:
        self.gateway = gateway
        self.gatekeeper = Gatekeeper(self._not_used, access)

    async def __call__(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        rid = incoming_request_id(scope) or random_hex(16)
        # Where the gatekeeper and the error answers look for it.
        scope.setdefault("state", {})["request_id"] = rid

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await self._answer(handler, rid, scope, receive, send)

        try:
            await self.gatekeeper.guard(answer, scope, receive, send)
        except Exception:
            # Only the admission can fail here (checking a token against an unreachable
            # database, say), before anything was sent: the answer's own failures end in
            # _answer.
            log.exception("internal error (request id %s)", rid)
            await internal_error_response(rid)(scope, receive, send)

    async def _answer(self, handler: Handler, rid: str, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        try:
            body = await _read_body(receive, gateway)
            if body is None:
                return  # the caller went away; nobody to answer
            out, media_type, extra = await handler(gateway, body, scope)
        except PasserelleError as exc:
            await error_response(exc, rid)(scope, receive, send)
            return
        except Exception:
            log.exception("internal error (request id %s)", rid)
            await internal_error_response(rid)(scope, receive, send)
            return
        headers = [
            (b"content-type", media_type.encode("latin-1")),
            (b"content-length", str(len(out)).encode("latin-1")),
            (_REQUEST_ID, rid.encode("latin-1")),
        ]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    @staticmethod
    async def _not_used(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the lane passes its own handler to the gatekeeper")


async def _read_body(receive: Receive, gateway: Gateway) -> bytes | None:
    """The whole request body; None when the client disconnected (or the body limit cut it off)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            return None
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            check_body_size(gateway, size)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class ServingApp(FastAPI):
    """The serving application: a FastAPI app whose inference routes take the :attr:`lane`."""

    lane: InferenceLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and scope["type"] == "http":
            handler = route(scope)
            if handler is not None:
                await lane(handler, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def install(app: Any, gateway: Gateway) -> None:
    """Give ``app`` (a :class:`ServingApp`) its lane over ``gateway``."""
    if not isinstance(app, ServingApp):
        raise TypeError("the inference lane needs a ServingApp")
    app.lane = InferenceLane(gateway, app.state.access)
