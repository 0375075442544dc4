from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flavor_helpers import FEATURES, classification_frame, regression_frame
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from passerelle.errors import InvalidInputError
from passerelle.flavors.onnx import OnnxFlavor, OnnxPredictor


@pytest.fixture
def flavor() -> OnnxFlavor:
    return OnnxFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


def _float32(table: pd.DataFrame) -> pd.DataFrame:
    # The graphs compute in float32: the reference predictions must see the same inputs.
    return table.astype(np.float32)


def _round_trip(flavor: OnnxFlavor, model: Any, dest: Path) -> tuple[dict[str, Any], OnnxPredictor]:
    saved = flavor.save_object(model, dest)
    assert saved.untrusted == []
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx"]
    predictor = flavor.load(dest, saved.options, trusted=[])
    assert isinstance(predictor, OnnxPredictor)
    return saved.options, predictor


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_logistic_regression_round_trip(flavor: OnnxFlavor, dest: Path, zipmap: bool) -> None:
    table, labels = classification_frame(n_classes=3)
    table = _float32(table)
    model = LogisticRegression(max_iter=500).fit(table.to_numpy(), labels)
    graph = to_onnx(model, table.to_numpy()[:1], options={"zipmap": zipmap})

    options, predictor = _round_trip(flavor, graph, dest)

    assert options["classes"] == [0, 1, 2]
    assert predictor.classes == [0, 1, 2]
    assert predictor.has_proba
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table.to_numpy()))
    proba = predictor.predict_proba(table)
    assert proba.shape == (len(table), 3)
    np.testing.assert_allclose(proba, model.predict_proba(table.to_numpy()), rtol=1e-4, atol=1e-5)


def test_random_forest_with_string_labels(flavor: OnnxFlavor, dest: Path) -> None:
    table, labels = classification_frame(n_classes=3)
    table = _float32(table)
    names = np.array(["bronze", "gold", "silver"])[labels]
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(table.to_numpy(), names)
    graph = to_onnx(model, table.to_numpy()[:1])

    _, predictor = _round_trip(flavor, graph, dest)

    assert predictor.classes == ["bronze", "gold", "silver"]
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table.to_numpy()))
    np.testing.assert_allclose(
        predictor.predict_proba(table), model.predict_proba(table.to_numpy()), rtol=1e-4, atol=1e-5
    )


def test_zipmap_classes_are_read_from_the_output_without_options(flavor: OnnxFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    table = _float32(table)
    model = LogisticRegression().fit(table.to_numpy(), labels)
    flavor.save_object(to_onnx(model, table.to_numpy()[:1]), dest)
    predictor = flavor.load(dest, {}, trusted=[])

    np.testing.assert_allclose(
        predictor.predict_proba(table), model.predict_proba(table.to_numpy()), rtol=1e-4, atol=1e-5
    )
    assert predictor.classes == [0, 1]


def test_regressor_output_is_flattened(flavor: OnnxFlavor, dest: Path) -> None:
    table, target = regression_frame()
    model = LinearRegression().fit(table.to_numpy(), target)
    graph = to_onnx(model, table.to_numpy()[:1])  # float64 input: tensor(double)

    options, predictor = _round_trip(flavor, graph, dest)

    assert "classes" not in options
    assert not predictor.has_proba
    assert predictor.classes is None
    result = predictor.predict(table)
    assert result.shape == (len(table),)
    np.testing.assert_allclose(result, model.predict(table.to_numpy()))


def test_one_input_per_column_is_fed_by_name(flavor: OnnxFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    table = _float32(table)
    model = make_pipeline(
        ColumnTransformer([("scale", StandardScaler(), FEATURES)]), LogisticRegression()
    ).fit(table, labels)
    graph = to_onnx(
        model,
        initial_types=[(name, FloatTensorType([None, 1])) for name in FEATURES],
        options={"zipmap": False},
    )

    _, predictor = _round_trip(flavor, graph, dest)

    reordered = table[table.columns[::-1]]
    np.testing.assert_array_equal(predictor.predict(reordered), model.predict(table))
    np.testing.assert_allclose(
        predictor.predict_proba(table), model.predict_proba(table), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(InvalidInputError, match="f3"):
        predictor.predict(table.drop(columns=["f3"]))


def test_wrong_number_of_columns_is_refused(flavor: OnnxFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    table = _float32(table)
    model = LogisticRegression().fit(table.to_numpy(), labels)
    flavor.save_object(to_onnx(model, table.to_numpy()[:1]), dest)
    predictor = flavor.load(dest, {}, trusted=[])

    with pytest.raises(InvalidInputError, match="does not fit 4 columns"):
        predictor.predict(table.iloc[:, :4])


def test_missing_values_cannot_become_integers(flavor: OnnxFlavor, dest: Path) -> None:
    from skl2onnx.common.data_types import Int64TensorType

    table, labels = classification_frame()
    ints = table.round().astype(np.int64)
    model = LogisticRegression().fit(ints.to_numpy(), labels)
    graph = to_onnx(model, initial_types=[("X", Int64TensorType([None, len(FEATURES)]))])
    flavor.save_object(graph, dest)
    predictor = flavor.load(dest, {}, trusted=[])

    np.testing.assert_array_equal(predictor.predict(ints.astype(np.float64)), model.predict(ints.to_numpy()))
    holes = ints.astype(np.float64)
    holes.iloc[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match=r"tensor\(int64\)"):
        predictor.predict(holes)


def test_threads_are_configurable(flavor: OnnxFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table.to_numpy(), labels)
    flavor.save_object(to_onnx(model, table.to_numpy()[:1].astype(np.float32)), dest)

    default = flavor.load(dest, {}, trusted=[])
    assert isinstance(default, OnnxPredictor)
    assert default.session.get_session_options().intra_op_num_threads == 1
    configured = flavor.load(dest, {"intra_op_num_threads": 2}, trusted=[])
    assert isinstance(configured, OnnxPredictor)
    assert configured.session.get_session_options().intra_op_num_threads == 2


def test_onnx_file_is_imported(flavor: OnnxFlavor, dest: Path, tmp_path: Path) -> None:
    table, labels = classification_frame()
    table = _float32(table)
    model = LogisticRegression().fit(table.to_numpy(), labels)
    source = tmp_path / "exported.onnx"
    source.write_bytes(to_onnx(model, table.to_numpy()[:1]).SerializeToString())

    assert flavor.detect_path(source)
    saved = flavor.save_path(source, dest, trusted=False)

    assert saved.untrusted == []
    assert saved.options["classes"] == [0, 1]
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table.to_numpy()))


def test_detection(flavor: OnnxFlavor, tmp_path: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table.to_numpy(), labels)
    assert flavor.detect_object(to_onnx(model, table.to_numpy()[:1].astype(np.float32)))
    assert not flavor.detect_object(model)
    other = tmp_path / "model.pkl"
    other.write_bytes(b"x")
    assert not flavor.detect_path(other)
    assert not flavor.detect_path(tmp_path)


def test_garbage_onnx_file_is_refused(flavor: OnnxFlavor, dest: Path, tmp_path: Path) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(b"\xff\xfe definitely not protobuf")

    with pytest.raises(InvalidInputError, match=r"broken\.onnx"):
        flavor.save_path(source, dest, trusted=False)
