"""Notifiers and the outbox, against a real HTTP server and a real SMTP server on loopback ports."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from passerelle import audit, notify
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.settings import Settings
from passerelle.store.schema import Notification
from tests.conftest import free_port

T0 = "2026-03-02T09:00:00+00:00"
#: a planned answer of the test HTTP server: 200 after one second
SLOW = 0


def alert(rule: str = "data-drift", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "status": "firing",
        "endpoint": "churn-api",
        "rule": rule,
        "severity": "warning",
        "expression": "drift.share > 0.3",
        "figure": "drift.share",
        "value": 0.42,
        "threshold": 0.3,
        "model": "churn",
        "version": 0,
        "summary": "4 of 10 columns drifted",
        "started_at": T0,
        "fired_at": "2026-03-02T10:00:00+00:00",
        "resolved_at": None,
        "alert_id": None,
        "labels": {"team": "ml"},
        "an_extra_key": [1, 2],
    }
    payload.update(fields)
    return payload


# ----------------------------------------------------------------------------- servers


@dataclass
class Hook:
    """A local HTTP server that records JSON bodies and answers the planned status codes."""

    url: str
    plan: list[int] = field(default_factory=list)
    received: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, _, body in self.received if p == path]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.received.append((self.path, dict(self.headers.items()), json.loads(raw)))
                code = state.plan.pop(0) if state.plan else 200
            if code == SLOW:
                time.sleep(1.0)
                code = 200
            try:
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code < 300 else b"internal trouble")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as a timeout test wants

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Mailbox:
    """An aiosmtpd handler keeping every message, or refusing them all with ``refuse``."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return self.refuse
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@dataclass
class Smtp:
    port: int
    box: Mailbox
    logins: list[tuple[bytes, bytes]]


def _smtp(box: Mailbox) -> Iterator[Smtp]:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)

    port = free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        yield Smtp(port, box, logins)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    yield from _smtp(Mailbox())


@pytest.fixture
def refusing_smtp() -> Iterator[Smtp]:
    yield from _smtp(Mailbox(refuse="550 5.7.1 message refused by policy"))


@pytest.fixture
def ctx(backend: str, tmp_path: Path) -> Iterator[Context]:
    context = Context(Settings(home=tmp_path / "home", database_url=backend))
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def sqlite_ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context(Settings(home=tmp_path / "home"))
    try:
        yield context
    finally:
        context.close()


def queue(ctx: Context, alerts: list[dict[str, Any]], **kwargs: Any) -> int:
    with ctx.store.write() as session:
        return notify.enqueue(session, event=kwargs.pop("event", "firing"), alerts=alerts, **kwargs)


def rows(ctx: Context) -> list[Notification]:
    with ctx.store.read() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)).all())


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kind", "config", "names"),
    [
        ("webhook", {}, "'url'"),
        ("webhook", {"url": "ftp://example.com/x"}, "'url'"),
        ("webhook", {"url": "http://example.com", "timeout": 3}, "'timeout'"),
        ("webhook", {"url": "http://example.com", "timeout_s": 0}, "'timeout_s'"),
        ("webhook", {"url": "http://example.com", "headers": {"X-A": 1}}, "'headers.X-A'"),
        ("slack", {"url": "https://hooks.slack.com/x", "channel": ""}, "'channel'"),
        ("smtp", {"host": "mail", "to": ["a@example.com"]}, "'from'"),
        ("smtp", {"host": "mail", "from": "x@example.com", "to": []}, "'to'"),
        ("smtp", {"host": "mail", "from": "x@example.com", "to": ["nobody"]}, "'to'"),
        ("smtp", {"host": "mail", "from": "x@example.com", "to": "a@example.com", "port": 0}, "'port'"),
        (
            "smtp",
            {"host": "m", "from": "x@example.com", "to": "a@example.com", "password": "p"},
            "password_env",
        ),
        ("smtp", {"host": "m", "from": "x@e.com", "to": "a@e.com", "password_env": "1X"}, "'password_env'"),
        ("smtp", {"host": "m", "from": "x@e.com", "to": "a@e.com", "username": "u"}, "'password_env'"),
        ("smtp", {"host": "m", "from": "x@e.com", "to": "a@e.com", "ssl": True, "starttls": "yes"}, "'ssl'"),
        ("pager", {}, "'pager'"),
    ],
)
def test_invalid_configs_name_the_key(kind: str, config: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        notify.validate_config(kind, config)
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)


