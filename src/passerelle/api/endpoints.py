"""Routes for endpoints, traffic policies and the prediction log (management API)."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.endpoints import DeploySpec, EndpointDetail, EndpointInfo, RevisionInfo
from passerelle.serving.compare import Comparison

router = APIRouter(prefix="/api/v1/endpoints", tags=["endpoints"], responses=responses(500, 503))

EndpointName = Annotated[str, PathParam(description="Endpoint name, e.g. churn-api.")]
Reason = Annotated[
    str | None, Query(description="Why this change is made; kept in the audit log.", max_length=2000)
]


class DeployRequest(DeploySpec):
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class WeightsRequest(BaseModel):
    routes: list[tuple[str, int]] = Field(description="(version reference, percent) pairs summing to 100.")
    reason: str | None = None


class PromoteRequest(BaseModel):
    ref: str = Field(description="The version to serve, e.g. churn:4.")
    reason: str | None = None


class RollbackRequest(BaseModel):
    to: int | None = Field(None, ge=1, description="Revision to re-apply; default the previous one.")
    reason: str | None = None


@router.get("", summary="List endpoints with their current policy", response_model=list[EndpointInfo])
def list_endpoints(client: ClientDep) -> list[EndpointInfo]:
    return client.list_endpoints()


@router.get(
    "/{name}",
    summary="An endpoint: policy, live split over the last 5 minutes, revision history",
    response_model=EndpointDetail,
    responses=responses(404),
)
def get_endpoint(name: EndpointName, client: ClientDep) -> EndpointDetail:
    return client.get_endpoint(name)


@router.put(
    "/{name}",
    summary="Create an endpoint or replace its policy (a new revision)",
    response_model=RevisionInfo,
    responses=responses(404, 409, 422),
)
def deploy(name: EndpointName, body: DeployRequest, client: ClientDep) -> RevisionInfo:
    spec = DeploySpec.model_validate(body.model_dump(exclude={"reason"}))
    return client.deploy(name, spec, reason=body.reason)


@router.post(
    "/{name}/weights",
    summary="Change the traffic split",
    response_model=RevisionInfo,
    responses=responses(404, 409, 422),
)
def set_weights(name: EndpointName, body: WeightsRequest, client: ClientDep) -> RevisionInfo:
    return client.set_weights(name, body.routes, reason=body.reason)


@router.post(
    "/{name}/promote",
    summary="Serve one version and move its @champion alias, in one revision",
    response_model=RevisionInfo,
    responses=responses(404, 409, 422),
)
def promote(name: EndpointName, body: PromoteRequest, client: ClientDep) -> RevisionInfo:
    return client.promote(name, body.ref, reason=body.reason)


@router.post(
    "/{name}/rollback",
    summary="Re-apply an earlier revision",
    response_model=RevisionInfo,
    responses=responses(404, 409, 422),
)
def rollback(name: EndpointName, body: RollbackRequest, client: ClientDep) -> RevisionInfo:
    return client.rollback(name, to=body.to, reason=body.reason)


@router.get(
    "/{name}/compare",
    summary="Served versions against shadows on the same requests",
    response_model=Comparison,
    responses=responses(404),
)
def compare(
    name: EndpointName,
    client: ClientDep,
    since: Annotated[
        dt.datetime | None, Query(description="Start of the window; default one day ago.")
    ] = None,
) -> Comparison:
    start = since or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    return client.compare(name, since=start)


@router.get(
    "/{name}/predictions",
    summary="The newest logged predictions",
    response_model=list[dict[str, Any]],
    responses=responses(404),
)
def tail(
    name: EndpointName,
    client: ClientDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
) -> list[dict[str, Any]]:
    return client.predictions_tail(name, limit=limit)


@router.get(
    "/{name}/predictions/export",
    summary="Export logged predictions as Parquet, CSV or JSON lines",
    response_class=FileResponse,
    responses={
        **responses(404, 422),
        200: {"description": "The file", "content": {"application/octet-stream": {}}},
    },
)
def export(
    name: EndpointName,
    client: ClientDep,
    format: Annotated[Literal["parquet", "csv", "jsonl"], Query()] = "parquet",
    since: Annotated[dt.datetime | None, Query()] = None,
) -> FileResponse:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    fd, tmp = tempfile.mkstemp(prefix="passerelle-export-", suffix=f".{format}")
    os.close(fd)
    path = Path(tmp)
    path.unlink()
    client.predictions_export(name, output=path, since=since, fmt=format)
    return FileResponse(
        path,
        filename=f"{name}-predictions.{format}",
        media_type="application/octet-stream",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
