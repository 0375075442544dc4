"""Alert rules and the alert lifecycle, driven window after window with monitor results."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from passerelle import alerts, audit, notify
from passerelle.alerts import RuleSpec, Transition
from passerelle.context import Context
from passerelle.errors import ConflictError, InvalidInputError, NotFoundError
from passerelle.settings import Settings
from passerelle.store.schema import (
    Alert,
    Endpoint,
    EndpointRevision,
    Monitor,
    MonitorResult,
    Notification,
    Silence,
)

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
EP = "churn-api"
_endpoints = itertools.count(1)


# ------------------------------------------------------------------------------------ helpers


def add_endpoint(ctx: Context, name: str) -> None:
    """An endpoint row routing to churn:1 and churn:2, as a deploy leaves it."""
    with ctx.store.write() as session:
        row = Endpoint(name=name, created_by="tester", current_revision=1)
        session.add(row)
        session.flush()
        policy = {
            "routes": [
                {"model": "churn", "version": 1, "weight": 50},
                {"model": "churn", "version": 2, "weight": 50},
            ]
        }
        session.add(
            EndpointRevision(endpoint_id=row.id, number=1, policy=policy, kind="deploy", created_by="tester")
        )


def result(figures: dict[str, Any], version: int = 1, *, endpoint: str = EP) -> MonitorResult:
    """One row of a window's results; version 0 is the all-versions row."""
    return MonitorResult(
        endpoint=endpoint,
        model="churn" if version else "",
        version=version,
        status="ok",
        rows=100,
        figures=figures,
        details={},
    )


@dataclass
class Enqueued:
    event: str
    alerts: list[dict[str, Any]]
    notifiers: tuple[str, ...]
    alert_id: int | None
    group_key: str

    def rules(self) -> list[tuple[str, str, int]]:
        return [(a["rule"], a["status"], a["version"]) for a in self.alerts]


@dataclass
class Windows:
    """Drives ``evaluate_window`` one hour after another, as the monitor does."""

    ctx: Context
    sent: list[Enqueued]
    endpoint: str = EP
    index: int = 0
    now: dt.datetime | None = None
    transitions: list[list[Transition]] = field(default_factory=list)

    @property
    def start(self) -> dt.datetime:
        return T0 + self.index * HOUR

    def step(self, *results: MonitorResult) -> list[Transition]:
        start = self.start
        with self.ctx.store.write() as session:
            out = alerts.evaluate_window(
                session,
                self.endpoint,
                list(results),
                window_start=start,
                window_end=start + HOUR,
                now=self.now or dt.datetime.now(dt.UTC),
            )
        self.index += 1
        self.transitions.append(out)
        return out

    def figure(self, name: str, *values: float | None, version: int = 1) -> list[list[Transition]]:
        """One window per value of one figure; None is a window without it."""
        return [self.step(result({} if v is None else {name: v}, version)) for v in values]

    def states(self, rule: str | None = None) -> list[tuple[str, str, str]]:
        return sorted(
            (a.rule, a.fingerprint, a.state)
            for a in alerts.list_alerts(self.ctx, self.endpoint)
            if rule is None or a.rule == rule
        )


def moves(transitions: list[Transition]) -> list[tuple[str, int, str, str]]:
    return [(t.alert.rule, t.alert.version, t.before, t.after) for t in transitions]


def actions(ctx: Context, prefix: str = "alert.") -> list[str]:
    return [
        e.action for e in reversed(audit.list_entries(ctx.store, limit=500)) if e.action.startswith(prefix)
    ]


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context(Settings(home=tmp_path / "home"))
    try:
        add_endpoint(context, EP)
        yield context
    finally:
        context.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Enqueued]:
    """Every enqueue call, passed on to the real outbox."""
    calls: list[Enqueued] = []
    real = notify.enqueue

    def recording(session: Session, **kwargs: Any) -> int:
        calls.append(
            Enqueued(
                kwargs["event"],
                kwargs["alerts"],
                tuple(kwargs.get("notifiers", ())),
                kwargs.get("alert_id"),
                kwargs.get("group_key", ""),
            )
        )
        return real(session, **kwargs)

    monkeypatch.setattr(notify, "enqueue", recording)
    return calls


@pytest.fixture
def win(ctx: Context, sent: list[Enqueued]) -> Windows:
    return Windows(ctx, sent)


