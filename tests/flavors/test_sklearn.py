from __future__ import annotations

import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from flavor_helpers import ScaleBy, classification_frame, regression_frame
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors.sklearn import SklearnFlavor, SklearnPredictor, is_auto_trusted, untrusted_types

TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"


@pytest.fixture
def flavor() -> SklearnFlavor:
    return SklearnFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


def test_logistic_regression_round_trip(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame(n_classes=3)
    model = LogisticRegression(max_iter=500).fit(table, labels)

    saved = flavor.save_object(model, dest)

    assert sorted(p.name for p in dest.iterdir()) == ["model.skops"]
    assert saved.options == {"format": "skops"}
    assert saved.untrusted == []
    assert {"scikit-learn", "skops", "numpy"} <= set(saved.libraries)
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    assert predictor.has_proba
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table))
    assert predictor.classes == [0, 1, 2]
    assert all(type(c) is int for c in predictor.classes)


def test_columns_are_matched_by_name_for_models_fitted_on_frames(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table, labels)
    predictor = flavor.load(dest, flavor.save_object(model, dest).options, trusted=[])

    reordered = table[table.columns[::-1]]

    np.testing.assert_array_equal(predictor.predict(reordered), model.predict(table))


def test_float_frames_reach_a_plain_estimator_as_arrays(
    flavor: SklearnFlavor, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # filterwarnings=error: the array must not set off "X does not have valid feature names".
    table, labels = classification_frame()
    model = HistGradientBoostingClassifier(max_iter=20).fit(table, labels)
    predictor = flavor.load(dest, flavor.save_object(model, dest).options, trusted=[])
    seen: list[tuple[bool, type]] = []
    twin = predictor._unnamed  # type: ignore[attr-defined]
    assert twin is not None
    assert not hasattr(twin, "feature_names_in_")
    original = type(twin).predict_proba

    def spy(self, X):  # type: ignore[no-untyped-def]
        seen.append((self is twin, type(X)))
        return original(self, X)

    monkeypatch.setattr(type(twin), "predict_proba", spy)
    reordered = table[table.columns[::-1]].astype("float64")
    np.testing.assert_allclose(predictor.predict_proba(reordered), model.predict_proba(table))
    assert seen[0] == (True, np.ndarray)
    # A column of another type: the frame goes to the estimator as it is, checks and all.
    seen.clear()
    mixed = table.astype({table.columns[0]: "int64"})
    predictor.predict_proba(mixed)
    assert seen == [(False, pd.DataFrame)]
    assert model.feature_names_in_ is not None, "the registered estimator keeps its names"


class _ByName(ClassifierMixin, BaseEstimator):
    """Reads its input by column name: it cannot take an array."""

    def fit(self, X, y):  # type: ignore[no-untyped-def]
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):  # type: ignore[no-untyped-def]
        return (X["f0"].to_numpy() > 0).astype(int)


def test_an_estimator_reading_columns_by_name_keeps_getting_frames() -> None:
    table, labels = classification_frame()
    model = _ByName().fit(table, labels)
    predictor = SklearnPredictor(model)
    assert predictor._unnamed is None  # type: ignore[attr-defined]
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_model_fitted_on_arrays_gets_an_array(flavor: SklearnFlavor, dest: Path) -> None:
    # filterwarnings=error turns sklearn's "X has feature names" warning into a failure.
    table, labels = classification_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(table.to_numpy(), labels)
    predictor = flavor.load(dest, flavor.save_object(model, dest).options, trusted=[])

    np.testing.assert_array_equal(predictor.predict(table), model.predict(table.to_numpy()))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table.to_numpy()))


def test_string_labels_are_plain_strings(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame(n_classes=3)
    names = np.array(["bronze", "gold", "silver"])[labels]
    model = LogisticRegression(max_iter=500).fit(table, names)
    predictor = flavor.load(dest, flavor.save_object(model, dest).options, trusted=[])

    assert predictor.classes == ["bronze", "gold", "silver"]
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_hist_gradient_boosting_loads_without_trust(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(table, labels)

    saved = flavor.save_object(model, dest)

    # skops itself does not trust the tree predictor: passerelle does.
    assert TREE_PREDICTOR in untrusted_types(dest / "model.skops")
    assert saved.untrusted == []
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table))


def test_regressor_has_no_proba(flavor: SklearnFlavor, dest: Path) -> None:
    table, target = regression_frame()
    model = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(table, target)
    saved = flavor.save_object(model, dest)
    assert saved.untrusted == []

    predictor = flavor.load(dest, saved.options, trusted=[])

    np.testing.assert_allclose(predictor.predict(table), model.predict(table))
    assert not predictor.has_proba
    assert predictor.classes is None
    with pytest.raises(NotImplementedError):
        predictor.predict_proba(table)


def test_custom_transformer_needs_trust(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = make_pipeline(ScaleBy(3.0), LogisticRegression()).fit(table, labels)

    saved = flavor.save_object(model, dest)

    assert saved.untrusted == ["flavor_helpers.ScaleBy"]
    with pytest.raises(TrustRequiredError, match=r"flavor_helpers\.ScaleBy"):
        flavor.load(dest, saved.options, trusted=[])
    predictor = flavor.load(dest, saved.options, trusted=saved.untrusted)
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), model.predict_proba(table))


