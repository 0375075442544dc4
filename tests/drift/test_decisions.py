"""Decisions that respect sample size: BH across features, minimum n, noise floors, configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from passerelle.drift import (
    ChiSquare,
    DriftConfig,
    JensenShannon,
    KolmogorovSmirnov,
    PopulationStability,
    ReferenceStats,
    Wasserstein,
    benjamini_hochberg,
    coalesce_windows,
    compute_drift,
    exact_ks,
    merge_windows,
    method_from_dict,
    register_method,
)
from passerelle.drift.histograms import Kind, NumericPair, Pair
from passerelle.errors import InvalidInputError


def normal_frame(rows: int, columns: int, seed: int, shifted: int = 0, shift: float = 0.5) -> pd.DataFrame:
    values = np.random.default_rng(seed).standard_normal((rows, columns))
    values[:, :shifted] += shift
    return pd.DataFrame(values, columns=[f"f{i:03d}" for i in range(columns)])


def test_benjamini_hochberg_matches_scipy() -> None:
    p = np.random.default_rng(0).uniform(0, 0.2, 50) ** 2
    assert np.allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    assert benjamini_hochberg([]).size == 0


@pytest.fixture(scope="module")
def hundred_frame() -> pd.DataFrame:
    return normal_frame(20_000, 100, seed=1)


@pytest.fixture(scope="module")
def hundred_features(hundred_frame: pd.DataFrame) -> ReferenceStats:
    return ReferenceStats.from_frame(hundred_frame)


@pytest.fixture(scope="module")
def hundred_stable() -> pd.DataFrame:
    return normal_frame(300, 100, seed=7)


#: small windows allowed, to show what each guard does where noise is largest
SMALL = 300


class TestHundredStableFeatures:
    """100 features that did not move, judged on a window of 300 rows."""

    def test_no_alert_storm_by_default(
        self, hundred_features: ReferenceStats, hundred_stable: pd.DataFrame
    ) -> None:
        report = compute_drift(hundred_features, hundred_stable, DriftConfig(min_n=SMALL))
        assert report.drifted_columns == []
        assert report.status == "ok"
        assert report.share_drifted == 0.0

    def test_uncorrected_p_values_would_storm_and_bh_does_not(
        self, hundred_frame: pd.DataFrame, hundred_features: ReferenceStats, hundred_stable: pd.DataFrame
    ) -> None:
        plain = [exact_ks(hundred_frame[c], hundred_stable[c]).p_value for c in hundred_stable.columns]
        assert sum(p < 0.05 for p in plain) >= 3
        significance_only = DriftConfig(
            numeric_methods=(Wasserstein(threshold=0.0),), noise_multiplier=0.0, min_n=SMALL
        )
        report = compute_drift(hundred_features, hundred_stable, significance_only)
        assert report.drifted_columns == []

    def test_effect_sizes_alone_would_storm_on_small_windows(
        self, hundred_features: ReferenceStats, hundred_stable: pd.DataFrame
    ) -> None:
        effect_only = DriftConfig(fdr=None, noise_multiplier=0.0, min_n=SMALL)
        assert len(compute_drift(hundred_features, hundred_stable, effect_only).drifted_columns) >= 2
        floor_only = DriftConfig(fdr=None, min_n=SMALL)
        assert compute_drift(hundred_features, hundred_stable, floor_only).drifted_columns == []

    def test_real_drift_among_them_is_found(self, hundred_features: ReferenceStats) -> None:
        report = compute_drift(hundred_features, normal_frame(1_000, 100, seed=3, shifted=5))
        assert report.multivariate is not None
        assert not report.multivariate.drifted
        assert report.drifted_columns == [f"f{i:03d}" for i in range(5)]
        assert report.share_drifted == pytest.approx(0.05)
        assert report.dataset_drift is False


def test_noise_floor_raises_thresholds_on_small_windows() -> None:
    reference = ReferenceStats.from_frame(normal_frame(20_000, 1, seed=1))
    small = compute_drift(reference, normal_frame(1_000, 1, seed=2)).column("f000")
    large = compute_drift(reference, normal_frame(50_000, 1, seed=2)).column("f000")
    js_small = next(c for c in small.checks if c.method == "jensenshannon")
    js_large = next(c for c in large.checks if c.method == "jensenshannon")
    assert js_small.noise_threshold is not None
    assert js_large.noise_threshold is not None
    assert js_small.threshold == js_small.noise_threshold > js_small.base_threshold == 0.1
    assert js_large.threshold == 0.1 > js_large.noise_threshold


def test_small_windows_are_insufficient_data_until_merged() -> None:
    reference = ReferenceStats.from_frame(normal_frame(20_000, 3, seed=1))
    parts = [reference.window().update(normal_frame(400, 3, seed=10 + i, shifted=3)) for i in range(5)]
    alone = compute_drift(reference, parts[0])
    assert alone.status == "insufficient data"
    assert alone.share_drifted is None
    assert not alone.dataset_drift
    assert all(c.status == "insufficient data" and not c.drifted for c in alone.columns)
    assert alone.multivariate is not None
    assert alone.multivariate.status == "insufficient data"

    groups = coalesce_windows(parts, min_rows=1_000)
    assert [g.rows for g in groups] == [1_200, 800]
    merged = compute_drift(reference, groups[0])
    assert merged.drifted_columns == ["f000", "f001", "f002"]
    assert compute_drift(reference, groups[1]).status == "insufficient data"
    assert merge_windows(parts).rows == 2_000


def test_missing_rate_change() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.standard_normal(20_000), "y": rng.standard_normal(20_000)})
    ref.loc[ref.index[:400], "x"] = np.nan
    win = pd.DataFrame({"x": rng.standard_normal(10_000), "y": np.full(10_000, np.nan)})
    win.loc[win.index[:2_000], "x"] = np.nan
    report = compute_drift(ReferenceStats.from_frame(ref), win)
    x, y = report.column("x"), report.column("y")
    assert x.reasons == ["missing rate"]
    assert x.effect_size == pytest.approx(0.18)
    assert x.details["window_missing_rate"] == pytest.approx(0.2)
    # A column that became empty has nothing to compare, but its missing rate moved.
    assert y.status == "drift"
    assert y.reasons == ["missing rate"]
    assert y.window_n == 0


def test_prediction_columns_are_reported_apart() -> None:
    rng = np.random.default_rng(0)
    ref = normal_frame(20_000, 4, seed=1).assign(score=rng.beta(2, 5, 20_000))
    win = normal_frame(5_000, 4, seed=2).assign(score=rng.beta(3, 4, 5_000))
    reference = ReferenceStats.from_frame(ref, predictions=["score"])
    report = compute_drift(reference, win)
    assert [c.column for c in report.predictions] == ["score"]
    assert report.column("score").drifted
    assert report.share_drifted == 0.0
    assert report.status == "drift"
    assert "score" not in report.schema.added_columns


def test_small_reference_uses_ks_and_chi2() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.standard_normal(600), "c": rng.choice(["a", "b", "c"], 600)})
    win = pd.DataFrame({"x": rng.standard_normal(3_000) + 0.8, "c": rng.choice(["a", "b", "c"], 3_000)})
    report = compute_drift(ReferenceStats.from_frame(ref), win)
    assert report.column("x").method == "ks"
    assert report.column("x").drifted
    assert report.column("c").method == "chi2"
    assert not report.column("c").drifted


@dataclass(frozen=True)
class MeanShift:
    """A method a user could write: the shift of the mean in reference standard deviations."""

    threshold: float = 0.25
    name: ClassVar[str] = "test-mean-shift"
    null_power: ClassVar[float] = 0.5

    def supports(self, kind: Kind) -> bool:
        return kind == "numeric"

    def key(self) -> str:
        return self.name

    def statistic(self, pair: Pair) -> float:
        assert isinstance(pair, NumericPair)
        ref, win = pair.reference, pair.window
        return abs(win.mean(pair.grid) - ref.mean(pair.grid)) / ref.std()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}


def test_a_registered_method_is_used_like_a_built_in_one() -> None:
    register_method(MeanShift.name, MeanShift)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_method(MeanShift.name, MeanShift)
    config = DriftConfig.from_dict(
        {"column_methods": {"f000": [{"name": MeanShift.name, "threshold": 0.25}]}, "multivariate": False}
    )
    reference = ReferenceStats.from_frame(normal_frame(20_000, 2, seed=1), config=config)
    report = compute_drift(reference, normal_frame(5_000, 2, seed=2, shifted=2, shift=0.2), config)
    assert report.column("f000").method == MeanShift.name
    assert not report.column("f000").drifted  # 0.2 sd is below this method's 0.25
    assert report.column("f001").drifted  # the default Wasserstein threshold is 0.1
    assert report.column("f000").checks[0].noise_threshold is not None


def test_config_round_trip_and_validation() -> None:
    config = DriftConfig(
        numeric_methods=(Wasserstein(0.15), PopulationStability(threshold=0.25, bins=20)),
        categorical_methods=(JensenShannon(0.08), ChiSquare(0.2)),
        small_numeric_methods=(KolmogorovSmirnov(0.1),),
        ignore=frozenset({"id"}),
        fdr=None,
    )
    assert DriftConfig.from_dict(config.to_dict()) == config
    assert method_from_dict({"name": "psi", "bins": 4}) == PopulationStability(bins=4)
    for bad in (
        {"fdr": 0.0},
        {"min_n": 0},
        {"numeric_methods": ()},
        {"categorical_methods": (Wasserstein(),)},
        {"numeric_methods": (Wasserstein(), Wasserstein(0.2))},
        {"explained_variance": 1.0},
    ):
        with pytest.raises(InvalidInputError):
            DriftConfig(**bad)
    with pytest.raises(InvalidInputError, match="unknown drift method"):
        method_from_dict({"name": "nope"})
    with pytest.raises(InvalidInputError, match="unknown drift settings"):
        DriftConfig.from_dict({"thresholds": {}})


def test_bins_must_divide_the_reference_grid() -> None:
    reference = ReferenceStats.from_frame(normal_frame(5_000, 1, seed=1))
    config = DriftConfig(numeric_methods=(PopulationStability(bins=7),))
    with pytest.raises(InvalidInputError, match="do not divide"):
        compute_drift(reference, normal_frame(2_000, 1, seed=2), config)


def test_report_is_json_safe() -> None:
    import json

    reference = ReferenceStats.from_frame(normal_frame(5_000, 2, seed=1).assign(c=["a", "b"] * 2_500))
    report = compute_drift(reference, normal_frame(300, 2, seed=2).assign(c="z"))
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["status"] == "insufficient data"
    assert not math.isnan(report.reference_rows)
