"""ONNX export: conversion, the numerical check against the original, and registration with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from passerelle.cli import main
from passerelle.demo.data import FEATURES
from passerelle.errors import InvalidInputError
from passerelle.export import ExportError
from tests.batch.conftest import Churn
from tests.helpers import small_frame


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_export_pipeline_with_string_columns_and_register(
    churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "churn.onnx"
    code, stdout, _ = run(
        capsys, "export", "churn:1", "--format", "onnx", "--output", str(out), "--register", "churn", "--json"
    )
    assert code == 0
    info = json.loads(stdout)
    assert info["converter"].startswith("skl2onnx")
    assert info["compared"] == "probabilities"
    assert info["rows_checked"] == 1_000  # from the version's training dataset
    assert info["max_abs_diff"] < 1e-5
    assert info["registered"] == "churn:2"
    assert out.stat().st_size > 0

    version = churn.client.get_version("churn:2")
    assert version.flavor == "onnx"
    assert version.lineage["exported_from"] == "churn:1"
    assert version.dataset == "churn-train:1"
    source = churn.client.get_version("churn:1")
    assert version.signature == source.signature
    exported = churn.client.load("churn:2")
    original = churn.client.load("churn:1")
    rows = churn.data[FEATURES].head(50)
    np.testing.assert_allclose(exported.predict_proba(rows), original.predict_proba(rows), atol=1e-5)
    # The exported version scores files like any other.
    scored = churn.client.score("churn:2", churn.parquet, tmp_path / "scored.parquet")
    assert scored.rows_scored == 1_200

    code, _, err = run(capsys, "export", "churn:1", "--output", str(out))
    assert code == 1
    assert "already exists" in err


def test_export_is_refused_above_the_tolerance(churn: Churn, tmp_path: Path) -> None:
    out = tmp_path / "churn.onnx"
    with pytest.raises(ExportError, match=r"differ by up to .* \(tolerance 0\); nothing written"):
        churn.client.export("churn:1", out, tolerance=0.0)
    assert not out.exists()
    assert not list(tmp_path.glob(".*.part"))


def test_export_plain_estimator_with_a_sample(client: object, tmp_path: Path) -> None:
    from passerelle.client import LocalClient

    assert isinstance(client, LocalClient)
    frame, label = small_frame()
    model = LogisticRegression(max_iter=500).fit(frame.to_numpy(), label)
    client.register(model, "plain", sample=frame.to_numpy())
    sample = tmp_path / "sample.csv"
    frame.set_axis(["x0", "x1", "x2"], axis=1).to_csv(sample, index=False)
    with pytest.raises(ExportError, match="no training dataset"):
        client.export("plain", tmp_path / "plain.onnx")
    info = client.export("plain", tmp_path / "plain.onnx", sample=sample)
    assert info.rows_checked == len(frame)
    assert info.max_abs_diff < 1e-5


def test_export_refusals(churn: Churn, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown export format"):
        churn.client.export("churn:1", tmp_path / "m.onnx", fmt="pmml")
    with pytest.raises(InvalidInputError, match=r"written to a \.onnx file"):
        churn.client.export("churn:1", tmp_path / "m.bin")
    churn.client.register("tests.helpers:small_frame", "code", flavor="python")
    with pytest.raises(ExportError, match="python model, which cannot be converted to ONNX"):
        churn.client.export("code", tmp_path / "m.onnx")
    churn.client.export("churn:1", tmp_path / "m.onnx", register="churn-onnx")
    with pytest.raises(ExportError, match="already an ONNX model"):
        churn.client.export("churn-onnx", tmp_path / "again.onnx")


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_export_gradient_boosting_libraries(client: object, tmp_path: Path, library: str) -> None:
    from passerelle.client import LocalClient

    assert isinstance(client, LocalClient)
    frame, label = small_frame()
    if library == "xgboost":
        import xgboost

        model: object = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(frame, label)
    else:
        import lightgbm

        model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(frame, label)
    client.register(model, library, sample=frame)
    sample = tmp_path / "sample.parquet"
    frame.to_parquet(sample, index=False)
    info = client.export(library, tmp_path / "model.onnx", sample=sample, register=f"{library}-onnx")
    assert info.converter.startswith("onnxmltools")
    assert info.max_abs_diff < 1e-4
    exported = client.load(f"{library}-onnx")
    assert exported.info.lineage["exported_from"] == f"{library}:1"
    np.testing.assert_allclose(
        exported.predict_proba(frame.head(20)), client.load(library).predict_proba(frame.head(20)), atol=1e-4
    )
