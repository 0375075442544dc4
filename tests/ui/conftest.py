"""A real ``passerelle serve`` application with the console, on a store that looks like the demo's.

``churn-api`` splits traffic 90/10 between two churn models with a third in shadow; six hours
of logged predictions drift from the fourth hour on, some of them labelled; the serving
figures cover the last hours; its monitor judged every hour and a drift alert fires.
``quiet-api`` has a monitor that has judged nothing yet, and ``fragile-api`` serves a version
whose artifact was damaged after it was deployed, so the gateway cannot load it.

Browser tests drive Debian's chromium through Playwright; without it they skip, except under
``PASSERELLE_REQUIRE_SERVICES=1`` where they fail (see :func:`tests.conftest.service_missing`).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from passerelle import ui
from passerelle.client import LocalClient
from passerelle.demo.data import Drift, generate_churn, make_model, split_features, write_dataset
from passerelle.endpoints import DeploySpec
from passerelle.monitor import MonitorSpec, floor_time
from passerelle.serving.app import create_serving_app
from passerelle.serving.figures import FigureRecorder
from passerelle.serving.server import background_server
from passerelle.settings import Settings
from passerelle.store.schema import Prediction, ShadowPrediction
from tests.conftest import service_missing
from tests.helpers import small_model

CHROMIUM = "/usr/bin/chromium"
HOUR = dt.timedelta(hours=1)
WINDOWS = 6
ROWS = 200
DRIFT_FROM = 3
_ids = itertools.count(1)


def console_app(settings: Settings, worker: str = "ui-test") -> FastAPI:
    """The app ``passerelle serve`` builds, with the console's routes if it has not got them yet."""
    app = create_serving_app(settings, worker=worker, background=False)
    if any(getattr(route, "path", None) == "/" for route in app.routes):
        return app
    access = getattr(app.state, "access", None)
    if access is not None:
        # The console checks its own sessions (cookies), so the API's token check lets it through.
        from passerelle.api.deps import PUBLIC, Guarded

        access.include(app, Guarded(ui.router, read=PUBLIC, write=PUBLIC))
    else:
        app.include_router(ui.router)
    return app


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


@dataclass
class Demo:
    settings: Settings
    client: LocalClient
    app: FastAPI
    url: str
    firing_alert: int
    windows_start: dt.datetime


def _log_window(
    client: LocalClient, models: dict[int, Any], start: dt.datetime, *, seed: int, drift: Drift | None
) -> list[tuple[str, int, int]]:
    """ROWS predictions over one hour, 90/10 between versions 1 and 2, as the shipper stores them."""
    frame = generate_churn(ROWS, seed=seed, drift=drift)
    features, labels = split_features(frame)
    records = features.astype(object).where(features.notna(), None).to_dict("records")
    chosen = [2 if i % 10 == 0 else 1 for i in range(ROWS)]
    rows: list[Prediction] = []
    shadows: list[ShadowPrediction] = []
    out: list[tuple[str, int, int]] = []
    proba = {v: m.predict_proba(features) for v, m in models.items()}
    for i, inputs in enumerate(records):
        version = chosen[i]
        p = proba[version][i]
        pid = f"0196a1b2-0000-7000-8000-{next(_ids):012d}"
        at = start + HOUR * (i / ROWS)
        rows.append(
            Prediction(
                id=pid,
                endpoint="churn-api",
                revision=1,
                model="churn",
                version=version,
                at=at,
                latency_ms=3.0,
                inputs={k: _plain(v) for k, v in inputs.items()},
                outputs={"prediction": int(p.argmax()), "proba": {"0": float(p[0]), "1": float(p[1])}},
                key=str(frame["customer_id"].iloc[i]),
            )
        )
        s = proba[3][i]
        shadows.append(
            ShadowPrediction(
                prediction_id=pid,
                model="churn",
                version=3,
                endpoint="churn-api",
                at=at,
                latency_ms=4.0,
                outputs={"prediction": int(s.argmax()), "proba": {"0": float(s[0]), "1": float(s[1])}},
            )
        )
        out.append((pid, version, int(labels.iloc[i])))
    with client.ctx.store.write() as session:
        session.add_all(rows)
        session.add_all(shadows)
    return out


