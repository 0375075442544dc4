"""Who is looking at the console, what they may do there, and the check on every form.

With authentication on (``passerelle serve --auth``) a person signs in once with an API token;
the console keeps it in a cookie the page's scripts cannot read (HttpOnly), that the browser
sends only to this site (SameSite=Strict, and Secure over HTTPS), and checks it on every
request through :class:`passerelle.auth.Authenticator` like any API call: a revoked or
expired token stops working in the console within the same few seconds as in the API. The
cookie holds the token rather than a session id because every worker and replica can then
check it with no shared session store; the price is that the cookie is as valuable as the
token, which is why scripts cannot read it and it expires after :data:`SESSION_SECONDS`.

Every form carries a CSRF value: an HMAC of a "form" label keyed with the token (with
authentication off, with a random value kept in its own cookie), which another site can
neither read nor compute. A POST whose value does not match, or whose ``Origin`` names
another site, is refused before anything changes. With authentication off the console is
open to whoever reaches the port, which ``passerelle serve`` allows on loopback only; every
page says so in a banner.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from passerelle.auth import AuthenticationError, Authenticator, Permission, PermissionDeniedError, Principal
from passerelle.client import LocalClient
from passerelle.errors import PasserelleError

SESSION_COOKIE = "passerelle_console"
CSRF_COOKIE = "passerelle_console_csrf"
#: how long a sign-in lasts before the token must be given again
SESSION_SECONDS = 12 * 3600
_FORM_LABEL = b"passerelle console form"


class CsrfError(PasserelleError):
    """A form came without the value this console put in it: from another site, or a stale page."""


@dataclass(frozen=True)
class Viewer:
    """The person using the console: a checked token, or anyone (authentication off)."""

    principal: Principal | None
    auth: bool
    #: keys the CSRF value: the token, or the random value of the CSRF cookie
    secret: str

    @property
    def actor(self) -> str | None:
        return self.principal.actor if self.principal is not None else None

    @property
    def name(self) -> str:
        return self.principal.name if self.principal is not None else ""

    @property
    def role(self) -> str:
        return self.principal.role if self.principal is not None else ""

    @property
    def csrf(self) -> str:
        return hmac.new(self.secret.encode("utf-8"), _FORM_LABEL, hashlib.sha256).hexdigest()

    def may(self, permission: Permission) -> bool:
        return self.principal is None or self.principal.allows(permission)

    def sees(self, endpoint: str) -> bool:
        """Whether an endpoint is shown: a token limited to endpoints sees only those."""
        return self.principal is None or not self.principal.endpoints or endpoint in self.principal.endpoints

    @property
    def limited(self) -> bool:
        return self.principal is not None and bool(self.principal.endpoints)

    def require(self, permission: Permission, what: str) -> None:
        if self.may(permission):
            return
        from passerelle.auth import roles_with

        roles = roles_with([permission])
        assert self.principal is not None
        raise PermissionDeniedError(
            f"token {self.principal.name!r} has the role {self.principal.role}, which may not {what}: "
            f"that needs the role {' or '.join(roles)}"
        )

    def require_endpoint(self, endpoint: str) -> None:
        if not self.sees(endpoint):
            assert self.principal is not None
            raise PermissionDeniedError(
                f"token {self.principal.name!r} is limited to the endpoint(s) "
                f"{', '.join(self.principal.endpoints)}; it may not see endpoint {endpoint!r}"
            )

    def require_unlimited(self, what: str) -> None:
        if self.limited:
            assert self.principal is not None
            raise PermissionDeniedError(
                f"token {self.principal.name!r} is limited to the endpoint(s) "
                f"{', '.join(self.principal.endpoints)}; {what} needs a token that is not"
            )


def new_csrf_secret() -> str:
    return secrets.token_urlsafe(32)


def viewer_of(
    *,
    auth: bool,
    authenticator: Authenticator | None,
    cookies: dict[str, str],
) -> Viewer:
    """The viewer a request's cookies name; raises :class:`AuthenticationError` when auth is on
    and the cookie is missing or no longer valid."""
    if not auth:
        return Viewer(None, False, cookies.get(CSRF_COOKIE) or "")
    secret = cookies.get(SESSION_COOKIE)
    if not secret:
        raise AuthenticationError("sign in with an API token to use the console")
    assert authenticator is not None
    return Viewer(authenticator.authenticate(secret), True, secret)


def sign_in(authenticator: Authenticator, token: str) -> Principal:
    """The principal of ``token`` if it may use the console (read), else a readable refusal."""
    token = token.strip()
    if not token:
        raise AuthenticationError("token: paste an API token (it starts with psl_)")
    principal = authenticator.authenticate(token)
    if not principal.allows(Permission.READ):
        raise PermissionDeniedError(
            f"token {principal.name!r} has the role {principal.role}, which cannot read: the console "
            "needs a viewer, scientist, operator or admin token"
        )
    return principal


def check_form(viewer: Viewer, form_value: str | None, origin: str | None, host: str | None) -> None:
    """Refuse a POST that did not come from one of this console's own pages."""
    if origin and origin != "null" and host and urlsplit(origin).netloc.lower() != host.lower():
        raise CsrfError(f"the form was sent from {origin}, not from this console; nothing was changed")
    if not viewer.secret or not form_value or not hmac.compare_digest(form_value, viewer.csrf):
        raise CsrfError(
            "the form's safety check failed (the page is stale or came from another site); "
            "reload the page and try again: nothing was changed"
        )


def acting_client(base: LocalClient, viewer: Viewer) -> LocalClient:
    """The app's client acting as the viewer, on the app's own connections."""
    actor = viewer.actor
    if actor is None:
        return base
    return _Acting(base, actor)


class _Acting(LocalClient):
    def __init__(self, base: LocalClient, actor: str) -> None:
        super().__init__(base.settings, actor=actor)
        # Sharing the app's stores: a request costs no new connection pool.
        self.ctx._store = base.ctx.store
        self.ctx._artifacts = base.ctx.artifacts

    def close(self) -> None:
        """The stores belong to the app's client and close with it."""


def safe_next(value: Any) -> str:
    """Where to go after signing in: a path of this site only, never another site."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