# --------------------------------------------------------------------------- expressions, rules


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("drift.share", "expected '<figure> <op> <number>'"),
        ("drift.share = 0.3", "expected '<figure> <op> <number>'"),
        ("drift.share >> 0.3", "expected '<figure> <op> <number>'"),
        ("drift.share > 0.3 0.4", "expected '<figure> <op> <number>'"),
        ("> 0.3", "the figure before '>' is missing"),
        ("drift.share >=", "the number after '>=' is missing"),
        ("drift.share > high", "'high' is not a number"),
        ("drift.share > nan", "the threshold must be a finite number"),
        ("drift.share < inf", "the threshold must be a finite number"),
        ("drfit.share > 0.3", "unknown figure 'drfit.share'"),
        ("latency > 500", "unknown figure 'latency'"),
        ("drift.column. > 0", "unknown figure 'drift.column.'"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        alerts.parse_expression(text)
    assert str(caught.value).startswith(f"invalid alert expression {text!r}: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("text", "figure", "op", "threshold", "shown"),
    [
        ("drift.share > 0.3", "drift.share", ">", 0.3, "drift.share > 0.3"),
        ("latency.p99_ms>=500", "latency.p99_ms", ">=", 500.0, "latency.p99_ms >= 500"),
        ("  performance.accuracy <  0.8 ", "performance.accuracy", "<", 0.8, "performance.accuracy < 0.8"),
        ("performance.r2 <= -1.5e-3", "performance.r2", "<=", -0.0015, "performance.r2 <= -0.0015"),
        ("schema.changed == 1", "schema.changed", "==", 1.0, "schema.changed == 1"),
        ("ab.b_better != 0", "ab.b_better", "!=", 0.0, "ab.b_better != 0"),
        (
            "drift.column.monthly fee > 0",
            "drift.column.monthly fee",
            ">",
            0.0,
            "drift.column.monthly fee > 0",
        ),
        ("rows < 100", "rows", "<", 100.0, "rows < 100"),
    ],
)
def test_expressions_parse_and_print_back(
    text: str, figure: str, op: str, threshold: float, shown: str
) -> None:
    condition = alerts.parse_expression(text)
    assert (condition.figure, condition.op, condition.threshold) == (figure, op, threshold)
    assert str(condition) == shown
    assert alerts.parse_expression(str(condition)) == condition


def test_conditions_compare_like_their_operator() -> None:
    cases = {">": (False, False, True), ">=": (False, True, True), "<": (True, False, False)}
    cases |= {"<=": (True, True, False), "==": (False, True, False), "!=": (True, False, True)}
    for op, expected in cases.items():
        condition = alerts.parse_expression(f"drift.share {op} 0.3")
        assert tuple(condition.holds(v) for v in (0.2, 0.3, 0.4)) == expected, op


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RuleSpec("bad name!", "drift.share > 0.3"), "invalid rule name 'bad name!'"),
        (RuleSpec("d", "drift.share >"), "invalid alert expression 'drift.share >'"),
        (RuleSpec("d", "drift.share > 0.3", for_windows=0), "rule 'd': for_windows must be a whole number"),
        (RuleSpec("d", "drift.share > 0.3", for_windows=True), "for_windows must be a whole number"),
        (RuleSpec("d", "drift.share > 0.3", keep_firing_windows=-1), "keep_firing_windows must be a whole"),
        (
            RuleSpec("d", "drift.share > 0.3", severity="page"),
            "severity must be one of info, warning, critical",
        ),
        (RuleSpec("d", "drift.share > 0.3", inhibited_by=("d",)), "inhibited_by cannot name the rule itself"),
        (RuleSpec("d", "drift.share > 0.3", inhibited_by="schema"), "inhibited_by must be a list of names"),  # type: ignore[arg-type]
        (RuleSpec("d", "drift.share > 0.3", notify=("ops team",)), "invalid name in notify 'ops team'"),
        (RuleSpec("d", "drift.share > 0.3", pipeline="re train"), "invalid pipeline name 're train'"),
        (RuleSpec("d", "drift.share > 0.3", labels={"1team": "ml"}), "invalid label name '1team'"),
        (RuleSpec("d", "drift.share > 0.3", labels={"team": 3}), "label 'team' must be text"),  # type: ignore[dict-item]
    ],
)
def test_invalid_rules_are_refused_and_nothing_is_stored(ctx: Context, spec: RuleSpec, message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        alerts.set_rule(ctx, EP, spec)
    assert alerts.list_rules(ctx) == []


def test_rules_are_set_replaced_removed_and_audited(ctx: Context) -> None:
    with pytest.raises(NotFoundError, match="endpoint 'nope' does not exist"):
        alerts.set_rule(ctx, "nope", RuleSpec("d", "drift.share > 0.3"))

    info = alerts.set_rule(
        ctx,
        EP,
        RuleSpec("drift", "drift.share>0.3", for_windows=2, notify=("ops", "ops"), labels={"team": "ml"}),
        reason="first",
    )
    assert (info.endpoint, info.name, info.expression, info.for_windows) == (
        EP,
        "drift",
        "drift.share > 0.3",
        2,
    )
    assert (info.notify, info.labels, info.enabled, info.created_by) == (
        ("ops",),
        {"team": "ml"},
        True,
        "tester",
    )
    assert info.to_dict()["created_at"] == info.created_at.isoformat()
    assert json.loads(json.dumps(info.to_dict()))["notify"] == ["ops"]

    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=3, severity="critical"))
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=3, severity="critical"))
    assert [(r.name, r.for_windows, r.severity) for r in alerts.list_rules(ctx, EP)] == [
        ("drift", 3, "critical")
    ]

    alerts.remove_rule(ctx, EP, "drift", reason="too noisy")
    assert alerts.list_rules(ctx, EP) == []
    with pytest.raises(NotFoundError, match="endpoint 'churn-api' has no alert rule 'drift'"):
        alerts.remove_rule(ctx, EP, "drift")
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.5"))
    assert [r.expression for r in alerts.list_rules(ctx)] == ["drift.share > 0.5"]

    entries = [
        e for e in audit.list_entries(ctx.store, target=f"{EP}:rule:drift") if e.action.startswith("alert.")
    ]
    # Setting the same rule twice changes nothing and leaves one record, not two.
    assert [e.action for e in reversed(entries)] == ["alert.rule.set"] * 2 + [
        "alert.rule.remove",
        "alert.rule.set",
    ]
    assert entries[-1].before is None
    assert entries[-1].reason == "first"
    assert entries[1].before is not None
    assert entries[1].before["enabled"] is True
    assert entries[1].after is not None
    assert entries[1].after["enabled"] is False
    assert entries[1].reason == "too noisy"


