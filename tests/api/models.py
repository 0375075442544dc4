"""Code the API tests import by name: skops records custom types by their import path."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Shift(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A transformer from user code: skops cannot vouch for it, so registering needs trust."""

    def __init__(self, by: float = 1.0) -> None:
        self.by = by

    def fit(self, table: Any, labels: Any = None) -> Shift:
        return self

    def transform(self, table: Any) -> np.ndarray[Any, Any]:
        return np.asarray(table, dtype=float) + self.by


def double(table: Any) -> Any:
    """A model given to the python flavor as a code reference."""
    return np.asarray(table, dtype=float).sum(axis=1) * 2


def usage_times_two(table: Any) -> Any:
    """A python-flavor model that reads one named column of a table."""
    return np.asarray(table["usage"], dtype=float) * 2
