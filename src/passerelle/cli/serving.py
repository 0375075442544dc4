"""Commands for endpoints, traffic policies, the gateway and the prediction log."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from passerelle.cli._common import JSON, REASON, client, console, err_console, parse_since, print_json, when
from passerelle.errors import InvalidInputError

endpoints_app = typer.Typer(help="Online endpoints and their traffic policies.", no_args_is_help=True)
predictions_app = typer.Typer(help="The prediction log.", no_args_is_help=True)


def _routes(values: list[str]) -> list[tuple[str, int]]:
    from passerelle.policy import parse_weighted

    out = []
    for text in values:
        ref, weight = parse_weighted(text, "route")
        if weight is None:
            if len(values) > 1:
                raise InvalidInputError(
                    f"--route {text!r}: give a weight (REF=PERCENT) when there are several routes"
                )
            weight = 100
        if weight != int(weight):
            raise InvalidInputError(f"--route {text!r}: the weight must be a whole percentage")
        out.append((ref, int(weight)))
    return out


def deploy(
    name: str = typer.Argument(..., help="Endpoint name, e.g. churn-api."),
    model: str | None = typer.Option(
        None, "--model", help="One version for all traffic: churn@champion, churn:3."
    ),
    route: list[str] | None = typer.Option(
        None, "--route", help="REF=PERCENT, repeatable; weights sum to 100."
    ),
    sticky_key: str | None = typer.Option(
        None, "--sticky-key", help="Column whose value keeps a caller on one version."
    ),
    shadow: list[str] | None = typer.Option(
        None, "--shadow", help="REF[=PERCENT]: mirror traffic to a version."
    ),
    canary: str | None = typer.Option(
        None, "--canary", help="REF growing step by step against the other route."
    ),
    steps: str = typer.Option("5,25,50,100", "--steps", help="Canary weights, ending at 100."),
    step_interval: str = typer.Option("10m", "--step-interval", help="Time per canary step: 30s, 10m, 1h."),
    max_error_rate: float | None = typer.Option(
        0.05, "--max-error-rate", help="Canary gate: error rate (0-1)."
    ),
    max_p99_ms: float | None = typer.Option(None, "--max-p99-ms", help="Canary gate: p99 latency in ms."),
    max_disagreement: float | None = typer.Option(
        None, "--max-disagreement", help="Canary gate: share of answers differing from the baseline (0-1)."
    ),
    min_requests: int = typer.Option(
        20, "--min-requests", help="Canary requests needed before judging a step."
    ),
    key_column: str | None = typer.Option(
        None, "--key-column", help="Business key column (feedback, erasure)."
    ),
    max_batch_rows: int | None = typer.Option(
        None, "--max-batch-rows", help="Micro-batching: rows per model call."
    ),
    max_wait_ms: float | None = typer.Option(
        None, "--max-wait-ms", help="Micro-batching: longest wait to fill."
    ),
    no_monitor: bool = typer.Option(
        False,
        "--no-monitor",
        help="Create the endpoint without the default monitor and alert rules.",
    ),
    redact: list[str] | None = typer.Option(
        None,
        "--redact",
        help="Input column never written to the prediction log, repeatable; a redacted key column "
        "is logged as a keyed hash. Default: what the endpoint redacts now.",
    ),
    no_redact: bool = typer.Option(False, "--no-redact", help="Stop redacting: log every input column."),
    retention_days: int | None = typer.Option(
        None,
        "--retention-days",
        min=0,
        help="Delete logged predictions older than this many days (0: keep them whatever their age).",
    ),
    retention_rows: int | None = typer.Option(
        None, "--retention-rows", min=0, help="Keep only the newest this many logged predictions (0: all)."
    ),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Create an endpoint or change its policy (a new revision).

    Redaction and retention stay as they are unless given: --redact (or --no-redact),
    --retention-days and --retention-rows change them; without a retention of its own an
    endpoint follows the server's (settings prediction_retention_days and _rows).

    A new endpoint gets a monitor (hourly windows, each version's training dataset as
    reference) and default alert rules, unless --no-monitor is given.
    """
    from passerelle.endpoints import DeploySpec
    from passerelle.policy import CanaryGates, parse_duration, parse_steps, parse_weighted, readable_errors

    if model and route:
        raise InvalidInputError("give either --model or --route, not both")
    if not model and not route:
        raise InvalidInputError("give --model REF or one or more --route REF=PERCENT")
    if redact and no_redact:
        raise InvalidInputError("give either --redact or --no-redact, not both")
    routes = [(model, 100)] if model else _routes(route or [])
    if canary is not None:
        canary_ref, _ = parse_weighted(canary, "canary")
        if all(ref != canary_ref for ref, _ in routes):
            routes.append((canary_ref, 0))
    shadows = []
    for text in shadow or []:
        ref, pct = parse_weighted(text, "shadow")
        shadows.append((ref, 100.0 if pct is None else pct))
    with readable_errors():
        spec = DeploySpec(
            routes=routes,
            sticky_key=sticky_key,
            shadows=shadows,
            canary=canary and parse_weighted(canary, "canary")[0],
            steps=parse_steps(steps),
            step_interval_s=parse_duration(step_interval, "--step-interval"),
            gates=CanaryGates(
                max_error_rate=max_error_rate,
                max_p99_ms=max_p99_ms,
                max_disagreement=max_disagreement,
                min_requests=min_requests,
            ),
            max_batch_rows=max_batch_rows,
            max_wait_ms=max_wait_ms,
            key_column=key_column,
            monitor=not no_monitor,
            redact=[] if no_redact else redact or None,
            retention_days=retention_days,
            retention_rows=retention_rows,
        )
    with client() as c:
        rev = c.deploy(name, spec, reason=reason)
    if as_json:
        print_json(rev.model_dump(mode="json"))
        return
    split = ", ".join(f"{r.ref}={r.weight}%" for r in rev.policy.routes)
    console.print(f"{name}: revision {rev.number} ({rev.kind}) → {split}")
    for s in rev.policy.shadows:
        console.print(f"  shadow {s.ref} on {s.percent:g}% of traffic")
    if rev.policy.canary:
        c_ = rev.policy.canary
        console.print(f"  canary {c_.ref}: steps {c_.steps}, {c_.step_interval_s:g}s each")
    if rev.policy.redact:
        console.print(f"  not logged: {', '.join(rev.policy.redact)}", highlight=False)
    kept = rev.policy.retention
    if kept.max_age_days or kept.max_rows:
        limits = [f"{kept.max_age_days} days"] if kept.max_age_days else []
        limits += [f"the newest {kept.max_rows:,} rows"] if kept.max_rows else []
        console.print(f"  logged predictions kept: {' and '.join(limits)}", highlight=False)