def test_rules_are_set_together_inside_the_callers_transaction(ctx: Context) -> None:
    with (
        pytest.raises(InvalidInputError, match="alert rule 'errors' is given more than once"),
        ctx.store.write() as session,
    ):
        alerts.set_rules_in(session, EP, [RuleSpec("errors", "errors.rate > 0.1")] * 2, "deployer")
    with ctx.store.write() as session:
        infos = alerts.set_rules_in(session, EP, alerts.DEFAULT_RULES, "deployer", reason="deploy")
    assert [i.name for i in infos] == ["schema", "data-drift", "prediction-drift", "errors", "latency"]
    assert {r.name: r.created_by for r in alerts.list_rules(ctx, EP)} == dict.fromkeys(
        ["data-drift", "errors", "latency", "prediction-drift", "schema"], "deployer"
    )
    rules = {r.name: r for r in alerts.list_rules(ctx)}
    assert rules["data-drift"].inhibited_by == ("schema",)
    assert rules["schema"].severity == rules["errors"].severity == "critical"
    with pytest.raises(NotFoundError):
        alerts.list_rules(ctx, "nope")


# ----------------------------------------------------------------------------------- lifecycle


def test_for_windows_goes_pending_then_fires_on_the_nth_window(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=3))

    steps = win.figure("drift.share", 0.4, 0.5, 0.6)

    assert [moves(s) for s in steps] == [
        [("drift", 1, "inactive", "pending")],
        [],
        [("drift", 1, "pending", "firing")],
    ]
    [alert] = alerts.list_alerts(ctx, EP)
    assert (alert.state, alert.value, alert.fingerprint) == ("firing", 0.6, "churn-api/drift/churn:1")
    assert (alert.started_at, alert.fired_at, alert.resolved_at) == (T0, T0 + 3 * HOUR, None)
    assert alert.summary == "drift.share = 0.6 on churn:1 (drift.share > 0.3 true for 3 windows)"
    [message] = win.sent
    assert (message.event, message.rules(), message.alert_id) == (
        "firing",
        [("drift", "firing", 1)],
        alert.id,
    )
    assert message.group_key == f"{EP}/{(T0 + 2 * HOUR).isoformat()}"
    assert message.alerts[0] == alert.payload()
    assert alert.payload() | {"summary": ""} == {
        "status": "firing",
        "endpoint": EP,
        "rule": "drift",
        "severity": "warning",
        "expression": "drift.share > 0.3",
        "figure": "drift.share",
        "value": 0.6,
        "threshold": 0.3,
        "model": "churn",
        "version": 1,
        "summary": "",
        "started_at": T0.isoformat(),
        "fired_at": (T0 + 3 * HOUR).isoformat(),
        "resolved_at": None,
        "alert_id": alert.id,
        "fingerprint": "churn-api/drift/churn:1",
        "labels": {},
    }
    assert actions(ctx) == ["alert.rule.set", "alert.pending", "alert.fire"]


def test_for_one_fires_at_once(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("errors", "errors.rate > 0.05", severity="critical"))
    assert moves(win.step(result({"errors.rate": 0.2}))) == [("errors", 1, "inactive", "firing")]
    assert [m.rules() for m in win.sent] == [[("errors", "firing", 1)]]


def test_a_pending_alert_whose_condition_clears_is_closed_without_notification(
    ctx: Context, win: Windows
) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2))

    steps = win.figure("drift.share", 0.4, 0.1, 0.5)

    assert [moves(s) for s in steps] == [
        [("drift", 1, "inactive", "pending")],
        [("drift", 1, "pending", "cleared")],
        [("drift", 1, "inactive", "pending")],
    ]
    assert win.sent == []
    cleared = alerts.list_alerts(ctx, EP, state="cleared")
    assert [(a.resolved_at, a.fired_at) for a in cleared] == [(T0 + 2 * HOUR, None)]
    assert "cleared" in cleared[0].summary
    assert [a.started_at for a in alerts.list_alerts(ctx, EP, state="open")] == [T0 + 2 * HOUR]
    assert actions(ctx) == ["alert.rule.set", "alert.pending", "alert.clear", "alert.pending"]


