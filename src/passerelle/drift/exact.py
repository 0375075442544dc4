"""Exact drift statistics on raw samples: the yardstick the binned path is tested against.

These functions work on whole samples held in memory and cost O(n log n) or more. The
drift engine itself never calls them on a window: it compares a stored reference
histogram with a streamed window sketch (:mod:`passerelle.drift.sketch`). They are public
so that anyone can check a figure of a report by hand, and so that the tests can hold
the engine to SciPy on the same data.

Conventions shared with the engine:

- missing and non-finite values are dropped before any numeric statistic;
- quantile bins use NumPy's default (linear) quantiles of the reference; interior edges
  only, so the first and last bins are open-ended and catch window values beyond the
  reference's range; a value equal to an edge falls in the bin below it;
- Jensen-Shannon is the distance (square root of the divergence), base 2 by default, so
  it lies in [0, 1];
- PSI gives empty bins a share of ``epsilon`` (default 1e-4) so that the logarithm stays
  finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from passerelle.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: the sample size up to which ``exact_ks(method="auto")`` counts lattice paths, as SciPy does
KS_EXACT_MAX_N: Final = 10_000
PSI_EPSILON: Final = 1e-4


@dataclass(frozen=True)
class Significance:
    """A test statistic and its p-value; ``dof`` for chi-square tests."""

    statistic: float
    p_value: float
    dof: int | None = None


def finite_values(values: Any) -> FloatArray:
    """``values`` as a float64 array without missing or infinite entries."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _two_samples(reference: Any, window: Any) -> tuple[FloatArray, FloatArray]:
    ref, win = finite_values(reference), finite_values(window)
    if not ref.size or not win.size:
        raise InvalidInputError("both samples need at least one finite value")
    return ref, win


# ---------------------------------------------------------------------------------------
# Kolmogorov-Smirnov


def ks_distance_units(ref_sorted: FloatArray, win_sorted: FloatArray) -> int:
    """max |n_win * count_ref(x) - n_ref * count_win(x)| over all x: the KS statistic
    times ``n_ref * n_win``, kept as an integer so that the exact p-value sees no rounding."""
    points = np.concatenate([ref_sorted, win_sorted])
    below_ref = np.searchsorted(ref_sorted, points, side="right").astype(np.int64)
    below_win = np.searchsorted(win_sorted, points, side="right").astype(np.int64)
    gaps = below_ref * win_sorted.size - below_win * ref_sorted.size
    return int(np.abs(gaps).max())


def ks_exact_p_value(n1: int, n2: int, units: int) -> float:
    """P(D >= units / (n1 n2)) for two samples of sizes ``n1`` and ``n2`` without ties.

    A random interleaving of the two samples is a lattice path from (0, 0) to (n1, n2);
    the statistic is reached when the path touches |i n2 - j n1| >= units. For a cell,
    R = the share of paths reaching it that have already touched the boundary; a path
    reaches (i, j) from (i-1, j) with probability i / (i + j), so R is a weighted mean of
    its two predecessors, and 1 outside the band. Working with that share directly (not
    its complement) keeps tiny p-values accurate. Cells are swept by anti-diagonals, the
    shorter sample along the vector.
    """
    if units <= 0:
        return 1.0
    if n1 > n2:
        n1, n2 = n2, n1
    total = n1 + n2
    previous = np.zeros(n1 + 1)
    index = np.arange(n1 + 1, dtype=np.int64)
    for step in range(1, total + 1):
        low, high = max(0, step - n2), min(n1, step)
        # inside the band: |i (n1 + n2) - step n1| < units
        first = max(low, (step * n1 - units) // total + 1)
        last = min(high, (step * n1 + units - 1) // total)
        current = np.ones(n1 + 1)
        if first <= last:
            i = index[first : last + 1]
            from_left = previous[first - 1 : last] if first > 0 else np.concatenate(([0.0], previous[:last]))
            current[first : last + 1] = (i * from_left + (step - i) * previous[first : last + 1]) / step
        elif step == total:
            return 1.0
        previous = current
    return float(min(max(previous[n1], 0.0), 1.0))


def ks_asymptotic_p_value(n1: int, n2: int, statistic: float) -> float:
    """Smirnov's large-sample p-value, as SciPy's ``ks_2samp(method="asymp")`` computes it."""
    big, small = max(n1, n2), min(n1, n2)
    effective = big * small / (big + small)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(effective)), 0.0, 1.0))


