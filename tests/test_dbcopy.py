"""`passerelle db copy`: an embedded store moved to PostgreSQL and S3, whole or not at all."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from passerelle import alerts, feedback, monitor, notify
from passerelle.client import LocalClient
from passerelle.dbcopy import copy_store
from passerelle.endpoints import DeploySpec
from passerelle.errors import ConflictError, IntegrityError, InvalidInputError
from passerelle.predictionlog import LogShipper, PredictionLog, PredictionRecord, ShadowRecord
from passerelle.settings import Settings
from passerelle.store import Store
from passerelle.store.schema import Base
from tests.helpers import small_frame, small_model

EXE = str(Path(sys.executable).with_name("passerelle"))
HOUR = dt.timedelta(hours=1)


@dataclass
class Source:
    settings: Settings
    frame: pd.DataFrame
    #: ids of predictions still in local log segments when the copy starts
    unshipped: list[str]


def _records(
    start: dt.datetime, frame: pd.DataFrame, version: int, span: dt.timedelta
) -> list[PredictionRecord]:
    from passerelle.predictionlog import new_prediction_id

    rows = frame.to_dict("records")
    return [
        PredictionRecord(
            id=new_prediction_id(),
            endpoint="churn-api",
            revision=1,
            model="churn",
            version=version,
            at=start + span * (i / len(rows)),
            latency_ms=1.5,
            inputs={k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
            outputs={"prediction": i % 2},
            key=f"customer-{i}",
        )
        for i, row in enumerate(rows)
    ]


def make_source(home: Path, base: Settings | None = None) -> Source:
    """An embedded store holding a bit of everything, some predictions still in local segments."""
    settings = (base or Settings()).model_copy(
        update={"home": home, "artifact_uri": None, "database_url": None}
    )
    frame, label = small_frame(60)
    train = home.parent / "train.csv"
    home.mkdir(parents=True, exist_ok=True)
    frame.assign(label=label).to_csv(train, index=False)
    now = dt.datetime.now(dt.UTC)
    start = monitor.floor_time(now - 3 * HOUR, 3600)
    with LocalClient(settings) as c:
        c.register_dataset(str(train), "churn-train")
        c.register(small_model()[0], "churn", sample=frame, dataset="churn-train")
        c.register(small_model(seed=1)[0], "churn", sample=frame, dataset="churn-train")
        c.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]), reason="first deploy")
        monitor.set_monitor(c.ctx, "churn-api", monitor.parse_spec(window="1h", delay="0s"), start=start)
        alerts.set_rule(c.ctx, "churn-api", alerts.RuleSpec("traffic", "rows > 0"))
        notify.set_notifier(c.ctx, "ops", "webhook", {"url": "http://127.0.0.1:9/hook"})
        folder = home / "predictions"
        with PredictionLog(folder, worker="w0", fsync=False) as log:
            shipped = _records(start, frame, 1, 2 * HOUR)
            log.append_sync(shipped)
        assert LogShipper(folder, c.ctx.store).ship_once() == len(shipped)
        labels = [{"prediction_id": r.id, "label": i % 2} for i, r in enumerate(shipped[:20])]
        feedback.record_feedback(c.ctx, "churn-api", [*labels, {"prediction_id": "nowhere", "label": 1}])
        assert sum(run.windows for run in monitor.run(c.ctx)) == 3
        c.promote("churn-api", "churn:2", reason="better")
        with PredictionLog(folder, worker="w1", fsync=False) as log:
            pending = _records(now - dt.timedelta(minutes=5), frame.head(12), 2, dt.timedelta(minutes=1))
            log.append_sync(pending)
            log.append_shadow(
                [
                    ShadowRecord(r.id, "churn-api", "churn", 1, r.at, 2.0, outputs={"prediction": 0})
                    for r in pending[:5]
                ]
            )
    return Source(settings, frame, [r.id for r in pending])


def counts(url: str) -> dict[str, int]:
    store = Store(url, migrate=False)
    try:
        with store.read() as session:
            return {
                t.name: int(session.execute(select(func.count()).select_from(t)).scalar_one())
                for t in Base.metadata.sorted_tables
                if t.name != "leases"
            }
    finally:
        store.dispose()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_HOME"] = str(settings.home)
    env["PASSERELLE_USER"] = "operator"
    for name in ("s3_endpoint_url", "s3_access_key_id", "s3_region"):
        value = getattr(settings, name)
        if value:
            env[f"PASSERELLE_{name.upper()}"] = value
    if settings.s3_secret_access_key is not None:
        env["PASSERELLE_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env | extra


def test_copy_to_postgresql_and_s3_moves_everything(
    tmp_path: Path, postgres_url: str, s3_settings: Settings
) -> None:
    # The embedded store keeps its artifacts in its home; the S3 settings are there for the copy.
    source = make_source(tmp_path / "home", s3_settings)
    bucket_uri = s3_settings.artifact_uri
    assert bucket_uri is not None
    done = subprocess.run(
        [EXE, "db", "copy", "--to", postgres_url, "--artifacts", bucket_uri, "--reason", "scale out"],
        env=_env(source.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "shipped 17 record(s)" in done.stderr  # 12 predictions, 5 shadow answers
    assert f"PASSERELLE_DATABASE_URL={postgres_url}" in done.stdout  # no password to mask here
    assert f"PASSERELLE_ARTIFACT_URI={bucket_uri}" in done.stdout
    assert not list((tmp_path / "home" / "predictions").glob("*.done")), "pending segments were shipped"

    before = counts(source.settings.effective_database_url)
    after = counts(postgres_url)
    assert after == before | {"audit_log": before["audit_log"] + 1}
    for table in (
        "models", "model_versions", "artifact_files", "aliases", "datasets", "dataset_versions",
        "endpoints", "endpoint_revisions", "predictions", "shadow_predictions", "feedback",
        "feedback_unmatched", "monitors", "monitor_results", "reference_profiles", "alert_rules",
        "alerts", "notifiers", "notifications", "audit_log",
    ):  # fmt: skip
        assert after[table] > 0, f"the source should hold {table} rows for this test to mean anything"
    assert after["predictions"] == 60 + 12

    target = s3_settings.model_copy(update={"home": tmp_path / "replica", "database_url": postgres_url})
    with LocalClient(source.settings) as src, LocalClient(target) as dst:
        # The replica's cache is empty: the model comes from the bucket, checked against its sha256.
        served = dst.load("churn@champion")
        assert served.info.ref == "churn:2"
        assert list(served.predict(source.frame)) == list(src.load("churn:2").predict(source.frame))
        assert dst.predictions_tail("churn-api", limit=1000) == src.predictions_tail("churn-api", limit=1000)
        assert set(source.unshipped) <= {r["id"] for r in dst.predictions_tail("churn-api", limit=1000)}
        assert [r.number for r in dst.get_endpoint("churn-api").revisions] == [2, 1]
        report = dst.doctor()
        assert report.ok, report.problems
        assert report.orphans == []
        assert report.audit_chain.checked == after["audit_log"]
        (copied,) = dst.audit(action="store.copy")
        assert copied.actor == "operator"
        assert copied.reason == "scale out"
        assert copied.after is not None
        assert copied.after["tables"]["predictions"] == 72
        assert copied.after["artifact_uri"] == bucket_uri
        # Sequences were moved past the copied ids: new rows get fresh ones.
        assert dst.register(small_model(seed=2)[0], "churn", sample=source.frame).number == 3
        dst.set_alias("churn", "challenger", 3)
        assert dst.doctor().ok
        # The source is as it was: nothing of the copy was written there.
        assert src.audit(action="store.copy") == []
        assert src.doctor().ok


def test_a_target_holding_data_is_refused_unless_replacing(tmp_path: Path) -> None:
    source = make_source(tmp_path / "home")
    target_url = f"sqlite:///{tmp_path / 'target' / 'passerelle.db'}"
    first = copy_store(source.settings, target_url)
    assert first.ok, first.problems
    assert first.shipped == 17
    assert first.files_copied == 0  # the artifact store stays where it is
    assert any("local folder" in note for note in first.notes)
    assert any("dataset version(s) point to local files" in note for note in first.notes)
    with pytest.raises(ConflictError, match=r"already holds data: .*pass --yes to replace it"):
        copy_store(source.settings, target_url)
    with LocalClient(source.settings) as c:
        c.register(small_model(seed=3)[0], "churn", sample=source.frame)
    again = copy_store(source.settings, target_url, replace=True, reason="again")
    assert again.ok, again.problems
    assert again.replaced
    assert counts(target_url) == counts(source.settings.effective_database_url) | {
        "audit_log": counts(source.settings.effective_database_url)["audit_log"] + 1
    }
    target = Settings(home=source.settings.home, database_url=target_url)
    with LocalClient(target) as c:
        (copied,) = c.audit(action="store.copy")  # the first copy's record was replaced too
        assert copied.before == {"replaced": True}
        assert c.get_model("churn")[0].versions == 3
        assert c.doctor().ok


def test_a_corrupted_source_artifact_stops_the_copy_before_the_database(tmp_path: Path) -> None:
    source = make_source(tmp_path / "home")
    files = sorted((tmp_path / "home" / "artifacts" / "models" / "churn").rglob("*.skops"))
    assert files
    files[0].write_bytes(files[0].read_bytes() + b"tampered")
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    with pytest.raises(IntegrityError, match=r"churn:\d: artifact file .* is corrupted"):
        copy_store(source.settings, target_url, artifacts=str(tmp_path / "elsewhere"))
    assert set(counts(target_url).values()) == {0}


def test_a_copy_killed_before_its_commit_is_not_taken_for_complete(tmp_path: Path, postgres_url: str) -> None:
    source = make_source(tmp_path / "home")
    proc = subprocess.Popen(
        [EXE, "db", "copy", "--to", postgres_url],
        env=_env(source.settings, PASSERELLE_FAILPOINTS="dbcopy.before_commit=pause"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "failpoint dbcopy.before_commit reached" in line:
                break
        assert any("table predictions: 72 row(s)" in line for line in seen), "".join(seen)
        assert "failpoint dbcopy.before_commit reached" in seen[-1], "".join(seen)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Every row had been written, none committed: the target holds nothing, not a copy that
    # looks whole, and no record of a finished copy.
    assert set(counts(postgres_url).values()) == {0}
    # So the next attempt needs no --yes, and completes.
    report = copy_store(source.settings, postgres_url)
    assert report.ok, report.problems
    assert report.tables["predictions"] == 72
    with pytest.raises(ConflictError, match="already holds data"):
        copy_store(source.settings, postgres_url)


def test_unusable_targets_are_refused_with_the_reason(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with LocalClient(settings) as c:
        c.register(small_model()[0], "churn", sample=small_frame(20)[0])
    with pytest.raises(
        InvalidInputError, match="--to 'mysql://u:\\*\\*\\*@db/x': must start with postgresql"
    ):
        copy_store(settings, "mysql://u:secret@db/x")
    with pytest.raises(InvalidInputError, match="is the store being copied"):
        copy_store(settings, settings.effective_database_url)
    with pytest.raises(InvalidInputError, match="--artifacts 'ftp://host/x'"):
        copy_store(settings, f"sqlite:///{tmp_path / 'other.db'}", artifacts="ftp://host/x")
    with pytest.raises(InvalidInputError, match="there is no store at"):
        copy_store(Settings(home=tmp_path / "nothing"), f"sqlite:///{tmp_path / 'other.db'}")
    assert not (tmp_path / "nothing" / "passerelle.db").exists()
