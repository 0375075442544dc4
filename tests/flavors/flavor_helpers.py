"""Code the flavor tests import by name: synthetic data, a custom transformer, python-flavor models.

It lives in a real module, not in a test file, because skops and the python flavor record
objects by their import path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import make_classification, make_regression
from sklearn.utils.validation import validate_data

FEATURES = ["f0", "f1", "f2", "f3", "f4"]


def classification_frame(n_classes: int = 2, n_rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, Any]:
    features, labels = make_classification(
        n_samples=n_rows,
        n_features=len(FEATURES),
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        random_state=seed,
    )
    return pd.DataFrame(features, columns=FEATURES), labels


def regression_frame(n_rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, Any]:
    features, target = make_regression(
        n_samples=n_rows, n_features=len(FEATURES), noise=0.1, random_state=seed
    )
    return pd.DataFrame(features, columns=FEATURES), target


class ScaleBy(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A transformer from user code: skops cannot vouch for it, so loading needs trust."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def fit(self, features: Any, labels: Any = None) -> ScaleBy:
        validate_data(self, features, reset=True)
        return self

    def transform(self, features: Any) -> Any:
        return validate_data(self, features, reset=False) * self.factor


def row_sum(table: pd.DataFrame) -> pd.Series:
    return table.sum(axis=1)


def row_sum_frame(table: pd.DataFrame) -> pd.DataFrame:
    return table.sum(axis=1).to_frame("total")


class Threshold:
    """A class-based model: instantiated without arguments, with predict_proba and classes."""

    classes = ["low", "high"]

    def predict(self, table: pd.DataFrame) -> Any:
        return np.where(table.iloc[:, 0].to_numpy() > 0, "high", "low")

    def predict_proba(self, table: pd.DataFrame) -> Any:
        high = 1.0 / (1.0 + np.exp(-table.iloc[:, 0].to_numpy()))
        return np.column_stack([1.0 - high, high])


class NeedsArguments:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def predict(self, table: pd.DataFrame) -> Any:
        return table.iloc[:, 0].to_numpy() * self.scale


class Offset:
    """A callable instance: it has no import path of its own, so it can only be pickled."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, table: pd.DataFrame) -> Any:
        return table.sum(axis=1).to_numpy() + self.offset
