"""Server time of every console page on a large store: 100 endpoints, 1,000 versions, 10 M predictions.

    .venv/bin/python benchmarks/console.py [--predictions 10000000] [--requests 30] [--dir PATH]
                                           [--keep] [--no-write]

The fixture is written straight into a SQLite store (the schema from passerelle's migrations,
rows in bulk with the sqlite3 module): 50 models of 20 versions each, 100 endpoints splitting
traffic 90/10 between two versions (every other one with a shadow), five revisions each,
seven days of logged predictions, the serving figures of those days at one-minute buckets,
hourly monitor results with drift for every endpoint and version (sketches on the latest
windows, so distributions can be drawn), a few alerts per endpoint and some pipeline runs.

Then ``passerelle serve``'s application (gateway and console) answers on a loopback port and
each page is asked for ``--requests`` times, rotating over endpoints and models, after a
warm-up. The time is the client's, request sent to answer read, over loopback: the server's
time plus well under a millisecond. Results go to BENCHMARKS.md, section "Console", against
the target of 300 ms at p95 per page.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _report import machine, write_section  # a sibling of this script, on sys.path when run

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Console"
TARGET_MS = 300.0
ENDPOINTS = 100
MODELS = 50
VERSIONS_PER_MODEL = 20
DAYS = 7
WINDOW = dt.timedelta(hours=1)
HIST_SIZE = 61
FEATURES = ["tenure", "charges", "calls", "age", "usage", "plan", "region", "contract"]


def _stamp(moment: dt.datetime) -> str:
    """How SQLAlchemy stores an aware UTC time in SQLite."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _frame(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, rows) - int(20 * shift),
            "charges": rng.normal(60 + 25 * shift, 20, rows),
            "calls": rng.poisson(1.5 + shift, rows),
            "age": rng.normal(45, 12, rows),
            "usage": rng.gamma(2.0, 5.0 + 3 * shift, rows),
            "plan": rng.choice(["basic", "standard", "premium"], rows, p=[0.5, 0.3, 0.2]),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "contract": rng.choice(
                ["month", "year", "two-year"],
                rows,
                p=[0.4 + 0.4 * shift, 0.35 - 0.2 * shift, 0.25 - 0.2 * shift],
            ),
        }
    )
    frame["prediction"] = (rng.random(rows) < 0.3 + 0.2 * shift).astype(int).astype(str)
    frame["score"] = rng.beta(2, 5 - 2 * shift, rows)
    return frame


