"""Tokens in the store and their check: hashing, expiry, revocation, the cache, last use; rate buckets."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.auth import (
    ROLES,
    AuthenticationError,
    Authenticator,
    Permission,
    Principal,
    RateLimiter,
    roles_with,
)
from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.errors import ConflictError, InvalidInputError, InvalidReferenceError, NotFoundError
from passerelle.settings import Settings
from passerelle.store.schema import ApiToken
from tests.helpers import small_model


class Clock:
    """Monotonic seconds and wall time, moved by hand."""

    def __init__(self) -> None:
        self.seconds = 1000.0
        self.wall = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.wall += dt.timedelta(seconds=seconds)

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> dt.datetime:
        return self.wall


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[LocalClient]:
    with LocalClient(Settings(home=tmp_path / "home", database_url=backend)) as client:
        yield client


def _row(client: LocalClient, name: str) -> ApiToken:
    from sqlalchemy import select

    with client.ctx.store.read() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name))
        assert row is not None
        return row


def test_roles_are_not_a_ladder() -> None:
    assert roles_with([Permission.READ]) == ["viewer", "scientist", "operator", "admin"]
    assert roles_with([Permission.PREDICT]) == ["predictor", "admin"]
    assert roles_with([Permission.REGISTER]) == ["scientist", "admin"]
    assert roles_with([Permission.OPERATE]) == ["operator", "admin"]
    assert roles_with([Permission.ADMIN]) == ["admin"]
    assert ROLES["admin"] == frozenset(Permission)
    assert not Principal("p", "predictor").allows(Permission.READ)
    # Limited to endpoints, even an admin would only read, predict and send feedback.
    assert Principal("a", "admin", ("churn-api",)).permissions == {
        Permission.READ,
        Permission.PREDICT,
        Permission.FEEDBACK,
    }


def test_a_token_is_stored_as_a_hash_checked_and_revoked(store: LocalClient) -> None:
    created = store.create_token("ci-bot", "operator", reason="deploys from CI")
    secret = created.secret
    assert secret.startswith("psl_")
    assert len(secret) == 4 + 43
    row = _row(store, "ci-bot")
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.prefix == secret[:12]
    assert secret not in str(created.token.model_dump())
    auth = Authenticator(store.ctx.store, ttl_s=0)
    assert auth.authenticate(secret) == Principal("ci-bot", "operator", ())
    with pytest.raises(AuthenticationError, match=r"^unknown token$"):
        auth.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B"))

    revoked = store.revoke_token("ci-bot", reason="leaked")
    assert (revoked.status, revoked.revoked_by) == ("revoked", "tester")
    with pytest.raises(AuthenticationError, match="token 'ci-bot' was revoked"):
        auth.authenticate(secret)
    # Revoking again changes nothing and records nothing.
    assert store.revoke_token("ci-bot").revoked_at == revoked.revoked_at
    entries = store.audit(target="token:ci-bot")
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("token.revoke", "tester", "leaked"),
        ("token.create", "tester", "deploys from CI"),
    ]
    assert entries[1].after == {
        "name": "ci-bot",
        "role": "operator",
        "prefix": secret[:12],
        "endpoints": [],
        "expires_at": None,
    }
    assert secret not in str([e.after for e in entries])
    assert row.secret_hash not in str([e.after for e in entries])


def test_what_cannot_be_a_token(client: LocalClient) -> None:
    client.create_token("taken", "viewer")
    with pytest.raises(ConflictError, match="a token named 'taken' exists already"):
        client.create_token("taken", "admin")
    with pytest.raises(InvalidInputError, match="role 'root' does not exist"):
        client.create_token("x", "root")
    with pytest.raises(InvalidReferenceError, match="invalid token name"):
        client.create_token("no spaces", "viewer")
    with pytest.raises(InvalidInputError, match="expires_in must be positive"):
        client.create_token("x", "viewer", expires_in=dt.timedelta(0))
    with pytest.raises(InvalidInputError, match="role scientist cannot be limited to endpoints"):
        client.create_token("x", "scientist", endpoints=["churn-api"])
    with pytest.raises(NotFoundError, match="endpoint 'churn-api' does not exist"):
        client.create_token("x", "predictor", endpoints=["churn-api"])
    with pytest.raises(NotFoundError, match="token 'nobody' does not exist"):
        client.revoke_token("nobody")
    assert [t.name for t in client.list_tokens()] == ["taken"]


def test_a_token_may_be_limited_to_existing_endpoints(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], monitor=False))
    created = client.create_token("web", "predictor", endpoints=["churn-api", "churn-api"])
    assert created.token.endpoints == ["churn-api"]
    principal = Authenticator(client.ctx.store).authenticate(created.secret)
    assert principal.endpoints == ("churn-api",)


def test_answers_are_remembered_for_the_cache_time_and_expiry_is_exact(client: LocalClient) -> None:
    clock = Clock()
    auth = Authenticator(client.ctx.store, ttl_s=5.0, clock=clock.monotonic, now=clock.now)
    secret = client.create_token("cached", "viewer").secret
    assert auth.remembered(secret) is None, "nothing is remembered before the first check"
    assert auth.authenticate(secret).name == "cached"
    client.revoke_token("cached")
    clock.advance(4.9)
    assert auth.remembered(secret) == Principal("cached", "viewer"), "within the cache time"
    clock.advance(0.2)
    assert auth.remembered(secret) is None
    with pytest.raises(AuthenticationError, match="revoked"):
        auth.authenticate(secret)
    # A refusal is remembered too: unknown secrets do not reach the store on every request.
    with pytest.raises(AuthenticationError, match="revoked"):
        auth.remembered(secret)

    short = client.create_token("short", "viewer", expires_in=dt.timedelta(hours=1))
    assert short.token.expires_at is not None
    later = Authenticator(client.ctx.store, ttl_s=3600.0, clock=clock.monotonic, now=clock.now)
    clock.wall = short.token.expires_at - dt.timedelta(seconds=1)
    assert later.authenticate(short.secret).name == "short"
    clock.wall += dt.timedelta(seconds=1)
    with pytest.raises(AuthenticationError, match="token 'short' expired at"):
        later.remembered(short.secret)
    assert [t.status for t in client.list_tokens()] == ["active", "revoked"]  # by the store's clock


def test_last_use_is_written_at_most_once_a_minute(client: LocalClient) -> None:
    clock = Clock()
    auth = Authenticator(client.ctx.store, ttl_s=0, clock=clock.monotonic, now=clock.now)
    secret = client.create_token("busy", "viewer").secret
    assert _row(client, "busy").last_used_at is None
    auth.authenticate(secret)
    first = _row(client, "busy").last_used_at
    assert first == clock.wall
    clock.advance(59)
    auth.authenticate(secret)
    assert _row(client, "busy").last_used_at == first
    clock.advance(2)
    auth.authenticate(secret)
    assert _row(client, "busy").last_used_at == clock.wall
    # Token bookkeeping is no change anyone made: it is not audited.
    assert [e.action for e in client.audit(target="token:busy")] == ["token.create"]


def test_a_rate_is_a_bucket_per_caller() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock.monotonic)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0
    clock.advance(0.5)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.advance(10)
    assert [limiter.take("a") for _ in range(4)][-1] > 0, "the burst is the cap, whatever the idle time"
    assert RateLimiter(0.5).burst == 1
    with pytest.raises(InvalidInputError):
        RateLimiter(0)
