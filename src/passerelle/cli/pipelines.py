"""Commands for retraining pipelines and lineage.

``passerelle pipeline run NAME --wait`` is what an external scheduler calls; its exit status
says how the run ended: 0 succeeded (promoted as the definition says), 1 rejected by its gates
or for an incompatible signature (the champion untouched), 2 failed, interrupted or cancelled.
``passerelle pipeline validate`` exits with 2 when the file is not valid.

Every command but ``validate`` (a check of a file) and ``tick`` (a scheduler round on the store)
goes through the client, so with ``PASSERELLE_URL`` set they act on that server: its scheduler
executes the runs, and ``run --wait`` and ``logs --follow`` poll it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from passerelle.cli._common import JSON, REASON, client, console, err_console, parse_pairs, print_json, when
from passerelle.errors import InvalidInputError

if TYPE_CHECKING:
    from passerelle.client import Client
    from passerelle.pipelines import RunInfo

pipeline_app = typer.Typer(
    help="Retraining pipelines: validate and apply passerelle.yaml, run, follow, inspect.",
    no_args_is_help=True,
)

FILE = typer.Option(Path("passerelle.yaml"), "--file", "-f", help="The pipelines file.")
#: exit status of `validate` for a file that is not valid
INVALID = 2
#: seconds between two reads of a log that is being followed
FOLLOW_POLL_S = 0.5


def _state(state: str) -> str:
    colour = {
        "succeeded": "green",
        "rejected": "yellow",
        "failed": "red",
        "interrupted": "red",
        "cancelled": "dim",
        "running": "cyan",
        "queued": "blue",
    }.get(state, "white")
    return f"[{colour}]{state}[/]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


@pipeline_app.command("validate")
def validate(file: Path = FILE) -> None:
    """Check a pipelines file; every problem is printed with its line and key path."""
    from passerelle.pipelines import DefinitionError, load_file

    try:
        pipelines = load_file(file)
    except DefinitionError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID) from None
    names = ", ".join(p.name for p in pipelines)
    console.print(f"{file}: {len(pipelines)} pipeline{'s' if len(pipelines) != 1 else ''} valid ({names})")


@pipeline_app.command("apply")
def apply(file: Path = FILE, reason: str | None = REASON) -> None:
    """Store the definitions of a pipelines file (created or updated; each change audited)."""
    from passerelle.pipelines import DefinitionError, load_file

    try:
        pipelines = load_file(file)
    except DefinitionError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID) from None
    with client() as c:
        stored = c.apply_pipelines(pipelines, source=str(file.resolve()), reason=reason)
    for info in stored:
        d = info.definition
        console.print(
            f"pipeline [bold]{info.name}[/] → model {d['model']}, triggers {', '.join(d['triggers'])}, "
            f"promotion {d['promotion']['policy']}"
        )


@pipeline_app.command("list")
def list_(as_json: bool = JSON) -> None:
    """List the stored pipelines and their last run."""
    with client() as c:
        found = c.list_pipelines()
    if as_json:
        print_json([p.model_dump(mode="json") for p in found])
        return
    if not found:
        console.print("no pipelines yet; write a passerelle.yaml and run `passerelle pipeline apply`")
        return
    table = Table("pipeline", "model", "triggers", "promotion", "last run", "state")
    for p in found:
        d = p.definition
        promo = d["promotion"]
        target = f"{promo['policy']}" + (f" on {promo['endpoint']}" if promo.get("endpoint") else "")
        last = p.last_run
        table.add_row(
            p.name + ("" if p.enabled else " (disabled)"),
            d["model"],
            ", ".join(d["triggers"]),
            target,
            f"#{last.number} {when(last.created_at)}" if last else "-",
            _state(last.state) if last else "-",
        )
    console.print(table)


def _print_run(info: RunInfo) -> None:
    console.print(
        f"run [bold]{info.ref}[/] (id {info.id}) {_state(info.state)}, attempt {info.attempt}, "
        f"trigger {info.trigger}"
    )


def _summary(info: RunInfo) -> None:
    _print_run(info)
    if info.model_version:
        console.print(f"model version: [bold]{info.model_version}[/]")
    for gate in info.evaluation.get("gates", []):
        mark = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(gate['gate'])}  ({escape(str(gate.get('detail', '')))})")
    if info.promotion and info.promotion.get("status") != "failed":
        p = info.promotion
        where = p.get("alias") or f"endpoint {p.get('endpoint')} revision {p.get('revision')}"
        console.print(f"promotion: {p['policy']} → {where}")
    if info.error:
        first, _, rest = info.error.partition("\n")
        err_console.print(f"[red]{escape(first)}[/]", highlight=False, soft_wrap=True)
        if rest:
            err_console.print(escape(rest), highlight=False, soft_wrap=True)


@pipeline_app.command("run")
def run(
    name: str = typer.Argument(..., help="The pipeline to run."),
    wait_: bool = typer.Option(
        False,
        "--wait",
        help="Wait for its end: exit 0 succeeded, 1 rejected, 2 failed, interrupted or cancelled. "
        "On the store itself the run executes here (unless a server took it first); with "
        "PASSERELLE_URL the server executes it and this command follows it.",
    ),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Queue a manual run; with --wait, wait for it and exit with its outcome."""
    from passerelle.pipelines import exit_code

    with client() as c:
        queued = c.run_pipeline(name, params=parse_pairs(param, "param"), reason=reason)
        if not wait_:
            if as_json:
                print_json(queued.model_dump(mode="json"))
            else:
                console.print(
                    f"queued run [bold]{queued.ref}[/] (id {queued.id}); a running `passerelle serve` "
                    f"starts it. Follow it with `passerelle pipeline logs {queued.id} --follow`"
                )
            return

        def announce(info: RunInfo) -> None:
            if not as_json and info.id != queued.id:
                console.print(f"attempt {info.attempt}: run {info.ref} (id {info.id})")

        final = c.wait_run(queued.id, on_run=announce)
    if as_json:
        print_json(final.model_dump(mode="json"))
    else:
        _summary(final)
    code = exit_code(final.state)
    if code:
        raise typer.Exit(code)


