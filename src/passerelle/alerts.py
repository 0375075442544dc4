"""Alert rules on monitor figures, and the lifecycle of the alerts they raise.

A rule is a condition on one figure of a monitor window (``drift.share > 0.3``). The monitor
calls :func:`evaluate_window` in the transaction that stores a window's results, so each alert
moves exactly once per window, whichever worker evaluates it. Per result of the window (one per
version, and one for all versions together) a rule keeps at most one open alert, found by its
fingerprint ``endpoint/rule/model:version``:

- a true condition opens a ``pending`` alert, which becomes ``firing`` once the condition held
  for ``for_windows`` windows; a pending alert whose condition turns false is ``cleared``;
- a firing alert whose condition is false for more than ``keep_firing_windows`` windows in a row
  is ``resolved``; a true window before that starts the count again;
- a window without the figure is no data: the alert does not move.

Firing and resolved alerts of a window are queued as one notification per endpoint and notifier
set (:func:`passerelle.notify.enqueue`), except while a silence matches, while an inhibiting rule
was already firing when the alert fired, and, for an acknowledged alert, until it resolves. A
rule may name a pipeline; functions registered with :func:`register_pipeline_trigger` are called
when its alert fires. Every change is an audit record. See ``docs/alerts.md``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import numbers
import operator
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from passerelle import audit, notify
from passerelle.context import Context
from passerelle.errors import ConflictError, InvalidInputError, NotFoundError, StoreError
from passerelle.store.schema import Alert, AlertRule, Endpoint, MonitorResult, Silence

__all__ = [
    "ALERT_STATES",
    "DEFAULT_RULES",
    "FIGURES",
    "OPERATORS",
    "SEVERITIES",
    "AlertInfo",
    "Condition",
    "PipelineTrigger",
    "RuleInfo",
    "RuleSpec",
    "SilenceInfo",
    "Transition",
    "ack",
    "evaluate_window",
    "expire_silence",
    "list_alerts",
    "list_rules",
    "list_silences",
    "parse_expression",
    "register_pipeline_trigger",
    "remove_rule",
    "set_rule",
    "set_rules_in",
    "silence",
]

SEVERITIES = ("info", "warning", "critical")
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
#: the states an alert row can be in; "open" in :func:`list_alerts` means pending or firing
ALERT_STATES = ("pending", "firing", "resolved", "cleared")
_OPEN = ("pending", "firing")

#: figures monitors write (see docs/alerts.md); a rule may name any figure of these groups
FIGURES = (
    "rows",
    "requests",
    "requests.per_s",
    "errors.rate",
    "latency.p50_ms",
    "latency.p95_ms",
    "latency.p99_ms",
    "shadow.disagreement",
    "shadow.dropped",
    "schema.rejected_share",
    "schema.changed",
    "drift.share",
    "drift.columns",
    "drift.prediction",
    "drift.multivariate",
    "drift.column.<column>",
    "performance.<metric>",
    "performance.n",
    "estimated.<metric>",
    "labels.coverage",
    "labels.lag_p50_s",
    "ab.b_better",
)
# Only the group is checked: monitors add figures within a group (a metric, an interval bound)
# without this list having to follow, while a misspelt group is still refused.
_GROUPS = (
    "requests",
    "errors",
    "latency",
    "shadow",
    "schema",
    "drift",
    "performance",
    "estimated",
    "labels",
    "ab",
)
_STANDALONE = ("rows", "requests")
_FIGURE_TAIL = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
# Two-character operators first, so ">=" is not read as ">" followed by "=".
_EXPRESSION = re.compile(r"^\s*(?P<figure>[^<>=!]*?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<number>[^<>=!\s]*)\s*$")
# Rule, notifier and pipeline names; rule names stay short so fingerprints fit their column.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_MAX_LABEL_VALUE = 500
_MAX_FINGERPRINT = 200
# Well above any sensible run of windows, and far below the integer column's limit.
_MAX_WINDOWS = 10_000
_MAX_LIST = 10_000
_ATTEMPTS = 3
_T = TypeVar("_T")

PipelineTrigger = Callable[[Session, str, dict[str, Any]], None]
_triggers: list[PipelineTrigger] = []
_triggers_lock = threading.Lock()


# ----------------------------------------------------------------------------------- expressions


def _number(value: float) -> str:
    """A threshold as typed back: ``500`` rather than ``500.0``, and exact for the rest."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _shown(value: float | None) -> str:
    if value is None:
        return "no data"
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


@dataclass(frozen=True)
class Condition:
    """A parsed expression: ``figure op threshold``."""

    figure: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return _COMPARE[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.figure} {self.op} {_number(self.threshold)}"


def _bad_expression(text: str, reason: str) -> InvalidInputError:
    return InvalidInputError(f"invalid alert expression {text!r}: {reason}")


