"""Who may do what: roles, API tokens, and the check of a token presented with a request.

A token is ``psl_`` followed by 32 random bytes (URL-safe base64). Only its sha256 is stored,
with its first characters (the prefix) to recognise it in lists; the secret is shown once,
when the token is created. Each token has one role:

============  =====================================================================
viewer        read: the registry, datasets, endpoints, monitors, the audit log
predictor     predict and send feedback (and nothing else, not even reads)
scientist     read; register versions, datasets and pipelines
operator      read; deploy, promote, roll back, weights, monitors, alerts, notifiers
admin         everything, including tokens and the server's settings
============  =====================================================================

Roles are not a ladder: a predictor cannot read the registry, an operator cannot register.
A token may be limited to some endpoints (viewer and predictor tokens only); it then acts
only on routes about one of them.

:class:`Authenticator` checks presented secrets for a server process. It remembers each
answer for ``ttl_s`` seconds, so the hot path costs a hash and a dictionary lookup rather than
a database query; the price is that a revocation reaches every worker within ``ttl_s``
seconds (an expiry is checked on every request, from the remembered expiry time).

Nothing here knows about HTTP: the API layer maps :class:`AuthenticationError` to 401 and
:class:`PermissionDeniedError` to 403.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from passerelle import audit
from passerelle.context import Context
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PasserelleError,
    StoreError,
)
from passerelle.references import check_name
from passerelle.store import Store
from passerelle.store.schema import ApiToken, Endpoint

log = logging.getLogger("passerelle.auth")

TOKEN_PREFIX = "psl_"
#: characters of the secret kept in clear, to recognise a token: "psl_" and 8 more
SHOWN_CHARS = 12
#: how long a checked token is remembered by a server process (revocation delay bound)
DEFAULT_CACHE_TTL_S = 5.0
#: last_used_at is written at most this often per token, to keep writes off the hot path
TOUCH_INTERVAL_S = 60.0
#: the longest lifetime a token may be given (beyond, leave it without expiry)
MAX_LIFETIME = dt.timedelta(days=36_500)
#: remembered answers per process; unknown secrets are remembered too, so this bounds memory
_CACHE_MAX = 10_000


class Permission(StrEnum):
    """What a route needs. Each route of the API declares one (or several, any of which will do)."""

    READ = "read"
    PREDICT = "predict"
    FEEDBACK = "feedback"
    #: register versions, datasets and pipelines, and run pipelines
    REGISTER = "register"
    #: deploy, promote, roll back, weights; monitors, alert rules, silences, notifiers
    OPERATE = "operate"
    #: tokens, settings and housekeeping of the store
    ADMIN = "admin"


ROLES: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "predictor": frozenset({Permission.PREDICT, Permission.FEEDBACK}),
    "scientist": frozenset({Permission.READ, Permission.REGISTER}),
    "operator": frozenset({Permission.READ, Permission.OPERATE}),
    "admin": frozenset(Permission),
}
#: roles a token limited to endpoints may have: what they do is about one endpoint
SCOPABLE_ROLES = ("viewer", "predictor")
#: what a token limited to endpoints may do at most, and only on those endpoints
SCOPED_PERMISSIONS = frozenset({Permission.READ, Permission.PREDICT, Permission.FEEDBACK})


def roles_with(permissions: Iterable[Permission]) -> list[str]:
    """The roles holding any of ``permissions``, in the order of :data:`ROLES`."""
    wanted = set(permissions)
    return [role for role, held in ROLES.items() if held & wanted]


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} does not exist: choose {_or(list(ROLES))}")
    return role


class AuthenticationError(PasserelleError):
    """No valid API token came with the request: it is missing, unknown, expired or revoked."""


class PermissionDeniedError(PasserelleError):
    """The token is valid, but its role or its endpoints do not allow this request."""


class RateLimitedError(PasserelleError):
    """This caller sent more requests than its rate limit; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Principal:
    """Who a request acts as once its token is checked."""

    name: str
    role: str
    #: the endpoints the token is limited to; empty: not limited
    endpoints: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """The identity recorded in the audit log."""
        return f"token:{self.name}"

    @property
    def permissions(self) -> frozenset[Permission]:
        held = ROLES.get(self.role, frozenset())
        return held & SCOPED_PERMISSIONS if self.endpoints else held

    def allows(self, permission: Permission) -> bool:
        return permission in self.permissions