def ks_fast_p_value(n1: int, n2: int, statistic: float) -> float:
    """Kolmogorov's limiting distribution with Stephens' correction for the effective size.

    SciPy's finite-n distribution costs O(n) per call (seconds at a million rows); this
    costs microseconds and stays within 1% of it wherever p > 1e-3, where decisions are
    made (a few percent in the far tail, where any decision is the same).
    """
    root = math.sqrt(n1 * n2 / (n1 + n2))
    return float(np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic), 0.0, 1.0))


def ks_p_value(n1: int, n2: int, units: int, method: Literal["auto", "exact", "asymp"] = "auto") -> float:
    """The two-sided p-value of a KS statistic of ``units / (n1 n2)``."""
    if method == "auto":
        method = "exact" if max(n1, n2) <= KS_EXACT_MAX_N else "asymp"
    if method == "exact":
        return ks_exact_p_value(n1, n2, units)
    if method == "asymp":
        return ks_asymptotic_p_value(n1, n2, units / (n1 * n2))
    raise InvalidInputError(f"unknown KS method {method!r}; expected auto, exact or asymp")


def exact_ks(
    reference: Any, window: Any, *, method: Literal["auto", "exact", "asymp"] = "auto"
) -> Significance:
    """Two-sample, two-sided Kolmogorov-Smirnov test.

    ``method="auto"`` counts lattice paths when both samples have at most 10,000 values
    and uses Smirnov's asymptotic distribution beyond, like :func:`scipy.stats.ks_2samp`.
    With ties the exact p-value is the one for continuous data (conservative).
    """
    ref, win = _two_samples(reference, window)
    ref.sort()
    win.sort()
    units = ks_distance_units(ref, win)
    return Significance(units / (ref.size * win.size), ks_p_value(ref.size, win.size, units, method))


# ---------------------------------------------------------------------------------------
# chi-square


def exact_chi2(reference_counts: Any, window_counts: Any) -> Significance:
    """Pearson's chi-square test of homogeneity on a 2 x k table of counts.

    The two arguments are counts per level, aligned. Levels empty on both sides are
    dropped; no continuity correction (``scipy.stats.chi2_contingency(correction=False)``).
    """
    table = np.vstack(
        [np.asarray(reference_counts, dtype=np.float64), np.asarray(window_counts, dtype=np.float64)]
    )
    if table.ndim != 2 or table.shape[0] != 2:
        raise InvalidInputError("counts must be two aligned vectors")
    if (table < 0).any() or not np.isfinite(table).all():
        raise InvalidInputError("counts must be finite and non-negative")
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows == 0).any():
        return Significance(0.0, 1.0, 0)
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    return Significance(statistic, float(special.chdtrc(dof, statistic)), dof)


def cramers_v(statistic: float, total: float) -> float:
    """Cramér's V of a 2 x k chi-square statistic over ``total`` counts: an effect size in [0, 1]."""
    return math.sqrt(statistic / total) if total > 0 else 0.0


# ---------------------------------------------------------------------------------------
# Wasserstein


def exact_wasserstein(reference: Any, window: Any, *, normed: bool = False) -> float:
    """The first Wasserstein (earth mover's) distance between two samples.

    ``normed`` divides by the reference's standard deviation (population, ddof=0), which
    makes the figure a shift in reference standard deviations. A constant reference keeps
    the distance in the column's units.
    """
    ref, win = _two_samples(reference, window)
    ref.sort()
    win.sort()
    points = np.concatenate([ref, win])
    points.sort()
    widths = np.diff(points)
    cdf_ref = np.searchsorted(ref, points[:-1], side="right") / ref.size
    cdf_win = np.searchsorted(win, points[:-1], side="right") / win.size
    distance = float(np.sum(np.abs(cdf_ref - cdf_win) * widths))
    if normed:
        scale = float(np.std(ref))
        if scale > 0:
            distance /= scale
    return distance


