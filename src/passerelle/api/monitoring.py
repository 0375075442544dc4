"""Routes for monitors, alert rules, alerts, silences and notifiers (management API).

Handlers translate: the wire's readable durations and optional fields become the domain's
specs, and the client does the rest. Answers carry no undefined number (JSON has no NaN) and
never a notifier's secret: configurations come back masked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from passerelle.alerts import AlertInfo, RuleInfo, RuleSpec, SilenceInfo
from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.errors import InvalidInputError
from passerelle.monitor import MonitorInfo, ResultInfo, RunSummary, parse_spec
from passerelle.notify import NotifierInfo
from passerelle.policy import parse_duration

router = APIRouter(prefix="/api/v1", responses=responses(422, 500, 503))

EndpointName = Annotated[str, PathParam(description="Endpoint name, e.g. churn-api.")]
RuleName = Annotated[str, PathParam(description="Alert rule name, e.g. data-drift.")]
NotifierName = Annotated[str, PathParam(description="Notifier name, e.g. ops.")]
Reason = Annotated[
    str | None, Query(description="Why this change is made; kept in the audit log.", max_length=2000)
]
Since = Annotated[
    dt.datetime | None, Query(description="Only windows starting at or after this time (ISO 8601).")
]
Until = Annotated[dt.datetime | None, Query(description="Only windows starting before this time (ISO 8601).")]
# Long enough for any sensible duration, short enough that its number stays finite.
Duration = int | Annotated[str, Field(max_length=30)]


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


# -- monitors ---------------------------------------------------------------------------------------


class MonitorRequest(BaseModel):
    """A monitor's whole configuration: a field left out takes its default, not its current value."""

    model_config = ConfigDict(extra="forbid")

    window: Duration | None = Field(
        None, description='Window length, "1h", "30m", "1d" or seconds; at least 1 minute. Default 1h.'
    )
    delay: Duration | None = Field(
        None,
        description='How long after its end a window is evaluated, so that late predictions are in: "1m", '
        '"0" or seconds. Default 1m.',
    )
    reference: str | None = Field(
        None,
        max_length=500,
        description='What drift is measured against: "training" (each version\'s training dataset, the '
        "default) or a dataset such as churn-train:2.",
    )
    drift: dict[str, Any] = Field(
        default_factory=dict,
        description='Drift settings replacing the defaults, e.g. {"drift_share": 0.3, "min_n": 1000}.',
    )
    metric: str | None = Field(
        None, max_length=100, description="The metric shown first and used by the A/B verdict, e.g. auc."
    )
    label_column: str | None = Field(
        None, max_length=200, description="The label column of the reference, to calibrate estimated figures."
    )
    enabled: bool = Field(True, description="false keeps the monitor but stops evaluating windows.")
    start: dt.datetime | None = Field(
        None,
        description="Evaluate windows from the one holding this past time on; windows evaluated before are "
        "evaluated again.",
    )
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


@router.put(
    "/endpoints/{name}/monitor",
    tags=["monitors"],
    summary="Create or replace the monitor of an endpoint",
    response_model=MonitorInfo,
    responses=responses(400, 404, 422),
)
def set_monitor(name: EndpointName, body: MonitorRequest, client: ClientDep) -> Any:
    _check_finite(body.drift, "drift")
    try:
        spec = parse_spec(
            window=body.window,
            delay=body.delay,
            reference=body.reference,
            drift=body.drift,
            metric=body.metric,
            label_column=body.label_column,
        )
    except (AttributeError, KeyError) as exc:
        # A drift setting of the wrong shape (a list where a mapping is expected).
        raise InvalidInputError(f"drift configuration: {exc}") from exc
    info = client.set_monitor(name, spec, enabled=body.enabled, start=body.start, reason=body.reason)
    return _plain(info)


@router.get(
    "/endpoints/{name}/monitor",
    tags=["monitors"],
    summary="The monitor of an endpoint",
    response_model=MonitorInfo,
    responses=responses(404),
)
def get_monitor(name: EndpointName, client: ClientDep) -> Any:
    return _plain(client.get_monitor(name))


