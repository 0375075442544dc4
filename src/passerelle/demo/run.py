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
from passerelle.demo.data import FEATURES, generate_churn, make_model, split_features, write_dataset
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