class TokenInfo(BaseModel):
    """A token as listed: everything but its secret, which is never kept."""

    name: str
    role: str
    prefix: str = Field(description="The first characters of the secret, to recognise the token.")
    endpoints: list[str] = Field(description="Endpoints the token is limited to; empty: not limited.")
    created_at: dt.datetime
    created_by: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revoked_by: str | None
    last_used_at: dt.datetime | None = Field(
        description=f"When the token was last seen, to within {TOUCH_INTERVAL_S:g} s."
    )
    status: Literal["active", "expired", "revoked"]


class CreatedToken(BaseModel):
    """A new token and its secret. The secret is in this answer only: it cannot be shown again."""

    token: TokenInfo
    secret: str = Field(description="Send it as 'Authorization: Bearer <secret>'. Shown once.")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _info(row: ApiToken, now: dt.datetime) -> TokenInfo:
    status: Literal["active", "expired", "revoked"]
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return TokenInfo(
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        endpoints=[str(e) for e in row.endpoints or []],
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        last_used_at=row.last_used_at,
        status=status,
    )


def _audited(info: TokenInfo) -> dict[str, object]:
    # Never the secret nor its hash: the audit log is readable by viewers.
    return {
        "name": info.name,
        "role": info.role,
        "prefix": info.prefix,
        "endpoints": info.endpoints,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
    }


def create_token(
    ctx: Context,
    name: str,
    role: str,
    *,
    expires_in: dt.timedelta | None = None,
    endpoints: Sequence[str] = (),
    reason: str | None = None,
) -> CreatedToken:
    """A new token; its secret is in the answer and nowhere else. Audited as ``token.create``."""
    check_name(name, "token name")
    check_role(role)
    if expires_in is not None and not dt.timedelta(0) < expires_in <= MAX_LIFETIME:
        raise InvalidInputError(
            f"expires_in must be positive and at most {MAX_LIFETIME.days} days, got {expires_in}"
        )
    scope = list(dict.fromkeys(endpoints))
    for endpoint in scope:
        check_name(endpoint, "endpoint name")
    if scope and role not in SCOPABLE_ROLES:
        raise InvalidInputError(
            f"role {role} cannot be limited to endpoints: a token limited to endpoints can only read, "
            f"predict and send feedback on them, so give it the role {_or(list(SCOPABLE_ROLES))}"
        )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    try:
        with ctx.store.write() as session:
            if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                raise ConflictError(_taken(name))
            if scope:
                known = set(session.scalars(select(Endpoint.name).where(Endpoint.name.in_(scope))))
                missing = [e for e in scope if e not in known]
                if missing:
                    raise NotFoundError(f"endpoint {missing[0]!r} does not exist")
            row = ApiToken(
                name=name,
                role=role,
                secret_hash=hash_secret(secret),
                prefix=secret[:SHOWN_CHARS],
                endpoints=scope,
                created_at=now,
                created_by=ctx.actor,
                expires_at=now + expires_in if expires_in is not None else None,
            )
            session.add(row)
            session.flush()
            info = _info(row, now)
            audit.record(
                session,
                actor=ctx.actor,
                action="token.create",
                target=f"token:{name}",
                after=_audited(info),
                reason=reason,
            )
    except DBIntegrityError as exc:
        # Another process created the same name between the check and the insert.
        raise ConflictError(_taken(name)) from exc
    return CreatedToken(token=info, secret=secret)


def _taken(name: str) -> str:
    return (
        f"a token named {name!r} exists already (names stay taken after revocation, so that the "
        "audit log keeps meaning one token per name); choose another name"
    )


def list_tokens(ctx: Context) -> list[TokenInfo]:
    """Every token, revoked and expired ones included, newest first."""
    now = _now()
    with ctx.store.read() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
        return [_info(row, now) for row in rows]


def revoke_token(ctx: Context, name: str, *, reason: str | None = None) -> TokenInfo:
    """Revoke a token for good. Revoking a revoked token changes nothing and records nothing.

    Servers stop accepting it within their cache time (:data:`DEFAULT_CACHE_TTL_S` by default).
    """
    now = _now()
    with ctx.store.write() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise NotFoundError(f"token {name!r} does not exist")
        if row.revoked_at is not None:
            return _info(row, now)
        before = _info(row, now)
        row.revoked_at = now
        row.revoked_by = ctx.actor
        session.flush()
        info = _info(row, now)
        audit.record(
            session,
            actor=ctx.actor,
            action="token.revoke",
            target=f"token:{name}",
            before={**_audited(before), "status": before.status},
            after={**_audited(info), "status": info.status},
            reason=reason,
        )
    return info


# -- checking presented secrets ---------------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    """What the store said about one secret, and when."""

    checked_at: float
    principal: Principal | None
    refusal: str | None
    expires_at: dt.datetime | None


