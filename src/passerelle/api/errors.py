"""The one table from passerelle's errors to HTTP status codes, and the handlers applying it.

The server turns a :class:`~passerelle.errors.PasserelleError` into a status and an error
body with :func:`install_error_handlers`; the remote client turns the body back into the
same class with :func:`error_from_response`. Both read :data:`ERROR_TABLE`, so a mapping
changes in one place.

This module imports no web framework at import time: the remote client uses it too, and
must stay importable (and quick to import) without starting a server.
"""

from __future__ import annotations

import http
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from passerelle.auth import AuthenticationError, PermissionDeniedError, RateLimitedError
from passerelle.entropy import random_hex
from passerelle.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    MissingDependencyError,
    ModelError,
    NotFoundError,
    OverloadedError,
    PasserelleError,
    PayloadTooLargeError,
    SchemaError,
    StoreError,
    TrustRequiredError,
    UnknownFlavorError,
)
from passerelle.notify import NotifyError

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("passerelle.api")


class RequestTimeoutError(PasserelleError):
    """The request's body stopped arriving: nothing came for longer than the request timeout."""


class AnswerTimeoutError(PasserelleError):
    """The server did not start answering within the request timeout; whether the request took
    effect is unknown, so check before sending a change again."""


REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own request id is kept only when it is short and plain, so it can be logged as is.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


@dataclass(frozen=True)
class ErrorKind:
    """One row of the table: an error class, its HTTP status, and its name in error bodies."""

    error: type[PasserelleError]
    status: int
    type: str

    @property
    def description(self) -> str:
        doc = (self.error.__doc__ or "").strip().splitlines()
        return f"{self.type}: {doc[0]}" if doc else self.type


# Subclasses come before their base: the first row an exception is an instance of applies.
# The ``type`` strings are part of the API contract; they do not follow renames of classes.
ERROR_TABLE: tuple[ErrorKind, ...] = (
    # Answered with a WWW-Authenticate header: the request needs a valid API token.
    ErrorKind(AuthenticationError, 401, "Unauthenticated"),
    ErrorKind(PermissionDeniedError, 403, "PermissionDenied"),
    ErrorKind(NotFoundError, 404, "NotFound"),
    ErrorKind(InvalidReferenceError, 400, "InvalidReference"),
    ErrorKind(SchemaError, 422, "Schema"),
    ErrorKind(UnknownFlavorError, 422, "UnknownFlavor"),
    ErrorKind(PayloadTooLargeError, 413, "PayloadTooLarge"),
    ErrorKind(InvalidInputError, 422, "InvalidInput"),
    ErrorKind(ConflictError, 409, "Conflict"),
    # 500, not 409: a checksum mismatch or a missing file is damage to the server's own
    # storage. No change to the request resolves it (409 would invite the caller to retry
    # differently); an operator has to look, and monitoring counts it with the 5xx. The
    # body still names it, unlike an unexpected failure ("Internal").
    ErrorKind(IntegrityError, 500, "Integrity"),
    ErrorKind(TrustRequiredError, 403, "TrustRequired"),
    ErrorKind(MissingDependencyError, 501, "MissingDependency"),
    ErrorKind(StoreError, 503, "Store"),
    # Both answered with a Retry-After header. The caller went over its own rate limit...
    ErrorKind(RateLimitedError, 429, "RateLimited"),
    # ... or the request was fine and the server is busy.
    ErrorKind(OverloadedError, 503, "Overloaded"),
    ErrorKind(RequestTimeoutError, 408, "RequestTimeout"),
    ErrorKind(AnswerTimeoutError, 504, "Timeout"),
    # The version's own code failed on accepted input: the server's fault, not the caller's.
    ErrorKind(ModelError, 500, "Model"),
    # A notifier's receiver (webhook, mail server) refused or could not be reached.
    ErrorKind(NotifyError, 502, "Notify"),
    # A PasserelleError of no subclass above is still the caller's to act on.
    ErrorKind(PasserelleError, 400, "Error"),
)

INTERNAL_TYPE = "Internal"
_BY_TYPE = {kind.type: kind for kind in ERROR_TABLE}


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable name of the error kind, e.g. NotFound, Conflict, InvalidInput.")
    message: str = Field(description="What went wrong, in words a user can act on.")
    request_id: str = Field(description="Also in the X-Request-ID header; quote it when reporting a problem.")
    details: list[Any] | None = Field(
        None,
        description="Structured specifics: the fields of a rejected request, the rows of a schema error.",
    )


class ErrorResponse(BaseModel):
    """The body of every error answer of the API."""

    error: ErrorDetail


def kind_of(exc: PasserelleError) -> ErrorKind:
    return next(kind for kind in ERROR_TABLE if isinstance(exc, kind.error))


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for routes that may answer ``codes``, described from the table."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        kinds = [k.description for k in ERROR_TABLE if k.status == code and k.error is not PasserelleError]
        if code == 422:
            kinds.append("InvalidInput: a parameter or field of the request is missing or malformed.")
        if code == 500:
            kinds.append(f"{INTERNAL_TYPE}: an unexpected failure, logged on the server with the request id.")
        if code == 400:
            kinds.append("Error: any other error meant for the user.")
        description = " ".join(kinds) or http.HTTPStatus(code).phrase
        out[code] = {"model": ErrorResponse, "description": description}
    return out


def details_of(exc: PasserelleError) -> list[Any] | None:
    """What a client needs to rebuild ``exc`` beyond its message."""
    if isinstance(exc, SchemaError):
        return list(exc.problems)
    if isinstance(exc, MissingDependencyError):
        return [{"package": exc.package, "extra": exc.extra}]
    if isinstance(exc, OverloadedError | RateLimitedError):
        return [{"retry_after_s": exc.retry_after_s}]
    return None


