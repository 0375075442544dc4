"""Commands of the model registry: register, models, versions, alias."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from passerelle.cli._common import JSON, REASON, client, console, parse_pairs, print_json, when
from passerelle.errors import InvalidInputError
from passerelle.references import parse_ref

if TYPE_CHECKING:
    from passerelle.registry import VersionInfo

models_app = typer.Typer(help="Registered models.", no_args_is_help=True)
versions_app = typer.Typer(
    help="Versions of a model (immutable; tags and archiving aside).", no_args_is_help=True
)
alias_app = typer.Typer(
    help="Movable names for versions, such as champion and challenger.", no_args_is_help=True
)


def register(
    path: str = typer.Argument(..., help="Model file or folder, or a module:attribute reference."),
    name: str = typer.Option(..., "--name", "-n", help="Model name, e.g. churn."),
    flavor: str = typer.Option(
        "auto", "--flavor", help="sklearn, onnx, xgboost, lightgbm, mlflow, python, or auto."
    ),
    sample: Path | None = typer.Option(
        None, "--sample", help="CSV or Parquet sample of inputs: the signature."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Training dataset, NAME[:VERSION]."),
    metric: list[str] | None = typer.Option(None, "--metric", help="KEY=NUMBER, repeatable."),
    param: list[str] | None = typer.Option(None, "--param", help="KEY=VALUE, repeatable."),
    tag: list[str] | None = typer.Option(None, "--tag", help="KEY=VALUE, repeatable."),
    closed: list[str] | None = typer.Option(None, "--closed", help="Column whose categories are enforced."),
    description: str = typer.Option("", "--description", help="Free text shown with the version."),
    trust: bool = typer.Option(
        False, "--trust", help="Vouch for code the artifact would run when loaded (pickles, foreign types)."
    ),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Register a model file as a new immutable version."""
    source: Any = Path(path)
    if not source.exists():
        if ":" in path and not path.startswith(("/", ".")):
            source = path  # a code reference for the python flavor
        else:
            raise InvalidInputError(f"cannot read {path}: no such file or directory")
    with client() as c:
        info = c.register(
            source,
            name,
            flavor=flavor,
            sample=sample,
            closed=closed,
            metrics=parse_pairs(metric, "metric", numeric=True),
            params=parse_pairs(param, "param"),
            tags=parse_pairs(tag, "tag"),
            dataset=dataset,
            description=description,
            trust=trust,
            reason=reason,
        )
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console.print(f"registered [bold]{info.ref}[/] ({info.flavor}, {len(info.files)} file(s))")


@models_app.command("list")
def models_list(as_json: bool = JSON) -> None:
    """List models with their latest version and aliases."""
    with client() as c:
        models = c.list_models()
    if as_json:
        print_json([m.model_dump(mode="json") for m in models])
        return
    table = Table("model", "versions", "latest", "aliases", "created")
    for m in models:
        aliases = ", ".join(f"@{a}→{n}" for a, n in sorted(m.aliases.items()))
        table.add_row(m.name, str(m.versions), str(m.latest or "-"), aliases, when(m.created_at))
    console.print(table if models else "no models registered yet")


@models_app.command("show")
def models_show(name: str, as_json: bool = JSON) -> None:
    """Show a model and its versions."""
    with client() as c:
        model, versions = c.get_model(name)
    if as_json:
        print_json(
            {
                "model": model.model_dump(mode="json"),
                "versions": [v.model_dump(mode="json") for v in versions],
            }
        )
        return
    console.print(f"[bold]{model.name}[/]  created {when(model.created_at)} by {model.created_by}")
    table = Table("version", "flavor", "aliases", "metrics", "dataset", "status", "created")
    for v in versions:
        metrics = ", ".join(f"{k}={val:g}" for k, val in sorted(v.metrics.items()))
        table.add_row(
            str(v.number),
            v.flavor,
            ", ".join("@" + a for a in v.aliases),
            metrics,
            v.dataset or "",
            "archived" if v.archived else "live",
            when(v.created_at),
        )
    console.print(table)


