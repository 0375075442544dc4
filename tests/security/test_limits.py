"""Limits over real HTTP: body size (413), rate per token (429), timeouts (504 and 408)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
from fastapi import APIRouter

from passerelle.api.app import create_app
from passerelle.api.deps import Guarded
from passerelle.auth import Permission
from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.serving.server import background_server
from tests.security.conftest import Secured, secured_server
from tests.security.models import SLOW_SECONDS

BODY_LIMIT = 64 * 1024
UPLOAD_LIMIT = 512 * 1024
TIMEOUT = 1.5
RATE, BURST = 2.0, 3
ROWS = 5


def _slow_endpoint(local: LocalClient, frame: pd.DataFrame) -> None:
    local.register("tests.security.models:slow", "slow", flavor="python", sample=frame.head(1))
    local.deploy("slow-api", DeploySpec(routes=[("slow:1", 100)], monitor=False))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    with secured_server(
        tmp_path_factory.mktemp("limited"),
        _slow_endpoint,
        max_body_bytes=BODY_LIMIT,
        max_upload_bytes=UPLOAD_LIMIT,
        max_rows_per_request=ROWS,
        request_timeout_s=TIMEOUT,
        rate_limit_per_s=RATE,
        rate_limit_burst=BURST,
    ) as found:
        yield found


def _error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_
    assert error["request_id"] == response.headers["x-request-id"]
    message: str = error["message"]
    return message


def test_a_body_over_the_limit_is_413_declared_or_streamed(limited: Secured) -> None:
    headers = limited.new_token("big-bodies", "admin")
    rows = [{"age": 30, "income": 1000.0, "score": 0.5}] * 3000
    big = json.dumps({"dataframe_records": rows}).encode()
    assert len(big) > BODY_LIMIT
    url = f"{limited.url}/v1/endpoints/churn-api/predict"
    declared = httpx.post(url, content=big, headers={**headers, "Content-Type": "application/json"})
    assert _error(declared, 413, "PayloadTooLarge") == (
        f"request body of {len(big)} bytes exceeds the limit of {BODY_LIMIT} bytes (max_body_bytes)"
    )

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    # Without a declared length, the body is counted as it arrives.
    streamed = httpx.post(url, content=chunks(), headers={**headers, "Content-Type": "application/json"})
    assert "exceeds the limit of 65536 bytes (max_body_bytes)" in _error(streamed, 413, "PayloadTooLarge")
    # The management API has the same limit.
    alias = httpx.put(
        f"{limited.url}/api/v1/models/churn/aliases/big",
        json={"version": 1, "reason": "x" * BODY_LIMIT},
        headers=headers,
    )
    _error(alias, 413, "PayloadTooLarge")


def test_rows_per_request_come_from_the_settings(limited: Secured) -> None:
    headers = limited.new_token("many-rows", "predictor")
    url = f"{limited.url}/v1/endpoints/churn-api/predict"
    assert httpx.post(url, json={"dataframe_records": limited.records(ROWS)}, headers=headers).is_success
    refused = httpx.post(url, json={"dataframe_records": limited.records(ROWS + 1)}, headers=headers)
    assert _error(refused, 413, "PayloadTooLarge") == f"{ROWS + 1} rows in one request; the limit is {ROWS}"


def test_uploads_have_their_own_larger_limit(limited: Secured) -> None:
    headers = limited.new_token("uploader", "scientist")
    csv = pd.concat([limited.frame] * 40).to_csv(index=False).encode()
    assert BODY_LIMIT < len(csv) < UPLOAD_LIMIT
    url = f"{limited.url}/api/v1/datasets/big-train/versions/upload"
    accepted = httpx.post(url, files={"file": ("train.csv", csv)}, headers=headers, timeout=30)
    assert accepted.status_code == 201, accepted.text
    too_big = httpx.post(url, files={"file": ("train.csv", csv * 3)}, headers=headers, timeout=30)
    assert "(max_upload_bytes)" in _error(too_big, 413, "PayloadTooLarge")


def test_a_token_over_its_rate_is_429_with_retry_after(limited: Secured) -> None:
    hasty = limited.new_token("hasty", "viewer")
    calm = limited.new_token("calm", "viewer")
    with httpx.Client(base_url=limited.url) as http:
        codes = [http.get("/api/v1/models", headers=hasty).status_code for _ in range(BURST)]
        assert codes == [200] * BURST
        refused = http.get("/api/v1/models", headers=hasty)
        message = _error(refused, 429, "RateLimited")
        assert message.startswith("too many requests from token 'hasty': the limit is 2 a second")
        assert refused.headers["retry-after"] == "1"
        # Another token has its own bucket; health and metrics are never limited.
        assert http.get("/api/v1/models", headers=calm).status_code == 200
        assert all(http.get("/healthz").status_code == 200 for _ in range(2 * BURST))
        time.sleep(1.0 / RATE + 0.05)
        assert http.get("/api/v1/models", headers=hasty).status_code == 200


def test_a_slow_model_is_answered_504_and_the_server_goes_on(limited: Secured) -> None:
    headers = limited.new_token("patient", "predictor")
    body = {"dataframe_records": limited.records(1)}
    started = time.monotonic()
    response = httpx.post(
        f"{limited.url}/v1/endpoints/slow-api/predict", json=body, headers=headers, timeout=30
    )
    waited = time.monotonic() - started
    message = _error(response, 504, "Timeout")
    assert message.startswith(f"no answer within {TIMEOUT:g} s (request_timeout_s)")
    assert response.headers["connection"] == "close"
    assert TIMEOUT <= waited < SLOW_SECONDS, waited
    fine = httpx.post(f"{limited.url}/v1/endpoints/churn-api/predict", json=body, headers=headers)
    assert fine.status_code == 200, fine.text


def test_a_body_that_stops_arriving_is_408(limited: Secured) -> None:
    secret = limited.local.create_token("stalled", "scientist").secret
    where = urlsplit(limited.url)
    request = (
        "PUT /api/v1/models/churn/aliases/stalled HTTP/1.1\r\n"
        f"Host: {where.netloc}\r\nAuthorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    ).encode()
    with socket.create_connection((where.hostname, where.port), timeout=TIMEOUT + 5) as sock:
        sock.sendall(request)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(4096)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started >= TIMEOUT - 0.1
    assert b"RequestTimeout" in answer or b"connection: close" in answer.lower()


def test_routes_declared_untimed_may_take_longer(limited: Secured) -> None:
    router = APIRouter()

    @router.get("/api/v1/long-report")
    async def long_report() -> dict[str, bool]:
        await asyncio.sleep(TIMEOUT + 0.5)
        return {"done": True}

    @router.get("/api/v1/short-report")
    async def short_report() -> dict[str, bool]:
        await asyncio.sleep(TIMEOUT + 0.5)
        return {"done": True}

    untimed = ["GET /api/v1/long-report"]
    guarded = Guarded(router, read=Permission.READ, write=Permission.ADMIN, untimed=untimed)
    headers = limited.new_token("reader", "viewer")
    app = create_app(limited.settings, routers=[guarded])
    with background_server(app) as url, concurrent.futures.ThreadPoolExecutor(2) as pool:
        long = pool.submit(httpx.get, f"{url}/api/v1/long-report", headers=headers, timeout=30)
        short = pool.submit(httpx.get, f"{url}/api/v1/short-report", headers=headers, timeout=30)
        assert long.result().json() == {"done": True}
        _error(short.result(), 504, "Timeout")