class Fixture:
    """Builds the store; ``timings`` says how long each part took."""

    def __init__(self, home: Path, predictions: int) -> None:
        self.home = home
        self.predictions = predictions
        self.timings: dict[str, float] = {}
        self.now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        self.start = self.now - dt.timedelta(days=DAYS)
        #: endpoint name, model, routed versions, shadow version
        self.endpoints: list[tuple[str, str, list[int], int | None]] = []
        self.monitor_ids: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"sqlite:///{self.home / 'passerelle.db'}"

    def _timed(self, name: str, began: float) -> None:
        self.timings[name] = time.perf_counter() - began
        print(f"  {name}: {self.timings[name]:.1f} s", flush=True)

    def build(self) -> None:
        from passerelle.store import Store

        began = time.perf_counter()
        self.home.mkdir(parents=True, exist_ok=True)
        store = Store(self.url)  # the schema, by the migrations
        self._timed("schema", began)
        began = time.perf_counter()
        try:
            self._metadata(store)
        finally:
            store.dispose()
        self._timed("models, versions, endpoints, monitors, alerts, pipelines", began)
        with self._connect() as db:
            began = time.perf_counter()
            self._figures(db)
            self._timed("serving figures", began)
            began = time.perf_counter()
            self._monitor_results(db)
            self._timed("monitor results", began)
            began = time.perf_counter()
            self._predictions(db)
            self._timed(f"{self.predictions:,} predictions", began)
            began = time.perf_counter()
            db.execute("ANALYZE")
            self._timed("ANALYZE", began)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.home / "passerelle.db", isolation_level=None)
        # A throwaway fixture: no journal, no fsync, while it is written.
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-500000")
        try:
            yield db
        finally:
            db.execute("PRAGMA journal_mode=WAL")
            db.close()

    # -- metadata ------------------------------------------------------------------------

    def _metadata(self, store: Any) -> None:
        """The small tables, through the ORM so that they follow the schema as it is."""
        from passerelle.drift import ReferenceStats, WindowSketch
        from passerelle.signature import infer_signature
        from passerelle.store import schema as t

        reference = _frame(5_000, seed=1)
        signature = infer_signature(reference[FEATURES])
        stats = ReferenceStats.from_frame(reference, signature, predictions=["prediction", "score"])
        self.sketches = {
            kind: json.dumps(WindowSketch.from_frame(stats, _frame(1_000, seed=seed, shift=shift)).to_dict())
            for kind, seed, shift in (("ok", 2, 0.0), ("drift", 3, 1.0))
        }
        profile = {"stats": stats.to_dict(), "classes": ["0", "1"]}
        now, by = self.now, "bench"
        with store.write() as session:
            dataset = t.Dataset(name="bench-train", created_at=now, created_by=by)
            session.add(dataset)
            session.flush()
            data = t.DatasetVersion(
                dataset_id=dataset.id,
                number=1,
                uri="file:///bench/train.parquet",
                format="parquet",
                fingerprint="sha256:bench",
                rows=5_000,
                schema=signature.to_dict(),
                created_at=now,
                created_by=by,
            )
            session.add(data)
            session.flush()
            for m in range(MODELS):
                name = f"model-{m:02d}"
                model = t.Model(name=name, description=f"benchmark model {m}", created_at=now, created_by=by)
                session.add(model)
                session.flush()
                last = None
                for number in range(1, VERSIONS_PER_MODEL + 1):
                    last = t.ModelVersion(
                        model_id=model.id,
                        number=number,
                        flavor="sklearn",
                        artifact_key=f"{name}/{number}-bench",
                        signature=signature.to_dict(),
                        metrics={"auc": 0.7 + number / 100, "accuracy": 0.7 + number / 200},
                        params={"seed": number},
                        dataset_version_id=data.id,
                        created_at=now,
                        created_by=by,
                    )
                    last.files = [
                        t.ArtifactFile(path="model.skops", sha256=f"{m:032x}{number:032x}", size=123_456)
                    ]
                    session.add(last)
                    if number >= VERSIONS_PER_MODEL - 2:
                        # The reference statistics a monitor keeps for the versions endpoints serve.
                        session.add(
                            t.ReferenceProfile(
                                model=name,
                                version=number,
                                reference="bench-train:1",
                                fingerprint="sha256:bench",
                                rows=5_000,
                                stats=profile,
                                created_at=now,
                            )
                        )
                session.flush()
                assert last is not None
                session.add(t.Alias(model_id=model.id, name="champion", version_id=last.id, updated_by=by))
            self.endpoints = []
            for e in range(ENDPOINTS):
                name, model_name = f"endpoint-{e:03d}", f"model-{e % MODELS:02d}"
                shadow = VERSIONS_PER_MODEL - 2 if e % 2 == 0 else None
                routes = [VERSIONS_PER_MODEL, VERSIONS_PER_MODEL - 1]
                self.endpoints.append((name, model_name, routes, shadow))
                endpoint = t.Endpoint(
                    name=name, created_at=self.start, created_by=by, current_revision=5, updated_at=now
                )
                session.add(endpoint)
                session.flush()
                policy = {
                    "routes": [
                        {"model": model_name, "version": routes[0], "weight": 90},
                        {"model": model_name, "version": routes[1], "weight": 10},
                    ],
                    "shadows": []
                    if shadow is None
                    else [{"model": model_name, "version": shadow, "percent": 100.0}],
                }
                for number in range(1, 6):
                    session.add(
                        t.EndpointRevision(
                            endpoint_id=endpoint.id,
                            number=number,
                            policy=policy,
                            kind="deploy" if number == 1 else "weights",
                            created_at=self.start + dt.timedelta(days=number),
                            created_by=by,
                            reason=f"benchmark revision {number}",
                        )
                    )
                monitor = t.Monitor(
                    endpoint=name,
                    window_s=3600,
                    delay_s=60,
                    reference="training",
                    config={"drift": {}, "metric": None, "label_column": None},
                    next_window=now.replace(minute=0),
                    created_at=self.start,
                    created_by=by,
                    updated_at=now,
                )
                session.add(monitor)
                session.flush()
                self.monitor_ids[name] = monitor.id
                rule = t.AlertRule(
                    endpoint=name,
                    name="data-drift",
                    expression="drift.share > 0.3",
                    for_windows=2,
                    keep_firing_windows=1,
                    created_at=now,
                    created_by=by,
                )
                session.add(rule)
                session.flush()
                for state, hours in (("firing", 30), ("resolved", 100)):
                    begun = now - dt.timedelta(hours=hours)
                    session.add(
                        t.Alert(
                            rule_id=rule.id,
                            endpoint=name,
                            fingerprint=f"{name}/data-drift/{model_name}:{routes[0]}",
                            model=model_name,
                            version=routes[0],
                            state=state,
                            value=0.5,
                            true_windows=3,
                            started_at=begun,
                            fired_at=begun + dt.timedelta(hours=2),
                            resolved_at=begun + dt.timedelta(hours=10) if state == "resolved" else None,
                            last_window=now - dt.timedelta(hours=1),
                            summary=f"drift.share = 0.5 on {model_name}:{routes[0]}",
                        )
                    )
            for p in range(5):
                name = f"retrain-{p}"
                definition = {
                    "name": name,
                    "train": {"command": "python train.py --data {input} --out {output}"},
                    "input": {"dataset": "bench-train"},
                    "triggers": ["manual", "dataset"],
                    "promotion": {"policy": "shadow", "endpoint": f"endpoint-{p:03d}"},
                }
                session.add(
                    t.PipelineRecord(
                        name=name,
                        definition=definition,
                        source="passerelle.yaml",
                        created_at=now,
                        created_by=by,
                    )
                )
                for run in range(1, 41):
                    created = self.start + dt.timedelta(hours=4 * run + p)
                    session.add(
                        t.PipelineRun(
                            id=f"run{p}{run:012d}",
                            pipeline=name,
                            number=run,
                            trigger="dataset",
                            state="succeeded" if run % 4 else "rejected",
                            created_at=created,
                            created_by=by,
                            started_at=created,
                            finished_at=created + dt.timedelta(minutes=7),
                            model_version=f"model-{p:02d}:{run % VERSIONS_PER_MODEL + 1}",
                            evaluation={"gates": [{"gate": "auc >= champion.auc", "passed": bool(run % 4)}]},
                            definition=definition,
                        )
                    )

    # -- serving figures -----------------------------------------------------------------

    def _figures(self, db: sqlite3.Connection) -> None:
        rng = np.random.default_rng(7)
        hists = []
        for _ in range(32):
            hist = [0] * HIST_SIZE
            for bucket in rng.normal(22, 2.5, 60).astype(int).clip(0, HIST_SIZE - 1):
                hist[bucket] += 1
            hists.append(json.dumps(hist))
        empty = json.dumps([0] * HIST_SIZE)
        minutes = DAYS * 24 * 60
        db.execute("BEGIN")
        for e, (name, model, routes, shadow) in enumerate(self.endpoints):
            rows: list[tuple[Any, ...]] = []
            for minute in range(minutes):
                bucket = _stamp(self.start + dt.timedelta(minutes=minute))
                for index, version in enumerate(routes):
                    requests = 54 if index == 0 else 6
                    rows.append(
                        (
                            name,
                            model,
                            version,
                            bucket,
                            "bench-worker",
                            requests,
                            minute % 97 == 0,
                            requests,
                            0,
                            hists[(minute + e) % 32],
                            0,
                            0,
                            0,
                            "{}",
                        )
                    )
                if shadow is not None:
                    rows.append(
                        (
                            name,
                            model,
                            shadow,
                            bucket,
                            "bench-worker",
                            0,
                            0,
                            0,
                            0,
                            empty,
                            60,
                            minute % 5,
                            0,
                            "{}",
                        )
                    )
            db.executemany(
                "INSERT INTO figures (endpoint, model, version, bucket, worker, requests, errors, rows,"
                " rejected_rows,"
                " latency_hist, shadow_compared, shadow_disagreed, shadow_dropped, rejections)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        db.execute("COMMIT")

    # -- monitor results -----------------------------------------------------------------

    def _monitor_results(self, db: sqlite3.Connection) -> None:
        from passerelle.performance import ab_verdict, proportion_estimate

        verdict = ab_verdict(proportion_estimate(8_100, 10_000), proportion_estimate(840, 1_000))
        verdict_details = json.dumps({"verdict": verdict.to_dict() | {"message": verdict.message}})
        windows = DAYS * 24
        evaluated = _stamp(self.now)
        db.execute("BEGIN")
        for e, (name, model, routes, _) in enumerate(self.endpoints):
            rows: list[tuple[Any, ...]] = []
            for w in range(windows):
                start = self.start + w * WINDOW
                drifted = w > windows - 30 and e % 3 == 0
                status = "drift" if drifted else "ok"
                columns = {
                    f"drift.column.{c}": float(drifted and c in ("tenure", "charges", "contract"))
                    for c in FEATURES
                }
                labelled = w < windows - 24
                for version in [*routes, 0]:
                    figures: dict[str, float] = {
                        "rows": 540.0 if version == routes[0] else 60.0,
                        "requests": 540.0,
                        "errors.rate": 0.002,
                        "latency.p99_ms": 12.0 + (w % 7),
                        "drift.share": 3 / 8 if drifted else 0.0,
                        **columns,
                        "estimated.auc": 0.80 - (0.05 if drifted else 0.0),
                        "estimated.auc.low": 0.76,
                        "estimated.auc.high": 0.84,
                    }
                    if labelled:
                        figures |= {
                            "labels.coverage": 0.9,
                            "performance.auc": 0.81,
                            "performance.auc.low": 0.78,
                            "performance.auc.high": 0.84,
                        }
                    details = "{}"
                    if version == 0 and w == windows - 1:
                        details = verdict_details
                    elif version == routes[0] and w >= windows - 3:
                        details = '{"sketch": ' + self.sketches["drift" if drifted else "ok"] + "}"
                    rows.append(
                        (
                            self.monitor_ids[name],
                            name,
                            _stamp(start),
                            _stamp(start + WINDOW),
                            model if version else "",
                            version,
                            status,
                            int(figures["rows"]),
                            json.dumps(figures),
                            details,
                            evaluated,
                        )
                    )
            db.executemany(
                "INSERT INTO monitor_results (monitor_id, endpoint, window_start, window_end, model,"
                " version, status,"
                " rows, figures, details, evaluated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        db.execute("COMMIT")

    # -- predictions ---------------------------------------------------------------------

    def _predictions(self, db: sqlite3.Connection) -> None:
        per_endpoint = self.predictions // len(self.endpoints)
        span = (self.now - self.start).total_seconds()
        inputs = [
            json.dumps(
                {
                    "tenure": t,
                    "charges": 40.5 + t,
                    "calls": t % 4,
                    "age": 30 + t % 40,
                    "usage": 3.5,
                    "plan": "basic",
                    "region": "north",
                    "contract": "month",
                }
            )
            for t in range(64)
        ]
        outputs = [
            json.dumps({"prediction": i % 2, "proba": {"0": 1 - p, "1": p}}) for i, p in enumerate((0.2, 0.7))
        ]
        sql = (
            "INSERT INTO predictions (id, endpoint, revision, model, version, at, latency_ms, inputs,"
            " outputs, key,"
            " request_id, source) VALUES (?, ?, 5, ?, ?, ?, 3.1, ?, ?, NULL, '', 'online')"
        )
        chunk = 50_000
        for e, (name, model, routes, shadow) in enumerate(self.endpoints):
            db.execute("BEGIN")
            for first in range(0, per_endpoint, chunk):
                rows = []
                for n in range(first, min(first + chunk, per_endpoint)):
                    at = self.start + dt.timedelta(seconds=span * n / per_endpoint)
                    rows.append(
                        (
                            f"{e:03d}-{n:012d}",
                            name,
                            model,
                            routes[0] if n % 10 else routes[1],
                            _stamp(at),
                            inputs[n % 64],
                            outputs[n % 2],
                        )
                    )
                db.executemany(sql, rows)
            if shadow is not None:
                newest = range(max(0, per_endpoint - 500), per_endpoint)
                db.executemany(
                    "INSERT INTO shadow_predictions (prediction_id, model, version, endpoint, at,"
                    " latency_ms, outputs,"
                    " error) VALUES (?, ?, ?, ?, ?, 4.2, ?, NULL)",
                    [
                        (f"{e:03d}-{n:012d}", model, shadow, name, _stamp(self.now), outputs[(n + 1) % 2])
                        for n in newest
                    ],
                )
            db.execute("COMMIT")
            if e % 10 == 9:
                print(f"    {(e + 1) * per_endpoint:,} predictions", flush=True)


# -- measuring ---------------------------------------------------------------------------------


def _pages() -> list[tuple[str, list[str]]]:
    endpoints = [f"endpoint-{e:03d}" for e in (0, 17, 42, 63, 99)]
    models = [f"model-{m:02d}" for m in (0, 13, 49)]
    return [
        ("overview", ["/"]),
        ("models", ["/models"]),
        ("model", [f"/models/{m}" for m in models]),
        ("version", [f"/models/{m}/{VERSIONS_PER_MODEL}" for m in models]),
        ("endpoint, 24 h", [f"/endpoints/{e}" for e in endpoints]),
        ("endpoint, 7 days", [f"/endpoints/{e}?range=7d" for e in endpoints]),
        ("monitoring, 7 days", [f"/endpoints/{e}/monitoring" for e in endpoints]),
        ("monitoring list", ["/monitoring"]),
        ("alerts", ["/alerts", "/alerts?state=all"]),
        ("pipelines", ["/pipelines"]),
        ("confirmation (weights)", [f"/endpoints/{e}/weights?weight:model-00:20=50" for e in endpoints[:1]]),
    ]


def measure(home: Path, requests: int) -> list[tuple[str, list[float]]]:
    import httpx

    from passerelle import ui
    from passerelle.serving.app import create_serving_app
    from passerelle.serving.server import background_server
    from passerelle.settings import Settings

    # Every benchmark version names an artifact that does not exist: the gateway logs each failed load.
    logging.getLogger("passerelle").setLevel(logging.CRITICAL)
    app = create_serving_app(
        Settings(home=home, monitor_interval_seconds=0), worker="bench", background=False
    )
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(ui.router)
    out: list[tuple[str, list[float]]] = []
    with background_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        for name, paths in _pages():
            for path in paths:  # warm-up: first reads of the file, imports, template compilation
                answer = client.get(path)
                if answer.status_code != 200:
                    raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:500]}")
            times = []
            for i in range(requests):
                began = time.perf_counter()
                answer = client.get(paths[i % len(paths)])
                times.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200
            out.append((name, times))
            print(
                f"  {name:<24} p50 {statistics.median(times):7.1f} ms  p95 {_p95(times):7.1f} ms", flush=True
            )
    return out


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--dir", help="build the store here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="passerelle-console-bench-"))
    home = base / "home"
    try:
        if (home / "passerelle.db").exists():
            print(f"using the store already in {home}")
            built: dict[str, float] = {}
        else:
            print(f"building the store in {home}")
            fixture = Fixture(home, args.predictions)
            fixture.build()
            built = fixture.timings
        size = (home / "passerelle.db").stat().st_size
        print(f"measuring {args.requests} requests per page")
        results = measure(home, args.requests)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    worst = max(_p95(times) for _, times in results)
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}.",
        f"Command: `.venv/bin/python benchmarks/console.py --predictions {args.predictions} "
        f"--requests {args.requests}`.",
        "",
        f"The store: SQLite, {ENDPOINTS} endpoints (90/10 splits, every other one with a shadow, 5 revisions "
        f"each), {MODELS * VERSIONS_PER_MODEL:,} versions ({MODELS} models of {VERSIONS_PER_MODEL}), "
        f"{args.predictions:,} logged predictions over {DAYS} days, serving figures at one-minute buckets "
        f"over those days, hourly monitor results with drift for every endpoint and version, 2 alerts per "
        f"endpoint, 5 pipelines with 40 runs each; {size / 1e9:.1f} GB on disk.",
    ]
    if built:
        total = sum(built.values())
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in built.items())
        lines.append(f"Building it took {total / 60:.1f} min ({parts}).")
    lines += [
        "",
        f"Each page asked {args.requests} times after a warm-up, rotating over endpoints and models; time"
        " from "
        "request to the whole answer, measured by the client over loopback (the server's time plus well"
        " under a "
        f"millisecond). Target: p95 at most {TARGET_MS:.0f} ms.",
        "",
        "| page | p50 (ms) | p95 (ms) | max (ms) | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, times in results:
        p95 = _p95(times)
        verdict = "met" if p95 <= TARGET_MS else "**missed**"
        lines.append(
            f"| {name} | {statistics.median(times):.0f} | {p95:.0f} | {max(times):.0f} | {verdict} |"
        )
    lines += [
        "",
        "Pages read aggregates: the serving figures (one row per version and minute), the monitor's figures "
        "per window, revisions and alerts. The only read of the prediction log is the newest 200 answers of"
        " one "
        "endpoint, through its (endpoint, time) index, to compare shadow scores.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md", SECTION)
    return 0 if worst <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
