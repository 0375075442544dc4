"""Monitors: the checks of one endpoint over consecutive windows of prediction time.

A run evaluates every window that has closed (its end plus ``delay_s`` is past) since the
monitor's ``next_window``: per version, the drift of the window's inputs and predictions
against the version's reference statistics, schema problems, the operational figures, the
realized and estimated performance; for the endpoint as a whole, the same operational figures
and the A/B verdict. The results of a window, the alert states they move and the monitor's
cursor are written in one transaction, under a lease, so a window is evaluated once however
many workers or replicas run monitors, and a restart resumes where the last run stopped.

Windows holding fewer rows than the drift configuration's ``min_n`` are "insufficient": they
are not judged and merge into the next window until enough rows have been seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from passerelle import alerts, audit, feedback, performance, report
from passerelle._failpoints import failpoint
from passerelle.context import Context
from passerelle.datasets import Datasets
from passerelle.drift import (
    DriftConfig,
    DriftReport,
    ReferenceStats,
    WindowSketch,
    compute_drift,
    merge_windows,
)
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError
from passerelle.policy import Policy, parse_duration
from passerelle.registry import Registry, VersionInfo
from passerelle.serving import figures as serving_figures
from passerelle.serving import leases
from passerelle.signature import Signature
from passerelle.store.schema import (
    Endpoint,
    EndpointRevision,
    Feedback,
    Monitor,
    MonitorResult,
    Prediction,
    ReferenceProfile,
)

logger = logging.getLogger(__name__)

TRAINING = "training"
DEFAULT_WINDOW_S = 3600
DEFAULT_DELAY_S = 60
#: windows evaluated by one run of one monitor at most, so a monitor that was off for a month
#: catches up over several runs instead of holding its lease for an hour
MAX_WINDOWS_PER_RUN = 48
#: insufficient windows merged into the next at most; beyond, the oldest rows are dropped
MAX_CARRIED_WINDOWS = 48
#: reference rows summarised; beyond this a seeded sample keeps the statistics steady and cheap
MAX_REFERENCE_ROWS = 200_000
#: labelled reference rows kept to calibrate estimated performance
CALIBRATION_ROWS = 5_000
_CHUNK = 20_000
_MAX_SECONDS = 366 * 86400
#: renewed after every window; a crashed holder's lease lapses after this long
_LEASE_TTL_S = 120.0
PREDICTION = "prediction"
SCORE = "score"


@dataclass(frozen=True)
class MonitorSpec:
    """What a monitor checks and how often. ``drift`` overrides :class:`DriftConfig` fields."""

    window_s: int = DEFAULT_WINDOW_S
    delay_s: int = DEFAULT_DELAY_S
    reference: str = TRAINING
    drift: Mapping[str, Any] = field(default_factory=dict)
    #: the metric shown first and used by the A/B verdict; None picks auc, accuracy or rmse
    metric: str | None = None
    #: the label column of the reference, to calibrate estimated performance on it
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.window_s < 60:
            raise InvalidInputError(f"window must be at least 1 minute, got {self.window_s} s")
        if self.window_s > _MAX_SECONDS:
            raise InvalidInputError(f"window must be at most 366 days, got {self.window_s} s")
        if self.delay_s < 0:
            raise InvalidInputError(f"delay must be >= 0, got {self.delay_s} s")
        if self.delay_s > _MAX_SECONDS:
            raise InvalidInputError(f"delay must be at most 366 days, got {self.delay_s} s")
        if not self.reference:
            raise InvalidInputError("reference must be 'training' or a dataset such as churn-train:2")
        self.drift_config()

    def drift_config(self) -> DriftConfig:
        try:
            return DriftConfig.from_dict(dict(self.drift))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise InvalidInputError(f"drift configuration: {exc}") from exc

    def config(self) -> dict[str, Any]:
        return {"drift": dict(self.drift), "metric": self.metric, "label_column": self.label_column}


@dataclass(frozen=True)
class MonitorInfo:
    endpoint: str
    window_s: int
    delay_s: int
    reference: str
    config: dict[str, Any]
    enabled: bool
    next_window: dt.datetime
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return _plain_dict(asdict(self))

    @property
    def spec(self) -> MonitorSpec:
        return MonitorSpec(
            window_s=self.window_s,
            delay_s=self.delay_s,
            reference=self.reference,
            drift=self.config.get("drift") or {},
            metric=self.config.get("metric"),
            label_column=self.config.get("label_column"),
        )


@dataclass(frozen=True)
class ResultInfo:
    """The figures of one window for one version (``version`` 0 and ``model`` "": all of them)."""

    endpoint: str
    window_start: dt.datetime
    window_end: dt.datetime
    model: str
    version: int
    status: str
    rows: int
    figures: dict[str, float | None]
    details: dict[str, Any]
    evaluated_at: dt.datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}" if self.version else "all"

    def to_dict(self, *, details: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not details:
            out.pop("details")
        return _plain_dict(out)


@dataclass(frozen=True)
class RunSummary:
    """What one run of one monitor did."""

    endpoint: str
    windows: int
    results: list[ResultInfo]
    transitions: list[alerts.Transition]
    relabelled_windows: int
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "windows": self.windows,
            "results": [r.to_dict(details=False) for r in self.results],
            "transitions": [
                {"alert": t.alert.to_dict(), "before": t.before, "after": t.after} for t in self.transitions
            ],
            "relabelled_windows": self.relabelled_windows,
            "skipped": self.skipped,
        }


def _plain_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    """JSON-ready: times as ISO text (audit records and API answers store JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


# ---------------------------------------------------------------------------------------
# configuration


def _info(row: Monitor) -> MonitorInfo:
    return MonitorInfo(
        endpoint=row.endpoint,
        window_s=row.window_s,
        delay_s=row.delay_s,
        reference=row.reference,
        config=dict(row.config or {}),
        enabled=row.enabled,
        next_window=row.next_window,
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
    )


def floor_time(at: dt.datetime, window_s: int) -> dt.datetime:
    """The start of the window holding ``at``: windows start at multiples of their length since the epoch."""
    seconds = int(at.timestamp() // window_s) * window_s
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _check_endpoint(session: Session, endpoint: str) -> None:
    if session.scalar(select(Endpoint.id).where(Endpoint.name == endpoint)) is None:
        raise NotFoundError(f"endpoint {endpoint!r} does not exist")


def set_monitor_in(
    session: Session,
    endpoint: str,
    spec: MonitorSpec,
    actor: str,
    *,
    enabled: bool = True,
    start: dt.datetime | None = None,
    reason: str = "",
    now: dt.datetime | None = None,
) -> MonitorInfo:
    """Create or change the monitor of ``endpoint`` inside the caller's transaction.

    A new monitor starts with the window holding ``now``; ``start`` (also on an existing
    monitor) moves its cursor to the window holding that time, to evaluate past traffic or to
    evaluate windows again (their earlier results are replaced).
    """
    _check_endpoint(session, endpoint)
    now = now or dt.datetime.now(dt.UTC)
    if start is not None and start > now:
        raise InvalidInputError(f"start {start.isoformat()} is in the future")
    row = session.scalar(select(Monitor).where(Monitor.endpoint == endpoint))
    before = None if row is None else _info(row).to_dict()
    if row is None:
        row = Monitor(
            endpoint=endpoint,
            window_s=spec.window_s,
            next_window=floor_time(start or now, spec.window_s),
            created_by=actor,
            created_at=now,
        )
        session.add(row)
    elif start is not None:
        row.next_window = floor_time(start, spec.window_s)
        row.labels_seen_at = None
        # Windows from there on are evaluated afresh; their old results would collide.
        session.execute(
            delete(MonitorResult).where(
                MonitorResult.monitor_id == row.id, MonitorResult.window_start >= row.next_window
            )
        )
    elif row.window_s != spec.window_s:
        # Keep what was evaluated: the next window starts where the old one would have.
        row.next_window = floor_time(row.next_window, spec.window_s)
    row.window_s = spec.window_s
    row.delay_s = spec.delay_s
    row.reference = spec.reference
    row.config = spec.config()
    row.enabled = enabled
    row.updated_at = now
    session.flush()
    info = _info(row)
    audit.record(
        session,
        actor=actor,
        action="monitor.set",
        target=endpoint,
        before=before,
        after=info.to_dict(),
        reason=reason,
    )
    return info


def set_monitor(
    ctx: Context,
    endpoint: str,
    spec: MonitorSpec,
    *,
    enabled: bool = True,
    start: dt.datetime | None = None,
    reason: str = "",
) -> MonitorInfo:
    """Create or change the monitor of ``endpoint``; a dataset reference must fit its versions."""
    if spec.reference != TRAINING:
        _check_reference_fits(ctx, endpoint, spec.reference)
    with ctx.store.write() as session:
        return set_monitor_in(session, endpoint, spec, ctx.actor, enabled=enabled, start=start, reason=reason)


def get_monitor(ctx: Context, endpoint: str) -> MonitorInfo:
    with ctx.store.read() as session:
        row = session.scalar(select(Monitor).where(Monitor.endpoint == endpoint))
        if row is None:
            raise NotFoundError(f"endpoint {endpoint!r} has no monitor")
        return _info(row)


def list_monitors(ctx: Context) -> list[MonitorInfo]:
    with ctx.store.read() as session:
        return [_info(r) for r in session.scalars(select(Monitor).order_by(Monitor.endpoint))]


def remove_monitor(ctx: Context, endpoint: str, *, reason: str = "") -> None:
    """Remove the monitor; its stored results stay, readable by :func:`results`."""
    with ctx.store.write() as session:
        row = session.scalar(select(Monitor).where(Monitor.endpoint == endpoint))
        if row is None:
            raise NotFoundError(f"endpoint {endpoint!r} has no monitor")
        before = _info(row).to_dict()
        row.enabled = False
        audit.record(
            session,
            actor=ctx.actor,
            action="monitor.remove",
            target=endpoint,
            before=before,
            after=None,
            reason=reason,
        )


def parse_spec(
    *,
    window: str | int | None = None,
    delay: str | int | None = None,
    reference: str | None = None,
    drift: Mapping[str, Any] | None = None,
    metric: str | None = None,
    label_column: str | None = None,
    base: MonitorSpec | None = None,
) -> MonitorSpec:
    """A spec from readable parts (``window="1h"``), the unspecified ones taken from ``base``."""
    base = base or MonitorSpec()

    def seconds(value: str | int | None, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, int):
            return value
        if value.strip() in ("0", "0s"):
            return 0  # no delay is a valid choice, unlike a zero-length window
        return int(parse_duration(value))

    return MonitorSpec(
        window_s=seconds(window, base.window_s),
        delay_s=seconds(delay, base.delay_s),
        reference=reference or base.reference,
        drift=dict(base.drift) | dict(drift or {}),
        metric=metric if metric is not None else base.metric,
        label_column=label_column if label_column is not None else base.label_column,
    )


# ---------------------------------------------------------------------------------------
# references


def _policy(session: Session, endpoint: str) -> tuple[Policy, dt.datetime]:
    row = session.execute(
        select(EndpointRevision.policy, EndpointRevision.created_at)
        .join(Endpoint, Endpoint.id == EndpointRevision.endpoint_id)
        .where(and_(Endpoint.name == endpoint, EndpointRevision.number == Endpoint.current_revision))
    ).first()
    if row is None:
        raise NotFoundError(f"endpoint {endpoint!r} does not exist")
    return Policy.model_validate(row.policy), row.created_at


def _reference_name(version: VersionInfo, reference: str) -> str:
    if reference != TRAINING:
        return reference
    if not version.dataset:
        raise InvalidInputError(
            f"{version.ref} was registered without a training dataset; give the monitor a reference "
            "(--reference DATASET)"
        )
    return version.dataset


def _check_reference_fits(ctx: Context, endpoint: str, reference: str) -> None:
    data = Datasets(ctx).get(reference)
    have = {c["name"] for c in (data.signature or {}).get("columns") or []}
    with ctx.store.read() as session:
        policy, _ = _policy(session, endpoint)
    registry = Registry(ctx)
    for ref in policy.versions():
        info = registry.get_version(ref)
        if info.signature is None:
            continue
        missing = [c.name for c in Signature.from_dict(info.signature).columns if c.name not in have]
        if missing:
            raise InvalidInputError(
                f"reference {data.ref} does not fit {ref}: missing column(s) {', '.join(missing)}"
            )


def _prediction_columns(outputs: pd.DataFrame | None, classes: list[Any] | None) -> list[str]:
    return [PREDICTION] + ([SCORE] if classes is not None and len(classes) == 2 else [])


def _model_outputs(
    ctx: Context, version: VersionInfo, frame: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray[Any, Any] | None, list[Any] | None]:
    """The version's predictions on the reference, as the columns a window holds."""
    model = Registry(ctx).load(version.ref)
    table = model.prepare(frame)
    predicted = model.predictor.predict(table)
    proba = model.predictor.predict_proba(table) if model.has_proba else None
    classes = model.classes
    out = pd.DataFrame(index=frame.index)
    out[PREDICTION] = _prediction_series(list(predicted), classes is not None)
    if proba is not None and classes is not None and len(classes) == 2:
        out[SCORE] = proba[:, 1].astype(np.float64)
    return out, proba, classes


def _prediction_series(values: Sequence[Any], classifier: bool) -> pd.Series[Any]:
    if classifier:
        # Classes are compared as categories, whatever their type.
        return pd.Series([None if v is None else str(v) for v in values], dtype=object)
    return pd.Series([math.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass
class _Reference:
    name: str
    stats: ReferenceStats
    classes: list[Any] | None
    calibrator: performance.Calibrator | None


def _build_reference(
    ctx: Context, version: VersionInfo, name: str, spec: MonitorSpec
) -> tuple[dict[str, Any], int, str]:
    datasets = Datasets(ctx)
    info = datasets.get(name)
    frame = datasets.load(name)
    if len(frame) > MAX_REFERENCE_ROWS:
        frame = frame.sample(MAX_REFERENCE_ROWS, random_state=0).reset_index(drop=True)
    signature = Signature.from_dict(version.signature) if version.signature else None
    if signature is not None:
        missing = [c.name for c in signature.columns if c.name not in frame.columns]
        if missing:
            raise InvalidInputError(
                f"reference {info.ref} does not fit {version.ref}: missing column(s) {', '.join(missing)}"
            )
    outputs, proba, classes = _model_outputs(ctx, version, frame)
    predictions = _prediction_columns(outputs, classes)
    features = frame[[c.name for c in signature.columns]] if signature is not None else frame
    stats = ReferenceStats.from_frame(
        pd.concat([features.reset_index(drop=True), outputs.reset_index(drop=True)], axis=1),
        signature,
        predictions=predictions,
        config=spec.drift_config(),
    )
    stored: dict[str, Any] = {"stats": stats.to_dict(), "classes": classes}
    label = spec.label_column
    if label is None and signature is not None:
        extra = [c for c in frame.columns if c not in signature.names]
        label = extra[0] if len(extra) == 1 else None
    if proba is not None and classes is not None and label is not None and label in frame.columns:
        keep = frame[label].notna().to_numpy()
        take = np.flatnonzero(keep)[:CALIBRATION_ROWS]
        stored["calibration"] = {
            "label_column": label,
            "proba": proba[take].tolist(),
            "labels": [str(v) for v in frame[label].to_numpy()[take]],
        }
    return stored, len(frame), info.fingerprint


_REFERENCE_CACHE: dict[tuple[str, int, str, str], _Reference] = {}


def reference_for(ctx: Context, version: VersionInfo, spec: MonitorSpec) -> _Reference:
    """The reference statistics of ``version``: read from the store, or computed once and stored."""
    name = _reference_name(version, spec.reference)
    full = Datasets(ctx).get(name).ref
    with ctx.store.read() as session:
        row = session.scalar(
            select(ReferenceProfile).where(
                ReferenceProfile.model == version.model,
                ReferenceProfile.version == version.number,
                ReferenceProfile.reference == full,
            )
        )
        stored = None if row is None else (row.stats, row.fingerprint)
    if stored is None:
        data, rows, fingerprint = _build_reference(ctx, version, full, spec)
        with ctx.store.write() as session:
            exists = session.scalar(
                select(ReferenceProfile.id).where(
                    ReferenceProfile.model == version.model,
                    ReferenceProfile.version == version.number,
                    ReferenceProfile.reference == full,
                )
            )
            if exists is None:
                session.add(
                    ReferenceProfile(
                        model=version.model,
                        version=version.number,
                        reference=full,
                        fingerprint=fingerprint,
                        rows=rows,
                        stats=data,
                    )
                )
        stored = (data, fingerprint)
    key = (version.model, version.number, full, stored[1])
    cached = _REFERENCE_CACHE.get(key)
    if cached is None:
        data = stored[0]
        calibrator = None
        cal = data.get("calibration")
        if cal and data.get("classes"):
            classes = [str(c) for c in data["classes"]]
            try:
                calibrator = performance.Calibrator.fit(cal["proba"], cal["labels"], classes)
            except InvalidInputError as exc:
                logger.info("no calibration on %s for %s: %s", full, version.ref, exc)
        cached = _Reference(full, ReferenceStats.from_dict(data["stats"]), data.get("classes"), calibrator)
        _REFERENCE_CACHE[key] = cached
    return cached


# ---------------------------------------------------------------------------------------
# evaluation


def _input_frames(
    ctx: Context, endpoint: str, model: str, version: int, since: dt.datetime, until: dt.datetime
) -> Iterator[tuple[pd.DataFrame, list[dict[str, Any]]]]:
    """The window's logged inputs and outputs, in chunks, as the columns of a reference."""
    last: tuple[dt.datetime, str] | None = None
    while True:
        query = (
            select(Prediction.at, Prediction.id, Prediction.inputs, Prediction.outputs)
            .where(
                Prediction.endpoint == endpoint,
                Prediction.model == model,
                Prediction.version == version,
                Prediction.at >= since,
                Prediction.at < until,
            )
            .order_by(Prediction.at, Prediction.id)
            .limit(_CHUNK)
        )
        if last is not None:
            query = query.where(
                (Prediction.at > last[0]) | and_(Prediction.at == last[0], Prediction.id > last[1])
            )
        with ctx.store.read() as session:
            rows = session.execute(query).all()
        if not rows:
            return
        last = (rows[-1].at, rows[-1].id)
        yield pd.DataFrame.from_records([r.inputs or {} for r in rows]), [r.outputs or {} for r in rows]
        if len(rows) < _CHUNK:
            return


def _window_sketch(
    ctx: Context,
    endpoint: str,
    model: str,
    version: int,
    since: dt.datetime,
    until: dt.datetime,
    ref: _Reference,
) -> WindowSketch:
    sketch = ref.stats.window()
    classifier = ref.classes is not None
    positive = str(ref.classes[1]) if ref.classes is not None and len(ref.classes) == 2 else None
    for inputs, outputs in _input_frames(ctx, endpoint, model, version, since, until):
        frame = inputs.copy()
        frame[PREDICTION] = _prediction_series([o.get("prediction") for o in outputs], classifier)
        if positive is not None and SCORE in ref.stats.specs:
            frame[SCORE] = [float((o.get("proba") or {}).get(positive, math.nan)) for o in outputs]
        sketch.update(frame)
    return sketch


def _drift_figures(report: DriftReport) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "drift.share": report.share_drifted,
        "drift.columns": float(sum(1 for c in report.features if c.drifted)),
        "drift.prediction": float(any(c.drifted for c in report.predictions)),
        "schema.changed": float(report.schema.changed),
    }
    if report.multivariate is not None:
        out["drift.multivariate"] = float(report.multivariate.drifted)
    for col in report.columns:
        if col.status != "insufficient data":
            out[f"drift.column.{col.column}"] = float(col.drifted)
    return out


def _ops_figures(summary: serving_figures.FigureSummary | None, window_s: int) -> dict[str, float | None]:
    if summary is None or summary.requests == 0:
        return {"requests": 0.0}
    rows = summary.rows + summary.rejected_rows
    out: dict[str, float | None] = {
        "requests": float(summary.requests),
        "requests.per_s": summary.requests / window_s,
        "errors.rate": summary.error_rate,
        "latency.p50_ms": summary.p50_ms,
        "latency.p95_ms": summary.p95_ms,
        "latency.p99_ms": summary.p99_ms,
        "schema.rejected_share": summary.rejected_rows / rows if rows else 0.0,
        "shadow.dropped": float(summary.shadow_dropped),
    }
    if summary.shadow_compared:
        out["shadow.disagreement"] = summary.disagreement_rate
    return out


def _merge_summaries(
    summaries: Sequence[serving_figures.FigureSummary],
) -> serving_figures.FigureSummary | None:
    if not summaries:
        return None
    hist: list[int] = []
    for s in summaries:
        hist = serving_figures.add_hist(hist, s.latency_hist)
    requests = sum(s.requests for s in summaries)
    errors = sum(s.errors for s in summaries)
    compared = sum(s.shadow_compared for s in summaries)
    disagreed = sum(s.shadow_disagreed for s in summaries)
    rejections: dict[str, int] = {}
    for s in summaries:
        for k, v in s.rejections.items():
            rejections[k] = rejections.get(k, 0) + v
    return serving_figures.FigureSummary(
        model="",
        version=0,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        rows=sum(s.rows for s in summaries),
        rejected_rows=sum(s.rejected_rows for s in summaries),
        rejections=rejections,
        p50_ms=serving_figures.histogram_percentile(hist, 50),
        p95_ms=serving_figures.histogram_percentile(hist, 95),
        p99_ms=serving_figures.histogram_percentile(hist, 99),
        shadow_compared=compared,
        shadow_disagreed=disagreed,
        disagreement_rate=disagreed / compared if compared else 0.0,
        shadow_dropped=sum(s.shadow_dropped for s in summaries),
        latency_hist=hist,
    )


_FIGURE_NAMES = {"roc_auc": "auc"}


def _metric_figures(prefix: str, metrics: Mapping[str, performance.Metric]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, m in metrics.items():
        key = f"{prefix}.{_FIGURE_NAMES.get(name, name)}"
        if m.value is None or (isinstance(m.value, float) and math.isnan(m.value)):
            continue
        out[key] = float(m.value)
        out[f"{key}.low"] = float(m.low)
        out[f"{key}.high"] = float(m.high)
    return out


def _performance(
    ctx: Context,
    endpoint: str,
    model: str,
    version: int,
    since: dt.datetime,
    until: dt.datetime,
    ref: _Reference | None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Realized figures on the labelled predictions of the window, estimated ones on all of them."""
    figures: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    frame = feedback.labelled(ctx, endpoint, since, until, model, version, include_unlabelled=True)
    if frame.empty:
        return figures, details
    labelled = frame[frame["label"].notna()]
    figures["labels.coverage"] = len(labelled) / len(frame)
    if len(labelled):
        lag = (labelled["label_at"] - labelled["at"]).dt.total_seconds()
        figures["labels.lag_p50_s"] = float(lag.median())
        metrics = performance.evaluate(labelled)
        figures["performance.n"] = float(len(labelled))
        figures |= _metric_figures("performance", metrics)
        details["performance"] = {k: m.to_dict() for k, m in metrics.items()}
    if performance.frame_classes(frame):
        try:
            report = feedback.estimated_performance(
                ctx,
                endpoint,
                since,
                until,
                model=model,
                version=version,
                calibrator=ref.calibrator if ref is not None else None,
            )
        except InvalidInputError as exc:
            details["estimated_error"] = str(exc)
        else:
            figures |= _metric_figures("estimated", {f.name: f.estimated for f in report.figures})
            details["estimated"] = report.to_dict()
    return figures, details


@dataclass
class _Row:
    model: str
    version: int
    status: str
    rows: int
    figures: dict[str, float | None]
    details: dict[str, Any]


def _status(
    rows: int, requests: float | None, report: DriftReport | None, error: str | None, skipped: bool
) -> str:
    if error is not None:
        return "error"
    if rows == 0 and not requests:
        return "no_traffic"
    if report is None and skipped:
        return "ok"
    if report is None or report.status == "insufficient data":
        return "insufficient"
    return "drift" if report.status == "drift" else "ok"


def _versions_in(
    ctx: Context, endpoint: str, since: dt.datetime, until: dt.datetime
) -> dict[tuple[str, int], int]:
    with ctx.store.read() as session:
        rows = session.execute(
            select(Prediction.model, Prediction.version, func.count())
            .where(Prediction.endpoint == endpoint, Prediction.at >= since, Prediction.at < until)
            .group_by(Prediction.model, Prediction.version)
        ).all()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def evaluate_window(
    ctx: Context,
    endpoint: str,
    since: dt.datetime,
    until: dt.datetime,
    spec: MonitorSpec,
    *,
    carried: Mapping[tuple[str, int], dt.datetime] | None = None,
) -> list[_Row]:
    """The rows of one window, without storing anything.

    ``carried`` gives, per version, an earlier start for the drift comparison: the windows
    merged into this one because they held too few rows of that version to judge. Operational
    figures, performance and ``rows`` stay those of the window.
    """
    carried = carried or {}
    with ctx.store.read() as session:
        policy, _ = _policy(session, endpoint)
    config = spec.drift_config()
    redacted = frozenset(policy.redact)
    if redacted:
        # Redacted columns never reach the log: they are not compared, not reported missing, and
        # the multivariate check, which needs every numeric feature of a row, is left out.
        config = dataclasses.replace(config, ignore=config.ignore | redacted, multivariate=False)
    registry = Registry(ctx)
    counts = _versions_in(ctx, endpoint, since, until)
    ops = serving_figures.summary(ctx.store, endpoint, since=since, until=until)
    versions = sorted(set(counts) | set(ops))
    out: list[_Row] = []
    for model, number in versions:
        figures: dict[str, float | None] = {}
        details: dict[str, Any] = {}
        error: str | None = None
        report: DriftReport | None = None
        rows = counts.get((model, number), 0)
        ref: _Reference | None = None
        try:
            info = registry.get_version(f"{model}:{number}")
            if spec.reference == TRAINING and not info.dataset:
                # Operational figures and performance still count; drift needs a reference.
                details["drift_skipped"] = f"{info.ref} has no training dataset to compare with"
            else:
                ref = reference_for(ctx, info, spec)
                details["reference"] = ref.name
            begins = carried.get((model, number), since)
            if (rows or begins < since) and ref is not None:
                sketch = _window_sketch(ctx, endpoint, model, number, begins, until, ref)
                report = compute_drift(ref.stats, sketch, config)
                if redacted:
                    missing = {k: v for k, v in report.schema.missing_columns.items() if k not in redacted}
                    report = dataclasses.replace(
                        report, schema=dataclasses.replace(report.schema, missing_columns=missing)
                    )
                details["drift"] = report.to_dict()
                details["sketch"] = sketch.to_dict()
                if report.status != "insufficient data":
                    figures |= _drift_figures(report)
        except PasserelleError as exc:
            error = str(exc)
            details["error"] = error
        figures |= _ops_figures(ops.get((model, number)), spec.window_s)
        figures["rows"] = float(rows)
        perf, perf_details = _performance(ctx, endpoint, model, number, since, until, ref)
        figures |= perf
        details |= perf_details
        out.append(
            _Row(
                model,
                number,
                _status(rows, figures.get("requests"), report, error, "drift_skipped" in details),
                rows,
                figures,
                details,
            )
        )

    total = _merge_summaries(list(ops.values()))
    overall: dict[str, float | None] = _ops_figures(total, spec.window_s)
    all_rows = sum(n for n in counts.values())
    overall["rows"] = float(all_rows)
    overall_details: dict[str, Any] = {}
    if len(policy.routes) == 2:
        metric = spec.metric or _default_metric(out)
        try:
            # Every labelled prediction of the two versions counts, whichever revision served it.
            verdict = feedback.ab_test(ctx, endpoint, until=until, metric=metric)
        except PasserelleError as exc:
            overall_details["ab_error"] = str(exc)
        else:
            overall_details["verdict"] = verdict.to_dict() | {"message": verdict.message}
            if verdict.verdict != "not enough data yet":
                overall["ab.b_better"] = float(verdict.verdict == "B better")
    statuses = {r.status for r in out}
    status = (
        "no_traffic"
        if not out or statuses == {"no_traffic"}
        else next((s for s in ("error", "drift", "ok", "insufficient") if s in statuses), "ok")
    )
    out.append(_Row("", 0, status, all_rows, overall, overall_details))
    return out


def _default_metric(rows: Sequence[_Row]) -> str:
    for row in rows:
        if "performance.auc" in row.figures or "estimated.auc" in row.figures:
            return "roc_auc"
        if "performance.rmse" in row.figures:
            return "rmse"
    return "accuracy"


def _result_info(row: MonitorResult) -> ResultInfo:
    return ResultInfo(
        endpoint=row.endpoint,
        window_start=row.window_start,
        window_end=row.window_end,
        model=row.model,
        version=row.version,
        status=row.status,
        rows=row.rows,
        figures=dict(row.figures or {}),
        details=dict(row.details or {}),
        evaluated_at=row.evaluated_at,
    )


def _holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _relabel(ctx: Context, monitor: MonitorInfo, spec: MonitorSpec, now: dt.datetime) -> int:
    """Recompute the performance figures of evaluated windows that received labels since the last run."""
    seen = monitor_labels_seen(ctx, monitor.endpoint)
    with ctx.store.read() as session:
        query = select(Feedback.prediction_at).where(
            Feedback.endpoint == monitor.endpoint, Feedback.prediction_at < monitor.next_window
        )
        if seen is not None:
            query = query.where(Feedback.received_at > seen)
        starts = {floor_time(at, monitor.window_s) for (at,) in session.execute(query)}
    changed = 0
    registry = Registry(ctx)
    for start in sorted(starts):
        end = start + dt.timedelta(seconds=monitor.window_s)
        with ctx.store.read() as session:
            stored = session.scalars(
                select(MonitorResult).where(
                    MonitorResult.endpoint == monitor.endpoint,
                    MonitorResult.window_start == start,
                    MonitorResult.version != 0,
                )
            ).all()
            targets = [
                (r.id, r.model, r.version, dict(r.figures or {}), dict(r.details or {})) for r in stored
            ]
        for rid, model, number, figs, details in targets:
            ref = None
            # Without its reference a window still gets realized figures, just no calibration.
            with contextlib.suppress(PasserelleError):
                ref = reference_for(ctx, registry.get_version(f"{model}:{number}"), spec)
            perf, perf_details = _performance(ctx, monitor.endpoint, model, number, start, end, ref)
            figs = {
                k: v for k, v in figs.items() if not k.startswith(("performance.", "estimated.", "labels."))
            }
            details = {k: v for k, v in details.items() if k not in ("performance", "estimated")}
            with ctx.store.write() as session:
                result = session.get(MonitorResult, rid)
                if result is not None:
                    result.figures = _json_figures(figs | perf)
                    result.details = details | perf_details
            changed += 1
    with ctx.store.write() as session:
        row = session.scalar(select(Monitor).where(Monitor.endpoint == monitor.endpoint))
        if row is not None:
            row.labels_seen_at = now
    return changed


def monitor_labels_seen(ctx: Context, endpoint: str) -> dt.datetime | None:
    with ctx.store.read() as session:
        return session.scalar(select(Monitor.labels_seen_at).where(Monitor.endpoint == endpoint))


def _carried(
    ctx: Context, endpoint: str, start: dt.datetime, window_s: int
) -> dict[tuple[str, int], dt.datetime]:
    """Per version, the start of the run of insufficient windows just before ``start``, if any.

    Read from the stored results, so a version with little traffic (a 10% challenger) keeps
    accumulating while the busy ones are judged window by window.
    """
    with ctx.store.read() as session:
        stored = session.execute(
            select(
                MonitorResult.model, MonitorResult.version, MonitorResult.window_start, MonitorResult.status
            )
            .where(
                MonitorResult.endpoint == endpoint,
                MonitorResult.version != 0,
                MonitorResult.window_start < start,
                MonitorResult.window_start >= start - MAX_CARRIED_WINDOWS * dt.timedelta(seconds=window_s),
            )
            .order_by(MonitorResult.window_start.desc())
        ).all()
    out: dict[tuple[str, int], dt.datetime] = {}
    closed: set[tuple[str, int]] = set()
    for model, version, window_start, status in stored:
        key = (model, version)
        if key in closed:
            continue
        if status == "insufficient":
            out[key] = window_start
        else:
            closed.add(key)
    return out


def run_monitor(
    ctx: Context,
    endpoint: str,
    *,
    now: dt.datetime | None = None,
    holder: str | None = None,
    max_windows: int = MAX_WINDOWS_PER_RUN,
) -> RunSummary:
    """Evaluate every closed window of one monitor not evaluated yet, under its lease."""
    now = now or dt.datetime.now(dt.UTC)
    holder = holder or _holder()
    lease = f"monitor:{endpoint}"
    monitor = get_monitor(ctx, endpoint)
    if not monitor.enabled:
        return RunSummary(endpoint, 0, [], [], 0, skipped="disabled")
    if not leases.acquire(ctx.store, lease, holder, _LEASE_TTL_S):
        return RunSummary(endpoint, 0, [], [], 0, skipped="another process is evaluating it")
    try:
        spec = monitor.spec
        step = dt.timedelta(seconds=monitor.window_s)
        delay = dt.timedelta(seconds=monitor.delay_s)
        stored: list[ResultInfo] = []
        transitions: list[alerts.Transition] = []
        windows = 0
        while windows < max_windows:
            monitor = get_monitor(ctx, endpoint)
            start = monitor.next_window
            end = start + step
            if end + delay > now:
                break
            rows = evaluate_window(
                ctx, endpoint, start, end, spec, carried=_carried(ctx, endpoint, start, monitor.window_s)
            )
            with ctx.store.write() as session:
                row = session.scalar(select(Monitor).where(Monitor.endpoint == endpoint))
                if row is None or row.next_window != start:
                    break  # removed or moved by someone else: never evaluate a window twice
                results = [
                    MonitorResult(
                        monitor_id=row.id,
                        endpoint=endpoint,
                        window_start=start,
                        window_end=end,
                        model=r.model,
                        version=r.version,
                        status=r.status,
                        rows=r.rows,
                        figures=_json_figures(r.figures),
                        details=r.details,
                        evaluated_at=now,
                    )
                    for r in rows
                ]
                session.add_all(results)
                session.flush()
                transitions += alerts.evaluate_window(
                    session, endpoint, results, window_start=start, window_end=end, now=now
                )
                row.next_window = end
                failpoint("monitor.before_commit")
                stored += [_result_info(r) for r in results]
            windows += 1
            leases.acquire(ctx.store, lease, holder, _LEASE_TTL_S)
        relabelled = _relabel(ctx, get_monitor(ctx, endpoint), spec, now)
        return RunSummary(endpoint, windows, stored, transitions, relabelled)
    finally:
        leases.release(ctx.store, lease, holder)


def _json_figures(figures: Mapping[str, float | None]) -> dict[str, float | None]:
    # JSON has no NaN: an undefined figure is stored as null, which rules read as "no data".
    return {
        k: (None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v))
        for k, v in figures.items()
    }


def run(
    ctx: Context, endpoint: str | None = None, *, now: dt.datetime | None = None, holder: str | None = None
) -> list[RunSummary]:
    """Run one monitor, or every enabled one; a monitor that fails is logged and the others still run."""
    if endpoint is not None:
        return [run_monitor(ctx, endpoint, now=now, holder=holder)]
    out: list[RunSummary] = []
    for monitor in list_monitors(ctx):
        if not monitor.enabled:
            continue
        try:
            out.append(run_monitor(ctx, monitor.endpoint, now=now, holder=holder))
        except PasserelleError as exc:
            logger.warning("monitor of %s failed: %s", monitor.endpoint, exc)
            out.append(RunSummary(monitor.endpoint, 0, [], [], 0, skipped=str(exc)))
    return out


def results(
    ctx: Context,
    endpoint: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    version: str | None = None,
    details: bool = False,
) -> list[ResultInfo]:
    """Stored results, oldest first; ``version`` "all" or "churn:3" keeps one series."""
    query = select(MonitorResult).where(MonitorResult.endpoint == endpoint)
    if since is not None:
        query = query.where(MonitorResult.window_start >= since)
    if until is not None:
        query = query.where(MonitorResult.window_start < until)
    if version is not None:
        if version == "all":
            query = query.where(MonitorResult.version == 0)
        else:
            name, _, number = version.rpartition(":")
            if not name or not number.isdigit():
                raise InvalidInputError(f"version must be 'all' or like churn:3, got {version!r}")
            query = query.where(MonitorResult.model == name, MonitorResult.version == int(number))
    query = query.order_by(MonitorResult.window_start, MonitorResult.version, MonitorResult.model)
    with ctx.store.read() as session:
        out = [_result_info(r) for r in session.scalars(query)]
    if not details:
        out = [
            ResultInfo(**(asdict(r) | {"details": {k: v for k, v in r.details.items() if k != "sketch"}}))
            for r in out
        ]
    return out


class Scheduler:
    """Runs a server's periodic jobs every ``interval_s``, in a thread: due monitors, queued
    notifications, prediction retention and archiving.

    Every worker of every replica may run one: the monitors' leases make each window's
    evaluation happen once, and the outbox claims rows before sending them. The work happens
    off the request path, in its own thread; drift computations are NumPy-bound and release
    the interpreter lock for most of their time.
    """

    def __init__(self, ctx: Context, *, interval_s: float, holder: str | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.ctx = ctx
        self.interval_s = interval_s
        self.holder = holder or _holder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: completed ticks, for tests and /metrics
        self.ticks = 0

    def jobs(self) -> list[tuple[str, Callable[[], object]]]:
        """The periodic work of a server, in order; each job guards itself with a lease."""
        from passerelle import archive, notify, predictionlog

        return [
            ("monitors", lambda: run(self.ctx, holder=self.holder)),
            ("notifications", lambda: notify.deliver_due(self.ctx)),
            ("prediction retention", lambda: predictionlog.retention_tick(self.ctx, holder=self.holder)),
            ("prediction archive", lambda: archive.archive_tick(self.ctx)),
        ]

    def tick(self) -> None:
        for name, job in self.jobs():
            try:
                job()
            except Exception:
                # One failing job (a database blip, a bad reference) must not stop the others.
                logger.exception("%s could not run; will retry", name)
        self.ticks += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="passerelle-monitors", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _policy_text(policy: Policy) -> str:
    parts = [f"{r.ref} {r.weight}%" for r in policy.routes]
    parts += [f"shadow {s.ref}" + ("" if s.percent >= 100 else f" ({s.percent:g}%)") for s in policy.shadows]
    if policy.canary is not None:
        parts.append(f"canary {policy.canary.ref} at step {policy.canary.weight}%")
    return " · ".join(parts)


def report_data(
    ctx: Context,
    endpoint: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> report.ReportData:
    """What the HTML report of ``endpoint`` shows over ``[since, until)`` (default: the last 7 days).

    Distributions compare the primary version's judged windows of the period, merged, with
    its reference; the windows merged into a later one are left out so no row counts twice.
    """
    now = dt.datetime.now(dt.UTC)
    until = until or now
    since = since or until - dt.timedelta(days=7)
    spec = get_monitor(ctx, endpoint).spec
    with ctx.store.read() as session:
        policy, _ = _policy(session, endpoint)
    stored = results(ctx, endpoint, since=since, until=until, details=True)
    windows = [
        report.WindowPoint(r.window_start, r.window_end, r.ref, r.status, r.rows, r.figures) for r in stored
    ]
    notes: list[str] = []
    primary = policy.primary
    overlays: list[report.Overlay] = []
    drift: dict[str, Any] | None = None
    reference_text = "none"
    try:
        info = Registry(ctx).get_version(primary.ref)
        ref = reference_for(ctx, info, spec)
    except PasserelleError as exc:
        notes.append(f"no distributions: {exc}")
    else:
        reference_text = f"dataset {ref.name}, {ref.stats.rows:,} rows"
        sketches = [
            WindowSketch.from_dict(r.details["sketch"], ref.stats)
            for r in stored
            if r.model == primary.model
            and r.version == primary.version
            and r.status in ("ok", "drift")
            and "sketch" in r.details
        ]
        if sketches:
            merged = merge_windows(sketches)
            judged = compute_drift(ref.stats, merged, spec.drift_config())
            overlays = report.overlays(ref.stats, merged, judged)
            drift = judged.to_dict()
        else:
            notes.append(f"no window of {primary.ref} held enough rows to compare distributions yet")
    verdict = next(
        (r.details["verdict"] for r in reversed(stored) if r.version == 0 and "verdict" in r.details), None
    )
    metric = _FIGURE_NAMES.get(spec.metric or "", spec.metric or "")
    if not metric:
        present = {k for r in stored for k in r.figures}
        metric = next(
            (
                m
                for m in ("auc", "accuracy", "rmse")
                if f"performance.{m}" in present or f"estimated.{m}" in present
            ),
            "accuracy",
        )
    if not any(k.startswith("performance.") for r in stored for k in r.figures):
        notes.append(
            "no labelled predictions yet: performance is estimated where the model gives probabilities"
        )
    return report.ReportData(
        endpoint=endpoint,
        generated_at=now,
        since=since,
        until=until,
        policy=_policy_text(policy),
        windows=windows,
        overlays=overlays,
        reference=reference_text,
        drift=drift,
        performance_metric=metric,
        verdict=verdict,
        alerts=[a.to_dict() for a in alerts.list_alerts(ctx, endpoint, limit=200)],
        notes=notes,
    )


def write_report(
    ctx: Context,
    endpoint: str,
    path: str | os.PathLike[str],
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> str:
    """Write the self-contained HTML report; returns the path written."""
    return str(report.write(report_data(ctx, endpoint, since=since, until=until), path))