def test_trust_is_checked_against_the_file_not_the_options(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    sio.dump(make_pipeline(ScaleBy(), LogisticRegression()).fit(table, labels), dest / "model.skops")

    with pytest.raises(TrustRequiredError, match=r"flavor_helpers\.ScaleBy"):
        flavor.load(dest, {"format": "skops"}, trusted=["something.Else"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sklearn.tree._tree.Tree", True),
        (TREE_PREDICTOR, True),
        ("scipy.sparse._csr.csr_matrix", True),
        ("numpy.dtype", True),
        # functions are called by FunctionTransformer: the user decides
        ("numpy.sum", False),
        ("sklearn.preprocessing._data.normalize", False),
        ("builtins.eval", False),
        ("flavor_helpers.ScaleBy", False),
        ("sklearn.does_not_exist.Thing", False),
        ("numpy.__main__.Thing", False),
        ("sklearnx.Thing", False),
    ],
)
def test_auto_trust_policy(name: str, expected: bool) -> None:
    assert is_auto_trusted(name) is expected


def test_pickle_file_needs_the_trust_flag(flavor: SklearnFlavor, dest: Path, tmp_path: Path) -> None:
    table, labels = classification_frame()
    source = tmp_path / "model.pkl"
    joblib.dump(LogisticRegression().fit(table, labels), source)

    assert flavor.detect_path(source)
    with pytest.raises(TrustRequiredError, match=r"model\.pkl"):
        flavor.save_path(source, dest, trusted=False)
    assert list(dest.iterdir()) == []


def test_trusted_pickle_is_converted_to_skops(flavor: SklearnFlavor, dest: Path, tmp_path: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table, labels)
    source = tmp_path / "model.joblib"
    joblib.dump(model, source)

    saved = flavor.save_path(source, dest, trusted=True)

    assert saved.options == {"format": "skops"}
    assert saved.untrusted == []
    assert sorted(p.name for p in dest.iterdir()) == ["model.skops"]
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_trusted_pickle_with_custom_types_keeps_them_untrusted(
    flavor: SklearnFlavor, dest: Path, tmp_path: Path
) -> None:
    table, labels = classification_frame()
    model = make_pipeline(ScaleBy(), LogisticRegression()).fit(table, labels)
    source = tmp_path / "model.pickle"
    source.write_bytes(pickle.dumps(model))

    saved = flavor.save_path(source, dest, trusted=True)

    assert saved.options == {"format": "skops"}
    assert saved.untrusted == ["flavor_helpers.ScaleBy"]


def test_pickle_that_skops_cannot_rebuild_is_kept(flavor: SklearnFlavor, dest: Path, tmp_path: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table, labels)
    # skops writes a compiled pattern but refuses to rebuild one.
    model.pattern_ = re.compile("churn")
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(model))

    saved = flavor.save_path(source, dest, trusted=True)

    assert saved.options == {"format": "pickle"}
    assert saved.untrusted == ["pickle"]
    assert sorted(p.name for p in dest.iterdir()) == ["model.pkl"]
    assert (dest / "model.pkl").read_bytes() == source.read_bytes()
    with pytest.raises(TrustRequiredError):
        flavor.load(dest, saved.options, trusted=[])
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_object_skops_cannot_store_falls_back_to_pickle(flavor: SklearnFlavor, dest: Path) -> None:
    table, labels = classification_frame()
    model = LogisticRegression().fit(table, labels)
    model.weight_ = 1 + 2j  # skops has no representation for complex numbers

    saved = flavor.save_object(model, dest)

    assert saved.options == {"format": "pickle"}
    assert saved.untrusted == ["pickle"]
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_skops_file_is_copied(flavor: SklearnFlavor, dest: Path, tmp_path: Path) -> None:
    table, labels = classification_frame()
    model = HistGradientBoostingClassifier(max_iter=5).fit(table, labels)
    source = tmp_path / "exported.skops"
    sio.dump(model, source)

    assert flavor.detect_path(source)
    saved = flavor.save_path(source, dest, trusted=False)

    assert saved.untrusted == []
    assert (dest / "model.skops").read_bytes() == source.read_bytes()
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))


def test_unreadable_skops_file_is_refused(flavor: SklearnFlavor, dest: Path, tmp_path: Path) -> None:
    source = tmp_path / "broken.skops"
    source.write_bytes(b"not a zip file")

    with pytest.raises(InvalidInputError, match=r"broken\.skops"):
        flavor.save_path(source, dest, trusted=False)


def test_detection(flavor: SklearnFlavor, tmp_path: Path) -> None:
    assert flavor.detect_object(LogisticRegression())
    assert flavor.detect_object(make_pipeline(StandardScaler(), LogisticRegression()))
    assert not flavor.detect_object("sklearn.linear_model:LogisticRegression")
    assert not flavor.detect_object(LogisticRegression)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    assert not flavor.detect_path(csv)
    assert not flavor.detect_path(tmp_path / "missing.pkl")


def test_unfitted_or_non_predicting_estimators_are_refused(flavor: SklearnFlavor, dest: Path) -> None:
    table, _ = classification_frame()
    with pytest.raises(InvalidInputError, match="not a fitted estimator"):
        flavor.save_object(LogisticRegression(), dest)
    with pytest.raises(InvalidInputError, match="no predict method"):
        flavor.save_object(StandardScaler().fit(table), dest)
    assert list(dest.iterdir()) == []
