"""Mergeable histograms on a grid fixed by the reference, and the pairs the methods compare.

A numeric column is summarised on the reference's *grid*: the sorted distinct values
``t_0 < ... < t_{U-1}`` made of its quantiles at ``j / bins`` (``bins`` = 1000 by default)
and, when it has at most ``bins`` distinct values, every one of them. The grid cuts the
line into ``2U + 1`` cells: the open intervals between edges and the edges themselves::

    cell 0        cell 1   cell 2         cell 3          cell 2U
    (-inf, t_0)   {t_0}    (t_0, t_1)     {t_1}    ...    (t_{U-1}, +inf)

A histogram holds, per cell, a count and (for open cells) the sum of the values in it.
That is enough for every statistic the engine reports:

- counts per bin of any quantile binning whose bin count divides ``bins`` are exact sums
  of cells (PSI on deciles, Jensen-Shannon on 20 bins), since every such quantile is an
  edge;
- the KS statistic is exact when the reference has no value inside an open cell (small or
  discrete references), and otherwise off by less than the mass of one cell;
- the Wasserstein distance integrates |F - G| cell by cell; with the sums the integral of
  F - G over a cell is exact, so only cells where F - G changes sign lose anything.

Histograms on the same grid add up exactly, which is what makes windows mergeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from passerelle.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Kind = Literal["numeric", "categorical"]
Role = Literal["feature", "prediction"]

#: the name under which new levels beyond a window's cap are counted together
OTHER_LEVELS: Final = "(other new levels)"


# ---------------------------------------------------------------------------------------
# numeric


@dataclass(frozen=True, eq=False)
class NumericGrid:
    """The cells of a numeric column; see the module docstring."""

    edges: FloatArray
    #: positions in ``edges`` of the reference's quantiles at j / bins, j = 0..bins
    quantiles: IntArray
    #: subtracted from values before summing them, so that sums of values far from zero
    #: keep their precision (the reference's median)
    shift: float

    @classmethod
    def from_sorted(cls, values: FloatArray, bins: int) -> NumericGrid:
        """The grid of a reference column from its finite values, sorted."""
        if not values.size:
            raise InvalidInputError("a numeric grid needs at least one finite value")
        quantiles = np.quantile(values, np.arange(bins + 1) / bins)
        distinct = values[np.concatenate(([True], values[1:] != values[:-1]))]
        points = np.concatenate([quantiles, distinct]) if distinct.size <= bins else quantiles
        edges = np.unique(points)
        positions = np.searchsorted(edges, quantiles).astype(np.int64)
        return cls(edges, positions, float(quantiles[bins // 2]))

    @property
    def bins(self) -> int:
        return int(self.quantiles.size - 1)

    @property
    def cells(self) -> int:
        return int(2 * self.edges.size + 1)

    def coarse_ends(self, bins: int) -> IntArray:
        """Exclusive end (in cells) of each of ``bins`` reference-quantile bins."""
        if bins < 1 or self.bins % bins:
            raise InvalidInputError(
                f"{bins} quantile bins do not divide the reference's {self.bins} bins; "
                f"choose a divisor of {self.bins} or rebuild the reference statistics"
            )
        step = self.bins // bins
        inner = self.quantiles[step : self.bins : step]
        return np.concatenate([2 * inner + 2, [self.cells]]).astype(np.int64)

    def same_as(self, other: NumericGrid) -> bool:
        return (
            self.shift == other.shift
            and np.array_equal(self.edges, other.edges)
            and np.array_equal(self.quantiles, other.quantiles)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "quantiles": self.quantiles.tolist(), "shift": self.shift}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericGrid:
        return cls(
            np.asarray(data["edges"], dtype=np.float64),
            np.asarray(data["quantiles"], dtype=np.int64),
            float(data["shift"]),
        )


@dataclass(eq=False)
class NumericHist:
    """Counts and sums per cell of a grid, with the moments of the finite values.

    ``rows`` counts every row seen; ``missing`` the null ones; ``invalid`` those present
    but not usable as a finite number (infinities, text in a numeric column).
    """

    counts: IntArray
    sums: FloatArray
    rows: int = 0
    missing: int = 0
    invalid: int = 0
    #: sum and sum of squares of (value - grid.shift) over finite values
    total: float = 0.0
    squares: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    @classmethod
    def empty(cls, grid: NumericGrid) -> NumericHist:
        return cls(np.zeros(grid.cells, dtype=np.int64), np.zeros(grid.edges.size + 1))

    @property
    def n(self) -> int:
        """Finite values counted."""
        return int(self.counts.sum())

    def mean(self, grid: NumericGrid) -> float:
        n = self.n
        return grid.shift + self.total / n if n else float("nan")

    def std(self) -> float:
        """Population standard deviation (ddof=0)."""
        n = self.n
        if not n:
            return float("nan")
        centred = self.total / n
        return float(np.sqrt(max(self.squares / n - centred * centred, 0.0)))

    def add_sorted(self, grid: NumericGrid, values: FloatArray) -> None:
        """Count finite ``values``, sorted ascending (sorted in place by the caller).

        Sorting a batch and locating the few thousand edges in it costs far less than
        locating every value among the edges.
        """
        n = values.size
        if not n:
            return
        edges = grid.edges
        bounds = np.empty(2 * edges.size + 2, dtype=np.int64)
        bounds[0] = 0
        bounds[1:-1:2] = np.searchsorted(values, edges, side="left")
        bounds[2:-1:2] = np.searchsorted(values, edges, side="right")
        bounds[-1] = n
        self.counts += np.diff(bounds)
        centred = values - grid.shift
        running = np.empty(n + 1)
        running[0] = 0.0
        np.cumsum(centred, out=running[1:])
        self.sums += running[bounds[1::2]] - running[bounds[0::2]]
        self.total += float(running[-1])
        self.squares += float(np.dot(centred, centred))
        self.low = min(self.low, float(values[0]))
        self.high = max(self.high, float(values[-1]))

    def merged(self, other: NumericHist) -> NumericHist:
        return NumericHist(
            self.counts + other.counts,
            self.sums + other.sums,
            self.rows + other.rows,
            self.missing + other.missing,
            self.invalid + other.invalid,
            self.total + other.total,
            self.squares + other.squares,
            min(self.low, other.low),
            max(self.high, other.high),
        )

    def without(self, part: NumericHist) -> NumericHist:
        """This histogram minus ``part`` (which it contains); the ends are kept as they are."""
        return NumericHist(
            self.counts - part.counts,
            self.sums - part.sums,
            self.rows - part.rows,
            self.missing - part.missing,
            self.invalid - part.invalid,
            self.total - part.total,
            self.squares - part.squares,
            self.low,
            self.high,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "rows": self.rows,
            "missing": self.missing,
            "invalid": self.invalid,
            "total": self.total,
            "squares": self.squares,
            "low": self.low if np.isfinite(self.low) else None,
            "high": self.high if np.isfinite(self.high) else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], grid: NumericGrid) -> NumericHist:
        counts = np.asarray(data["counts"], dtype=np.int64)
        sums = np.asarray(data["sums"], dtype=np.float64)
        if counts.size != grid.cells or sums.size != grid.edges.size + 1:
            raise InvalidInputError("a numeric histogram does not match its reference grid")
        low, high = data.get("low"), data.get("high")
        return cls(
            counts,
            sums,
            int(data["rows"]),
            int(data["missing"]),
            int(data["invalid"]),
            float(data["total"]),
            float(data["squares"]),
            float("inf") if low is None else float(low),
            float("-inf") if high is None else float(high),
        )


# ---------------------------------------------------------------------------------------
# categorical


@dataclass(eq=False)
class CategoricalHist:
    """Counts per level (as text). ``other`` lumps new levels beyond a window's cap."""

    counts: dict[str, int] = field(default_factory=dict)
    other: int = 0
    rows: int = 0
    missing: int = 0

    @property
    def n(self) -> int:
        return sum(self.counts.values()) + self.other

    def add_counts(self, counts: Mapping[str, int], known: frozenset[str] | None, cap: int) -> None:
        """Add ``counts``; levels not ``known`` beyond ``cap`` distinct ones go to ``other``.

        ``known`` None means every level is kept (a reference).
        """
        tracked_new = 0 if known is None else sum(1 for level in self.counts if level not in known)
        for level, count in counts.items():
            if level in self.counts:
                self.counts[level] += count
            elif known is None or level in known:
                self.counts[level] = count
            elif tracked_new < cap:
                self.counts[level] = count
                tracked_new += 1
            else:
                self.other += count

    def merged(self, other: CategoricalHist, known: frozenset[str] | None, cap: int) -> CategoricalHist:
        out = CategoricalHist(
            dict(self.counts), self.other + other.other, self.rows + other.rows, self.missing + other.missing
        )
        out.add_counts(other.counts, known, cap)
        return out

    def without(self, part: CategoricalHist) -> CategoricalHist:
        counts = {level: count - part.counts.get(level, 0) for level, count in self.counts.items()}
        return CategoricalHist(
            counts, self.other - part.other, self.rows - part.rows, self.missing - part.missing
        )

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "other": self.other, "rows": self.rows, "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalHist:
        counts = data["counts"]
        if not isinstance(counts, Mapping):
            raise InvalidInputError("a categorical histogram needs a mapping of counts")
        return cls(
            {str(k): int(v) for k, v in counts.items()},
            int(data.get("other", 0)),
            int(data["rows"]),
            int(data["missing"]),
        )