def promote(
    name: str,
    ref: str = typer.Argument(..., help="The version to serve: churn:4."),
    reason: str | None = REASON,
) -> None:
    """Send all traffic to a version and move its model's @champion alias, in one revision."""
    with client() as c:
        rev = c.promote(name, ref, reason=reason)
    console.print(f"{name}: revision {rev.number} (promote) → {rev.policy.routes[0].ref}, now @champion")


def rollback(
    name: str,
    to: int | None = typer.Option(None, "--to", help="Revision to re-apply; default the previous one."),
    reason: str | None = REASON,
) -> None:
    """Re-apply an earlier revision's policy."""
    with client() as c:
        rev = c.rollback(name, to=to, reason=reason)
    split = ", ".join(f"{r.ref}={r.weight}%" for r in rev.policy.routes)
    console.print(f"{name}: revision {rev.number} (rollback) → {split}")


@endpoints_app.command("list")
def endpoints_list(as_json: bool = JSON) -> None:
    """List endpoints with their current split."""
    with client() as c:
        found = c.list_endpoints()
    if as_json:
        print_json([e.model_dump(mode="json") for e in found])
        return
    table = Table("endpoint", "revision", "routes", "shadows", "canary", "updated")
    for e in found:
        p = e.policy
        table.add_row(
            e.name,
            str(e.revision),
            ", ".join(f"{r.ref}={r.weight}%" for r in p.routes),
            ", ".join(f"{s.ref} ({s.percent:g}%)" for s in p.shadows),
            f"{p.canary.ref} step {p.canary.step_index + 1}/{len(p.canary.steps)}" if p.canary else "",
            when(e.updated_at),
        )
    console.print(table if found else "no endpoints deployed yet")