def test_keep_firing_holds_through_false_windows_then_resolves(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", keep_firing_windows=2))

    # fire, two quiet windows (kept), true again (count restarts), three quiet windows: resolved
    steps = win.figure("drift.share", 0.4, 0.1, 0.2, 0.5, 0.1, 0.1, 0.1)

    assert [moves(s) for s in steps] == [
        [("drift", 1, "inactive", "firing")],
        [],
        [],
        [],
        [],
        [],
        [("drift", 1, "firing", "resolved")],
    ]
    [alert] = alerts.list_alerts(ctx, EP)
    assert (alert.state, alert.value, alert.fired_at, alert.resolved_at) == (
        "resolved",
        0.1,
        T0 + HOUR,
        T0 + 7 * HOUR,
    )
    assert alert.summary == "drift.share = 0.1 on churn:1 (drift.share > 0.3 false for 3 windows: resolved)"
    assert [(m.event, m.rules()) for m in win.sent] == [
        ("firing", [("drift", "firing", 1)]),
        ("resolved", [("drift", "resolved", 1)]),
    ]
    resolved = win.sent[1].alerts[0]
    assert resolved["resolved_at"] == (T0 + 7 * HOUR).isoformat()
    assert resolved["alert_id"] == alert.id


def test_windows_without_the_figure_move_nothing(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2))

    # absent, null (an undefined figure) and text are all "no data"; the run of trues goes on
    win.step(result({"drift.share": 0.4}))
    win.step(result({"rows": 3.0}))
    win.step(result({"drift.share": None}))
    win.step(result({"drift.share": "n/a"}))
    win.step()
    [pending] = alerts.list_alerts(ctx, EP)
    assert (pending.state, pending.value) == ("pending", 0.4)
    assert moves(win.step(result({"drift.share": 0.5}))) == [("drift", 1, "pending", "firing")]

    win.step(result({"rows": 3.0}))
    win.step(result({"drift.share": float("nan")}))
    [firing] = alerts.list_alerts(ctx, EP)
    assert (firing.state, firing.value, firing.summary) == (
        "firing",
        0.5,
        "drift.share = 0.5 on churn:1 (drift.share > 0.3 true for 2 windows)",
    )
    assert sum(len(t) for t in win.transitions) == 2


