"""The monitor and alerts commands on a real store: what they print, write, send, and their exit codes."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.monitor import floor_time
from passerelle.settings import Settings
from tests.conftest import free_port
from tests.helpers import small_model
from tests.test_cli import run

HOUR = dt.timedelta(hours=1)


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Captured output is wide already; COLUMNS keeps these tables whole under `pytest -s` too.
    # (Setting the console's width attribute would pin it for every later test.)
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalClient]:
    """churn-api serving churn:1, in the home the commands use (set by the autouse fixture)."""
    with LocalClient(Settings(home=tmp_path / "home")) as client:
        model, frame = small_model()
        client.register(model, "churn", sample=frame)
        client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        yield client


@pytest.fixture
def received() -> Iterator[tuple[str, list[tuple[str, dict[str, str], Any]]]]:
    """A local webhook receiver: its URL, and the (path, headers, JSON body) of every POST."""
    bodies: list[tuple[str, dict[str, str], Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            bodies.append((self.path, dict(self.headers.items()), json.loads(raw)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def one_error_line(err: str) -> str:
    """The single line a failed command prints; fails if there is more, or a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


def test_monitor_set_show_run_and_report(
    capsys: pytest.CaptureFixture[str], store: LocalClient, tmp_path: Path
) -> None:
    # Windows close at the delay past each hour: half an hour from now, so that no window closes
    # while the test runs and the count of evaluated windows is known.
    now = dt.datetime.now(dt.UTC)
    delay = int(((now - floor_time(now, 3600)) + HOUR / 2).total_seconds()) % 3600
    first = floor_time(now - 3 * HOUR, 3600)
    closed = sum(1 for k in range(5) if first + (k + 1) * HOUR + dt.timedelta(seconds=delay) <= now)

    code, out, err = run(
        capsys, "monitor", "set", "churn-api", "--start", "3h", "--delay", f"{delay}s",
        "--drift-share", "0.3", "--min-rows", "50", "--reason", "closer watch",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"churn-api: 1h windows, evaluated {delay}s after they close, reference training")
    # Options not given keep their values.
    code, out, err = run(capsys, "monitor", "set", "churn-api", "--metric", "auc", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["window_s"], info["delay_s"], info["enabled"]) == (3600, delay, True)
    assert info["config"] == {
        "drift": {"drift_share": 0.3, "min_n": 50},
        "metric": "auc",
        "label_column": None,
    }

    code, out, err = run(capsys, "monitor", "run")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"churn-api: {closed} windows evaluated, the last ending ")
    code, out, _ = run(capsys, "monitor", "run", "churn-api")
    assert out.strip() == "churn-api: 0 windows evaluated"

    code, out, err = run(capsys, "monitor", "show", "churn-api", "--since", "1d")
    assert code == 0, err
    assert "window start (UTC)" in out
    assert out.count("no_traffic") == closed
    code, out, _ = run(capsys, "monitor", "show", "churn-api", "--version", "all", "--json")
    shown = json.loads(out)
    assert [r["status"] for r in shown["results"]] == ["no_traffic"] * closed
    assert shown["results"][0]["window_start"] == first.isoformat()
    code, out, err = run(capsys, "monitor", "show", "churn-api", "--version", "churn")
    assert code == 2
    assert one_error_line(err) == "version must be 'all' or like churn:3, got 'churn'"

    page = tmp_path / "report.html"
    code, out, err = run(capsys, "monitor", "report", "churn-api", "--output", str(page), "--since", "7d")
    assert code == 0, err
    assert out.startswith(f"wrote {page} (")
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "churn-api" in html
    code, _, err = run(capsys, "monitor", "report", "churn-api", "-o", str(tmp_path / "missing" / "r.html"))
    assert code == 2
    assert one_error_line(err).endswith(f"the folder {tmp_path / 'missing'} does not exist")

    code, out, _ = run(capsys, "monitor", "remove", "churn-api", "--reason", "retired")
    assert code == 0
    code, out, _ = run(capsys, "monitor", "list")
    assert "disabled" in out
    assert [e.reason for e in store.audit(action="monitor.remove")] == ["retired"]

    for args, message in (
        (["monitor", "set", "ghost"], "endpoint 'ghost' does not exist"),
        (["monitor", "set", "churn-api", "--window", "30s"], "window must be at least 1 minute, got 30 s"),
        (["monitor", "set", "churn-api", "--start", "yesterday"],
         "--start 'yesterday': use a duration such as 7d, 12h or 30m, or an ISO time such as "
         "2026-03-01T00:00Z"),
        (["monitor", "show", "ghost"], "endpoint 'ghost' has no monitor"),
    ):  # fmt: skip
        code, _, err = run(capsys, *args)
        assert code == 2, args
        assert one_error_line(err) == message