def headers_of(exc: PasserelleError) -> dict[str, str]:
    if isinstance(exc, OverloadedError | RateLimitedError):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, AuthenticationError):
        return {"WWW-Authenticate": 'Bearer realm="passerelle"'}
    return {}


def error_body(type_: str, message: str, request_id: str, details: list[Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message, "request_id": request_id}
    if details is not None:
        error["details"] = details
    # Details may hold numpy scalars (a row number): make the body plain JSON whatever it holds.
    plain: dict[str, Any] = json.loads(json.dumps({"error": error}, default=_plain))
    return plain


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


# -- client side: from an answer back to the error ---------------------------------------------


def error_from_response(status: int, body: Any, *, fallback: str = "") -> PasserelleError:
    """The :class:`PasserelleError` a server's error answer stands for, with the server's message."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        # Not one of our bodies: a proxy in front of the server, or a crash before the app.
        text = fallback.strip()[:300] or (http.HTTPStatus(status).phrase if status in _HTTP_STATUSES else "")
        said = f"the server answered {status}" + (f": {text}" if text else "")
        return _rebuild(StoreError if status in _UNAVAILABLE else PasserelleError, said)
    details = error.get("details") if isinstance(error.get("details"), list) else None
    # Kinds outside the table (Internal, MethodNotAllowed...) have no class of their own.
    kind = _BY_TYPE.get(str(error.get("type")), ERROR_TABLE[-1])
    return _rebuild(kind.error, error["message"], details, str(error.get("request_id", "")))


_HTTP_STATUSES = {s.value for s in http.HTTPStatus}
# What a gateway answers when the server behind it is down or overloaded.
_UNAVAILABLE = {502, 503, 504}


def _rebuild(
    cls: type[PasserelleError], message: str, details: list[Any] | None = None, request_id: str = ""
) -> PasserelleError:
    # Some classes build their message from other arguments (MissingDependencyError): set the
    # server's message as is rather than calling their constructors.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    first = (details or [None])[0]
    extra: dict[str, Any] = first if isinstance(first, dict) else {}
    if isinstance(exc, SchemaError):
        exc.problems = [d for d in details or [] if isinstance(d, dict)]
    elif isinstance(exc, MissingDependencyError):
        exc.package = str(extra.get("package", ""))
        exc.extra = str(extra.get("extra", ""))
    elif isinstance(exc, OverloadedError | RateLimitedError):
        retry = extra.get("retry_after_s")
        exc.retry_after_s = float(retry) if isinstance(retry, int | float) else 1.0
    elif isinstance(exc, ModelError):
        exc.request_id = request_id
    return exc


# -- server side: handlers ---------------------------------------------------------------------


def request_id(request: Request) -> str:
    found = getattr(request.state, "request_id", None)
    return found if isinstance(found, str) else random_hex(16)


def _json(status: int, body: dict[str, Any], rid: str, headers: dict[str, str] | None = None) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: rid})


async def _passerelle_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PasserelleError)
    return error_response(exc, request_id(request))


def error_response(exc: PasserelleError, rid: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer to ``exc``: its status from the table, the error body, and its headers."""
    kind = kind_of(exc)
    if kind.status >= 500:
        logger.error("%s (request id %s): %s", kind.type, rid, exc)
    body = error_body(kind.type, str(exc), rid, details_of(exc))
    return _json(kind.status, body, rid, {**headers_of(exc), **(headers or {})})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    details = [_field_problem(err) for err in exc.errors()]
    shown = "; ".join(f"{d['field']}: {d['reason']}" for d in details[:5])
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    rid = request_id(request)
    body = error_body("InvalidInput", f"invalid request: {shown}{more}", rid, details)
    return _json(422, body, rid)


_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie"}


def _field_problem(err: Any) -> dict[str, str]:
    loc = [str(part) for part in err.get("loc", ())]
    place, rest = (loc[0], loc[1:]) if loc else ("body", [])
    name = ".".join(rest)
    if place == "body":
        field = f"field {name!r}" if name else "request body"
    else:
        field = f"{_PLACES.get(place, place)} {name!r}"
    return {"field": field, "reason": str(err.get("msg", "invalid"))}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    phrase = http.HTTPStatus(exc.status_code).phrase if exc.status_code in _HTTP_STATUSES else "Error"
    type_ = "".join(word for word in re.split(r"[^A-Za-z0-9]+", phrase.title()) if word)
    message = exc.detail if isinstance(exc.detail, str) else phrase
    if exc.status_code == 404 and message == phrase:
        message = f"no such route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    rid = request_id(request)
    return _json(exc.status_code, error_body(type_, message, rid), rid, dict(exc.headers or {}))


class RequestIdMiddleware:
    """Gives every request an id (the caller's ``X-Request-ID`` when sane), echoed in the answer.

    It is also the last line of defence: an exception nothing else handled becomes a 500
    whose body carries only the request id, while the traceback goes to the server's log
    under that id. Clients never see a stack trace.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope) or random_hex(16)
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("internal error (request id %s)", rid)
            if started:
                raise
            await internal_error_response(rid)(scope, receive, send_with_id)


def internal_error_response(rid: str) -> JSONResponse:
    """The answer to an unexpected failure: only the request id, never a trace (that goes to the log)."""
    return _json(500, error_body(INTERNAL_TYPE, f"internal error (request id {rid})", rid), rid)


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's own ``X-Request-ID``, when it is short and plain enough to be kept."""
    for key, value in scope.get("headers", []):
        if key.lower() == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with an :class:`ErrorResponse` body and a request id."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(PasserelleError, _passerelle_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(RequestIdMiddleware)
