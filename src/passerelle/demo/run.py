"""``passerelle demo``: the whole path from data to a registered, loadable champion.

It generates telecom churn data, registers the training set as a dataset, trains two
models, registers both with their signature, metrics and lineage, names the better one
champion, shows the registry, and loads the champion back to score a few customers.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from passerelle.client import LocalClient
from passerelle.demo.data import FEATURES, generate_churn, make_model, split_features, write_dataset
from passerelle.settings import load_settings

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
        for kind, label in (("hgb", "HistGradientBoosting"), ("logreg", "LogisticRegression")):
            model = make_model(kind, seed=0).fit(X, y)
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

        champion = max(results, key=lambda n: results[n][1]["auc"])
        challenger = min(results, key=lambda n: results[n][1]["auc"])
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

    where = os.path.relpath(settings.home)
    console.print(
        Panel.fit(
            f"store: {where}\n"
            "look around:\n"
            "  passerelle models show churn\n"
            "  passerelle versions show churn@champion\n"
            "  passerelle datasets show churn-train\n"
            "  passerelle audit",
            title="next",
        )
    )
