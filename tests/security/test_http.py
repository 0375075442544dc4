"""Authentication and permissions over real HTTP: 401, 403 per role and family, endpoint scopes, audit."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest

from passerelle.api.errors import error_from_response
from passerelle.auth import AuthenticationError, PermissionDeniedError
from tests.security.conftest import CACHE_SECONDS, Secured


def error_of(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_
    assert error["request_id"] == response.headers["x-request-id"]
    assert "\n" not in error["message"]
    message: str = error["message"]
    return message


# -- what needs no token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/v2/health/live", "/v2"]
)
def test_public_routes_answer_without_a_token(secured: Secured, path: str) -> None:
    assert httpx.get(f"{secured.url}{path}").status_code == 200


# -- 401 ------------------------------------------------------------------------------------------


def test_a_request_without_a_token_is_401_saying_how_to_send_one(secured: Secured) -> None:
    response = httpx.get(f"{secured.url}/api/v1/models")
    message = error_of(response, 401, "Unauthenticated")
    assert "Authorization: Bearer" in message
    assert "PASSERELLE_TOKEN" in message
    assert response.headers["www-authenticate"].startswith("Bearer")
    # The remote client turns it back into the same error.
    assert isinstance(error_from_response(401, response.json()), AuthenticationError)


def test_the_inference_path_needs_a_token_too(secured: Secured) -> None:
    body = {"dataframe_records": secured.records()}
    response = httpx.post(f"{secured.url}/v1/endpoints/churn-api/predict", json=body)
    error_of(response, 401, "Unauthenticated")
    # An unknown route is not a way around it: the caller learns nothing before it authenticates.
    error_of(httpx.get(f"{secured.url}/api/v1/nothing-here"), 401, "Unauthenticated")


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ("Bearer psl_" + "x" * 43, "unknown token"),
        ("Bearer not-a-passerelle-token", "start with psl_"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
    ],
)
def test_an_unknown_or_malformed_token_is_401(secured: Secured, header: str, said: str) -> None:
    response = httpx.get(f"{secured.url}/api/v1/models", headers={"Authorization": header})
    assert said in error_of(response, 401, "Unauthenticated")


def test_an_expired_token_is_401(secured: Secured) -> None:
    created = secured.local.create_token("short-lived", "viewer", expires_in=dt.timedelta(seconds=1))
    headers = {"Authorization": f"Bearer {created.secret}"}
    assert httpx.get(f"{secured.url}/api/v1/models", headers=headers).status_code == 200
    time.sleep(1.1)
    # Refused at its expiry, whatever the cache remembers.
    response = httpx.get(f"{secured.url}/api/v1/models", headers=headers)
    assert "token 'short-lived' expired at" in error_of(response, 401, "Unauthenticated")


def test_a_revoked_token_is_refused_within_the_cache_time(secured: Secured) -> None:
    created = secured.local.create_token("soon-revoked", "viewer")
    headers = {"Authorization": f"Bearer {created.secret}"}
    with httpx.Client(base_url=secured.url, headers=headers) as http:
        assert http.get("/api/v1/models").status_code == 200
        admin = secured.headers("admin")
        revoked = http.post("/api/v1/tokens/soon-revoked/revoke", headers=admin, json={"reason": "leaked"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked"
        done = time.monotonic()
        while (response := http.get("/api/v1/models")).status_code == 200:
            assert time.monotonic() - done < CACHE_SECONDS + 1.0, "still accepted after the cache time"
            time.sleep(0.05)
        assert "token 'soon-revoked' was revoked" in error_of(response, 401, "Unauthenticated")


# -- 403: each role on a route of each family ---------------------------------------------------


FAMILIES: dict[str, tuple[str, str, Any]] = {
    # family: (method, path, body)
    "read": ("GET", "/api/v1/models", None),
    "predict": ("POST", "/v1/endpoints/churn-api/predict", "records"),
    "feedback": ("POST", "/v1/endpoints/churn-api/feedback", {"items": []}),
    "register": ("PUT", "/api/v1/models/churn/aliases/staging", {"version": 1}),
    "operate": ("POST", "/api/v1/endpoints/churn-api/weights", {"routes": [["churn:1", 100]]}),
    "admin": ("GET", "/api/v1/config", None),
}
ALLOWED = {
    "viewer": {"read"},
    "predictor": {"predict", "feedback"},
    "scientist": {"read", "register"},
    "operator": {"read", "operate"},
    "admin": set(FAMILIES),
}
NEEDED_ROLES = {
    "read": "viewer, scientist, operator or admin",
    "predict": "predictor or admin",
    "feedback": "predictor or admin",
    "register": "scientist or admin",
    "operate": "operator or admin",
    "admin": "admin",
}


def _call(secured: Secured, token: str, family: str) -> httpx.Response:
    method, path, body = FAMILIES[family]
    if body == "records":
        body = {"dataframe_records": secured.records()}
    return httpx.request(method, f"{secured.url}{path}", json=body, headers=secured.headers(token))


@pytest.mark.parametrize("role", list(ALLOWED))
def test_each_role_may_do_its_families_and_nothing_else(secured: Secured, role: str) -> None:
    for family in FAMILIES:
        response = _call(secured, role, family)
        if family in ALLOWED[role]:
            assert response.status_code < 300, (role, family, response.text)
            continue
        message = error_of(response, 403, "PermissionDenied")
        assert f"token {role!r} has the role {role}" in message, message
        assert f"that needs the {family} permission, held by the role {NEEDED_ROLES[family]}" in message
        assert isinstance(error_from_response(403, response.json()), PermissionDeniedError)


def test_oip_metadata_is_open_to_predictors_and_readers(secured: Secured) -> None:
    for role in ("predictor", "viewer"):
        response = httpx.get(f"{secured.url}/v2/models/churn-api/ready", headers=secured.headers(role))
        assert response.status_code == 200, (role, response.text)
    response = httpx.get(f"{secured.url}/v2/models/churn-api/ready", headers=secured.headers("operator"))
    assert response.status_code == 200
    response = httpx.get(f"{secured.url}/api/v1/tokens", headers=secured.headers("operator"))
    assert "held by the role admin" in error_of(response, 403, "PermissionDenied")


# -- endpoint scopes ------------------------------------------------------------------------------


def test_a_token_limited_to_an_endpoint_acts_on_it_only(secured: Secured) -> None:
    body = {"dataframe_records": secured.records()}
    with httpx.Client(base_url=secured.url, headers=secured.headers("churn-predictor")) as http:
        assert http.post("/v1/endpoints/churn-api/predict", json=body).status_code == 200
        row = secured.frame.iloc[0]
        infer = {
            "inputs": [
                {"name": "age", "shape": [1], "datatype": "INT64", "data": [int(row["age"])]},
                {"name": "income", "shape": [1], "datatype": "FP64", "data": [float(row["income"])]},
                {"name": "score", "shape": [1], "datatype": "FP64", "data": [float(row["score"])]},
            ]
        }
        response = http.post("/v2/models/churn-api/infer", json=infer)
        assert response.status_code == 200, response.text
        message = error_of(http.post("/v1/endpoints/fraud-api/predict", json=body), 403, "PermissionDenied")
        assert message == (
            "token 'churn-predictor' is limited to the endpoint(s) churn-api; "
            "it may not act on endpoint 'fraud-api'"
        )
    with httpx.Client(base_url=secured.url, headers=secured.headers("churn-viewer")) as http:
        assert http.get("/api/v1/endpoints/churn-api").status_code == 200
        assert "fraud-api" in error_of(http.get("/api/v1/endpoints/fraud-api"), 403, "PermissionDenied")
        # Lists and the registry are about no endpoint in particular.
        for path in ("/api/v1/endpoints", "/api/v1/models"):
            message = error_of(http.get(path), 403, "PermissionDenied")
            assert f"GET {path} is not about one of them" in message


def test_a_token_cannot_be_limited_to_an_endpoint_with_a_role_beyond_reading_and_predicting(
    secured: Secured,
) -> None:
    body = {"name": "scoped-operator", "role": "operator", "endpoints": ["churn-api"]}
    response = httpx.post(f"{secured.url}/api/v1/tokens", json=body, headers=secured.headers("admin"))
    assert "role operator cannot be limited to endpoints" in error_of(response, 422, "InvalidInput")


# -- identity in the audit log ------------------------------------------------------------------


def test_the_audit_log_names_the_token_whatever_the_user_header_says(secured: Secured) -> None:
    headers = {**secured.headers("scientist"), "X-Passerelle-User": "someone-else"}
    response = httpx.put(
        f"{secured.url}/api/v1/models/churn/aliases/audited",
        json={"version": 1, "reason": "who did it"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    entries = httpx.get(
        f"{secured.url}/api/v1/audit", params={"action": "alias.set"}, headers=secured.headers("viewer")
    ).json()
    mine = [e for e in entries if e["target"] == "churn@audited"]
    assert [e["actor"] for e in mine] == ["token:scientist"], entries


def test_tokens_over_the_api_are_audited_and_never_show_their_secret_again(secured: Secured) -> None:
    admin = secured.headers("admin")
    with httpx.Client(base_url=secured.url, headers=admin) as http:
        body = {"name": "ci-bot", "role": "operator", "expires_in_s": 3600, "reason": "ci"}
        created = http.post("/api/v1/tokens", json=body)
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        assert secret.startswith("psl_")
        assert created.json()["token"]["prefix"] == secret[:12]
        listed = http.get("/api/v1/tokens")
        assert secret not in listed.text
        assert {t["name"]: t["status"] for t in listed.json()}["ci-bot"] == "active"
        again = http.post("/api/v1/tokens", json={"name": "ci-bot", "role": "viewer"})
        assert "exists already" in error_of(again, 409, "Conflict")
        bot = {"Authorization": f"Bearer {secret}"}
        weights = {"routes": [["churn:1", 100]], "reason": "by the bot"}
        assert http.post("/api/v1/endpoints/churn-api/weights", json=weights, headers=bot).is_success
        assert http.post("/api/v1/tokens/ci-bot/revoke", json={"reason": "rotated"}).is_success
        unknown = http.post("/api/v1/tokens/nobody/revoke")
        assert error_of(unknown, 404, "NotFound") == "token 'nobody' does not exist"
        audit = http.get("/api/v1/audit", params={"target": "token:ci-bot"}).json()
    assert [(e["action"], e["actor"], e["reason"]) for e in audit] == [
        ("token.revoke", "token:admin", "rotated"),
        ("token.create", "token:admin", "ci"),
    ]
    assert secret not in str(audit)
    # What the bot changed is recorded under its name.
    weights = secured.local.audit(action="endpoint.weights", limit=50)
    assert "token:ci-bot" in {e.actor for e in weights}, [e.actor for e in weights]
