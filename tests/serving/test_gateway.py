"""The gateway over real HTTP: both MLflow shapes, validation, routing, shadow, the log, policy changes."""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter

import httpx
import pytest

from passerelle.endpoints import DeploySpec
from passerelle.predictionlog import LogShipper
from tests.serving.conftest import serving, wait_until


def _records(frame, n=5):  # type: ignore[no-untyped-def]
    return frame.head(n).to_dict("records")


def test_predict_both_shapes_and_log(registered) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn@champion", 100)], shadows=[("churn:2", 100.0)]))
    with serving(settings) as (url, gateway):
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": _records(frame)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "churn"
        assert body["version"] == 1
        assert len(body["predictions"]) == 5
        ids = [p["prediction_id"] for p in body["predictions"]]
        assert len(set(ids)) == 5
        assert set(body["predictions"][0]["proba"]) == {"0", "1"}
        split = {"dataframe_split": {"columns": list(frame.columns), "data": frame.head(3).values.tolist()}}
        r2 = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json=split)
        assert r2.status_code == 200, r2.text
        ids += [p["prediction_id"] for p in r2.json()["predictions"]]
        gateway.log.flush()
        wait_until(lambda: gateway.shadow.queued_rows == 0)
    LogShipper(settings.home.resolve() / "predictions", client.ctx.store).ship_once()
    rows = client.predictions_tail("churn-api", limit=100)
    assert {r["id"] for r in rows} == set(ids)
    shadowed = [r for r in rows if r.get("shadows")]
    assert shadowed, "shadow outputs are logged under the served prediction id"
    assert shadowed[0]["shadows"][0]["version"] == 2


def test_bad_input_gets_clear_4xx(registered) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings) as (url, _):
        r = httpx.post(f"{url}/v1/endpoints/nope/predict", json={"dataframe_records": _records(frame)})
        assert r.status_code == 404
        assert "nope" in r.json()["error"]["message"]
        bad = _records(frame, 3)
        bad[1]["age"] = "old"
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": bad})
        assert r.status_code == 422
        err = r.json()["error"]
        assert any(d["row"] == 1 and d["column"] == "age" for d in err["details"]), err
        missing = [{k: v for k, v in row.items() if k != "income"} for row in _records(frame, 2)]
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": missing})
        assert r.status_code == 422
        assert "income" in r.text
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", content=b"{not json")
        assert r.status_code in (400, 422)
        assert "body" in r.json()["error"]["message"]
        metrics = httpx.get(f"{url}/metrics").text
        assert "passerelle_rejected_rows_total" in metrics


def test_sticky_key_and_ab_split(registered) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    frame = frame.assign(customer=[f"C{i}" for i in range(len(frame))])
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 50), ("churn:2", 50)], sticky_key="customer"))
    with serving(settings) as (url, _), httpx.Client(base_url=url) as http:
        seen: dict[str, set[int]] = {}
        versions: Counter[int] = Counter()
        for i in range(120):
            row = frame.iloc[[i % 40]].to_dict("records")
            r = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": row})
            assert r.status_code == 200, r.text
            seen.setdefault(row[0]["customer"], set()).add(r.json()["version"])
            versions[r.json()["version"]] += 1
        assert all(len(v) == 1 for v in seen.values()), "a key always lands on the same version"
        assert set(versions) == {1, 2}


def test_policy_change_applies_without_failed_requests(registered) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    payload = {"dataframe_records": _records(frame, 2)}
    with serving(settings) as (url, _):
        stop = time.monotonic() + 6
        changed_at: list[float] = []

        def hammer() -> list[tuple[float, int, int]]:
            out = []
            with httpx.Client(base_url=url) as http:
                while time.monotonic() < stop:
                    r = http.post("/v1/endpoints/churn-api/predict", json=payload)
                    out.append((time.monotonic(), r.status_code, r.json().get("version", 0)))
            return out

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer) for _ in range(4)]
            time.sleep(1.5)
            client.promote("churn-api", "churn:2", reason="test")
            changed_at.append(time.monotonic())
            results = [x for f in futures for x in f.result()]
    assert results
    assert all(code == 200 for _, code, _ in results), Counter(code for _, code, _ in results)
    after = [v for t, _, v in results if t > changed_at[0] + 2.0]
    assert after
    assert set(after) == {2}, "every request 2 s after the change is answered by the new revision"


def test_model_error_is_500_with_request_id(registered, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    client.register("tests.serving.models:explode", "boom", flavor="python", sample=frame.head(1))
    client.deploy("boom-api", DeploySpec(routes=[("boom:1", 100)]))
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    bad = _records(frame, 2)
    bad[0]["age"] = 999
    with serving(settings) as (url, _):
        r = httpx.post(f"{url}/v1/endpoints/boom-api/predict", json={"dataframe_records": bad})
        assert r.status_code == 500
        assert "request id" in r.json()["error"]["message"]
        ok = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": _records(frame)})
        assert ok.status_code == 200


def test_too_many_rows_is_413(registered) -> None:  # type: ignore[no-untyped-def]
    from passerelle.serving.gateway import Limits

    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings, limits=Limits(max_rows=10)) as (url, _):
        body = {"dataframe_records": _records(frame, 11)}
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json=body)
        assert r.status_code == 413
        assert "limit is 10" in r.json()["error"]["message"]


