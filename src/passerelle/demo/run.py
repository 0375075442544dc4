"""``passerelle demo``: the whole path from data to a served, logged A/B test.

It generates telecom churn data, registers the training set as a dataset, trains three
models, registers them with their signature, metrics and lineage, names champion and
challenger, loads the champion back to score a few customers, then deploys an endpoint
with a 90/10 split and the third model in shadow, serves it, sends traffic, and shows the
split, the latency, the shadow comparison and the prediction log.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from passerelle.client import Client, LocalClient
from passerelle.demo.data import FEATURES, Drift, generate_churn, make_model, split_features, write_dataset
from passerelle.settings import Settings, load_settings

console = Console()


def run_demo(*, fast: bool = False, home: str | None = None) -> None:
    settings = load_settings(**({"home": Path(home)} if home else {}))
    rows = 8_000 if fast else 40_000
    data_dir = Path(settings.home) / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(Panel.fit("passerelle demo: from training data to a registered champion", style="bold"))

    console.print(
        f"1. generating {rows:,} telecom customers (numeric and categorical features, missing values)"
    )
    train = generate_churn(rows, seed=1)
    holdout = generate_churn(rows // 4, seed=2)
    train_path = data_dir / "churn-train.parquet"
    write_dataset(train, train_path)

    with LocalClient(settings) as client:
        dataset = client.register_dataset(train_path, "churn-train", reason="demo training data")
        console.print(
            f"2. dataset [bold]{dataset.ref}[/]: {dataset.rows:,} rows, "
            f"fingerprint {dataset.fingerprint[:19]}…"
            + ("" if dataset.created else " (same content as before: not duplicated)")
        )

        X, y = split_features(train)
        X_hold, y_hold = split_features(holdout)
        results = {}
        for kind, label, seed in (
            ("hgb", "HistGradientBoosting", 0),
            ("logreg", "LogisticRegression", 0),
            ("hgb", "HistGradientBoosting (candidate)", 7),
        ):
            model = make_model(kind, seed=seed).fit(X, y)
            proba = model.predict_proba(X_hold)[:, 1]
            metrics = {
                "auc": round(float(roc_auc_score(y_hold, proba)), 4),
                "accuracy": round(float(accuracy_score(y_hold, model.predict(X_hold))), 4),
                "log_loss": round(float(log_loss(y_hold, proba)), 4),
            }
            info = client.register(
                model,
                "churn",
                sample=X,
                dataset=dataset.ref,
                metrics=metrics,
                params={"estimator": label, "rows": rows},
                tags={"origin": "demo"},
                description=f"{label} trained on {dataset.ref}",
                reason="demo training run",
            )
            results[info.number] = (label, metrics)
            console.print(f"3. trained {label}: auc {metrics['auc']:.3f} → registered [bold]{info.ref}[/]")

        first_two = sorted(results)[:2]
        candidate = sorted(results)[2]
        champion = max(first_two, key=lambda n: results[n][1]["auc"])
        challenger = min(first_two, key=lambda n: results[n][1]["auc"])
        client.set_alias("churn", "champion", champion, reason="best holdout auc in the demo")
        client.set_alias("churn", "challenger", challenger, reason="runner-up in the demo")
        console.print(f"4. churn@champion → churn:{champion}, churn@challenger → churn:{challenger}")

        table = Table("model", "versions", "latest", "aliases", title="the registry")
        for m in client.list_models():
            table.add_row(
                m.name, str(m.versions), str(m.latest), ", ".join(f"@{a}→{n}" for a, n in m.aliases.items())
            )
        console.print(table)

        loaded = client.load("churn@champion")
        sample = X_hold.head(5)
        proba = loaded.predict_proba(sample)[:, 1]
        scores = Table(
            "customer", *FEATURES[:3], "churn probability", title=f"{loaded.info.ref} scoring 5 customers"
        )
        for i, (_, row) in enumerate(sample.iterrows()):
            scores.add_row(
                holdout["customer_id"].iloc[i], *(str(row[c]) for c in FEATURES[:3]), f"{proba[i]:.2f}"
            )
        console.print(scores)
        _serve(client, settings, holdout, champion, challenger, candidate, fast=fast)
        _monitor(client, settings, champion, challenger, fast=fast)

    where = os.path.relpath(settings.home)
    console.print(
        Panel.fit(
            f"store: {where}\n"
            "look around:\n"
            "  passerelle models show churn\n"
            "  passerelle versions show churn@champion\n"
            "  passerelle datasets show churn-train\n"
            "  passerelle endpoints show churn-api\n"
            "  passerelle endpoints compare churn-api\n"
            "  passerelle predictions tail churn-api\n"
            "  passerelle monitor show churn-api\n"
            "  passerelle alerts list churn-api\n"
            "  passerelle serve   (then open http://127.0.0.1:8000/docs)\n"
            "  passerelle audit",
            title="next",
        )
    )


def _serve(
    client: Client,
    settings: Settings,
    holdout: pd.DataFrame,
    champion: int,
    challenger: int,
    candidate: int,
    *,
    fast: bool,
) -> None:
    """Deploy an A/B split with a shadow, serve it, send traffic, and show what happened."""
    import concurrent.futures
    import time

    import httpx
    import numpy as np

    from passerelle.endpoints import DeploySpec
    from passerelle.serving.app import create_serving_app
    from passerelle.serving.server import background_server

    rev = client.deploy(
        "churn-api",
        DeploySpec(
            routes=[(f"churn:{champion}", 90), (f"churn:{challenger}", 10)],
            shadows=[(f"churn:{candidate}", 100.0)],
            key_column="customer_id",
        ),
        reason="demo: A/B test with a shadow candidate",
    )
    console.print(
        f"5. deployed [bold]churn-api[/] revision {rev.number}: churn:{champion} 90%, "
        f"churn:{challenger} 10%, shadow churn:{candidate}"
    )
    requests = 300 if fast else 2000
    table = holdout[["customer_id", *FEATURES]].astype(object)
    rows = table.where(table.notna(), None).to_dict("records")  # JSON has null, not NaN
    app = create_serving_app(settings, worker="demo")
    latencies: list[float] = []
    versions: dict[int, int] = {}
    with background_server(app) as url:
        console.print(f"6. serving on {url}; sending {requests} single-customer requests from 8 clients")

        def send(start: int) -> list[tuple[float, int]]:
            out = []
            with httpx.Client(base_url=url, timeout=30) as http:
                for i in range(start, requests, 8):
                    began = time.perf_counter()
                    r = http.post(
                        "/v1/endpoints/churn-api/predict", json={"dataframe_records": [rows[i % len(rows)]]}
                    )
                    r.raise_for_status()
                    out.append(((time.perf_counter() - began) * 1000, r.json()["version"]))
            return out

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for part in pool.map(send, range(8)):
                for latency, version in part:
                    latencies.append(latency)
                    versions[version] = versions.get(version, 0) + 1
    console.print("traffic split seen by the clients:")
    split = Table("version", "requests", "share")
    for version, count in sorted(versions.items()):
        split.add_row(f"churn:{version}", str(count), f"{count / requests:.0%}")
    console.print(split)
    p50, p99 = np.percentile(latencies, [50, 99])
    console.print(f"client-side latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms (durable logging on)")
    comparison = client.compare("churn-api", since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    for pair in comparison.pairs:
        agreement = "-" if pair.agreement_rate is None else f"{pair.agreement_rate:.1%}"
        console.print(
            f"shadow churn:{candidate} vs {pair.served}: {pair.compared} requests compared, "
            f"agreement {agreement}"
        )
    logged = len(client.predictions_tail("churn-api", limit=100_000))
    console.print(f"prediction log: {logged} answered predictions stored with their inputs and outputs")


def _monitor(client: Client, settings: Settings, champion: int, challenger: int, *, fast: bool) -> None:
    """Two days of past traffic that drifts, labels that arrive a day late, and what the monitor saw."""
    # Replaying history writes to this machine's prediction log: the demo runs on the embedded store.
    assert isinstance(client, LocalClient)
    from passerelle import monitor
    from passerelle.alerts import RuleSpec
    from passerelle.demo.history import labels_frame, replay

    window = dt.timedelta(hours=6)
    windows = 8
    now = dt.datetime.now(dt.UTC)
    start = monitor.floor_time(now - windows * window, int(window.total_seconds()))
    rows = 1500 if fast else 4000
    drift = Drift(
        mean_shift={"tenure_months": -0.8, "monthly_charges": 0.6, "age": -0.7},
        scale={"data_usage_gb": 1.8},
        category_shift={"contract": {"month-to-month": 0.8}, "payment_method": {"electronic-check": 0.6}},
        concept=0.6,
    )
    console.print(
        f"7. replaying two days of traffic through the prediction log: {windows} windows of 6 h, "
        f"{rows:,} customers each; from window 5 on, customers are younger, newer, pay more, use more data "
        "and sign shorter contracts"
    )
    replayed = replay(
        client,
        "churn-api",
        [(champion, 90), (challenger, 10)],
        start=start,
        windows=windows,
        window=window,
        rows=rows,
        drift=drift,
        drift_from=4,
    )
    labels = labels_frame(replayed, until=now, lag=dt.timedelta(days=1))
    items = [{str(k): v for k, v in row.items()} for row in labels.to_dict("records")]
    result = client.record_feedback("churn-api", items, reason="demo: churn known a day later")
    console.print(
        f"8. {result.matched:,} labels sent back a day after their predictions "
        f"(the last day has none yet: its performance can only be estimated)"
    )
    pipeline = _retraining_pipeline(client, settings, drift, rows=rows)
    data_drift = next(r for r in client.list_alert_rules("churn-api") if r.name == "data-drift")
    client.set_alert_rule(
        "churn-api",
        RuleSpec(
            data_drift.name,
            data_drift.expression,
            for_windows=data_drift.for_windows,
            keep_firing_windows=data_drift.keep_firing_windows,
            severity=data_drift.severity,
            inhibited_by=tuple(data_drift.inhibited_by),
            pipeline=pipeline,
        ),
        reason="demo: retrain the churn model when its traffic drifts",
    )
    existing = client.get_monitor("churn-api")
    spec = monitor.parse_spec(window="6h", delay="0s", base=existing.spec)
    client.set_monitor("churn-api", spec, start=start, reason="demo: six-hour windows over the replayed days")
    summaries = client.run_monitors("churn-api")
    evaluated = sum(s.windows for s in summaries)
    console.print(f"9. the monitor judged {evaluated} windows of 6 h against churn-train (the training data)")
    table = Table("window", "status", "rows", "drifted features", "accuracy (labels)", "accuracy (estimated)")
    for r in client.monitor_results("churn-api", since=start, version=f"churn:{champion}"):
        f = r.figures
        drifted = r.details.get("drift", {}).get("drifted_columns", []) if r.status in ("ok", "drift") else []
        realized = f.get("performance.accuracy")
        estimated = f.get("estimated.accuracy")
        table.add_row(
            r.window_start.strftime("%a %H:%M"),
            r.status,
            f"{r.rows:,}",
            ", ".join(c for c in drifted if c not in (monitor.PREDICTION, monitor.SCORE)) or "-",
            "-"
            if realized is None
            else f"{realized:.3f} [{f.get('performance.accuracy.low') or 0:.3f}, "
            f"{f.get('performance.accuracy.high') or 0:.3f}]",
            "-" if estimated is None else f"{estimated:.3f}",
        )
    console.print(table)
    overall = client.monitor_results("churn-api", since=start, version="all")
    verdict = next((r.details["verdict"] for r in reversed(overall) if "verdict" in r.details), None)
    if verdict is not None:
        console.print(f"A/B verdict: {verdict['message']}")
    fired = [a for a in client.list_alerts("churn-api") if a.fired_at is not None]
    if fired:
        console.print("alerts that fired:")
        for a in fired:
            console.print(
                f"  [{a.severity}] {a.rule} on {a.model}:{a.version or 'all'} ({a.state}): {a.summary}"
            )
    else:
        console.print("no alert fired")
    report = Path(settings.home) / "demo" / "report.html"
    report.write_text(client.monitor_report("churn-api", since=start), encoding="utf-8")
    console.print(f"10. monitoring report: {os.path.relpath(report)} (one file, opens without network)")
    _retrain(client, pipeline)


def _retraining_pipeline(client: LocalClient, settings: Settings, drift: Drift, *, rows: int) -> str:
    """Fresh labelled data from the drifted population, and a pipeline that retrains on it."""
    from passerelle.demo.data import ID, TIME
    from passerelle.pipelines import Evaluation, Pipeline, Promotion, TrainStep, register_pipelines

    data_dir = Path(settings.home) / "demo"
    fresh = generate_churn(rows * 4, seed=300, drift=drift)
    holdout = generate_churn(rows * 2, seed=301, drift=drift)
    write_dataset(fresh, data_dir / "churn-fresh.parquet")
    write_dataset(holdout, data_dir / "churn-fresh-holdout.parquet")
    client.register_dataset(data_dir / "churn-fresh.parquet", "churn-fresh", reason="demo: recent customers")
    client.register_dataset(
        data_dir / "churn-fresh-holdout.parquet",
        "churn-fresh-holdout",
        reason="demo: recent customers, held out",
    )
    name = "retrain-churn"
    register_pipelines(
        client.ctx,
        [
            Pipeline(
                name=name,
                model="churn",
                description="retrain the churn model on recent customers when its traffic drifts",
                train=TrainStep(entry_point="passerelle.demo.train:fit"),
                input={"dataset": "churn-fresh"},
                evaluation=Evaluation(
                    holdout="churn-fresh-holdout",
                    label="churned",
                    drop=[ID, TIME],
                    latency_rows=0,
                    gates=["auc >= champion.auc + 0.005"],
                ),
                promotion=Promotion(policy="shadow", endpoint="churn-api"),
                triggers=["alert", "manual"],
            )
        ],
        reason="demo: the retraining recipe",
    )
    console.print(
        f"   pipeline [bold]{name}[/]: trains on the newest churn-fresh, must beat the champion's AUC on "
        "churn-fresh-holdout by 0.005, then goes to shadow; the data-drift alert triggers it"
    )
    return name


def _retrain(client: LocalClient, pipeline: str) -> None:
    """The run the drift alert queued: train, evaluate against the champion, shadow, then promote."""
    from passerelle import pipelines
    from passerelle.cli.pipelines import lineage_tree
    from passerelle.lineage import graph

    queued = [r for r in pipelines.list_runs(client.ctx, pipeline) if r.trigger == "alert"]
    if not queued:
        console.print("no alert triggered the retraining pipeline")
        return
    run = pipelines.wait(client.ctx, queued[-1].id, timeout_s=600)
    console.print(
        f"11. the data-drift alert queued run {run.ref}: {run.state}, "
        f"registered {run.model_version or 'nothing'}"
    )
    for gate in run.evaluation.get("gates", []):
        console.print(
            f"    {'pass' if gate['passed'] else 'FAIL'}  {gate['gate']}  ({gate.get('detail', '')})"
        )
    if run.state != "succeeded" or run.model_version is None:
        console.print(f"    the champion stays: {run.error or 'the candidate did not pass its gates'}")
        return
    detail = client.get_endpoint("churn-api").endpoint
    console.print(
        f"    churn-api revision {detail.revision}: shadow {', '.join(s.ref for s in detail.policy.shadows)}"
    )
    rev = client.promote(
        "churn-api",
        run.model_version,
        reason=f"demo: {run.ref} beat the champion on fresh data and ran in shadow",
    )
    console.print(f"12. promoted {run.model_version} to champion: churn-api revision {rev.number}")
    console.print(lineage_tree(graph(client.ctx, run.model_version)))