def test_valid_configs_get_their_defaults() -> None:
    assert notify.validate_config("webhook", {"url": "https://example.com/hook"}) == {
        "url": "https://example.com/hook",
        "headers": {},
        "timeout_s": 5.0,
    }
    smtp = notify.validate_config(
        "smtp",
        {"host": "mail", "from": "x@example.com", "to": "a@example.com", "port": "587", "starttls": "true"},
    )
    assert smtp == {
        "host": "mail",
        "port": 587,
        "from": "x@example.com",
        "to": ["a@example.com"],
        "starttls": True,
        "ssl": False,
        "timeout_s": 10.0,
    }
    implicit_tls = notify.validate_config(
        "smtp", {"host": "m", "from": "x@e.com", "to": "a@e.com", "ssl": True}
    )
    assert implicit_tls["port"] == 465
    assert notify.KINDS == ("webhook", "slack", "smtp")


def test_the_documented_example_runs(sqlite_ctx: Context) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    section = page.split("## Notifiers", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks
    namespace: dict[str, Any] = {"ctx": sqlite_ctx}
    exec(compile(blocks[0], "alerts.md[Notifiers]", "exec"), namespace)
    assert namespace["names"] == ["ml-chat", "ml-mail", "ops"]


def test_notifiers_are_set_listed_masked_audited_and_removed(ctx: Context) -> None:
    secret_url = "https://bot:pa55word@hooks.example.com/alerts?token=t0ken&team=ml"
    notify.set_notifier(
        ctx,
        "ops",
        "webhook",
        {"url": secret_url, "headers": {"Authorization": "Bearer abc123"}},
        reason="on call",
    )
    notify.set_notifier(ctx, "chat", "slack", {"url": "https://hooks.slack.com/services/T0/B0/XyZsecret"})
    listed = {info.name: info for info in notify.list_notifiers(ctx)}
    assert list(listed) == ["chat", "ops"]
    assert listed["ops"].config["url"] == "https://bot:***@hooks.example.com/alerts?token=***&team=***"
    assert listed["ops"].config["headers"] == {"Authorization": "***"}
    assert listed["chat"].config["url"] == "https://hooks.slack.com/services/***"
    shown = json.dumps([info.to_dict() for info in listed.values()])
    entries = audit.list_entries(ctx.store, action="notifier.set")
    logged = json.dumps([[e.before, e.after] for e in entries])
    for secret in ("pa55word", "t0ken", "abc123", "XyZsecret"):
        assert secret not in shown
        assert secret not in logged
    assert entries[-1].reason == "on call"
    assert entries[-1].target == "notifier:ops"

    replaced = notify.set_notifier(ctx, "ops", "webhook", {"url": "http://127.0.0.1:9/hook"}, enabled=False)
    assert not replaced.enabled
    assert replaced.created_by == "tester"
    assert len(notify.list_notifiers(ctx)) == 2
    last = audit.list_entries(ctx.store, action="notifier.set", limit=1)[0]
    assert last.before is not None
    assert last.after is not None
    assert (last.before["enabled"], last.after["enabled"]) == (True, False)

    notify.remove_notifier(ctx, "ops", reason="replaced by chat")
    assert [info.name for info in notify.list_notifiers(ctx)] == ["chat"]
    assert audit.list_entries(ctx.store, action="notifier.remove")[0].reason == "replaced by chat"
    with pytest.raises(NotFoundError, match="'ops'"):
        notify.remove_notifier(ctx, "ops")
    with pytest.raises(InvalidInputError, match="'url'"):
        notify.set_notifier(ctx, "bad", "webhook", {"url": "nope"})
    assert [info.name for info in notify.list_notifiers(ctx)] == ["chat"]


# ----------------------------------------------------------------------------- enqueue


def test_enqueue_targets_enabled_notifiers_inside_the_callers_transaction(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    for name, enabled in (("a", True), ("b", True), ("off", False)):
        notify.set_notifier(ctx, name, "webhook", {"url": "http://127.0.0.1:9/x"}, enabled=enabled)
    assert queue(ctx, [alert()]) == 2
    assert queue(ctx, [alert()], notifiers=["b", "off", "gone"], alert_id=None, group_key="g1") == 1
    assert queue(ctx, []) == 0
    queued = rows(ctx)
    assert [r.notifier for r in queued] == ["a", "b", "b"]
    assert queued[2].payload["group_key"] == "g1"
    assert queued[0].payload["group_key"] == "churn-api/data-drift"
    assert queued[0].payload["event"] == "firing"
    assert queued[0].payload["alerts"][0]["an_extra_key"] == [1, 2]
    assert all(r.status == "pending" and r.attempts == 0 for r in queued)

    # The outbox row commits with the caller's change, or not at all.
    def failing_change() -> None:
        with ctx.store.write() as session:
            notify.enqueue(session, event="resolved", alerts=[alert(status="resolved")])
            raise RuntimeError("the alert's own change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert len(rows(ctx)) == 3
    with pytest.raises(InvalidInputError, match="event"), ctx.store.write() as session:
        notify.enqueue(session, event="exploded", alerts=[alert()])


# ----------------------------------------------------------------------------- delivery


def test_webhook_and_slack_bodies(sqlite_ctx: Context, hook: Hook) -> None:
    ctx = sqlite_ctx
    notify.set_notifier(
        ctx,
        "ops",
        "webhook",
        {
            "url": f"{hook.url}/hook",
            "headers": {"X-Token": "k"},
            "external_url": "https://passerelle.example.com",
        },
    )
    notify.set_notifier(
        ctx, "chat", "slack", {"url": f"{hook.url}/slack", "channel": "#ml-alerts", "username": "passerelle"}
    )
    alerts = [
        alert(),
        alert(
            "latency-p99",
            figure="latency.p99_ms",
            expression="latency.p99_ms > 250",
            value=312.5,
            threshold=250,
            severity="critical",
            model="churn",
            version=3,
        ),
    ]
    assert queue(ctx, alerts, group_key="churn-api") == 2
    assert notify.deliver_due(ctx) == notify.DeliveryReport(sent=2, retried=0, failed=0)

    [(_, headers, _)] = [r for r in hook.received if r[0] == "/hook"]
    assert headers["X-Token"] == "k"
    [body] = hook.bodies("/hook")
    assert body["version"] == "1"
    assert body["receiver"] == "ops"
    assert body["status"] == "firing"
    assert body["groupKey"] == "churn-api"
    assert body["commonLabels"] == {"endpoint": "churn-api", "model": "churn", "team": "ml"}
    assert body["groupLabels"] == {"endpoint": "churn-api"}
    assert body["externalURL"] == "https://passerelle.example.com"
    first, second = body["alerts"]
    assert first["labels"] == {
        "alertname": "data-drift",
        "endpoint": "churn-api",
        "severity": "warning",
        "model": "churn",
        "version": "0",
        "team": "ml",
    }
    assert first["annotations"]["summary"] == "4 of 10 columns drifted"
    assert first["startsAt"] == "2026-03-02T10:00:00+00:00"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert (first["value"], first["rule"], first["an_extra_key"]) == (0.42, "data-drift", [1, 2])
    assert second["labels"]["version"] == "3"
    assert first["fingerprint"] != second["fingerprint"]
    assert first["generatorURL"] == "https://passerelle.example.com"

    [slack] = hook.bodies("/slack")
    assert slack == {
        "text": "[FIRING] churn-api · data-drift (warning): drift.share = 0.42 &gt; 0.3\n"
        "[FIRING] churn-api (churn:3) · latency-p99 (critical): latency.p99_ms = 312.5 &gt; 250",
        "channel": "#ml-alerts",
        "username": "passerelle",
    }
    assert {r["status"] for r in notify.outbox(ctx)} == {"sent"}


def test_failures_are_retried_with_backoff_until_sent(ctx: Context, hook: Hook) -> None:
    hook.plan = [500, 500]
    notify.set_notifier(ctx, "ops", "webhook", {"url": f"{hook.url}/hook"})
    queue(ctx, [alert()])
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    assert notify.deliver_due(ctx, now=now) == notify.DeliveryReport(sent=0, retried=1, failed=0)
    [row] = rows(ctx)
    assert row.attempts == 1
    assert row.last_error == f'webhook "ops": {hook.url}/hook answered 500 (internal trouble)'
    first_wait = (row.next_attempt_at - now).total_seconds()
    assert 9.0 <= first_wait <= 10.0

    # Not due yet: nothing is sent.
    assert notify.deliver_due(ctx, now=now + dt.timedelta(seconds=5)) == notify.DeliveryReport(0, 0, 0)
    assert len(hook.received) == 1

    now = row.next_attempt_at
    assert notify.deliver_due(ctx, now=now).retried == 1
    [row] = rows(ctx)
    assert row.attempts == 2
    assert 18.0 <= (row.next_attempt_at - now).total_seconds() <= 20.0

    now = row.next_attempt_at
    assert notify.deliver_due(ctx, now=now) == notify.DeliveryReport(sent=1, retried=0, failed=0)
    [row] = rows(ctx)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 3, now)
    assert "answered 500" in row.last_error
    assert len(hook.bodies("/hook")) == 3
    [listed] = notify.outbox(ctx, status="sent")
    assert (listed["attempts"], listed["alerts"], listed["group_key"]) == (3, 1, "churn-api/data-drift")
    assert notify.outbox(ctx, status="pending") == []


def test_an_unreachable_webhook_is_given_up_after_max_attempts(ctx: Context) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    notify.set_notifier(ctx, "ops", "webhook", {"url": url})
    queue(ctx, [alert()])
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    waits: list[float] = []
    reports = []
    for _ in range(notify.MAX_ATTEMPTS):
        reports.append(notify.deliver_due(ctx, now=now))
        [row] = rows(ctx)
        if row.status == "pending":
            waits.append((row.next_attempt_at - now).total_seconds())
            now = row.next_attempt_at
    assert reports[:-1] == [notify.DeliveryReport(0, 1, 0)] * (notify.MAX_ATTEMPTS - 1)
    assert reports[-1] == notify.DeliveryReport(0, 0, 1)
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))
    assert len(waits) == notify.MAX_ATTEMPTS - 1
    assert (row.status, row.attempts) == ("failed", notify.MAX_ATTEMPTS)
    assert row.last_error == f'webhook "ops": {url} unreachable: connection refused'
    assert notify.deliver_due(ctx, now=now + dt.timedelta(days=1)) == notify.DeliveryReport(0, 0, 0)
    assert notify.outbox(ctx, status="failed")[0]["last_error"] == row.last_error


