"""Commands for batch scoring (``score``, ``batch runs``, ``batch show``) and ``export``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from passerelle.cli._common import JSON, REASON, client, console, err_console, print_json, when

if TYPE_CHECKING:
    from passerelle.batch import BatchRunInfo, ProgressUpdate

batch_app = typer.Typer(help="Batch scoring runs.", no_args_is_help=True)


class _RowsColumn(ProgressColumn):
    """Rows scored so far and the rate since the start (the bar itself may count bytes)."""

    def render(self, task: Task) -> Text:
        rows = int(task.fields.get("rows", 0))
        elapsed = task.elapsed or 0.0
        rate = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 and rows else "… rows/s"
        return Text(f"{rows:,} rows  {rate}", style="progress.data.speed")


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _RowsColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def _summary(info: BatchRunInfo) -> None:
    rate = info.rows_per_second
    speed = f" ({rate:,.0f} rows/s)" if rate else ""
    console.print(
        f"scored [bold]{info.rows_scored:,}[/] of {info.rows_in:,} rows with [bold]{info.ref}[/] "
        f"in {info.duration_s or 0:.1f} s{speed} → {info.output_uri}",
        highlight=False,
    )
    if info.rows_rejected:
        console.print(
            f"[yellow]{info.rows_rejected:,} row(s) rejected[/] → {info.rejects_uri}",
            highlight=False,
        )
    if info.details.get("logged_rows") is not None:
        console.print(
            f"{info.details['logged_rows']:,} prediction(s) logged to endpoint "
            f"{info.details.get('log_endpoint')}",
            highlight=False,
        )
    console.print(f"run {info.run_id}", highlight=False)


def score(
    ref: str = typer.Argument(..., help="The version: churn:3, churn@champion or churn."),
    input: str = typer.Option(..., "--input", "-i", help="CSV or Parquet file, local or s3://."),
    output: str = typer.Option(..., "--output", "-o", help="CSV or Parquet file to write, local or s3://."),
    keep: list[str] | None = typer.Option(
        None, "--keep", help="Input column copied to the output, e.g. an id; repeatable."
    ),
    rejects: str | None = typer.Option(
        None, "--rejects", help="Where rejected rows go (default: OUTPUT named NAME.rejects.EXT)."
    ),
    fail_on_reject: bool = typer.Option(False, "--fail-on-reject", help="Fail the run on any rejected row."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output and rejects files."),
    log: bool = typer.Option(False, "--log", help="Append every scored row to the prediction log."),
    log_endpoint: str | None = typer.Option(
        None, "--log-endpoint", help="Endpoint name the logged predictions go under (default MODEL-batch)."
    ),
    key_column: str | None = typer.Option(
        None, "--key-column", help="Input column recorded as each logged prediction's key."
    ),
    engine: str = typer.Option("local", "--engine", help="local (streaming, one process) or spark."),
    spark_master: str | None = typer.Option(
        None, "--spark-master", help="Spark master URL (default: the session's, else local[*])."
    ),
    batch_rows: int | None = typer.Option(None, "--batch-rows", min=1, help="Rows per chunk (Parquet)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary (for cron)."),
    as_json: bool = JSON,
) -> None:
    """Score a CSV or Parquet file of any size with a model version, chunk by chunk."""
    bar = None if quiet or as_json else _progress_bar()
    task: Any = None

    def on_progress(update: ProgressUpdate) -> None:
        nonlocal task
        assert bar is not None
        if task is None:
            # Started on the first chunk, so that a refused run shows no bar.
            bar.start()
            task = bar.add_task(f"scoring {input}", total=update.total, rows=0)
        bar.update(task, completed=update.done, total=update.total, rows=update.rows)

    try:
        with client() as c:
            info = c.score(
                ref,
                input,
                output,
                keep=keep,
                rejects=rejects,
                fail_on_reject=fail_on_reject,
                overwrite=overwrite,
                log=log,
                log_endpoint=log_endpoint,
                key_column=key_column,
                batch_rows=batch_rows,
                engine=engine,
                spark_master=spark_master,
                progress=on_progress if bar is not None else None,
            )
        if bar is not None and task is not None:
            total = bar.tasks[0].total
            bar.update(task, completed=total or 1, total=total or 1)
    finally:
        if bar is not None and task is not None:
            bar.stop()
    if as_json:
        print_json(info.model_dump(mode="json"))
    elif not quiet:
        _summary(info)


def export(
    ref: str = typer.Argument(..., help="The version to export: churn:3, churn@champion or churn."),
    output: str = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    tolerance: float | None = typer.Option(
        None, "--tolerance", min=0.0, help="Largest difference accepted from the original (default 1e-4)."
    ),
    sample: str | None = typer.Option(
        None, "--sample", help="CSV or Parquet inputs to check on (default: the version's training dataset)."
    ),
    register: str | None = typer.Option(
        None, "--register", help="Also register the export as a new onnx version of this model name."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output file."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Convert a version to ONNX for embedded use, checked against the original."""
    with client() as c:
        info = c.export(
            ref,
            output,
            fmt=fmt,
            tolerance=tolerance,
            sample=sample,
            register=register,
            overwrite=overwrite,
            reason=reason,
        )
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    console.print(
        f"exported [bold]{info.source}[/] to {info.output} with {info.converter}; on {info.rows_checked} "
        f"sample rows its {info.compared} differ by at most {info.max_abs_diff:.3g} "
        f"(tolerance {info.tolerance:g})",
        highlight=False,
    )
    if info.registered:
        console.print(f"registered [bold]{info.registered}[/] (exported_from {info.source})", highlight=False)