@pipeline_app.command("runs")
def runs_(
    name: str | None = typer.Argument(None, help="Only this pipeline's runs."),
    state: str | None = typer.Option(None, "--state", help="Only runs in this state."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000),
    as_json: bool = JSON,
) -> None:
    """List runs, newest first."""
    with client() as c:
        found = c.list_runs(name, state=state, limit=limit)
    if as_json:
        print_json([r.model_dump(mode="json") for r in found])
        return
    if not found:
        console.print("no runs yet")
        return
    table = Table("run", "id", "state", "trigger", "attempt", "created", "took", "version")
    for r in found:
        table.add_row(
            r.ref,
            r.id,
            _state(r.state),
            r.trigger,
            str(r.attempt),
            when(r.created_at),
            _duration(r.duration_s),
            r.model_version or "-",
        )
    console.print(table)


@pipeline_app.command("show")
def show(ref: str = typer.Argument(..., help="Run id or PIPELINE#NUMBER."), as_json: bool = JSON) -> None:
    """Everything about one run: state, timings, inputs, code, parameters, gates, promotion."""
    with client() as c:
        info = c.get_run(ref)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    _print_run(info)
    console.print(f"created {when(info.created_at)} by {info.created_by}")
    if info.started_at:
        console.print(f"started {when(info.started_at)} on {info.holder}, took {_duration(info.duration_s)}")
    if info.not_before and info.state == "queued":
        console.print(f"not before {when(info.not_before)} (retry backoff)")
    if info.trigger_detail:
        detail = ", ".join(f"{k}={v}" for k, v in info.trigger_detail.items() if v is not None)
        console.print(f"trigger detail: {escape(detail)}")
    for role, item in info.inputs.items():
        console.print(f"{role}: {item.get('dataset') or item.get('path')} {item.get('fingerprint', '')}")
    if info.code:
        dirty = " (dirty)" if info.code.get("git_dirty") else ""
        console.print(f"code: {info.code.get('git_commit', '-')}{dirty}")
    if info.environment_hash:
        console.print(f"environment: {info.environment_hash}")
    if info.params:
        console.print("params: " + ", ".join(f"{k}={v}" for k, v in info.params.items()))
    cand = info.evaluation.get("candidate")
    if cand:
        champ = info.evaluation.get("champion") or {}
        table = Table("figure", "candidate", f"champion {champ.get('ref', '-')}", title="holdout")
        for key, value in cand["figures"].items():
            if "[" in key:
                continue
            other = (champ.get("figures") or {}).get(key)
            table.add_row(key, _num(value), _num(other))
        console.print(table)
    if info.retry_of:
        console.print(f"retries run {info.retry_of}")
    _summary_tail(info)


def _summary_tail(info: RunInfo) -> None:
    for gate in info.evaluation.get("gates", []):
        mark = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(gate['gate'])}  ({escape(str(gate.get('detail', '')))})")
    if info.evaluation.get("refused"):
        console.print(f"[yellow]{escape(info.evaluation['refused'])}[/]")
    if info.promotion:
        console.print("promotion: " + ", ".join(f"{k}={v}" for k, v in info.promotion.items()))
    if info.error:
        console.print(f"[red]error:[/] {escape(info.error)}", highlight=False, soft_wrap=True)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


