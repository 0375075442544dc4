"""The periodic work of pipelines: triggers, stale runs, and starting queued runs.

``passerelle serve`` calls :func:`tick` every few seconds (through :class:`Scheduler`). One
caller among all servers does the round, under the ``pipelines`` lease; within it:

1. runs whose heartbeat went stale are marked ``interrupted`` (and a new attempt is queued when
   the definition says ``retry_interrupted``), so nothing stays ``running`` after a crash;
2. each enabled pipeline's schedule, dataset and watched-path triggers are checked, and a
   trigger deferred earlier (cooldown, or a run still active) fires once it may;
3. queued runs that are due are claimed (one conditional UPDATE: exactly one caller wins) and
   executed in worker threads.

Alerts trigger through :func:`alert_trigger`, registered with
:func:`passerelle.alerts.register_pipeline_trigger` by :func:`install_alert_trigger`: it queues
(or defers) a run inside the alert's own transaction and never runs anything inline.

Automatic triggers respect the pipeline's ``cooldown``: after an automatic run is queued,
further triggers within the cooldown are coalesced into one deferred trigger, fired when the
cooldown is over. A storm of alerts or dataset versions therefore yields one run, then at most
one more.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError
from passerelle.pipelines import runs
from passerelle.pipelines.definition import Pipeline, next_schedule
from passerelle.references import parse_dataset_ref
from passerelle.serving.leases import acquire
from passerelle.store.schema import PipelineRecord, PipelineRun

__all__ = [
    "LEASE",
    "STALE_AFTER_S",
    "Scheduler",
    "TickReport",
    "alert_trigger",
    "fire",
    "install_alert_trigger",
    "tick",
]

logger = logging.getLogger("passerelle.pipelines")

#: the lease whose holder does a round of pipeline work
LEASE = "pipelines"
#: a running run without a heartbeat for this long is interrupted (a dozen missed beats)
STALE_AFTER_S = 60.0
#: most trigger deferrals kept in a pipeline's trigger state for display
_SUPPRESSED_SHOWN = 5


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _parse(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass
class TickReport:
    """What one round did (empty when another caller holds the lease)."""

    ticked: bool = False
    interrupted: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list, repr=False)


# ------------------------------------------------------------------------------------- triggers


def path_signature(path: str, pipeline: Pipeline) -> str:
    """A cheap token that changes when a watched path's content may have: sizes and times."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        info = fs.info(inner)
        keys = ("ETag", "etag", "md5", "size", "mtime", "LastModified", "last_modified")
        return "|".join(f"{k}={info[k]}" for k in keys if k in info)
    local = Path(path.removeprefix("file://"))
    if not local.is_absolute():
        local = Path(pipeline.train.workdir or ".") / local
    if not local.exists():
        return "missing"
    if local.is_file():
        stat = local.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    parts = []
    for item in sorted(p for p in local.rglob("*") if p.is_file()):
        stat = item.stat()
        parts.append(f"{item.relative_to(local).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32] + f"/{len(parts)}"


def _defer(state: dict[str, Any], trigger: str, detail: dict[str, Any], now: dt.datetime, why: str) -> None:
    state["pending"] = {"trigger": trigger, "detail": detail, "at": _iso(now)}
    state["suppressed"] = int(state.get("suppressed", 0)) + 1
    recent = [*state.get("recent_suppressed", []), {"trigger": trigger, "at": _iso(now), "why": why}]
    state["recent_suppressed"] = recent[-_SUPPRESSED_SHOWN:]


def fire(
    session: Session,
    record: PipelineRecord,
    trigger: str,
    detail: dict[str, Any],
    now: dt.datetime,
    *,
    actor: str,
) -> PipelineRun | None:
    """An automatic trigger of ``record`` (locked by the caller): queue a run, or defer the trigger.

    Deferred while the pipeline's cooldown runs since its last automatic run, or while it has as
    many active runs as its concurrency allows; the latest deferred trigger fires later.
    """
    pipeline = Pipeline.model_validate(record.definition)
    state = dict(record.trigger_state)
    last = _parse(state.get("last_auto_at"))
    active = len(runs._active(session, record.name))
    why = None
    if last is not None and (now - last).total_seconds() < pipeline.cooldown:
        left = pipeline.cooldown - (now - last).total_seconds()
        why = f"cooldown ({left:.0f} s left)"
    elif active >= pipeline.concurrency:
        why = "a run is still active"
    if why is not None:
        _defer(state, trigger, detail, now, why)
        record.trigger_state = state
        return None
    row = runs.queue_in(session, record, trigger, detail, actor=actor, reason=f"{trigger} trigger")
    state["last_auto_at"] = _iso(now)
    state.pop("pending", None)
    record.trigger_state = state
    return row


def _due_triggers(session: Session, record: PipelineRecord, pipeline: Pipeline, now: dt.datetime) -> None:
    """Check the schedule, dataset and path triggers of one pipeline; may update its state."""
    state = dict(record.trigger_state)
    found: list[tuple[str, dict[str, Any]]] = []
    if "schedule" in pipeline.triggers and pipeline.schedule is not None:
        due = _parse(state.get("schedule_next"))
        if due is None:
            state["schedule_next"] = _iso(next_schedule(pipeline.schedule, now))
        elif now >= due:
            # Missed times (a server down for a day) collapse into this one run.
            state["schedule_next"] = _iso(next_schedule(pipeline.schedule, now))
            found.append(("schedule", {"cron": pipeline.schedule, "due": _iso(due)}))
    if "dataset" in pipeline.triggers and pipeline.input is not None:
        if pipeline.input.dataset is not None:
            name, _ = parse_dataset_ref(pipeline.input.dataset)
            latest = runs._latest_dataset_number(session, name)
            seen = int(state.get("dataset_seen", 0))
            if latest is not None and latest > seen:
                state["dataset_seen"] = latest
                found.append(("dataset", {"dataset_version": f"{name}:{latest}"}))
        elif pipeline.input.path is not None:
            checked = _parse(state.get("path_checked_at"))
            if checked is None or (now - checked).total_seconds() >= pipeline.watch_interval:
                state["path_checked_at"] = _iso(now)
                signature: str | None
                try:
                    signature = path_signature(pipeline.input.path, pipeline)
                except (OSError, ValueError, ImportError) as exc:
                    logger.warning("pipeline %s: cannot check %s: %s", record.name, pipeline.input.path, exc)
                    signature = state.get("path_seen")
                if signature != state.get("path_seen") and signature != "missing":
                    state["path_seen"] = signature
                    found.append(("dataset", {"path": pipeline.input.path, "signature": signature}))
    record.trigger_state = state
    if not found and state.get("pending"):
        pending = state["pending"]
        found.append((pending["trigger"], dict(pending["detail"])))
    for trigger, detail in found[-1:]:
        # Several triggers in one round make one run: the last found names why.
        if len(found) > 1:
            detail = {**detail, "also": [t for t, _ in found[:-1]]}
        fire(session, record, trigger, detail, now, actor=f"{trigger}-trigger")


# ---------------------------------------------------------------------------------------- tick


def _interrupt_stale(
    ctx: Context, now: dt.datetime, stale_after_s: float, actor: str
) -> tuple[list[str], list[str]]:
    limit = now - dt.timedelta(seconds=stale_after_s)
    interrupted: list[str] = []
    queued: list[str] = []
    with ctx.store.write() as session:
        stale = session.scalars(
            select(PipelineRun)
            .where(PipelineRun.state == "running", PipelineRun.heartbeat_at < limit)
            .with_for_update()
        ).all()
        for row in stale:
            row.state = "interrupted"
            row.finished_at = now
            seen = row.heartbeat_at.isoformat() if row.heartbeat_at else "never"
            row.error = (
                f"no heartbeat since {seen} from {row.holder}: the process running it stopped "
                "(a server restart or a crash)"
            )
            audit.record(
                session,
                actor=actor,
                action="pipeline.run.interrupted",
                target=f"pipeline:{row.pipeline}#{row.number}",
                before={"state": "running", "holder": row.holder},
                after={"state": "interrupted", "run": row.id},
                reason=f"heartbeat older than {stale_after_s:g} s",
            )
            interrupted.append(row.id)
            session.flush()
            retry = runs.queue_retry(session, row, now, actor=actor)
            if retry is not None:
                queued.append(retry.id)
    return interrupted, queued


def _triggers(ctx: Context, now: dt.datetime) -> list[str]:
    queued: list[str] = []
    with ctx.store.read() as session:
        names = list(session.scalars(select(PipelineRecord.name).where(PipelineRecord.enabled.is_(True))))
    for name in names:
        try:
            with ctx.store.write() as session:
                record = session.scalar(
                    select(PipelineRecord).where(PipelineRecord.name == name).with_for_update()
                )
                if record is None or not record.enabled:
                    continue
                before = set(session.scalars(select(PipelineRun.id).where(PipelineRun.pipeline == name)))
                _due_triggers(session, record, Pipeline.model_validate(record.definition), now)
                session.flush()
                after = set(session.scalars(select(PipelineRun.id).where(PipelineRun.pipeline == name)))
                queued.extend(sorted(after - before))
        except PasserelleError as exc:
            logger.warning("pipeline %s: triggers not checked: %s", name, exc)
    return queued


def _due_runs(ctx: Context, now: dt.datetime) -> list[tuple[str, str, int]]:
    with ctx.store.read() as session:
        rows = session.execute(
            select(PipelineRun.id, PipelineRun.pipeline, PipelineRun.definition)
            .where(
                PipelineRun.state == "queued",
                (PipelineRun.not_before.is_(None)) | (PipelineRun.not_before <= now),
            )
            .order_by(PipelineRun.created_at, PipelineRun.number)
        ).all()
    return [(r[0], r[1], int((r[2] or {}).get("concurrency", 1))) for r in rows]


def _running(ctx: Context, pipeline: str) -> int:
    with ctx.store.read() as session:
        return len(
            session.scalars(
                select(PipelineRun.id).where(PipelineRun.pipeline == pipeline, PipelineRun.state == "running")
            ).all()
        )


def _thread_start(ctx: Context, holder: str) -> Callable[[str], threading.Thread]:
    def start(run_id: str) -> threading.Thread:
        def work() -> None:
            try:
                runs.run_claimed(ctx, run_id, holder)
            except Exception:
                logger.exception("pipeline run %s stopped on an unexpected error", run_id)

        thread = threading.Thread(target=work, name=f"pipeline-run-{run_id}", daemon=True)
        thread.start()
        return thread

    return start


def tick(
    ctx: Context,
    holder: str,
    *,
    now: dt.datetime | None = None,
    capacity: int = 2,
    start: Callable[[str], threading.Thread | None] | None = None,
    stale_after_s: float = STALE_AFTER_S,
    lease_ttl_s: float = 30.0,
) -> TickReport:
    """One round of pipeline work for ``holder`` (see the module's documentation).

    ``capacity`` bounds the runs this caller starts now; ``start(run_id)`` executes a run the
    round claimed (default: a daemon thread running :func:`passerelle.pipelines.run_claimed`;
    pass a function that runs it inline to execute within the call).
    """
    report = TickReport()
    if not acquire(ctx.store, LEASE, holder, ttl_s=lease_ttl_s):
        return report
    report.ticked = True
    now = now or dt.datetime.now(dt.UTC)
    report.interrupted, report.queued = _interrupt_stale(ctx, now, stale_after_s, holder)
    report.queued += _triggers(ctx, now)
    launch = start or _thread_start(ctx, holder)
    running: dict[str, int] = {}
    for run_id, pipeline, concurrency in _due_runs(ctx, now):
        if len(report.started) >= capacity:
            break
        if pipeline not in running:
            running[pipeline] = _running(ctx, pipeline)
        if running[pipeline] >= concurrency:
            continue
        if not runs.claim(ctx, run_id, holder, now=now):
            continue
        running[pipeline] += 1
        report.started.append(run_id)
        thread = launch(run_id)
        if thread is not None:
            report.threads.append(thread)
    return report


# --------------------------------------------------------------------------------------- alerts


def alert_trigger(session: Session, pipeline: str, payload: dict[str, Any]) -> None:
    """What :mod:`passerelle.alerts` calls when an alert whose rule names ``pipeline`` fires."""
    record = session.scalar(select(PipelineRecord).where(PipelineRecord.name == pipeline).with_for_update())
    if record is None:
        raise NotFoundError(f"pipeline {pipeline!r} does not exist")
    definition = Pipeline.model_validate(record.definition)
    if "alert" not in definition.triggers:
        raise InvalidInputError(
            f"pipeline {pipeline!r} does not accept alert triggers "
            f"(triggers: {', '.join(definition.triggers)})"
        )
    if not record.enabled:
        raise InvalidInputError(f"pipeline {pipeline!r} is disabled")
    detail = {
        key: payload.get(key)
        for key in ("alert_id", "rule", "endpoint", "fingerprint", "model", "version", "value", "summary")
    }
    fire(session, record, "alert", detail, dt.datetime.now(dt.UTC), actor="alert-trigger")


_installed_lock = threading.Lock()
_installed: dict[str, Any] = {"count": 0, "unregister": None}


def install_alert_trigger() -> Callable[[], None]:
    """Register :func:`alert_trigger` with the alerts once per process; returns its release.

    Each caller releases its own registration; the trigger goes when the last one does.
    """
    from passerelle import alerts

    with _installed_lock:
        if _installed["count"] == 0:
            _installed["unregister"] = alerts.register_pipeline_trigger(alert_trigger)
        _installed["count"] += 1
    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()
        with _installed_lock:
            _installed["count"] -= 1
            if _installed["count"] == 0 and _installed["unregister"] is not None:
                _installed["unregister"]()
                _installed["unregister"] = None

    return release


# ------------------------------------------------------------------------------------- scheduler


class Scheduler:
    """Calls :func:`tick` every ``interval_s`` in a thread and executes runs in worker threads.

    ``stop()`` stops the running runs' process groups and marks them ``interrupted`` (a new
    attempt is queued when the definition allows), so a server that shuts down leaves no run
    behind as ``running``.
    """

    def __init__(
        self, ctx: Context, *, interval_s: float = 5.0, holder: str | None = None, max_runs: int = 2
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.ctx = ctx
        self.interval_s = interval_s
        self.holder = holder or runs.default_holder()
        self.max_runs = max_runs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()
        self._release_alerts: Callable[[], None] | None = None
        #: completed rounds, for tests and /metrics
        self.ticks = 0

    def _start_run(self, run_id: str) -> threading.Thread:
        abort = threading.Event()

        def work() -> None:
            try:
                runs.run_claimed(self.ctx, run_id, self.holder, abort=abort)
            except Exception:
                logger.exception("pipeline run %s stopped on an unexpected error", run_id)
            finally:
                with self._lock:
                    self._workers.pop(run_id, None)

        thread = threading.Thread(target=work, name=f"pipeline-run-{run_id}", daemon=True)
        with self._lock:
            self._workers[run_id] = (thread, abort)
        thread.start()
        return thread

    def tick(self) -> TickReport:
        with self._lock:
            free = self.max_runs - len(self._workers)
        try:
            report = tick(
                self.ctx,
                self.holder,
                capacity=max(free, 0),
                start=self._start_run,
                lease_ttl_s=max(30.0, self.interval_s * 3),
            )
        except Exception:
            logger.exception("pipeline triggers could not run; will retry")
            report = TickReport()
        self.ticks += 1
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._release_alerts = install_alert_trigger()
            self._thread = threading.Thread(target=self._loop, name="passerelle-pipelines", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            workers = list(self._workers.values())
        for _, abort in workers:
            abort.set()
        for thread, _ in workers:
            thread.join(timeout)
        if self._release_alerts is not None:
            self._release_alerts()
            self._release_alerts = None