@batch_app.command("runs")
def batch_runs(
    model: str | None = typer.Option(None, "--model", help="Only this model's runs."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = JSON,
) -> None:
    """List batch scoring runs, newest first."""
    with client() as c:
        runs = c.batch_runs(model=model, limit=limit)
    if as_json:
        print_json([r.model_dump(mode="json") for r in runs])
        return
    table = Table(
        "run", "version", "status", "engine", "rows", "scored", "rejected", "seconds", "started", "by"
    )
    for r in runs:
        status = {"succeeded": "[green]succeeded[/]", "failed": "[red]failed[/]"}.get(r.status, r.status)
        table.add_row(
            r.run_id[:12],
            r.ref,
            status,
            r.engine,
            f"{r.rows_in:,}",
            f"{r.rows_scored:,}",
            f"{r.rows_rejected:,}",
            "" if r.duration_s is None else f"{r.duration_s:.1f}",
            when(r.started_at),
            r.created_by,
        )
    console.print(table if runs else "no batch runs recorded yet")


@batch_app.command("show")
def batch_show(
    run_id: str = typer.Argument(..., help="A run id, or its first characters (at least 6)."),
    as_json: bool = JSON,
) -> None:
    """Show one batch run: input and its fingerprint, outputs, counts, outcome."""
    with client() as c:
        r = c.batch_run(run_id)
    if as_json:
        print_json(r.model_dump(mode="json"))
        return
    console.print(f"[bold]run {r.run_id}[/]  {r.ref}  {r.status}  engine {r.engine}", highlight=False)
    console.print(f"started {when(r.started_at)} by {r.created_by}", highlight=False)
    if r.finished_at is not None:
        console.print(f"finished {when(r.finished_at)} after {r.duration_s or 0:.1f} s", highlight=False)
    console.print(f"input: {r.input_uri}\nfingerprint: {r.input_fingerprint}", highlight=False)
    console.print(f"output: {r.output_uri}", highlight=False)
    if r.rejects_uri:
        console.print(f"rejects: {r.rejects_uri}", highlight=False)
    console.print(
        f"rows: {r.rows_in:,} in, {r.rows_scored:,} scored, {r.rows_rejected:,} rejected", highlight=False
    )
    for reason, count in sorted(r.details.get("rejections", {}).items(), key=lambda kv: -kv[1]):
        console.print(f"  {count:,} rows: {reason}", highlight=False)
    if r.details.get("logged_rows") is not None:
        console.print(
            f"logged: {r.details['logged_rows']:,} prediction(s) under endpoint "
            f"{r.details.get('log_endpoint')}",
            highlight=False,
        )
    if r.error:
        console.print(f"[red]error:[/] {r.error}", highlight=False)
