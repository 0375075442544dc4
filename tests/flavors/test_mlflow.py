from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flavor_helpers import classification_frame
from sklearn.linear_model import LogisticRegression

from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors.mlflow import MlflowFlavor

# MLflow warns about its own type hints when mlflow.pyfunc is first imported (the message
# starts with a colour code). mlflow is imported inside the tests so that the mark applies.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*Any type hint is inferred as AnyType:UserWarning")


@pytest.fixture
def flavor() -> MlflowFlavor:
    return MlflowFlavor()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    return folder


@pytest.fixture
def sklearn_model_dir(tmp_path: Path) -> tuple[Path, LogisticRegression, pd.DataFrame]:
    import mlflow.sklearn

    table, labels = classification_frame()
    model = LogisticRegression().fit(table, labels)
    directory = tmp_path / "mlflow-model"
    # Explicit requirements keep MLflow from inferring them in a subprocess (seconds).
    mlflow.sklearn.save_model(model, directory, pip_requirements=["scikit-learn"])
    return directory, model, table


def test_sklearn_model_directory_round_trip(
    flavor: MlflowFlavor, dest: Path, sklearn_model_dir: tuple[Path, LogisticRegression, pd.DataFrame]
) -> None:
    directory, model, table = sklearn_model_dir
    assert flavor.detect_path(directory)

    saved = flavor.save_path(directory, dest, trusted=False)

    assert saved.untrusted == ["pickle"]
    assert {"python_function", "sklearn"} <= set(saved.options["flavors"])
    assert "scikit-learn" in saved.libraries
    assert any(lib in {"mlflow", "mlflow-skinny"} for lib in saved.libraries)
    assert (dest / "model" / "MLmodel").read_bytes() == (directory / "MLmodel").read_bytes()
    with pytest.raises(TrustRequiredError, match="MLflow"):
        flavor.load(dest, saved.options, trusted=[])
    predictor = flavor.load(dest, saved.options, trusted=saved.untrusted)
    np.testing.assert_array_equal(predictor.predict(table), model.predict(table))
    assert not predictor.has_proba
    assert predictor.classes is None


def test_single_column_output_is_flattened(flavor: MlflowFlavor, dest: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc

    class RowSum(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            return model_input.sum(axis=1).to_frame("total")

    directory = tmp_path / "row-sum"
    mlflow.pyfunc.save_model(directory, python_model=RowSum(), pip_requirements=["pandas"])
    table, _ = classification_frame(n_rows=20)

    saved = flavor.save_path(directory, dest, trusted=False)
    predictor = flavor.load(dest, saved.options, trusted=["pickle"])

    result = predictor.predict(table)
    assert result.shape == (len(table),)
    np.testing.assert_allclose(result, table.sum(axis=1).to_numpy())


def test_detection(flavor: MlflowFlavor, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not flavor.detect_path(empty)
    file = tmp_path / "MLmodel"
    file.write_text("flavors: {}\n")
    assert not flavor.detect_path(file)
    assert flavor.detect_path(tmp_path)
    assert not flavor.detect_object(LogisticRegression())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("flavors:\n  sklearn: {pickled_model: model.pkl}\n", "no python_function flavor"),
        ("flavors: [unclosed\n", "cannot read"),
        ("just a string\n", "no flavors section"),
    ],
)
def test_unusable_directories_are_refused(
    flavor: MlflowFlavor, dest: Path, tmp_path: Path, content: str, message: str
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "MLmodel").write_text(content)

    with pytest.raises(InvalidInputError, match=message):
        flavor.save_path(directory, dest, trusted=True)
    assert list(dest.iterdir()) == []
