"""Right answers at scale: real moves are flagged and tiny wobbles are not, at 10k, 100k and 1M rows.

At a million rows a plain KS or chi-square test calls a shift of 0.01 standard deviations
significant; the engine must not. Each size is one frame whose columns are the scenarios
side by side, compared once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from passerelle.demo.data import FEATURES, Drift, generate_churn
from passerelle.drift import DriftReport, ReferenceStats, compute_drift

LEVELS = [f"level-{i}" for i in range(10)]
SHARES = np.array([0.2, 0.15, 0.12, 0.1, 0.1, 0.09, 0.08, 0.06, 0.05, 0.05])
LOG_SD = 0.6
LOGNORMAL_SD = float(np.sqrt((np.exp(LOG_SD**2) - 1) * np.exp(LOG_SD**2)))
POISSON_MEAN = 6.0

#: scenario -> whether the default configuration must flag it
EXPECTED = {
    "normal_same": False,
    "normal_wobble": False,  # mean + 0.01 sd
    "normal_shift": True,  # mean + 0.2 sd
    "normal_scale": True,  # spread x 1.5
    "lognormal_wobble": False,
    "lognormal_shift": True,
    "lognormal_scale": True,
    "counts_wobble": False,  # Poisson mean + 0.01 sd
    "counts_shift": True,  # Poisson mean + 0.2 sd
    "level_same": False,
    "level_wobble": False,  # 0.5 % of rows moved between two levels
    "level_moved": True,  # 8 % of rows moved between two levels
    "level_new": True,  # 3 % of rows in a level never seen
}


def scenarios(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = 1.0 if drifted else 0.0
    lognormal_mean = float(np.exp(LOG_SD**2 / 2))

    def lognormal(shift_sd: float, scale: float) -> np.ndarray:
        x = rng.lognormal(0.0, LOG_SD, n)
        return lognormal_mean + (x - lognormal_mean) * scale + shift_sd * LOGNORMAL_SD

    def levels(moved: float, new: float) -> pd.Categorical:
        shares = SHARES.copy()
        shares[0] -= moved
        shares[3] += moved
        codes = rng.choice(len(LEVELS), n, p=shares)
        if new:
            codes[rng.random(n) < new] = len(LEVELS)
        return pd.Categorical.from_codes(codes, [*LEVELS, "brand-new"])

    sd = np.sqrt(POISSON_MEAN)
    columns = {
        "normal_same": rng.standard_normal(n),
        "normal_wobble": rng.standard_normal(n) + 0.01 * k,
        "normal_shift": rng.standard_normal(n) + 0.2 * k,
        "normal_scale": rng.standard_normal(n) * (1 + 0.5 * k),
        "lognormal_wobble": lognormal(0.01 * k, 1.0),
        "lognormal_shift": lognormal(0.2 * k, 1.0),
        "lognormal_scale": lognormal(0.0, 1 + 0.5 * k),
        "counts_wobble": rng.poisson(POISSON_MEAN + 0.01 * sd * k, n).astype(np.int64),
        "counts_shift": rng.poisson(POISSON_MEAN + 0.2 * sd * k, n).astype(np.int64),
        "level_same": levels(0.0, 0.0),
        "level_wobble": levels(0.005 * k, 0.0),
        "level_moved": levels(0.08 * k, 0.0),
        "level_new": levels(0.0, 0.03 * k),
    }
    return pd.DataFrame(columns)


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return ReferenceStats.from_frame(scenarios(100_000, seed=0, drifted=False))


def flagged(report: DriftReport) -> dict[str, bool]:
    return {c.column: c.drifted for c in report.columns}


@pytest.mark.parametrize("rows", [10_000, 100_000, 1_000_000])
def test_moves_are_flagged_and_wobbles_are_not(reference: ReferenceStats, rows: int) -> None:
    report = compute_drift(reference, scenarios(rows, seed=rows, drifted=True))
    assert flagged(report) == EXPECTED
    assert report.share_drifted == pytest.approx(sum(EXPECTED.values()) / len(EXPECTED))
    if rows == 1_000_000:
        # What a p-value alone would have done: half a percent of rows moving between two
        # levels is "significant" at this size, even after Benjamini-Hochberg.
        wobble = report.column("level_wobble")
        assert wobble.q_value is not None
        assert wobble.q_value < 0.001
        assert not wobble.drifted


@pytest.mark.parametrize("rows", [10_000, 1_000_000])
def test_an_undrifted_window_is_quiet(reference: ReferenceStats, rows: int) -> None:
    report = compute_drift(reference, scenarios(rows, seed=rows + 1, drifted=False))
    assert report.drifted_columns == []
    assert report.status == "ok"
    assert report.multivariate is not None
    assert not report.multivariate.drifted


def test_churn_data() -> None:
    features = generate_churn(50_000, seed=1)[FEATURES]
    reference = ReferenceStats.from_frame(features)
    drift = Drift(
        mean_shift={"age": 0.2, "data_usage_gb": 0.01},
        scale={"monthly_charges": 1.5},
        category_shift={"paperless_billing": {"yes": 0.75}},
        new_categories={"payment_method": {"mobile-wallet": 0.05}},
        missing_rate={"days_since_last_upgrade": 0.3},
    )
    window = generate_churn(100_000, seed=2, drift=drift)[FEATURES]
    report = compute_drift(reference, window)
    # total_charges follows monthly_charges in the generator: it moved too.
    expected = {
        "age",
        "monthly_charges",
        "total_charges",
        "paperless_billing",
        "payment_method",
        "days_since_last_upgrade",
    }
    assert set(report.drifted_columns) == expected
    assert report.column("payment_method").reasons == ["jensenshannon", "new categories"]
    assert report.column("days_since_last_upgrade").reasons == ["missing rate"]
    assert report.dataset_drift is False
    assert report.share_drifted == pytest.approx(len(expected) / len(FEATURES))
    assert not report.schema.changed
