"""The gateway: routes each request to a version by the endpoint's policy, answers, and logs.

One :class:`Gateway` per worker process. It keeps every endpoint's current revision live
(polling the store's cheap revision table every second), a batcher per loaded version,
the durable prediction log, the shadow dispatcher and the operational figures. Only the
model call and the durable log write sit on the response path; shadow calls, figure
flushing and shipping the log to the database run beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from passerelle.context import Context
from passerelle.endpoints import Endpoints
from passerelle.entropy import random_hex
from passerelle.errors import (
    ModelError,
    NotFoundError,
    OverloadedError,
    PasserelleError,
    PayloadTooLargeError,
    SchemaError,
)
from passerelle.monitor import Scheduler
from passerelle.pipelines import Scheduler as PipelineScheduler
from passerelle.policy import STICKY_BUCKETS, Policy, sticky_bucket
from passerelle.predictionlog import (
    LogShipper,
    PredictionLog,
    PredictionRecord,
    Redaction,
    ShadowRecord,
    new_prediction_id,
    redaction,
    redaction_secret,
)
from passerelle.registry import LoadedModel, Registry
from passerelle.serving import figures as figures_mod
from passerelle.serving.batcher import Batcher, BatchOutput, Overloaded
from passerelle.serving.figures import FigureRecorder
from passerelle.serving.leases import acquire
from passerelle.serving.metrics import ServingMetrics
from passerelle.serving.shadow import ShadowDispatcher, ShadowResult, ShadowTarget, should_mirror
from passerelle.signature import Signature, json_scalar

log = logging.getLogger("passerelle.gateway")

REFRESH_INTERVAL_S = 1.0
CANARY_INTERVAL_S = 5.0
RETIRE_GRACE_S = 30.0


@dataclass
class Limits:
    max_rows: int = 10_000
    max_body_bytes: int = 32 * 1024 * 1024


@dataclass
class Runner:
    """One loaded version in this process, with its batcher."""

    ref: str
    model: str
    version: int
    loaded: LoadedModel
    batcher: Batcher
    signature: Signature | None
    classes: list[Any] | None
    # What :meth:`prepare` needs, worked out once from the signature (None: never applies).
    _checks: list[tuple[str, str, bool, frozenset[Any] | None]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _expected: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _index: pd.Index | None = field(default=None, init=False, repr=False, compare=False)
    _all_float: bool = field(default=False, init=False, repr=False, compare=False)
    _string_dtype: Any = field(default=None, init=False, repr=False, compare=False)
    _float_key: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    #: requests of at most this many rows are checked value by value by :meth:`prepare`
    FAST_ROWS = 64
    #: integers up to this magnitude are exact as float64 whatever the column's dtype
    _EXACT = 2**53

    def __post_init__(self) -> None:
        signature = self.signature
        if signature is None or any(c.type == "datetime" for c in signature.columns):
            return
        if any(c.closed and c.type != "string" for c in signature.columns):
            return
        self._checks = [
            (
                c.name,
                c.type,
                c.nullable,
                frozenset(c.categories) if c.closed and c.categories is not None else None,
            )
            for c in signature.columns
        ]
        self._expected = frozenset(signature.names)
        self._index = pd.Index(signature.names)
        self._all_float = all(c.type == "float" for c in signature.columns)
        self._float_key = tuple((name, np.dtype(np.float64)) for name in signature.names)
        # The type pandas gives a column of Python strings, as Signature.conform uses.
        self._string_dtype = pd.Series(["a"]).dtype

    def prepare(
        self, columns: dict[str, list[Any]], n_rows: int
    ) -> tuple[pd.DataFrame, list[str], tuple[Any, ...]] | None:
        """The model's input for a small request whose values all plainly fit, its extra columns,
        and its batching key (what :func:`frame_key` would return for the frame, known here for free).

        Building a frame and running the signature's column-wise validation and conversion
        costs milliseconds for a single row; this looks at each value instead. It only
        accepts what the signature surely accepts (numbers for numeric columns, booleans,
        strings among the categories of closed columns, nulls where allowed) and returns the
        frame :meth:`Signature.conform` would give for these rows. Anything else (a missing
        column, a value of another type, a null where none is allowed, a datetime column, a
        large request) gives None, and the caller runs the full validation, which reports
        problems as it always did.
        """
        checks = self._checks
        if checks is None or n_rows > self.FAST_ROWS:
            return None
        extra: list[str] = []
        for name in columns:
            if type(name) is not str:
                return None
            if name not in self._expected:
                extra.append(name)
        exact = self._EXACT
        data: dict[str, Any] = {}
        for name, kind, nullable, allowed in checks:
            values = columns.get(name)
            if values is None or len(values) != n_rows:
                return None
            nulls = False
            if kind == "float" or kind == "integer":
                for v in values:
                    t = type(v)
                    if t is int:
                        if not -exact <= v <= exact:
                            return None
                    elif t is float and kind == "float":
                        if v - v != 0.0:  # NaN (a null) or infinite
                            if v == v or not nullable:
                                return None
                            nulls = True
                    elif v is None and nullable:
                        nulls = True
                    else:
                        return None
                if kind == "integer" and not nulls:
                    data[name] = np.array(values, dtype=np.int64)
                else:
                    data[name] = np.array(values, dtype=np.float64)  # None becomes NaN
            elif kind == "boolean":
                for v in values:
                    if type(v) is not bool:
                        return None
                data[name] = np.array(values, dtype=np.bool_)
            else:  # string
                for v in values:
                    if type(v) is str:
                        if allowed is not None and v not in allowed:
                            return None
                    elif v is not None or not nullable:
                        return None
                data[name] = pd.array(values, dtype=self._string_dtype)
        if self._all_float:
            # One float block: cheaper to build, and to hand to the model.
            matrix = np.array([data[name] for name, _, _, _ in checks], dtype=np.float64)
            return pd.DataFrame(matrix.T, columns=self._index), extra, self._float_key
        frame = pd.DataFrame(data, columns=self._index)
        return frame, extra, tuple((name, data[name].dtype) for name, _, _, _ in checks)

    def call(self, frame: pd.DataFrame) -> BatchOutput:
        predictor = self.loaded.predictor
        if predictor.has_proba:
            proba = np.asarray(predictor.predict_proba(frame))
            if self.classes is not None and proba.ndim == 2 and proba.shape[1] == len(self.classes):
                # predict() would run the model a second time for what argmax gives for free.
                labels = np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]
                return BatchOutput(predictions=_plain(labels), proba=proba)
            return BatchOutput(predictions=np.asarray(predictor.predict(frame)), proba=proba)
        return BatchOutput(predictions=np.asarray(predictor.predict(frame)), proba=None)


def _plain(labels: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Labels as their natural dtype (ints stay ints) rather than object."""
    try:
        return np.asarray(labels.tolist())
    except (TypeError, ValueError):
        return labels


