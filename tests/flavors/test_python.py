from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flavor_helpers
import numpy as np
import pandas as pd
import pytest
from flavor_helpers import Offset, classification_frame

from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors import python as python_flavor
from passerelle.flavors.python import PythonFlavor, reference_of


@pytest.fixture
def flavor() -> PythonFlavor:
    return PythonFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


@pytest.fixture
def table() -> pd.DataFrame:
    frame, _ = classification_frame(n_rows=50)
    return frame


@pytest.fixture
def standard_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend cloudpickle is not installed."""
    monkeypatch.setattr(python_flavor, "_pickler", lambda: ("pickle", pickle))


def test_reference_to_a_function(flavor: PythonFlavor, dest: Path, table: pd.DataFrame) -> None:
    assert flavor.detect_object("flavor_helpers:row_sum")

    saved = flavor.save_reference("flavor_helpers:row_sum", dest)

    assert saved.untrusted == []
    assert sorted(p.name for p in dest.iterdir()) == ["reference.json"]
    assert json.loads((dest / "reference.json").read_text()) == {"reference": "flavor_helpers:row_sum"}
    predictor = flavor.load(dest, saved.options, trusted=[])
    np.testing.assert_allclose(predictor.predict(table), table.sum(axis=1).to_numpy())
    assert not predictor.has_proba
    assert predictor.classes is None


def test_single_column_frame_is_flattened(flavor: PythonFlavor, dest: Path, table: pd.DataFrame) -> None:
    saved = flavor.save_object("flavor_helpers:row_sum_frame", dest)
    result = flavor.load(dest, saved.options, trusted=[]).predict(table)

    assert result.shape == (len(table),)
    np.testing.assert_allclose(result, table.sum(axis=1).to_numpy())


def test_reference_to_a_class(flavor: PythonFlavor, dest: Path, table: pd.DataFrame) -> None:
    saved = flavor.save_reference("flavor_helpers:Threshold", dest)
    predictor = flavor.load(dest, saved.options, trusted=[])

    expected = flavor_helpers.Threshold()
    assert predictor.classes == ["low", "high"]
    assert predictor.has_proba
    np.testing.assert_array_equal(predictor.predict(table), expected.predict(table))
    np.testing.assert_allclose(predictor.predict_proba(table), expected.predict_proba(table))


def test_importable_callable_is_stored_as_a_reference(
    flavor: PythonFlavor, dest: Path, table: pd.DataFrame
) -> None:
    assert flavor.detect_object(flavor_helpers.row_sum)

    saved = flavor.save_object(flavor_helpers.row_sum, dest)

    assert saved.untrusted == []
    assert not (dest / "model.pkl").exists()
    assert json.loads((dest / "reference.json").read_text()) == {"reference": "flavor_helpers:row_sum"}
    np.testing.assert_allclose(
        flavor.load(dest, saved.options, trusted=[]).predict(table), table.sum(axis=1).to_numpy()
    )


def test_reference_of() -> None:
    assert reference_of(flavor_helpers.row_sum) == "flavor_helpers:row_sum"
    assert reference_of(flavor_helpers.Threshold) == "flavor_helpers:Threshold"
    assert reference_of(flavor_helpers.Threshold.predict) == "flavor_helpers:Threshold.predict"
    assert reference_of(len) == "builtins:len"
    assert reference_of(lambda table: table) is None
    assert reference_of(Offset(1.0)) is None
    assert reference_of(flavor_helpers.Threshold().predict) is None  # a bound method


def test_pickled_lambda_needs_trust(flavor: PythonFlavor, dest: Path, table: pd.DataFrame) -> None:
    pytest.importorskip("cloudpickle")
    offset = 4.0

    saved = flavor.save_object(lambda frame: frame.sum(axis=1) + offset, dest)

    assert saved.untrusted == ["pickle"]
    assert saved.options == {"kind": "pickle", "pickler": "cloudpickle"}
    assert sorted(p.name for p in dest.iterdir()) == ["model.pkl"]
    with pytest.raises(TrustRequiredError, match="pickled"):
        flavor.load(dest, saved.options, trusted=[])
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_allclose(predictor.predict(table), table.sum(axis=1).to_numpy() + offset)


def test_callable_instance_is_pickled(flavor: PythonFlavor, dest: Path, table: pd.DataFrame) -> None:
    saved = flavor.save_object(Offset(2.5), dest)

    assert saved.untrusted == ["pickle"]
    with pytest.raises(TrustRequiredError):
        flavor.load(dest, saved.options, trusted=[])
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_allclose(predictor.predict(table), table.sum(axis=1).to_numpy() + 2.5)


@pytest.mark.usefixtures("standard_pickle")
def test_standard_pickle_still_stores_importable_instances(
    flavor: PythonFlavor, dest: Path, table: pd.DataFrame
) -> None:
    saved = flavor.save_object(Offset(1.0), dest)

    assert saved.options == {"kind": "pickle", "pickler": "pickle"}
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_allclose(predictor.predict(table), table.sum(axis=1).to_numpy() + 1.0)


@pytest.mark.usefixtures("standard_pickle")
def test_standard_pickle_refuses_lambdas(flavor: PythonFlavor, dest: Path) -> None:
    with pytest.raises(InvalidInputError, match="neither imported by name nor pickled"):
        flavor.save_object(lambda frame: frame, dest)
    assert list(dest.iterdir()) == []


@pytest.mark.usefixtures("standard_pickle")
def test_standard_pickle_refuses_main_functions(
    flavor: PythonFlavor, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pickle would store "__main__.score" by name, which no server process can import.
    def score(frame: pd.DataFrame) -> Any:
        return frame

    score.__module__ = "__main__"
    score.__qualname__ = "score"
    monkeypatch.setattr(sys.modules["__main__"], "score", score, raising=False)

    with pytest.raises(InvalidInputError, match="__main__"):
        flavor.save_object(score, dest)
    assert list(dest.iterdir()) == []


def test_main_functions_are_pickled_by_value(
    flavor: PythonFlavor, dest: Path, monkeypatch: pytest.MonkeyPatch, table: pd.DataFrame
) -> None:
    pytest.importorskip("cloudpickle")

    def score(frame: pd.DataFrame) -> Any:
        return frame.sum(axis=1) * 2

    score.__module__ = "__main__"
    score.__qualname__ = "score"
    monkeypatch.setattr(sys.modules["__main__"], "score", score, raising=False)

    saved = flavor.save_object(score, dest)
    monkeypatch.delattr(sys.modules["__main__"], "score")

    assert saved.untrusted == ["pickle"]
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])
    np.testing.assert_allclose(predictor.predict(table), table.sum(axis=1).to_numpy() * 2)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("not a reference", "not a reference"),
        ("flavor_helpers:", "not a reference"),
        ("flavor_helpers:does_not_exist", "cannot import"),
        ("no_such_module_anywhere:thing", "cannot import"),
    ],
)
def test_bad_references_are_refused(flavor: PythonFlavor, dest: Path, reference: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        flavor.save_reference(reference, dest)
    assert list(dest.iterdir()) == []


def test_class_needing_arguments_is_refused_at_load(flavor: PythonFlavor, dest: Path) -> None:
    saved = flavor.save_reference("flavor_helpers:NeedsArguments", dest)

    with pytest.raises(InvalidInputError, match="without arguments"):
        flavor.load(dest, saved.options, trusted=[])


@pytest.mark.parametrize("model", [42, "model.pkl", "module.only", ["flavor_helpers:row_sum"]])
def test_detection_refuses_non_callables(flavor: PythonFlavor, model: Any) -> None:
    assert not flavor.detect_object(model)


def test_non_callable_object_is_refused(flavor: PythonFlavor, dest: Path) -> None:
    with pytest.raises(InvalidInputError, match="callable or a reference"):
        flavor.save_object(42, dest)


def test_detection_accepts_callables(flavor: PythonFlavor) -> None:
    candidates: list[Callable[..., Any]] = [len, flavor_helpers.row_sum, Offset(1.0), lambda frame: frame]
    assert all(flavor.detect_object(c) for c in candidates)
    assert not flavor.detect_path(Path(flavor_helpers.__file__))
