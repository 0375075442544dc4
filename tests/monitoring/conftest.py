"""An endpoint with a real churn model and its training dataset; traffic logged straight into the store."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from passerelle.client import LocalClient
from passerelle.context import Context
from passerelle.demo.data import Drift, generate_churn, make_model, split_features, write_dataset
from passerelle.endpoints import DeploySpec
from passerelle.settings import Settings
from passerelle.store.schema import Prediction

#: windows in the tests are hours starting here
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
_ids = itertools.count(1)


@dataclass
class ChurnEndpoint:
    client: LocalClient
    model: Pipeline
    train: pd.DataFrame

    @property
    def ctx(self) -> Context:
        return self.client.ctx

    def log(
        self,
        start: dt.datetime,
        rows: int,
        *,
        seed: int,
        drift: Drift | None = None,
        version: int = 1,
        span: dt.timedelta = HOUR,
        endpoint: str = "churn-api",
        without: tuple[str, ...] = (),
    ) -> list[str]:
        """``rows`` predictions spread over ``span`` from ``start``, as the log shipper would store them."""
        frame = generate_churn(rows, seed=seed, drift=drift)
        features, _ = split_features(frame)
        proba = self.model.predict_proba(features)
        classes = [int(c) for c in self.model.classes_]
        records = features.to_dict(orient="records")
        out: list[Prediction] = []
        for i, inputs in enumerate(records):
            p = proba[i]
            out.append(
                Prediction(
                    id=f"0196a1b2-0000-7000-8000-{next(_ids):012d}",
                    endpoint=endpoint,
                    revision=1,
                    model="churn",
                    version=version,
                    at=start + span * (i / rows),
                    latency_ms=2.0,
                    inputs={k: _plain(v) for k, v in inputs.items() if k not in without},
                    outputs={
                        "prediction": classes[int(p.argmax())],
                        "proba": {str(c): float(v) for c, v in zip(classes, p, strict=True)},
                    },
                    key=str(frame["customer_id"].iloc[i]),
                )
            )
        with self.ctx.store.write() as session:
            session.add_all(out)
        return [p.id for p in out]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


@pytest.fixture(scope="session")
def churn_model() -> tuple[Pipeline, pd.DataFrame]:
    train = generate_churn(3000, seed=0)
    features, label = split_features(train)
    model = make_model("logreg").fit(features, label)
    return model, train


@pytest.fixture
def churn_endpoint(tmp_path: Path, churn_model: tuple[Pipeline, pd.DataFrame]) -> Iterator[ChurnEndpoint]:
    model, train = churn_model
    features, label = split_features(train)
    path = tmp_path / "churn-train.parquet"
    write_dataset(pd.concat([features, label], axis=1), path)
    with LocalClient(Settings(home=tmp_path / "home")) as client:
        client.register_dataset(str(path), "churn-train")
        client.register(model, "churn", sample=features.head(50), dataset="churn-train")
        client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        yield ChurnEndpoint(client, model, train)
