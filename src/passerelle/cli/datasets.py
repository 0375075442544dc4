"""Commands for datasets."""

from __future__ import annotations

import typer
from rich.table import Table

from passerelle.cli._common import JSON, REASON, client, console, parse_pairs, print_json, when

datasets_app = typer.Typer(help="Datasets, versioned by content fingerprint.", no_args_is_help=True)


@datasets_app.command("register")
def datasets_register(
    path: str = typer.Argument(..., help="CSV or Parquet file, local or s3://."),
    name: str = typer.Option(..., "--name", "-n"),
    tag: list[str] | None = typer.Option(None, "--tag", help="KEY=VALUE, repeatable."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Register a file as a dataset version (the same content is not duplicated)."""
    with client() as c:
        info = c.register_dataset(path, name, tags=parse_pairs(tag, "tag"), reason=reason)
    if as_json:
        print_json(info.model_dump(mode="json"))
    elif info.created:
        console.print(f"registered dataset [bold]{info.ref}[/] ({info.rows} rows, {info.fingerprint[:19]}…)")
    else:
        console.print(f"same content as [bold]{info.ref}[/]; nothing new registered")


@datasets_app.command("list")
def datasets_list(as_json: bool = JSON) -> None:
    """List datasets."""
    with client() as c:
        found = c.list_datasets()
    if as_json:
        print_json([d.model_dump(mode="json") for d in found])
        return
    table = Table("dataset", "versions", "latest", "created")
    for d in found:
        table.add_row(d.name, str(d.versions), str(d.latest or "-"), when(d.created_at))
    console.print(table if found else "no datasets registered yet")


@datasets_app.command("show")
def datasets_show(ref: str = typer.Argument(..., help="NAME or NAME:VERSION"), as_json: bool = JSON) -> None:
    """Show a dataset version: source, fingerprint, schema and profile."""
    with client() as c:
        info = c.get_dataset(ref)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    console.print(f"[bold]{info.ref}[/]  {info.rows} rows  {info.format}")
    console.print(f"source: {info.uri}\nfingerprint: {info.fingerprint}")
    console.print(f"created {when(info.created_at)} by {info.created_by}")
    table = Table("column", "type", "missing", "summary", title="profile")
    for name, col in info.profile.get("columns", {}).items():
        if "mean" in col and col.get("mean") is not None:
            summary = f"min {col['min']:.4g}  mean {col['mean']:.4g}  max {col['max']:.4g}"
        elif col.get("top"):
            top = col["top"]
            items = top.items() if isinstance(top, dict) else [(t.get("value"), t.get("count")) for t in top]
            summary = ", ".join(f"{k} ({v})" for k, v in list(items)[:4])
        else:
            summary = ""
        table.add_row(name, str(col.get("type")), f"{(col.get('missing_rate') or 0):.1%}", summary)
    console.print(table)
