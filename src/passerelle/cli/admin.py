"""Commands for settings, the database, the audit log and store health."""

from __future__ import annotations

import typer
from rich.table import Table

from passerelle.cli._common import JSON, client, console, parse_since, print_json, when
from passerelle.settings import load_settings

db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)


def config(as_json: bool = JSON) -> None:
    """Print the effective settings (secrets masked)."""
    values = load_settings().describe()
    if as_json:
        print_json(values)
        return
    table = Table("setting", "environment variable", "value")
    for name, value in values.items():
        table.add_row(name, f"PASSERELLE_{name.upper()}", value)
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (they are also applied on first use)."""
    from passerelle.store import Store

    settings = load_settings()
    store = Store(settings.effective_database_url, migrate=False)
    try:
        revision = store.upgrade()
    finally:
        store.dispose()
    console.print(f"database at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision."""
    from passerelle.store import Store
    from passerelle.store.migrate import current_revision, head_revision

    store = Store(load_settings().effective_database_url, migrate=False)
    try:
        with store.engine.connect() as conn:
            current = current_revision(conn)
        head = head_revision(store)
    finally:
        store.dispose()
    console.print(f"current: {current or 'empty'}  head: {head}")


def audit(
    since: str | None = typer.Option(None, "--since", help="7d, 12h, 30m or an ISO date."),
    target: str | None = typer.Option(None, "--target", help="Only this model, version or dataset."),
    action: str | None = typer.Option(None, "--action", help="Only this action, e.g. alias.set."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = JSON,
) -> None:
    """List audit records, newest first: who, when, what, before/after, why."""
    with client() as c:
        entries = c.audit(since=parse_since(since), target=target, action=action, limit=limit)
    if as_json:
        print_json([e.__dict__ for e in entries])
        return
    table = Table("when", "who", "action", "target", "change", "reason")
    for e in entries:
        change = ""
        if e.before is not None or e.after is not None:
            change = f"{_short(e.before)} → {_short(e.after)}"
        table.add_row(when(e.at), e.actor, e.action, e.target, change, e.reason)
    console.print(table if entries else "no audit records match")


def _short(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def doctor(as_json: bool = JSON) -> None:
    """Check the store: database reachable, migrations applied, every artifact against its checksums."""
    with client() as c:
        report = c.doctor()
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        console.print(f"database: {report.database} (revision {report.schema_revision})")
        console.print(f"artifacts: {report.artifact_uri} ({report.versions_checked} version(s) checked)")
        for problem in report.problems:
            console.print(f"[red]problem[/]: {problem}")
        for orphan in report.orphans:
            console.print(
                f"[yellow]orphan[/]: {orphan} (no version references it; `passerelle gc` removes it)"
            )
        console.print("[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]")
    if not report.ok:
        raise typer.Exit(1)


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed."),
) -> None:
    """Remove artifacts that no version references (left by interrupted registrations)."""
    with client() as c:
        removed = c.gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for key in removed:
        console.print(f"{verb} {key}")
    console.print(f"{len(removed)} orphan artifact(s) {verb}")