@router.delete(
    "/endpoints/{name}/monitor",
    tags=["monitors"],
    summary="Stop the monitor of an endpoint (its results stay)",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The monitor is stopped."}, **responses(404, 422)},
)
def remove_monitor(name: EndpointName, client: ClientDep, reason: Reason = None) -> Response:
    client.remove_monitor(name, reason=reason)
    return Response(status_code=204)


@router.get("/monitors", tags=["monitors"], summary="List monitors", response_model=list[MonitorInfo])
def list_monitors(client: ClientDep) -> Any:
    return _plain(client.list_monitors())


@router.post(
    "/monitors/run",
    tags=["monitors"],
    summary="Evaluate the closed windows of one monitor, or of every enabled one, now",
    description="Each monitor evaluates at most 48 windows per run, under a lease: a window is evaluated "
    "once even when several servers run monitors. The results carry no drift sketches.",
    response_model=list[RunSummary],
    responses=responses(404, 422),
)
def run_monitors(
    client: ClientDep,
    endpoint: Annotated[str | None, Query(description="Only this endpoint's monitor.")] = None,
) -> Any:
    return _plain(client.run_monitors(endpoint))


@router.get(
    "/endpoints/{name}/monitor/results",
    tags=["monitors"],
    summary="Stored window results of a monitor, oldest first",
    description="One result per window and version, and one for all versions together (version 0). "
    "Details hold the drift report and the performance figures, not the drift sketches.",
    response_model=list[ResultInfo],
    responses=responses(404, 422),
)
def monitor_results(
    name: EndpointName,
    client: ClientDep,
    since: Since = None,
    until: Until = None,
    version: Annotated[
        str | None, Query(description='Only one series: "all" or a version such as churn:3.')
    ] = None,
) -> Any:
    return _plain(client.monitor_results(name, since=since, until=until, version=version))


@router.get(
    "/endpoints/{name}/monitor/report",
    tags=["monitors"],
    summary="The self-contained HTML report of an endpoint",
    # No response_class: errors stay JSON (ErrorResponse); the handler returns the HTML itself.
    response_model=None,
    responses={
        200: {"description": "The report", "content": {"text/html": {"schema": {"type": "string"}}}},
        **responses(404, 422),
    },
)
def monitor_report(
    name: EndpointName,
    client: ClientDep,
    since: Annotated[
        dt.datetime | None, Query(description="Start of the period; default 7 days before its end.")
    ] = None,
    until: Annotated[dt.datetime | None, Query(description="End of the period; default now.")] = None,
) -> HTMLResponse:
    return HTMLResponse(client.monitor_report(name, since=since, until=until))


# -- alert rules, alerts and silences ---------------------------------------------------------------


class RuleRequest(BaseModel):
    """A whole alert rule: a field left out takes its default, not its current value."""

    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        max_length=500,
        description="<figure> <op> <number>, such as drift.share > 0.3 or latency.p99_ms > 500.",
    )
    for_windows: int = Field(1, description="Consecutive windows the condition holds before the alert fires.")
    keep_firing_windows: int = Field(
        0, description="Windows a firing alert stays firing after its condition turned false."
    )
    severity: str = Field("warning", description="info, warning or critical.")
    inhibited_by: list[str] = Field(
        default_factory=list, description="Rules of the endpoint whose firing holds this rule's alerts back."
    )
    notify: list[str] = Field(default_factory=list, description="Notifier names; empty: every enabled one.")
    pipeline: str | None = Field(None, description="A pipeline to trigger when an alert of this rule fires.")
    labels: dict[str, str] = Field(default_factory=dict, description="Added to the notifications.")
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