@dataclass
class LiveEndpoint:
    name: str
    revision: int
    policy: Policy
    routes: list[tuple[Runner, int]]  # (runner, cumulative weight upper bound out of 10000)
    shadows: list[tuple[Runner, float]]
    canary: Runner | None = None
    baseline: Runner | None = None
    #: what the policy keeps out of the log; None when nothing is redacted
    redaction: Redaction | None = None

    def choose(self, key: str | None) -> Runner:
        point = sticky_bucket(key) if key is not None else random.randrange(STICKY_BUCKETS)
        for runner, bound in self.routes:
            if point < bound:
                return runner
        return self.routes[-1][0]


@dataclass
class Answer:
    endpoint: str
    revision: int
    runner: Runner
    prediction_ids: list[str]
    output: BatchOutput
    request_id: str
    extra_columns: list[str] = field(default_factory=list)


class Gateway:
    def __init__(
        self,
        ctx: Context,
        *,
        worker: str | None = None,
        metrics: ServingMetrics,
        fsync: bool = True,
        limits: Limits | None = None,
        background: bool = True,
    ) -> None:
        self.ctx = ctx
        self.worker = worker or f"{os.uname().nodename}-{os.getpid()}"
        # Stable, file-name-safe: it names this process's prediction log segments.
        self.worker = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in self.worker)[:100]
        self.metrics = metrics
        self.limits = limits or Limits()
        self.registry = Registry(ctx)
        self.endpoints = Endpoints(ctx, self.registry)
        self.runners: dict[str, Runner] = {}
        self.live: dict[str, LiveEndpoint] = {}
        self.load_errors: dict[str, str] = {}
        self.background = background
        home = Path(ctx.settings.home).resolve()
        self.log = PredictionLog(home / "predictions", worker=self.worker, fsync=fsync)
        self.shipper = LogShipper(
            home / "predictions", ctx.store, log=self.log, secret=lambda: redaction_secret(ctx.settings)
        )
        self.figures = FigureRecorder(self.worker)
        self.shadow = ShadowDispatcher(on_result=self._on_shadow, metrics=metrics)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="passerelle-load")
        self._tasks: list[asyncio.Task[None]] = []
        self._retired: list[tuple[float, Runner]] = []
        self.monitors: Scheduler | None = None
        self.pipelines: PipelineScheduler | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self.shadow.start()
        if self.background:
            self.shipper.start()
            self.figures.start(self.ctx.store)
            self._tasks.append(asyncio.create_task(self._refresh_loop(), name="passerelle-refresh"))
            self._tasks.append(asyncio.create_task(self._canary_loop(), name="passerelle-canary"))
            interval = self.ctx.settings.monitor_interval_seconds
            if interval > 0:
                self.monitors = Scheduler(self.ctx, interval_s=interval, holder=self.worker)
                self.monitors.start()
                # Retraining runs triggered by data, schedules and alerts, under leases.
                self.pipelines = PipelineScheduler(self.ctx, holder=self.worker)
                self.pipelines.start()
        self._started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for scheduler in (self.monitors, self.pipelines):
            if scheduler is not None:
                await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)
        self.monitors = self.pipelines = None
        await self.shadow.stop()
        self.log.close()
        if self.background:
            self.figures.stop()
            self.shipper.stop()
        for runner in [*self.runners.values(), *(r for _, r in self._retired)]:
            runner.batcher.close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._started = False

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready once started and every endpoint's versions are loaded."""
        endpoints = {
            name: {"revision": live.revision, "versions": live.policy.versions()}
            for name, live in self.live.items()
        }
        ok = self._started and not any(name not in self.live for name in self.load_errors)
        return ok, {"endpoints": endpoints, "errors": dict(self.load_errors)}

    # -- keeping policies current -------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except PasserelleError as exc:
                log.warning("cannot refresh endpoint policies: %s", exc)
            except Exception:
                log.exception("refreshing endpoint policies failed")

    async def refresh(self) -> None:
        """Apply every revision that changed since the last look; keep the old one if loading fails."""
        loop = asyncio.get_running_loop()
        states = await loop.run_in_executor(self._loader, self.endpoints.states)
        for name, revision in states.items():
            current = self.live.get(name)
            if current is not None and current.revision == revision:
                continue
            try:
                live = await loop.run_in_executor(self._loader, self._build, name)
            except PasserelleError as exc:
                self.load_errors[name] = f"revision {revision}: {exc}"
                log.error(
                    "endpoint %s stays on revision %s: %s", name, current.revision if current else None, exc
                )
                continue
            except Exception as exc:
                self.load_errors[name] = f"revision {revision}: {type(exc).__name__}: {exc}"
                log.exception("endpoint %s: loading revision %s failed", name, revision)
                continue
            # A plain assignment: requests already routed keep the runner they hold.
            self.live[name] = live
            self.load_errors.pop(name, None)
        self._drop_unused_runners()

    def _build(self, name: str) -> LiveEndpoint:
        info = self.endpoints.get(name)
        policy = info.policy
        routes: list[tuple[Runner, int]] = []
        bound = 0
        for route in policy.routes:
            if route.weight == 0:
                continue
            bound += route.weight * (STICKY_BUCKETS // 100)
            routes.append((self._runner(route.ref, policy), bound))
        shadows = [(self._runner(s.ref, policy), s.percent) for s in policy.shadows]
        canary = baseline = None
        if policy.canary is not None:
            canary = self._runner(policy.canary.ref, policy)
            baseline = self._runner(policy.primary.ref, policy)
        # Worked out here, off the response path: the first redaction may create the secret's file.
        redacted = redaction(policy.redact, policy.key_column or policy.sticky_key, self.ctx.settings)
        return LiveEndpoint(name, info.revision, policy, routes, shadows, canary, baseline, redacted)

    def _runner(self, ref: str, policy: Policy) -> Runner:
        found = self.runners.get(ref)
        if found is not None:
            return found
        loaded = self.registry.load(ref)
        batching = policy.batching
        runner_holder: list[Runner] = []

        def call(frame: pd.DataFrame) -> BatchOutput:
            return runner_holder[0].call(frame)

        batcher = Batcher(
            call,
            name=ref,
            max_batch_rows=batching.max_batch_rows,
            max_wait_ms=batching.max_wait_ms,
            max_queue_rows=batching.max_queue_rows,
            metrics=self.metrics,
        )
        runner = Runner(
            ref=ref,
            model=loaded.info.model,
            version=loaded.info.number,
            loaded=loaded,
            batcher=batcher,
            signature=loaded.signature,
            classes=list(loaded.classes) if loaded.classes is not None else None,
        )
        runner_holder.append(runner)
        self.runners[ref] = runner
        return runner

    def _drop_unused_runners(self) -> None:
        used = {r.ref for live in self.live.values() for r, _ in live.routes}
        used |= {r.ref for live in self.live.values() for r, _ in live.shadows}
        used |= {r.ref for live in self.live.values() for r in (live.canary, live.baseline) if r is not None}
        now = time.monotonic()
        for ref in list(self.runners):
            if ref not in used:
                # Requests routed just before the switch still hold this runner and may not have
                # submitted yet: close its batcher only after a grace period.
                self._retired.append((now + RETIRE_GRACE_S, self.runners.pop(ref)))
        keep = []
        for deadline, runner in self._retired:
            if deadline <= now and runner.ref not in self.runners:
                runner.batcher.close()
            else:
                keep.append((deadline, runner))
        self._retired = keep

    # -- canary --------------------------------------------------------------------------

    async def _canary_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CANARY_INTERVAL_S)
            for name, live in list(self.live.items()):
                if live.policy.canary is None:
                    continue
                try:
                    await loop.run_in_executor(self._loader, self._canary_tick, name)
                except Exception:
                    log.exception("canary controller for %s failed", name)

    def _canary_tick(self, name: str) -> None:
        if not acquire(self.ctx.store, f"canary:{name}", self.worker, ttl_s=CANARY_INTERVAL_S * 3):
            return
        self.figures.flush(self.ctx.store)
        rev = self.endpoints.canary_tick(name, self.canary_figures)
        if rev is not None:
            log.info("endpoint %s: %s (revision %s): %s", name, rev.kind, rev.number, rev.reason)

    def canary_figures(self, endpoint: str, since: dt.datetime, model: str, version: int) -> dict[str, float]:
        # Figures are kept per time bucket: include the bucket the step started in.
        start = self.figures.bucket_of(since)
        found = figures_mod.summary(self.ctx.store, endpoint, since=start, model=model, version=version)
        s = found.get((model, version))
        if s is None:
            return {"requests": 0}
        return {
            "requests": float(s.requests),
            "error_rate": float(s.error_rate),
            "p99_ms": float(s.p99_ms or 0.0),
            "disagreement_rate": float(s.disagreement_rate or 0.0),
        }

    # -- answering -----------------------------------------------------------------------

    def live_endpoint(self, name: str) -> LiveEndpoint:
        live = self.live.get(name)
        if live is None:
            if name in self.load_errors:
                raise NotFoundError(f"endpoint {name!r} is not loaded: {self.load_errors[name]}")
            raise NotFoundError(f"endpoint {name!r} does not exist")
        return live

    async def predict(
        self,
        name: str,
        columns: dict[str, list[Any]],
        n_rows: int,
        *,
        keys: list[str | None] | None = None,
        version: int | None = None,
    ) -> Answer:
        started = time.perf_counter()
        live = self.live_endpoint(name)
        if n_rows > self.limits.max_rows:
            raise PayloadTooLargeError(f"{n_rows} rows in one request; the limit is {self.limits.max_rows}")
        if n_rows == 0:
            raise SchemaError("the request holds no rows")
        key_column = live.policy.key_column or live.policy.sticky_key
        if keys is None and key_column is not None and key_column in columns:
            keys = [None if v is None else str(v) for v in columns[key_column]]
        if version is not None:
            runner = self._pinned(live, version)
        else:
            sticky = None
            if live.policy.sticky_key is not None and live.policy.sticky_key in columns:
                first = columns[live.policy.sticky_key][0]
                sticky = None if first is None else str(first)
            runner = live.choose(sticky)
        request_id = random_hex(8)
        prepared = runner.prepare(columns, n_rows)
        key: tuple[Any, ...] | None = None
        if prepared is not None:
            frame, extra, key = prepared
        else:
            frame = pd.DataFrame(columns)
            extra = []
            if runner.signature is not None:
                checked = runner.signature.validate(frame)
                extra = list(checked.extra_columns)
                if not checked.ok:
                    self._count_rejections(live, runner, checked.by_column_reason(), checked.rejected_rows)
                    raise SchemaError(
                        f"{checked.rejected_rows} of {n_rows} row(s) do not match "
                        f"the signature of {runner.ref}",
                        [p.to_dict() for p in checked.problems],
                    )
                frame = runner.signature.conform(frame)
        try:
            output = await runner.batcher.submit(frame, key)
        except Overloaded as exc:
            self.metrics.errors.labels(name, runner.model, str(runner.version), "overloaded").inc()
            raise OverloadedError(f"{runner.ref} is overloaded; retry later", exc.retry_after_s) from exc
        except Exception as exc:
            self.metrics.errors.labels(name, runner.model, str(runner.version), "model").inc()
            self.figures.record(
                name,
                runner.model,
                runner.version,
                (time.perf_counter() - started) * 1000,
                rows=n_rows,
                error=True,
            )
            log.exception("model %s failed on request %s", runner.ref, request_id)
            raise ModelError(f"model {runner.ref} failed: {type(exc).__name__}", request_id) from exc

        def plain(value: Any) -> Any:
            # json_scalar, without its checks for the plain values a JSON body holds.
            kind = type(value)
            if kind is str or kind is int or kind is bool or value is None:
                return value
            if kind is float:
                return value if value - value == 0.0 else None
            return json_scalar(value)

        ids = [new_prediction_id() for _ in range(n_rows)]
        logged = columns
        redacted = live.redaction
        if redacted is not None:
            # Before any record exists: a redacted value never reaches a segment file.
            logged = redacted.inputs(columns)
            if keys is not None and redacted.hashes(keys, columns):
                keys = [redacted.key(k) for k in keys]
        latency_ms = (time.perf_counter() - started) * 1000
        now = dt.datetime.now(dt.UTC)
        records = [
            PredictionRecord(
                id=ids[i],
                endpoint=name,
                revision=live.revision,
                model=runner.model,
                version=runner.version,
                at=now,
                latency_ms=latency_ms,
                inputs={c: plain(values[i]) for c, values in logged.items()},
                outputs=_outputs(output, i, runner.classes),
                key=keys[i] if keys is not None and i < len(keys) else None,
                request_id=request_id,
            )
            for i in range(n_rows)
        ]
        # Durability before the answer: the response waits for the group commit holding it.
        await self.log.append(records)
        self._mirror(live, runner, frame, key, ids, output)
        self.figures.record(name, runner.model, runner.version, latency_ms, rows=n_rows)
        return Answer(name, live.revision, runner, ids, output, request_id, extra)

    def _pinned(self, live: LiveEndpoint, version: int) -> Runner:
        candidates = [r for r, _ in live.routes] + [r for r, _ in live.shadows]
        for runner in candidates:
            if runner.version == version:
                return runner
        model = live.policy.primary.model
        ref = f"{model}:{version}"
        if ref in self.runners:
            return self.runners[ref]
        raise NotFoundError(f"version {version} of {model!r} is not served by endpoint {live.name!r}")

    def _count_rejections(self, live: LiveEndpoint, runner: Runner, counts: Any, rejected: int) -> None:
        rejections: dict[str, int] = {}
        for (column, reason), count in counts.items():
            self.metrics.rejected_rows.labels(live.name, column, reason).inc(count)
            rejections[f"{column}: {reason}"] = int(count)
        self.metrics.errors.labels(live.name, runner.model, str(runner.version), "schema").inc()
        self.figures.record(
            live.name,
            runner.model,
            runner.version,
            0.0,
            rows=0,
            rejected_rows=rejected,
            rejections=rejections,
        )

    def _mirror(
        self,
        live: LiveEndpoint,
        runner: Runner,
        frame: pd.DataFrame,
        key: tuple[Any, ...] | None,
        ids: list[str],
        served: BatchOutput,
    ) -> None:
        # The frame was built for this request and nothing changes it once answered: the
        # dispatcher may keep it without a copy.
        for shadow, percent in live.shadows:
            target = ShadowTarget(live.name, shadow.model, shadow.version)
            if percent >= 100:
                self.shadow.offer(target, shadow.call, frame, ids, served, key=key, copy=False)
                continue
            keep = [i for i, pid in enumerate(ids) if should_mirror(percent, pid)]
            if keep:
                self.shadow.offer(
                    target,
                    shadow.call,
                    frame.iloc[keep],
                    [ids[i] for i in keep],
                    _take(served, keep),
                    key=key,
                    copy=False,
                )
        if live.canary is not None and live.baseline is not None and runner is live.canary:
            # The canary's disagreement gate compares it with the baseline on the same requests.
            baseline = ShadowTarget(live.name, live.baseline.model, live.baseline.version)
            self.shadow.offer(baseline, live.baseline.call, frame, ids, served, key=key, copy=False)

    def _on_shadow(self, results: list[ShadowResult]) -> None:
        now = dt.datetime.now(dt.UTC)
        for result in results:
            target = result.target_key
            ref = f"{target.model}:{target.version}"
            records = []
            for i, pid in enumerate(result.prediction_ids):
                outputs = None
                if result.error is None and result.predictions is not None:
                    outputs = _outputs(
                        BatchOutput(predictions=result.predictions, proba=result.proba), i, self._classes(ref)
                    )
                records.append(
                    ShadowRecord(
                        prediction_id=pid,
                        endpoint=target.endpoint,
                        model=target.model,
                        version=target.version,
                        at=now,
                        latency_ms=result.latency_ms,
                        outputs=outputs,
                        error=result.error,
                    )
                )
            self.log.append_shadow(records)
            compared, disagreed = len(result.agreement), result.disagreed
            live = self.live.get(target.endpoint)
            is_shadow = live is not None and any(r.ref == ref for r, _ in live.shadows)
            if live is not None and live.canary is not None and not is_shadow:
                # A baseline mirror: its disagreement belongs to the canary it judges.
                self.figures.record_shadow(
                    target.endpoint, live.canary.model, live.canary.version, compared, disagreed, 0
                )
            else:
                self.figures.record_shadow(
                    target.endpoint, target.model, target.version, compared, disagreed, 0
                )

    def _classes(self, ref: str) -> list[Any] | None:
        runner = self.runners.get(ref)
        return runner.classes if runner is not None else None


def _take(output: BatchOutput, rows: list[int]) -> BatchOutput:
    return BatchOutput(
        predictions=output.predictions[rows], proba=output.proba[rows] if output.proba is not None else None
    )


def _outputs(output: BatchOutput, i: int, classes: list[Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"prediction": json_scalar(output.predictions[i])}
    if output.proba is not None:
        row = output.proba[i]
        names = classes if classes is not None else list(range(len(row)))
        out["proba"] = {str(c): float(p) for c, p in zip(names, row, strict=False)}
    return out
