"""A project folder with a real training script, registered train and holdout datasets, and helpers."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from passerelle.client import LocalClient
from passerelle.context import Context
from passerelle.endpoints import DeploySpec
from passerelle.pipelines import Pipeline, RunInfo, execute, load_file, register_pipelines, start_run
from passerelle.settings import Settings

FEATURES = ["age", "income", "score"]

#: trains a logistic regression on the input CSV and writes model.skops and metrics.json;
#: --mode makes it fail, write nothing, sleep, or fail only on its first attempt
TRAIN_PY = textwrap.dedent(
    """
    import argparse, json, pathlib, sys, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    print(f"training on {args.data} with C={args.C}", flush=True)
    out = pathlib.Path(args.out)
    # The failure modes come before the heavy imports, so their tests stay quick.
    if args.mode == "fail":
        print("ValueError: the label column is empty", file=sys.stderr, flush=True)
        sys.exit(3)
    if args.mode == "sleep":
        pathlib.Path("started").write_text(str(time.time()))
        time.sleep(120)
    if args.mode == "nomodel":
        (out / "notes.txt").write_text("forgot the model")
        sys.exit(0)
    if args.mode == "flaky" and not pathlib.Path("flaky-marker").exists():
        pathlib.Path("flaky-marker").write_text("failed once")
        print("temporary failure: the data store timed out", flush=True)
        sys.exit(1)

    import pandas as pd
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    frame = pd.read_csv(args.data)
    features = frame[["age", "income", "score"]]
    model = LogisticRegression(C=args.C, max_iter=500).fit(features, frame["churned"])
    sio.dump(model, out / "model.skops")
    (out / "metrics.json").write_text(json.dumps({"train_rows": len(frame), "note": "text is left out"}))
    print("wrote", out / "model.skops", flush=True)
    """
)


#: a quick stand-in for training, for tests about what happens around it: it copies a model trained
#: beforehand in the test process (same arguments and modes as train.py, without heavy imports)
FAST_PY = textwrap.dedent(
    """
    import argparse, json, pathlib, shutil, sys, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    print(f"training on {args.data} with C={args.C}", flush=True)
    out = pathlib.Path(args.out)
    if args.mode == "fail":
        print("ValueError: the label column is empty", file=sys.stderr, flush=True)
        sys.exit(3)
    if args.mode == "sleep":
        pathlib.Path("started").write_text(str(time.time()))
        time.sleep(120)
    if args.mode == "nomodel":
        (out / "notes.txt").write_text("forgot the model")
        sys.exit(0)
    if args.mode == "flaky":
        print("temporary failure: the data store timed out", flush=True)
        sys.exit(1)
    shutil.copy("prebuilt.skops", out / "model.skops")
    (out / "metrics.json").write_text(json.dumps({"train_rows": 300}))
    """
)


def churn_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "age": rng.integers(18, 80, n),
            "income": rng.normal(3000, 800, n),
            "score": rng.random(n),
            "contract": rng.choice(["month-to-month", "two-year"], n),
        }
    )
    signal = frame["income"] / 1000 + frame["score"] * 2 + rng.normal(0, 0.5, n)
    frame["churned"] = (signal > 4).astype(int)
    return frame


@dataclass
class Project:
    client: LocalClient
    folder: Path

    @property
    def ctx(self) -> Context:
        return self.client.ctx

    def add_data(self, name: str, n: int = 300, seed: int = 0) -> str:
        path = self.folder / "data" / f"{name}-{seed}.csv"
        path.parent.mkdir(exist_ok=True)
        churn_frame(n, seed).to_csv(path, index=False)
        return self.client.register_dataset(path, name).ref

    def definition(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "churn",
            "train": {"command": "python {script} --data {input} --out {output} --C {C} --mode {mode}"},
            "params": {"script": "fast.py", "C": 1.0, "mode": "ok"},
            "input": {"dataset": "churn-train"},
            "evaluation": {
                "holdout": "churn-holdout",
                "label": "churned",
                "drop": ["customer_id", "contract"],
                "latency_rows": 20,
                "slices": {"contract": ["month-to-month", "two-year"]},
                "gates": ["auc >= 0.6", "auc >= champion.auc - 0.05", "p99_ms <= 2000"],
            },
            "promotion": {"policy": "register"},
            "retries": 0,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **value}
            else:
                body[key] = value
        return body

    def write(self, pipelines: dict[str, dict[str, Any]], name: str = "passerelle.yaml") -> Path:
        path = self.folder / name
        path.write_text(yaml.safe_dump({"pipelines": pipelines}, sort_keys=False))
        return path

    def apply(self, name: str = "retrain-churn", **overrides: Any) -> Pipeline:
        [pipeline] = load_file(self.write({name: self.definition(**overrides)}))
        register_pipelines(self.ctx, [pipeline], source="passerelle.yaml")
        return pipeline

    def champion(self, *, extra_column: str | None = None, endpoint: str | None = "churn-api") -> str:
        """A champion trained here, registered as churn:N with @champion, served alone by ``endpoint``."""
        frame = churn_frame(300, seed=2)
        columns = list(FEATURES)
        if extra_column is not None:
            frame[extra_column] = frame["age"] * 2
            columns.append(extra_column)
        model = LogisticRegression(max_iter=500).fit(frame[columns], frame["churned"])
        version = self.client.register(model, "churn", sample=frame[columns], dataset="churn-train")
        self.client.set_alias("churn", "champion", version.number)
        if endpoint is not None:
            self.client.deploy(endpoint, DeploySpec(routes=[(version.ref, 100)], monitor=False))
        return version.ref

    def run(self, name: str = "retrain-churn", **params: Any) -> RunInfo:
        run = start_run(self.ctx, name, params=params or None)
        return execute(self.ctx, run.id, holder="test")


@pytest.fixture(scope="session")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A model trained on the training data's features, as skops bytes."""
    import skops.io as sio

    frame = churn_frame(300, seed=0)
    model = LogisticRegression(max_iter=500).fit(frame[FEATURES], frame["churned"])
    path = tmp_path_factory.mktemp("prebuilt") / "model.skops"
    sio.dump(model, path)
    return path.read_bytes()


def make_project(folder: Path, home: Path, prebuilt: bytes, database_url: str | None = None) -> Project:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(TRAIN_PY)
    (folder / "fast.py").write_text(FAST_PY)
    (folder / "prebuilt.skops").write_bytes(prebuilt)
    client = LocalClient(Settings(home=home, database_url=database_url))
    p = Project(client, folder)
    p.add_data("churn-train", 300, seed=0)
    p.add_data("churn-holdout", 200, seed=1)
    return p


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prebuilt: bytes) -> Iterator[Project]:
    p = make_project(tmp_path / "project", tmp_path / "home", prebuilt)
    monkeypatch.chdir(p.folder)
    try:
        yield p
    finally:
        p.client.close()


@pytest.fixture
def pg_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prebuilt: bytes, postgres_url: str
) -> Iterator[Project]:
    p = make_project(tmp_path / "project", tmp_path / "home", prebuilt, postgres_url)
    monkeypatch.chdir(p.folder)
    try:
        yield p
    finally:
        p.client.close()
