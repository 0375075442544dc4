"""The console over plain HTTP: form checks, sign-in with tokens, and what pages read."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from passerelle import auth
from passerelle.client import LocalClient
from passerelle.serving.server import background_server
from passerelle.settings import Settings
from tests.ui.conftest import Demo, console_app

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def _csrf(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page carries a form check"
    return found.group(1)


@pytest.fixture
def http(demo: Demo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, timeout=60, follow_redirects=False) as c:
        yield c


def _weights_form(http: httpx.Client, demo: Demo) -> tuple[str, dict[str, str]]:
    page = http.get("/endpoints/churn-api/weights", params={"weight:churn:1": "60", "weight:churn:2": "40"})
    assert page.status_code == 200
    return _csrf(page.text), {"weight:churn:1": "60", "weight:churn:2": "40"}


def test_an_action_without_a_reason_is_refused_and_changes_nothing(http: httpx.Client, demo: Demo) -> None:
    before = demo.client.get_endpoint("churn-api").endpoint.revision
    csrf, fields = _weights_form(http, demo)
    answer = http.post("/endpoints/churn-api/weights", data={**fields, "csrf": csrf, "reason": "  "})
    assert answer.status_code == 422
    assert "reason: say why" in answer.text
    assert demo.client.get_endpoint("churn-api").endpoint.revision == before


def test_a_form_without_the_check_or_from_another_site_is_refused(http: httpx.Client, demo: Demo) -> None:
    before = demo.client.get_endpoint("churn-api").endpoint.revision
    csrf, fields = _weights_form(http, demo)
    forged = http.post("/endpoints/churn-api/weights", data={**fields, "csrf": "0" * 64, "reason": "forged"})
    assert forged.status_code == 403
    assert "safety check failed" in forged.text
    missing = http.post("/endpoints/churn-api/weights", data={**fields, "reason": "no check"})
    assert missing.status_code == 403
    elsewhere = http.post(
        "/endpoints/churn-api/weights",
        data={**fields, "csrf": csrf, "reason": "cross-site"},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403
    assert "https://evil.example" in elsewhere.text
    # another browser (no cookie of this console) cannot reuse a form's value
    with httpx.Client(base_url=demo.url, follow_redirects=False) as stranger:
        assert (
            stranger.post(
                "/endpoints/churn-api/weights", data={**fields, "csrf": csrf, "reason": "replayed"}
            ).status_code
            == 403
        )
    assert demo.client.get_endpoint("churn-api").endpoint.revision == before


def test_pages_are_not_cached_framed_or_scripted_from_elsewhere(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "Authentication is off" in page.text
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    style = http.get("/static/console/console.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in style.text
    assert http.get("/static/console/console.js").status_code == 200
    assert http.get("/static/console/../templates/base.html").status_code == 404
    assert http.get("/static/console/secrets.txt").status_code == 404


def test_the_console_is_not_part_of_the_api_description(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    console = (
        "/endpoints",
        "/models",
        "/alerts",
        "/pipelines",
        "/monitoring",
        "/login",
        "/logout",
        "/static",
    )
    assert "/" not in paths
    assert not [p for p in paths if p.startswith(console)]


def test_pages_read_predictions_only_in_bounded_indexed_slices(http: httpx.Client, demo: Demo) -> None:
    engine = demo.app.state.passerelle_client.ctx.store.engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.search(r"\bFROM predictions\b", statement):
            seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        for path in (
            "/",
            "/models",
            "/models/churn",
            "/models/churn/1",
            "/endpoints/churn-api",
            "/endpoints/churn-api?range=7d",
            "/endpoints/churn-api/monitoring",
            "/monitoring",
            "/alerts?state=all",
            "/pipelines",
        ):
            assert http.get(path).status_code == 200, path
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # the only read of the log: the newest answers of one endpoint, through its (endpoint, at) index
    assert seen, "the endpoint page compares the newest shadow answers"
    for statement in seen:
        assert "predictions.endpoint = " in statement
        assert "ORDER BY predictions.at DESC" in statement
        assert "LIMIT" in statement, statement


# ------------------------------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def secured(demo: Demo) -> Iterator[tuple[str, dict[str, str]]]:
    """The same store served with tokens required; the secrets of a viewer, an operator, a predictor."""
    settings = Settings(home=demo.settings.home, user="tester", auth=True, monitor_interval_seconds=0)
    with LocalClient(settings) as admin:
        secrets = {
            role: auth.create_token(admin.ctx, f"console-{role}", role, reason="console tests").secret
            for role in ("viewer", "operator", "predictor")
        }
    with background_server(console_app(settings, worker="ui-test-auth")) as url:
        yield url, secrets


@contextlib.contextmanager
def _sign_in(url: str, secret: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60, follow_redirects=False) as client:
        answer = client.post("/login", data={"token": secret, "next": "/alerts"})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/alerts"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "max-age=" in cookie
        yield client


def test_with_tokens_required_a_visitor_is_sent_to_sign_in(secured: tuple[str, dict[str, str]]) -> None:
    url, secrets = secured
    with httpx.Client(base_url=url, follow_redirects=False) as anonymous:
        first = anonymous.get("/endpoints/churn-api")
        assert first.status_code == 303
        assert first.headers["location"].startswith("/login?next=%2Fendpoints%2Fchurn-api")
        form = anonymous.get("/login")
        assert form.status_code == 200
        assert 'type="password"' in form.text
        wrong = anonymous.post("/login", data={"token": "psl_not-a-token"})
        assert wrong.status_code == 401
        assert "unknown token" in wrong.text
        predictor = anonymous.post("/login", data={"token": secrets["predictor"]})
        assert predictor.status_code == 401
        assert "cannot read" in predictor.text
        outside = anonymous.post("/login", data={"token": secrets["viewer"], "next": "//evil.example/"})
        assert outside.headers["location"] == "/"


def test_a_viewer_sees_but_may_not_act(secured: tuple[str, dict[str, str]], demo: Demo) -> None:
    url, secrets = secured
    before = demo.client.get_endpoint("churn-api").endpoint.revision
    with _sign_in(url, secrets["viewer"]) as viewer:
        page = viewer.get("/endpoints/churn-api")
        assert page.status_code == 200
        assert "signed in as <strong>console-viewer</strong> (viewer)" in page.text
        assert "Authentication is off" not in page.text
        confirm = viewer.get(
            "/endpoints/churn-api/weights", params={"weight:churn:1": "50", "weight:churn:2": "50"}
        )
        assert confirm.status_code == 403
        assert "needs the role operator or admin" in confirm.text
        refused = viewer.post(
            "/endpoints/churn-api/weights",
            data={"weight:churn:1": "50", "weight:churn:2": "50", "csrf": _csrf(page.text), "reason": "try"},
        )
        assert refused.status_code == 403
    assert demo.client.get_endpoint("churn-api").endpoint.revision == before


def test_an_operators_change_is_recorded_under_the_token(
    secured: tuple[str, dict[str, str]], demo: Demo
) -> None:
    url, secrets = secured
    with _sign_in(url, secrets["operator"]) as operator:
        page = operator.get(
            "/endpoints/churn-api/weights", params={"weight:churn:1": "85", "weight:churn:2": "15"}
        )
        assert page.status_code == 200
        done = operator.post(
            "/endpoints/churn-api/weights",
            data={
                "weight:churn:1": "85",
                "weight:churn:2": "15",
                "csrf": _csrf(page.text),
                "reason": "on call",
            },
        )
        assert done.status_code == 303, done.text
        revision = demo.client.get_endpoint("churn-api").revisions[0]
        assert revision.created_by == "token:console-operator"
        assert revision.reason == "on call"
        out = operator.post("/logout", data={"csrf": _csrf(page.text)})
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        assert (
            'passerelle_console=""' in out.headers["set-cookie"]
            or "max-age=0" in out.headers["set-cookie"].lower()
        )


def test_starting_a_pipeline_run_queues_it_and_shows_its_page(http: httpx.Client, demo: Demo) -> None:
    from passerelle import pipelines

    listing = http.get("/pipelines")
    assert "retrain-churn" in listing.text
    assert 'href="/pipelines/retrain-churn/run"' in listing.text
    confirm = http.get("/pipelines/retrain-churn/run")
    assert confirm.status_code == 200
    assert "Queue a manual run of the pipeline retrain-churn" in confirm.text
    done = http.post(
        "/pipelines/retrain-churn/run", data={"csrf": _csrf(confirm.text), "reason": "new labels"}
    )
    assert done.status_code == 303, done.text
    run_id = done.headers["location"].rsplit("/", 1)[-1]
    run = pipelines.get_run(demo.client.ctx, run_id)
    assert run.pipeline == "retrain-churn"
    assert run.created_by == "tester"
    record = demo.client.audit(action="pipeline.run.queue", limit=1)[0]
    assert record.reason == "new labels"
    page = http.get(done.headers["location"])
    assert page.status_code == 200
    assert f"Run retrain-churn#{run.number}" in page.text
    assert http.get("/pipelines/runs/no-such-run").status_code == 404
