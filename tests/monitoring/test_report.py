"""The HTML monitoring report: overlays from drift sketches, a self-contained page, an atomic write."""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from passerelle.drift import DriftReport, ReferenceStats, WindowSketch, compute_drift
from passerelle.errors import InvalidInputError
from passerelle.performance import ab_verdict, proportion_estimate
from passerelle.report import (
    MAX_LEVELS,
    MISSING_LABEL,
    OTHER_LABEL,
    Overlay,
    ReportData,
    WindowPoint,
    overlays,
    render,
    write,
)

HOSTILE = "<script>alert(1)</script>"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def frame(rows: int, seed: int, *, shift: float = 0.0, missing: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.normal(3000, 800, rows)
    if missing:
        income[rng.random(rows) < missing] = np.nan
    return pd.DataFrame(
        {
            "age": rng.normal(45 + 15 * shift, 12, rows),
            "income": income,
            "calls": rng.integers(0, 5, rows),
            "plan": rng.choice(["basic", "standard", "premium"], rows, p=[0.5, 0.3, 0.2]),
            HOSTILE: rng.random(rows),
        }
    )


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return ReferenceStats.from_frame(frame(5_000, seed=1))


@pytest.fixture(scope="module")
def window(reference: ReferenceStats) -> WindowSketch:
    return WindowSketch.from_frame(reference, frame(2_000, seed=2, shift=1.0, missing=0.1))


@pytest.fixture(scope="module")
def drift(reference: ReferenceStats, window: WindowSketch) -> DriftReport:
    return compute_drift(reference, window)


@pytest.fixture(scope="module")
def shown(reference: ReferenceStats, window: WindowSketch, drift: DriftReport) -> list[Overlay]:
    return overlays(reference, window, drift)


def windows(count: int, columns: list[str], *, labels: bool = True, seed: int = 0) -> list[WindowPoint]:
    rng = np.random.default_rng(seed)
    out: list[WindowPoint] = []
    for i in range(count):
        start = T0 + i * HOUR
        drifted = {f"drift.column.{c}": float(rng.random() < 0.3) for c in columns}
        share = sum(drifted.values()) / len(columns) if columns else 0.0
        out.append(
            WindowPoint(
                start,
                start + HOUR,
                "all",
                "drift" if share >= 0.5 else "ok",
                1_000,
                {
                    "drift.share": share,
                    **drifted,
                    "latency.p99_ms": 12.5,
                    "errors.rate": 0.001,
                },
            )
        )
        for version in ("churn:3", "churn:4"):
            auc = 0.8 + float(rng.normal(0, 0.01))
            figures: dict[str, float | None] = {
                "estimated.roc_auc": auc - 0.01,
                "estimated.roc_auc.low": auc - 0.05,
                "estimated.roc_auc.high": auc + 0.03,
                "labels.coverage": 0.6 if labels else 0.0,
            }
            if labels:
                figures |= {"performance.roc_auc": auc, "performance.roc_auc.low": auc - 0.02}
                figures["performance.roc_auc.high"] = auc + 0.02
            out.append(WindowPoint(start, start + HOUR, version, "ok", 500, figures))
    return out


def report(shown: list[Overlay], drift: DriftReport | None, **changes: Any) -> ReportData:
    verdict = ab_verdict(
        proportion_estimate(800, 1_000), proportion_estimate(860, 1_000), a_ref="churn:3", b_ref="churn:4"
    )
    fields: dict[str, Any] = {
        "endpoint": "churn-api",
        "generated_at": T0 + 7 * HOUR,
        "since": T0,
        "until": T0 + 6 * HOUR,
        "policy": "churn:3 90% · churn:4 10%",
        "windows": windows(6, [o.column for o in shown]),
        "overlays": shown,
        "reference": "dataset churn-train:2, 5,000 rows",
        "drift": None if drift is None else drift.to_dict(),
        "performance_metric": "roc_auc",
        "verdict": verdict.to_dict(),
        "alerts": [
            {
                "rule": "resolved-latency",
                "severity": "info",
                "state": "resolved",
                "value": 250.0,
                "summary": "latency.p99_ms > 200",
                "started_at": T0,
                "fired_at": T0 + HOUR,
                "resolved_at": T0 + 2 * HOUR,
                "model": "churn",
                "version": 3,
            },
            {
                "rule": "drift <b>share</b>",
                "severity": "critical",
                "state": "firing",
                "value": 0.6,
                "summary": "drift.share 0.6 > 0.5",
                "started_at": (T0 + 3 * HOUR).isoformat(),
                "fired_at": T0 + 4 * HOUR,
                "resolved_at": None,
                "model": "churn",
                "version": 0,
            },
        ],
        "notes": ["labels arrive two days late"],
    }
    fields.update(changes)
    return ReportData(**fields)


class Page(HTMLParser):
    """Tags, attributes, text and the first child of every <svg> of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self.svg_first_child: list[str] = []
        #: per <svg>, its axis labels
        self.svg_labels: list[int] = []
        self._in_style = False
        self._after_svg = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._after_svg:
            self.svg_first_child.append(tag)
            self._after_svg = False
        self.tags.append((tag, dict(attrs)))
        if tag == "svg":
            self.svg_labels.append(0)
        elif tag == "text" and dict(attrs).get("class") == "label":
            self.svg_labels[-1] += 1
        self._in_style = tag == "style"
        self._after_svg = tag == "svg"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def assert_self_contained(page: Page) -> None:
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in {"src", "href", "xlink:href", "action", "poster", "data", "srcset"}:
                assert value is not None
                target = value.strip().lower()
                assert not target.startswith(("http:", "https:", "//")), (tag, name, value)
        assert not (tag == "link" and "stylesheet" in str(attrs.get("rel", ""))), attrs
        assert not (tag == "script" and "src" in attrs), attrs
        assert tag not in {"img", "iframe", "object", "embed"}, tag
    for css in page.styles:
        assert "url(" not in css
        assert "@import" not in css


# ------------------------------------------------------------------------------------------ overlays


def test_overlay_proportions_sum_to_one_per_side(shown: list[Overlay]) -> None:
    assert {o.column for o in shown} == {"age", "income", "calls", "plan", HOSTILE}
    for overlay in shown:
        assert math.isclose(sum(overlay.reference), 1.0, abs_tol=1e-9), overlay.column
        assert math.isclose(sum(overlay.window), 1.0, abs_tol=1e-9), overlay.column
        assert len(overlay.labels) == len(overlay.reference) == len(overlay.window)
        if overlay.kind == "numeric":
            assert overlay.edges is not None
            value_bins = len(overlay.labels) - (overlay.labels[-1] == MISSING_LABEL)
            assert len(overlay.edges) == value_bins + 1
            assert overlay.edges == sorted(overlay.edges)
        else:
            assert overlay.edges is None


def test_the_drifted_column_is_flagged_and_listed_first(shown: list[Overlay], drift: DriftReport) -> None:
    assert drift.column("age").drifted
    first = shown[0]
    assert first.column == "age"
    assert first.drifted
    assert first.method.startswith(f"{drift.column('age').method} ")
    assert "≥" in first.method
    assert "shift +1" in first.detail  # 15 years on a 12-year sd
    flags = [o.drifted for o in shown]
    assert flags == sorted(flags, reverse=True)
    calm = next(o for o in shown if o.column == "plan")
    assert not calm.drifted
    assert " < " in calm.method


def test_numeric_bins_hold_equal_reference_shares(shown: list[Overlay]) -> None:
    age = next(o for o in shown if o.column == "age")
    inside = [r for label, r in zip(age.labels, age.reference, strict=True) if label.startswith("[")]
    assert 15 <= len(inside) <= 20
    assert max(inside) - min(inside) < 0.01
    assert age.labels[0].startswith("[")
    # the window moved up past the reference's maximum: a bin of its own, empty in the reference
    assert age.labels[-1].startswith("> ")
    assert age.reference[-1] == 0.0
    assert age.window[-1] > 0.005


def test_missing_values_get_their_own_bar(shown: list[Overlay]) -> None:
    income = next(o for o in shown if o.column == "income")
    assert income.labels[-1] == MISSING_LABEL
    assert income.reference[-1] == 0.0
    assert 0.08 < income.window[-1] < 0.12
    assert "missing 0% → 9.6%" in income.detail
    plan = next(o for o in shown if o.column == "plan")
    assert MISSING_LABEL not in plan.labels


def test_few_distinct_values_get_one_bin_each(shown: list[Overlay]) -> None:
    calls = next(o for o in shown if o.column == "calls")
    assert calls.labels == ["0", "1", "2", "3", "4"]
    plan = next(o for o in shown if o.column == "plan")
    assert plan.labels == ["basic", "standard", "premium"]


def test_many_levels_are_capped_and_new_levels_shown() -> None:
    rng = np.random.default_rng(3)
    levels = [f"city-{i:02d}" for i in range(60)]
    reference = ReferenceStats.from_frame(pd.DataFrame({"city": rng.choice(levels, 6_000)}))
    window = WindowSketch.from_frame(
        reference, pd.DataFrame({"city": [*rng.choice(levels, 1_500), *["atlantis"] * 500]})
    )
    (city,) = overlays(reference, window, compute_drift(reference, window))
    assert len(city.labels) == MAX_LEVELS
    assert city.labels[-1] == OTHER_LABEL
    assert "atlantis" in city.labels
    assert city.window[city.labels.index("atlantis")] == pytest.approx(0.25)
    assert math.isclose(sum(city.reference), 1.0)
    assert math.isclose(sum(city.window), 1.0)
    assert city.drifted
    assert "1 new level (25% of the window)" in city.detail


def test_overlays_without_a_drift_report_and_of_an_empty_window(reference: ReferenceStats) -> None:
    empty = WindowSketch(reference)
    out = overlays(reference, empty, bins=5)
    assert all(not o.drifted and o.method == "not judged" for o in out)
    assert all(o.detail == "no rows in the window" for o in out)
    assert all(sum(o.window) == 0.0 for o in out)
    age = next(o for o in out if o.column == "age")
    assert len(age.labels) == 5


def test_overlays_refuse_a_foreign_window_and_no_bins(reference: ReferenceStats) -> None:
    other = ReferenceStats.from_frame(frame(500, seed=9)[["age"]])
    with pytest.raises(InvalidInputError, match="other reference statistics"):
        overlays(reference, WindowSketch(other))
    with pytest.raises(InvalidInputError, match="bins: must be at least 1"):
        overlays(reference, WindowSketch(reference), bins=0)


def test_an_overlay_must_be_consistent() -> None:
    with pytest.raises(InvalidInputError, match="same length"):
        Overlay("x", "feature", "categorical", ["a", "b"], None, [1.0], [1.0], False, "", "")
    with pytest.raises(InvalidInputError, match="finite"):
        Overlay("x", "feature", "categorical", ["a"], None, [math.nan], [1.0], False, "", "")
    with pytest.raises(InvalidInputError, match="kind"):
        Overlay("x", "feature", "text", [], None, [], [], False, "", "")
    with pytest.raises(InvalidInputError, match="edges"):
        Overlay(
            "x", "feature", "numeric", ["[0, 1)", "[1, 2]"], [0.0, 2.0], [0.5, 0.5], [0.5, 0.5], False, "", ""
        )


# ------------------------------------------------------------------------------------------ page


def test_the_page_is_self_contained_and_escapes_every_name(shown: list[Overlay], drift: DriftReport) -> None:
    page_text = render(report(shown, drift))
    page = Page(page_text)
    assert_self_contained(page)
    text = page.all_text()
    for overlay in shown:
        assert overlay.column in text
    assert html.escape(HOSTILE) in page_text
    assert "<script" not in page_text.lower()
    assert "<b>share</b>" not in page_text
    assert "drift &lt;b&gt;share&lt;/b&gt;" in page_text
    for heading in ("Drift over time", "Distributions", "Performance over time", "A/B verdict", "Alerts"):
        assert heading in text
    assert "labels arrive two days late" in text
    assert "churn:4 - churn:3" in text
    # the firing alert is listed before the resolved one
    assert text.index("drift <b>share</b>") < text.index("resolved-latency")


def test_every_chart_has_a_title_and_axis_labels(shown: list[Overlay], drift: DriftReport) -> None:
    page = Page(render(report(shown, drift)))
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    assert len(svgs) >= len(shown) + 3
    assert page.svg_first_child == ["title"] * len(svgs)
    assert all(attrs.get("role") == "img" and attrs.get("aria-label") for attrs in svgs)
    kinds = [attrs.get("class") for attrs in svgs]
    # time and bar charts have two axes; heat strips name their rows, the A/B interval has one axis
    for kind, labels in zip(kinds, page.svg_labels, strict=True):
        assert labels >= (2 if kind in ("chart", "chart small") else 1), kind
    assert kinds.count("chart small") == len(shown)


def test_drifted_distributions_come_first_and_are_marked(shown: list[Overlay], drift: DriftReport) -> None:
    unordered = sorted(shown, key=lambda o: o.drifted)
    page = Page(render(report(unordered, drift)))
    figures = [attrs.get("class") for tag, attrs in page.tags if tag == "figure"]
    drifted = sum(o.drifted for o in shown)
    assert figures == ["dist drifted"] * drifted + ["dist"] * (len(shown) - drifted)
    assert page.all_text().count("drifted") >= drifted


def test_an_empty_report_renders_placeholders() -> None:
    data = ReportData(
        endpoint="quiet-api",
        generated_at=T0,
        since=T0,
        until=T0,
        policy="",
        windows=[],
        overlays=[],
        reference="",
        drift=None,
        performance_metric="accuracy",
        verdict=None,
        alerts=[],
    )
    page = Page(render(data))
    assert_self_contained(page)
    text = page.all_text()
    assert "quiet-api" in text
    assert "no monitored window in this period yet" in text
    assert "no distribution to compare yet" in text
    assert "no labelled predictions yet" in text
    assert "no A/B comparison" in text
    assert "no alerts in this period" in text


def test_estimates_alone_are_drawn_hollow_and_said_to_be_estimates(
    shown: list[Overlay], drift: DriftReport
) -> None:
    data = report(shown, drift, windows=windows(4, [], labels=False))
    page_text = render(data)
    text = Page(page_text).all_text()
    assert "no labelled predictions yet: every point below is an estimate" in text
    assert 'fill="#ffffff"' in page_text
    assert "estimated 0.7" in text
    assert 'stroke-dasharray="4 3"' in page_text


def test_a_verdict_without_an_interval_and_naive_times_render(shown: list[Overlay]) -> None:
    waiting = ab_verdict(proportion_estimate(5, 10), proportion_estimate(6, 10))
    naive = T0.replace(tzinfo=None)
    data = report(shown, None, verdict=waiting.to_dict(), since=naive, until=naive + 6 * HOUR)
    page = Page(render(data))
    text = page.all_text()
    assert "not enough data yet" in text
    assert not any(
        str(attrs.get("aria-label")).startswith("Interval") for t, attrs in page.tags if t == "svg"
    )
    assert "2026-03-02 09:00 UTC" in text


def test_a_large_report_stays_small() -> None:
    rng = np.random.default_rng(5)
    columns = [f"feature_{i:02d}_{'x' * 20}" for i in range(50)]
    labels = [f"[{i}.125, {i + 1}.125)" for i in range(20)] + [MISSING_LABEL]
    big = [
        Overlay(
            column=name,
            role="feature",
            kind="numeric",
            labels=labels,
            edges=[i + 0.125 for i in range(21)],
            reference=list(rng.dirichlet(np.ones(21))),
            window=list(rng.dirichlet(np.ones(21))),
            drifted=i % 3 == 0,
            method="wasserstein 0.31 ≥ 0.1",
            detail="mean 4.1 → 5.3 (shift +0.42 sd), missing 0% → 3%",
        )
        for i, name in enumerate(columns)
    ]
    data = report(big, None, windows=windows(200, columns, seed=6), until=T0 + 200 * HOUR)
    page_text = render(data)
    assert len(page_text.encode()) < 2_000_000
    page = Page(page_text)
    assert_self_contained(page)
    assert all(name in page.all_text() for name in columns)


# ------------------------------------------------------------------------------------------ write


def test_write_puts_the_whole_page_on_disk(tmp_path: Path, shown: list[Overlay], drift: DriftReport) -> None:
    data = report(shown, drift)
    path = write(data, tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == render(data)
    assert os.listdir(tmp_path) == ["report.html"]


def test_a_failed_write_leaves_no_partial_file(
    tmp_path: Path, shown: list[Overlay], drift: DriftReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = report(shown, drift)
    target = tmp_path / "report.html"
    target.write_text("the previous report")

    def refuse(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(InvalidInputError, match="No space left on device"):
        write(data, target)
    assert target.read_text() == "the previous report"
    fresh = tmp_path / "fresh.html"
    with pytest.raises(InvalidInputError):
        write(data, fresh)
    assert sorted(os.listdir(tmp_path)) == ["report.html"]


def test_write_names_a_missing_folder(tmp_path: Path, shown: list[Overlay]) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        write(report(shown, None), tmp_path / "absent" / "report.html")
    with pytest.raises(InvalidInputError, match="is a folder"):
        write(report(shown, None), tmp_path)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------ docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "report.md"


def test_the_docs_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks
    for number, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[{number}]", "exec"), {})
