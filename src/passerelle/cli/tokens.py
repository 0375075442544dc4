"""``passerelle tokens``: API tokens for the HTTP API.

On the machine holding the store (no PASSERELLE_URL), whoever can open the database may
manage tokens: the operating system decides who that is. Through a server, an admin token is
needed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import typer
from rich.markup import escape
from rich.table import Table

from passerelle.cli._common import JSON, REASON, client, console, err_console, print_json, when
from passerelle.errors import InvalidInputError

tokens_app = typer.Typer(
    help="API tokens for the HTTP API: create, list, revoke (see docs/security.md).", no_args_is_help=True
)


@contextlib.contextmanager
def _usage() -> Iterator[None]:
    """An option value that cannot be used ends the command with status 2 and one line."""
    try:
        yield
    except InvalidInputError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@tokens_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Who holds it: ci-bot, alice-laptop. Never reused."),
    role: str = typer.Option(..., "--role", help="viewer, predictor, scientist, operator or admin."),
    expires: str | None = typer.Option(
        None, "--expires", help="Lifetime: 90d, 12h, 30m; default: until revoked."
    ),
    endpoint: list[str] | None = typer.Option(
        None,
        "--endpoint",
        help="Limit the token to this endpoint; repeatable (roles viewer and predictor only).",
    ),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Create a token and print its secret, once: it is not stored and cannot be shown again."""
    from passerelle.auth import check_role
    from passerelle.policy import parse_duration

    with _usage():
        check_role(role)
        lifetime = dt.timedelta(seconds=parse_duration(expires, "--expires")) if expires else None
    with client() as c:
        created = c.create_token(name, role, expires_in=lifetime, endpoints=endpoint or [], reason=reason)
    if as_json:
        print_json(created.model_dump(mode="json"))
        return
    token = created.token
    limits = f", endpoints {', '.join(token.endpoints)}" if token.endpoints else ""
    until = f"until {when(token.expires_at)}" if token.expires_at else "until revoked"
    console.print(f"created token {token.name} (role {token.role}{limits}), valid {until}:", highlight=False)
    # Alone on its line, so that a script can take it; everything else goes to stderr.
    typer.echo(created.secret)
    err_console.print(
        "Store it now: it is not shown again. Send it as 'Authorization: Bearer <token>'; "
        "passerelle's clients read it from PASSERELLE_TOKEN.",
        highlight=False,
        soft_wrap=True,
    )


@tokens_app.command("list")
def list_(as_json: bool = JSON) -> None:
    """Every token with its role, status and last use; never a secret."""
    with client() as c:
        found = c.list_tokens()
    if as_json:
        print_json([t.model_dump(mode="json") for t in found])
        return
    table = Table("name", "role", "prefix", "endpoints", "status", "created", "expires", "last used")
    for t in found:
        table.add_row(
            t.name,
            t.role,
            t.prefix + "…",
            ", ".join(t.endpoints) or "all",
            t.status + (f" by {t.revoked_by}" if t.revoked_by else ""),
            f"{when(t.created_at)} by {t.created_by}",
            when(t.expires_at) if t.expires_at else "never",
            when(t.last_used_at) if t.last_used_at else "never",
        )
    console.print(table if found else "no tokens yet: create one with passerelle tokens create")


@tokens_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The token's name."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Revoke a token for good; servers refuse it within their token cache time (5 s by default)."""
    with client() as c:
        token = c.revoke_token(name, reason=reason)
    if as_json:
        print_json(token.model_dump(mode="json"))
        return
    revoked = when(token.revoked_at) if token.revoked_at else "now"
    console.print(f"token {token.name} is revoked (since {revoked})", highlight=False)
