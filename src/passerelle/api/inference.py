"""Inference routes: passerelle's MLflow-compatible API and the Open Inference Protocol v2.

Handlers read the raw body and answer raw bytes (orjson), skipping FastAPI's per-request
model validation on the hot path; the request shapes are still documented in OpenAPI.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from passerelle.__about__ import __version__
from passerelle.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from passerelle.serving import codec
from passerelle.serving.gateway import Answer, Gateway
from passerelle.signature import Signature

JSON = "application/json"

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["dataframe_records"],
                            "properties": {
                                "dataframe_records": {"type": "array", "items": {"type": "object"}},
                                "keys": {"type": "array", "items": {"type": ["string", "null"]}},
                            },
                        },
                        {
                            "type": "object",
                            "required": ["dataframe_split"],
                            "properties": {
                                "dataframe_split": {
                                    "type": "object",
                                    "required": ["columns", "data"],
                                    "properties": {
                                        "columns": {"type": "array", "items": {"type": "string"}},
                                        "data": {"type": "array", "items": {"type": "array"}},
                                    },
                                }
                            },
                        },
                    ]
                }
            }
        },
    }
}

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    }
}


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def check_body_size(gateway: Gateway, size: int) -> None:
    if size > gateway.limits.max_body_bytes:
        raise PayloadTooLargeError(
            f"request body of {size} bytes exceeds the limit of {gateway.limits.max_body_bytes}"
        )


async def _body(request: Request, gateway: Gateway) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_body_size(gateway, int(declared))
    body = await request.body()
    check_body_size(gateway, len(body))
    return body


def _record(gateway: Gateway, answer: Answer, code: str, seconds: float) -> None:
    m = gateway.metrics
    labels = (answer.endpoint, answer.runner.model, str(answer.runner.version))
    m.requests.labels(*labels, code).inc()
    m.request_rows.labels(*labels).inc(len(answer.prediction_ids))
    m.request_latency.labels(*labels).observe(seconds)


#: an answer of the inference routes: its body, content type and extra headers
Reply = tuple[bytes, str, dict[str, str]]


async def predict_reply(gateway: Gateway, name: str, body: bytes) -> Reply:
    """The answer to ``POST /v1/endpoints/{name}/predict`` with this body.

    Shared by the FastAPI route and the gateway's inference lane (passerelle.serving.lane).
    """
    started = time.perf_counter()
    decoded = codec.decode_predict(body)
    answer = await gateway.predict(name, decoded.columns, decoded.n_rows, keys=decoded.keys)
    runner = answer.runner
    extra: dict[str, Any] = {"revision": answer.revision}
    if answer.extra_columns:
        extra["ignored_columns"] = answer.extra_columns
    out = codec.encode_predict(
        answer.prediction_ids,
        runner.model,
        runner.version,
        name,
        answer.output.predictions,
        answer.output.proba,
        runner.classes,
        extra,
    )
    _record(gateway, answer, "200", time.perf_counter() - started)
    return out, JSON, {}


async def infer_reply(
    gateway: Gateway, name: str, body: bytes, headers: Mapping[str, str], version: int | None
) -> Reply:
    """The answer to an Open Inference Protocol v2 infer request (``version``: the pinned one).

    ``headers`` are the request's, with lower-case names (the binary data extension reads one).
    """
    started = time.perf_counter()
    live = gateway.live_endpoint(name)
    req = codec.decode_infer(body, headers)
    runner_sig = None
    primary = gateway.runners.get(live.policy.primary.ref)
    if primary is not None:
        runner_sig = primary.signature
    if runner_sig is None:
        raise InvalidInputError(
            f"endpoint {name!r} serves a version without a signature; use /v1/endpoints/{name}/predict"
        )
    columns_arrays = codec.tensors_to_columns(req.inputs, runner_sig.names)
    columns = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in columns_arrays.items()}
    n_rows = len(next(iter(columns.values()))) if columns else 0
    answer = await gateway.predict(name, columns, n_rows, version=version)
    runner = answer.runner
    produced = codec.default_outputs(answer.output.predictions, answer.output.proba)
    names, binary = codec.plan_outputs(req, [o[0] for o in produced])
    outputs = [o for name_ in names for o in produced if o[0] == name_]
    parameters: dict[str, Any] = {"prediction_ids": answer.prediction_ids, "endpoint": name}
    out, out_headers = codec.encode_infer(name, str(runner.version), req.id, outputs, parameters, binary)
    _record(gateway, answer, "200", time.perf_counter() - started)
    return out, out_headers.pop("Content-Type", JSON), out_headers


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/endpoints/{name}/predict",
        summary="Predict with an endpoint (MLflow scoring request shapes)",
        tags=["inference"],
        openapi_extra=_PREDICT_BODY,
        responses={
            200: {"description": "One prediction per row, with its prediction id and the answering version"},
            404: {"description": "Unknown endpoint"},
            413: {"description": "Too many rows or bytes"},
            422: {"description": "Rows that do not match the signature, naming row, column and reason"},
            500: {"description": "The model raised; the body carries a request id"},
            503: {"description": "Overloaded; retry after the Retry-After header"},
        },
    )
    async def predict(name: str, request: Request) -> Response:
        gateway = _gateway(request)
        body, media_type, headers = await predict_reply(gateway, name, await _body(request, gateway))
        return Response(body, media_type=media_type, headers=headers)

    async def infer(name: str, request: Request, version: int | None) -> Response:
        gateway = _gateway(request)
        body = await _body(request, gateway)
        out, media_type, headers = await infer_reply(gateway, name, body, request.headers, version)
        return Response(out, media_type=media_type, headers=headers)

    @router.post(
        "/v2/models/{name}/infer",
        summary="Open Inference Protocol v2: infer through the endpoint's traffic policy",
        tags=["oip-v2"],
        openapi_extra=_INFER_BODY,
    )
    async def infer_policy(name: str, request: Request) -> Response:
        return await infer(name, request, None)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Open Inference Protocol v2: infer with one registered version, bypassing the policy",
        tags=["oip-v2"],
        openapi_extra=_INFER_BODY,
    )
    async def infer_version(name: str, version: int, request: Request) -> Response:
        return await infer(name, request, version)

    @router.get("/v2/health/live", summary="OIP v2 liveness", tags=["oip-v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", summary="OIP v2 readiness", tags=["oip-v2"])
    async def ready(request: Request) -> Response:
        ok, _ = _gateway(request).ready()
        return Response(
            b'{"ready":true}' if ok else b'{"ready":false}', status_code=200 if ok else 503, media_type=JSON
        )

    @router.get("/v2", summary="OIP v2 server metadata", tags=["oip-v2"])
    async def server_metadata() -> Response:
        return Response(codec.server_metadata(__version__, ["binary_tensor_data"]), media_type=JSON)

    @router.get("/v2/models/{name}", summary="OIP v2 model metadata", tags=["oip-v2"])
    async def model_metadata(name: str, request: Request) -> Response:
        gateway = _gateway(request)
        live = gateway.live_endpoint(name)
        primary = gateway.runners.get(live.policy.primary.ref)
        if primary is None:
            raise NotFoundError(f"endpoint {name!r} is not loaded yet")
        versions = [str(r.version) for r, _ in live.routes]
        info = primary.loaded.info
        outputs = codec.prediction_tensors(info.output_schema or {})
        inputs: Signature | list[dict[str, Any]] = primary.signature if primary.signature is not None else []
        body = codec.model_metadata(name, versions, info.flavor, inputs, outputs)
        return Response(body, media_type=JSON)

    @router.get(
        "/v2/models/{name}/ready",
        summary="OIP v2 model readiness",
        tags=["oip-v2"],
        responses={404: {"description": "Unknown or not yet loaded endpoint"}},
    )
    async def model_ready(name: str, request: Request) -> Response:
        _gateway(request).live_endpoint(name)  # 404 with the reason when it is not live
        return Response(b'{"ready":true}', media_type=JSON)

    @router.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="OIP v2 version readiness",
        tags=["oip-v2"],
        responses={404: {"description": "Unknown endpoint, or a version it does not serve"}},
    )
    async def version_ready(name: str, version: int, request: Request) -> Response:
        live = _gateway(request).live_endpoint(name)
        if not any(r.version == version for r, _ in live.routes + live.shadows):
            raise NotFoundError(f"endpoint {name!r} does not serve version {version}")
        return Response(b'{"ready":true}', media_type=JSON)

    @router.get("/readyz", summary="Readiness: every endpoint's versions are loaded", tags=["health"])
    async def readyz(request: Request) -> Response:
        import orjson

        ok, details = _gateway(request).ready()
        body = orjson.dumps({"status": "ready" if ok else "not ready", **details})
        return Response(body, status_code=200 if ok else 503, media_type=JSON)

    @router.get("/metrics", summary="Prometheus metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        gateway = _gateway(request)
        figures = gateway.log.figures()
        gateway.metrics.log_queue_depth.set(figures.queue_depth)
        gateway.metrics.log_lag.set(figures.lag_seconds or 0.0)
        body, content_type = gateway.metrics.render()
        return Response(body, media_type=content_type)

    return router