def test_one_open_alert_per_fingerprint_across_windows(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3"))
    window = [
        result({"drift.share": 0.5}, 1),
        result({"drift.share": 0.6}, 2),
        result({"drift.share": 0.4}, 0),
    ]

    first = win.step(*window)
    for _ in range(3):
        assert win.step(*window) == []

    assert sorted((t.alert.fingerprint, t.after) for t in first) == [
        ("churn-api/drift/:0", "firing"),
        ("churn-api/drift/churn:1", "firing"),
        ("churn-api/drift/churn:2", "firing"),
    ]
    open_alerts = alerts.list_alerts(ctx, EP, state="open")
    assert len(open_alerts) == 3
    assert {a.fingerprint: a.summary.split(" (")[0] for a in open_alerts}["churn-api/drift/:0"] == (
        "drift.share = 0.4 on all versions"
    )
    # the same window evaluated again does not count twice
    win.index -= 1
    win.step(result({"drift.share": 0.1}, 1))
    assert len(alerts.list_alerts(ctx, EP, state="firing")) == 3

    win.step(result({"drift.share": 0.1}, 1))
    reopened = win.step(result({"drift.share": 0.9}, 1))
    assert moves(reopened) == [("drift", 1, "inactive", "firing")]
    by_fingerprint = [a for a in alerts.list_alerts(ctx, EP) if a.fingerprint == "churn-api/drift/churn:1"]
    assert [a.state for a in by_fingerprint] == ["firing", "resolved"]
    assert by_fingerprint[0].id > by_fingerprint[1].id
    with ctx.store.read() as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 4


def test_alerts_of_one_window_are_grouped_per_notifier_set(ctx: Context, win: Windows) -> None:
    notify.set_notifier(ctx, "ops", "webhook", {"url": "http://127.0.0.1:9/ops"})
    notify.set_notifier(ctx, "pager", "webhook", {"url": "http://127.0.0.1:9/pager"})
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", notify=("ops",)))
    alerts.set_rule(ctx, EP, RuleSpec("errors", "errors.rate > 0.05", notify=("ops",)))
    alerts.set_rule(ctx, EP, RuleSpec("latency", "latency.p99_ms > 500", notify=("pager",)))

    win.step(
        result({"drift.share": 0.5, "errors.rate": 0.1, "latency.p99_ms": 900.0}, 1),
        result({"drift.share": 0.5, "errors.rate": 0.0}, 2),
    )

    by_set = {m.notifiers: m for m in win.sent}
    assert len(win.sent) == 2
    assert by_set[("ops",)].rules() == [
        ("drift", "firing", 1),
        ("drift", "firing", 2),
        ("errors", "firing", 1),
    ]
    assert by_set[("pager",)].rules() == [("latency", "firing", 1)]
    assert by_set[("ops",)].alert_id is None
    assert by_set[("pager",)].alert_id is not None
    assert {m.group_key for m in win.sent} == {f"{EP}/{T0.isoformat()}"}
    with ctx.store.read() as session:
        rows = session.scalars(select(Notification).order_by(Notification.notifier)).all()
        assert [(r.notifier, r.event, len(r.payload["alerts"])) for r in rows] == [
            ("ops", "firing", 3),
            ("pager", "firing", 1),
        ]

    # one resolves while another fires: still one message for the set, "firing" first
    win.step(result({"drift.share": 0.1, "errors.rate": 0.1}, 1), result({"drift.share": 0.5}, 2))
    assert win.sent[2].notifiers == ("ops",)
    assert (win.sent[2].event, win.sent[2].rules()) == ("resolved", [("drift", "resolved", 1)])
    win.step(result({"drift.share": 0.1, "errors.rate": 0.0}, 1), result({"errors.rate": 0.3}, 2))
    assert (win.sent[3].event, win.sent[3].rules()) == (
        "firing",
        [("errors", "firing", 2), ("errors", "resolved", 1)],
    )


def test_schema_firing_inhibits_drift_until_it_resolves(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("schema", "schema.rejected_share > 0.05", severity="critical"))
    alerts.set_rule(
        ctx, EP, RuleSpec("drift", "drift.share > 0.3", inhibited_by=("schema",), pipeline="retrain")
    )
    calls: list[str] = []
    unregister = alerts.register_pipeline_trigger(lambda _s, name, payload: calls.append(payload["rule"]))
    try:
        broken = {"schema.rejected_share": 0.5, "drift.share": 0.8}
        first = win.step(result(broken, 1), result(broken, 0))
        assert sorted(moves(first)) == [
            ("drift", 0, "inactive", "firing"),
            ("drift", 1, "inactive", "firing"),
            ("schema", 0, "inactive", "firing"),
            ("schema", 1, "inactive", "firing"),
        ]
        assert {(t.alert.rule, t.alert.inhibited) for t in first} == {("drift", True), ("schema", False)}
        assert [m.rules() for m in win.sent] == [[("schema", "firing", 0), ("schema", "firing", 1)]]
        assert calls == []

        # schema fixed on version 1 only: the all-versions schema alert still holds drift back
        win.step(result({"schema.rejected_share": 0.0, "drift.share": 0.8}, 1), result(broken, 0))
        assert [m.rules() for m in win.sent[1:]] == [[("schema", "resolved", 1)]]
        assert calls == []

        fixed = {"schema.rejected_share": 0.0, "drift.share": 0.8}
        assert moves(win.step(result(fixed, 1), result(fixed, 0))) == [("schema", 0, "firing", "resolved")]
        assert [(m.event, m.rules()) for m in win.sent[2:]] == [
            ("firing", [("drift", "firing", 0), ("drift", "firing", 1), ("schema", "resolved", 0)])
        ]
        assert calls == ["drift", "drift"]
        assert not any(a.inhibited for a in alerts.list_alerts(ctx, EP, state="firing"))
        assert "alert.release" in actions(ctx)

        win.step(result({"drift.share": 0.1}, 1), result({"drift.share": 0.1}, 0))
        assert [m.rules() for m in win.sent[3:]] == [[("drift", "resolved", 0), ("drift", "resolved", 1)]]
    finally:
        unregister()


def test_inhibition_is_per_version_and_a_held_back_alert_resolves_silently(
    ctx: Context, win: Windows
) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("schema", "schema.rejected_share > 0.05"))
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", inhibited_by=("schema",)))

    win.step(result({"schema.rejected_share": 0.5, "drift.share": 0.8}, 1), result({"drift.share": 0.8}, 2))
    assert [m.rules() for m in win.sent] == [[("drift", "firing", 2), ("schema", "firing", 1)]]
    win.step(result({"schema.rejected_share": 0.5, "drift.share": 0.1}, 1), result({"drift.share": 0.8}, 2))
    assert len(win.sent) == 1
    assert [a.state for a in alerts.list_alerts(ctx, EP) if a.version == 1 and a.rule == "drift"] == [
        "resolved"
    ]

    # an alert already announced is not muted by an inhibitor firing after it
    win.step(result({"schema.rejected_share": 0.5}, 2))
    win.step(result({"schema.rejected_share": 0.5, "drift.share": 0.1}, 2))
    assert [m.rules() for m in win.sent[1:]] == [[("schema", "firing", 2)], [("drift", "resolved", 2)]]