Hist = NumericHist | CategoricalHist


# ---------------------------------------------------------------------------------------
# pairs: what a drift method sees


class NumericPair:
    """A reference histogram and a window histogram of one numeric column, on one grid."""

    kind: Final = "numeric"

    def __init__(self, grid: NumericGrid, reference: NumericHist, window: NumericHist) -> None:
        self.grid = grid
        self.reference = reference
        self.window = window
        self.reference_n = reference.n
        self.window_n = window.n

    def counts(self, bins: int | None = None) -> tuple[IntArray, IntArray]:
        """Counts per reference-quantile bin (``bins`` of them; 10 when None)."""
        ends = self.grid.coarse_ends(bins or 10)

        def coarse(counts: IntArray) -> IntArray:
            running = np.concatenate([[0], np.cumsum(counts)])
            out: IntArray = np.diff(np.concatenate([[0], running[ends]])).astype(np.int64)
            return out

        return coarse(self.reference.counts), coarse(self.window.counts)

    def ks_units(self) -> int:
        """The KS statistic times n_ref * n_win, over every cell boundary."""
        ref = np.cumsum(self.reference.counts)
        win = np.cumsum(self.window.counts)
        return int(np.abs(ref * self.window_n - win * self.reference_n).max())

    def ks_statistic(self) -> float:
        return self.ks_units() / (self.reference_n * self.window_n)

    def wasserstein(self) -> float:
        """W1 = integral of |F - G|, summed cell by cell (see the module docstring)."""
        m, n = self.reference_n, self.window_n
        edges = self.grid.edges - self.grid.shift
        ref, win = self.reference, self.window
        # Share of each sample at or below every edge: F(t_k), G(t_k).
        at_ref = np.cumsum(ref.counts)[1::2] / m
        at_win = np.cumsum(win.counts)[1::2] / n
        ref_open, win_open = ref.counts[0::2], win.counts[0::2]
        # Integral of F - G over each open cell: (b - a)(F(a) - G(a)) + sum(b - v)/m - sum(b - v)/n,
        # with b the right edge; the last cell uses its left edge, which gives the same
        # integral because both distributions end at 1 there.
        right = np.concatenate([edges, [edges[-1]]])
        width = np.concatenate([[0.0], np.diff(edges), [0.0]])
        start_gap = np.concatenate([[0.0], at_ref - at_win])
        inside = (ref_open * right - ref.sums) / m - (win_open * right - win.sums) / n
        return float(np.abs(width * start_gap + inside).sum())

    def reference_std(self) -> float:
        return self.reference.std()


class CategoricalPair:
    """Reference and window counts of one categorical column, aligned on the union of levels."""

    kind: Final = "categorical"

    def __init__(self, reference: CategoricalHist, window: CategoricalHist) -> None:
        self.reference = reference
        self.window = window
        levels = list(reference.counts)
        levels += [level for level in window.counts if level not in reference.counts]
        ref = [reference.counts.get(level, 0) for level in levels]
        win = [window.counts.get(level, 0) for level in levels]
        if reference.other or window.other:
            levels.append(OTHER_LEVELS)
            ref.append(reference.other)
            win.append(window.other)
        self.levels = levels
        self._ref = np.asarray(ref, dtype=np.int64)
        self._win = np.asarray(win, dtype=np.int64)
        self.reference_n = int(self._ref.sum())
        self.window_n = int(self._win.sum())

    def counts(self, bins: int | None = None) -> tuple[IntArray, IntArray]:
        """Counts per level, aligned (``bins`` does not apply)."""
        return self._ref, self._win

    def new_levels(self) -> IntArray:
        """Mask of levels the reference never saw."""
        out: IntArray = self._ref == 0
        return out


Pair = NumericPair | CategoricalPair