@endpoints_app.command("show")
def endpoints_show(name: str, as_json: bool = JSON) -> None:
    """Current policy, live split over the last 5 minutes, and revision history."""
    with client() as c:
        detail = c.get_endpoint(name)
    if as_json:
        print_json(detail.model_dump(mode="json"))
        return
    p = detail.endpoint.policy
    console.print(f"[bold]{name}[/]  revision {detail.endpoint.revision}")
    console.print("policy: " + ", ".join(f"{r.ref}={r.weight}%" for r in p.routes))
    if p.sticky_key:
        console.print(f"sticky key: {p.sticky_key}")
    for s in p.shadows:
        console.print(f"shadow: {s.ref} on {s.percent:g}%")
    if p.canary:
        c_ = p.canary
        console.print(f"canary: {c_.ref} at {c_.weight}% (step {c_.step_index + 1} of {c_.steps})")
    live = Table(
        "version", "requests", "share", "errors", "p50 ms", "p99 ms", title="live split (last 5 minutes)"
    )
    total = sum(v.requests for v in detail.live) or 1
    for v in detail.live:
        live.add_row(
            v.ref,
            str(v.requests),
            f"{v.requests / total:.0%}",
            f"{v.error_rate:.2%}",
            "-" if v.p50_ms is None else f"{v.p50_ms:.1f}",
            "-" if v.p99_ms is None else f"{v.p99_ms:.1f}",
        )
    console.print(live if detail.live else "no traffic in the last 5 minutes")
    history = Table("rev", "kind", "when", "who", "policy", "why", title="revisions")
    for r in detail.revisions:
        history.add_row(
            str(r.number),
            r.kind,
            when(r.created_at),
            r.created_by,
            ", ".join(f"{x.ref}={x.weight}%" for x in r.policy.routes),
            r.reason,
        )
    console.print(history)


@endpoints_app.command("weights")
def endpoints_weights(
    name: str,
    route: list[str] = typer.Argument(..., help="REF=PERCENT pairs summing to 100."),
    reason: str | None = REASON,
) -> None:
    """Change the traffic split (ends any canary)."""
    with client() as c:
        rev = c.set_weights(name, _routes(route), reason=reason)
    console.print(
        f"{name}: revision {rev.number} → " + ", ".join(f"{r.ref}={r.weight}%" for r in rev.policy.routes)
    )


