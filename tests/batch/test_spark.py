"""The Spark engine in local mode gives the local engine's results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from passerelle.errors import InvalidInputError
from passerelle.store.schema import Prediction
from tests.batch.conftest import Churn
from tests.conftest import service_missing


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark session for the module; the engine reuses the active session."""
    from passerelle.errors import MissingDependencyError
    from passerelle.spark import SparkError, session

    try:
        started, _ = session("local[2]")
    except (SparkError, MissingDependencyError) as exc:
        service_missing(f"Spark local mode ({exc})")
    try:
        yield started
    finally:
        started.stop()


def test_spark_scores_like_the_local_engine(churn: Churn, tmp_path: Path, spark: Any) -> None:
    data = churn.data.copy()
    data.loc[4, "contract"] = None
    source = tmp_path / "in.parquet"
    data.to_parquet(source, index=False)
    local = churn.client.score("churn:1", source, tmp_path / "local.parquet", keep=["customer_id"])
    distributed = churn.client.score(
        "churn:1",
        source,
        tmp_path / "spark.parquet",
        keep=["customer_id"],
        engine="spark",
        log=True,
        key_column="customer_id",
    )
    assert distributed.engine == "spark"
    assert distributed.status == "succeeded"
    assert (
        (distributed.rows_in, distributed.rows_scored, distributed.rows_rejected)
        == (
            local.rows_in,
            local.rows_scored,
            local.rows_rejected,
        )
        == (1_200, 1_199, 1)
    )
    ours = pd.read_parquet(tmp_path / "local.parquet").sort_values("customer_id", ignore_index=True)
    theirs = pd.read_parquet(tmp_path / "spark.parquet").sort_values("customer_id", ignore_index=True)
    assert list(theirs.columns) == list(ours.columns)
    assert theirs["customer_id"].tolist() == ours["customer_id"].tolist()
    assert theirs["prediction"].tolist() == ours["prediction"].tolist()
    np.testing.assert_allclose(theirs[["proba_0", "proba_1"]], ours[["proba_0", "proba_1"]], rtol=1e-12)
    assert set(theirs["run_id"]) == {distributed.run_id}
    rejects = pd.read_parquet(tmp_path / "spark.rejects.parquet")
    assert rejects[["column", "reason", "customer_id"]].to_dict("records") == [
        {"column": "contract", "reason": "null not allowed", "customer_id": "C000004"}
    ]
    assert distributed.details["logged_rows"] == 1_199
    with churn.client.ctx.store.read() as session:
        logged = session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.request_id == distributed.run_id)
        )
        assert logged == 1_199
    assert not list(tmp_path.glob(".*"))


def test_spark_reads_csv_as_the_local_engine_does(churn: Churn, tmp_path: Path, spark: Any) -> None:
    text = churn.data.head(200).copy()
    text["tenure_months"] = text["tenure_months"].astype(object)
    text.loc[3, "tenure_months"] = "abc"
    text.loc[8, "region"] = "NA"  # read as missing, as by the local engine (and pandas)
    source = tmp_path / "in.csv"
    text.to_csv(source, index=False)
    local = churn.client.score("churn:1", source, tmp_path / "local.csv", keep=["customer_id"])
    distributed = churn.client.score(
        "churn:1", source, tmp_path / "spark.csv", keep=["customer_id"], engine="spark", fail_on_reject=False
    )
    assert (distributed.rows_scored, distributed.rows_rejected) == (local.rows_scored, local.rows_rejected)
    ours = pd.read_csv(tmp_path / "local.csv").sort_values("customer_id", ignore_index=True)
    parts = sorted((tmp_path / "spark.csv").glob("part-*.csv"))
    theirs = pd.concat([pd.read_csv(p) for p in parts]).sort_values("customer_id", ignore_index=True)
    np.testing.assert_allclose(theirs["proba_1"], ours["proba_1"], rtol=1e-12)
    with pytest.raises(InvalidInputError, match="--fail-on-reject"):
        churn.client.score("churn:1", source, tmp_path / "strict.csv", engine="spark", fail_on_reject=True)
    assert not (tmp_path / "strict.csv").exists()


def test_spark_refuses_remote_paths(churn: Churn) -> None:
    with pytest.raises(InvalidInputError, match="--engine spark reads and writes local paths"):
        churn.client.score("churn:1", churn.parquet, "s3://bucket/out.parquet", engine="spark")


def test_spark_reads_a_folder_of_parts(churn: Churn, tmp_path: Path, spark: Any) -> None:
    folder = tmp_path / "parts.parquet"
    folder.mkdir()
    churn.data.iloc[:700].to_parquet(folder / "part-0.parquet", index=False)
    churn.data.iloc[700:].to_parquet(folder / "part-1.parquet", index=False)
    with pytest.raises(InvalidInputError, match="not a file"):
        churn.client.score("churn:1", folder, tmp_path / "local.parquet")
    info = churn.client.score("churn:1", folder, tmp_path / "out.parquet", engine="spark")
    assert (info.rows_in, info.rows_scored) == (1_200, 1_200)
    assert info.input_fingerprint.startswith("sha256:")
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 1_200
