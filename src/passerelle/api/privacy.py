"""Routes for data protection: erasure by business key and the prediction log's retention."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.predictionlog import Erasure

router = APIRouter(prefix="/api/v1", tags=["data protection"], responses=responses(422, 500, 503))

EndpointName = Annotated[str, PathParam(description="Endpoint name, e.g. churn-api.")]


class EraseRequest(BaseModel):
    key: str = Field(
        min_length=1,
        max_length=1000,
        description="The business key: VALUE when the endpoint has a key column, else COLUMN=VALUE "
        "(customer_id=C000042).",
    )
    reason: str | None = Field(
        None, max_length=2000, description="Why; kept in the audit log, so it must not hold the key."
    )


class RetentionRequest(BaseModel):
    dry_run: bool = Field(False, description="Count what would be deleted; delete nothing.")


@router.post(
    "/endpoints/{name}/predictions/erase",
    summary="Erase everything logged under a business key",
    description="Deletes the endpoint's predictions with that key, their shadow answers and their labels, "
    "and records a tombstone so that records still waiting in a prediction log segment are dropped instead "
    "of stored. The audit record holds the counts and a keyed hash of the key, never the key. The key "
    "travels in the body so that no access log holds it.",
    response_model=Erasure,
    responses=responses(404),
)
def erase_predictions(name: EndpointName, body: EraseRequest, client: ClientDep) -> Erasure:
    return client.erase_predictions(name, body.key, reason=body.reason)


@router.post(
    "/predictions/retention",
    summary="Apply each endpoint's retention to the prediction log now",
    description="Deletes the predictions older than, or beyond the row count of, each endpoint's retention "
    "(else the server's default), with their shadow answers and labels. Answers the predictions deleted "
    "(or, with dry_run, that would be) per endpoint under a limit.",
    response_model=dict[str, int],
)
def apply_retention(body: RetentionRequest, client: ClientDep) -> dict[str, int]:
    return client.apply_retention(dry_run=body.dry_run)