def test_health_ready_metrics_docs(registered) -> None:  # type: ignore[no-untyped-def]
    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings) as (url, _):
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["endpoints"]["churn-api"]["revision"] == 1
        httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": _records(frame, 3)})
        text = httpx.get(f"{url}/metrics").text
        assert 'passerelle_requests_total{code="200",endpoint="churn-api",model="churn",version="1"}' in text
        assert "passerelle_batch_rows_bucket" in text
        spec = httpx.get(f"{url}/openapi.json").json()
        assert "/v1/endpoints/{name}/predict" in spec["paths"]
        assert "/v2/models/{name}/infer" in spec["paths"]


def test_open_inference_protocol_with_tritonclient(registered) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import tritonclient.http as triton

    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    loaded = client.load("churn:1")
    with serving(settings) as (url, _):
        tc = triton.InferenceServerClient(url.removeprefix("http://"))
        assert tc.is_server_live()
        assert tc.is_server_ready()
        assert tc.is_model_ready("churn-api")
        meta = tc.get_model_metadata("churn-api")
        assert [i["name"] for i in meta["inputs"]] == ["age", "income", "score"]
        head = frame.head(4)
        inputs = []
        for column, dtype in (("age", "INT64"), ("income", "FP64"), ("score", "FP64")):
            tensor = triton.InferInput(column, [4], dtype)
            kind = np.int64 if dtype == "INT64" else np.float64
            tensor.set_data_from_numpy(head[column].to_numpy().astype(kind))
            inputs.append(tensor)
        result = tc.infer("churn-api", inputs)  # binary tensor data, as tritonclient sends by default
        np.testing.assert_allclose(result.as_numpy("predict_proba"), loaded.predict_proba(head))
        np.testing.assert_array_equal(result.as_numpy("predict"), loaded.predict(head))
        response = result.get_response()
        assert response["model_version"] == "1"
        assert len(response["parameters"]["prediction_ids"]) == 4
        # One 2-D tensor in signature order, JSON, pinned to a version (bypassing the policy).
        data = head.head(2).to_numpy().ravel().tolist()
        body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": data}]}
        r = httpx.post(f"{url}/v2/models/churn-api/versions/1/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        bad = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1.0, 2.0]}]}
        r = httpx.post(f"{url}/v2/models/churn-api/infer", json=bad)
        assert r.status_code == 422
        assert "shape" in r.text


def test_canary_rolls_back_on_errors(registered, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import passerelle.serving.gateway as gw
    from passerelle.policy import CanaryGates

    monkeypatch.setattr(gw, "CANARY_INTERVAL_S", 0.3)
    settings, client, frame = registered
    client.register("tests.serving.models:explode", "churn", flavor="python", sample=frame.head(1))
    spec = DeploySpec(
        routes=[("churn:1", 100)],
        canary="churn:3",
        steps=[50, 100],
        step_interval_s=1.0,
        gates=CanaryGates(max_error_rate=0.05, min_requests=5),
    )
    client.deploy("churn-api", spec)
    bad = _records(frame, 1)
    bad[0]["age"] = 999
    with serving(settings) as (url, _), httpx.Client(base_url=url) as http:
        codes = Counter(
            http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": bad}).status_code
            for _ in range(60)
        )
        assert codes[500] > 0, codes
        wait_until(lambda: client.get_endpoint("churn-api").endpoint.policy.canary is None, timeout=20)
    history = client.get_endpoint("churn-api").revisions
    assert history[0].kind == "canary-rollback"
    assert "error rate" in history[0].reason
    assert [(r.ref, r.weight) for r in history[0].policy.routes] == [("churn:1", 100)]


def test_a_version_that_fails_to_load_keeps_the_previous_revision(registered) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from passerelle.endpoints import Endpoints
    from passerelle.errors import IntegrityError

    settings, client, frame = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    v2 = client.get_version("churn:2")
    stored = Path(settings.effective_artifact_uri) / v2.artifact_key / v2.files[0].path
    stored.write_bytes(b"corrupted")
    with pytest.raises(IntegrityError):
        client.deploy("churn-api", DeploySpec(routes=[("churn:2", 100)]))  # refused up front
    with serving(settings) as (url, _):
        # A revision written without the load check (say by an older replica) is not applied.
        Endpoints(client.ctx, client.registry).deploy("churn-api", DeploySpec(routes=[("churn:2", 100)]))
        wait_until(lambda: "churn-api" in httpx.get(f"{url}/readyz").json()["errors"])
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["endpoints"]["churn-api"]["revision"] == 1
        assert "corrupted" in ready["errors"]["churn-api"]
        body = {"dataframe_records": _records(frame, 2)}
        r = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json=body)
        assert r.status_code == 200
        assert r.json()["version"] == 1
