"""Routes of API tokens: create (the secret is in that answer only), list, revoke. Admin only."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.auth import MAX_LIFETIME, ROLES, CreatedToken, TokenInfo

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"], responses=responses(422, 500, 503))

TokenName = Annotated[str, PathParam(description="Token name, e.g. ci-bot.")]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200, description="A name that says who holds it: ci-bot, alice-laptop.")
    role: str = Field(description=f"One of {', '.join(ROLES)}.")
    expires_in_s: float | None = Field(
        None,
        gt=0,
        le=MAX_LIFETIME.total_seconds(),
        description="Seconds until the token stops working; absent: it works until revoked.",
    )
    endpoints: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Limit the token to these endpoints (roles viewer and predictor only).",
    )
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


class RevokeRequest(BaseModel):
    reason: str | None = Field(None, max_length=2000, description="Why; kept in the audit log.")


@router.get("", summary="List tokens (never their secrets)", response_model=list[TokenInfo])
def list_tokens(client: ClientDep) -> list[TokenInfo]:
    return client.list_tokens()


@router.post(
    "",
    summary="Create a token; its secret is in this answer only",
    status_code=201,
    response_model=CreatedToken,
    responses=responses(400, 404, 409, 422),
)
def create_token(body: TokenRequest, client: ClientDep) -> CreatedToken:
    expires = dt.timedelta(seconds=body.expires_in_s) if body.expires_in_s is not None else None
    return client.create_token(
        body.name, body.role, expires_in=expires, endpoints=body.endpoints, reason=body.reason
    )


@router.post(
    "/{name}/revoke",
    summary="Revoke a token for good",
    description="Servers stop accepting it within their token cache time (token_cache_seconds). "
    "Revoking a revoked token changes nothing.",
    response_model=TokenInfo,
    responses=responses(404),
)
def revoke_token(
    name: TokenName, client: ClientDep, body: Annotated[RevokeRequest | None, Body()] = None
) -> TokenInfo:
    return client.revoke_token(name, reason=body.reason if body else None)
