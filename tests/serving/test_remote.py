"""Endpoints through the management API: the remote client against a real serving process."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode

from passerelle.endpoints import DeploySpec
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.remote import RemoteClient
from passerelle.settings import Settings
from tests.api.test_fuzz import check_answer, operations, probe
from tests.serving.conftest import serving, wait_until


def test_remote_client_drives_endpoints(registered: Any, tmp_path: Path) -> None:
    settings, _, frame = registered
    with serving(settings) as (url, gateway), RemoteClient(Settings(home=tmp_path / "c", url=url)) as remote:
        rev = remote.deploy(
            "churn-api",
            DeploySpec(routes=[("churn@champion", 100)], shadows=[("churn:2", 100.0)]),
            reason="go",
        )
        assert (rev.number, rev.kind) == (1, "deploy")
        assert [e.name for e in remote.list_endpoints()] == ["churn-api"]
        wait_until(lambda: "churn-api" in gateway.live)
        import httpx

        body = {"dataframe_records": frame.head(3).to_dict("records")}
        ids = [
            p["prediction_id"]
            for p in httpx.post(f"{url}/v1/endpoints/churn-api/predict", json=body).json()["predictions"]
        ]
        gateway.log.flush()
        wait_until(lambda: len(remote.predictions_tail("churn-api", limit=10)) == 3)
        assert {r["id"] for r in remote.predictions_tail("churn-api")} == set(ids)
        out = tmp_path / "export.csv"
        assert remote.predictions_export("churn-api", output=out, fmt="csv") == 3
        assert set(pd.read_csv(out)["id"]) == set(ids)
        rev = remote.set_weights("churn-api", [("churn:1", 100)], reason="keep")
        assert rev.kind == "weights"
        rev = remote.promote("churn-api", "churn:2", reason="better")
        assert remote.get_version("churn@champion").number == 2
        rev = remote.rollback("churn-api", to=1, reason="undo")
        assert [r.ref for r in rev.policy.routes] == ["churn:1"]
        detail = remote.get_endpoint("churn-api")
        assert [r.kind for r in detail.revisions][:3] == ["rollback", "promote", "weights"]
        comparison = remote.compare("churn-api", since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        assert comparison.endpoint == "churn-api"
        with pytest.raises(NotFoundError, match="endpoint 'ghost' does not exist"):
            remote.get_endpoint("ghost")
        with pytest.raises(InvalidInputError, match="sum to 100"):
            remote.deploy("churn-api", DeploySpec(routes=[("churn:1", 60)]))


def test_generated_requests_never_break_the_gateway(registered: Any) -> None:
    """schemathesis over the whole served API (inference and endpoint routes included)."""
    settings, client, _ = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings) as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        ops = [
            op
            for op in operations(schema)
            if op.path.startswith(("/v1/", "/v2", "/api/v1/endpoints", "/readyz", "/metrics"))
        ]
        assert len(ops) >= 15
        seen: dict[str, set[int]] = {}
        with requests.Session() as session:
            for operation in ops:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    probe(operation, mode, url, session, seen)
        assert seen.get("POST /v1/endpoints/{name}/predict"), seen
        # A valid request still works after the storm.
        r = requests.get(f"{url}/readyz", timeout=10)
        check_answer("GET", "/readyz", r.status_code, r.json(), r.text)