@endpoints_app.command("compare")
def endpoints_compare(
    name: str,
    since: str = typer.Option("1d", "--since", help="Window: 1h, 1d, or an ISO date."),
    as_json: bool = JSON,
) -> None:
    """Served versions against their shadows on the same requests: agreement, score gaps, latency."""
    with client() as c:
        result = c.compare(name, since=parse_since(since) or dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    pairs = Table(
        "served", "shadow", "compared", "agreement", "mean |Δscore|", "max |Δscore|", "shadow errors"
    )
    for p in result.pairs:
        pairs.add_row(
            p.served,
            p.shadow,
            str(p.compared),
            "-" if p.agreement_rate is None else f"{p.agreement_rate:.1%}",
            "-" if p.mean_score_diff is None else f"{p.mean_score_diff:.4f}",
            "-" if p.max_score_diff is None else f"{p.max_score_diff:.4f}",
            str(p.errors),
        )
    console.print(pairs if result.pairs else "no shadow answers in this window")
    lat = Table("version", "role", "rows", "p50 ms", "p99 ms", title="latency")
    for v in result.latencies:
        lat.add_row(v.ref, v.role, str(v.rows), f"{v.p50_ms or 0:.2f}", f"{v.p99_ms or 0:.2f}")
    console.print(lat)


@predictions_app.command("tail")
def predictions_tail(
    name: str, limit: int = typer.Option(20, "--limit", "-n", min=1, max=10_000), as_json: bool = JSON
) -> None:
    """The newest logged predictions of an endpoint."""
    with client() as c:
        rows = c.predictions_tail(name, limit=limit)
    if as_json:
        print_json(rows)
        return
    table = Table("time", "id", "version", "latency ms", "prediction", "shadow")
    for row in rows:
        shadow = ", ".join(
            f"{s.get('model')}:{s.get('version')}→{(s.get('outputs') or {}).get('prediction')}"
            for s in row.get("shadows", [])
        )
        table.add_row(
            str(row.get("at")),
            str(row.get("id")),
            f"{row.get('model')}:{row.get('version')}",
            f"{row.get('latency_ms', 0):.2f}",
            str((row.get("outputs") or {}).get("prediction")),
            shadow,
        )
    console.print(table if rows else "no predictions logged yet")


@predictions_app.command("export")
def predictions_export(
    name: str,
    output: Path = typer.Option(..., "--output", "-o", help="File to write."),
    since: str | None = typer.Option(None, "--since", help="1d, 12h or an ISO date."),
    fmt: str = typer.Option("parquet", "--format", help="parquet, csv or jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Export logged predictions (inputs, outputs, shadow outputs) to a file."""
    if fmt not in {"parquet", "csv", "jsonl"}:
        raise InvalidInputError(f"--format {fmt!r}: choose parquet, csv or jsonl")
    if output.exists() and not overwrite:
        raise InvalidInputError(f"{output} exists; pass --overwrite to replace it")
    with client() as c:
        rows = c.predictions_export(name, output=output, since=parse_since(since), fmt=fmt)
    console.print(f"exported {rows} prediction(s) to {output}")


@predictions_app.command("archive")
def predictions_archive(
    name: str | None = typer.Argument(None, help="Endpoint name; default: every endpoint."),
    older_than: str = typer.Option(
        ..., "--older-than", help="Move predictions older than this (30d, 12h), counted in whole days."
    ),
    to: str | None = typer.Option(
        None, "--to", help="Archive root: a folder or s3://bucket/prefix (default: setting archive_uri)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would move; change nothing."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Move old predictions from the database to Parquet files, one folder per endpoint and day."""
    from passerelle.archive import archive
    from passerelle.context import Context
    from passerelle.policy import parse_duration
    from passerelle.settings import load_settings

    settings = load_settings()
    if settings.url:
        # The archive is written by whoever holds the database and the artifact store.
        raise InvalidInputError(
            "predictions archive works on the store itself: run it without PASSERELLE_URL, with the "
            "server's database and artifact settings"
        )
    with _usage_errors():
        age = dt.timedelta(seconds=parse_duration(older_than, "--older-than"))
    ctx = Context(settings)
    try:
        with _usage_errors():
            report = archive(ctx, name, older_than=age, root=to, dry_run=dry_run, reason=reason)
    finally:
        ctx.close()
    if as_json:
        print_json(report.to_dict())
        return
    verb = "would move" if dry_run else "moved"
    for batch in report.batches:
        where = f" → {batch.file}" if batch.file else ""
        console.print(
            f"{batch.endpoint} {batch.date}: {verb} {batch.rows} prediction(s){where}", highlight=False
        )
    console.print(
        f"{verb} {report.rows} prediction(s) from before {report.cutoff:%Y-%m-%d} (UTC) to {report.root}",
        highlight=False,
        soft_wrap=True,
    )
    if report.recovered:
        console.print(f"finished {report.recovered} file(s) left by an interrupted run", highlight=False)
    for endpoint in report.busy:
        console.print(f"[yellow]{endpoint}: another process is archiving it[/]", highlight=False)
    for endpoint, problem in report.failed.items():
        err_console.print(f"[red]{endpoint}: {escape(problem)}[/]", highlight=False, soft_wrap=True)
    if report.more:
        console.print("more predictions are due: run the command again", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@predictions_app.command("erase")
def predictions_erase(
    name: str = typer.Argument(..., help="Endpoint name, e.g. churn-api."),
    key: str = typer.Option(
        ...,
        "--key",
        help="The business key: COLUMN=VALUE (customer_id=C000042), or VALUE when the endpoint has a "
        "key column.",
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why (a ticket number...); kept in the audit log, so never the key itself."
    ),
    as_json: bool = JSON,
) -> None:
    """Erase every logged prediction, shadow answer and label tied to a business key.

    Predictions of that key still waiting in a log segment are dropped when shipped. The audit
    log records the counts and a keyed hash of the key, never the key.
    """
    with _usage_errors(), client() as c:
        erased = c.erase_predictions(name, key, reason=reason)
    if as_json:
        print_json(erased.model_dump(mode="json"))
        return
    console.print(
        f"{name}: erased {erased.predictions} prediction(s), {erased.shadows} shadow answer(s), "
        f"{erased.feedback} label(s), {erased.feedback_unmatched} kept label(s) and {erased.set_aside} "
        f"set-aside line(s); audit key hash {erased.key_hash}",
        highlight=False,
        soft_wrap=True,
    )


@predictions_app.command("retention")
def predictions_retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing."),
    as_json: bool = JSON,
) -> None:
    """Apply each endpoint's retention now: delete older predictions with their shadows and labels."""
    with client() as c:
        deleted = c.apply_retention(dry_run=dry_run)
    if as_json:
        print_json(deleted)
        return
    if not deleted:
        console.print(
            "no retention limit in force: set one with deploy --retention-days/--retention-rows, or the "
            "settings prediction_retention_days/prediction_retention_rows",
            highlight=False,
        )
        return
    verb = "would delete" if dry_run else "deleted"
    for endpoint, n in deleted.items():
        console.print(f"{endpoint}: {verb} {n} prediction(s)", highlight=False)


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Arguments that cannot be used end the command with status 2 and one line."""
    try:
        yield
    except InvalidInputError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (SO_REUSEPORT)."),
    auth: bool = typer.Option(
        False,
        "--auth",
        help="Require an API token on every route but health, metrics and docs (or PASSERELLE_AUTH=1).",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow a non-loopback address without authentication."
    ),
    ssl_certfile: Path | None = typer.Option(
        None, "--ssl-certfile", help="Serve HTTPS with this PEM certificate (chain)."
    ),
    ssl_keyfile: Path | None = typer.Option(
        None, "--ssl-keyfile", help="The certificate's PEM private key, unless the certificate file holds it."
    ),
    no_fsync: bool = typer.Option(
        False,
        "--no-fsync",
        help="Do not wait for the disk before answering (a crash may lose answered predictions).",
    ),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Serve every endpoint, the management API, /healthz, /readyz, /metrics and /docs.

    Without --auth, only a loopback address is allowed (or any with --insecure); see
    docs/security.md.
    """
    from passerelle.serving.server import ServeOptions, check_bind, is_loopback, with_options
    from passerelle.serving.server import serve as run
    from passerelle.settings import load_settings

    settings = load_settings()
    options = ServeOptions(
        host=host,
        port=port,
        workers=workers,
        insecure=insecure,
        fsync=not no_fsync,
        log_level=log_level,
        auth=auth or settings.auth,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )
    check_bind(options)
    settings = with_options(settings, options)
    console.print(
        f"passerelle serving on {options.scheme}://{host}:{port} ({workers} worker(s)); docs at /docs",
        highlight=False,
    )
    if options.auth:
        from passerelle.auth import list_tokens
        from passerelle.context import Context

        console.print("authentication on: every route but health, metrics and docs needs an API token")
        ctx = Context(settings)
        try:
            active = [t for t in list_tokens(ctx) if t.status == "active"]
        finally:
            ctx.close()
        if not active:
            err_console.print(
                "[yellow]warning:[/] no active token exists, so every request but health, metrics and "
                "docs will be refused; create one with: passerelle tokens create --name NAME --role admin",
                highlight=False,
                soft_wrap=True,
            )
    elif is_loopback(host):
        console.print(
            "[yellow]no authentication (--auth turns it on): only this machine can reach the server[/]"
        )
    else:
        console.print(
            f"[red]no authentication on {host}: anyone who can reach it can do anything (--insecure)[/]"
        )
    run(settings, options)
