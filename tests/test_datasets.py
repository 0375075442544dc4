"""Datasets: fingerprints, schema, profile, no duplicates, local and S3 sources."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.settings import Settings
from tests.helpers import small_frame


def test_register_profile_and_deduplicate(any_client: LocalClient, tmp_path: Path) -> None:
    frame, _ = small_frame()
    frame.loc[::10, "income"] = None
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    first = any_client.register_dataset(path, "churn-train", tags={"source": "crm"})
    assert (first.ref, first.rows, first.format) == ("churn-train:1", 200, "parquet")
    assert first.fingerprint.startswith("sha256:")
    assert [c["name"] for c in first.signature["columns"]] == ["age", "income", "score"]
    income = first.profile["columns"]["income"]
    assert income["missing_rate"] == pytest.approx(0.1)
    assert income["min"] <= income["mean"] <= income["max"]

    again = any_client.register_dataset(path, "churn-train")
    assert again.ref == "churn-train:1"
    assert not again.created

    frame.iloc[:50].to_parquet(path)
    second = any_client.register_dataset(path, "churn-train")
    assert (second.ref, second.rows) == ("churn-train:2", 50)
    assert any_client.get_dataset("churn-train").number == 2
    assert [v.number for v in any_client.dataset_versions("churn-train")] == [1, 2]
    assert [d.name for d in any_client.list_datasets()] == ["churn-train"]
    assert [e.action for e in any_client.audit(action="dataset.register")] == ["dataset.register"] * 2


def test_bad_dataset_input(client: LocalClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        client.register_dataset(tmp_path / "nope.csv", "d")
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(InvalidInputError, match="xlsx"):
        client.register_dataset(odd, "d")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match=r"broken\.parquet"):
        client.register_dataset(broken, "d")
    with pytest.raises(NotFoundError):
        client.get_dataset("d")


def test_dataset_from_s3(s3_settings: Settings, tmp_path: Path) -> None:
    import boto3

    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "x"]})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    bucket = s3_settings.effective_artifact_uri.split("/")[2]
    boto3.client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).upload_file(str(path), bucket, "data/t.csv")
    with LocalClient(s3_settings) as c:
        info = c.register_dataset(f"s3://{bucket}/data/t.csv", "remote")
    assert info.uri == f"s3://{bucket}/data/t.csv"
    assert info.rows == 3
    assert info.profile["columns"]["b"]["type"] == "string"
