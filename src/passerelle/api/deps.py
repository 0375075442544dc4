"""What a request handler is given: the app's client, seen as the user making the request."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from passerelle.api.wire import USER_HEADER
from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError

_USER_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,199}$")


def app_client(request: Request) -> LocalClient:
    """The one :class:`LocalClient` of the app (its database and artifact store connections)."""
    client: LocalClient = request.app.state.passerelle_client
    return client


def acting_user(
    request: Request,
    user: Annotated[
        str | None,
        Header(
            alias=USER_HEADER,
            description="Who acts, as recorded in the audit log; default: the server's configured user.",
            max_length=200,
        ),
    ] = None,
) -> str:
    """The identity a request acts as: the single place where it is decided.

    Until authentication exists, the caller says who it is in a header and is believed.
    Authentication replaces the body of this function (a verified token's subject), and
    every route follows, since they all get their client through :func:`acting_client`.
    """
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