def _parse(text: str) -> Condition:
    """The syntax only: stored rules keep evaluating even if the list of known figures changes."""
    if not isinstance(text, str):
        raise InvalidInputError(f"an alert expression must be text such as 'drift.share > 0.3', got {text!r}")
    if not text.strip():
        raise _bad_expression(
            text, "it is empty; write '<figure> <op> <number>', such as 'drift.share > 0.3'"
        )
    match = _EXPRESSION.match(text)
    if match is None:
        raise _bad_expression(
            text,
            "expected '<figure> <op> <number>' with op one of > >= < <= == !=, such as 'drift.share > 0.3'",
        )
    figure, op, number = match.group("figure"), match.group("op"), match.group("number")
    if not figure:
        raise _bad_expression(text, f"the figure before {op!r} is missing")
    if not number:
        raise _bad_expression(text, f"the number after {op!r} is missing")
    try:
        threshold = float(number)
    except ValueError:
        raise _bad_expression(text, f"{number!r} is not a number") from None
    if not math.isfinite(threshold):
        raise _bad_expression(text, "the threshold must be a finite number")
    return Condition(figure, op, threshold)


def _known_figure(figure: str) -> bool:
    if figure in _STANDALONE:
        return True
    group, _, rest = figure.partition(".")
    if group not in _GROUPS or not rest:
        return False
    if group == "drift" and rest.startswith("column."):
        # Column names are the user's own and may hold any character but an operator's.
        return len(rest) > len("column.")
    return _FIGURE_TAIL.match(rest) is not None


def parse_expression(text: str) -> Condition:
    """Parse and check ``<figure> <op> <number>``; an :class:`InvalidInputError` says what is wrong."""
    condition = _parse(text)
    if not _known_figure(condition.figure):
        raise _bad_expression(
            text,
            f"unknown figure {condition.figure!r}; use rows, requests or a figure of the groups "
            f"{', '.join(_GROUPS)}, such as drift.share or latency.p99_ms",
        )
    return condition


# ------------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class RuleSpec:
    """What a user asks for; checked by :func:`set_rule`."""

    name: str
    expression: str
    #: consecutive windows the condition must hold before the alert fires
    for_windows: int = 1
    #: windows a firing alert stays firing after its condition turned false (against flapping)
    keep_firing_windows: int = 0
    severity: str = "warning"
    #: rules of the same endpoint whose firing holds this rule's alerts back
    inhibited_by: tuple[str, ...] = ()
    #: notifier names; empty means every enabled notifier
    notify: tuple[str, ...] = ()
    #: a pipeline to trigger when an alert of this rule fires
    pipeline: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _finite(value: float | None) -> float | None:
    # JSON (and PostgreSQL's json type) has no infinity or NaN.
    return value if value is None or math.isfinite(value) else None


@dataclass(frozen=True)
class RuleInfo:
    endpoint: str
    name: str
    expression: str
    for_windows: int
    keep_firing_windows: int
    severity: str
    inhibited_by: tuple[str, ...]
    notify: tuple[str, ...]
    pipeline: str | None
    labels: Mapping[str, str]
    enabled: bool
    created_at: dt.datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO text, tuples as lists."""
        out = asdict(self)
        out.update(
            inhibited_by=list(self.inhibited_by),
            notify=list(self.notify),
            labels=dict(self.labels),
            created_at=self.created_at.isoformat(),
        )
        return out


@dataclass(frozen=True)
class AlertInfo:
    id: int
    endpoint: str
    rule: str
    severity: str
    fingerprint: str
    model: str
    version: int
    state: str
    value: float | None
    started_at: dt.datetime
    fired_at: dt.datetime | None
    resolved_at: dt.datetime | None
    inhibited: bool
    acked_by: str | None
    acked_at: dt.datetime | None
    summary: str
    #: an active silence matches the alert now (only open alerts can be silenced)
    silenced: bool
    #: the rule's expression and labels, for the notification payload
    expression: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO text."""
        out = asdict(self)
        out.update(
            value=_finite(self.value),
            started_at=_iso(self.started_at),
            fired_at=_iso(self.fired_at),
            resolved_at=_iso(self.resolved_at),
            acked_at=_iso(self.acked_at),
            labels=dict(self.labels),
        )
        return out

    def payload(self) -> dict[str, Any]:
        """The alert as notifiers receive it (one entry of a notification's ``alerts``)."""
        try:
            condition: Condition | None = _parse(self.expression)
        except InvalidInputError:
            condition = None
        return {
            "status": self.state,
            "endpoint": self.endpoint,
            "rule": self.rule,
            "severity": self.severity,
            "expression": self.expression,
            "figure": condition.figure if condition else None,
            "value": _finite(self.value),
            "threshold": condition.threshold if condition else None,
            "model": self.model,
            "version": self.version,
            "summary": self.summary,
            "started_at": _iso(self.started_at),
            "fired_at": _iso(self.fired_at),
            "resolved_at": _iso(self.resolved_at),
            "alert_id": self.id,
            "fingerprint": self.fingerprint,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class Transition:
    """An alert that changed state; ``before`` is ``inactive`` for an alert opened by this window."""

    alert: AlertInfo
    before: str
    after: str

    def to_dict(self) -> dict[str, Any]:
        return {"alert": self.alert.to_dict(), "before": self.before, "after": self.after}


@dataclass(frozen=True)
class SilenceInfo:
    id: int
    endpoint: str
    rule: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    created_by: str
    comment: str
    active: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(starts_at=self.starts_at.isoformat(), ends_at=self.ends_at.isoformat())
        return out


# Attached by `passerelle deploy`. A broken input contract (schema) and failing requests
# (errors) page at once; drift needs two windows in a row, because one odd window of traffic
# (a batch job, a holiday hour) is not a trend; latency needs two as well, so a cold start or
# one slow burst does not page. Every rule keeps firing one clean window before resolving, so
# a figure hovering at its threshold does not fire and resolve every other window. Drift of a
# window whose rows broke the schema is a symptom of that break, hence the inhibition.
DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("schema", "schema.rejected_share > 0.05", keep_firing_windows=1, severity="critical"),
    RuleSpec(
        "data-drift",
        "drift.share > 0.3",
        for_windows=2,
        keep_firing_windows=1,
        severity="warning",
        inhibited_by=("schema",),
    ),
    RuleSpec(
        "prediction-drift",
        "drift.prediction > 0",
        for_windows=2,
        keep_firing_windows=1,
        severity="warning",
        inhibited_by=("schema",),
    ),
    RuleSpec("errors", "errors.rate > 0.05", keep_firing_windows=1, severity="critical"),
    RuleSpec("latency", "latency.p99_ms > 500", for_windows=2, keep_firing_windows=1, severity="warning"),
)