@router.put(
    "/endpoints/{name}/alert-rules/{rule}",
    tags=["alerts"],
    summary="Create or replace an alert rule of an endpoint",
    description="A rule replaced with a different expression closes its open alerts (a firing one "
    "resolves and is notified).",
    response_model=RuleInfo,
    responses=responses(404, 422),
)
def set_alert_rule(name: EndpointName, rule: RuleName, body: RuleRequest, client: ClientDep) -> Any:
    spec = RuleSpec(
        name=rule,
        expression=body.expression,
        for_windows=body.for_windows,
        keep_firing_windows=body.keep_firing_windows,
        severity=body.severity,
        inhibited_by=tuple(body.inhibited_by),
        notify=tuple(body.notify),
        pipeline=body.pipeline,
        labels=body.labels,
    )
    return _plain(client.set_alert_rule(name, spec, reason=body.reason))


@router.get(
    "/alert-rules",
    tags=["alerts"],
    summary="The alert rules in force, by endpoint and name",
    response_model=list[RuleInfo],
    responses=responses(404),
)
def list_alert_rules(
    client: ClientDep,
    endpoint: Annotated[str | None, Query(description="Only this endpoint's rules.")] = None,
) -> Any:
    return _plain(client.list_alert_rules(endpoint))


@router.delete(
    "/endpoints/{name}/alert-rules/{rule}",
    tags=["alerts"],
    summary="Remove an alert rule; its open alerts close",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The rule is removed."}, **responses(404, 422)},
)
def remove_alert_rule(
    name: EndpointName, rule: RuleName, client: ClientDep, reason: Reason = None
) -> Response:
    client.remove_alert_rule(name, rule, reason=reason)
    return Response(status_code=204)


@router.get(
    "/alerts",
    tags=["alerts"],
    summary="Alerts, newest first",
    response_model=list[AlertInfo],
    responses=responses(404, 422),
)
def list_alerts(
    client: ClientDep,
    endpoint: Annotated[str | None, Query(description="Only this endpoint's alerts.")] = None,
    state: Annotated[
        str | None, Query(description="pending, firing, resolved, cleared, or open (pending and firing).")
    ] = None,
    limit: Annotated[int, Query(description="At most this many alerts, from 1 to 10,000.")] = 200,
) -> Any:
    return _plain(client.list_alerts(endpoint, state=state, limit=limit))


@router.post(
    "/alerts/{alert_id}/ack",
    tags=["alerts"],
    summary="Acknowledge a firing alert: it is not notified again until it resolves",
    response_model=AlertInfo,
    responses=responses(404, 409, 422),
)
def ack_alert(alert_id: int, client: ClientDep, body: ReasonBody | None = None) -> Any:
    return _plain(client.ack_alert(alert_id, reason=body.reason if body else None))


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field("*", description="The rule whose alerts are muted; * for every rule of the endpoint.")
    duration: float | Annotated[str, Field(max_length=30)] = Field(
        description='How long, from now: "2h", "30m", "1d" or seconds.'
    )
    comment: str = Field("", max_length=2000, description="Why; kept with the silence and in the audit log.")


@router.post(
    "/endpoints/{name}/silences",
    tags=["alerts"],
    summary="Mute the notifications of an endpoint's alerts for a while",
    description="Alerts still change state while silenced; only their notifications are held back.",
    status_code=201,
    response_model=SilenceInfo,
    responses=responses(404, 422),
)
def silence(name: EndpointName, body: SilenceRequest, client: ClientDep) -> Any:
    duration = _duration(body.duration)
    return _plain(client.silence(name, rule=body.rule, duration=duration, comment=body.comment))


@router.get(
    "/silences",
    tags=["alerts"],
    summary="Silences, newest first",
    response_model=list[SilenceInfo],
    responses=responses(404, 422),
)
def list_silences(
    client: ClientDep,
    endpoint: Annotated[str | None, Query(description="Only this endpoint's silences.")] = None,
    active_only: Annotated[bool, Query(description="Only the silences in force now.")] = False,
) -> Any:
    return _plain(client.list_silences(endpoint, active_only=active_only))


