"""The multivariate check finds what the columns one by one do not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from passerelle.drift import DriftConfig, ReferenceStats, compute_drift


def correlated(rows: int, seed: int, rho: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 6))
    # x1 follows x0 with correlation rho; every column stays N(0, 1) whatever rho.
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(6)]).assign(
        group=rng.choice(["a", "b", "c"], rows)
    )


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return ReferenceStats.from_frame(correlated(50_000, seed=0, rho=0.9))


@pytest.mark.parametrize("rows", [2_000, 100_000])
def test_a_broken_correlation_is_found_where_marginals_see_nothing(
    reference: ReferenceStats, rows: int
) -> None:
    report = compute_drift(reference, correlated(rows, seed=rows, rho=0.0))
    assert report.drifted_columns == []
    multivariate = report.multivariate
    assert multivariate is not None
    assert multivariate.columns == tuple(f"x{i}" for i in range(6))
    assert multivariate.drifted
    assert multivariate.effect_size > 0.5
    assert multivariate.window_error > multivariate.band[1]
    assert report.status == "drift"
    assert report.dataset_drift is False


@pytest.mark.parametrize("rows", [1_000, 100_000])
def test_the_same_correlation_is_quiet(reference: ReferenceStats, rows: int) -> None:
    report = compute_drift(reference, correlated(rows, seed=rows + 1, rho=0.9))
    assert report.multivariate is not None
    assert not report.multivariate.drifted
    assert report.multivariate.band[0] < report.multivariate.window_error < report.multivariate.band[1]
    assert report.status == "ok"


def test_it_needs_enough_rows_and_columns(reference: ReferenceStats) -> None:
    small = compute_drift(reference, correlated(500, seed=3, rho=0.0))
    assert small.multivariate is not None
    assert small.multivariate.status == "insufficient data"
    assert not small.multivariate.drifted
    single = ReferenceStats.from_frame(correlated(5_000, seed=0, rho=0.9)[["x0", "group"]])
    assert compute_drift(single, correlated(2_000, seed=1, rho=0.9)).multivariate is None
    off = compute_drift(reference, correlated(2_000, seed=1, rho=0.0), DriftConfig(multivariate=False))
    assert off.multivariate is None
