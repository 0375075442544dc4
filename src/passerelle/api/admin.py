"""Routes of governance and housekeeping: the audit log, doctor, gc and the effective settings."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.audit import AuditEntry
from passerelle.client import DoctorReport

router = APIRouter(prefix="/api/v1", tags=["admin"], responses=responses(422, 500, 503))


class GcResult(BaseModel):
    removed: list[str] = Field(description="Artifact keys removed (or that would be, on a dry run).")
    dry_run: bool


@router.get(
    "/audit",
    summary="Query the audit log",
    description="Records of every state change, newest first: who, when, what, before/after, why.",
    response_model=list[AuditEntry],
    responses=responses(422),
)
def audit(
    client: ClientDep,
    since: Annotated[
        dt.datetime | None, Query(description="Only records at or after this time (ISO 8601).")
    ] = None,
    target: Annotated[
        str | None, Query(description="Only this model, version or dataset (a model includes its versions).")
    ] = None,
    action: Annotated[str | None, Query(description="Only this action, e.g. alias.set.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="At most this many records.")] = 100,
) -> list[AuditEntry]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    return client.audit(since=since, target=target, action=action, limit=limit)


@router.get(
    "/doctor",
    summary="Check the store",
    description="Database reachable, migrations applied, every artifact file against its sha256, "
    "orphan artifacts. Answers 200 with the problems listed; `problems` empty means healthy.",
    response_model=DoctorReport,
)
def doctor(client: ClientDep) -> DoctorReport:
    return client.doctor()


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
