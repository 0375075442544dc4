"""XGBoost models, stored in XGBoost's own UBJSON format (no pickle, so no trust needed).

The scikit-learn wrappers are reloaded through the same wrapper class so that ``predict``
returns labels and ``predict_proba`` probabilities; a bare ``Booster`` returns whatever its
objective computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from passerelle._deps import require
from passerelle.errors import InvalidInputError
from passerelle.flavors.base import (
    Flavor,
    Predictor,
    SavedArtifact,
    columns_in_order,
    comes_from,
    installed_distribution,
    plain_list,
)

MODEL_FILE = "model.ubj"
EXTRA = "xgboost"
BOOSTER = "Booster"
#: wrapper classes a model can be reloaded through, most specific first
WRAPPERS = ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor", "XGBModel")
# What the wrappers record in the booster's "scikit_learn" attribute when they save.
_BY_ESTIMATOR_TYPE = {"classifier": "XGBClassifier", "regressor": "XGBRegressor", "ranker": "XGBRanker"}


def _libraries() -> list[str]:
    return [installed_distribution("xgboost", "xgboost-cpu"), "numpy"]


def _wrapper_name(model: Any) -> str:
    # A user subclass cannot be rebuilt from the file alone; its nearest XGBoost base can.
    for cls in type(model).__mro__:
        if cls.__module__.startswith("xgboost") and cls.__name__ in WRAPPERS:
            return cls.__name__
    return "XGBModel"


class XGBoostWrapperPredictor(Predictor):
    def __init__(self, model: Any) -> None:
        self.model = model
        self._feature_names = model.get_booster().feature_names
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else plain_list(classes)

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return np.asarray(self.model.predict(columns_in_order(table, self._feature_names)))

    @property
    def has_proba(self) -> bool:
        return hasattr(self.model, "predict_proba")

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if not self.has_proba:
            return super().predict_proba(table)
        return np.asarray(self.model.predict_proba(columns_in_order(table, self._feature_names)))


class XGBoostBoosterPredictor(Predictor):
    def __init__(self, booster: Any, dmatrix: Any) -> None:
        self.booster = booster
        self._dmatrix = dmatrix

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        data = self._dmatrix(columns_in_order(table, self.booster.feature_names))
        return np.asarray(self.booster.predict(data))


class XGBoostFlavor(Flavor):
    name: ClassVar[str] = "xgboost"
    extra: ClassVar[str | None] = EXTRA

    def detect_object(self, model: Any) -> bool:
        if not comes_from(model, "xgboost"):
            return False
        xgb = require("xgboost", EXTRA)
        return isinstance(model, xgb.XGBModel | xgb.Booster)

    def detect_path(self, path: Path) -> bool:
        if not path.is_file():
            return False
        suffix = path.suffix.lower()
        if suffix == ".ubj":
            with path.open("rb") as stream:
                head = stream.read(4096)
            # A UBJSON object opens with "{"; XGBoost writes its "learner" key first.
            return head.startswith(b"{") and b"learner" in head
        if suffix == ".json":
            try:
                with path.open("rb") as stream:
                    # XGBoost writes "learner" first: the peek spares parsing a large JSON
                    # data file just to learn it is not a model.
                    if b'"learner"' not in stream.read(4096):
                        return False
                    stream.seek(0)
                    content = json.load(stream)
            except (OSError, ValueError):
                return False
            return isinstance(content, dict) and "learner" in content
        return False

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        xgb = require("xgboost", EXTRA)
        if isinstance(model, xgb.Booster):
            estimator = BOOSTER
        elif isinstance(model, xgb.XGBModel):
            estimator = _wrapper_name(model)
            try:
                model.get_booster()
            except Exception as exc:  # scikit-learn's NotFittedError, raised by the wrapper
                raise InvalidInputError(f"{type(model).__name__} is not fitted: {exc}") from exc
        else:
            raise InvalidInputError(f"expected an XGBoost model, got {type(model).__name__}")
        model.save_model(str(dest / MODEL_FILE))
        return SavedArtifact(options={"estimator": estimator}, libraries=_libraries())

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        xgb = require("xgboost", EXTRA)
        try:
            booster = xgb.Booster(model_file=str(path))
        except Exception as exc:  # XGBoostError for anything that is not a model
            raise InvalidInputError(f"{path.name} is not a readable XGBoost model: {exc}") from exc
        estimator = BOOSTER
        meta = booster.attr("scikit_learn")
        if meta:
            try:
                kind = json.loads(meta).get("_estimator_type")
            except (ValueError, AttributeError):
                kind = None
            estimator = _BY_ESTIMATOR_TYPE.get(kind, BOOSTER) if isinstance(kind, str) else BOOSTER
        booster.save_model(str(dest / MODEL_FILE))
        return SavedArtifact(options={"estimator": estimator}, libraries=_libraries())

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        xgb = require("xgboost", EXTRA)
        file = str(path / MODEL_FILE)
        estimator = options.get("estimator", BOOSTER)
        if estimator == BOOSTER:
            return XGBoostBoosterPredictor(xgb.Booster(model_file=file), xgb.DMatrix)
        if estimator not in WRAPPERS:
            raise InvalidInputError(f"unknown XGBoost estimator class {estimator!r}")
        model = getattr(xgb, estimator)()
        model.load_model(file)
        return XGBoostWrapperPredictor(model)
