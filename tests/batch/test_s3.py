"""Batch scoring from and to an S3-compatible bucket (moto's server over real HTTP)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import s3fs

from passerelle.client import LocalClient
from passerelle.demo.data import write_dataset
from passerelle.errors import InvalidInputError
from tests.batch.conftest import register_churn


def test_s3_in_and_out(
    s3_client: LocalClient, churn_model: tuple[object, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    model, train, data = churn_model
    register_churn(s3_client, model, train, tmp_path / "data")
    settings = s3_client.settings
    bucket = settings.effective_artifact_uri.split("/")[2]
    assert settings.s3_secret_access_key is not None
    fs = s3fs.S3FileSystem(
        key=settings.s3_access_key_id,
        secret=settings.s3_secret_access_key.get_secret_value(),
        client_kwargs={"endpoint_url": settings.s3_endpoint_url, "region_name": "us-east-1"},
    )
    bad = data.copy()
    bad.loc[2, "contract"] = None
    local = tmp_path / "in.parquet"
    write_dataset(bad, local)
    fs.put_file(str(local), f"{bucket}/batch/in.parquet")

    info = s3_client.score(
        "churn:1",
        f"s3://{bucket}/batch/in.parquet",
        f"s3://{bucket}/batch/out.csv",
        keep=["customer_id"],
        batch_rows=400,
    )
    assert (info.rows_in, info.rows_scored, info.rows_rejected) == (1_200, 1_199, 1)
    assert info.input_fingerprint.startswith("s3-etag:")
    assert info.output_uri == f"s3://{bucket}/batch/out.csv"
    assert info.rejects_uri == f"s3://{bucket}/batch/out.rejects.csv"
    with fs.open(f"{bucket}/batch/out.csv", "rb") as handle:
        scored = pd.read_csv(handle)
    assert len(scored) == 1_199
    assert scored.columns[0] == "customer_id"
    with fs.open(f"{bucket}/batch/out.rejects.csv", "rb") as handle:
        rejects = pd.read_csv(handle)
    assert rejects["customer_id"].tolist() == ["C000002"]
    # Only the outputs are left in the prefix: the temporary keys were moved.
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/batch", refresh=True)) == [
        "in.parquet",
        "out.csv",
        "out.rejects.csv",
    ]

    # An existing object is refused like an existing file.
    with pytest.raises(InvalidInputError, match="already exists"):
        s3_client.score("churn:1", f"s3://{bucket}/batch/in.parquet", f"s3://{bucket}/batch/out.csv")
    with pytest.raises(InvalidInputError, match="no such file"):
        s3_client.score("churn:1", f"s3://{bucket}/batch/nope.parquet", f"s3://{bucket}/batch/x.parquet")