def test_backoff_doubles_from_ten_seconds_up_to_an_hour_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempts, base in ((1, 10.0), (2, 20.0), (3, 40.0), (9, 2560.0), (10, 3600.0), (30, 3600.0)):
        for _ in range(50):
            assert base * 0.9 <= notify.backoff_s(attempts, rng=rng) <= base


def test_removed_or_disabled_notifiers_fail_their_waiting_messages(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    notify.set_notifier(ctx, "a", "webhook", {"url": "http://127.0.0.1:9/x"})
    notify.set_notifier(ctx, "b", "webhook", {"url": "http://127.0.0.1:9/x"})
    assert queue(ctx, [alert()]) == 2
    notify.remove_notifier(ctx, "a")
    notify.set_notifier(ctx, "b", "webhook", {"url": "http://127.0.0.1:9/x"}, enabled=False)
    assert notify.deliver_due(ctx) == notify.DeliveryReport(sent=0, retried=0, failed=1)
    failed = {r["notifier"]: r["last_error"] for r in notify.outbox(ctx, status="failed")}
    assert failed == {
        "a": "notifier 'a' was removed before this message was sent",
        "b": "notifier 'b' is disabled",
    }
    with pytest.raises(InvalidInputError, match="status"):
        notify.outbox(ctx, status="lost")


def test_two_workers_deliver_each_message_once(ctx: Context, hook: Hook) -> None:
    notify.set_notifier(ctx, "ops", "webhook", {"url": f"{hook.url}/hook"})
    total = 24
    with ctx.store.write() as session:
        for i in range(total):
            notify.enqueue(session, event="firing", alerts=[alert()], group_key=f"g{i}")
    start = threading.Barrier(2)
    reports: list[notify.DeliveryReport] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            while True:
                report = notify.deliver_due(ctx, limit=4)
                reports.append(report)
                if report == notify.DeliveryReport(0, 0, 0):
                    return
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    keys = collections.Counter(body["groupKey"] for body in hook.bodies("/hook"))
    assert keys == {f"g{i}": 1 for i in range(total)}
    assert sum(r.sent for r in reports) == total
    assert {r.status for r in rows(ctx)} == {"sent"}


# ----------------------------------------------------------------------------- e-mail


def test_smtp_sends_a_readable_mail_and_logs_in_with_the_env_password(
    smtp: Smtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_TEST_SMTP_PASSWORD", "s3cret")
    config = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "from": "passerelle@example.com",
        "to": ["ml@example.com", "oncall@example.com"],
        "username": "bot",
        "password_env": "NOTIFY_TEST_SMTP_PASSWORD",
    }
    notify.send("mail", "smtp", config, "firing", [alert()])
    assert smtp.logins == [(b"bot", b"s3cret")]
    [(recipients, mail)] = smtp.box.messages
    assert recipients == ["ml@example.com", "oncall@example.com"]
    assert mail["Subject"] == "[FIRING] churn-api: data-drift"
    assert mail["To"] == "ml@example.com, oncall@example.com"
    assert mail["From"] == "passerelle@example.com"
    body = mail.get_payload(decode=True).decode()
    assert "[FIRING] churn-api · data-drift (warning): drift.share = 0.42 > 0.3" in body
    for expected in (
        "endpoint    churn-api",
        "threshold   0.3",
        "value       0.42",
        f"started     {T0}",
        "fired       2026-03-02T10:00:00+00:00",
        "resolved    -",
        "churn, all versions",
    ):
        assert expected in body

    notify.send(
        "mail",
        "smtp",
        config,
        "resolved",
        [alert(status="resolved", value=0.1, resolved_at="2026-03-02T11:00:00+00:00"), alert("schema")],
    )
    subject = smtp.box.messages[-1][1]["Subject"]
    assert subject == "[FIRING] churn-api: data-drift, schema"

    monkeypatch.setenv("NOTIFY_TEST_SMTP_PASSWORD", "wrong")
    with pytest.raises(
        notify.NotifyError, match=r'smtp "mail": 127\.0\.0\.1:\d+ refused the login of bot: 535'
    ):
        notify.send("mail", "smtp", config, "firing", [alert()])
    monkeypatch.delenv("NOTIFY_TEST_SMTP_PASSWORD")
    with pytest.raises(notify.NotifyError, match="NOTIFY_TEST_SMTP_PASSWORD is not set"):
        notify.send("mail", "smtp", config, "firing", [alert()])
    assert len(smtp.box.messages) == 2


def test_a_refusing_smtp_server_fails_with_its_code(ctx: Context, refusing_smtp: Smtp) -> None:
    config = {
        "host": "127.0.0.1",
        "port": refusing_smtp.port,
        "from": "p@example.com",
        "to": "ml@example.com",
    }
    with pytest.raises(notify.NotifyError) as caught:
        notify.send("mail", "smtp", config, "firing", [alert()])
    where = f"127.0.0.1:{refusing_smtp.port}"
    assert (
        str(caught.value) == f'smtp "mail": {where} refused the message: 550 5.7.1 message refused by policy'
    )
    notify.set_notifier(ctx, "mail", "smtp", config)
    queue(ctx, [alert()])
    assert notify.deliver_due(ctx).retried == 1
    [row] = rows(ctx)
    assert (row.attempts, row.status) == (1, "pending")
    assert "550 5.7.1" in row.last_error


# ----------------------------------------------------------------------------- test messages


def test_test_notifier_sends_now_and_reports_failures(sqlite_ctx: Context, hook: Hook) -> None:
    ctx = sqlite_ctx
    notify.set_notifier(ctx, "chat", "slack", {"url": f"{hook.url}/slack"}, enabled=False)
    notify.test_notifier(ctx, "chat")
    [body] = hook.bodies("/slack")
    assert body["text"].startswith(
        "[TEST] passerelle · test-notification (info): a test message sent by tester"
    )

    hook.plan = [503]
    with pytest.raises(
        notify.NotifyError, match=r'^slack "chat": http://127\.0\.0\.1:\d+/slack answered 503'
    ):
        notify.test_notifier(ctx, "chat")
    with pytest.raises(NotFoundError, match="'nobody'"):
        notify.test_notifier(ctx, "nobody")
    assert rows(ctx) == []


def test_a_slow_receiver_is_a_timeout(hook: Hook) -> None:
    hook.plan = [SLOW]
    config = {"url": f"{hook.url}/hook", "timeout_s": 0.2}
    with pytest.raises(notify.NotifyError) as caught:
        notify.send("ops", "webhook", config, "firing", [alert()])
    assert str(caught.value) == f'webhook "ops": {hook.url}/hook did not answer within 0.2s'
