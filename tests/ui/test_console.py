"""The console in a real browser: headless chromium against a real server on the demo-like store."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import Demo

pytestmark = pytest.mark.slow


def _go(page: Any, demo: Demo, path: str) -> Any:
    response = page.goto(demo.url + path)
    assert response is not None
    return response


def test_every_main_page_renders_with_charts_that_hold_data(page: Any, demo: Demo) -> None:
    assert _go(page, demo, "/").status == 200
    row = page.locator("#endpoints tbody tr", has_text="churn-api")
    assert "churn:1" in row.inner_text()
    assert "90%" in row.inner_text()
    assert "shadow churn:3" in row.inner_text()
    assert "firing" in row.inner_text()

    assert _go(page, demo, "/endpoints/churn-api").status == 200
    # a dot per step with traffic on the latency and traffic charts, one colour per version
    assert page.locator("#latency-chart circle.point").count() > 20
    assert page.locator("#traffic-chart circle.point").count() > 20
    assert page.locator("svg.split rect.segment").count() >= 2
    shadows = page.locator("#shadows tbody tr").first.inner_text()
    assert "churn:3" in shadows
    assert "%" in shadows
    assert page.locator("#revisions tbody tr").count() >= 1

    assert _go(page, demo, "/endpoints/churn-api/monitoring").status == 200
    heat = page.locator("#heatmap svg.strip").first
    drifted = heat.locator('rect[fill="#c62828"]').count()
    assert drifted > 0, "the drifted hours show as drifted cells"
    assert page.locator("#distributions figure.dist").count() >= 3
    assert page.locator("#distributions figure.dist.drifted").count() >= 1
    assert page.locator("#performance svg circle").count() > 0
    assert "label coverage" in page.locator("#performance").inner_text().lower()

    assert _go(page, demo, "/alerts?state=all").status == 200
    assert page.locator("#alert-list tbody tr").count() >= 1

    assert _go(page, demo, "/models/churn").status == 200
    assert page.locator("tbody tr").count() == 3
    assert _go(page, demo, "/models/churn/1").status == 200
    assert page.locator("#lineage svg .node").count() >= 4
    assert "churn-train:1" in page.locator("#lineage").inner_text()
    assert len(page.locator("code.hash").first.inner_text()) == 64

    assert _go(page, demo, "/pipelines").status == 200
    assert page.locator("h1").inner_text() == "Pipelines"


def test_unknown_endpoint_or_model_is_a_404_page(page: Any, demo: Demo) -> None:
    for path, words in (
        ("/endpoints/no-such-api", "endpoint 'no-such-api' does not exist"),
        ("/endpoints/no-such-api/monitoring", "endpoint 'no-such-api' does not exist"),
        ("/models/nobody", "model 'nobody' does not exist"),
        ("/models/churn/99", "churn"),
    ):
        response = _go(page, demo, path)
        assert response.status == 404, path
        assert page.locator("h1").inner_text() == "Not found"
        assert words in page.locator("[role=alert]").inner_text()
        assert "Traceback" not in page.content()


def test_changing_weights_asks_for_a_reason_and_lands_as_a_revision(page: Any, demo: Demo) -> None:
    before = demo.client.get_endpoint("churn-api").endpoint
    _go(page, demo, "/endpoints/churn-api")
    page.fill('input[name="weight:churn:1"]', "80")
    page.fill('input[name="weight:churn:2"]', "20")
    page.click("#weights-review")
    assert page.locator("h1").inner_text() == "Change the weights of churn-api"
    assert "After: churn:1 80% · churn:2 20%" in page.locator("ul.change").inner_text()
    # nothing changed until confirmed
    assert demo.client.get_endpoint("churn-api").endpoint.revision == before.revision
    page.fill("#reason", "give the challenger more traffic")
    page.click("button.primary")
    page.wait_for_url("**/endpoints/churn-api?done=*")
    assert "is now recorded" in page.locator("[role=status]").inner_text()

    after = demo.client.get_endpoint("churn-api")
    assert after.endpoint.revision == before.revision + 1
    assert {r.ref: r.weight for r in after.endpoint.policy.routes} == {"churn:1": 80, "churn:2": 20}
    assert after.revisions[0].reason == "give the challenger more traffic"
    assert after.revisions[0].kind == "weights"
    record = demo.client.audit(target="churn-api", action="endpoint.weights", limit=1)[0]
    assert record.reason == "give the challenger more traffic"


def test_a_refused_action_shows_the_servers_reason(page: Any, demo: Demo) -> None:
    before = demo.client.get_endpoint("churn-api").endpoint
    _go(page, demo, "/endpoints/churn-api/weights?weight:churn:1=70&weight:churn:2=20")
    assert "add up to 90%" in page.locator("ul.change").inner_text()
    page.fill("#reason", "a typo in the weights")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button.primary")
    assert answer.value.status == 422
    refusal = page.locator("#refusal").inner_text()
    assert "100" in refusal, refusal
    assert page.locator("#reason").input_value() == "a typo in the weights"
    assert demo.client.get_endpoint("churn-api").endpoint.revision == before.revision


def test_acknowledging_an_alert(page: Any, demo: Demo) -> None:
    _go(page, demo, "/alerts?state=firing")
    page.click(f'a[href="/alerts/{demo.firing_alert}/ack"]')
    assert page.locator("h1").inner_text() == f"Acknowledge alert {demo.firing_alert}"
    page.fill("#reason", "looking into the new customer mix")
    page.click("button.primary")
    page.wait_for_url(f"**/alerts?acked={demo.firing_alert}")
    acked = next(a for a in demo.client.list_alerts("churn-api") if a.id == demo.firing_alert)
    assert acked.acked_by == "tester"
    assert f"acknowledged by {acked.acked_by}" in page.locator("#alert-list").inner_text()


def test_promoting_through_the_form(page: Any, demo: Demo) -> None:
    _go(page, demo, "/endpoints/quiet-api")
    page.fill("#promote-ref", "quiet:1")
    page.click("#promote-review")
    assert "becomes quiet@champion" in page.locator("ul.change").inner_text()
    page.fill("#reason", "name the champion")
    page.click("button.primary")
    page.wait_for_url("**/endpoints/quiet-api?done=*")
    info = demo.client.get_endpoint("quiet-api")
    assert info.revisions[0].kind == "promote"
    assert demo.client.get_version("quiet@champion").number == 1


def test_the_keyboard_reaches_the_skip_link_and_the_actions(page: Any, demo: Demo) -> None:
    _go(page, demo, "/endpoints/churn-api")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.name || ''"))
        if "weights-review" in reached and "promote-review" in reached:
            break
    assert "weights-review" in reached, reached
    assert "promote-review" in reached, reached
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused control is visibly marked"


def test_a_monitor_without_data_says_so(page: Any, demo: Demo) -> None:
    assert _go(page, demo, "/endpoints/quiet-api/monitoring").status == 200
    text = page.locator("#no-data").inner_text()
    assert "the monitor has no data yet" in text
    assert "is judged after" in text


def test_a_model_that_fails_to_load_leaves_the_console_working(page: Any, demo: Demo) -> None:
    _go(page, demo, "/")
    row = page.locator("#endpoints tbody tr", has_text="fragile-api").inner_text()
    assert "not loaded" in row
    assert _go(page, demo, "/endpoints/fragile-api").status == 200
    assert "not loaded" in page.locator("p.meta").inner_text()


@pytest.mark.parametrize("width", [1280, 2560])
def test_pages_fit_laptop_and_wide_screens(browser: Any, demo: Demo, width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 1000})
    try:
        page = context.new_page()
        for path in ("/", "/endpoints/churn-api", "/endpoints/churn-api/monitoring", "/alerts?state=all"):
            page.goto(demo.url + path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow} px too wide at {width} px"
    finally:
        context.close()
