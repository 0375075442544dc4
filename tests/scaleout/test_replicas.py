"""Two `passerelle serve` replicas on one PostgreSQL database and one bucket, each with its own home."""

from __future__ import annotations

import collections
import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sqlalchemy import select

from passerelle import monitor
from passerelle.client import LocalClient, connect
from passerelle.endpoints import DeploySpec
from passerelle.pipelines import list_runs
from passerelle.predictionlog import new_prediction_id
from passerelle.settings import Settings
from passerelle.store.schema import Prediction
from tests.helpers import small_model
from tests.pipelines.conftest import FAST_PY, FEATURES, Project, churn_frame
from tests.scaleout.conftest import Replica, environment, replicas

MINUTE = dt.timedelta(minutes=1)
#: past one-minute windows whose evaluation the replicas race for
WINDOWS = 5
#: how often `passerelle serve` does a round of pipeline work
PIPELINE_TICK_S = 5.0


def _predict(replica: Replica, rows: list[dict[str, Any]]) -> tuple[int, list[str]]:
    r = httpx.post(
        f"{replica.url}/v1/endpoints/churn-api/predict", json={"dataframe_records": rows}, timeout=10
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return body["version"], [p["prediction_id"] for p in body["predictions"]]


def _seed_traffic(client: LocalClient, first: dt.datetime) -> dict[dt.datetime, set[str]]:
    """Logged rows in each past window: churn:1 in all of them, churn:2 in every other one."""
    expected: dict[dt.datetime, set[str]] = {}
    rows = []
    for k in range(WINDOWS):
        start = first + k * MINUTE
        versions = [1, 2] if k % 2 == 0 else [1]
        expected[start] = {"all", *(f"churn:{v}" for v in versions)}
        for version in versions:
            for i in range(3):
                rows.append(
                    Prediction(
                        id=new_prediction_id(),
                        endpoint="churn-api",
                        revision=1,
                        model="churn",
                        version=version,
                        at=start + dt.timedelta(seconds=10 * (i + 1)),
                        latency_ms=1.0,
                        inputs={"age": 40, "income": 3000.0, "score": 0.5},
                        outputs={"prediction": i % 2},
                    )
                )
    with client.ctx.store.write() as session:
        session.add_all(rows)
    return expected


def test_two_replicas_share_policy_predictions_and_monitor_windows(
    tmp_path: Path, postgres_url: str, s3_settings: Settings
) -> None:
    shared = s3_settings.model_copy(update={"database_url": postgres_url})
    admin = shared.model_copy(update={"home": tmp_path / "admin"})
    model, frame = small_model()
    rows = frame.head(2).to_dict("records")
    with LocalClient(admin) as client:
        client.register(model, "churn", sample=frame)
        client.register(small_model(seed=1)[0], "churn", sample=frame)
        client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        now = dt.datetime.now(dt.UTC)
        first = monitor.floor_time(now, 60) - WINDOWS * MINUTE
        expected = _seed_traffic(client, first)

        homes = [tmp_path / "replica-a", tmp_path / "replica-b"]
        with replicas(
            *[
                (
                    home,
                    environment(
                        shared.model_copy(update={"home": home}), PASSERELLE_MONITOR_INTERVAL_SECONDS="0.2"
                    ),
                )
                for home in homes
            ]
        ) as (a, b):
            answered: dict[str, list[str]] = {a.url: [], b.url: []}

            def ask(replica: Replica) -> int:
                version, ids = _predict(replica, rows)
                answered[replica.url] += ids
                return version

            for _ in range(10):
                assert ask(a) == 1
                assert ask(b) == 1

            # Both replicas are up and ticking: only now do the past windows fall due, so they race.
            monitor.set_monitor(
                client.ctx, "churn-api", monitor.parse_spec(window="1m", delay="0s"), start=first
            )

            # Through the first replica's management API, as `passerelle promote` with PASSERELLE_URL.
            with connect(Settings(home=tmp_path / "operator", url=a.url)) as remote:
                revision = remote.promote("churn-api", "churn:2", reason="replica test")
            assert revision.number == 2
            changed = time.monotonic()
            applied: dict[str, float] = {}
            while len(applied) < 2 and time.monotonic() - changed < 5:
                for replica in (a, b):
                    if ask(replica) == 2 and replica.url not in applied:
                        applied[replica.url] = time.monotonic() - changed
            assert set(applied) == {a.url, b.url}, f"not applied everywhere within 5 s: {applied}"
            assert max(applied.values()) < 2.0, applied
            for _ in range(10):  # and it stays applied
                assert ask(a) == 2
                assert ask(b) == 2

            # Every prediction either replica answered reaches the shared table.
            wanted = {pid for ids in answered.values() for pid in ids}
            assert answered[a.url]
            assert answered[b.url]
            deadline = time.monotonic() + 20
            while True:
                with client.ctx.store.read() as session:
                    stored = set(session.scalars(select(Prediction.id).where(Prediction.id.in_(wanted))))
                if stored == wanted or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert wanted - stored == set(), f"{len(wanted - stored)} answered predictions are missing"

            deadline = time.monotonic() + 30
            while monitor.get_monitor(client.ctx, "churn-api").next_window < first + WINDOWS * MINUTE:
                assert time.monotonic() < deadline, "the replicas did not evaluate the due windows"
                time.sleep(0.2)
            logs = a.stderr() + b.stderr()

        # Each window was judged once: one row per version that served in it, plus the overall one.
        results = monitor.results(client.ctx, "churn-api", since=first, until=first + WINDOWS * MINUTE)
        found: dict[dt.datetime, list[str]] = collections.defaultdict(list)
        for r in results:
            found[r.window_start].append(r.ref)
        assert {start: sorted(refs) for start, refs in found.items()} == {
            start: sorted(refs) for start, refs in expected.items()
        }
        assert "monitors could not run" not in logs, logs
        assert "Traceback" not in logs, logs
        assert client.doctor().ok


def test_two_replicas_fire_a_due_dataset_trigger_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version of a pipeline's input dataset, seen by two ticking servers, makes one run."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "fast.py").write_text(FAST_PY)
    frame = churn_frame(300, seed=0)
    sio.dump(
        LogisticRegression(max_iter=500).fit(frame[FEATURES], frame["churned"]), folder / "prebuilt.skops"
    )
    shared = Settings(
        home=tmp_path / "admin", database_url=postgres_url, artifact_uri=str(tmp_path / "artifacts")
    )
    with LocalClient(shared) as client:
        project = Project(client, folder)
        project.add_data("churn-train", 300, seed=0)
        project.add_data("churn-holdout", 200, seed=1)
        project.apply(triggers=["dataset", "manual"])
        homes = [tmp_path / "replica-a", tmp_path / "replica-b"]
        with replicas(
            *[
                (
                    home,
                    environment(
                        shared.model_copy(update={"home": home}), PASSERELLE_MONITOR_INTERVAL_SECONDS="1"
                    ),
                )
                for home in homes
            ]
        ) as (a, b):
            # Both servers tick every few seconds; the new data falls due for both of them.
            new = project.add_data("churn-train", 300, seed=3)
            deadline = time.monotonic() + 60
            while not (found := list_runs(client.ctx, "retrain-churn")) or not found[0].terminal:
                assert time.monotonic() < deadline, f"no run ended within 60 s: {found}"
                time.sleep(0.2)
            # Another round of the servers' scheduler finds nothing new to do.
            time.sleep(PIPELINE_TICK_S + 1)
            runs = list_runs(client.ctx, "retrain-churn")
            logs = a.stderr() + b.stderr()
        assert [(r.trigger, r.trigger_detail.get("dataset_version")) for r in runs] == [("dataset", new)]
        [run] = runs
        assert run.state == "succeeded", run.error
        assert run.inputs["train"]["dataset"] == new
        assert len(client.audit(action="pipeline.run.queue")) == 1
        assert len(client.audit(action="pipeline.run.start")) == 1
        assert "Traceback" not in logs, logs