# ------------------------------------------------------------------------------------ validation


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use up to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _MAX_WINDOWS:
        raise InvalidInputError(
            f"{what} must be a whole number of windows from {minimum} to {_MAX_WINDOWS}, got {value!r}"
        )
    return value


def _check_names(values: Any, what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} must be a list of names, got {values!r}")
    out: list[str] = []
    for value in values:
        name = _check_name(value, f"name in {what}")
        if name not in out:
            out.append(name)
    return out


def _check_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidInputError(f"labels must be a mapping of name to text, got {labels!r}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL.match(key):
            raise InvalidInputError(
                f"invalid label name {key!r}: use letters, digits and '_', not starting with a digit"
            )
        if not isinstance(value, str) or len(value) > _MAX_LABEL_VALUE:
            raise InvalidInputError(f"label {key!r} must be text of at most {_MAX_LABEL_VALUE} characters")
        out[key] = value
    return out


def _rule_columns(spec: RuleSpec) -> dict[str, Any]:
    """The checked, normalised columns of a rule."""
    if not isinstance(spec, RuleSpec):
        raise InvalidInputError(f"an alert rule must be a RuleSpec, got {type(spec).__name__}")
    name = _check_name(spec.name, "rule name")
    condition = parse_expression(spec.expression)
    severity = spec.severity
    if severity not in SEVERITIES:
        raise InvalidInputError(
            f"rule {name!r}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}"
        )
    inhibited_by = _check_names(spec.inhibited_by, "inhibited_by")
    if name in inhibited_by:
        raise InvalidInputError(f"rule {name!r}: inhibited_by cannot name the rule itself")
    pipeline = None if spec.pipeline is None else _check_name(spec.pipeline, "pipeline name")
    return {
        "name": name,
        "expression": str(condition),
        "for_windows": _check_count(spec.for_windows, f"rule {name!r}: for_windows", 1),
        "keep_firing_windows": _check_count(
            spec.keep_firing_windows, f"rule {name!r}: keep_firing_windows", 0
        ),
        "severity": severity,
        "inhibited_by": inhibited_by,
        "notify": _check_names(spec.notify, "notify"),
        "pipeline": pipeline,
        "labels": _check_labels(spec.labels),
    }


def _aware(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{what} must be a datetime with a time zone, got {value!r}")
    return value


# -------------------------------------------------------------------------------------- helpers


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _require_endpoint(session: Session, endpoint: str) -> None:
    if session.scalar(select(Endpoint.id).where(Endpoint.name == endpoint)) is None:
        raise NotFoundError(f"endpoint {endpoint!r} does not exist")


def _fingerprint(endpoint: str, rule: str, model: str, version: int) -> str:
    text = f"{endpoint}/{rule}/{model}:{version}"
    if len(text) <= _MAX_FINGERPRINT:
        return text
    # Long endpoint and model names: keep a readable head and a digest of the whole.
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{text[: _MAX_FINGERPRINT - 33]}#{digest}"


def _scope(model: str, version: int) -> str:
    return "all versions" if version == 0 else f"{model}:{version}"


def _plural(count: int, word: str = "window") -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _summary(rule: AlertRule, condition: Condition, alert: Alert) -> str:
    head = f"{condition.figure} = {_shown(alert.value)} on {_scope(alert.model, alert.version)}"
    if alert.state == "cleared":
        return f"{head} ({condition} turned false before it fired: cleared)"
    if alert.state == "resolved":
        return f"{head} ({condition} false for {_plural(alert.false_windows)}: resolved)"
    if alert.false_windows:
        return (
            f"{head} ({condition} false for {_plural(alert.false_windows)}; "
            f"resolves after {_plural(rule.keep_firing_windows + 1)})"
        )
    return f"{head} ({condition} true for {_plural(alert.true_windows)})"


def _figure(figures: Mapping[str, Any] | None, name: str) -> float | None:
    """The figure's value, or None when the window has no usable value for it (no data)."""
    raw = (figures or {}).get(name)
    if isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, numbers.Real):
        value = float(raw)
        return None if math.isnan(value) else value
    return None


def _rule_state(row: AlertRule) -> dict[str, Any]:
    return {
        "expression": row.expression,
        "for_windows": row.for_windows,
        "keep_firing_windows": row.keep_firing_windows,
        "severity": row.severity,
        "inhibited_by": list(row.inhibited_by),
        "notify": list(row.notify),
        "pipeline": row.pipeline,
        "labels": dict(row.labels),
        "enabled": row.enabled,
    }


def _rule_info(row: AlertRule) -> RuleInfo:
    return RuleInfo(
        endpoint=row.endpoint,
        name=row.name,
        expression=row.expression,
        for_windows=row.for_windows,
        keep_firing_windows=row.keep_firing_windows,
        severity=row.severity,
        inhibited_by=tuple(row.inhibited_by),
        notify=tuple(row.notify),
        pipeline=row.pipeline,
        labels=dict(row.labels),
        enabled=row.enabled,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _alert_state(row: Alert) -> dict[str, Any]:
    return {
        "state": row.state,
        "value": _finite(row.value),
        "true_windows": row.true_windows,
        "false_windows": row.false_windows,
        "inhibited": row.inhibited,
        "acked_by": row.acked_by,
    }


def _alert_target(row: Alert) -> str:
    return f"{row.endpoint}:alert:{row.id}"


def _alert_info(row: Alert, rule: AlertRule, silenced: bool) -> AlertInfo:
    return AlertInfo(
        id=row.id,
        endpoint=row.endpoint,
        rule=rule.name,
        severity=rule.severity,
        fingerprint=row.fingerprint,
        model=row.model,
        version=row.version,
        state=row.state,
        value=row.value,
        started_at=row.started_at,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        inhibited=row.inhibited,
        acked_by=row.acked_by,
        acked_at=row.acked_at,
        summary=row.summary,
        silenced=silenced and row.state in _OPEN,
        expression=rule.expression,
        labels=dict(rule.labels),
    )


def _active_silences(session: Session, endpoints: Iterable[str], now: dt.datetime) -> set[tuple[str, str]]:
    """(endpoint, rule or "*") of the silences active at ``now``."""
    names = sorted(set(endpoints))
    if not names:
        return set()
    query = select(Silence.endpoint, Silence.rule).where(
        Silence.endpoint.in_(names), Silence.starts_at <= now, Silence.ends_at > now
    )
    return {(endpoint, rule) for endpoint, rule in session.execute(query)}


def _silenced(silences: set[tuple[str, str]], endpoint: str, rule: str) -> bool:
    return (endpoint, rule) in silences or (endpoint, "*") in silences


def _queue(session: Session, group_key: str, alerts: Sequence[tuple[AlertInfo, Sequence[str]]]) -> None:
    """One notification per notifier set, each grouping its alerts (firing ones first)."""
    groups: dict[tuple[str, ...], list[AlertInfo]] = {}
    for info, notifiers in alerts:
        groups.setdefault(tuple(sorted(notifiers)), []).append(info)
    for notifiers, infos in groups.items():
        infos.sort(key=lambda a: (a.state != "firing", a.rule, a.version, a.model))
        event = "firing" if infos[0].state == "firing" else "resolved"
        notify.enqueue(
            session,
            event=event,
            alerts=[info.payload() for info in infos],
            notifiers=notifiers,
            alert_id=infos[0].id if len(infos) == 1 else None,
            group_key=group_key,
        )


def _with_retries(work: Callable[[], _T]) -> _T:
    # Two writers creating the same rule at once on PostgreSQL: the loser retries and replaces.
    for attempt in range(_ATTEMPTS):
        try:
            return work()
        except sa_exc.IntegrityError as exc:
            if attempt == _ATTEMPTS - 1:
                raise StoreError(f"the alert rule could not be stored: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------------- rules


def _close_open(session: Session, rule: AlertRule, *, now: dt.datetime, actor: str, why: str) -> None:
    """Close the open alerts of a rule that stops or changes: an alert belongs to one condition."""
    rows = session.scalars(
        select(Alert)
        .where(Alert.rule_id == rule.id, Alert.state.in_(_OPEN))
        .order_by(Alert.id)
        .with_for_update()
    ).all()
    if not rows:
        return
    silences = _active_silences(session, [rule.endpoint], now)
    to_notify: list[tuple[AlertInfo, Sequence[str]]] = []
    for row in rows:
        before = _alert_state(row)
        was_firing = row.state == "firing"
        row.state = "resolved" if was_firing else "cleared"
        row.resolved_at = now
        row.summary = f"{row.summary}; closed because rule {rule.name!r} {why}"
        audit.record(
            session,
            actor=actor,
            action="alert.resolve" if was_firing else "alert.clear",
            target=_alert_target(row),
            before=before,
            after={**_alert_state(row), "why": f"rule {why}"},
        )
        if was_firing and not row.inhibited and not _silenced(silences, rule.endpoint, rule.name):
            to_notify.append((_alert_info(row, rule, False), rule.notify))
    if to_notify:
        _queue(session, f"{rule.endpoint}/rule/{rule.name}/{now.isoformat()}", to_notify)


def set_rules_in(
    session: Session, endpoint: str, specs: Sequence[RuleSpec], actor: str, *, reason: str = ""
) -> list[RuleInfo]:
    """Create or replace rules of an endpoint inside the caller's transaction.

    A rule replaced with a different expression closes its open alerts (a firing one resolves
    and is notified); other changes apply to its open alerts from the next window on.
    """
    checked = [_rule_columns(spec) for spec in specs]
    names = [columns["name"] for columns in checked]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"alert rule {repeated[0]!r} is given more than once")
    _require_endpoint(session, endpoint)
    now = _utcnow()
    existing = {
        row.name: row
        for row in session.scalars(
            select(AlertRule)
            .where(AlertRule.endpoint == endpoint, AlertRule.name.in_(names))
            .order_by(AlertRule.id)
            .with_for_update()
        )
    }
    out: list[RuleInfo] = []
    for columns in checked:
        name = columns["name"]
        row = existing.get(name)
        before: dict[str, Any] | None = None
        if row is None:
            row = AlertRule(endpoint=endpoint, enabled=True, created_at=now, created_by=actor, **columns)
            session.add(row)
            session.flush()
        else:
            before = _rule_state(row)
            if row.enabled and row.expression != columns["expression"]:
                _close_open(session, row, now=now, actor=actor, why="changed its expression")
            for key, value in columns.items():
                setattr(row, key, value)
            if not row.enabled:
                # A removed rule's row stays for its past alerts; setting the name again revives it.
                row.enabled, row.created_at, row.created_by = True, now, actor
        after = _rule_state(row)
        if after != before:
            audit.record(
                session,
                actor=actor,
                action="alert.rule.set",
                target=f"{endpoint}:rule:{name}",
                before=before,
                after=after,
                reason=reason,
            )
        out.append(_rule_info(row))
    return out


def set_rule(ctx: Context, endpoint: str, spec: RuleSpec, *, reason: str = "") -> RuleInfo:
    """Create or replace one rule of an endpoint; :class:`NotFoundError` for an unknown endpoint."""
    _rule_columns(spec)

    def work() -> RuleInfo:
        with ctx.store.write() as session:
            return set_rules_in(session, endpoint, [spec], ctx.actor, reason=reason)[0]

    return _with_retries(work)


def remove_rule(ctx: Context, endpoint: str, name: str, *, reason: str = "") -> None:
    """Stop a rule: its open alerts close (a firing one resolves and is notified).

    The row stays, disabled, so past alerts keep their rule; :func:`list_rules` no longer shows it.
    """
    now = _utcnow()
    with ctx.store.write() as session:
        _require_endpoint(session, endpoint)
        row = session.scalar(
            select(AlertRule)
            .where(AlertRule.endpoint == endpoint, AlertRule.name == name, AlertRule.enabled.is_(True))
            .with_for_update()
        )
        if row is None:
            raise NotFoundError(f"endpoint {endpoint!r} has no alert rule {name!r}")
        before = _rule_state(row)
        _close_open(session, row, now=now, actor=ctx.actor, why="was removed")
        row.enabled = False
        audit.record(
            session,
            actor=ctx.actor,
            action="alert.rule.remove",
            target=f"{endpoint}:rule:{name}",
            before=before,
            after=_rule_state(row),
            reason=reason,
        )


def list_rules(ctx: Context, endpoint: str | None = None) -> list[RuleInfo]:
    """The rules in force, by endpoint and name."""
    query = select(AlertRule).where(AlertRule.enabled.is_(True)).order_by(AlertRule.endpoint, AlertRule.name)
    with ctx.store.read() as session:
        if endpoint is not None:
            _require_endpoint(session, endpoint)
            query = query.where(AlertRule.endpoint == endpoint)
        return [_rule_info(row) for row in session.scalars(query)]


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class _Change:
    alert: Alert
    rule: AlertRule
    before: str


def _step(alert: Alert, rule: AlertRule, holds: bool, value: float, window_end: dt.datetime) -> None:
    """Move an open alert by one window with data."""
    alert.value = value
    if holds:
        alert.true_windows += 1
        alert.false_windows = 0
        if alert.state == "pending" and alert.true_windows >= rule.for_windows:
            alert.state, alert.fired_at = "firing", window_end
    elif alert.state == "pending":
        alert.state, alert.resolved_at = "cleared", window_end
    else:
        alert.false_windows += 1
        if alert.false_windows > rule.keep_firing_windows:
            alert.state, alert.resolved_at = "resolved", window_end


def _inhibitor_firing(alert: Alert, rule: AlertRule, firing: Mapping[str, set[tuple[str, int]]]) -> bool:
    """A rule named by ``inhibited_by`` fires for the same version, or for all versions."""
    for name in rule.inhibited_by:
        for model, version in firing.get(name, ()):
            if version == 0 or (model, version) == (alert.model, alert.version):
                return True
    return False


def _run_triggers(session: Session, alert: Alert, rule: AlertRule, info: AlertInfo, actor: str) -> None:
    assert rule.pipeline is not None
    with _triggers_lock:
        triggers = list(_triggers)
    target = _alert_target(alert)
    if not triggers:
        audit.record(
            session,
            actor=actor,
            action="alert.pipeline",
            target=target,
            after={"pipeline": rule.pipeline, "status": "no pipeline runner installed"},
        )
        return
    for trigger in triggers:
        name = getattr(trigger, "__qualname__", type(trigger).__name__)
        try:
            # A savepoint: a trigger that fails undoes its own writes, not the window's.
            with session.begin_nested():
                trigger(session, rule.pipeline, info.payload())
            status = "triggered"
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
        audit.record(
            session,
            actor=actor,
            action="alert.pipeline",
            target=target,
            after={"pipeline": rule.pipeline, "status": status, "trigger": name},
        )


def _advance(
    session: Session,
    endpoint: str,
    rules: Sequence[AlertRule],
    results: Sequence[MonitorResult],
    current: dict[str, Alert],
    window_start: dt.datetime,
    window_end: dt.datetime,
) -> list[_Change]:
    """Move (or open) each rule's alert of each result with data; ``current`` gains new alerts."""
    changes: list[_Change] = []
    for rule in rules:
        condition = _parse(rule.expression)
        for result in results:
            value = _figure(result.figures, condition.figure)
            if value is None:
                continue
            model, version = result.model or "", result.version or 0
            fingerprint = _fingerprint(endpoint, rule.name, model, version)
            alert = current.get(fingerprint)
            if alert is not None and alert.last_window >= window_start:
                continue
            holds = condition.holds(value)
            if alert is None:
                if not holds:
                    continue
                alert = Alert(
                    rule_id=rule.id,
                    endpoint=endpoint,
                    fingerprint=fingerprint,
                    model=model,
                    version=version,
                    state="pending",
                    value=value,
                    true_windows=0,
                    false_windows=0,
                    started_at=window_start,
                    inhibited=False,
                    summary="",
                )
                session.add(alert)
                current[fingerprint] = alert
                before = "inactive"
            else:
                before = alert.state
            alert.last_window = window_start
            _step(alert, rule, holds, value, window_end)
            alert.summary = _summary(rule, condition, alert)
            if alert.state != before:
                changes.append(_Change(alert, rule, before))
    return changes


def _take_effect(
    session: Session,
    current: Iterable[Alert],
    by_id: Mapping[int, AlertRule],
    changes: Sequence[_Change],
    *,
    actor: str,
    window_start: dt.datetime,
) -> list[_Change]:
    """Decide inhibition; return the firing alerts that take effect now (announced, pipeline run).

    An alert is held back when it fires while a rule of its ``inhibited_by`` fires; it takes
    effect once none does. An alert that fired unhindered stays so: it was announced, and its
    resolution must follow.
    """
    firing: dict[str, set[tuple[str, int]]] = {}
    for alert in current:
        if alert.state == "firing" and alert.rule_id in by_id:
            firing.setdefault(by_id[alert.rule_id].name, set()).add((alert.model, alert.version))
    fired = {id(change.alert) for change in changes if change.alert.state == "firing"}
    effective: list[_Change] = []
    for alert in current:
        rule = by_id.get(alert.rule_id)
        if rule is None or alert.state != "firing":
            continue
        if id(alert) in fired:
            alert.inhibited = _inhibitor_firing(alert, rule, firing)
            if not alert.inhibited:
                effective.append(_Change(alert, rule, "pending"))
        elif alert.inhibited and not _inhibitor_firing(alert, rule, firing):
            alert.inhibited = False
            audit.record(
                session,
                actor=actor,
                action="alert.release",
                target=_alert_target(alert),
                before={**_alert_state(alert), "inhibited": True},
                after={**_alert_state(alert), "window_start": window_start.isoformat()},
            )
            effective.append(_Change(alert, rule, "firing"))
    return effective


_ACTIONS = {
    "pending": "alert.pending",
    "firing": "alert.fire",
    "cleared": "alert.clear",
    "resolved": "alert.resolve",
}


def evaluate_window(
    session: Session,
    endpoint: str,
    results: Sequence[MonitorResult],
    *,
    window_start: dt.datetime,
    window_end: dt.datetime,
    now: dt.datetime,
    actor: str = "monitor",
) -> list[Transition]:
    """Move the endpoint's alerts by one window, inside the caller's (the monitor's) transaction.

    ``results`` are the window's results (one per version and one for all versions). Alert
    times are window times (``started_at`` is the start of the first true window, ``fired_at``
    and ``resolved_at`` the end of the window that decided); silences are matched at ``now``.
    A window at or before an alert's last counted window does not move it again.
    """
    window_start = _aware(window_start, "window_start")
    window_end = _aware(window_end, "window_end")
    now = _aware(now, "now")
    if window_end <= window_start:
        raise InvalidInputError(
            f"window_end {window_end.isoformat()} must be after window_start {window_start.isoformat()}"
        )
    for result in results:
        if result.endpoint is not None and result.endpoint != endpoint:
            raise InvalidInputError(f"a result of endpoint {result.endpoint!r} was given for {endpoint!r}")
    # Locking the rules serialises evaluations of one endpoint, so a fingerprint never gets two
    # open alerts even if two evaluations raced past the monitor's own guard.
    rules = list(
        session.scalars(
            select(AlertRule)
            .where(AlertRule.endpoint == endpoint, AlertRule.enabled.is_(True))
            .order_by(AlertRule.id)
            .with_for_update()
        )
    )
    if not rules:
        return []
    rules.sort(key=lambda r: r.name)
    current: dict[str, Alert] = {}
    for row in session.scalars(
        select(Alert)
        .where(Alert.endpoint == endpoint, Alert.state.in_(_OPEN))
        .order_by(Alert.id)
        .with_for_update()
    ):
        current.setdefault(row.fingerprint, row)

    changes = _advance(session, endpoint, rules, results, current, window_start, window_end)
    session.flush()
    by_id = {rule.id: rule for rule in rules}
    effective = _take_effect(
        session, list(current.values()), by_id, changes, actor=actor, window_start=window_start
    )

    silences = _active_silences(session, [endpoint], now)
    transitions: list[Transition] = []
    to_notify: list[tuple[AlertInfo, Sequence[str]]] = []
    for change in changes:
        alert, rule = change.alert, change.rule
        silenced = _silenced(silences, endpoint, rule.name)
        info = _alert_info(alert, rule, silenced)
        transitions.append(Transition(info, change.before, alert.state))
        audit.record(
            session,
            actor=actor,
            action=_ACTIONS[alert.state],
            target=_alert_target(alert),
            before=None if change.before == "inactive" else {"state": change.before},
            after={**_alert_state(alert), "window_start": window_start.isoformat()},
        )
        # The resolution of an alert held back by inhibition is as silent as its firing was.
        if alert.state == "resolved" and not alert.inhibited and not silenced:
            to_notify.append((info, rule.notify))
    for change in effective:
        alert, rule = change.alert, change.rule
        released = change.before == "firing"
        if _silenced(silences, endpoint, rule.name) or (released and alert.acked_by):
            continue
        to_notify.append((_alert_info(alert, rule, False), rule.notify))
    if to_notify:
        _queue(session, f"{endpoint}/{window_start.isoformat()}", to_notify)
    for change in effective:
        if change.rule.pipeline:
            info = _alert_info(change.alert, change.rule, False)
            _run_triggers(session, change.alert, change.rule, info, actor)
    return transitions


def register_pipeline_trigger(fn: PipelineTrigger) -> Callable[[], None]:
    """Call ``fn(session, pipeline_name, alert_payload)`` when an alert whose rule names a pipeline fires.

    The call happens inside the evaluating transaction (in a savepoint); an exception is recorded
    in the audit log and the evaluation goes on. Returns a function that unregisters ``fn``.
    """
    if not callable(fn):
        raise InvalidInputError(f"a pipeline trigger must be callable, got {fn!r}")
    with _triggers_lock:
        _triggers.append(fn)

    def unregister() -> None:
        with _triggers_lock, contextlib.suppress(ValueError):
            _triggers.remove(fn)

    return unregister


# ---------------------------------------------------------------------------------------- alerts


def list_alerts(
    ctx: Context, endpoint: str | None = None, *, state: str | None = None, limit: int = 200
) -> list[AlertInfo]:
    """Alerts, newest first; ``state`` is one of :data:`ALERT_STATES` or ``open`` (pending and firing)."""
    if state is not None and state != "open" and state not in ALERT_STATES:
        raise InvalidInputError(f"state must be open or one of {', '.join(ALERT_STATES)}, got {state!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST:
        raise InvalidInputError(f"limit must be a whole number from 1 to {_MAX_LIST}, got {limit!r}")
    query = (
        select(Alert, AlertRule)
        .join(AlertRule, Alert.rule_id == AlertRule.id)
        .order_by(Alert.id.desc())
        .limit(limit)
    )
    if state == "open":
        query = query.where(Alert.state.in_(_OPEN))
    elif state is not None:
        query = query.where(Alert.state == state)
    now = _utcnow()
    with ctx.store.read() as session:
        if endpoint is not None:
            _require_endpoint(session, endpoint)
            query = query.where(Alert.endpoint == endpoint)
        rows = [(alert, rule) for alert, rule in session.execute(query)]
        silences = _active_silences(session, {alert.endpoint for alert, _ in rows}, now)
        return [
            _alert_info(alert, rule, _silenced(silences, alert.endpoint, rule.name)) for alert, rule in rows
        ]


def ack(ctx: Context, alert_id: int, *, reason: str = "") -> AlertInfo:
    """Acknowledge a firing alert: it is not notified again until it resolves."""
    if isinstance(alert_id, bool) or not isinstance(alert_id, int):
        raise InvalidInputError(f"alert id must be a whole number, got {alert_id!r}")
    now = _utcnow()
    with ctx.store.write() as session:
        row = session.scalar(select(Alert).where(Alert.id == alert_id).with_for_update())
        if row is None:
            raise NotFoundError(f"alert {alert_id} does not exist")
        if row.state != "firing":
            raise ConflictError(f"alert {alert_id} is {row.state}; only a firing alert can be acknowledged")
        if row.acked_by is not None:
            raise ConflictError(
                f"alert {alert_id} was already acknowledged by {row.acked_by} at {_iso(row.acked_at)}"
            )
        before = _alert_state(row)
        row.acked_by, row.acked_at = ctx.actor, now
        audit.record(
            session,
            actor=ctx.actor,
            action="alert.ack",
            target=_alert_target(row),
            before=before,
            after=_alert_state(row),
            reason=reason,
        )
        rule = session.get_one(AlertRule, row.rule_id)
        silences = _active_silences(session, [row.endpoint], now)
        return _alert_info(row, rule, _silenced(silences, row.endpoint, rule.name))


# -------------------------------------------------------------------------------------- silences


def _silence_info(row: Silence, now: dt.datetime) -> SilenceInfo:
    return SilenceInfo(
        id=row.id,
        endpoint=row.endpoint,
        rule=row.rule,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        created_by=row.created_by,
        comment=row.comment,
        active=row.starts_at <= now < row.ends_at,
    )


def _silence_state(row: Silence) -> dict[str, Any]:
    return {
        "rule": row.rule,
        "starts_at": row.starts_at.isoformat(),
        "ends_at": row.ends_at.isoformat(),
        "comment": row.comment,
    }


def silence(
    ctx: Context,
    endpoint: str,
    *,
    rule: str = "*",
    duration: dt.timedelta | None = None,
    ends_at: dt.datetime | None = None,
    comment: str = "",
) -> SilenceInfo:
    """Mute the notifications of an endpoint's alerts (one rule, or ``*``) from now on.

    Give either ``duration`` or ``ends_at``. Alerts still change state while silenced.
    """
    now = _utcnow()
    if (duration is None) == (ends_at is None):
        raise InvalidInputError("a silence needs either a duration or an end time (ends_at), not both")
    if duration is not None:
        if not isinstance(duration, dt.timedelta) or duration <= dt.timedelta(0):
            raise InvalidInputError(f"the silence duration must be positive, got {duration!r}")
        try:
            end = now + duration
        except OverflowError:
            raise InvalidInputError(f"the silence duration {duration} is too long") from None
    else:
        end = _aware(ends_at, "ends_at")
        if end <= now:
            raise InvalidInputError(f"ends_at {end.isoformat()} is not in the future")
    if rule != "*":
        _check_name(rule, "rule name")
    if not isinstance(comment, str):
        raise InvalidInputError(f"the silence comment must be text, got {comment!r}")
    with ctx.store.write() as session:
        _require_endpoint(session, endpoint)
        if rule != "*":
            found = session.scalar(
                select(AlertRule.id).where(
                    AlertRule.endpoint == endpoint, AlertRule.name == rule, AlertRule.enabled.is_(True)
                )
            )
            if found is None:
                raise NotFoundError(
                    f"endpoint {endpoint!r} has no alert rule {rule!r}; use rule '*' to silence every rule"
                )
        row = Silence(
            endpoint=endpoint, rule=rule, starts_at=now, ends_at=end, created_by=ctx.actor, comment=comment
        )
        session.add(row)
        session.flush()
        audit.record(
            session,
            actor=ctx.actor,
            action="alert.silence",
            target=f"{endpoint}:silence:{row.id}",
            after=_silence_state(row),
            reason=comment,
        )
        return _silence_info(row, now)


def expire_silence(ctx: Context, silence_id: int, *, reason: str = "") -> SilenceInfo:
    """End an active silence now."""
    if isinstance(silence_id, bool) or not isinstance(silence_id, int):
        raise InvalidInputError(f"silence id must be a whole number, got {silence_id!r}")
    now = _utcnow()
    with ctx.store.write() as session:
        row = session.scalar(select(Silence).where(Silence.id == silence_id).with_for_update())
        if row is None:
            raise NotFoundError(f"silence {silence_id} does not exist")
        if row.ends_at <= now:
            raise ConflictError(f"silence {silence_id} already ended at {row.ends_at.isoformat()}")
        before = _silence_state(row)
        row.ends_at = now
        audit.record(
            session,
            actor=ctx.actor,
            action="alert.silence.expire",
            target=f"{row.endpoint}:silence:{row.id}",
            before=before,
            after=_silence_state(row),
            reason=reason,
        )
        return _silence_info(row, now)


def list_silences(
    ctx: Context, endpoint: str | None = None, *, active_only: bool = False
) -> list[SilenceInfo]:
    """Silences, newest first."""
    now = _utcnow()
    query = select(Silence).order_by(Silence.id.desc())
    if active_only:
        query = query.where(Silence.starts_at <= now, Silence.ends_at > now)
    with ctx.store.read() as session:
        if endpoint is not None:
            _require_endpoint(session, endpoint)
            query = query.where(Silence.endpoint == endpoint)
        return [_silence_info(row, now) for row in session.scalars(query)]
