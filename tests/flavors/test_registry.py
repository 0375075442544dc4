from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import pytest
import skops.io as sio
import xgboost as xgb
from flavor_helpers import classification_frame
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

import passerelle.flavors
from passerelle.errors import MissingDependencyError, UnknownFlavorError
from passerelle.flavors import Flavor, all_flavors, detect, flavor_names, get_flavor
from passerelle.flavors.lightgbm import LightGBMFlavor
from passerelle.flavors.mlflow import MlflowFlavor
from passerelle.flavors.onnx import OnnxFlavor
from passerelle.flavors.python import PythonFlavor
from passerelle.flavors.sklearn import SklearnFlavor
from passerelle.flavors.xgboost import XGBoostFlavor

BUILT_IN: dict[str, type[Flavor]] = {
    "sklearn": SklearnFlavor,
    "onnx": OnnxFlavor,
    "xgboost": XGBoostFlavor,
    "lightgbm": LightGBMFlavor,
    "mlflow": MlflowFlavor,
    "python": PythonFlavor,
}
# What each optional flavor needs (the one its load imports first, first), and its extra.
OPTIONAL: dict[str, tuple[list[str], str]] = {
    "onnx": (["onnxruntime", "onnx"], "onnx"),
    "xgboost": (["xgboost"], "xgboost"),
    "lightgbm": (["lightgbm"], "lightgbm"),
    "mlflow": (["mlflow"], "mlflow"),
}


def _fitted_logistic_regression() -> LogisticRegression:
    table, labels = classification_frame(n_rows=60)
    return LogisticRegression().fit(table, labels)


def test_built_in_flavors_are_entry_points() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="passerelle.flavors")}
    for name, cls in BUILT_IN.items():
        assert declared[name] == f"{cls.__module__}:{cls.__name__}"
        flavor = get_flavor(name)
        assert type(flavor) is cls
        assert flavor.name == name
    assert set(BUILT_IN) <= set(flavor_names())
    assert [f.name for f in all_flavors()][:6] == [
        "mlflow",
        "onnx",
        "xgboost",
        "lightgbm",
        "sklearn",
        "python",
    ]


def test_optional_flavors_name_their_extra() -> None:
    for name, (_, extra) in OPTIONAL.items():
        assert get_flavor(name).extra == extra
    assert get_flavor("sklearn").extra is None
    assert get_flavor("python").extra is None


def test_unknown_flavor_name() -> None:
    with pytest.raises(UnknownFlavorError, match=r"'tensorflow'.*sklearn"):
        get_flavor("tensorflow")


@pytest.mark.parametrize("model", [object(), 42, {"weights": [1, 2]}, "not a reference"])
def test_unrecognised_object(model: Any) -> None:
    with pytest.raises(UnknownFlavorError, match="no flavor recognises the object"):
        detect(model)


def test_unrecognised_path(tmp_path: Path) -> None:
    for name, content in [("data.csv", "a,b\n1,2\n"), ("notes.txt", "hello\n"), ("config.json", '{"a": 1}')]:
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(UnknownFlavorError, match=name):
            detect(path)
    with pytest.raises(UnknownFlavorError):
        detect(tmp_path)


def _xgb_classifier() -> xgb.XGBClassifier:
    table, labels = classification_frame(n_rows=60)
    return xgb.XGBClassifier(n_estimators=2, n_jobs=1).fit(table, labels)


def _lgb_classifier() -> lgb.LGBMClassifier:
    table, labels = classification_frame(n_rows=60)
    return lgb.LGBMClassifier(n_estimators=2, min_child_samples=5, verbose=-1, n_jobs=1).fit(table, labels)


def _onnx_graph() -> Any:
    model = _fitted_logistic_regression()
    table, _ = classification_frame(n_rows=1)
    return to_onnx(model, table.to_numpy()[:1].astype("float32"))


