"""Commands for monitors, alert rules, alerts, silences and notifiers.

``passerelle monitor ...`` configures, runs and shows the monitor of an endpoint, and writes its
HTML report; ``passerelle alerts ...`` lists alerts and manages their rules, silences and
notifiers. Exit status: 0 on success, 2 for an argument, a name or a configuration that cannot
be used (one line on standard error), 1 for other errors (a notifier that cannot be reached).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from passerelle.cli._common import JSON, REASON, client, console, err_console, parse_pairs, print_json, when
from passerelle.errors import InvalidInputError, InvalidReferenceError, NotFoundError

if TYPE_CHECKING:
    from passerelle.alerts import AlertInfo, RuleInfo, SilenceInfo
    from passerelle.monitor import MonitorInfo, ResultInfo
    from passerelle.notify import NotifierInfo

monitor_app = typer.Typer(
    help="Monitors: the checks of an endpoint over windows of its traffic, and their report.",
    no_args_is_help=True,
)
alerts_app = typer.Typer(help="Alerts, their rules, silences and notifiers.", no_args_is_help=True)
rules_app = typer.Typer(
    help="Alert rules: conditions on the figures of a monitor's windows.", no_args_is_help=True
)
notifiers_app = typer.Typer(help="Where alerts are sent: webhooks, Slack and e-mail.", no_args_is_help=True)
alerts_app.add_typer(rules_app, name="rules")
alerts_app.add_typer(notifiers_app, name="notifiers")

# Exit status for what cannot be used at all, as for the feedback commands.
_UNUSABLE = 2
_NONE = "-"


class AlertState(enum.StrEnum):
    open = "open"
    pending = "pending"
    firing = "firing"
    resolved = "resolved"
    cleared = "cleared"


class Severity(enum.StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class NotifierKind(enum.StrEnum):
    webhook = "webhook"
    slack = "slack"
    smtp = "smtp"


class OutboxStatus(enum.StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"


# ------------------------------------------------------------------------------------------ helpers


def _say(text: str) -> None:
    """One line of plain text: never wrapped, brackets and all, so that it can be grepped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(_UNUSABLE)


@contextlib.contextmanager
def _usable() -> Iterator[None]:
    """An argument, a name or a configuration that cannot be used ends the command with status 2."""
    try:
        yield
    except (InvalidInputError, InvalidReferenceError, NotFoundError) as exc:
        _fail(str(exc))


def _seconds(text: str, option: str) -> float:
    from passerelle.policy import parse_duration

    return parse_duration(text, option)


def _ago(text: str | None, option: str) -> dt.datetime | None:
    """``7d`` (that long ago) or an ISO date or time such as ``2026-03-01T00:00Z`` (UTC when no zone)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text[0].isdigit() and text[-1].isalpha() and "-" not in text and ":" not in text:
        try:
            return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=_seconds(text, option))
        except OverflowError:
            raise InvalidInputError(f"{option} {text!r} is too long ago") from None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{option} {text!r}: use a duration such as 7d, 12h or 30m, or an ISO time such as "
            "2026-03-01T00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _span(seconds: float) -> str:
    """``3600`` → ``1h``: the largest unit that divides the length."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _number(value: float | None, digits: int = 3) -> str:
    return _NONE if value is None else f"{value:.{digits}g}"


def _share(value: float | None) -> str:
    return _NONE if value is None else f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


_STATUS_STYLE = {
    "ok": "green",
    "drift": "red",
    "error": "bold red",
    "insufficient": "yellow",
    "no_traffic": "dim",
}
_STATE_STYLE = {"firing": "bold red", "pending": "yellow", "resolved": "green", "cleared": "dim"}


def _styled(text: str, styles: dict[str, str]) -> str:
    style = styles.get(text)
    return f"[{style}]{escape(text)}[/]" if style else escape(text)


# ----------------------------------------------------------------------------------------- monitors


def _describe(info: MonitorInfo) -> str:
    state = "enabled" if info.enabled else "disabled"
    return (
        f"{info.endpoint}: {_span(info.window_s)} windows, evaluated {_span(info.delay_s)} after they close, "
        f"reference {info.reference}, {state}; next window {when(info.next_window)}"
    )


