"""Stored pipelines and their runs: queue, claim, execute, log, finish, retry.

A run is a row that moves ``queued → running → succeeded | rejected | failed | interrupted``
(or ``cancelled``). Claiming a queued run is one conditional UPDATE, so among every server and
command line racing for it exactly one starts it. The process running it writes a heartbeat
every few seconds; a run whose heartbeat went stale is marked ``interrupted`` by the next
scheduler tick (:mod:`passerelle.pipelines.scheduler`), so nothing stays ``running`` forever.

Every state change is an audit record in the transaction that makes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import fsspec
import pandas as pd
from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle._failpoints import failpoint
from passerelle.artifacts import storage_options_from_settings
from passerelle.context import Context
from passerelle.datasets import Datasets
from passerelle.endpoints import DeploySpec, Endpoints
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PasserelleError,
)
from passerelle.flavors import SavedArtifact, detect
from passerelle.lineage import code_lineage
from passerelle.pipelines import evaluation
from passerelle.pipelines.definition import Pipeline, checked_definitions
from passerelle.policy import CanaryGates
from passerelle.profile import fingerprint_file
from passerelle.references import parse_dataset_ref
from passerelle.registry import PreparedArtifact, Registry, VersionInfo, prepare_artifact
from passerelle.signature import Signature
from passerelle.store.schema import PipelineRecord, PipelineRun

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "PipelineInfo",
    "RunInfo",
    "cancel_run",
    "claim",
    "execute",
    "exit_code",
    "get_pipeline",
    "get_run",
    "list_pipelines",
    "list_runs",
    "logs",
    "register_pipelines",
    "run_claimed",
    "start_run",
    "wait",
]

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "rejected", "failed", "interrupted", "cancelled")
#: seconds between two heartbeats of a running run
HEARTBEAT_S = 5.0
#: lines of a failed command's log kept in the run's error
LOG_TAIL_LINES = 20
#: files of a training output folder that are not the model
OUTPUT_EXTRAS = ("metrics.json", "params.json")
#: written by an entry point's runner beside the model folder it prepared
PREPARED_MANIFEST = ".passerelle-prepared.json"
# A process group gets this long to stop after SIGTERM before SIGKILL.
_KILL_GRACE_S = 5.0


def default_holder() -> str:
    """Who is running runs here: host and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


# -------------------------------------------------------------------------------------- infos


class RunInfo(BaseModel):
    id: str
    pipeline: str
    number: int
    trigger: str
    trigger_detail: dict[str, Any]
    state: str
    attempt: int
    created_at: dt.datetime
    created_by: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    holder: str | None
    heartbeat_at: dt.datetime | None
    not_before: dt.datetime | None
    retry_of: str | None
    inputs: dict[str, Any]
    code: dict[str, Any]
    params: dict[str, Any]
    environment_hash: str
    log_path: str
    model_version: str | None
    evaluation: dict[str, Any]
    promotion: dict[str, Any]
    error: str | None

    @property
    def ref(self) -> str:
        return f"{self.pipeline}#{self.number}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()


class PipelineInfo(BaseModel):
    name: str
    definition: dict[str, Any]
    source: str
    enabled: bool
    trigger_state: dict[str, Any]
    created_at: dt.datetime
    created_by: str
    updated_at: dt.datetime
    last_run: RunInfo | None = None


def _run_info(row: PipelineRun) -> RunInfo:
    return RunInfo(
        id=row.id,
        pipeline=row.pipeline,
        number=row.number,
        trigger=row.trigger,
        trigger_detail=dict(row.trigger_detail),
        state=row.state,
        attempt=row.attempt,
        created_at=row.created_at,
        created_by=row.created_by,
        started_at=row.started_at,
        finished_at=row.finished_at,
        holder=row.holder,
        heartbeat_at=row.heartbeat_at,
        not_before=row.not_before,
        retry_of=row.retry_of,
        inputs=dict(row.inputs),
        code=dict(row.code),
        params=dict(row.params),
        environment_hash=row.environment_hash,
        log_path=row.log_path,
        model_version=row.model_version,
        evaluation=dict(row.evaluation),
        promotion=dict(row.promotion),
        error=row.error,
    )


def _pipeline_info(row: PipelineRecord, last: PipelineRun | None) -> PipelineInfo:
    return PipelineInfo(
        name=row.name,
        definition=dict(row.definition),
        source=row.source,
        enabled=row.enabled,
        trigger_state=dict(row.trigger_state),
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        last_run=_run_info(last) if last is not None else None,
    )


def exit_code(state: str) -> int:
    """What ``passerelle pipeline run --wait`` exits with: 0 succeeded, 1 rejected, 2 otherwise."""
    if state == "succeeded":
        return 0
    if state == "rejected":
        return 1
    return 2


# ---------------------------------------------------------------------------------- pipelines


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _latest_dataset_number(session: Session, name: str) -> int | None:
    from passerelle.store.schema import Dataset, DatasetVersion

    found = session.scalar(select(func.max(DatasetVersion.number)).join(Dataset).where(Dataset.name == name))
    return int(found) if found is not None else None