OBJECTS: dict[str, tuple[Callable[[], Any], str]] = {
    "sklearn estimator": (_fitted_logistic_regression, "sklearn"),
    # these two are scikit-learn estimators as well: the more specific flavor must win
    "xgboost classifier": (_xgb_classifier, "xgboost"),
    "lightgbm classifier": (_lgb_classifier, "lightgbm"),
    "onnx graph": (_onnx_graph, "onnx"),
    "reference": (lambda: "flavor_helpers:row_sum", "python"),
    "function": (lambda: len, "python"),
}


@pytest.mark.parametrize("case", list(OBJECTS))
def test_detect_objects(case: str) -> None:
    make, expected = OBJECTS[case]
    assert detect(make()).name == expected


def _write_skops(path: Path) -> None:
    sio.dump(_fitted_logistic_regression(), path)


def _write_pickle(path: Path) -> None:
    joblib.dump(_fitted_logistic_regression(), path)


def _write_onnx(path: Path) -> None:
    path.write_bytes(_onnx_graph().SerializeToString())


def _write_xgboost(path: Path) -> None:
    _xgb_classifier().save_model(path)


def _write_lightgbm(path: Path) -> None:
    _lgb_classifier().booster_.save_model(path)


def _write_mlflow(path: Path) -> None:
    # Only the MLmodel file matters to detection; writing a real model would import MLflow.
    path.mkdir()
    (path / "MLmodel").write_text("flavors:\n  python_function: {loader_module: mlflow.sklearn}\n")


PATHS: dict[str, tuple[Callable[[Path], None], str]] = {
    "model.skops": (_write_skops, "sklearn"),
    "model.pkl": (_write_pickle, "sklearn"),
    "model.joblib": (_write_pickle, "sklearn"),
    "model.onnx": (_write_onnx, "onnx"),
    "model.ubj": (_write_xgboost, "xgboost"),
    "model.json": (_write_xgboost, "xgboost"),
    "model.txt": (_write_lightgbm, "lightgbm"),
    "model.lgb": (_write_lightgbm, "lightgbm"),
    "mlflow-model": (_write_mlflow, "mlflow"),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_detect_paths(name: str, tmp_path: Path) -> None:
    write, expected = PATHS[name]
    path = tmp_path / name
    write(path)
    assert detect(path).name == expected


def _block(monkeypatch: pytest.MonkeyPatch, packages: list[str]) -> None:
    """Make ``packages`` look uninstalled: None in sys.modules makes an import fail.

    Submodules already imported by other tests are blocked too, since importing
    ``mlflow.pyfunc`` would otherwise be served from sys.modules.
    """
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)
        for loaded in [m for m in sys.modules if m.startswith(f"{package}.")]:
            monkeypatch.setitem(sys.modules, loaded, None)


@pytest.fixture
def without_optional_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    for packages, _ in OPTIONAL.values():
        _block(monkeypatch, packages)


@pytest.mark.usefixtures("without_optional_libraries")
def test_detection_does_not_import_optional_libraries(tmp_path: Path) -> None:
    model = _fitted_logistic_regression()
    for name in OPTIONAL:
        assert not get_flavor(name).detect_object(model)
        assert not get_flavor(name).detect_object("flavor_helpers:row_sum")
    assert detect(model).name == "sklearn"
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"whatever")
    # recognising a file by its name needs no library: the error comes when it is used
    assert detect(onnx_file).name == "onnx"


@pytest.mark.parametrize("name", list(OPTIONAL))
def test_missing_library_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    modules, extra = OPTIONAL[name]
    _block(monkeypatch, modules)
    # The flavor module itself must import without its library. Both the sys.modules entry
    # and the package attribute are put back afterwards, so later tests see the original.
    module_name = f"passerelle.flavors.{name}"
    monkeypatch.setattr(passerelle.flavors, name, sys.modules[module_name])
    monkeypatch.delitem(sys.modules, module_name)
    fresh = importlib.import_module(module_name)
    flavor = fresh.__dict__[BUILT_IN[name].__name__]()

    with pytest.raises(MissingDependencyError) as caught:
        flavor.load(tmp_path, {}, trusted=["pickle"])

    assert caught.value.extra == extra
    assert f"pip install 'passerelle[{extra}]'" in str(caught.value)
    assert str(caught.value).startswith(f"{modules[0]} is not installed")