def test_alert_rules_silences_and_alerts(capsys: pytest.CaptureFixture[str], store: LocalClient) -> None:
    code, out, err = run(
        capsys, "alerts", "rules", "set", "churn-api", "data-drift", "--expr", "drift.share>0.4",
        "--for", "3", "--keep-firing", "1", "--severity", "critical", "--inhibited-by", "schema",
        "--notify", "ops", "--pipeline", "retrain-churn", "--label", "team=ml",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        "churn-api: rule data-drift: drift.share > 0.4, fires after 3 windows, keeps firing 1 window after, "
        "critical, held back while schema fires, notifies ops, triggers pipeline retrain-churn"
    )
    code, out, _ = run(capsys, "alerts", "rules", "list", "churn-api", "--json")
    rules = {r["name"]: r for r in json.loads(out)}
    # The default rules of a new endpoint, and the one replaced.
    assert sorted(rules) == ["data-drift", "errors", "latency", "prediction-drift", "schema"]
    assert (rules["data-drift"]["expression"], rules["data-drift"]["for_windows"]) == ("drift.share > 0.4", 3)
    assert (rules["data-drift"]["notify"], rules["data-drift"]["labels"]) == (["ops"], {"team": "ml"})
    code, out, _ = run(capsys, "alerts", "rules", "list")
    assert "drift.share > 0.4" in out

    code, _, err = run(
        capsys, "alerts", "rules", "set", "churn-api", "data-drift", "--expr", "drift.share >> 0.3"
    )
    assert code == 2
    assert one_error_line(err) == (
        "invalid alert expression 'drift.share >> 0.3': expected '<figure> <op> <number>' with op one of "
        "> >= < <= == !=, such as 'drift.share > 0.3'"
    )
    assert store.list_alert_rules("churn-api")[0].expression == "drift.share > 0.4"  # unchanged

    code, out, err = run(capsys, "alerts", "silence", "churn-api", "--rule", "data-drift", "--for", "2h")
    assert code == 0, err
    assert out.startswith("silence 1: churn-api rule data-drift, until ")
    code, out, _ = run(capsys, "alerts", "silences", "--active", "--json")
    [active] = json.loads(out)
    ends = dt.datetime.fromisoformat(active["ends_at"]) - dt.datetime.fromisoformat(active["starts_at"])
    assert ends == 2 * HOUR
    code, out, _ = run(capsys, "alerts", "unsilence", "1", "--reason", "done")
    assert code == 0
    assert out.startswith("silence 1: churn-api rule data-drift, ended ")
    code, out, _ = run(capsys, "alerts", "silences", "--active")
    assert out.strip() == "no silences in force"

    code, out, _ = run(capsys, "alerts", "rules", "remove", "churn-api", "data-drift", "--reason", "noisy")
    assert (code, out.strip()) == (0, "churn-api: rule data-drift removed")
    code, out, _ = run(capsys, "alerts", "list", "churn-api", "--state", "open")
    assert (code, out.strip()) == (0, "no alerts")

    for args, message in (
        (["alerts", "ack", "7"], "alert 7 does not exist"),
        (["alerts", "unsilence", "9"], "silence 9 does not exist"),
        (["alerts", "silence", "churn-api", "--for", "soon"],
         "--for 'soon': use a number with ms, s, m, h or d, such as 10m"),
        (["alerts", "rules", "remove", "churn-api", "data-drift"],
         "endpoint 'churn-api' has no alert rule 'data-drift'"),
    ):  # fmt: skip
        code, _, err = run(capsys, *args)
        assert code == 2, args
        assert one_error_line(err) == message


def test_a_webhook_notifier_is_set_and_tested(
    capsys: pytest.CaptureFixture[str],
    store: LocalClient,
    received: tuple[str, list[tuple[str, dict[str, str], Any]]],
) -> None:
    url, bodies = received
    code, out, err = run(
        capsys, "alerts", "notifiers", "set", "ops", "--kind", "webhook", "--url", f"{url}/hook",
        "--header", "X-Token=s3cret", "--reason", "on-call",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"notifier ops: webhook to {url}/hook"
    code, out, _ = run(capsys, "alerts", "notifiers", "list", "--json")
    [shown] = json.loads(out)
    assert shown["config"]["headers"] == {"X-Token": "***"}
    assert "s3cret" not in out

    code, out, err = run(capsys, "alerts", "notifiers", "test", "ops")
    assert code == 0, err
    assert out.strip() == "notifier ops: test message delivered"
    [(path, headers, body)] = bodies
    assert (path, headers["X-Token"]) == ("/hook", "s3cret")
    assert (body["receiver"], body["event"], body["status"]) == ("ops", "test", "firing")
    assert body["alerts"][0]["rule"] == "test-notification"
    code, out, _ = run(capsys, "alerts", "notifications")
    assert out.strip() == "no notifications"  # a test is sent at once, not queued

    # A destination nobody listens on: exit 1 (not the caller's input), one line saying where and why.
    refused = f"http://127.0.0.1:{free_port()}/hook"
    assert run(capsys, "alerts", "notifiers", "set", "ops", "--kind", "webhook", "--url", refused)[0] == 0
    code, _, err = run(capsys, "alerts", "notifiers", "test", "ops")
    assert code == 1
    assert one_error_line(err).startswith(f'webhook "ops": {refused} unreachable')

    code, _, err = run(
        capsys, "alerts", "notifiers", "set", "mail", "--kind", "smtp", "--host", "mx.example.com"
    )
    assert code == 2
    assert one_error_line(err) == "the smtp config needs 'from'"
    code, out, _ = run(capsys, "alerts", "notifiers", "remove", "ops")
    assert (code, out.strip()) == (0, "notifier ops removed")
    code, out, _ = run(capsys, "alerts", "notifiers", "list")
    assert out.startswith("no notifiers")