class Authenticator:
    """Checks secrets against the store, remembering each answer for ``ttl_s`` seconds.

    One per server process. :meth:`remembered` answers from memory only (for the event loop);
    :meth:`authenticate` asks the store when memory cannot tell (a blocking call).
    """

    def __init__(
        self,
        store: Store | Callable[[], Store],
        *,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        touch_interval_s: float = TOUCH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.touch_interval_s = touch_interval_s
        self._clock = clock
        self._now = now
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self._store if isinstance(self._store, Store) else self._store()

    def remembered(self, secret: str) -> Principal | None:
        """The principal of ``secret`` if a recent answer is remembered; None when the store must tell.

        Raises :class:`AuthenticationError` for a remembered refusal, or for a remembered token
        whose expiry time has passed since.
        """
        known = self._known.get(hash_secret(secret))
        if known is None or self._clock() - known.checked_at >= self.ttl_s:
            return None
        return self._verdict(known)

    def authenticate(self, secret: str) -> Principal:
        """The principal of ``secret``, asking the store when no recent answer is remembered."""
        found = self.remembered(secret)
        if found is not None:
            return found
        return self._verdict(self._look_up(secret))

    def forget(self) -> None:
        with self._lock:
            self._known.clear()

    def _verdict(self, known: _Known) -> Principal:
        if known.refusal is not None:
            raise AuthenticationError(known.refusal)
        principal = known.principal
        assert principal is not None
        if known.expires_at is not None and known.expires_at <= self._now():
            raise AuthenticationError(
                f"token {principal.name!r} expired at {known.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        return principal

    def _look_up(self, secret: str) -> _Known:
        digest = hash_secret(secret)
        checked_at = self._clock()
        if not secret.startswith(TOKEN_PREFIX):
            refusal = f"unknown token: passerelle tokens start with {TOKEN_PREFIX}"
            known = _Known(checked_at, None, refusal, None)
            self._remember(digest, known)
            return known
        now = self._now()
        touch: tuple[int, dt.datetime | None] | None = None
        with self.store.read() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.secret_hash == digest))
            # The lookup is by hash; compare again in constant time so that no code path
            # depends on how much of a stored hash a guess matched.
            if row is None or not hmac.compare_digest(row.secret_hash, digest):
                known = _Known(checked_at, None, "unknown token", None)
            elif row.revoked_at is not None:
                known = _Known(checked_at, None, f"token {row.name!r} was revoked", None)
            else:
                principal = Principal(row.name, row.role, tuple(str(e) for e in row.endpoints or []))
                known = _Known(checked_at, principal, None, row.expires_at)
                last = row.last_used_at
                if last is None or (now - last).total_seconds() >= self.touch_interval_s:
                    touch = (row.id, last)
        self._remember(digest, known)
        if touch is not None:
            self._touch(*touch, now)
        return known

    def _remember(self, digest: str, known: _Known) -> None:
        with self._lock:
            if len(self._known) >= _CACHE_MAX:
                stale = [k for k, v in self._known.items() if known.checked_at - v.checked_at >= self.ttl_s]
                for key in stale:
                    del self._known[key]
                if len(self._known) >= _CACHE_MAX:
                    self._known.clear()
            self._known[digest] = known

    def _touch(self, token_id: int, last: dt.datetime | None, now: dt.datetime) -> None:
        """Record that the token was used; bookkeeping, so neither audited nor allowed to fail a request."""
        stale = ApiToken.last_used_at.is_(None) if last is None else ApiToken.last_used_at == last
        try:
            with self.store.write() as session:
                # Conditional: when several workers refresh at once, one of them writes.
                session.execute(
                    update(ApiToken).where(ApiToken.id == token_id, stale).values(last_used_at=now)
                )
        except StoreError as exc:
            log.warning("cannot record when token %s was last used: %s", token_id, exc)


# -- rate limits --------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per caller: ``rate_per_s`` requests a second, bursts of up to ``burst``.

    The buckets live in one process: with several workers, a caller spread over them gets up
    to ``workers`` times the rate.
    """

    def __init__(
        self, rate_per_s: float, burst: int = 0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0:
            raise InvalidInputError(f"the rate limit must be positive, got {rate_per_s}")
        self.rate = rate_per_s
        self.burst = float(burst or max(1, math.ceil(rate_per_s)))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, caller: str) -> float:
        """0.0 when ``caller`` may go on; otherwise the seconds until it may."""
        now = self._clock()
        tokens, then = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > _CACHE_MAX:
                self._prune(now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # A bucket that has refilled since is the same as no bucket.
        full = [k for k, (t, then) in self._buckets.items() if t + (now - then) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


def _or(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" or {items[-1]}"