@pipeline_app.command("logs")
def logs(
    ref: str = typer.Argument(..., help="Run id or PIPELINE#NUMBER."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the run ends."),
) -> None:
    """Print a run's log (the training command's output and passerelle's own steps)."""
    with client() as c:
        _print_log(c, c.get_run(ref).id, follow=follow)


def _print_log(c: Client, run_id: str, *, follow: bool) -> None:
    """Write the log to stdout from its start; with ``follow``, until the run has ended and all is out."""
    offset = 0
    while True:
        # The state is read before the text: once it is terminal, the text read after it is the rest.
        terminal = c.get_run(run_id).terminal if follow else True
        text, offset = c.run_logs(run_id, offset=offset)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            continue
        if terminal:
            return
        time.sleep(FOLLOW_POLL_S)


@pipeline_app.command("cancel")
def cancel(
    ref: str = typer.Argument(..., help="Run id or PIPELINE#NUMBER."), reason: str | None = REASON
) -> None:
    """Cancel a queued or running run; a running training process group is stopped."""
    with client() as c:
        info = c.cancel_run(ref, reason=reason)
    _print_run(info)


@pipeline_app.command("tick")
def tick_(
    wait_: bool = typer.Option(True, "--wait/--no-wait", help="Execute the runs it starts before returning."),
) -> None:
    """One round of the scheduler without a server: triggers, stale runs, due runs (for cron)."""
    from passerelle.client import LocalClient
    from passerelle.pipelines import run_claimed, tick
    from passerelle.pipelines.runs import default_holder

    holder = default_holder()
    with client() as c:
        if not isinstance(c, LocalClient):
            raise InvalidInputError(
                "`pipeline tick` runs the scheduler on the store itself, and a server runs its own "
                "rounds: unset PASSERELLE_URL to run one here"
            )
        ctx = c.ctx

        def inline(run_id: str) -> None:
            run_claimed(ctx, run_id, holder)

        report = tick(ctx, holder, start=inline if wait_ else None)
        for thread in report.threads:
            thread.join()
    if not report.ticked:
        console.print("another process holds the pipelines lease; nothing done")
        return
    console.print(
        f"interrupted {len(report.interrupted)}, queued {len(report.queued)}, started {len(report.started)}"
    )


def lineage(
    ref: str = typer.Argument(..., help="A model version: churn:7, churn@champion."), as_json: bool = JSON
) -> None:
    """Where a version came from (datasets, run, trigger) and where it went (endpoints, alerts)."""
    with client() as c:
        found = c.lineage(ref)
    if as_json:
        print_json(found)
        return
    console.print(lineage_tree(found))


def lineage_tree(found: dict[str, Any]) -> Tree:
    nodes = {n["id"]: n for n in found["nodes"]}
    incoming: dict[str, list[tuple[str, str]]] = {}
    outgoing: dict[str, list[tuple[str, str]]] = {}
    for e in found["edges"]:
        incoming.setdefault(e["to"], []).append((e["from"], e["kind"]))
        outgoing.setdefault(e["from"], []).append((e["to"], e["kind"]))
    root = nodes[found["root"]]
    tree = Tree(
        f"[bold]{escape(root['label'])}[/] ({root.get('flavor')}, registered {root['created_at'][:19]})"
    )

    def text(node: dict[str, Any], kind: str) -> str:
        extra = ""
        if node["kind"] in ("dataset", "path") and node.get("fingerprint"):
            extra = f" {str(node['fingerprint'])[:19]}…"
        elif node["kind"] == "run":
            extra = f" ({node['state']}, trigger {node['trigger']})"
        elif node["kind"] == "revision":
            extra = f" ({node['revision_kind']}: {node.get('reason') or '-'})"
        elif node["kind"] == "alert" and node.get("summary"):
            extra = f" ({node['summary']})"
        return f"{kind}: {escape(node['label'] + extra)}"

    def up(branch: Tree, node_id: str, seen: set[str]) -> None:
        for source, kind in incoming.get(node_id, []):
            if source in seen:
                continue
            child = branch.add(text(nodes[source], kind))
            up(child, source, seen | {source})

    def down(branch: Tree, node_id: str, seen: set[str]) -> None:
        for target, kind in outgoing.get(node_id, []):
            if target in seen:
                continue
            child = branch.add(text(nodes[target], kind))
            down(child, target, seen | {target})

    upstream = tree.add("[dim]upstream[/]")
    up(upstream, root["id"], {root["id"]})
    downstream = tree.add("[dim]downstream[/]")
    down(downstream, root["id"], {root["id"]})
    return tree
