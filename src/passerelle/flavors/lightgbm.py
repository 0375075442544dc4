"""LightGBM models, stored in LightGBM's own text format (no pickle, so no trust needed).

Everything is reloaded as a ``Booster``, which returns probabilities for classification
objectives; the class labels the scikit-learn wrapper mapped them to are kept in the options.
"""

from __future__ import annotations

import json
import shutil
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
    plain_list,
)

MODEL_FILE = "model.txt"
EXTRA = "lightgbm"
BOOSTER = "Booster"
WRAPPERS = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker", "LGBMModel")
PATH_SUFFIXES = frozenset({".txt", ".lgb", ".model"})
BINARY_OBJECTIVES = frozenset({"binary"})
MULTICLASS_OBJECTIVES = frozenset({"multiclass", "multiclassova"})
LIBRARIES = ["lightgbm", "numpy"]


def read_header(file: Path) -> dict[str, str]:
    """The ``key=value`` lines a LightGBM model file starts with, up to its first tree."""
    header: dict[str, str] = {}
    with file.open(encoding="utf-8", errors="replace") as stream:
        for raw in stream:
            line = raw.strip()
            if line.startswith("Tree="):
                break
            key, sep, value = line.partition("=")
            if sep:
                header[key] = value
    return header


def _objective(header: dict[str, str]) -> str:
    # e.g. "multiclass num_class:3": the parameters after the name do not matter here.
    words = header.get("objective", "").split()
    return words[0] if words else ""


def _default_classes(header: dict[str, str]) -> list[Any] | None:
    objective = _objective(header)
    if objective in BINARY_OBJECTIVES:
        return [0, 1]
    if objective in MULTICLASS_OBJECTIVES:
        return list(range(int(header.get("num_class", "1"))))
    return None


def _wrapper_name(model: Any) -> str:
    for cls in type(model).__mro__:
        if cls.__module__.startswith("lightgbm") and cls.__name__ in WRAPPERS:
            return cls.__name__
    return "LGBMModel"


def _artifact(file: Path, estimator: str, classes: Any) -> SavedArtifact:
    header = read_header(file)
    objective = _objective(header)
    options: dict[str, Any] = {"estimator": estimator, "objective": objective}
    default = _default_classes(header)
    if default is not None:
        labels = default if classes is None else plain_list(classes)
        if len(labels) != len(default):
            raise InvalidInputError(
                f"the model has {len(default)} classes but its estimator lists {len(labels)}: {labels}"
            )
        try:
            json.dumps(labels)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"class labels must be strings, numbers or booleans: {exc}") from exc
        options["classes"] = labels
    return SavedArtifact(options=options, libraries=list(LIBRARIES))


class LightGBMPredictor(Predictor):
    def __init__(self, booster: Any, objective: str, classes: list[Any] | None) -> None:
        self.booster = booster
        self._feature_names = booster.feature_name()
        self._binary = objective in BINARY_OBJECTIVES
        self._classifier = classes is not None and (self._binary or objective in MULTICLASS_OBJECTIVES)
        self.classes = classes if self._classifier else None

    def _raw(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        # A frame, not an array: LightGBM maps pandas categories with what the file recorded.
        return np.asarray(self.booster.predict(columns_in_order(table, self._feature_names)))

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if not self._classifier:
            return self._raw(table)
        return np.asarray(np.asarray(self.classes)[self.predict_proba(table).argmax(axis=1)])

    @property
    def has_proba(self) -> bool:
        return self._classifier

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if not self._classifier:
            return super().predict_proba(table)
        raw = self._raw(table)
        if self._binary and raw.ndim == 1:
            return np.column_stack([1.0 - raw, raw])
        return raw


class LightGBMFlavor(Flavor):
    name: ClassVar[str] = "lightgbm"
    extra: ClassVar[str | None] = EXTRA

    def detect_object(self, model: Any) -> bool:
        if not comes_from(model, "lightgbm"):
            return False
        lgb = require("lightgbm", EXTRA)
        return isinstance(model, lgb.LGBMModel | lgb.Booster)

    def detect_path(self, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() not in PATH_SUFFIXES:
            return False
        # The first line of a model file is exactly "tree"; a prefix match would take any
        # text file that opens with "trees ...".
        with path.open("rb") as stream:
            return stream.readline(64).rstrip(b"\r\n") == b"tree"

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        lgb = require("lightgbm", EXTRA)
        classes = None
        if isinstance(model, lgb.Booster):
            booster, estimator = model, BOOSTER
        elif isinstance(model, lgb.LGBMModel):
            estimator = _wrapper_name(model)
            try:
                booster = model.booster_
            except Exception as exc:  # LGBMNotFittedError
                raise InvalidInputError(f"{type(model).__name__} is not fitted: {exc}") from exc
            classes = getattr(model, "classes_", None)
        else:
            raise InvalidInputError(f"expected a LightGBM model, got {type(model).__name__}")
        file = dest / MODEL_FILE
        booster.save_model(str(file))
        return _artifact(file, estimator, classes)

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        lgb = require("lightgbm", EXTRA)
        file = dest / MODEL_FILE
        shutil.copyfile(path, file)
        try:
            lgb.Booster(model_file=str(file))
        except Exception as exc:  # LightGBMError for a damaged or foreign file
            file.unlink(missing_ok=True)
            raise InvalidInputError(f"{path.name} is not a readable LightGBM model: {exc}") from exc
        return _artifact(file, BOOSTER, None)

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        lgb = require("lightgbm", EXTRA)
        file = path / MODEL_FILE
        booster = lgb.Booster(model_file=str(file))
        header = read_header(file)
        objective = options.get("objective") or _objective(header)
        classes = options.get("classes")
        if classes is None:
            classes = _default_classes(header)
        return LightGBMPredictor(booster, objective, classes)
