"""The exact path against SciPy on the same data (1e-9), and PSI against a hand computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from passerelle.drift import exact_chi2, exact_js, exact_ks, exact_wasserstein, numeric_js, psi
from passerelle.drift.exact import ks_fast_p_value, psi_from_counts
from passerelle.errors import InvalidInputError

TOL = 1e-9


def close_in_log(ours: float, theirs: float) -> bool:
    assert ours > 0
    assert theirs > 0
    return abs(math.log(ours) - math.log(theirs)) <= TOL


@pytest.mark.parametrize(
    ("n1", "n2", "shift", "method"),
    [
        (40, 40, 0.5, "exact"),
        (57, 200, 0.4, "exact"),
        (300, 1200, 0.25, "exact"),
        (2000, 3001, 0.1, "exact"),
        (20_000, 15_000, 0.03, "asymp"),
        (50_000, 30_000, 0.05, "asymp"),
    ],
)
def test_ks_matches_scipy_in_log_space(n1: int, n2: int, shift: float, method: str) -> None:
    rng = np.random.default_rng(n1 + n2)
    a, b = rng.standard_normal(n1), rng.standard_normal(n2) + shift
    ours = exact_ks(a, b)
    theirs = stats.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-15)
    assert 1e-300 < theirs.pvalue < 0.5
    assert close_in_log(ours.p_value, theirs.pvalue)
    forced = exact_ks(a, b, method=method)  # type: ignore[arg-type]
    assert close_in_log(forced.p_value, stats.ks_2samp(a, b, method=method).pvalue)


def test_ks_tiny_p_values_stay_accurate() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(400), rng.standard_normal(500) + 1.5
    theirs = stats.ks_2samp(a, b, method="exact").pvalue
    assert theirs < 1e-60
    assert close_in_log(exact_ks(a, b, method="exact").p_value, theirs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=60),
    st.lists(st.integers(-5, 5), min_size=1, max_size=60),
)
def test_ks_exact_matches_scipy_with_ties(a: list[int], b: list[int]) -> None:
    ours = exact_ks(a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = stats.ks_2samp(a, b, method="exact")
    if caught:
        # SciPy gives up on its exact computation for some equal sizes and small statistics
        # (then answers with its asymptotic p-value, 1.0 there): nothing exact to compare.
        assert ours.p_value > 0.99
        return
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    if theirs.pvalue > 1e-300:
        assert close_in_log(ours.p_value, theirs.pvalue)


def test_ks_fast_p_value_is_within_one_percent_where_decisions_are_made() -> None:
    for effective in (1_000, 9_091, 90_909):
        for scaled in (0.5, 1.0, 1.5, 2.0, 3.0, 5.0):
            statistic = scaled / math.sqrt(effective)
            # two equal samples of 2 * effective rows have that effective size
            ours = ks_fast_p_value(2 * effective, 2 * effective, statistic)
            theirs = stats.kstwo.sf(statistic, effective)
            assert ours == pytest.approx(theirs, rel=0.01 if theirs > 1e-3 else 0.1)


@pytest.mark.parametrize("levels", [2, 3, 10, 40])
def test_chi2_matches_scipy(levels: int) -> None:
    rng = np.random.default_rng(levels)
    ref = rng.integers(100, 500, levels)
    win = ref + rng.integers(-60, 60, levels)
    ours = exact_chi2(ref, win)
    theirs = stats.chi2_contingency(np.vstack([ref, win]), correction=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=TOL)
    assert close_in_log(ours.p_value, theirs.pvalue)
    assert ours.dof == theirs.dof


def test_chi2_drops_levels_empty_on_both_sides() -> None:
    ours = exact_chi2([10, 0, 30, 5], [12, 0, 20, 9])
    theirs = stats.chi2_contingency(np.array([[10, 30, 5], [12, 20, 9]]), correction=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=TOL)
    assert ours.dof == 2
    assert exact_chi2([3, 0], [4, 0]) == exact_chi2([3], [4])


@pytest.mark.parametrize("seed", range(4))
def test_wasserstein_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0, 1, 5000)
    b = np.round(rng.normal(1.5, 2, 3000), 1)  # ties on one side
    assert exact_wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=TOL)
    normed = stats.wasserstein_distance(a, b) / np.std(a)
    assert exact_wasserstein(a, b, normed=True) == pytest.approx(normed, rel=TOL)


def test_wasserstein_drops_missing_values() -> None:
    a = np.array([1.0, np.nan, 2.0, 3.0])
    b = np.array([np.inf, 2.0, 4.0])
    assert exact_wasserstein(a, b) == pytest.approx(stats.wasserstein_distance([1, 2, 3], [2, 4]), rel=TOL)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=4, max_size=4),
    st.lists(st.integers(0, 1000), min_size=4, max_size=4),
)
def test_jensen_shannon_matches_scipy(p: list[int], q: list[int]) -> None:
    if not sum(p) or not sum(q):
        return
    assert exact_js(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), abs=TOL)
    assert exact_js(p, q, base=math.e) == pytest.approx(float(jensenshannon(p, q)), abs=TOL)


def test_psi_by_hand() -> None:
    reference = np.arange(1, 101, dtype=float)  # quartile edges 25.75, 50.5, 75.25
    window = np.concatenate(
        [np.full(40, 10.0), np.full(30, 50.5), np.full(20, 60.0), np.full(10, 99.0)]
    )  # 50.5 is an edge: those values belong to the second bin
    shares = [(0.40, 0.25), (0.30, 0.25), (0.20, 0.25), (0.10, 0.25)]
    by_hand = sum((q - p) * math.log(q / p) for q, p in shares)
    assert psi(reference, window, bins=4) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.228217, abs=1e-6)


def test_psi_empty_bins_use_epsilon() -> None:
    by_hand = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert psi_from_counts([50, 50], [0, 80]) == pytest.approx(by_hand, rel=1e-12)
    assert psi_from_counts([50, 50, 0], [50, 50, 0]) == 0.0


def test_numeric_js_uses_reference_quantile_bins() -> None:
    reference = np.arange(1, 101, dtype=float)
    window = np.arange(51, 151, dtype=float)
    # 4 bins: the reference has 25 in each; the window 0, 0, 25 and 75
    assert numeric_js(reference, window, bins=4) == pytest.approx(
        float(jensenshannon([25, 25, 25, 25], [0, 0, 25, 75], base=2)), abs=TOL
    )


def test_empty_samples_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        exact_ks([np.nan], [1.0])
    with pytest.raises(InvalidInputError):
        exact_js([0, 0], [1, 2])