def initial_trigger_state(session: Session, pipeline: Pipeline, now: dt.datetime) -> dict[str, Any]:
    """What the triggers start from: data already there and past schedule times do not fire."""
    from passerelle.pipelines.definition import next_schedule

    state: dict[str, Any] = {}
    if pipeline.input is not None and pipeline.input.dataset is not None:
        name, _ = parse_dataset_ref(pipeline.input.dataset)
        state["dataset_seen"] = _latest_dataset_number(session, name) or 0
    if pipeline.input is not None and pipeline.input.path is not None:
        from passerelle.pipelines.scheduler import path_signature

        with contextlib.suppress(PasserelleError, OSError):
            state["path_seen"] = path_signature(pipeline.input.path, pipeline)
    if pipeline.schedule is not None:
        state["schedule_next"] = next_schedule(pipeline.schedule, now).isoformat()
    return state


def _trigger_inputs(definition: dict[str, Any]) -> tuple[Any, ...]:
    return (definition.get("input"), definition.get("schedule"), definition.get("triggers"))


def register_pipelines(
    ctx: Context,
    pipelines: Sequence[Pipeline],
    *,
    source: str = "python",
    reason: str | None = None,
) -> list[PipelineInfo]:
    """Store (create or replace) the definitions, each change audited; all or nothing.

    A pipeline built in Python without a training folder runs in the current folder.
    """
    checked = checked_definitions(pipelines)
    out: list[PipelineInfo] = []
    now = _now()
    with ctx.store.write() as session:
        for pipeline in checked:
            definition = pipeline.model_dump(mode="json")
            row = session.scalar(
                select(PipelineRecord).where(PipelineRecord.name == pipeline.name).with_for_update()
            )
            if row is None:
                row = PipelineRecord(
                    name=pipeline.name,
                    definition=definition,
                    source=source,
                    enabled=pipeline.enabled,
                    trigger_state=initial_trigger_state(session, pipeline, now),
                    created_by=ctx.actor,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                audit.record(
                    session,
                    actor=ctx.actor,
                    action="pipeline.create",
                    target=f"pipeline:{pipeline.name}",
                    after={"definition": definition, "source": source},
                    reason=reason,
                )
            elif row.definition != definition or row.source != source or row.enabled != pipeline.enabled:
                before = {"definition": dict(row.definition), "source": row.source, "enabled": row.enabled}
                if _trigger_inputs(row.definition) != _trigger_inputs(definition):
                    state = dict(row.trigger_state)
                    fresh = initial_trigger_state(session, pipeline, now)
                    for key in ("dataset_seen", "path_seen", "schedule_next"):
                        state.pop(key, None)
                    state.update(fresh)
                    row.trigger_state = state
                row.definition = definition
                row.source = source
                row.enabled = pipeline.enabled
                row.updated_at = now
                audit.record(
                    session,
                    actor=ctx.actor,
                    action="pipeline.update",
                    target=f"pipeline:{pipeline.name}",
                    before=before,
                    after={"definition": definition, "source": source, "enabled": pipeline.enabled},
                    reason=reason,
                )
            out.append(_pipeline_info(row, None))
    return out


def _last_runs(session: Session, names: Sequence[str]) -> dict[str, PipelineRun]:
    if not names:
        return {}
    newest = (
        select(PipelineRun.pipeline, func.max(PipelineRun.number).label("number"))
        .where(PipelineRun.pipeline.in_(names))
        .group_by(PipelineRun.pipeline)
        .subquery()
    )
    rows = session.scalars(
        select(PipelineRun).join(
            newest,
            (PipelineRun.pipeline == newest.c.pipeline) & (PipelineRun.number == newest.c.number),
        )
    ).all()
    return {r.pipeline: r for r in rows}


def list_pipelines(ctx: Context) -> list[PipelineInfo]:
    with ctx.store.read() as session:
        rows = session.scalars(select(PipelineRecord).order_by(PipelineRecord.name)).all()
        last = _last_runs(session, [r.name for r in rows])
        return [_pipeline_info(r, last.get(r.name)) for r in rows]


def _record(session: Session, name: str, *, lock: bool = False) -> PipelineRecord:
    query = select(PipelineRecord).where(PipelineRecord.name == name)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise NotFoundError(
            f"pipeline {name!r} does not exist; define it and run `passerelle pipeline apply`"
        )
    return row


def get_pipeline(ctx: Context, name: str) -> PipelineInfo:
    with ctx.store.read() as session:
        row = _record(session, name)
        return _pipeline_info(row, _last_runs(session, [name]).get(name))


# --------------------------------------------------------------------------------------- runs


def _parse_params(given: dict[str, Any] | None, pipeline: Pipeline) -> dict[str, Any]:
    params: dict[str, Any] = dict(pipeline.params)
    for key, value in (given or {}).items():
        if key not in pipeline.params:
            declared = ", ".join(pipeline.params) or "none"
            raise InvalidInputError(
                f"pipeline {pipeline.name!r} has no parameter {key!r} (declared: {declared})"
            )
        if isinstance(value, str):
            # --param C=0.5 arrives as text; read it as YAML reads a scalar so it keeps its type.
            import yaml

            try:
                parsed = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                parsed = value
            value = parsed if isinstance(parsed, (str, int, float, bool)) else value
        params[key] = value
    return params


def _active(session: Session, pipeline: str) -> list[PipelineRun]:
    return list(
        session.scalars(
            select(PipelineRun)
            .where(PipelineRun.pipeline == pipeline, PipelineRun.state.in_(ACTIVE_STATES))
            .order_by(PipelineRun.number)
        )
    )


def queue_in(
    session: Session,
    record: PipelineRecord,
    trigger: str,
    detail: dict[str, Any],
    *,
    actor: str,
    params: dict[str, Any] | None = None,
    attempt: int = 1,
    not_before: dt.datetime | None = None,
    retry_of: str | None = None,
    reason: str | None = None,
    check_active: bool = True,
) -> PipelineRun:
    """Queue a run inside the caller's transaction, which must hold ``record`` locked."""
    pipeline = Pipeline.model_validate(record.definition)
    if check_active:
        active = _active(session, record.name)
        if len(active) >= pipeline.concurrency:
            first = active[0]
            raise ConflictError(
                f"pipeline {record.name!r} already has an active run {first.pipeline}#{first.number} "
                f"({first.state}, id {first.id}); one at a time (concurrency: {pipeline.concurrency})"
            )
    number = (
        session.scalar(select(func.max(PipelineRun.number)).where(PipelineRun.pipeline == record.name)) or 0
    ) + 1
    row = PipelineRun(
        id=uuid.uuid4().hex[:16],
        pipeline=record.name,
        number=number,
        trigger=trigger,
        trigger_detail=detail,
        state="queued",
        attempt=attempt,
        created_by=actor,
        params=params if params is not None else dict(pipeline.params),
        definition=dict(record.definition),
        not_before=not_before,
        retry_of=retry_of,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="pipeline.run.queue",
        target=f"pipeline:{record.name}#{number}",
        after={
            "run": row.id,
            "trigger": trigger,
            "detail": detail,
            "params": row.params,
            "attempt": attempt,
            **({"not_before": not_before.isoformat()} if not_before else {}),
        },
        reason=reason,
    )
    return row


def start_run(
    ctx: Context,
    name: str,
    trigger: str = "manual",
    detail: dict[str, Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    reason: str | None = None,
) -> RunInfo:
    """Queue a run of ``name``; refused while another is active unless the concurrency allows it."""
    if trigger not in ("manual", "dataset", "alert", "schedule"):
        raise InvalidInputError(f"unknown trigger {trigger!r} (known: manual, dataset, alert, schedule)")
    with ctx.store.write() as session:
        record = _record(session, name, lock=True)
        pipeline = Pipeline.model_validate(record.definition)
        if trigger not in pipeline.triggers:
            raise InvalidInputError(
                f"pipeline {name!r} does not accept {trigger} runs "
                f"(triggers: {', '.join(pipeline.triggers)}); add {trigger} to its triggers"
            )
        if not record.enabled:
            raise ConflictError(f"pipeline {name!r} is disabled; enable it in its definition and apply")
        row = queue_in(
            session,
            record,
            trigger,
            dict(detail or {}),
            actor=ctx.actor,
            params=_parse_params(params, pipeline),
            reason=reason,
        )
        return _run_info(row)


def _find_run(session: Session, ref: str) -> PipelineRun:
    ref = ref.strip()
    for sep in ("#", "/"):
        name, found_sep, number = ref.rpartition(sep)
        if found_sep and name and number.isdigit():
            row = session.scalar(
                select(PipelineRun).where(PipelineRun.pipeline == name, PipelineRun.number == int(number))
            )
            if row is None:
                raise NotFoundError(f"pipeline run {ref} does not exist")
            return row
    row = session.get(PipelineRun, ref)
    if row is None:
        raise NotFoundError(f"pipeline run {ref!r} does not exist (give its id or PIPELINE#NUMBER)")
    return row


def get_run(ctx: Context, ref: str) -> RunInfo:
    """A run by id or by ``PIPELINE#NUMBER``."""
    with ctx.store.read() as session:
        return _run_info(_find_run(session, ref))


def list_runs(
    ctx: Context, pipeline: str | None = None, *, state: str | None = None, limit: int = 50
) -> list[RunInfo]:
    query = (
        select(PipelineRun).order_by(PipelineRun.created_at.desc(), PipelineRun.number.desc()).limit(limit)
    )
    with ctx.store.read() as session:
        if pipeline is not None:
            _record(session, pipeline)
            query = query.where(PipelineRun.pipeline == pipeline)
        if state is not None:
            query = query.where(PipelineRun.state == state)
        return [_run_info(r) for r in session.scalars(query)]


def log_path(ctx: Context, run_id: str) -> Path:
    return Path(ctx.settings.home).resolve() / "pipelines" / f"{run_id}.log"


def claim(ctx: Context, run_id: str, holder: str, *, now: dt.datetime | None = None) -> bool:
    """Take a queued, due run for ``holder``; True for exactly one of any number of callers."""
    now = now or _now()
    path = str(log_path(ctx, run_id))
    with ctx.store.write() as session:
        result = session.execute(
            update(PipelineRun)
            .where(
                PipelineRun.id == run_id,
                PipelineRun.state == "queued",
                (PipelineRun.not_before.is_(None)) | (PipelineRun.not_before <= now),
            )
            .values(state="running", holder=holder, started_at=now, heartbeat_at=now, log_path=path)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        row = session.get(PipelineRun, run_id)
        assert row is not None
        audit.record(
            session,
            actor=holder,
            action="pipeline.run.start",
            target=f"pipeline:{row.pipeline}#{row.number}",
            before={"state": "queued"},
            after={"state": "running", "holder": holder, "run": run_id},
        )
    return True


def cancel_run(ctx: Context, ref: str, *, reason: str | None = None) -> RunInfo:
    """Cancel a queued or running run; a running one's process group is stopped by its holder."""
    with ctx.store.write() as session:
        row = _find_run(session, ref)
        if row.state not in ACTIVE_STATES:
            raise ConflictError(
                f"run {row.pipeline}#{row.number} is {row.state}; only active runs are cancelled"
            )
        before = row.state
        row.state = "cancelled"
        row.finished_at = _now()
        row.error = f"cancelled by {ctx.actor}" + (f": {reason}" if reason else "")
        audit.record(
            session,
            actor=ctx.actor,
            action="pipeline.run.cancel",
            target=f"pipeline:{row.pipeline}#{row.number}",
            before={"state": before},
            after={"state": "cancelled", "run": row.id},
            reason=reason,
        )
        session.flush()
        return _run_info(row)


# ---------------------------------------------------------------------------------- execution


class _Lost(Exception):
    """The run is no longer ours: cancelled, or marked interrupted by a scheduler."""


class _Retryable(PasserelleError):
    """A failure another attempt may not meet: the command failed or timed out."""


class _Rejected(PasserelleError):
    """The candidate is refused for promotion: incompatible signature, or gates that failed."""


@dataclass
class _Heartbeat:
    ctx: Context
    run_id: str
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def beat(self) -> bool:
        with self.ctx.store.write() as session:
            result = session.execute(
                update(PipelineRun)
                .where(
                    PipelineRun.id == self.run_id,
                    PipelineRun.state == "running",
                    PipelineRun.holder == self.holder,
                )
                .values(heartbeat_at=_now())
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                if not self.beat():
                    self.lost.set()
                    return
            except PasserelleError:
                continue  # the store is down for a moment; the next beat tries again

    def __enter__(self) -> _Heartbeat:
        self.thread = threading.Thread(
            target=self._loop, name=f"pipeline-heartbeat-{self.run_id}", daemon=True
        )
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=HEARTBEAT_S + 5)


class _Log:
    """The run's log file: passerelle's own lines start with '==> '; the command's output is as is."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handle: TextIO = path.open("a", encoding="utf-8", errors="replace")

    def line(self, text: str) -> None:
        stamp = _now().strftime("%H:%M:%S")
        for part in text.splitlines() or [""]:
            self.handle.write(f"==> {stamp} {part}\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def tail(path: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def environment_hash() -> str:
    """sha256 of the interpreter version and every installed distribution with its version."""
    from importlib.metadata import distributions

    seen = sorted(
        {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in distributions() if d.metadata["Name"]}
    )
    text = "\n".join([f"python=={sys.version.split()[0]}", *seen])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _fingerprint_dir(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(fingerprint_file(path).encode() + b"\0")
    return f"sha256:{digest.hexdigest()}"


def fingerprint_path(path: Path) -> str:
    return _fingerprint_dir(path) if path.is_dir() else fingerprint_file(path)


@dataclass
class _Input:
    path: Path
    record: dict[str, Any]
    dataset: str | None = None


class _Execution:
    """One claimed run, from its input to its promotion. Raises only for bugs."""

    def __init__(self, ctx: Context, run_id: str, holder: str, abort: threading.Event) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.holder = holder
        self.abort = abort
        self.registry = Registry(ctx)
        self.endpoints = Endpoints(ctx, self.registry)
        self.endpoints.load_check = self._loads
        self.workdir = Path(tempfile.mkdtemp(prefix=f"passerelle-run-{run_id}-"))
        with ctx.store.read() as session:
            row = session.get(PipelineRun, run_id)
            if row is None:
                raise NotFoundError(f"pipeline run {run_id!r} does not exist")
            self.info = _run_info(row)
            self.pipeline = Pipeline.model_validate(row.definition)
        self.log = _Log(log_path(ctx, run_id))
        self.heartbeat: _Heartbeat | None = None

    def _loads(self, ref: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an environment difference is not a reason to refuse
            self.registry.load(ref)

    @property
    def reason(self) -> str:
        return f"pipeline {self.info.ref} (run {self.run_id})"

    def _save(self, **values: Any) -> None:
        with self.ctx.store.write() as session:
            session.execute(
                update(PipelineRun)
                .where(PipelineRun.id == self.run_id, PipelineRun.holder == self.holder)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def _check_ours(self) -> None:
        if self.abort.is_set() or (self.heartbeat is not None and self.heartbeat.lost.is_set()):
            raise _Lost()

    # -- steps -----------------------------------------------------------------------------

    def _input(self) -> _Input | None:
        spec = self.pipeline.input
        if spec is None:
            return None
        if spec.dataset is not None:
            pinned = self.info.trigger_detail.get("dataset_version")
            ref = str(pinned) if pinned else spec.dataset
            info = Datasets(self.ctx).get(ref)
            local = self._local(info.uri)
            found = fingerprint_file(local)
            if found != info.fingerprint:
                raise InvalidInputError(
                    f"dataset {info.ref}: {info.uri} changed since it was registered (fingerprint differs)"
                )
            return _Input(
                local,
                {"dataset": info.ref, "fingerprint": info.fingerprint, "uri": info.uri, "rows": info.rows},
                dataset=info.ref,
            )
        assert spec.path is not None
        local = self._local(spec.path)
        return _Input(local, {"path": spec.path, "fingerprint": fingerprint_path(local)})

    def _local(self, uri: str) -> Path:
        if "://" in uri and not uri.startswith("file://"):
            dest = self.workdir / "input" / Path(uri.split("?")[0]).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs, path = fsspec.core.url_to_fs(uri, **storage_options_from_settings(self.ctx.settings))
                fs.get_file(path, str(dest))
            except (OSError, ValueError, ImportError) as exc:
                raise InvalidInputError(f"cannot read {uri}: {exc}") from exc
            return dest
        local = Path(uri.removeprefix("file://"))
        if not local.is_absolute():
            local = Path(self.pipeline.train.workdir or ".") / local
        if not local.exists():
            raise InvalidInputError(f"cannot read {uri}: no such file or directory")
        return local.resolve()

    def _command(self, inp: _Input | None, output: Path, params: dict[str, Any]) -> list[str]:
        train = self.pipeline.train
        if train.entry_point is not None:
            return [
                sys.executable,
                "-m",
                "passerelle.pipelines._entry",
                train.entry_point,
                str(inp.path) if inp else "",
                str(output),
                json.dumps(params),
            ]
        assert train.command is not None
        values = {**{k: str(v) for k, v in params.items()}, "output": str(output), "run_id": self.run_id}
        if inp is not None:
            values["input"] = str(inp.path)
        return [part.format_map(values) for part in shlex.split(train.command)]

    def _environment(self, inp: _Input | None, output: Path, params: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        # `python` in a command means the interpreter passerelle runs in: the project's environment.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            PASSERELLE_RUN_ID=self.run_id,
            PASSERELLE_PIPELINE=self.pipeline.name,
            PASSERELLE_OUTPUT=str(output),
            PASSERELLE_PARAMS=json.dumps(params),
            PASSERELLE_INPUT=str(inp.path) if inp else "",
        )
        env.update(self.pipeline.train.env)
        return env

    def _train(self, inp: _Input | None, params: dict[str, Any]) -> Path:
        output = self.workdir / "output"
        output.mkdir()
        args = self._command(inp, output, params)
        cwd = Path(self.pipeline.train.workdir or ".")
        if not cwd.is_dir():
            raise InvalidInputError(f"train.workdir {cwd} is not a folder")
        self.log.line("$ " + shlex.join(args))
        timeout = self.pipeline.train.timeout
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=self._environment(inp, output, params),
                stdin=subprocess.DEVNULL,
                stdout=self.log.handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise InvalidInputError(
                f"cannot start the training command {args[0]!r}: {exc.strerror or exc}"
            ) from exc
        stopped: str | None = None
        try:
            while True:
                try:
                    code = process.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - started > timeout:
                    stopped = "timeout"
                elif self.abort.is_set() or (self.heartbeat is not None and self.heartbeat.lost.is_set()):
                    stopped = "lost"
                if stopped is not None:
                    _stop_group(process)
                    code = process.wait()
                    break
        except BaseException:
            # Ctrl-C in `pipeline run --wait`, or the interpreter stopping: the training must not outlive it.
            _stop_group(process)
            raise
        elapsed = time.monotonic() - started
        self.log.handle.flush()
        if stopped == "lost":
            self.log.line(f"the training process group was stopped after {elapsed:.1f} s")
            raise _Lost()
        if stopped == "timeout":
            self.log.line(
                f"timed out after {elapsed:.1f} s (train.timeout {timeout:g} s); process group stopped"
            )
            raise _Retryable(
                f"the training step timed out after {timeout:g} s (train.timeout); "
                "its process group was stopped"
            )
        self.log.line(f"exit status {code} after {elapsed:.1f} s")
        if code != 0:
            last = [line for line in tail(self.log.path).splitlines() if not line.startswith("==> ")]
            shown = last[-1] if last else "(no output)"
            raise _Retryable(f"the training command failed with exit status {code}: {shown}")
        return output

    def _prepared(self, output: Path) -> PreparedArtifact:
        trust = self.pipeline.train.trust
        manifest = output / PREPARED_MANIFEST
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            saved = SavedArtifact(**data["saved"])
            return PreparedArtifact(
                output / data["folder"],
                data["flavor"],
                saved,
                data.get("environment", {}),
                data.get("lineage", {}),
            )
        dest = self.workdir / "artifact"
        dest.mkdir()
        candidates = sorted(
            p for p in output.iterdir() if p.name not in OUTPUT_EXTRAS and not p.name.startswith(".")
        )
        if (output / "MLmodel").is_file():
            return prepare_artifact(
                output, dest, trust=trust, source_dir=Path(self.pipeline.train.workdir or ".")
            )
        found: list[Path] = []
        for path in candidates:
            with contextlib.suppress(PasserelleError):
                detect(path)
                found.append(path)
        if not found:
            listed = ", ".join(p.name for p in candidates) or "nothing"
            raise PasserelleError(
                f"the training step produced no model in its output folder (found: {listed}); write a model "
                "file there such as model.skops, model.onnx or an MLflow model folder (docs/pipelines.md)"
            )
        if len(found) > 1:
            raise PasserelleError(
                "the training step wrote more than one model: "
                + ", ".join(p.name for p in found)
                + "; write exactly one"
            )
        return prepare_artifact(
            found[0], dest, trust=trust, source_dir=Path(self.pipeline.train.workdir or ".")
        )

    def _training_metrics(self, output: Path) -> dict[str, Any]:
        path = output / "metrics.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise InvalidInputError(f"metrics.json of the training output is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInputError("metrics.json of the training output must be an object of name: number")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if str(key).startswith(("holdout.", "champion.")):
                self.log.line(f"metrics.json: {key!r} left out: holdout. and champion. are the evaluation's")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[str(key)] = value
            else:
                self.log.line(f"metrics.json: {key!r} left out: {value!r} is not a number")
        return out

    def _champion(self) -> VersionInfo | None:
        promo = self.pipeline.promotion
        if promo.endpoint is not None:
            with contextlib.suppress(NotFoundError):
                return self.registry.get_version(self.endpoints.get(promo.endpoint).policy.primary.ref)
        with contextlib.suppress(NotFoundError):
            return self.registry.get_version(f"{self.pipeline.model}@champion")
        return None

    def _promote(self, candidate: VersionInfo) -> dict[str, Any]:
        promo = self.pipeline.promotion
        why = f"{self.reason}: gates passed"
        out: dict[str, Any] = {"policy": promo.policy, "candidate": candidate.ref}
        if promo.policy == "register":
            self.registry.set_alias(candidate.model, promo.alias, candidate.number, reason=why)
            return {**out, "alias": f"{candidate.model}@{promo.alias}"}
        assert promo.endpoint is not None
        name = promo.endpoint
        try:
            current = self.endpoints.get(name)
        except NotFoundError:
            if promo.policy != "champion":
                raise NotFoundError(
                    f"endpoint {name!r} does not exist; the {promo.policy} policy needs a served version "
                    "to compare with (deploy one first, or use the champion policy)"
                ) from None
            self.endpoints.deploy(name, DeploySpec(routes=[(candidate.ref, 100)]), reason=why)
            rev = self.endpoints.promote(name, candidate.ref, reason=why)
            return {**out, "endpoint": name, "revision": rev.number, "kind": rev.kind}
        policy = current.policy
        if policy.canary is not None:
            raise ConflictError(
                f"endpoint {name!r} has a canary of {policy.canary.ref} in progress; "
                "the candidate waits until it ends"
            )
        shadows = [(s.ref, s.percent) for s in policy.shadows if s.ref != candidate.ref]
        if promo.policy == "champion":
            rev = self.endpoints.promote(name, candidate.ref, reason=why)
        elif promo.policy == "shadow":
            rev = self.endpoints.deploy(
                name,
                DeploySpec(
                    routes=[(r.ref, r.weight) for r in policy.routes],
                    sticky_key=policy.sticky_key,
                    shadows=[*shadows, (candidate.ref, promo.shadow_percent)],
                    key_column=policy.key_column,
                ),
                reason=why,
            )
        else:
            canary = promo.canary
            rev = self.endpoints.deploy(
                name,
                DeploySpec(
                    routes=[(policy.primary.ref, 100)],
                    sticky_key=policy.sticky_key,
                    shadows=shadows,
                    canary=candidate.ref,
                    steps=canary.steps,
                    step_interval_s=canary.interval,
                    gates=CanaryGates(
                        max_error_rate=canary.max_error_rate,
                        max_p99_ms=canary.max_p99_ms,
                        max_disagreement=canary.max_disagreement,
                        min_requests=canary.min_requests,
                    ),
                    key_column=policy.key_column,
                ),
                reason=why,
            )
        return {**out, "endpoint": name, "revision": rev.number, "kind": rev.kind}

    def _evaluate(self, candidate: VersionInfo, holdout: pd.DataFrame, holdout_ref: str) -> dict[str, Any]:
        spec = self.pipeline.evaluation
        champion = self._champion()
        if champion is not None and champion.ref == candidate.ref:
            champion = None
        result: dict[str, Any] = {"holdout": holdout_ref, "champion": None, "gates": [], "passed": False}
        if champion is not None and champion.signature and candidate.signature:
            diffs = Signature.from_dict(champion.signature).differences(
                Signature.from_dict(candidate.signature)
            )
            if diffs:
                result["champion"] = {"ref": champion.ref}
                result["signature_diff"] = diffs
                raise _Rejected(
                    f"{candidate.ref} is not compatible with the champion {champion.ref}, refused for "
                    "promotion: " + "; ".join(diffs)
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = self.registry.load(candidate.ref)
            scored = evaluation.score(loaded, holdout, spec)
            self._check_ours()
            champion_scored = None
            if champion is not None:
                champion_scored = evaluation.score(self.registry.load(champion.ref), holdout, spec)
        result["candidate"] = scored.to_dict()
        result["champion"] = champion_scored.to_dict() if champion_scored else None
        result["gates"] = evaluation.judge(spec.parsed_gates, scored, champion_scored)
        result["passed"] = all(g["passed"] for g in result["gates"])
        return result

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> RunInfo:
        try:
            with _Heartbeat(self.ctx, self.run_id, self.holder) as heartbeat:
                self.heartbeat = heartbeat
                return self._run()
        finally:
            self.log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self) -> RunInfo:
        info = self.info
        evaluation_result: dict[str, Any] = {}
        candidate: VersionInfo | None = None
        self.log.line(
            f"run {info.ref} (id {self.run_id}), attempt {info.attempt}, trigger {info.trigger}, "
            f"on {self.holder}"
        )
        try:
            inp = self._input()
            holdout_ref = self.pipeline.evaluation.holdout
            holdout_info = Datasets(self.ctx).get(holdout_ref)
            inputs: dict[str, Any] = {
                "holdout": {"dataset": holdout_info.ref, "fingerprint": holdout_info.fingerprint}
            }
            if inp is not None:
                inputs["train"] = inp.record
                self.log.line(
                    f"input {inp.record.get('dataset') or inp.record['path']} {inp.record['fingerprint']}"
                )
            workdir = Path(self.pipeline.train.workdir or ".")
            code = code_lineage(workdir) if workdir.is_dir() else {}
            self._save(inputs=inputs, code=code, environment_hash=environment_hash())
            self._check_ours()
            output = self._train(inp, info.params)
            self._check_ours()
            prepared = self._prepared(output)
            prepared.lineage.update(pipeline=self.pipeline.name, pipeline_run=self.run_id)
            holdout = Datasets(self.ctx).load(holdout_info.ref)
            features = evaluation.features_of(holdout, self.pipeline.evaluation)
            failpoint("pipelines.before_register")
            candidate = self.registry.register_prepared(
                prepared,
                self.pipeline.model,
                sample=features,
                metrics=self._training_metrics(output),
                params={k: v for k, v in info.params.items()},
                tags={"pipeline": self.pipeline.name, "pipeline_run": self.run_id},
                dataset=inp.dataset if inp is not None else None,
                description=f"trained by pipeline {info.ref}",
                trust=self.pipeline.train.trust,
                reason=self.reason,
            )
            self.log.line(f"registered {candidate.ref} ({candidate.flavor})")
            self._save(model_version=candidate.ref)
            self._check_ours()
            try:
                evaluation_result = self._evaluate(candidate, holdout, holdout_info.ref)
            except _Rejected as exc:
                self.registry.set_tags(candidate.ref, {"gates": "refused"}, reason=self.reason)
                self.log.line(str(exc))
                return self._finish("rejected", error=str(exc), evaluation={"refused": str(exc)})
            self._record_evaluation(candidate, evaluation_result)
            for gate in evaluation_result["gates"]:
                self.log.line(
                    f"gate {'passed' if gate['passed'] else 'FAILED'}: {gate['gate']} ({gate['detail']})"
                )
            if not evaluation_result["passed"]:
                failing = [g["gate"] for g in evaluation_result["gates"] if not g["passed"]]
                error = f"{candidate.ref} rejected by its gates: " + "; ".join(failing)
                self.log.line(error + "; the champion is untouched")
                return self._finish("rejected", error=error, evaluation=evaluation_result)
            self._check_ours()
            try:
                promotion = self._promote(candidate)
            except PasserelleError as exc:
                error = f"{candidate.ref} passed its gates but could not be promoted: {exc}"
                self.log.line(error)
                return self._finish(
                    "failed",
                    error=error,
                    evaluation=evaluation_result,
                    promotion={
                        "policy": self.pipeline.promotion.policy,
                        "status": "failed",
                        "error": str(exc),
                    },
                )
            shown = promotion.get("alias") or f"{promotion['endpoint']} revision {promotion['revision']}"
            self.log.line(f"promoted {candidate.ref} ({promotion['policy']}): {shown}")
            return self._finish("succeeded", evaluation=evaluation_result, promotion=promotion)
        except _Lost:
            self.log.line("this process no longer holds the run (cancelled, or found interrupted)")
            return self._lost()
        except KeyboardInterrupt:
            self.log.line("interrupted (Ctrl-C)")
            with contextlib.suppress(PasserelleError):
                # Someone stopped it on purpose: no new attempt is queued behind their back.
                self._finish("interrupted", error="the process running it was interrupted (Ctrl-C)")
            raise
        except _Retryable as exc:
            self.log.line(str(exc))
            return self._finish("failed", error=_with_tail(str(exc), self.log.path), retry=True)
        except PasserelleError as exc:
            self.log.line(f"failed: {exc}")
            return self._finish("failed", error=str(exc), evaluation=evaluation_result)
        except Exception as exc:  # a bug or an unexpected library error: the run still ends
            self.log.line(f"failed: unexpected {type(exc).__name__}: {exc}")
            return self._finish("failed", error=f"unexpected {type(exc).__name__}: {exc}", retry=True)

    def _record_evaluation(self, candidate: VersionInfo, result: dict[str, Any]) -> None:
        metrics: dict[str, Any] = {}
        for key, value in (result.get("candidate") or {}).get("figures", {}).items():
            if value is not None:
                metrics[f"holdout.{key}"] = value
        for key, value in (result.get("champion") or {}).get("figures", {}).items():
            if value is not None:
                metrics[f"champion.{key}"] = value
        self.registry.add_metrics(candidate.ref, metrics, reason=self.reason)
        tags: dict[str, Any] = {"gates": "passed" if result["passed"] else "failed"}
        if result.get("champion"):
            tags["evaluated_against"] = result["champion"]["ref"]
        self.registry.set_tags(candidate.ref, tags, reason=self.reason)

    def _lost(self) -> RunInfo:
        """Stopping because the run is not ours any more; an abort of our own marks it interrupted."""
        if self.abort.is_set():
            with contextlib.suppress(PasserelleError):
                return self._finish("interrupted", error="stopped with the process running it", retry=True)
        return get_run(self.ctx, self.run_id)

    def _finish(
        self,
        state: str,
        *,
        error: str | None = None,
        evaluation: dict[str, Any] | None = None,
        promotion: dict[str, Any] | None = None,
        retry: bool = False,
    ) -> RunInfo:
        now = _now()
        with self.ctx.store.write() as session:
            row = session.scalar(select(PipelineRun).where(PipelineRun.id == self.run_id).with_for_update())
            assert row is not None
            if row.state != "running" or row.holder != self.holder:
                return _run_info(row)  # cancelled or found interrupted meanwhile: that state stands
            row.state = state
            row.finished_at = now
            row.error = error
            if evaluation is not None:
                row.evaluation = evaluation
            if promotion is not None:
                row.promotion = promotion
            target = f"pipeline:{row.pipeline}#{row.number}"
            audit.record(
                session,
                actor=self.holder,
                action=f"pipeline.run.{state}",
                target=target,
                before={"state": "running"},
                after={
                    "state": state,
                    "run": row.id,
                    "model_version": row.model_version,
                    **({"error": error.splitlines()[0]} if error else {}),
                    **({"promotion": promotion} if promotion else {}),
                },
            )
            retry_row = None
            if retry:
                retry_row = queue_retry(session, row, now, actor=self.holder)
            session.flush()
            info = _run_info(row)
        if retry_row is not None:
            self.log.line(f"attempt {retry_row.attempt} queued as {retry_row.pipeline}#{retry_row.number}")
        return info


def _with_tail(message: str, path: Path) -> str:
    lines = tail(path)
    return f"{message}\nlast lines of the log:\n{lines}" if lines else message


def queue_retry(session: Session, row: PipelineRun, now: dt.datetime, *, actor: str) -> PipelineRun | None:
    """Queue the next attempt of a failed or interrupted run when its pipeline allows one."""
    pipeline = Pipeline.model_validate(row.definition or {})
    if row.attempt > pipeline.retries:
        return None
    if row.state == "interrupted" and not pipeline.retry_interrupted:
        return None
    record = _record(session, row.pipeline, lock=True)
    backoff = 0.0 if row.state == "interrupted" else pipeline.retry_backoff * (2 ** (row.attempt - 1))
    detail = dict(row.trigger_detail)
    detail["retry_of"] = row.id
    train = row.inputs.get("train", {})
    if train.get("dataset"):
        detail["dataset_version"] = train["dataset"]  # the attempt trains on the same data
    return queue_in(
        session,
        record,
        row.trigger,
        detail,
        actor=actor,
        params=dict(row.params),
        attempt=row.attempt + 1,
        not_before=now + dt.timedelta(seconds=backoff),
        retry_of=row.id,
        reason=f"attempt {row.attempt + 1} of {row.pipeline}#{row.number} ({row.state})",
        check_active=False,
    )


def _stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_claimed(ctx: Context, run_id: str, holder: str, *, abort: threading.Event | None = None) -> RunInfo:
    """Execute a run ``holder`` has claimed, to its end state. Setting ``abort`` stops it as interrupted."""
    return _Execution(ctx, run_id, holder, abort or threading.Event()).run()


def execute(ctx: Context, run_id: str, holder: str | None = None) -> RunInfo:
    """Claim ``run_id`` and execute it here; when another process holds it, return it as it is."""
    holder = holder or default_holder()
    if not claim(ctx, run_id, holder):
        return get_run(ctx, run_id)
    return run_claimed(ctx, run_id, holder)


def _next_attempt(ctx: Context, run_id: str) -> str | None:
    with ctx.store.read() as session:
        return session.scalar(select(PipelineRun.id).where(PipelineRun.retry_of == run_id))


def wait(
    ctx: Context,
    run_id: str,
    *,
    holder: str | None = None,
    execute_here: bool = True,
    follow_retries: bool = True,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    on_run: Callable[[RunInfo], None] | None = None,
) -> RunInfo:
    """Wait for a run (and its retries) to end; with ``execute_here`` claim each due attempt and run it.

    This is what ``passerelle pipeline run NAME --wait`` does: the command line runs the run
    itself unless a server took it first, in which case it follows that server's progress.
    """
    holder = holder or default_holder()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    current = get_run(ctx, run_id)
    announced: set[str] = set()
    while True:
        if on_run is not None and current.id not in announced:
            announced.add(current.id)
            on_run(current)
        if current.state == "queued" and execute_here and claim(ctx, current.id, holder):
            current = run_claimed(ctx, current.id, holder)
        if current.terminal:
            nxt = _next_attempt(ctx, current.id) if follow_retries else None
            if nxt is None:
                return current
            current = get_run(ctx, nxt)
            continue
        if deadline is not None and time.monotonic() > deadline:
            return current
        time.sleep(poll_s)
        current = get_run(ctx, current.id)


def logs(
    ctx: Context, run_id: str, *, follow: bool = False, offset: int = 0, poll_s: float = 0.5
) -> Iterator[str]:
    """The text of a run's log from byte ``offset``; with ``follow``, until the run has ended."""
    info = get_run(ctx, run_id)
    path = Path(info.log_path) if info.log_path else log_path(ctx, info.id)
    if not follow and not path.is_file():
        if info.state == "queued":
            return
        where = f" on the machine that ran it ({info.holder})" if info.holder else ""
        raise NotFoundError(f"the log of run {info.ref} is not here; it was written{where} at {path}")
    position = offset
    while True:
        if path.is_file():
            with path.open("rb") as handle:
                handle.seek(position)
                data = handle.read()
            if data:
                position += len(data)
                yield data.decode("utf-8", errors="replace")
                continue
        if not follow:
            return
        state = get_run(ctx, info.id)
        if state.terminal:
            if path.is_file() and path.stat().st_size > position:
                continue
            return
        time.sleep(poll_s)
