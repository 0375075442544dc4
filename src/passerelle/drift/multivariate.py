"""The multivariate check: PCA reconstruction error, from mergeable second moments.

Numeric features are standardised with the reference's mean and standard deviation
(missing values become 0, the mean). Principal components are fitted on the reference;
a row's reconstruction error is the squared norm of what the kept components do not
explain, ``|Q z|^2`` with ``Q`` the projector on the dropped components. Its mean over a
set of rows is ``tr(Q S) / n`` where ``S`` is the sum of ``z z^T``, so a window only has to
accumulate ``S`` (d x d numbers, mergeable by addition) to be compared in time linear in
its rows. Correlations that break while every marginal stays put move variance into the
dropped components: the error rises although no single column drifted.

The reference keeps ``S`` per random chunk of its rows; the errors of those chunks give
the band a window's error is expected in, narrowed to the window's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from passerelle.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]

_controller: ThreadpoolController | None = None


def one_blas_thread() -> AbstractContextManager[Any]:
    """BLAS limited to one thread for the block.

    The products here are small (a d x d Gram matrix, dot products of one column); they
    gain nothing from threads, and a BLAS pool spinning against other busy processes has
    been measured turning 15 ms into seconds.
    """
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    limit: AbstractContextManager[Any] = _controller.limit(limits=1, user_api="blas")
    return limit


@dataclass(frozen=True, eq=False)
class Standardisation:
    """The columns of the check and how they are standardised."""

    columns: tuple[str, ...]
    mean: FloatArray
    scale: FloatArray

    def same_as(self, other: Standardisation) -> bool:
        return (
            self.columns == other.columns
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.scale, other.scale)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Standardisation:
        return cls(
            tuple(str(c) for c in data["columns"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
        )


@dataclass(eq=False)
class Moments:
    """Sum of z z^T over ``rows`` standardised rows."""

    rows: int
    gram: FloatArray

    @classmethod
    def empty(cls, dimension: int) -> Moments:
        return cls(0, np.zeros((dimension, dimension)))

    def add(self, z: FloatArray) -> None:
        self.rows += int(z.shape[0])
        self.gram += z.T @ z

    def merged(self, other: Moments) -> Moments:
        return Moments(self.rows + other.rows, self.gram + other.gram)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "gram": self.gram.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], dimension: int) -> Moments:
        gram = np.asarray(data["gram"], dtype=np.float64)
        if gram.shape != (dimension, dimension):
            raise InvalidInputError("multivariate moments do not match the reference's columns")
        return cls(int(data["rows"]), gram)


@dataclass(frozen=True)
class Projection:
    """The principal components kept, and the errors the reference expects under them.

    ``chunk_errors`` are out of sample: each chunk is scored with components fitted on
    the other chunks. Scored in sample, the dropped components would be the ones where
    the reference happens to vary least, and every window, drawn apart from the
    reference, would look worse than it: with 100 independent columns that bias alone
    is +13 %. ``reference_error`` is their mean.
    """

    components: int
    explained: float
    residual: FloatArray
    reference_error: float
    chunk_errors: FloatArray
    chunk_rows: float

    def error(self, moments: Moments) -> float:
        return float(np.trace(self.residual @ moments.gram)) / moments.rows if moments.rows else float("nan")


def _fit(total: Moments, explained_variance: float) -> tuple[FloatArray, int, float]:
    """The residual projector of the components explaining ``explained_variance`` of ``total``."""
    dimension = total.gram.shape[0]
    values, vectors = np.linalg.eigh(total.gram / max(total.rows, 1))
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    share = np.cumsum(values) / values.sum() if values.sum() > 0 else np.ones(dimension)
    # Keep at least one component and drop at least one: with none dropped the error is 0.
    kept = int(min(max(np.searchsorted(share, explained_variance) + 1, 1), dimension - 1))
    basis = vectors[:, :kept]
    return np.eye(dimension) - basis @ basis.T, kept, float(share[kept - 1])


def project(chunks: list[Moments], explained_variance: float) -> Projection:
    """Fit the components on the sum of ``chunks``; score each chunk out of sample."""
    used = [c for c in chunks if c.rows]
    total = used[0]
    for chunk in used[1:]:
        total = total.merged(chunk)
    residual, kept, explained = _fit(total, explained_variance)
    if len(used) > 1:
        errors = []
        for chunk in used:
            rest = Moments(total.rows - chunk.rows, total.gram - chunk.gram)
            others, _, _ = _fit(rest, explained_variance)
            errors.append(float(np.trace(others @ chunk.gram)) / chunk.rows)
        chunk_errors = np.asarray(errors)
        expected = float(np.average(chunk_errors, weights=[c.rows for c in used]))
    else:
        chunk_errors = np.zeros(0)
        expected = float(np.trace(residual @ total.gram)) / total.rows
    return Projection(
        components=kept,
        explained=explained,
        residual=residual,
        reference_error=expected,
        chunk_errors=chunk_errors,
        chunk_rows=float(np.mean([c.rows for c in used])),
    )


def standardise(columns: list[FloatArray], standard: Standardisation) -> FloatArray:
    """The rows x d matrix of standardised values; missing and infinite values become 0."""
    rows = columns[0].size if columns else 0
    out = np.empty((rows, len(columns)), order="F")
    for j, values in enumerate(columns):
        z = (values - standard.mean[j]) / standard.scale[j]
        z[~np.isfinite(z)] = 0.0
        out[:, j] = z
    return out
