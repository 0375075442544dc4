from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from flavor_helpers import classification_frame, regression_frame

from passerelle.errors import InvalidInputError
from passerelle.flavors.lightgbm import LightGBMFlavor

SMALL = {"n_estimators": 5, "num_leaves": 7, "verbose": -1, "n_jobs": 1}


@pytest.fixture
def flavor() -> LightGBMFlavor:
    return LightGBMFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


def test_binary_classifier_with_string_labels(flavor: LightGBMFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    names = np.array(["no", "yes"])[labels]
    model = lgb.LGBMClassifier(**SMALL).fit(table, names)

    saved = flavor.save_object(model, dest)

    assert saved.options == {"estimator": "LGBMClassifier", "objective": "binary", "classes": ["no", "yes"]}
    json.dumps(saved.options)
    assert saved.untrusted == []
    assert sorted(p.name for p in dest.iterdir()) == ["model.txt"]
    predictor = flavor.load(dest, saved.options, trusted=[])
    assert predictor.classes == ["no", "yes"]
    assert predictor.has_proba
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table))


def test_multiclass_classifier(flavor: LightGBMFlavor, dest: Path) -> None:
    table, labels = classification_frame(n_classes=3)
    model = lgb.LGBMClassifier(**SMALL).fit(table, labels + 10)

    saved = flavor.save_object(model, dest)

    assert saved.options["objective"] == "multiclass"
    assert saved.options["classes"] == [10, 11, 12]
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    proba = predictor.predict_proba(table)
    assert proba.shape == (len(table), 3)
    np.testing.assert_allclose(proba, model.predict_proba(table))


def test_boolean_labels_are_json_safe(flavor: LightGBMFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = lgb.LGBMClassifier(**SMALL).fit(table, labels.astype(bool))

    saved = flavor.save_object(model, dest)

    assert saved.options["classes"] == [False, True]
    assert all(type(c) is bool for c in saved.options["classes"])
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_regressor(flavor: LightGBMFlavor, dest: Path) -> None:
    table, target = regression_frame()
    model = lgb.LGBMRegressor(**SMALL).fit(table.to_numpy(), target)

    saved = flavor.save_object(model, dest)

    assert saved.options == {"estimator": "LGBMRegressor", "objective": "regression"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict(table), model.predict(table.to_numpy()))
    assert not predictor.has_proba
    assert predictor.classes is None


def test_columns_are_put_in_training_order(flavor: LightGBMFlavor, dest: Path) -> None:
    table, target = regression_frame()
    model = lgb.LGBMRegressor(**SMALL).fit(table, target)
    predictor = flavor.load(dest, flavor.save_object(model, dest).options, trusted=[])

    np.testing.assert_allclose(predictor.predict(table[table.columns[::-1]]), model.predict(table))


def test_booster_gets_default_classes(flavor: LightGBMFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lgb.Dataset(table, labels),
        num_boost_round=5,
    )

    saved = flavor.save_object(booster, dest)

    assert saved.options == {"estimator": "Booster", "objective": "binary", "classes": [0, 1]}
    predictor = flavor.load(dest, saved.options, trusted=[])
    positive = booster.predict(table)
    np.testing.assert_allclose(predictor.predict_proba(table), np.column_stack([1 - positive, positive]))
    np.testing.assert_array_equal(predictor.predict(table), (positive > 0.5).astype(int))


@pytest.mark.parametrize("suffix", [".txt", ".lgb", ".model"])
def test_model_file_is_imported(flavor: LightGBMFlavor, dest: Path, tmp_path: Path, suffix: str) -> None:
    table, labels = classification_frame(n_classes=3)
    model = lgb.LGBMClassifier(**SMALL).fit(table, labels)
    source = tmp_path / f"exported{suffix}"
    model.booster_.save_model(source)

    assert flavor.detect_path(source)
    saved = flavor.save_path(source, dest, trusted=False)

    assert saved.options == {"estimator": "Booster", "objective": "multiclass", "classes": [0, 1, 2]}
    assert (dest / "model.txt").read_bytes() == source.read_bytes()
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table))


def test_detection(flavor: LightGBMFlavor, tmp_path: Path) -> None:
    assert flavor.detect_object(lgb.LGBMRegressor())
    assert not flavor.detect_object(object())
    notes = tmp_path / "notes.txt"
    notes.write_text("trees are nice\n")
    assert not flavor.detect_path(notes)
    csv = tmp_path / "tree.csv"
    csv.write_text("tree\n")
    assert not flavor.detect_path(csv)
    assert not flavor.detect_path(tmp_path)


def test_refusals(flavor: LightGBMFlavor, dest: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not fitted"):
        flavor.save_object(lgb.LGBMClassifier(), dest)
    with pytest.raises(InvalidInputError, match="expected a LightGBM model"):
        flavor.save_object([1, 2], dest)
    broken = tmp_path / "broken.txt"
    broken.write_text("tree\nversion=v4\nthis is not a model\n")
    with pytest.raises(InvalidInputError, match=r"broken\.txt"):
        flavor.save_path(broken, dest, trusted=False)
    assert list(dest.iterdir()) == []
