"""The binned path (reference histograms, window sketches) against the exact path on the same data.

The statistics of a report come from histograms on the reference's grid; these tests
hold them to the exact functions on the raw samples: 1e-3 where the grid approximates
(Wasserstein, KS on a large reference), and to rounding where it does not (PSI and
Jensen-Shannon on reference-quantile bins, KS on a small or discrete reference, every
categorical statistic).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from passerelle.drift import (
    DriftConfig,
    ReferenceStats,
    compute_drift,
    cramers_v,
    exact_chi2,
    exact_js,
    exact_ks,
    exact_wasserstein,
    numeric_js,
    psi,
    psi_from_counts,
)
from passerelle.drift.exact import categorical_counts

APPROX = 1e-3
EXACT = 1e-9
ALL = DriftConfig(min_n=1, min_reference_n=1, multivariate=False)


def figures(reference: Any, window: Any) -> dict[str, Any]:
    ref = ReferenceStats.from_frame(pd.DataFrame({"x": reference}))
    column = compute_drift(ref, pd.DataFrame({"x": window}), ALL).column("x")
    return {**column.details["statistics"], "test": column.details["test"]}


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


SAMPLES = {
    "normal, shifted": (rng(1).standard_normal(50_000), rng(2).standard_normal(20_000) + 0.3),
    "lognormal, spread": (rng(3).lognormal(0, 1, 50_000), rng(4).lognormal(0, 1.4, 20_000)),
    "heavy tails": (rng(5).standard_t(2, 50_000), rng(6).standard_t(2, 30_000) * 1.2),
    "poisson (ties)": (rng(7).poisson(4, 40_000).astype(float), rng(8).poisson(4.6, 30_000).astype(float)),
    "beyond the range": (rng(9).uniform(0, 1, 20_000), rng(10).uniform(0.5, 1.8, 20_000)),
    "rounded money": (np.round(rng(11).gamma(2, 30, 60_000), 2), np.round(rng(12).gamma(2.2, 30, 25_000), 2)),
}


@pytest.mark.parametrize("case", list(SAMPLES))
def test_numeric_statistics_agree_with_the_exact_path(case: str) -> None:
    reference, window = SAMPLES[case]
    got = figures(reference, window)
    assert got["wasserstein"] == pytest.approx(exact_wasserstein(reference, window, normed=True), abs=APPROX)
    assert got["ks"] == pytest.approx(exact_ks(reference, window).statistic, abs=APPROX)
    assert got["psi"] == pytest.approx(psi(reference, window, bins=10), abs=EXACT)
    assert got["jensenshannon"] == pytest.approx(numeric_js(reference, window, bins=20), abs=EXACT)


def test_missing_and_infinite_values_are_left_out() -> None:
    reference = np.concatenate([rng(1).standard_normal(5000), [np.nan] * 50, [np.inf]])
    window = np.concatenate([rng(2).standard_normal(3000) + 0.2, [np.nan] * 300, [-np.inf] * 3])
    got = figures(reference, window)
    assert got["wasserstein"] == pytest.approx(exact_wasserstein(reference, window, normed=True), abs=APPROX)
    assert got["psi"] == pytest.approx(psi(reference, window), abs=EXACT)


def test_small_reference_ks_is_exact_with_the_same_p_value() -> None:
    reference = rng(1).standard_normal(300)
    window = rng(2).standard_normal(900) + 0.25
    got = figures(reference, window)
    exact = exact_ks(reference, window, method="exact")
    assert got["ks"] == pytest.approx(exact.statistic, abs=EXACT)
    assert got["test"]["name"] == "ks"
    assert got["test"]["p_value"] == pytest.approx(exact.p_value, rel=EXACT)


def test_large_window_ks_p_value_follows_the_statistic() -> None:
    reference, window = SAMPLES["normal, shifted"]
    got = figures(reference, window)
    scipy_p = stats.ks_2samp(reference, window).pvalue
    assert got["test"]["statistic"] == pytest.approx(exact_ks(reference, window).statistic, abs=APPROX)
    # Different statistic by at most 1e-3 and a different approximation of the distribution:
    # both are far beyond any decision threshold here.
    assert got["test"]["p_value"] < 1e-100
    assert scipy_p < 1e-100


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=300),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
)
def test_any_small_reference_gives_exact_ks_and_psi(reference: list[float], window: list[float]) -> None:
    if np.std(reference) == 0:
        return
    got = figures(np.array(reference), np.array(window))
    # A reference of at most 1000 distinct values lies on its grid whole, so the window's
    # distribution is known at every reference value: KS and PSI are exact whatever the data.
    assert got["ks"] == pytest.approx(exact_ks(reference, window).statistic, abs=EXACT)
    assert got["psi"] == pytest.approx(psi(reference, window), abs=EXACT)


@pytest.mark.parametrize("seed", range(5))
def test_small_reference_wasserstein(seed: int) -> None:
    # W loses only where the window's distribution crosses the reference's inside a gap
    # between two reference values; with real data those gaps are small.
    reference = rng(seed).normal(10, 3, 300)
    window = rng(seed + 100).normal(10.5, 3.6, 2000)
    got = figures(reference, window)
    assert got["wasserstein"] == pytest.approx(exact_wasserstein(reference, window, normed=True), abs=APPROX)


def test_categorical_statistics_are_exact() -> None:
    levels = np.array([f"l{i}" for i in range(12)])
    reference = levels[rng(1).choice(10, 20_000)]
    window = levels[rng(2).choice(12, 8_000)].astype(object)
    window[:40] = None
    ref = ReferenceStats.from_frame(pd.DataFrame({"c": reference}))
    column = compute_drift(ref, pd.DataFrame({"c": window}), ALL).column("c")
    _, ref_counts, win_counts = categorical_counts(reference, window)
    chi2 = exact_chi2(ref_counts, win_counts)
    statistics = column.details["statistics"]
    assert statistics["jensenshannon"] == pytest.approx(exact_js(ref_counts, win_counts), abs=EXACT)
    assert statistics["psi"] == pytest.approx(psi_from_counts(ref_counts, win_counts), abs=EXACT)
    assert statistics["chi2"] == pytest.approx(cramers_v(chi2.statistic, ref_counts.sum() + win_counts.sum()))
    assert column.details["test"]["statistic"] == pytest.approx(chi2.statistic, rel=EXACT)
    assert column.details["test"]["p_value"] == pytest.approx(chi2.p_value, rel=EXACT)
    assert column.details["new_levels"] == {
        "l10": int((window == "l10").sum()),
        "l11": int((window == "l11").sum()),
    }
