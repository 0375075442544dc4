"""Endpoints: named online services whose traffic policy changes only by numbered revisions.

Every change (deploy, weights, promote, rollback, a canary step or its automatic rollback)
appends a revision holding the whole policy and moves the endpoint's current revision in
the same transaction, with its audit record. Rolling back re-applies an earlier revision's
policy as a new revision, so history is never rewritten.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle._failpoints import failpoint
from passerelle.context import Context
from passerelle.errors import ConflictError, InvalidInputError, NotFoundError
from passerelle.policy import (
    CanaryGates,
    CanarySpec,
    Policy,
    RouteSpec,
    ShadowSpec,
    make_policy,
    readable_errors,
)
from passerelle.references import check_name, parse_ref
from passerelle.registry import Registry
from passerelle.signature import Signature
from passerelle.store.schema import Endpoint, EndpointRevision


class RevisionInfo(BaseModel):
    endpoint: str
    number: int
    kind: str
    policy: Policy
    created_at: dt.datetime
    created_by: str
    reason: str


class EndpointInfo(BaseModel):
    name: str
    created_at: dt.datetime
    created_by: str
    revision: int
    policy: Policy
    updated_at: dt.datetime


def _revision_info(endpoint: Endpoint, rev: EndpointRevision) -> RevisionInfo:
    return RevisionInfo(
        endpoint=endpoint.name,
        number=rev.number,
        kind=rev.kind,
        policy=Policy.model_validate(rev.policy),
        created_at=rev.created_at,
        created_by=rev.created_by,
        reason=rev.reason,
    )


class LiveVersion(BaseModel):
    ref: str
    requests: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


class EndpointDetail(BaseModel):
    endpoint: EndpointInfo
    revisions: list[RevisionInfo]
    live: list[LiveVersion]


class DeploySpec(BaseModel):
    """What a user asks for, with references not yet pinned (``churn@champion`` is allowed)."""

    routes: list[tuple[str, int]]
    sticky_key: str | None = None
    shadows: list[tuple[str, float]] = []
    canary: str | None = None
    steps: list[int] = [5, 25, 50, 100]
    step_interval_s: float = 600.0
    gates: CanaryGates = CanaryGates()
    max_batch_rows: int | None = None
    max_wait_ms: float | None = None
    key_column: str | None = None
    #: attach the default monitor and alert rules when the endpoint is created
    monitor: bool = True
    #: input columns never logged; None keeps the endpoint's current list (none for a new one)
    redact: list[str] | None = None
    #: age limit of logged predictions in days (0: none); None keeps the current setting
    retention_days: int | None = Field(None, ge=0)
    #: logged predictions kept per endpoint, newest first (0: all); None keeps the current setting
    retention_rows: int | None = Field(None, ge=0)


class Endpoints:
    def __init__(self, ctx: Context, registry: Registry | None = None) -> None:
        self.ctx = ctx
        self.registry = registry or Registry(ctx)
        #: loads a version to prove it can serve before a revision names it (set by callers that can)
        self.load_check: Callable[[str], None] | None = None

    # -- reading -------------------------------------------------------------------------

    def _get(self, session: Session, name: str, *, lock: bool = False) -> Endpoint:
        query = select(Endpoint).where(Endpoint.name == name)
        if lock:
            query = query.with_for_update()
        found = session.scalar(query)
        if found is None:
            raise NotFoundError(f"endpoint {name!r} does not exist")
        return found

    @staticmethod
    def _current(session: Session, endpoint: Endpoint) -> EndpointRevision:
        rev = session.scalar(
            select(EndpointRevision).where(
                EndpointRevision.endpoint_id == endpoint.id,
                EndpointRevision.number == endpoint.current_revision,
            )
        )
        assert rev is not None, "an endpoint always has its current revision"
        return rev

    def get(self, name: str) -> EndpointInfo:
        with self.ctx.store.read() as session:
            endpoint = self._get(session, name)
            rev = self._current(session, endpoint)
            return self._info(endpoint, rev)

    @staticmethod
    def _info(endpoint: Endpoint, rev: EndpointRevision) -> EndpointInfo:
        return EndpointInfo(
            name=endpoint.name,
            created_at=endpoint.created_at,
            created_by=endpoint.created_by,
            revision=endpoint.current_revision,
            policy=Policy.model_validate(rev.policy),
            updated_at=endpoint.updated_at,
        )

    def list_endpoints(self) -> list[EndpointInfo]:
        with self.ctx.store.read() as session:
            out = []
            for endpoint in session.scalars(select(Endpoint).order_by(Endpoint.name)).all():
                out.append(self._info(endpoint, self._current(session, endpoint)))
            return out

    def detail(self, name: str, *, window: dt.timedelta = dt.timedelta(minutes=5)) -> EndpointDetail:
        """The policy, the traffic each version really got over ``window``, and the history."""
        from passerelle.serving.figures import summary

        info = self.get(name)
        figures = summary(self.ctx.store, name, since=dt.datetime.now(dt.UTC) - window)
        live = [
            LiveVersion(
                ref=f"{model}:{version}",
                requests=s.requests,
                error_rate=s.error_rate,
                p50_ms=s.p50_ms,
                p99_ms=s.p99_ms,
            )
            for (model, version), s in sorted(figures.items())
        ]
        return EndpointDetail(endpoint=info, revisions=self.revisions(name), live=live)

    def revisions(self, name: str, *, limit: int = 50) -> list[RevisionInfo]:
        with self.ctx.store.read() as session:
            endpoint = self._get(session, name)
            revs = session.scalars(
                select(EndpointRevision)
                .where(EndpointRevision.endpoint_id == endpoint.id)
                .order_by(EndpointRevision.number.desc())
                .limit(limit)
            ).all()
            return [_revision_info(endpoint, r) for r in revs]

    def states(self) -> dict[str, int]:
        """Current revision of every endpoint: the cheap query gateways poll."""
        with self.ctx.store.read() as session:
            return {
                name: rev for name, rev in session.execute(select(Endpoint.name, Endpoint.current_revision))
            }

    def revision(self, name: str, number: int) -> RevisionInfo:
        with self.ctx.store.read() as session:
            endpoint = self._get(session, name)
            rev = session.scalar(
                select(EndpointRevision).where(
                    EndpointRevision.endpoint_id == endpoint.id, EndpointRevision.number == number
                )
            )
            if rev is None:
                raise NotFoundError(f"endpoint {name!r} has no revision {number}")
            return _revision_info(endpoint, rev)

    # -- changing ------------------------------------------------------------------------

    def deploy(self, name: str, spec: DeploySpec, *, reason: str | None = None) -> RevisionInfo:
        """Create the endpoint or replace its policy; aliases are pinned to their versions now."""
        check_name(name, "endpoint name")
        with self.ctx.store.write() as session, readable_errors():
            pin = self._pinner(session)
            routes = [RouteSpec(**pin(ref), weight=weight) for ref, weight in spec.routes]
            shadows = [ShadowSpec(**pin(ref), percent=pct) for ref, pct in spec.shadows]
            canary = None
            if spec.canary is not None:
                pinned = pin(spec.canary)
                canary = CanarySpec(
                    **pinned,
                    steps=spec.steps,
                    step_interval_s=spec.step_interval_s,
                    gates=spec.gates,
                    step_started_at=dt.datetime.now(dt.UTC),
                )
                routes = [r for r in routes if not (r.model == canary.model and r.version == canary.version)]
                if len(routes) != 1:
                    raise InvalidInputError(
                        "a canary needs exactly one other route (the baseline it grows against)"
                    )
                routes = [
                    RouteSpec(model=routes[0].model, version=routes[0].version, weight=100 - canary.weight),
                    RouteSpec(model=canary.model, version=canary.version, weight=canary.weight),
                ]
            existing = session.scalar(select(Endpoint).where(Endpoint.name == name).with_for_update())
            batching: dict[str, Any] = {}
            current: dict[str, Any] = {}
            if existing is not None:
                current = self._current(session, existing).policy
                batching = current.get("batching", {})
            # Data protection outlives a redeploy that does not mention it: forgetting --redact
            # when changing versions must not start logging what was redacted.
            redact = spec.redact if spec.redact is not None else current.get("redact", [])
            retention: dict[str, Any] = dict(current.get("retention") or {})
            if spec.retention_days is not None:
                retention["max_age_days"] = spec.retention_days
            if spec.retention_rows is not None:
                retention["max_rows"] = spec.retention_rows
            if spec.max_batch_rows is not None:
                batching["max_batch_rows"] = spec.max_batch_rows
            if spec.max_wait_ms is not None:
                batching["max_wait_ms"] = spec.max_wait_ms
            policy = make_policy(
                routes=routes,
                sticky_key=spec.sticky_key,
                shadows=shadows,
                canary=canary,
                batching=batching,
                key_column=spec.key_column,
                redact=redact,
                retention=retention,
            )
            revision = self._append(session, name, policy, "deploy" if existing is None else "update", reason)
            if existing is None and spec.monitor:
                self._attach_monitor(session, name)
            return revision

    def _attach_monitor(self, session: Session, name: str) -> None:
        """One command to a monitored endpoint: a default monitor and default alert rules."""
        from passerelle import alerts, monitor

        actor = self.ctx.actor
        why = "default monitor of a new endpoint (deploy --no-monitor leaves it out)"
        monitor.set_monitor_in(session, name, monitor.MonitorSpec(), actor, reason=why)
        alerts.set_rules_in(session, name, alerts.DEFAULT_RULES, actor, reason=why)

    def set_weights(
        self, name: str, routes: list[tuple[str, int]], *, reason: str | None = None
    ) -> RevisionInfo:
        with self.ctx.store.write() as session:
            endpoint = self._get(session, name, lock=True)
            current = Policy.model_validate(self._current(session, endpoint).policy)
            pin = self._pinner(session)
            new_routes = [RouteSpec(**pin(ref), weight=weight) for ref, weight in routes]
            policy = make_policy(
                **{**current.model_dump(), "routes": [r.model_dump() for r in new_routes], "canary": None}
            )
            return self._append(session, name, policy, "weights", reason)

    def promote(
        self, name: str, ref: str, *, reason: str | None = None, alias: str = "champion"
    ) -> RevisionInfo:
        """Route all traffic to ``ref`` and move ``model@champion`` to it, in one revision."""
        with self.ctx.store.write() as session:
            return self._promote_in(session, name, ref, reason=reason, alias=alias, kind="promote")

    def _promote_in(
        self, session: Session, name: str, ref: str, *, reason: str | None, alias: str, kind: str
    ) -> RevisionInfo:
        endpoint = self._get(session, name, lock=True)
        current = Policy.model_validate(self._current(session, endpoint).policy)
        target = self._pinner(session)(ref)
        target_ref = f"{target['model']}:{target['version']}"
        shadows = [s for s in current.shadows if s.ref != target_ref]
        policy = make_policy(
            **{
                **current.model_dump(),
                "routes": [{**target, "weight": 100}],
                "shadows": [s.model_dump() for s in shadows],
                "canary": None,
            }
        )
        self.registry.set_alias_in(session, target["model"], alias, target["version"], reason=reason)
        return self._append(session, name, policy, kind, reason)

    def rollback(self, name: str, *, to: int | None = None, reason: str | None = None) -> RevisionInfo:
        """Re-apply an earlier revision's policy (by default the one before the current)."""
        with self.ctx.store.write() as session:
            endpoint = self._get(session, name, lock=True)
            number = to if to is not None else endpoint.current_revision - 1
            if to is None and number < 1:
                raise ConflictError(f"endpoint {name!r} has no earlier revision to roll back to")
            old = session.scalar(
                select(EndpointRevision).where(
                    EndpointRevision.endpoint_id == endpoint.id, EndpointRevision.number == number
                )
            )
            if old is None:
                raise NotFoundError(f"endpoint {name!r} has no revision {number}")
            policy = Policy.model_validate(old.policy)
            # A rollback is about traffic: what the endpoint redacts and keeps stays as it is now.
            now_in_force = Policy.model_validate(self._current(session, endpoint).policy)
            policy.redact, policy.retention = now_in_force.redact, now_in_force.retention
            if policy.canary is not None:
                # Re-applying a canary restarts its clock rather than judging stale figures.
                policy.canary.step_started_at = dt.datetime.now(dt.UTC)
            self._check_versions(session, policy)
            return self._append(session, name, policy, "rollback", reason or f"rollback to revision {number}")

    def _pinner(self, session: Session) -> Callable[[str], dict[str, Any]]:
        def pin(ref: str) -> dict[str, Any]:
            parse_ref(ref)
            info = self.registry.resolve_in(session, ref, allow_archived=False)
            return {"model": info.model, "version": info.number}

        return pin

    def _check_versions(self, session: Session, policy: Policy) -> None:
        """Every version exists, is live, and matches the primary's signature."""
        primary = self.registry.resolve_in(session, policy.primary.ref, allow_archived=False)
        base = Signature.from_dict(primary.signature) if primary.signature else None
        for ref in policy.versions():
            info = self.registry.resolve_in(session, ref, allow_archived=False)
            if base is not None and info.signature is not None and ref != primary.ref:
                diffs = base.differences(Signature.from_dict(info.signature))
                if diffs:
                    raise ConflictError(f"{ref} is not compatible with {primary.ref}: " + "; ".join(diffs))
            if self.load_check is not None:
                self.load_check(ref)

    def _append(
        self, session: Session, name: str, policy: Policy, kind: str, reason: str | None
    ) -> RevisionInfo:
        self._check_versions(session, policy)
        endpoint = session.scalar(select(Endpoint).where(Endpoint.name == name).with_for_update())
        now = dt.datetime.now(dt.UTC)
        before = None
        if endpoint is None:
            endpoint = Endpoint(name=name, created_by=self.ctx.actor, current_revision=0)
            session.add(endpoint)
            try:
                session.flush()
            except DBIntegrityError as exc:
                raise ConflictError(f"endpoint {name!r} was created concurrently; try again") from exc
        else:
            before = {"revision": endpoint.current_revision, **self._current(session, endpoint).policy}
        number = endpoint.current_revision + 1
        rev = EndpointRevision(
            endpoint_id=endpoint.id,
            number=number,
            policy=policy.model_dump(mode="json"),
            kind=kind,
            created_by=self.ctx.actor,
            reason=reason or "",
        )
        session.add(rev)
        endpoint.current_revision = number
        endpoint.updated_at = now
        session.flush()
        audit.record(
            session,
            actor=self.ctx.actor,
            action=f"endpoint.{kind}",
            target=name,
            before=before,
            after={"revision": number, **policy.model_dump(mode="json")},
            reason=reason,
        )
        failpoint("endpoints.before_commit")
        return _revision_info(endpoint, rev)

    # -- canary --------------------------------------------------------------------------

    def canary_tick(
        self,
        name: str,
        figures: Callable[[str, dt.datetime, str, int], dict[str, float]],
        *,
        now: dt.datetime | None = None,
    ) -> RevisionInfo | None:
        """Advance or roll back a canary whose step interval has elapsed; ``None`` when nothing changes.

        ``figures(endpoint, since, model, version)`` returns the canary's figures over the step:
        requests, error_rate, p99_ms and disagreement_rate (against the baseline on the same requests).
        """
        now = now or dt.datetime.now(dt.UTC)
        info = self.get(name)
        canary = info.policy.canary
        if canary is None or canary.step_started_at is None:
            return None
        if (now - canary.step_started_at).total_seconds() < canary.step_interval_s:
            return None
        seen = figures(name, canary.step_started_at, canary.model, canary.version)
        failure = _failed_gate(canary, seen)
        with self.ctx.store.write() as session:
            endpoint = self._get(session, name, lock=True)
            if endpoint.current_revision != info.revision:
                return None  # somebody changed the policy meanwhile; judge it next tick
            if failure is not None:
                baseline = info.policy.primary
                policy = make_policy(
                    **{
                        **info.policy.model_dump(),
                        "routes": [{"model": baseline.model, "version": baseline.version, "weight": 100}],
                        "canary": None,
                    }
                )
                return self._append(
                    session, name, policy, "canary-rollback", f"canary {canary.ref} rolled back: {failure}"
                )
            if seen.get("requests", 0) < canary.gates.min_requests:
                return None  # not enough traffic yet to judge this step
            if canary.step_index + 1 >= len(canary.steps):
                return self._promote_in(
                    session,
                    name,
                    canary.ref,
                    reason=f"canary {canary.ref} passed every step",
                    alias="champion",
                    kind="canary-done",
                )
            step = canary.model_copy(update={"step_index": canary.step_index + 1, "step_started_at": now})
            baseline = info.policy.primary
            routes = [
                {"model": baseline.model, "version": baseline.version, "weight": 100 - step.weight},
                {"model": step.model, "version": step.version, "weight": step.weight},
            ]
            if step.weight == 100:
                routes = routes[1:]
                routes[0]["weight"] = 100
            policy = make_policy(
                **{**info.policy.model_dump(), "routes": routes, "canary": step.model_dump()}
            )
            return self._append(
                session,
                name,
                policy,
                "canary-step",
                f"canary {canary.ref} to {step.weight}%: gates held ({_shown(seen)})",
            )


def _shown(seen: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(seen.items()))


def _failed_gate(canary: CanarySpec, seen: dict[str, float]) -> str | None:
    gates = canary.gates
    if gates.max_error_rate is not None and seen.get("error_rate", 0.0) > gates.max_error_rate:
        return f"error rate {seen['error_rate']:.3%} above {gates.max_error_rate:.3%}"
    if gates.max_p99_ms is not None and seen.get("p99_ms", 0.0) > gates.max_p99_ms:
        return f"p99 {seen['p99_ms']:.1f} ms above {gates.max_p99_ms:g} ms"
    if gates.max_disagreement is not None and seen.get("disagreement_rate", 0.0) > gates.max_disagreement:
        return (
            f"disagreement {seen['disagreement_rate']:.3%} with the baseline "
            f"above {gates.max_disagreement:.3%}"
        )
    return None