@router.post(
    "/silences/{silence_id}/expire",
    tags=["alerts"],
    summary="End a silence now",
    response_model=SilenceInfo,
    responses=responses(404, 409, 422),
)
def expire_silence(silence_id: int, client: ClientDep, body: ReasonBody | None = None) -> Any:
    return _plain(client.expire_silence(silence_id, reason=body.reason if body else None))


# -- notifiers ----------------------------------------------------------------------------------------


class NotifierRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="webhook, slack or smtp.")
    config: dict[str, Any] = Field(
        description="webhook: url, headers, timeout_s, external_url; slack: url, channel, username, "
        "timeout_s; smtp: host, port, from, to, username, password_env, starttls, ssl, timeout_s."
    )
    enabled: bool = Field(True, description="false keeps the notifier but sends nothing through it.")
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


class OutboxRow(BaseModel):
    id: int
    alert_id: int | None
    notifier: str
    event: str = Field(description="firing, resolved or test.")
    group_key: str
    alerts: int = Field(description="How many alerts the message reports.")
    status: str = Field(description="pending, sent or failed (given up).")
    attempts: int
    last_error: str = Field(description="Why the last attempt failed; empty if none did.")
    created_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None


@router.put(
    "/notifiers/{name}",
    tags=["notifiers"],
    summary="Create or replace a notifier",
    description="The answer shows the configuration with credentials masked (URL passwords and query "
    "values, header values, the path of a Slack webhook).",
    response_model=NotifierInfo,
    responses=responses(400, 422),
)
def set_notifier(name: NotifierName, body: NotifierRequest, client: ClientDep) -> Any:
    info = client.set_notifier(name, body.kind, body.config, enabled=body.enabled, reason=body.reason)
    return _plain(info)


@router.get(
    "/notifiers",
    tags=["notifiers"],
    summary="List notifiers, credentials masked",
    response_model=list[NotifierInfo],
)
def list_notifiers(client: ClientDep) -> Any:
    return _plain(client.list_notifiers())


@router.delete(
    "/notifiers/{name}",
    tags=["notifiers"],
    summary="Remove a notifier; its messages still waiting are marked failed",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The notifier is removed."}, **responses(404, 422)},
)
def remove_notifier(name: NotifierName, client: ClientDep, reason: Reason = None) -> Response:
    client.remove_notifier(name, reason=reason)
    return Response(status_code=204)


@router.post(
    "/notifiers/{name}/test",
    tags=["notifiers"],
    summary="Send a test message through a notifier now",
    description="Answers 204 once the message is delivered, or an error saying where it was sent and why "
    "it failed. The server itself connects to the notifier's address.",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The test message was delivered."}, **responses(400, 404)},
)
def test_notifier(name: NotifierName, client: ClientDep) -> Response:
    client.test_notifier(name)
    return Response(status_code=204)


@router.get(
    "/notifications",
    tags=["notifiers"],
    summary="The notification outbox, latest first",
    response_model=list[OutboxRow],
    responses=responses(422),
)
def notifications(
    client: ClientDep,
    status: Annotated[str | None, Query(description="pending, sent or failed.")] = None,
    limit: Annotated[int, Query(description="At most this many rows, from 1 to 10,000.")] = 100,
) -> Any:
    return _plain(client.notifications(status=status, limit=limit))


# -- helpers ------------------------------------------------------------------------------------------


def _duration(value: float | str) -> dt.timedelta:
    seconds = parse_duration(value, "duration") if isinstance(value, str) else float(value)
    if not math.isfinite(seconds):
        raise InvalidInputError(f"duration {value!r} must be a finite number of seconds")
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidInputError(f"duration {value!r} is too long") from None


def _check_finite(value: Any, where: str) -> None:
    """Refuse infinities and NaN: stored as JSON, they would make every later answer unreadable."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{where}: {value} is not a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def _plain(value: Any) -> Any:
    """``value`` ready for a JSON answer: dataclasses as objects, undefined numbers as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
