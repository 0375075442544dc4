"""What each console page shows, gathered from the client and the services; no HTTP here.

Each function returns plain data for one template. Pages read aggregates only: serving
figures, monitor figures, revisions, alerts, and at most a bounded, indexed handful of logged
predictions (the newest ones of one endpoint), so a page costs the same on a store holding
ten predictions or ten million.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passerelle import monitor, report
from passerelle.alerts import AlertInfo, SilenceInfo
from passerelle.client import LocalClient
from passerelle.drift import WindowSketch, compute_drift
from passerelle.endpoints import EndpointDetail, EndpointInfo, RevisionInfo
from passerelle.errors import NotFoundError, PasserelleError
from passerelle.monitor import MonitorInfo
from passerelle.policy import Policy
from passerelle.registry import ModelInfo, VersionInfo
from passerelle.store import Store
from passerelle.ui import charts, queries

if TYPE_CHECKING:
    from passerelle import pipelines

#: how far back the "current" figures of the overview and the live split look
LIVE_WINDOW = dt.timedelta(minutes=5)
#: logged predictions read to compare shadows' scores with the served ones (newest first, indexed)
SHADOW_SAMPLE = 200
#: bytes of a pipeline run's log shown on its page (the end of it)
LOG_TAIL_BYTES = 64 * 1024
#: an endpoint whose error rate is above this is shown as failing
ERROR_RATE_BAD = 0.05


@dataclass(frozen=True)
class Range:
    """A period a page looks at, and the step its time series are cut into."""

    key: str
    label: str
    span: dt.timedelta
    step_s: int


RANGES: dict[str, Range] = {
    r.key: r
    for r in (
        Range("1h", "last hour", dt.timedelta(hours=1), 60),
        Range("6h", "last 6 hours", dt.timedelta(hours=6), 300),
        Range("24h", "last 24 hours", dt.timedelta(hours=24), 900),
        Range("7d", "last 7 days", dt.timedelta(days=7), 3 * 3600),
    )
}


def pick_range(key: str | None, default: str) -> Range:
    return RANGES.get(key or default, RANGES[default])


@dataclass(frozen=True)
class State:
    """A state shown by a word, a shape and a colour at once (``tone``: good, warn, bad, none)."""

    tone: str
    text: str

    @property
    def symbol(self) -> str:
        return {"good": "✓", "warn": "▲", "bad": "✖", "info": "◆"}.get(self.tone, "○")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------------ overview


@dataclass(frozen=True)
class Route:
    ref: str
    weight: float
    kind: str  # route, shadow, canary


@dataclass(frozen=True)
class EndpointRow:
    name: str
    revision: int
    updated_at: dt.datetime
    routes: list[Route]
    health: State
    requests_per_s: float | None
    error_rate: float | None
    p99_ms: float | None
    firing: int
    pending: int
    monitor: State


@dataclass(frozen=True)
class Overview:
    endpoints: list[EndpointRow]
    firing: int
    pending: int
    window: dt.timedelta


def policy_routes(policy: Policy) -> list[Route]:
    routes = [
        Route(
            r.ref,
            float(r.weight),
            "canary" if policy.canary is not None and r.ref == policy.canary.ref else "route",
        )
        for r in policy.routes
    ]
    routes += [Route(s.ref, float(s.percent), "shadow") for s in policy.shadows]
    return routes


def policy_text(policy: Policy) -> str:
    parts = [f"{r.ref} {r.weight}%" for r in policy.routes]
    parts += [f"shadow {s.ref}" + ("" if s.percent >= 100 else f" ({s.percent:g}%)") for s in policy.shadows]
    if policy.canary is not None:
        parts.append(f"canary {policy.canary.ref} at step {policy.canary.weight}%")
    return " · ".join(parts)


def _health(
    info: EndpointInfo,
    loaded: Mapping[str, int] | None,
    load_errors: Mapping[str, str],
    error_rate: float | None,
) -> State:
    if info.name in load_errors:
        # The gateway keeps serving the revision it had; say which, and why the new one is not in.
        served = loaded.get(info.name) if loaded is not None else None
        still = f"; still serving revision {served}" if served else ""
        return State("bad", f"not loaded: {load_errors[info.name]}{still}")
    if loaded is not None and loaded.get(info.name) != info.revision:
        return State("warn", f"loading revision {info.revision}")
    if error_rate is not None and error_rate > ERROR_RATE_BAD:
        return State("bad", f"failing: {error_rate:.1%} of requests")
    return State("good", "serving" if loaded is not None else "not served by this process")


def monitor_state(status: str | None) -> State:
    return {
        None: State("none", "no window yet"),
        "ok": State("good", "ok"),
        "drift": State("bad", "drift"),
        "error": State("bad", "error"),
        "insufficient": State("warn", "too few rows"),
        "no_traffic": State("none", "no traffic"),
    }.get(status, State("none", str(status)))


def overview(
    client: LocalClient,
    *,
    loaded: Mapping[str, int] | None,
    load_errors: Mapping[str, str],
    visible: Callable[[str], bool],
) -> Overview:
    """Every endpoint: its split, health, request rate, error rate, p99 and open alerts."""
    infos = [e for e in queries.endpoint_infos(client.ctx.store) if visible(e.name)]
    names = [e.name for e in infos]
    now = _utcnow()
    traffic = queries.recent_traffic(client.ctx.store, names, since=now - LIVE_WINDOW)
    statuses = queries.latest_status(client.ctx.store, names)
    open_alerts = [a for a in client.list_alerts(state="open", limit=10_000) if visible(a.endpoint)]
    rows: list[EndpointRow] = []
    for info in infos:
        total = traffic.get(info.name, {}).get("all")
        seconds = LIVE_WINDOW.total_seconds()
        error_rate = total.error_rate if total is not None else None
        status = statuses.get(info.name)
        rows.append(
            EndpointRow(
                name=info.name,
                revision=info.revision,
                updated_at=info.updated_at,
                routes=policy_routes(info.policy),
                health=_health(info, loaded, load_errors, error_rate),
                requests_per_s=total.requests / seconds if total is not None else 0.0,
                error_rate=error_rate,
                p99_ms=total.p99_ms if total is not None else None,
                firing=sum(1 for a in open_alerts if a.endpoint == info.name and a.state == "firing"),
                pending=sum(1 for a in open_alerts if a.endpoint == info.name and a.state == "pending"),
                monitor=monitor_state(status[0] if status else None),
            )
        )
    return Overview(
        endpoints=rows,
        firing=sum(1 for a in open_alerts if a.state == "firing"),
        pending=sum(1 for a in open_alerts if a.state == "pending"),
        window=LIVE_WINDOW,
    )


# ------------------------------------------------------------------------------------------ endpoint


@dataclass(frozen=True)
class LiveShare:
    ref: str
    weight: float | None
    requests: int
    share: float | None
    error_rate: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class ShadowRow:
    ref: str
    compared: int
    agreement: float | None
    sampled: int
    mean_score_diff: float | None
    max_score_diff: float | None


@dataclass(frozen=True)
class RevisionRow:
    revision: RevisionInfo
    policy: str
    current: bool


@dataclass
class EndpointPage:
    info: EndpointInfo
    health: State
    routes: list[Route]
    live: list[LiveShare]
    revisions: list[RevisionRow]
    range: Range
    latency_chart: str
    errors_chart: str
    traffic_chart: str
    shadows: list[ShadowRow]
    verdict: str
    verdict_note: str
    candidates: list[str]
    split_bar: str
    monitor: MonitorInfo | None
    #: where the charts' figures come from: the serving figures, or the monitor's windows
    series_source: str

    def live_of(self, ref: str) -> LiveShare | None:
        return next((share for share in self.live if share.ref == ref), None)


def _score(outputs: Mapping[str, Any] | None) -> float | None:
    """The probability of the predicted class, or the value itself for a regressor."""
    if not outputs:
        return None
    proba = outputs.get("proba")
    if isinstance(proba, dict) and proba:
        values = [v for v in proba.values() if isinstance(v, int | float)]
        return float(max(values)) if values else None
    value = outputs.get("prediction")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _shadow_rows(
    client: LocalClient, name: str, policy: Policy, totals: Mapping[str, tuple[int, int]]
) -> list[ShadowRow]:
    if not policy.shadows:
        return []
    sample = client.predictions_tail(name, limit=SHADOW_SAMPLE)
    out: list[ShadowRow] = []
    for shadow in policy.shadows:
        diffs: list[float] = []
        for row in sample:
            served = _score(row.get("outputs"))
            for answer in row.get("shadows") or []:
                if f"{answer.get('model')}:{answer.get('version')}" != shadow.ref or answer.get("error"):
                    continue
                mirrored = _score(answer.get("outputs"))
                if served is not None and mirrored is not None:
                    diffs.append(abs(mirrored - served))
        compared, disagreed = totals.get(shadow.ref, (0, 0))
        out.append(
            ShadowRow(
                ref=shadow.ref,
                compared=compared,
                agreement=1.0 - disagreed / compared if compared else None,
                sampled=len(diffs),
                mean_score_diff=sum(diffs) / len(diffs) if diffs else None,
                max_score_diff=max(diffs) if diffs else None,
            )
        )
    return out


def _series_chart(
    points: Sequence[queries.Step],
    value: Callable[[queries.Step], float | None],
    *,
    order: Sequence[str],
    title: str,
    label: str,
    since: dt.datetime,
    until: dt.datetime,
    percent: bool = False,
    unit: str = "",
) -> str:
    # The policy's versions first, in its order: a version keeps its colour from chart to chart.
    lines: dict[str, list[tuple[dt.datetime, float | None]]] = {ref: [] for ref in order}
    for point in points:
        lines.setdefault(point.ref, []).append((point.at, value(point)))
    lines = {ref: values for ref, values in lines.items() if values}
    return report.time_series_chart(
        title, lines, since=since, until=until, label=label, percent=percent, unit=unit
    )


def _verdict(client: LocalClient, name: str, since: dt.datetime) -> tuple[str, str]:
    """The newest A/B verdict a monitor stored for the endpoint, drawn; or why there is none."""
    try:
        found = client.monitor_results(name, since=since, version="all")
    except NotFoundError:
        return report.verdict_summary(None), "the endpoint has no monitor: A/B verdicts come from its windows"
    verdict = next((r.details["verdict"] for r in reversed(found) if "verdict" in r.details), None)
    if verdict is None:
        return report.verdict_summary(None), ""
    latest = next(r for r in reversed(found) if "verdict" in r.details)
    return (
        report.verdict_summary(verdict),
        f"as judged at the end of the window {latest.window_end:%Y-%m-%d %H:%M} UTC",
    )


def _steps(
    store: Store, name: str, *, since: dt.datetime, until: dt.datetime, step_s: int
) -> tuple[list[queries.Step], str]:
    """The time series of a period, and where they come from.

    Steps of an hour or more read the monitor's windows, which hold the same figures already
    merged per window: a week is then a few hundred rows instead of tens of thousands of
    one-minute ones. Without monitor windows, the one-minute figures are merged here.
    """
    if step_s >= 3600:
        windows = [
            w for w in queries.monitor_windows(store, name, since=since, until=until) if w.ref != "all"
        ]
        if windows:
            return [
                queries.Step(
                    at=w.start,
                    ref=w.ref,
                    requests=int(w.figures.get("requests") or 0),
                    error_rate=w.figures.get("errors.rate"),
                    p99_ms=w.figures.get("latency.p99_ms"),
                    seconds=(w.end - w.start).total_seconds(),
                )
                for w in windows
            ], "the monitor's windows"
    return queries.traffic_series(store, name, since=since, step_s=step_s), "the serving figures"


def endpoint_page(
    client: LocalClient,
    name: str,
    *,
    range_: Range,
    loaded: Mapping[str, int] | None,
    load_errors: Mapping[str, str],
) -> EndpointPage:
    detail: EndpointDetail = client.get_endpoint(name)
    info = detail.endpoint
    now = _utcnow()
    since = now - range_.span
    store = client.ctx.store
    points, series_source = _steps(store, name, since=since, until=now, step_s=range_.step_s)
    order = [r.ref for r in policy_routes(info.policy)]
    latency_chart = _series_chart(
        points,
        lambda p: p.p99_ms,
        order=order,
        title=f"p99 latency per version, {range_.label}",
        label="p99 latency (ms)",
        since=since,
        until=now,
        unit=" ms",
    )
    errors_chart = _series_chart(
        points,
        lambda p: p.error_rate if p.requests else None,
        order=order,
        title=f"Error rate per version, {range_.label}",
        label="error rate",
        since=since,
        until=now,
        percent=True,
    )
    traffic_chart = _series_chart(
        points,
        lambda p: p.requests / p.seconds,
        order=order,
        title=f"Requests per second per version, {range_.label}",
        label="requests per second",
        since=since,
        until=now,
        unit=" /s",
    )
    live_traffic = queries.recent_traffic(store, [name], since=now - LIVE_WINDOW).get(name, {})
    total = live_traffic.get("all")
    weights = {r.ref: float(r.weight) for r in info.policy.routes}
    refs = list(weights) + [ref for ref in live_traffic if ref != "all" and ref not in weights]
    live: list[LiveShare] = []
    for ref in refs:
        seen = live_traffic.get(ref)
        if ref not in weights and (seen is None or not seen.requests):
            continue  # a shadow: its figures are comparisons, not served traffic
        requests = seen.requests if seen is not None else 0
        live.append(
            LiveShare(
                ref=ref,
                weight=weights.get(ref),
                requests=requests,
                share=requests / total.requests if total is not None and total.requests else None,
                error_rate=seen.error_rate if seen is not None else None,
                p99_ms=seen.p99_ms if seen is not None else None,
            )
        )
    totals = queries.shadow_totals(store, name, since=since)
    try:
        watched: MonitorInfo | None = client.get_monitor(name)
    except NotFoundError:
        watched = None
    verdict, verdict_note = (
        _verdict(client, name, since)
        if watched is not None
        else (
            report.verdict_summary(None),
            "the endpoint has no monitor: A/B verdicts come from its windows",
        )
    )
    candidates = sorted(
        {r.ref for r in info.policy.routes}
        | {s.ref for s in info.policy.shadows}
        | ({info.policy.canary.ref} if info.policy.canary else set())
    )
    error_rate = total.error_rate if total is not None else None
    return EndpointPage(
        info=info,
        health=_health(info, loaded, load_errors, error_rate),
        routes=policy_routes(info.policy),
        live=live,
        revisions=[
            RevisionRow(r, policy_text(r.policy), r.number == info.revision) for r in detail.revisions
        ],
        range=range_,
        latency_chart=latency_chart,
        errors_chart=errors_chart,
        traffic_chart=traffic_chart,
        shadows=_shadow_rows(client, name, info.policy, totals),
        verdict=verdict,
        verdict_note=verdict_note,
        candidates=candidates,
        split_bar=charts.split_bar(
            [(r.ref, r.weight) for r in info.policy.routes],
            [(s.ref, s.share) for s in live if s.share is not None],
        ),
        monitor=watched,
        series_source=series_source,
    )


# ------------------------------------------------------------------------------------------ monitoring


@dataclass
class MonitoringPage:
    endpoint: EndpointInfo
    monitor: MonitorInfo | None
    range: Range
    windows: int
    latest: State
    empty_reason: str
    heatmap: str
    share_chart: str
    performance_chart: str
    coverage_chart: str
    metric: str
    overlays: list[str]
    overlay_window: str
    overlay_text: list[str]
    choices: list[tuple[str, str, bool]]
    notes: list[str] = field(default_factory=list)


def _metric(spec_metric: str | None, windows: Iterable[queries.WindowFigures]) -> str:
    named = {"roc_auc": "auc"}.get(spec_metric or "", spec_metric or "")
    if named:
        return named
    present = {k for w in windows for k in w.figures}
    for candidate in ("auc", "accuracy", "rmse"):
        if f"performance.{candidate}" in present or f"estimated.{candidate}" in present:
            return candidate
    return "accuracy"


def _window_point(w: queries.WindowFigures) -> report.WindowPoint:
    return report.WindowPoint(w.start, w.end, w.ref, w.status, w.rows, w.figures)


def monitoring_page(
    client: LocalClient, name: str, *, range_: Range, window: str | None = None
) -> MonitoringPage:
    info = client.get_endpoint(name).endpoint
    now = _utcnow()
    since = now - range_.span
    try:
        watched: MonitorInfo | None = client.get_monitor(name)
    except NotFoundError:
        watched = None
    found = queries.monitor_windows(client.ctx.store, name, since=since, until=now) if watched else []
    points = [_window_point(w) for w in found]
    metric = _metric(watched.config.get("metric") if watched else None, found)
    page = MonitoringPage(
        endpoint=info,
        monitor=watched,
        range=range_,
        windows=len({w.start for w in found}),
        latest=State("none", "no window yet"),
        empty_reason="",
        heatmap="",
        share_chart="",
        performance_chart="",
        coverage_chart="",
        metric=metric,
        overlays=[],
        overlay_window="",
        overlay_text=[],
        choices=[],
    )
    if watched is None:
        page.empty_reason = (
            f"endpoint {name} has no monitor: set one with `passerelle monitor set {name}` "
            "(deploy attaches one by default)"
        )
        return page
    if not found:
        first_end = watched.next_window + dt.timedelta(seconds=watched.window_s)
        ready = first_end + dt.timedelta(seconds=watched.delay_s)
        page.empty_reason = (
            f"the monitor has no data yet in the {range_.label}: its next window "
            f"({watched.next_window:%Y-%m-%d %H:%M} UTC, {_duration(watched.window_s)} long) is judged "
            f"after {ready:%Y-%m-%d %H:%M} UTC"
        )
        return page
    overall = [w for w in found if w.ref == "all"]
    if overall:
        page.latest = monitor_state(overall[-1].status)
    # The charts start at the first window of the period, not before: a monitor two days old
    # fills the width of a seven-day view instead of its last quarter.
    since = min(w.start for w in found)
    until = max(now, max(w.end for w in found))
    page.heatmap = report.drift_heatmap(points, since=since, until=until)
    page.share_chart = report.drift_share_chart(points, since=since, until=until)
    page.performance_chart = report.performance_chart(points, metric, since=since, until=until)
    coverage: dict[str, list[tuple[dt.datetime, float | None]]] = {}
    for w in found:
        if w.ref != "all" and "labels.coverage" in w.figures:
            coverage.setdefault(w.ref, []).append((w.start, w.figures["labels.coverage"]))
    page.coverage_chart = report.time_series_chart(
        "Share of predictions with a label, per window and version",
        coverage,
        since=since,
        until=until,
        label="label coverage",
        percent=True,
    )
    _overlays(client, page, info, watched, found, window)
    return page


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _overlays(
    client: LocalClient,
    page: MonitoringPage,
    info: EndpointInfo,
    watched: MonitorInfo,
    found: Sequence[queries.WindowFigures],
    wanted: str | None,
) -> None:
    """Distributions of one judged window against its version's reference.

    The primary version's windows when it has judged ones; otherwise those of the version judged
    last (a version just promoted has no window yet, the one it replaced has).
    """
    primary = info.policy.primary.ref
    usable = [w for w in found if w.ref != "all" and w.status in ("ok", "drift")]
    judged = [w for w in usable if w.ref == primary]
    if not judged and usable:
        fallback = usable[-1].ref
        page.notes.append(f"{primary} has no judged window in this period yet: showing {fallback}")
        primary, judged = fallback, [w for w in usable if w.ref == fallback]
    page.choices = [
        (w.start.isoformat(), f"{w.start:%Y-%m-%d %H:%M} UTC · {w.status}", False) for w in reversed(judged)
    ]
    if not judged:
        page.notes.append(f"no window of {primary} held enough rows to compare distributions yet")
        return
    chosen = judged[-1]
    if wanted:
        chosen = next((w for w in judged if w.start.isoformat() == wanted), chosen)
    page.choices = [(key, text, key == chosen.start.isoformat()) for key, text, _ in page.choices]
    page.overlay_window = f"{primary}, {chosen.start:%Y-%m-%d %H:%M} to {chosen.end:%H:%M} UTC"
    try:
        stored = monitor.results(
            client.ctx,
            info.name,
            since=chosen.start,
            until=chosen.start + dt.timedelta(microseconds=1),
            version=primary,
            details=True,
        )
        sketch_data = stored[0].details.get("sketch") if stored else None
        if sketch_data is None:
            page.notes.append(f"the window of {page.overlay_window} kept no summary of its rows")
            return
        version: VersionInfo = client.get_version(primary)
        reference = monitor.reference_for(client.ctx, version, watched.spec)
        sketch = WindowSketch.from_dict(sketch_data, reference.stats)
        judged_report = compute_drift(reference.stats, sketch, watched.spec.drift_config())
        shown = report.overlays(reference.stats, sketch, judged_report)
    except PasserelleError as exc:
        page.notes.append(f"no distributions: {exc}")
        return
    page.overlay_text = report.comparison_text(judged_report.to_dict())
    page.overlay_text.insert(0, f"Reference: dataset {reference.name}, {reference.stats.rows:,} rows.")
    page.overlays = [report.distribution_card(o) for o in shown]


@dataclass(frozen=True)
class MonitorRow:
    monitor: MonitorInfo
    latest: State


def monitors(client: LocalClient, *, visible: Callable[[str], bool]) -> list[MonitorRow]:
    found = [m for m in client.list_monitors() if visible(m.endpoint)]
    statuses = queries.latest_status(client.ctx.store, [m.endpoint for m in found])
    return [
        MonitorRow(m, monitor_state(statuses[m.endpoint][0] if m.endpoint in statuses else None))
        for m in found
    ]


# ------------------------------------------------------------------------------------------ alerts


def alert_state(alert: AlertInfo) -> State:
    if alert.state == "firing":
        return State("bad" if alert.severity == "critical" else "warn", "firing")
    if alert.state == "pending":
        return State("info", "pending")
    return State("good", alert.state)


@dataclass(frozen=True)
class AlertsPage:
    alerts: list[AlertInfo]
    silences: list[SilenceInfo]
    state: str
    endpoint: str | None
    counts: dict[str, int]
    endpoints: list[str]


ALERT_FILTERS = ("open", "firing", "pending", "resolved", "all")


def alerts_page(
    client: LocalClient, *, state: str, endpoint: str | None, visible: Callable[[str], bool]
) -> AlertsPage:
    wanted = state if state in ALERT_FILTERS else "open"
    if endpoint:
        client.get_endpoint(endpoint)
    shown = [
        a
        for a in client.list_alerts(endpoint or None, state=None if wanted == "all" else wanted, limit=500)
        if visible(a.endpoint)
    ]
    opened = [
        a for a in client.list_alerts(endpoint or None, state="open", limit=10_000) if visible(a.endpoint)
    ]
    counts = {
        "firing": sum(1 for a in opened if a.state == "firing"),
        "pending": sum(1 for a in opened if a.state == "pending"),
    }
    silences = [s for s in client.list_silences(endpoint or None, active_only=True) if visible(s.endpoint)]
    return AlertsPage(
        alerts=shown,
        silences=silences,
        state=wanted,
        endpoint=endpoint or None,
        counts=counts,
        endpoints=[e.name for e in queries.endpoint_infos(client.ctx.store) if visible(e.name)],
    )


# ------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelPage:
    model: ModelInfo
    versions: list[VersionInfo]
    serving: dict[str, list[str]]


def _serving(client: LocalClient) -> dict[str, list[str]]:
    """Which endpoints use each version, and how: ``churn:3 → ["churn-api (90%)"]``."""
    out: dict[str, list[str]] = {}
    for endpoint in queries.endpoint_infos(client.ctx.store):
        for route in policy_routes(endpoint.policy):
            how = f"{route.weight:g}%" if route.kind != "shadow" else "shadow"
            out.setdefault(route.ref, []).append(f"{endpoint.name} ({how})")
    return out


def model_page(client: LocalClient, name: str) -> ModelPage:
    info, versions = client.get_model(name)
    return ModelPage(info, list(reversed(versions)), _serving(client))


@dataclass(frozen=True)
class RunLink:
    id: str
    label: str
    state: str


@dataclass(frozen=True)
class VersionPage:
    version: VersionInfo
    columns: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    serving: list[str]
    runs: list[RunLink]
    triggers: list[str]
    alerts: list[str]
    lineage: str


def version_page(client: LocalClient, ref: str) -> VersionPage:
    """A version, and its lineage as :func:`passerelle.lineage.graph` finds it."""
    from passerelle import lineage

    version = client.get_version(ref)
    graph = lineage.graph(client.ctx, version.ref)
    nodes = {node["id"]: node for node in graph["nodes"]}
    root = graph["root"]
    edges = graph["edges"]
    runs = [nodes[e["from"]] for e in edges if e["to"] == root and nodes[e["from"]]["kind"] == "run"]
    run_ids = {run["id"] for run in runs}
    data = [
        str(nodes[e["from"]]["label"])
        for e in edges
        if nodes[e["from"]]["kind"] in ("dataset", "path") and (e["to"] == root or e["to"] in run_ids)
    ]
    triggers = [
        str(nodes[e["from"]]["label"])
        for e in edges
        if e["to"] in run_ids and e["kind"] == "triggered" and nodes[e["from"]]["kind"] != "dataset"
    ]
    alerts = [str(nodes[e["to"]]["label"]) for e in edges if e["from"] == root and e["kind"] == "raised"]
    # The newest revision of each endpoint that used the version, and whether it is still in force.
    current = {info.name: info.revision for info in queries.endpoint_infos(client.ctx.store)}
    latest: dict[str, tuple[int, str]] = {}
    for used in graph["served"]:
        found = (int(used["revision"]), str(used["role"]))
        latest[used["endpoint"]] = max(latest.get(used["endpoint"], found), found)
    serving = [
        f"{endpoint} ({role})" if current.get(endpoint) == number else f"{endpoint} (until revision {number})"
        for endpoint, (number, role) in sorted(latest.items())
    ]
    signature = version.signature or {}
    columns = [dict(c) for c in signature.get("columns") or [] if isinstance(c, Mapping)]
    output = version.output_schema or {}
    outputs = [dict(c) for c in output.get("columns") or [] if isinstance(c, Mapping)]
    links = [
        RunLink(
            str(run["id"]).removeprefix("run:"), str(run["label"]).removeprefix("run "), str(run["state"])
        )
        for run in runs
    ]
    return VersionPage(
        version=version,
        columns=columns,
        outputs=outputs,
        serving=serving,
        runs=links,
        triggers=list(dict.fromkeys(triggers)),
        alerts=alerts,
        lineage=charts.lineage_graph(
            datasets=list(dict.fromkeys(data)),
            runs=[link.label for link in links],
            version=version.ref,
            endpoints=serving,
        ),
    )


# ------------------------------------------------------------------------------------------ pipelines


@dataclass(frozen=True)
class PipelinesPage:
    definitions: list[pipelines.PipelineInfo]
    runs: list[pipelines.RunInfo]


def run_state(state: str) -> State:
    return {
        "succeeded": State("good", "succeeded"),
        "running": State("info", "running"),
        "queued": State("none", "queued"),
        "rejected": State("warn", "rejected by its gates"),
        "failed": State("bad", "failed"),
        "interrupted": State("bad", "interrupted"),
        "cancelled": State("none", "cancelled"),
    }.get(state, State("none", state))


def pipelines_page(client: LocalClient) -> PipelinesPage:
    from passerelle import pipelines

    return PipelinesPage(pipelines.list_pipelines(client.ctx), pipelines.list_runs(client.ctx, limit=50))


@dataclass(frozen=True)
class RunPage:
    run: pipelines.RunInfo
    gates: list[dict[str, Any]]
    log: str
    log_note: str


def run_page(client: LocalClient, ref: str) -> RunPage:
    from passerelle import pipelines

    run = pipelines.get_run(client.ctx, ref)
    gates = [dict(g) for g in run.evaluation.get("gates") or [] if isinstance(g, Mapping)]
    path = Path(run.log_path) if run.log_path else None
    log, note = "", ""
    if path is None or not path.is_file():
        note = (
            "no log yet: the run has not started"
            if run.state == "queued"
            else (f"the log is not on this machine (written by {run.holder or 'another process'})")
        )
    else:
        size = path.stat().st_size
        offset = max(0, size - LOG_TAIL_BYTES)
        log = "".join(pipelines.logs(client.ctx, run.id, offset=offset))
        if offset:
            note = f"the last {LOG_TAIL_BYTES // 1024} KiB of {size / 1024:,.0f} KiB"
    return RunPage(run, gates, log, note)
