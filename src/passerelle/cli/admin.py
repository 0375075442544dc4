"""Commands for settings, the database, the audit log and store health."""

from __future__ import annotations

import typer
from rich.table import Table

from passerelle.cli._common import JSON, client, console, err_console, print_json, when
from passerelle.errors import IntegrityError, InvalidInputError
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


@db_app.command("copy")
def db_copy(
    to: str = typer.Option(
        ..., "--to", help="The database to copy to: postgresql+psycopg://user:password@host:5432/db."
    ),
    artifacts: str | None = typer.Option(
        None,
        "--artifacts",
        help="Artifact store to copy artifacts to, e.g. s3://bucket/prefix (default: keep the current one).",
    ),
    yes: bool = typer.Option(False, "--yes", help="Replace what the target database already holds."),
    reason: str | None = typer.Option(None, "--reason", help="Why; kept in the target's audit log."),
    as_json: bool = JSON,
) -> None:
    """Copy this store (metadata, prediction log, artifacts) to PostgreSQL for the scale-out setup."""
    from passerelle.dbcopy import copy_store

    def progress(message: str) -> None:
        err_console.print(message, highlight=False, soft_wrap=True)

    report = copy_store(
        load_settings(), to, artifacts=artifacts, replace=yes, reason=reason, progress=progress
    )
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(
            f"copied {report.rows} row(s) of {len(report.tables)} table(s) and {report.files_copied} "
            f"artifact file(s) to {report.target}",
            highlight=False,
            soft_wrap=True,
        )
        for note in report.notes:
            console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
        for problem in report.problems:
            console.print(f"[red]problem[/]: {problem}", highlight=False, soft_wrap=True)
        if report.ok:
            console.print(f"[green]ok[/]: {report.audit_records} audit record(s) chained intact")
            console.print("next: stop using this store; give every replica these settings:")
            # Plain print: lines meant to be copied as they are (the password is masked).
            for name, value in report.next_settings().items():
                print(f"{name}={value}")
    if not report.ok:
        raise typer.Exit(1)


def audit(
    view: str | None = typer.Argument(
        None,
        metavar="head",
        help="head: print only ID:HASH of the newest record, to keep outside the database "
        "(`passerelle doctor --audit-anchor` checks it later).",
    ),
    since: str | None = typer.Option(None, "--since", help="7d, 12h, 30m back, or an ISO date/time."),
    target: str | None = typer.Option(None, "--target", help="Only this model, version or dataset."),
    action: str | None = typer.Option(None, "--action", help="Only this action, e.g. alias.set."),
    actor: str | None = typer.Option(None, "--actor", help="Only records of this actor."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = JSON,
) -> None:
    """List audit records, newest first: who, when, what, before/after, why; `audit head` prints ID:HASH."""
    from passerelle.audit import parse_since

    if view is not None:
        if view != "head":
            raise InvalidInputError(f"unknown audit view {view!r}: the only one is head")
        if since is not None or target is not None or action is not None or actor is not None:
            raise InvalidInputError("audit head takes no filter: it is the newest record of the whole log")
        _audit_head(as_json)
        return
    start = None if since is None else parse_since(since, what="--since")
    with client() as c:
        entries = c.audit(since=start, target=target, action=action, actor=actor, limit=limit)
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


def _audit_head(as_json: bool) -> None:
    with client() as c:
        newest = c.audit(limit=1)
    if not newest:
        if as_json:
            print_json(None)
        else:
            err_console.print("the audit log is empty: nothing to anchor yet")
        return
    head = newest[0]
    if head.hash is None:
        raise IntegrityError(
            f"the newest audit record, {head.id}, has no hash: it was written behind passerelle's back "
            "(see `passerelle doctor`)"
        )
    if as_json:
        print_json({"id": head.id, "at": head.at.isoformat(), "hash": head.hash})
    else:
        # Plain print: the line is meant to be copied or piped as it is, unwrapped and uncoloured.
        print(f"{head.id}:{head.hash}")


def _short(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def doctor(
    audit_anchor: str | None = typer.Option(
        None,
        "--audit-anchor",
        help="ID:HASH printed earlier by `passerelle audit head`: that record must still carry it.",
    ),
    as_json: bool = JSON,
) -> None:
    """Check the store: database, migrations, every artifact against its checksums, the audit chain."""
    with client() as c:
        report = c.doctor(audit_anchor=audit_anchor)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        console.print(f"database: {report.database} (revision {report.schema_revision})")
        console.print(f"artifacts: {report.artifact_uri} ({report.versions_checked} version(s) checked)")
        chain = report.audit_chain
        if chain.ok:
            anchored = f", anchor {audit_anchor.split(':')[0]} confirmed" if audit_anchor else ""
            console.print(f"audit log: {chain.checked} record(s) chained intact{anchored}")
        else:
            console.print(f"audit log: broken at record {chain.first_broken_id}")
        for problem in report.problems:
            console.print(f"[red]problem[/]: {problem}", highlight=False, soft_wrap=True)
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