@monitor_app.command("set")
def monitor_set(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    window: str | None = typer.Option(None, "--window", help="Window length: 1h (the default), 30m, 1d."),
    delay: str | None = typer.Option(
        None, "--delay", help="Wait after a window closes before evaluating it, for late predictions: 1m, 0."
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        help="What drift is measured against: training (each version's training dataset, the default) or a "
        "dataset such as churn-train:2.",
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="The metric shown first and used by the A/B verdict: auc, accuracy, rmse..."
    ),
    label_column: str | None = typer.Option(
        None, "--label-column", help="The reference's label column, to calibrate estimated performance."
    ),
    drift_share: float | None = typer.Option(
        None, "--drift-share", help="Share of drifted features at which the data counts as drifted (0-1)."
    ),
    min_rows: int | None = typer.Option(
        None, "--min-rows", help="Rows a window needs to be judged; fewer merge into the next window."
    ),
    start: str | None = typer.Option(
        None,
        "--start",
        help="Evaluate from this past time on: 7d (ago) or 2026-03-01T00:00Z. Windows evaluated before are "
        "evaluated again.",
    ),
    disable: bool = typer.Option(False, "--disable", help="Keep the monitor but stop evaluating windows."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Create or change the monitor of an endpoint; options not given keep their current values.

    Without --disable, the monitor is enabled.
    """
    from passerelle.monitor import parse_spec

    drift: dict[str, Any] = {}
    if drift_share is not None:
        drift["drift_share"] = drift_share
    if min_rows is not None:
        drift["min_n"] = min_rows
    with _usable(), client() as c:
        since = _ago(start, "--start")
        try:
            base = c.get_monitor(endpoint).spec
        except NotFoundError:
            base = None
        spec = parse_spec(
            window=window,
            delay=delay,
            reference=reference,
            drift=drift,
            metric=metric,
            label_column=label_column,
            base=base,
        )
        info = c.set_monitor(endpoint, spec, enabled=not disable, start=since, reason=reason)
    if as_json:
        print_json(info.to_dict())
        return
    _say(_describe(info))


@monitor_app.command("list")
def monitor_list(as_json: bool = JSON) -> None:
    """List monitors."""
    with _usable(), client() as c:
        found = c.list_monitors()
    if as_json:
        print_json([m.to_dict() for m in found])
        return
    if not found:
        _say(
            "no monitors yet: `passerelle deploy` attaches one to a new endpoint, and "
            "`passerelle monitor set` to an existing one"
        )
        return
    table = Table("endpoint", "window", "delay", "reference", "state", "next window", "updated")
    for m in found:
        table.add_row(
            escape(m.endpoint),
            _span(m.window_s),
            _span(m.delay_s),
            escape(m.reference),
            "enabled" if m.enabled else "[dim]disabled[/]",
            when(m.next_window),
            when(m.updated_at),
        )
    console.print(table)


def _main_metric(metric: str | None, results: Sequence[ResultInfo]) -> str:
    """The figure name of the monitor's metric, else the first of auc, accuracy, rmse the windows have."""
    if metric:
        return {"roc_auc": "auc"}.get(metric, metric)
    present = {name for r in results for name in r.figures}
    for name in ("auc", "accuracy", "rmse"):
        if f"performance.{name}" in present or f"estimated.{name}" in present:
            return name
    return "accuracy"


def _drifted_columns(result: ResultInfo) -> list[str]:
    prefix = "drift.column."
    return sorted(
        name[len(prefix) :] for name, value in result.figures.items() if name.startswith(prefix) and value
    )


@monitor_app.command("show")
def monitor_show(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    since: str = typer.Option(
        "1d", "--since", help="Windows from this time on: 1d, 12h (ago) or an ISO time."
    ),
    version: str | None = typer.Option(
        None,
        "--version",
        help="Only one series: a version such as churn:3, or all (the endpoint as a whole).",
    ),
    as_json: bool = JSON,
) -> None:
    """The monitor of an endpoint and the figures of its recent windows, oldest first."""
    with _usable(), client() as c:
        start = _ago(since, "--since")
        info = c.get_monitor(endpoint)
        results = c.monitor_results(endpoint, since=start, version=version)
    if as_json:
        print_json({"monitor": info.to_dict(), "results": [r.to_dict() for r in results]})
        return
    _say(_describe(info))
    if not results:
        _say(
            f"no window evaluated since {when(start) if start else 'the start'}; "
            f"`passerelle monitor run {endpoint}` evaluates the closed ones"
        )
        return
    metric = _main_metric(info.config.get("metric"), results)
    table = Table(
        "window start (UTC)",
        "version",
        "status",
        "rows",
        "drift share",
        "drifted",
        "p99 ms",
        "errors",
        metric,
        f"est. {metric}",
        "labelled",
    )
    for r in results:
        f = r.figures
        drifted = f.get("drift.columns")
        table.add_row(
            f"{r.window_start.astimezone(dt.UTC):%Y-%m-%d %H:%M}",
            escape(r.ref),
            _styled(r.status, _STATUS_STYLE),
            f"{r.rows:,}",
            _share(f.get("drift.share")),
            _NONE if drifted is None else f"{drifted:g}",
            _number(f.get("latency.p99_ms")),
            _share(f.get("errors.rate")),
            _number(f.get(f"performance.{metric}")),
            _number(f.get(f"estimated.{metric}")),
            _share(f.get("labels.coverage")),
        )
    console.print(table)
    latest: dict[str, ResultInfo] = {}
    for r in results:
        if any(name.startswith("drift.column.") for name in r.figures):
            latest[r.ref] = r
    for ref, r in latest.items():
        columns = _drifted_columns(r)
        _say(
            f"latest drifted columns of {ref} (window {when(r.window_start)}): "
            + (", ".join(columns) if columns else "none")
        )


@monitor_app.command("run")
def monitor_run(
    endpoint: str | None = typer.Argument(
        None, help="Only this endpoint's monitor; default every enabled one."
    ),
    as_json: bool = JSON,
) -> None:
    """Evaluate the windows that have closed, now, and print the alerts that moved."""
    with _usable(), client() as c:
        summaries = c.run_monitors(endpoint)
    if as_json:
        print_json([s.to_dict() for s in summaries])
        return
    if not summaries:
        _say("no enabled monitor to run")
    for s in summaries:
        if s.skipped:
            _say(f"{s.endpoint}: skipped ({s.skipped})")
            continue
        line = f"{s.endpoint}: {_plural(s.windows, 'window')} evaluated"
        if s.windows:
            last = s.results[-1]
            line += f", the last ending {when(last.window_end)}"
        if s.relabelled_windows:
            line += f"; performance recomputed on {_plural(s.relabelled_windows, 'window')} with new labels"
        _say(line)
        for t in s.transitions:
            a = t.alert
            scope = "all versions" if not a.version else f"{a.model}:{a.version}"
            _say(f"  alert {a.id} {a.rule} ({a.severity}) on {scope}: {t.before} → {t.after}: {a.summary}")


@monitor_app.command("remove")
def monitor_remove(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    reason: str | None = REASON,
) -> None:
    """Stop the monitor of an endpoint; its results stay readable."""
    with _usable(), client() as c:
        c.remove_monitor(endpoint, reason=reason)
    _say(f"{endpoint}: monitor stopped; its results stay (`passerelle monitor show {endpoint}`)")


def _write(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` whole or not at all; returns the bytes written."""
    data = text.encode("utf-8")
    target = path.expanduser()
    if target.is_dir():
        raise InvalidInputError(f"--output {path}: is a folder; name the HTML file to write")
    folder = target.parent
    if not folder.is_dir():
        raise InvalidInputError(f"--output {path}: the folder {folder} does not exist")
    try:
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InvalidInputError(f"--output {path}: cannot write in {folder}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        # mkstemp makes the file readable by its owner only; a report is meant to be shared.
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except OSError as exc:
        raise InvalidInputError(f"--output {path}: cannot write the report: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return len(data)


@monitor_app.command("report")
def monitor_report(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
    since: str | None = typer.Option(
        None, "--since", help="Start of the period: 7d (ago, the default) or an ISO time."
    ),
    until: str | None = typer.Option(None, "--until", help="End of the period: an ISO time; default now."),
) -> None:
    """Write the self-contained HTML report of an endpoint: drift, distributions, performance, alerts."""
    with _usable(), client() as c:
        page = c.monitor_report(endpoint, since=_ago(since, "--since"), until=_ago(until, "--until"))
        size = _write(output, page)
    _say(f"wrote {output} ({size / 1024:,.0f} kB): the monitoring report of {endpoint}")


# ------------------------------------------------------------------------------------------- alerts


def _alerts_table(found: Sequence[AlertInfo]) -> Table:
    table = Table(
        "id", "endpoint", "rule", "severity", "version", "state", "value", "since", "notes", "summary"
    )
    for a in found:
        notes = [
            note
            for note, on in (
                (f"acked by {a.acked_by}", a.acked_by),
                ("silenced", a.silenced),
                ("inhibited", a.inhibited),
            )
            if on
        ]
        moment = a.resolved_at or a.fired_at or a.started_at
        table.add_row(
            str(a.id),
            escape(a.endpoint),
            escape(a.rule),
            a.severity,
            "all" if not a.version else escape(f"{a.model}:{a.version}"),
            _styled(a.state, _STATE_STYLE),
            _number(a.value),
            when(moment),
            escape(", ".join(notes)),
            escape(a.summary),
        )
    return table


@alerts_app.command("list")
def alerts_list(
    endpoint: str | None = typer.Argument(None, help="Only this endpoint's alerts."),
    state: AlertState | None = typer.Option(None, "--state", help="open means pending or firing."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, help="At most this many alerts."),
    as_json: bool = JSON,
) -> None:
    """Alerts, newest first."""
    with _usable(), client() as c:
        found = c.list_alerts(endpoint, state=state.value if state else None, limit=limit)
    if as_json:
        print_json([a.to_dict() for a in found])
        return
    console.print(_alerts_table(found) if found else "no alerts")


@alerts_app.command("ack")
def alerts_ack(
    alert_id: int = typer.Argument(..., help="The alert's id."), reason: str | None = REASON
) -> None:
    """Acknowledge a firing alert: it is not notified again until it resolves."""
    with _usable(), client() as c:
        a = c.ack_alert(alert_id, reason=reason)
    _say(f"alert {a.id} ({a.rule} on {a.endpoint}) acknowledged: not notified again until it resolves")


def _silence_line(s: SilenceInfo) -> str:
    rules = "every rule" if s.rule == "*" else f"rule {s.rule}"
    state = f"until {when(s.ends_at)}" if s.active else f"ended {when(s.ends_at)}"
    return f"silence {s.id}: {s.endpoint} {rules}, {state}" + (f" ({s.comment})" if s.comment else "")


@alerts_app.command("silence")
def alerts_silence(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    rule: str = typer.Option("*", "--rule", help="Only this rule's alerts; default every rule."),
    for_: str = typer.Option(..., "--for", help="How long, from now: 2h, 30m, 1d."),
    comment: str = typer.Option("", "--comment", help="Why; kept with the silence and in the audit log."),
) -> None:
    """Mute the notifications of an endpoint's alerts for a while; alerts still change state."""
    with _usable(), client() as c:
        seconds = _seconds(for_, "--for")
        try:
            duration = dt.timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidInputError(f"--for {for_!r} is too long") from None
        s = c.silence(endpoint, rule=rule, duration=duration, comment=comment)
    _say(_silence_line(s))


@alerts_app.command("silences")
def alerts_silences(
    endpoint: str | None = typer.Argument(None, help="Only this endpoint's silences."),
    active: bool = typer.Option(False, "--active", help="Only the silences in force now."),
    as_json: bool = JSON,
) -> None:
    """Silences, newest first."""
    with _usable(), client() as c:
        found = c.list_silences(endpoint, active_only=active)
    if as_json:
        print_json([s.to_dict() for s in found])
        return
    if not found:
        _say("no silences" + (" in force" if active else ""))
        return
    table = Table("id", "endpoint", "rule", "from", "until", "state", "by", "comment")
    for s in found:
        table.add_row(
            str(s.id),
            escape(s.endpoint),
            escape(s.rule),
            when(s.starts_at),
            when(s.ends_at),
            "active" if s.active else "[dim]ended[/]",
            escape(s.created_by),
            escape(s.comment),
        )
    console.print(table)


@alerts_app.command("unsilence")
def alerts_unsilence(
    silence_id: int = typer.Argument(..., help="The silence's id."), reason: str | None = REASON
) -> None:
    """End a silence now."""
    with _usable(), client() as c:
        s = c.expire_silence(silence_id, reason=reason)
    _say(_silence_line(s))


@alerts_app.command("notifications")
def alerts_notifications(
    status: OutboxStatus | None = typer.Option(
        None, "--status", help="Only pending, sent or failed messages."
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, help="At most this many messages."),
    as_json: bool = JSON,
) -> None:
    """The notification outbox, latest first: what was sent, what waits, what failed and why."""
    with _usable(), client() as c:
        rows = c.notifications(status=status.value if status else None, limit=limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        _say("no notifications" + (f" {status.value}" if status else ""))
        return
    table = Table(
        "id", "notifier", "event", "alerts", "status", "attempts", "created", "sent / next", "last error"
    )
    for row in rows:
        nxt = row["sent_at"] if row["status"] == "sent" else row["next_attempt_at"]
        table.add_row(
            str(row["id"]),
            escape(str(row["notifier"])),
            escape(str(row["event"])),
            str(row["alerts"]),
            _styled(str(row["status"]), {"sent": "green", "failed": "red", "pending": "yellow"}),
            str(row["attempts"]),
            _when_text(row["created_at"]),
            _when_text(nxt) if row["status"] != "failed" else _NONE,
            escape(str(row["last_error"] or "")),
        )
    console.print(table)


def _when_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return when(value)
    if isinstance(value, str) and value:
        try:
            return when(dt.datetime.fromisoformat(value))
        except ValueError:
            return escape(value)
    return _NONE


# -------------------------------------------------------------------------------------- alert rules


def _rule_line(r: RuleInfo) -> str:
    parts = [f"{r.endpoint}: rule {r.name}: {r.expression}"]
    parts.append(f"fires after {_plural(r.for_windows, 'window')}")
    parts.append(f"keeps firing {_plural(r.keep_firing_windows, 'window')} after")
    parts.append(r.severity)
    if r.inhibited_by:
        parts.append(f"held back while {', '.join(r.inhibited_by)} fires")
    parts.append(f"notifies {', '.join(r.notify) if r.notify else 'every notifier'}")
    if r.pipeline:
        parts.append(f"triggers pipeline {r.pipeline}")
    return ", ".join(parts)


@rules_app.command("list")
def rules_list(
    endpoint: str | None = typer.Argument(None, help="Only this endpoint's rules."),
    as_json: bool = JSON,
) -> None:
    """The alert rules in force, by endpoint and name."""
    with _usable(), client() as c:
        found = c.list_alert_rules(endpoint)
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    if not found:
        _say("no alert rules")
        return
    table = Table(
        "endpoint",
        "rule",
        "expression",
        "for",
        "keep firing",
        "severity",
        "inhibited by",
        "notify",
        "pipeline",
    )
    for r in found:
        table.add_row(
            escape(r.endpoint),
            escape(r.name),
            escape(r.expression),
            str(r.for_windows),
            str(r.keep_firing_windows),
            r.severity,
            escape(", ".join(r.inhibited_by)),
            escape(", ".join(r.notify) or "all"),
            escape(r.pipeline or ""),
        )
    console.print(table)


@rules_app.command("set")
def rules_set(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    name: str = typer.Argument(..., help="The rule's name, e.g. data-drift."),
    expr: str = typer.Option(
        ..., "--expr", help="<figure> <op> <number>, such as 'drift.share > 0.3' or 'latency.p99_ms > 500'."
    ),
    for_windows: int = typer.Option(
        1, "--for", help="Consecutive windows the condition holds before it fires."
    ),
    keep_firing: int = typer.Option(
        0, "--keep-firing", help="Windows a firing alert stays firing after its condition turned false."
    ),
    severity: Severity = typer.Option(Severity.warning, "--severity"),
    inhibited_by: list[str] | None = typer.Option(
        None, "--inhibited-by", help="A rule whose firing holds this one back; repeatable."
    ),
    notify: list[str] | None = typer.Option(
        None, "--notify", help="A notifier to send to; repeatable. Default: every enabled notifier."
    ),
    pipeline: str | None = typer.Option(None, "--pipeline", help="A pipeline to trigger when it fires."),
    label: list[str] | None = typer.Option(
        None, "--label", help="KEY=VALUE added to notifications; repeatable."
    ),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Create or replace an alert rule; the whole rule is replaced, options not given take their defaults."""
    from passerelle.alerts import RuleSpec

    with _usable(), client() as c:
        spec = RuleSpec(
            name=name,
            expression=expr,
            for_windows=for_windows,
            keep_firing_windows=keep_firing,
            severity=severity.value,
            inhibited_by=tuple(inhibited_by or ()),
            notify=tuple(notify or ()),
            pipeline=pipeline,
            labels=parse_pairs(label, "label"),
        )
        rule = c.set_alert_rule(endpoint, spec, reason=reason)
    if as_json:
        print_json(rule.to_dict())
        return
    _say(_rule_line(rule))


@rules_app.command("remove")
def rules_remove(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    name: str = typer.Argument(..., help="The rule's name."),
    reason: str | None = REASON,
) -> None:
    """Remove an alert rule; its open alerts close (a firing one resolves and is notified)."""
    with _usable(), client() as c:
        c.remove_alert_rule(endpoint, name, reason=reason)
    _say(f"{endpoint}: rule {name} removed")


# ----------------------------------------------------------------------------------------- notifiers


def _destination(n: NotifierInfo) -> str:
    config = n.config
    if n.kind == "smtp":
        to = config.get("to") or []
        return f"{config.get('host')}:{config.get('port')} to {', '.join(str(t) for t in to)}"
    return str(config.get("url", ""))


@notifiers_app.command("list")
def notifiers_list(as_json: bool = JSON) -> None:
    """Notifiers, with credentials masked."""
    with _usable(), client() as c:
        found = c.list_notifiers()
    if as_json:
        print_json([n.to_dict() for n in found])
        return
    if not found:
        _say("no notifiers: alerts are only listed (`passerelle alerts notifiers set` adds one)")
        return
    table = Table("name", "kind", "state", "destination", "created by")
    for n in found:
        table.add_row(
            escape(n.name),
            n.kind,
            "enabled" if n.enabled else "[dim]disabled[/]",
            escape(_destination(n)),
            escape(n.created_by),
        )
    console.print(table)


@notifiers_app.command("set")
def notifiers_set(
    name: str = typer.Argument(..., help="The notifier's name, e.g. ops."),
    kind: NotifierKind = typer.Option(
        ..., "--kind", help="webhook (JSON), slack (or Mattermost), smtp (e-mail)."
    ),
    url: str | None = typer.Option(None, "--url", help="webhook, slack: where to post."),
    header: list[str] | None = typer.Option(
        None, "--header", help="webhook: NAME=VALUE sent along; repeatable."
    ),
    external_url: str | None = typer.Option(
        None, "--external-url", help="webhook: a link back to passerelle, put in the message."
    ),
    channel: str | None = typer.Option(
        None, "--channel", help="slack: the channel, when the hook allows it."
    ),
    username: str | None = typer.Option(
        None, "--username", help="slack: the name shown as sender; smtp: the login user."
    ),
    host: str | None = typer.Option(None, "--host", help="smtp: the mail server."),
    port: int | None = typer.Option(None, "--port", help="smtp: its port (default 25, 465 with --ssl)."),
    from_: str | None = typer.Option(None, "--from", help="smtp: the sender address."),
    to: list[str] | None = typer.Option(None, "--to", help="smtp: a recipient address; repeatable."),
    password_env: str | None = typer.Option(
        None,
        "--password-env",
        help="smtp: the environment variable holding the password, where mail is sent.",
    ),
    starttls: bool = typer.Option(False, "--starttls", help="smtp: upgrade the connection with STARTTLS."),
    ssl: bool = typer.Option(False, "--ssl", help="smtp: implicit TLS from the first byte."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds to wait for the destination."),
    disable: bool = typer.Option(False, "--disable", help="Keep the notifier but send nothing through it."),
    reason: str | None = REASON,
    as_json: bool = JSON,
) -> None:
    """Create or replace a notifier."""
    given: dict[str, Any] = {
        "url": url,
        "headers": parse_pairs(header, "header") if header else None,
        "external_url": external_url,
        "channel": channel,
        "username": username,
        "host": host,
        "port": port,
        "from": from_,
        "to": list(to) if to else None,
        "password_env": password_env,
        "starttls": True if starttls else None,
        "ssl": True if ssl else None,
        "timeout_s": timeout,
    }
    config = {key: value for key, value in given.items() if value is not None}
    with _usable(), client() as c:
        info = c.set_notifier(name, kind.value, config, enabled=not disable, reason=reason)
    if as_json:
        print_json(info.to_dict())
        return
    state = "" if info.enabled else " (disabled)"
    _say(f"notifier {info.name}: {info.kind} to {_destination(info)}{state}")


@notifiers_app.command("remove")
def notifiers_remove(
    name: str = typer.Argument(..., help="The notifier's name."), reason: str | None = REASON
) -> None:
    """Remove a notifier; its messages still waiting are marked failed."""
    with _usable(), client() as c:
        c.remove_notifier(name, reason=reason)
    _say(f"notifier {name} removed")


@notifiers_app.command("test")
def notifiers_test(name: str = typer.Argument(..., help="The notifier's name.")) -> None:
    """Send a test message through a notifier now, even a disabled one."""
    with _usable(), client() as c:
        c.test_notifier(name)
    _say(f"notifier {name}: test message delivered")
