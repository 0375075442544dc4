"""Routes of governance and housekeeping: the audit log, doctor, gc and the effective settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.audit import AuditEntry, parse_since
from passerelle.client import DoctorReport

router = APIRouter(prefix="/api/v1", tags=["admin"], responses=responses(422, 500, 503))


class GcResult(BaseModel):
    removed: list[str] = Field(description="Artifact keys removed (or that would be, on a dry run).")
    dry_run: bool


@router.get(
    "/audit",
    summary="Query the audit log",
    description="Records of every state change, newest first: who, when, what, before/after, why, "
    "and the hash chaining each record to the one before it.",
    response_model=list[AuditEntry],
    responses=responses(422),
)
def audit(
    client: ClientDep,
    since: Annotated[
        str | None,
        Query(description="Only records at or after this time: an ISO 8601 date/time, or 7d, 12h, 30m back."),
    ] = None,
    target: Annotated[
        str | None, Query(description="Only this model, version or dataset (a model includes its versions).")
    ] = None,
    action: Annotated[str | None, Query(description="Only this action, e.g. alias.set.")] = None,
    actor: Annotated[str | None, Query(description="Only records of this actor.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="At most this many records.")] = 100,
) -> list[AuditEntry]:
    start = None if since is None else parse_since(since, what="query parameter 'since'")
    return client.audit(since=start, target=target, action=action, actor=actor, limit=limit)


@router.get(
    "/doctor",
    summary="Check the store",
    description="Database reachable, migrations applied, every artifact file against its sha256, "
    "orphan artifacts, the audit log's hash chain. Answers 200 with the problems listed; "
    "`problems` empty means healthy.",
    response_model=DoctorReport,
    responses=responses(422),
)
def doctor(
    client: ClientDep,
    audit_anchor: Annotated[
        str | None,
        Query(
            description="ID:HASH printed earlier by `passerelle audit head`: that record must still carry it."
        ),
    ] = None,
) -> DoctorReport:
    return client.doctor(audit_anchor=audit_anchor)


@router.post(
    "/gc",
    summary="Remove orphan artifacts",
    description="Deletes artifacts no version references that are older than the grace period "
    "(left by interrupted registrations).",
    response_model=GcResult,
    responses=responses(422),
)
def gc(
    client: ClientDep,
    dry_run: Annotated[bool, Query(description="Only list what would be removed.")] = False,
) -> GcResult:
    return GcResult(removed=client.gc(dry_run=dry_run), dry_run=dry_run)


@router.get(
    "/config",
    summary="Show the server's effective settings",
    description="Secrets are masked.",
    response_model=dict[str, str],
)
def config(client: ClientDep) -> dict[str, str]:
    return client.settings.describe()
