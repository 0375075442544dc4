"""MLflow model directories, called through ``mlflow.pyfunc``.

The directory is copied as it is. Loading it hands control to the MLflow loader named in
its ``MLmodel`` file, which unpickles Python objects (cloudpickle for custom models) and can
import code shipped in the directory, so every MLflow model needs the user's trust.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml

from passerelle._deps import require
from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors.base import Flavor, Predictor, SavedArtifact, installed_distribution, one_per_row

MLMODEL_FILE = "MLmodel"
#: the folder, inside the stored artifact, that holds the copied MLflow directory
MODEL_DIR = "model"
EXTRA = "mlflow"
PICKLE = "pickle"
# Distributions behind the MLflow flavors a model directory can list, for its environment
# (both XGBoost names: the environment records whichever is installed).
_FLAVOR_DISTRIBUTIONS = {
    "sklearn": ["scikit-learn"],
    "xgboost": ["xgboost", "xgboost-cpu"],
    "lightgbm": ["lightgbm"],
    "catboost": ["catboost"],
    "onnx": ["onnx", "onnxruntime"],
    "pytorch": ["torch"],
    "tensorflow": ["tensorflow"],
    "keras": ["keras"],
    "statsmodels": ["statsmodels"],
    "prophet": ["prophet"],
    "transformers": ["transformers"],
    "spark": ["pyspark"],
}


def read_mlmodel(directory: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load((directory / MLMODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read {directory / MLMODEL_FILE}: {exc}") from exc
    if not isinstance(content, dict) or not isinstance(content.get("flavors"), dict):
        raise InvalidInputError(f"{directory / MLMODEL_FILE} has no flavors section")
    return content


class MlflowPredictor(Predictor):
    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return one_per_row(self.model.predict(table))


class MlflowFlavor(Flavor):
    name: ClassVar[str] = "mlflow"
    extra: ClassVar[str | None] = EXTRA

    def detect_path(self, path: Path) -> bool:
        return path.is_dir() and (path / MLMODEL_FILE).is_file()

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        if not self.detect_path(path):
            raise InvalidInputError(f"{path} is not an MLflow model directory (no {MLMODEL_FILE} file)")
        flavors = sorted(read_mlmodel(path)["flavors"])
        if "python_function" not in flavors:
            raise InvalidInputError(
                f"the MLflow model at {path} has no python_function flavor, "
                "so it cannot be called generically"
            )
        shutil.copytree(path, dest / MODEL_DIR)
        libraries = [installed_distribution("mlflow", "mlflow-skinny")]
        for flavor in flavors:
            libraries.extend(d for d in _FLAVOR_DISTRIBUTIONS.get(flavor, []) if d not in libraries)
        return SavedArtifact(options={"flavors": flavors}, libraries=libraries, untrusted=[PICKLE])

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        if PICKLE not in trusted:
            raise TrustRequiredError(
                "loading an MLflow model unpickles objects and may run code from its directory, "
                "and nobody vouched for this one"
            )
        pyfunc = require("mlflow.pyfunc", EXTRA)
        return MlflowPredictor(pyfunc.load_model(str(path / MODEL_DIR)))
