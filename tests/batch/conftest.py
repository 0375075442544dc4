"""A registered churn model and input files for the batch tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from passerelle.client import LocalClient
from passerelle.demo.data import generate_churn, make_model, split_features, write_dataset
from passerelle.registry import VersionInfo
from passerelle.settings import Settings


@dataclass
class Churn:
    client: LocalClient
    version: VersionInfo
    data: pd.DataFrame
    parquet: Path
    csv: Path


@pytest.fixture(scope="session")
def churn_model() -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """Trained once per session: a demo logistic regression pipeline, its training set, new data."""
    train = generate_churn(2_000, seed=1)
    X, y = split_features(train)
    model = make_model("logreg").fit(X, y)
    return model, train, generate_churn(1_200, seed=2)


def register_churn(client: LocalClient, model: object, train: pd.DataFrame, folder: Path) -> VersionInfo:
    folder.mkdir(parents=True, exist_ok=True)
    train_path = folder / "train.parquet"
    write_dataset(train, train_path)
    dataset = client.register_dataset(train_path, "churn-train")
    X, _ = split_features(train)
    return client.register(model, "churn", sample=X, dataset=dataset.ref)


@pytest.fixture
def churn(
    client: LocalClient, churn_model: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> Churn:
    model, train, data = churn_model
    version = register_churn(client, model, train, tmp_path / "data")
    parquet = tmp_path / "customers.parquet"
    csv = tmp_path / "customers.csv"
    write_dataset(data, parquet)
    write_dataset(data, csv)
    return Churn(client, version, data, parquet, csv)


@pytest.fixture
def s3_client(s3_settings: Settings) -> Iterator[LocalClient]:
    with LocalClient(s3_settings) as c:
        yield c
