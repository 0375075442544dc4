"""The inference lane: the same routes, checks and error answers as the FastAPI app, without its layers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Match

from passerelle.api.deps import access_of
from passerelle.endpoints import DeploySpec
from passerelle.serving import lane
from passerelle.serving.app import create_serving_app
from passerelle.settings import Settings
from tests.serving.conftest import serving

INFERENCE_PATHS = {
    "/v1/endpoints/{name}/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}


def _records(frame, n=3):  # type: ignore[no-untyped-def]
    return frame.head(n).to_dict("records")


class _Routes:
    """The serving app's routes (a plain object: hypothesis prints its arguments on failure)."""

    def __init__(self, home: Path) -> None:
        app = create_serving_app(Settings(home=home), background=False)
        self.routes = access_of(app).table()

    def __repr__(self) -> str:
        return "<serving app routes>"


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> _Routes:
    return _Routes(tmp_path_factory.mktemp("lane"))


_FILLER = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=6)
_SEGMENT = st.one_of(
    st.sampled_from(["v1", "v2", "endpoints", "models", "versions", "predict", "infer", "churn", "3", "007"]),
    _FILLER,
)
# Paths shaped like the routes, with any text or number in their parameters, and anything else.
_SHAPED = st.tuples(
    st.sampled_from(
        [
            "/v1/endpoints/{}/predict",
            "/v2/models/{}/infer",
            "/v2/models/{}/versions/{}/infer",
            "/v2/models/{}/versions/{}/ready",
            "/api/v1/endpoints/{}/predict",
        ]
    ),
    _SEGMENT,
    st.one_of(_SEGMENT, st.integers(min_value=0).map(str)),
).map(lambda t: t[0].format(t[1], t[2]))
_PATHS = st.one_of(_SHAPED, st.lists(_SEGMENT, max_size=7).map(lambda parts: "/" + "/".join(parts)))


@settings(max_examples=500, deadline=None)
@given(path=_PATHS, method=st.sampled_from(["POST", "GET", "PUT"]))
def test_the_lane_takes_exactly_the_requests_the_inference_routes_match(
    app_routes: _Routes, path: str, method: str
) -> None:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    starlette = [
        entry.path for entry in app_routes.routes if entry.matcher.matches(dict(scope))[0] is Match.FULL
    ]
    first = starlette[0] if starlette else None
    taken = lane.route(scope) is not None
    if first not in INFERENCE_PATHS:
        assert not taken, (path, method, first)
    elif "{version}" in first:
        # A version that is not a number is left to the app, which answers 422 naming it.
        assert taken == bool(re.fullmatch("[0-9]+", path.split("/")[5])), (path, method)
    else:
        assert taken, (path, method)


def test_answers_carry_the_request_id_and_errors_their_body(registered) -> None:  # type: ignore[no-untyped-def]
    settings_, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings_) as (url, _), httpx.Client(base_url=url) as http:
        body = {"dataframe_records": _records(frame)}
        r = http.post("/v1/endpoints/churn-api/predict", json=body, headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "abc-123"
        assert r.headers["content-type"] == "application/json"
        assert len(r.json()["predictions"]) == 3
        # An id that cannot be logged as is gets replaced.
        r = http.post("/v1/endpoints/churn-api/predict", json=body, headers={"X-Request-ID": "a b\tc"})
        assert r.status_code == 200
        assert len(r.headers["x-request-id"]) == 32
        missing = http.post("/v1/endpoints/nope/predict", json=body, headers={"X-Request-ID": "r-404"})
        assert missing.status_code == 404
        assert missing.json()["error"] == {
            "type": "NotFound",
            "message": "endpoint 'nope' does not exist",
            "request_id": "r-404",
        }
        assert missing.headers["x-request-id"] == "r-404"
        # Other methods are the app's: a 405 in the same error shape.
        wrong = http.get("/v1/endpoints/churn-api/predict")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["type"] == "MethodNotAllowed"
        # A version that is not a number is left to the app, which names the parameter.
        r = http.post("/v2/models/churn-api/versions/x/infer", json={})
        assert r.status_code == 422
        assert "version" in r.json()["error"]["message"]
        pinned = {
            "inputs": [
                {"name": c, "shape": [1], "datatype": "FP64", "data": [float(frame[c].iloc[0])]}
                for c in frame.columns
            ]
        }
        r = http.post("/v2/models/churn-api/versions/1/infer", json=pinned)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        r = http.post("/v2/models/churn-api/versions/2/infer", json=pinned)
        assert r.status_code == 404, r.text


def test_body_limits_hold_declared_or_streamed(registered) -> None:  # type: ignore[no-untyped-def]
    settings_, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    small = settings_.model_copy(update={"max_body_bytes": 2048})
    big = b'{"dataframe_records": [' + b", ".join([b'{"age": 1}'] * 400) + b"]}"
    with serving(small) as (url, _), httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/endpoints/churn-api/predict", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert "max_body_bytes" in r.json()["error"]["message"]

        def chunks():  # type: ignore[no-untyped-def]
            for start in range(0, len(big), 500):
                yield big[start : start + 500]

        # No Content-Length: the limit cuts in while the body arrives.
        r = http.post("/v1/endpoints/churn-api/predict", content=chunks())
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "PayloadTooLarge"
        ok = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": _records(frame)})
        assert ok.status_code == 200


def test_an_unexpected_failure_is_a_500_with_only_the_request_id(registered, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    settings_, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    with serving(settings_) as (url, gateway):
        monkeypatch.setattr(gateway, "predict", broken)
        r = httpx.post(
            f"{url}/v1/endpoints/churn-api/predict",
            json={"dataframe_records": _records(frame)},
            headers={"X-Request-ID": "boom-1"},
        )
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "Internal"
    assert "boom-1" in r.json()["error"]["message"]
    assert "secret internals" not in r.text
    assert any("boom-1" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_tokens_are_checked_on_the_lane(registered, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings_, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    viewer = client.create_token("watcher", "viewer").secret
    predictor = client.create_token("caller", "predictor", endpoints=["churn-api"]).secret
    secured = settings_.model_copy(update={"auth": True})
    body = {"dataframe_records": _records(frame)}
    with serving(secured) as (url, _), httpx.Client(base_url=url) as http:
        r = http.post("/v1/endpoints/churn-api/predict", json=body)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = http.post(
            "/v1/endpoints/churn-api/predict", json=body, headers={"Authorization": f"Bearer {viewer}"}
        )
        assert r.status_code == 403
        assert "predict" in r.json()["error"]["message"]
        auth = {"Authorization": f"Bearer {predictor}"}
        assert http.post("/v1/endpoints/churn-api/predict", json=body, headers=auth).status_code == 200
        # The token is limited to churn-api: another endpoint's name is refused before any lookup.
        assert http.post("/v1/endpoints/other/predict", json=body, headers=auth).status_code == 403
        assert http.post("/v2/models/other/infer", json={"inputs": []}, headers=auth).status_code == 403
