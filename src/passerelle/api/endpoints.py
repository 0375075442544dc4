"""Routes for endpoints, traffic policies and the prediction log (management API)."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Discriminator, Field, SkipValidation, Tag
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.endpoints import DeploySpec, EndpointDetail, EndpointInfo, RevisionInfo
from passerelle.errors import PayloadTooLargeError
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


# -- feedback ---------------------------------------------------------------------------------------

#: Largest feedback body, as for the inference routes; refused before it is parsed.
FEEDBACK_MAX_BYTES = 32 * 1024 * 1024
#: Most labels in one call. A call is one transaction: larger files go in several calls.
FEEDBACK_MAX_ITEMS = 100_000


class FeedbackItemBody(BaseModel):
    """One label: for a prediction id, or for a business key at a time."""

    prediction_id: str | None = Field(
        None, max_length=40, description="The id the prediction was answered with; or give key."
    )
    key: str | None = Field(
        None,
        max_length=500,
        description="A business key logged with the predictions: the label joins the endpoint's latest "
        "prediction with this key made at or before time.",
    )
    label: bool | int | float | str = Field(
        description="The ground truth, as the version predicts it: an integer or text class, true/false, "
        "or a number."
    )
    time: dt.datetime | None = Field(
        None, description="When the truth held, with a time zone (ISO 8601); default: when it is received."
    )


# Items are documented by FeedbackItemBody but checked by passerelle.feedback, one by one: a
# bad item is then reported by its position, and with on_invalid=reject it is listed in
# `rejected` while the others are stored, exactly as through a local client.
FeedbackItems = Annotated[
    list[SkipValidation[FeedbackItemBody]],
    Field(max_length=FEEDBACK_MAX_ITEMS, description=f"At most {FEEDBACK_MAX_ITEMS:,} labels."),
]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: FeedbackItems
    # Checked by passerelle.feedback, for the same message as through a local client.
    on_invalid: SkipValidation[Literal["raise", "reject"]] = Field(
        "raise",
        description="raise: one bad item refuses the whole call (422, naming each bad item); "
        "reject: the bad items are listed in `rejected` and the others are stored.",
    )
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


def _feedback_shape(value: Any) -> str | None:
    if isinstance(value, list):
        return "items"
    if isinstance(value, dict):
        return "request"
    return None


# Label pipelines mostly send a bare list of items: it is accepted as the items of a request
# with the defaults.
FeedbackBody = Annotated[
    Annotated[FeedbackRequest, Tag("request")] | Annotated[FeedbackItems, Tag("items")],
    Discriminator(
        _feedback_shape,
        custom_error_type="feedback_body",
        custom_error_message="expected an object with items, or a list of items",
    ),
]


class UnknownLabel(BaseModel):
    index: int = Field(description="Position of the item in the request, from 0.")
    prediction_id: str | None
    key: str | None
    reason: str


class FeedbackAnswer(BaseModel):
    matched: int = Field(description="Labels joined to a prediction, new or replacing an earlier label.")
    updated: int = Field(description="Of those, labels that changed an earlier label (each one audited).")
    unknown: list[UnknownLabel] = Field(
        description="Labels that matched no prediction (yet). They are kept, and joined by a rejoin "
        "once their prediction is in the log."
    )
    rejected: list[tuple[int, str]] = Field(
        description="(position, reason) of each refused item; only with on_invalid=reject."
    )


class UnmatchedLabel(BaseModel):
    id: int
    endpoint: str
    prediction_id: str | None
    key: str | None
    label: Any
    label_at: dt.datetime
    received_at: dt.datetime
    received_by: str
    status: str = Field(
        description="waiting: joined by a rejoin once its prediction is in the log; invalid: its "
        "prediction was found but the label does not fit it, so it is not retried."
    )
    reason: str


class RejoinAnswer(BaseModel):
    joined: int = Field(description="Kept labels joined to their prediction by this call.")


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes exceeds the limit of {limit}; send the labels in several calls"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Without a declared length the body is counted as it arrives, never held whole.
            raise PayloadTooLargeError(
                f"request body exceeds the limit of {limit} bytes; send the labels in several calls"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _BoundedBody(APIRoute):
    """A route whose body is refused beyond :data:`FEEDBACK_MAX_BYTES` before FastAPI reads it.

    FastAPI reads the whole body before any dependency or handler runs, so the limit is
    applied here, and the body read is replayed to FastAPI's own handler.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            body = await _bounded_body(request, FEEDBACK_MAX_BYTES)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    # What follows the body: the client's disconnection.
                    return await request.receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await handler(Request(request.scope, replay))

        return bounded


def record_feedback(name: EndpointName, body: FeedbackBody, client: ClientDep) -> dict[str, Any]:
    if isinstance(body, FeedbackRequest):
        items: list[Any] = body.items
        on_invalid, reason = body.on_invalid, body.reason
    else:
        items, on_invalid, reason = body, "raise", None
    return client.record_feedback(name, items, on_invalid=on_invalid, reason=reason).to_dict()


_FEEDBACK_ROUTE: dict[str, Any] = {
    "methods": ["POST"],
    "route_class_override": _BoundedBody,
    "summary": "Record labels (ground truth) of the endpoint's predictions",
    "description": "The body is `{items, on_invalid, reason}` or a bare list of items. Each item gives "
    "`prediction_id` or `key`, a `label` and optionally a `time`. Labels that match no prediction yet are "
    "kept and reported in `unknown`; labels that do not fit the version that made the prediction refuse "
    f"the call (422, naming each item by position) or, with `on_invalid=reject`, are listed in "
    f"`rejected`. At most {FEEDBACK_MAX_ITEMS:,} items and {FEEDBACK_MAX_BYTES // 2**20} MiB per call.",
    "response_model": FeedbackAnswer,
    "responses": responses(404, 413, 422),
}
router.add_api_route("/{name}/feedback", record_feedback, **_FEEDBACK_ROUTE)

#: the same route beside ``/v1/endpoints/{name}/predict``, where the applications that predict
#: already send their requests
feedback_router = APIRouter(tags=["inference"])
feedback_router.add_api_route(
    "/v1/endpoints/{name}/feedback", record_feedback, **_FEEDBACK_ROUTE, operation_id="record_feedback_v1"
)


@router.get(
    "/{name}/feedback/unmatched",
    summary="Labels that matched no prediction: waiting for it, or invalid; oldest first",
    response_model=list[UnmatchedLabel],
    responses=responses(404, 422),
)
def feedback_unmatched(
    name: EndpointName,
    client: ClientDep,
    status: Annotated[str | None, Query(description="waiting or invalid; default: both.")] = None,
    limit: Annotated[int, Query(description="At most this many labels, from 1 to 100,000.")] = 1000,
) -> list[dict[str, Any]]:
    return [label.to_dict() for label in client.feedback_unmatched(name, status=status, limit=limit)]


@router.post(
    "/{name}/feedback/rejoin",
    summary="Join the kept labels whose prediction has reached the log since",
    response_model=RejoinAnswer,
    responses=responses(404),
)
def rejoin_feedback(name: EndpointName, client: ClientDep) -> RejoinAnswer:
    return RejoinAnswer(joined=client.rejoin_feedback(name))
