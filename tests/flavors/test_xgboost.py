from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from flavor_helpers import classification_frame, regression_frame

from passerelle.errors import InvalidInputError
from passerelle.flavors.xgboost import XGBoostFlavor


class HouseClassifier(xgb.XGBClassifier):  # type: ignore[misc]
    """A user subclass: it must be reloaded through its XGBoost base class."""


@pytest.fixture
def flavor() -> XGBoostFlavor:
    return XGBoostFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


def test_classifier_round_trip(flavor: XGBoostFlavor, dest: Path) -> None:
    table, labels = classification_frame(n_classes=3)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1).fit(table, labels)

    saved = flavor.save_object(model, dest)

    assert saved.options == {"estimator": "XGBClassifier"}
    assert saved.untrusted == []
    assert any(lib.startswith("xgboost") for lib in saved.libraries)
    assert sorted(p.name for p in dest.iterdir()) == ["model.ubj"]
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    assert predictor.has_proba
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table), rtol=1e-6)
    assert predictor.classes == [0, 1, 2]
    # the booster recorded the feature names: a reordered frame is put back in order
    np.testing.assert_array_equal(predictor.predict(table[table.columns[::-1]]), model.predict(table))


def test_regressor_fitted_on_arrays(flavor: XGBoostFlavor, dest: Path) -> None:
    table, target = regression_frame()
    model = xgb.XGBRegressor(n_estimators=5, max_depth=3, n_jobs=1).fit(table.to_numpy(), target)

    saved = flavor.save_object(model, dest)

    assert saved.options == {"estimator": "XGBRegressor"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict(table), model.predict(table.to_numpy()), rtol=1e-6)
    assert not predictor.has_proba
    assert predictor.classes is None


def test_subclass_is_reloaded_through_its_xgboost_base(flavor: XGBoostFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = HouseClassifier(n_estimators=3, n_jobs=1).fit(table, labels)

    saved = flavor.save_object(model, dest)

    assert saved.options == {"estimator": "XGBClassifier"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table), rtol=1e-6)


def test_booster_round_trip(flavor: XGBoostFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(table, labels), 5)

    saved = flavor.save_object(booster, dest)

    assert saved.options == {"estimator": "Booster"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict(table), booster.predict(xgb.DMatrix(table)), rtol=1e-6)
    assert not predictor.has_proba


@pytest.mark.parametrize("suffix", [".ubj", ".json"])
def test_model_file_is_imported(flavor: XGBoostFlavor, dest: Path, tmp_path: Path, suffix: str) -> None:
    table, labels = classification_frame()
    model = xgb.XGBClassifier(n_estimators=5, n_jobs=1).fit(table, labels)
    source = tmp_path / f"exported{suffix}"
    model.save_model(source)

    assert flavor.detect_path(source)
    saved = flavor.save_path(source, dest, trusted=False)

    # the wrapper's own record in the file says it was a classifier
    assert saved.options == {"estimator": "XGBClassifier"}
    assert saved.untrusted == []
    assert sorted(p.name for p in dest.iterdir()) == ["model.ubj"]
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table), rtol=1e-6)


def test_booster_file_is_imported_as_a_booster(flavor: XGBoostFlavor, dest: Path, tmp_path: Path) -> None:
    table, target = regression_frame()
    booster = xgb.train({"nthread": 1}, xgb.DMatrix(table, target), 3)
    source = tmp_path / "booster.json"
    booster.save_model(source)

    saved = flavor.save_path(source, dest, trusted=False)

    assert saved.options == {"estimator": "Booster"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict(table), booster.predict(xgb.DMatrix(table)), rtol=1e-6)


def test_detection(flavor: XGBoostFlavor, tmp_path: Path) -> None:
    table, labels = classification_frame()
    assert flavor.detect_object(xgb.XGBClassifier())
    assert flavor.detect_object(xgb.train({"nthread": 1}, xgb.DMatrix(table, labels), 1))
    assert not flavor.detect_object(object())
    other_json = tmp_path / "config.json"
    other_json.write_text(json.dumps({"learners": 3}))
    assert not flavor.detect_path(other_json)
    not_json = tmp_path / "broken.json"
    not_json.write_text("{nope")
    assert not flavor.detect_path(not_json)
    not_ubj = tmp_path / "random.ubj"
    not_ubj.write_bytes(b"\x00\x01\x02")
    assert not flavor.detect_path(not_ubj)
    assert not flavor.detect_path(tmp_path)


def test_refusals(flavor: XGBoostFlavor, dest: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not fitted"):
        flavor.save_object(xgb.XGBClassifier(), dest)
    with pytest.raises(InvalidInputError, match="expected an XGBoost model"):
        flavor.save_object(object(), dest)
    broken = tmp_path / "broken.ubj"
    broken.write_bytes(b"{garbage")
    with pytest.raises(InvalidInputError, match=r"broken\.ubj"):
        flavor.save_path(broken, dest, trusted=False)
    with pytest.raises(InvalidInputError, match="unknown XGBoost estimator"):
        flavor.load(dest, {"estimator": "os.system"}, trusted=[])