def _print_version(v: VersionInfo) -> None:
    console.print(f"[bold]{v.ref}[/]  {v.flavor}  {'[yellow]archived[/]' if v.archived else 'live'}")
    console.print(f"created {when(v.created_at)} by {v.created_by}")
    if v.aliases:
        console.print("aliases: " + ", ".join("@" + a for a in v.aliases))
    if v.description:
        console.print(v.description)
    for title, values in (("metrics", v.metrics), ("params", v.params), ("tags", v.tags)):
        if values:
            console.print(f"{title}: " + ", ".join(f"{k}={val}" for k, val in sorted(values.items())))
    lineage = dict(v.lineage)
    if v.dataset:
        console.print(f"dataset: {v.dataset}")
    if lineage.get("git_commit"):
        dirty = " (dirty tree)" if lineage.get("git_dirty") else ""
        console.print(f"code: {lineage['git_commit'][:12]}{dirty}")
    if v.trusted:
        console.print(f"[yellow]trusted by the registrant:[/] {', '.join(v.untrusted)}")
    env = v.environment
    if env:
        pkgs = ", ".join(f"{k} {val}" for k, val in sorted(env.get("packages", {}).items()))
        console.print(f"environment: python {env.get('python')}; {pkgs}")
    if v.signature:
        table = Table("column", "type", "nullable", "categories", title="signature")
        for col in v.signature["columns"]:
            cats = col.get("categories")
            shown = "" if not cats else ", ".join(map(str, cats[:8])) + (" …" if len(cats) > 8 else "")
            if col.get("closed"):
                shown = f"[bold]closed[/]: {shown}"
            table.add_row(col["name"], col["type"], "yes" if col["nullable"] else "no", shown)
        console.print(table)
    else:
        console.print("signature: none (registered without a sample)")
    if v.output_schema:
        classes = v.output_schema.get("classes")
        console.print(
            f"outputs: prediction ({v.output_schema.get('prediction')})"
            + (f", probabilities for classes {classes}" if v.output_schema.get("proba") else "")
        )
    files = Table("file", "sha256", "bytes", title="artifact")
    for f in v.files:
        files.add_row(f.path, f.sha256, str(f.size))
    console.print(files)


@versions_app.command("show")
def versions_show(
    ref: str = typer.Argument(..., help="churn:3, churn@champion or churn"), as_json: bool = JSON
) -> None:
    """Show one version: signature, metrics, lineage, environment, files and checksums."""
    with client() as c:
        info = c.get_version(ref)
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        _print_version(info)


@versions_app.command("tag")
def versions_tag(
    ref: str,
    tags: list[str] | None = typer.Argument(None, help="KEY=VALUE pairs to set."),
    remove: list[str] | None = typer.Option(None, "--remove", help="Tag to remove, repeatable."),
    reason: str | None = REASON,
) -> None:
    """Set or remove tags of a version."""
    if not tags and not remove:
        raise InvalidInputError("give KEY=VALUE pairs to set or --remove KEY")
    with client() as c:
        info = c.set_tags(ref, parse_pairs(tags, "tag"), remove, reason=reason)
    console.print(
        f"{info.ref} tags: " + (", ".join(f"{k}={v}" for k, v in sorted(info.tags.items())) or "none")
    )


@versions_app.command("archive")
def versions_archive(ref: str, reason: str | None = REASON) -> None:
    """Archive a version: it stays in the registry but no longer counts as latest."""
    with client() as c:
        info = c.set_archived(ref, True, reason=reason)
    console.print(f"{info.ref} archived")


@versions_app.command("restore")
def versions_restore(ref: str, reason: str | None = REASON) -> None:
    """Bring an archived version back."""
    with client() as c:
        info = c.set_archived(ref, False, reason=reason)
    console.print(f"{info.ref} restored")


@alias_app.command("set")
def alias_set(model: str, alias: str, version: int, reason: str | None = REASON) -> None:
    """Point MODEL@ALIAS at VERSION."""
    with client() as c:
        info = c.set_alias(model, alias, version, reason=reason)
    console.print(f"{model}@{alias} → {info.ref}")


@alias_app.command("rm")
def alias_rm(model: str, alias: str, reason: str | None = REASON) -> None:
    """Remove MODEL@ALIAS."""
    parse_ref(f"{model}@{alias}")
    with client() as c:
        c.remove_alias(model, alias, reason=reason)
    console.print(f"{model}@{alias} removed")