def build(settings: Settings, home: Path) -> tuple[int, dt.datetime]:
    """The store described in the module docstring; returns the firing alert's id and the first window."""
    with LocalClient(settings) as client:
        train = generate_churn(1_200, seed=1)
        path = home / "churn-train.parquet"
        write_dataset(train, path)
        dataset = client.register_dataset(path, "churn-train", reason="training data")
        features, labels = split_features(train)
        models = {}
        for seed, rows in ((0, 1_200), (1, 600), (2, 300)):
            # Logistic regressions on fewer and fewer rows: quick to fit, and they disagree a little.
            model = make_model("logreg").fit(features[:rows], labels[:rows])
            info = client.register(
                model,
                "churn",
                sample=features,
                dataset=dataset.ref,
                metrics={"auc": 0.8 + seed / 100, "accuracy": 0.75 + seed / 100},
                params={"rows": rows},
                reason="trained for the console tests",
            )
            models[info.number] = client.load(info.ref)
        client.set_alias("churn", "champion", 1, reason="best auc")
        client.deploy(
            "churn-api",
            DeploySpec(routes=[("churn:1", 90), ("churn:2", 10)], shadows=[("churn:3", 100.0)]),
            reason="A/B test with a shadow",
        )
        now = dt.datetime.now(dt.UTC)
        first = floor_time(now - (WINDOWS + 1) * HOUR, 3600)
        logged: list[tuple[str, int, int]] = []
        drift = Drift(
            mean_shift={"tenure_months": -0.9, "monthly_charges": 0.8},
            category_shift={"contract": {"month-to-month": 0.8}},
        )
        for w in range(WINDOWS):
            logged += _log_window(
                client, models, first + w * HOUR, seed=10 + w, drift=drift if w >= DRIFT_FROM else None
            )
        labelled = logged[: ROWS * 3]
        client.record_feedback(
            "churn-api",
            [{"prediction_id": pid, "label": label} for pid, _, label in labelled],
            reason="labels of the first three hours",
        )
        figures = FigureRecorder("ui-test", bucket_seconds=60)
        rng = np.random.default_rng(3)
        for minute in range(0, 6 * 60, 5):
            at = now - dt.timedelta(minutes=minute)
            for version, count in ((1, 18), (2, 2)):
                for _ in range(count):
                    latency = float(rng.gamma(2.0, 4.0 if version == 1 else 6.0))
                    figures.record(
                        "churn-api", "churn", version, latency, error=bool(rng.random() < 0.01), at=at
                    )
            figures.record_shadow(
                "churn-api", "churn", 3, compared=20, disagreed=int(rng.integers(0, 4)), dropped=0, at=at
            )
        figures.flush(client.ctx.store)
        existing = client.get_monitor("churn-api")
        # Hours of 200 predictions: judge windows from 150 rows (the default waits for 1,000).
        spec = MonitorSpec(window_s=3600, delay_s=0, reference=existing.reference, drift={"min_n": 150})
        client.set_monitor("churn-api", spec, start=first, reason="hourly windows over the logged hours")
        client.run_monitors("churn-api")
        firing = [a for a in client.list_alerts("churn-api", state="firing")]
        assert firing, "the drifted hours should make an alert fire"

        from passerelle.pipelines import (
            Evaluation,
            InputSpec,
            Pipeline,
            Promotion,
            TrainStep,
            register_pipelines,
        )

        retrain = Pipeline(
            name="retrain-churn",
            model="churn",
            train=TrainStep(command="python train.py --data {input} --out {output}"),
            input=InputSpec(dataset="churn-train"),
            evaluation=Evaluation(holdout="churn-train:1", label="churned", gates=["auc >= 0.6"]),
            promotion=Promotion(policy="shadow", endpoint="churn-api"),
            triggers=["manual"],
        )
        register_pipelines(client.ctx, [retrain], reason="retraining for the console tests")

        quiet, frame = small_model(seed=4)
        client.register(quiet, "quiet", sample=frame, reason="no traffic yet")
        client.deploy("quiet-api", DeploySpec(routes=[("quiet:1", 100)]), reason="nothing served yet")

        fragile, frame = small_model(seed=5)
        version = client.register(fragile, "fragile", sample=frame, reason="about to be damaged")
        client.deploy(
            "fragile-api", DeploySpec(routes=[("fragile:1", 100)], monitor=False), reason="to break"
        )
        damaged = 0
        for stored in (Path(settings.home) / "artifacts").rglob("*"):
            if stored.is_file() and version.artifact_key in stored.as_posix():
                stored.write_bytes(b"not the model any more")
                damaged += 1
        assert damaged, "the fragile artifact should have been found"
        return firing[0].id, first


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    home = tmp_path_factory.mktemp("console") / "home"
    settings = Settings(home=home, user="tester", monitor_interval_seconds=0)
    alert_id, first = build(settings, home.parent)
    app = console_app(settings)
    with background_server(app) as url, LocalClient(settings) as client:
        yield Demo(settings, client, app, url, alert_id, first)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        service_missing(f"chromium ({CHROMIUM}; `make chromium` installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("playwright (the dev extra installs it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()
