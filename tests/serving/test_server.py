"""`passerelle serve` as real processes: workers, kill -9 under load, loopback-only without --insecure."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.predictionlog import LogShipper
from passerelle.settings import Settings
from tests.conftest import free_port
from tests.helpers import small_model

EXE = str(Path(sys.executable).with_name("passerelle"))


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_HOME"] = str(home)
    return env


@contextmanager
def server(home: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [EXE, "serve", "--port", str(port), *args],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not become ready: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, LocalClient, list[dict[str, object]]]]:
    home = tmp_path / "home"
    with LocalClient(Settings(home=home)) as client:
        model, frame = small_model()
        client.register(model, "churn", sample=frame)
        client.register(small_model(seed=1)[0], "churn", sample=frame)
        client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        yield home, client, frame.head(2).to_dict("records")


def test_non_loopback_needs_insecure(tmp_path: Path) -> None:
    done = subprocess.run(
        [EXE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "--insecure" in done.stderr


def test_two_workers_apply_a_promotion_within_two_seconds(store) -> None:  # type: ignore[no-untyped-def]
    home, client, rows = store
    with server(home, "--workers", "2") as (url, _):
        with httpx.Client(base_url=url) as http:
            for _ in range(20):
                r = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": rows})
                assert r.status_code == 200
        client.promote("churn-api", "churn:2", reason="test")
        changed = time.monotonic()
        time.sleep(2.0)
        versions = set()
        # New connections land on both workers (SO_REUSEPORT); each must already serve revision 2.
        for _ in range(30):
            with httpx.Client(base_url=url) as http:
                r = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": rows})
                assert r.status_code == 200
                versions.add(r.json()["version"])
        assert time.monotonic() - changed < 10
        assert versions == {2}
        metrics = httpx.get(f"{url}/metrics").text
        assert "passerelle_requests_total" in metrics


def test_kill_9_under_load_loses_no_answered_prediction(store) -> None:  # type: ignore[no-untyped-def]
    home, client, rows = store
    acknowledged: list[str] = []
    with server(home) as (url, proc):

        def send(_: int) -> list[str]:
            got: list[str] = []
            with httpx.Client(base_url=url, timeout=5) as http:
                for _ in range(400):
                    try:
                        r = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": rows})
                    except httpx.HTTPError:
                        return got
                    if r.status_code == 200:
                        got += [p["prediction_id"] for p in r.json()["predictions"]]
            return got

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, i) for i in range(8)]
            time.sleep(2.0)
            os.killpg(proc.pid, signal.SIGKILL)
            for f in futures:
                acknowledged += f.result()
    assert len(acknowledged) > 50
    # A new process takes over the dead worker's segments and ships them.
    LogShipper(home.resolve() / "predictions", client.ctx.store).ship_once()
    logged = {r["id"] for r in client.predictions_tail("churn-api", limit=100_000)}
    missing = set(acknowledged) - logged
    assert not missing, f"{len(missing)} answered predictions lost"