def test_silences_mute_notifications_but_not_state(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3"))
    alerts.set_rule(ctx, EP, RuleSpec("errors", "errors.rate > 0.05"))
    mute_all = alerts.silence(ctx, EP, duration=dt.timedelta(hours=2), comment="maintenance")
    mute_drift = alerts.silence(ctx, EP, rule="drift", ends_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert (mute_all.rule, mute_all.active, mute_all.created_by, mute_all.comment) == (
        "*",
        True,
        "tester",
        "maintenance",
    )
    assert mute_all.ends_at - mute_all.starts_at == dt.timedelta(hours=2)

    fired = win.step(result({"drift.share": 0.5, "errors.rate": 0.1}))
    assert sorted(moves(fired)) == [("drift", 1, "inactive", "firing"), ("errors", 1, "inactive", "firing")]
    assert all(t.alert.silenced for t in fired)
    assert win.sent == []
    assert {a.rule: a.silenced for a in alerts.list_alerts(ctx, EP)} == {"drift": True, "errors": True}

    expired = alerts.expire_silence(ctx, mute_all.id, reason="done")
    assert not expired.active
    assert expired.ends_at <= dt.datetime.now(dt.UTC)
    assert [s.id for s in alerts.list_silences(ctx, EP, active_only=True)] == [mute_drift.id]
    assert [s.id for s in alerts.list_silences(ctx)] == [mute_drift.id, mute_all.id]
    assert {a.rule: a.silenced for a in alerts.list_alerts(ctx, EP)} == {"drift": True, "errors": False}
    with pytest.raises(ConflictError, match=f"silence {mute_all.id} already ended"):
        alerts.expire_silence(ctx, mute_all.id)

    win.step(result({"drift.share": 0.1, "errors.rate": 0.0}))
    assert [m.rules() for m in win.sent] == [[("errors", "resolved", 1)]]
    assert actions(ctx, "alert.silence") == ["alert.silence", "alert.silence", "alert.silence.expire"]

    # silences are matched at the evaluation's time: a silence over by then mutes nothing
    win.now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    win.step(result({"drift.share": 0.9}))
    assert [m.rules() for m in win.sent[1:]] == [[("drift", "firing", 1)]]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, InvalidInputError, "a silence needs either a duration or an end time"),
        (
            {"duration": dt.timedelta(hours=1), "ends_at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC)},
            InvalidInputError,
            "a silence needs either a duration or an end time",
        ),
        ({"duration": dt.timedelta(0)}, InvalidInputError, "the silence duration must be positive"),
        ({"ends_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, InvalidInputError, "is not in the future"),
        (
            {"ends_at": dt.datetime(2099, 1, 1)},
            InvalidInputError,
            "ends_at must be a datetime with a time zone",
        ),
        ({"duration": dt.timedelta(hours=1), "rule": "nope"}, NotFoundError, "has no alert rule 'nope'"),
        (
            {"duration": dt.timedelta(hours=1), "endpoint": "nope"},
            NotFoundError,
            "endpoint 'nope' does not exist",
        ),
    ],
)
def test_bad_silences_are_refused(
    ctx: Context, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    endpoint = kwargs.pop("endpoint", EP)
    with pytest.raises(error, match=message):
        alerts.silence(ctx, endpoint, **kwargs)
    assert alerts.list_silences(ctx) == []
    with pytest.raises(NotFoundError, match="silence 7 does not exist"):
        alerts.expire_silence(ctx, 7)


def test_an_acknowledged_alert_is_not_notified_again_until_it_resolves(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("schema", "schema.rejected_share > 0.05"))
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2, inhibited_by=("schema",)))
    with pytest.raises(NotFoundError, match="alert 1 does not exist"):
        alerts.ack(ctx, 1)

    win.step(result({"schema.rejected_share": 0.5, "drift.share": 0.8}))
    pending = next(a for a in alerts.list_alerts(ctx, EP) if a.rule == "drift")
    with pytest.raises(ConflictError, match=f"alert {pending.id} is pending; only a firing alert"):
        alerts.ack(ctx, pending.id)
    win.step(result({"schema.rejected_share": 0.5, "drift.share": 0.8}))
    [drift] = [a for a in alerts.list_alerts(ctx, EP) if a.rule == "drift"]
    assert (drift.state, drift.inhibited) == ("firing", True)
    acked = alerts.ack(ctx, drift.id, reason="looking at it")
    assert (acked.acked_by, acked.state) == ("tester", "firing")
    assert acked.acked_at is not None
    assert acked.to_dict()["acked_at"] == acked.acked_at.isoformat()
    with pytest.raises(ConflictError, match="already acknowledged by tester"):
        alerts.ack(ctx, drift.id)

    # the schema resolves: drift is released but, acknowledged, not announced again
    win.step(result({"schema.rejected_share": 0.0, "drift.share": 0.8}))
    assert [m.rules() for m in win.sent] == [[("schema", "firing", 1)], [("schema", "resolved", 1)]]
    win.step(result({"drift.share": 0.1}))
    assert [m.rules() for m in win.sent[2:]] == [[("drift", "resolved", 1)]]
    [entry] = audit.list_entries(ctx.store, action="alert.ack")
    assert (entry.target, entry.reason, entry.after and entry.after["acked_by"]) == (
        f"{EP}:alert:{drift.id}",
        "looking at it",
        "tester",
    )
    with pytest.raises(ConflictError, match="is resolved"):
        alerts.ack(ctx, drift.id)


def test_changing_or_removing_a_rule_closes_its_open_alerts(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2))
    alerts.set_rule(ctx, EP, RuleSpec("errors", "errors.rate > 0.05"))
    win.step(result({"drift.share": 0.5, "errors.rate": 0.1}))
    win.step(result({"drift.share": 0.5}))

    # settings other than the expression apply to the open alert from the next window on
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2, keep_firing_windows=1))
    assert win.step(result({"drift.share": 0.1})) == []
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.6"))
    [closed] = [a for a in alerts.list_alerts(ctx, EP) if a.rule == "drift"]
    assert (closed.state, closed.expression) == ("resolved", "drift.share > 0.6")
    assert "closed because rule 'drift' changed its expression" in closed.summary

    alerts.remove_rule(ctx, EP, "errors")
    assert alerts.list_alerts(ctx, EP, state="open") == []
    assert [(m.event, m.rules()) for m in win.sent] == [
        ("firing", [("errors", "firing", 1)]),
        ("firing", [("drift", "firing", 1)]),
        ("resolved", [("drift", "resolved", 1)]),
        ("resolved", [("errors", "resolved", 1)]),
    ]
    assert win.sent[2].alerts[0]["expression"] == "drift.share > 0.3"
    # a removed rule evaluates nothing; its past alerts keep its name
    assert win.step(result({"errors.rate": 0.9})) == []
    assert {a.rule for a in alerts.list_alerts(ctx, EP)} == {"drift", "errors"}