# ---------------------------------------------------------------------------------------
# Jensen-Shannon and PSI


def exact_js(reference_counts: Any, window_counts: Any, *, base: float = 2.0) -> float:
    """Jensen-Shannon distance between two distributions given as aligned counts or shares."""
    p = np.asarray(reference_counts, dtype=np.float64)
    q = np.asarray(window_counts, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise InvalidInputError("counts must be two aligned vectors")
    if p.sum() <= 0 or q.sum() <= 0:
        raise InvalidInputError("both distributions need some mass")
    p = p / p.sum()
    q = q / q.sum()
    middle = (p + q) / 2
    divergence = (special.rel_entr(p, middle).sum() + special.rel_entr(q, middle).sum()) / 2
    return math.sqrt(max(float(divergence), 0.0) / math.log(base))


def psi_from_counts(reference_counts: Any, window_counts: Any, *, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two aligned count vectors: sum of (q - p) ln(q / p).

    Shares below ``epsilon`` are raised to it; levels empty on both sides add nothing.
    """
    p = np.asarray(reference_counts, dtype=np.float64)
    q = np.asarray(window_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        raise InvalidInputError("both distributions need some mass")
    keep = (p > 0) | (q > 0)
    p = np.maximum(p[keep] / p.sum(), epsilon)
    q = np.maximum(q[keep] / q.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def quantile_edges(reference: Any, bins: int) -> FloatArray:
    """The interior edges of ``bins`` equal-mass bins of the reference (may repeat with ties)."""
    if bins < 1:
        raise InvalidInputError(f"bins must be at least 1, got {bins}")
    ref = finite_values(reference)
    if not ref.size:
        raise InvalidInputError("the reference has no finite value")
    probabilities = np.arange(bins + 1) / bins
    edges: FloatArray = np.quantile(ref, probabilities)[1:-1]
    return edges


def binned_counts(values: Any, edges: FloatArray) -> IntArray:
    """Counts of ``values`` per bin of the interior ``edges`` (value == edge goes below)."""
    bins = np.searchsorted(edges, finite_values(values), side="left")
    counts: IntArray = np.bincount(bins, minlength=edges.size + 1).astype(np.int64)
    return counts


def psi(reference: Any, window: Any, *, bins: int = 10, epsilon: float = PSI_EPSILON) -> float:
    """PSI of two numeric samples on ``bins`` reference-quantile bins."""
    edges = quantile_edges(reference, bins)
    return psi_from_counts(binned_counts(reference, edges), binned_counts(window, edges), epsilon=epsilon)


def numeric_js(reference: Any, window: Any, *, bins: int = 20, base: float = 2.0) -> float:
    """Jensen-Shannon distance of two numeric samples on ``bins`` reference-quantile bins."""
    edges = quantile_edges(reference, bins)
    return exact_js(binned_counts(reference, edges), binned_counts(window, edges), base=base)


def categorical_counts(reference: Any, window: Any) -> tuple[list[str], IntArray, IntArray]:
    """Levels (as text, sorted) and aligned counts of two categorical samples; missing dropped."""
    ref = [str(v) for v in np.asarray(reference, dtype=object).ravel() if not _is_missing(v)]
    win = [str(v) for v in np.asarray(window, dtype=object).ravel() if not _is_missing(v)]
    levels = sorted(set(ref) | set(win))
    position = {level: i for i, level in enumerate(levels)}
    ref_counts = np.bincount([position[v] for v in ref], minlength=len(levels)).astype(np.int64)
    win_counts = np.bincount([position[v] for v in win], minlength=len(levels)).astype(np.int64)
    return levels, ref_counts, win_counts


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False