def test_list_alerts_filters_and_refuses_bad_arguments(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", for_windows=2))
    win.figure("drift.share", 0.5, 0.1, 0.5, 0.5, version=1)
    win.figure("drift.share", 0.5, version=2)
    assert [(a.version, a.state) for a in alerts.list_alerts(ctx)] == [
        (2, "pending"),
        (1, "firing"),
        (1, "cleared"),
    ]
    assert [a.state for a in alerts.list_alerts(ctx, EP, state="open")] == ["pending", "firing"]
    assert [a.state for a in alerts.list_alerts(ctx, EP, limit=1)] == ["pending"]
    with pytest.raises(
        InvalidInputError, match="state must be open or one of pending, firing, resolved, cleared"
    ):
        alerts.list_alerts(ctx, state="active")
    with pytest.raises(InvalidInputError, match="limit must be a whole number"):
        alerts.list_alerts(ctx, limit=0)
    with pytest.raises(NotFoundError):
        alerts.list_alerts(ctx, "nope")
    with (
        ctx.store.write() as session,
        pytest.raises(InvalidInputError, match="window_start must be a datetime"),
    ):
        alerts.evaluate_window(session, EP, [], window_start=T0.replace(tzinfo=None), window_end=T0, now=T0)
    with ctx.store.write() as session, pytest.raises(InvalidInputError, match="a result of endpoint 'other'"):
        alerts.evaluate_window(
            session, EP, [result({}, endpoint="other")], window_start=T0, window_end=T0 + HOUR, now=T0
        )


# ------------------------------------------------------------------------------ pipeline hook


def test_a_firing_alert_triggers_its_pipeline_once(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", pipeline="retrain-churn"))
    alerts.set_rule(ctx, EP, RuleSpec("errors", "errors.rate > 0.05"))
    calls: list[tuple[str, dict[str, Any], bool]] = []
    unregister = alerts.register_pipeline_trigger(
        lambda session, name, payload: calls.append((name, payload, session.in_transaction()))
    )
    try:
        win.figure("drift.share", 0.5, 0.6, 0.1)
        win.step(result({"errors.rate": 0.9}))
    finally:
        unregister()
    unregister()
    [(name, payload, in_transaction)] = calls
    assert (name, payload["rule"], payload["status"], payload["value"], in_transaction) == (
        "retrain-churn",
        "drift",
        "firing",
        0.5,
        True,
    )
    [entry] = audit.list_entries(ctx.store, action="alert.pipeline")
    assert entry.after is not None
    assert (entry.after["pipeline"], entry.after["status"]) == ("retrain-churn", "triggered")


def test_without_a_pipeline_runner_the_firing_is_recorded(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", pipeline="retrain-churn"))
    win.step(result({"drift.share": 0.5}))
    [entry] = audit.list_entries(ctx.store, action="alert.pipeline")
    [alert] = alerts.list_alerts(ctx, EP)
    assert (entry.target, entry.actor) == (f"{EP}:alert:{alert.id}", "monitor")
    assert entry.after == {"pipeline": "retrain-churn", "status": "no pipeline runner installed"}


def test_a_failing_trigger_is_recorded_and_never_breaks_the_window(ctx: Context, win: Windows) -> None:
    alerts.set_rule(ctx, EP, RuleSpec("drift", "drift.share > 0.3", pipeline="retrain-churn"))
    later: list[str] = []

    def broken(session: Session, name: str, payload: dict[str, Any]) -> None:
        session.add(Silence(endpoint=EP, rule="*", ends_at=T0, created_by="trigger"))
        session.flush()
        raise RuntimeError("runner is down")

    undo = [
        alerts.register_pipeline_trigger(broken),
        alerts.register_pipeline_trigger(lambda _s, name, _p: later.append(name)),
    ]
    try:
        fired = win.step(result({"drift.share": 0.5}))
    finally:
        for unregister in undo:
            unregister()
    assert moves(fired) == [("drift", 1, "inactive", "firing")]
    assert later == ["retrain-churn"]
    assert [m.rules() for m in win.sent] == [[("drift", "firing", 1)]]
    statuses = [
        e.after and e.after["status"]
        for e in reversed(audit.list_entries(ctx.store, action="alert.pipeline"))
    ]
    assert statuses == ["failed: RuntimeError: runner is down", "triggered"]
    # the failing trigger's own write went with it; the window's did not
    with ctx.store.read() as session:
        assert session.scalar(select(func.count()).select_from(Silence)) == 0
    assert [a.state for a in alerts.list_alerts(ctx, EP)] == ["firing"]


# ---------------------------------------------------------------------------------- property


def _model(outcomes: list[bool | None], for_windows: int, keep: int) -> tuple[list[str], int]:
    """The lifecycle written out plainly: the state after each window, and how many firings."""
    state, true, false, fired, out = "inactive", 0, 0, 0, []
    for outcome in outcomes:
        if outcome is not None:
            if state in ("inactive", "cleared", "resolved") and outcome:
                state, true, false = "pending", 0, 0
            if state in ("pending", "firing"):
                if outcome:
                    true, false = true + 1, 0
                    if state == "pending" and true >= for_windows:
                        state, fired = "firing", fired + 1
                elif state == "pending":
                    state = "cleared"
                else:
                    false += 1
                    if false > keep:
                        state = "resolved"
        out.append(state)
    return out, fired


def _longest_true_run(outcomes: list[bool | None]) -> int:
    best = run = 0
    for outcome in outcomes:
        if outcome is True:
            run += 1
            best = max(best, run)
        elif outcome is False:
            run = 0
    return best


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    outcomes=st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=14),
    for_windows=st.integers(1, 4),
    keep=st.integers(0, 2),
)
def test_lifecycle_matches_its_model_for_any_sequence(
    ctx: Context, outcomes: list[bool | None], for_windows: int, keep: int
) -> None:
    endpoint = f"ep-{next(_endpoints)}"
    add_endpoint(ctx, endpoint)
    alerts.set_rule(ctx, endpoint, RuleSpec("r", "drift.share > 0.5", for_windows, keep))
    expected, fired = _model(outcomes, for_windows, keep)
    seen: list[str] = []
    firings = 0
    with ctx.store.write() as session:
        for i, outcome in enumerate(outcomes):
            figures = {} if outcome is None else {"drift.share": 0.9 if outcome else 0.1}
            start = T0 + i * HOUR
            transitions = alerts.evaluate_window(
                session,
                endpoint,
                [result(figures, 1, endpoint=endpoint), result({}, 0, endpoint=endpoint)],
                window_start=start,
                window_end=start + HOUR,
                now=start,
            )
            firings += sum(t.after == "firing" for t in transitions)
            rows = session.scalars(select(Alert).where(Alert.endpoint == endpoint).order_by(Alert.id)).all()
            assert sum(r.state in ("pending", "firing") for r in rows) <= 1
            assert {r.fingerprint for r in rows} <= {f"{endpoint}/r/churn:1"}
            seen.append(rows[-1].state if rows else "inactive")
    assert seen == expected
    assert firings == fired
    assert (fired > 0) == (_longest_true_run(outcomes) >= for_windows)


# -------------------------------------------------------------------------------- end to end


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_default_rules_fire_and_resolve_through_the_outbox(
    backend: str, tmp_path: Path, receiver: Receiver
) -> None:
    ctx = Context(Settings(home=tmp_path / "home", database_url=backend))
    try:
        add_endpoint(ctx, EP)
        notify.set_notifier(ctx, "ops", "webhook", {"url": receiver.url})
        with ctx.store.write() as session:
            alerts.set_rules_in(session, EP, alerts.DEFAULT_RULES, ctx.actor)
            session.add(Monitor(endpoint=EP, window_s=3600, next_window=T0, created_by="tester"))

        def window(i: int, figures: dict[str, float]) -> list[Transition]:
            start = T0 + i * HOUR
            with ctx.store.write() as session:
                monitor = session.scalars(select(Monitor)).one()
                rows = [
                    MonitorResult(
                        monitor_id=monitor.id,
                        endpoint=EP,
                        window_start=start,
                        window_end=start + HOUR,
                        model=model,
                        version=version,
                        status="ok",
                        rows=500,
                        figures=figures,
                        details={},
                    )
                    for model, version in (("churn", 1), ("", 0))
                ]
                session.add_all(rows)
                session.flush()
                return alerts.evaluate_window(
                    session, EP, rows, window_start=start, window_end=start + HOUR, now=start + HOUR
                )

        calm = {"drift.share": 0.1, "drift.prediction": 0.0, "errors.rate": 0.0, "latency.p99_ms": 40.0}
        drifting = calm | {"drift.share": 0.5}
        assert {t.after for t in window(0, drifting)} == {"pending"}
        assert {(t.alert.rule, t.after) for t in window(1, drifting)} == {("data-drift", "firing")}
        assert window(2, calm) == []  # kept firing for one quiet window
        assert {(t.alert.rule, t.after) for t in window(3, calm)} == {("data-drift", "resolved")}

        report = notify.deliver_due(ctx, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        assert report.sent == 2
        assert [(b["status"], len(b["alerts"])) for b in receiver.bodies] == [("firing", 2), ("resolved", 2)]
        firing = receiver.bodies[0]["alerts"]
        assert {(a["rule"], a["endpoint"], a["version"], a["threshold"]) for a in firing} == {
            ("data-drift", EP, 1, 0.3),
            ("data-drift", EP, 0, 0.3),
        }
        assert [a.state for a in alerts.list_alerts(ctx, EP)] == ["resolved", "resolved"]
        assert actions(ctx, "alert.fire") == ["alert.fire"] * 2
        assert actions(ctx, "alert.resolve") == ["alert.resolve"] * 2
    finally:
        ctx.close()
