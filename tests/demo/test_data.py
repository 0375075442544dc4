from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from passerelle.demo.data import (
    CATEGORICAL,
    COLUMNS,
    FEATURES,
    ID,
    LABEL,
    NUMERIC,
    TIME,
    Drift,
    generate_churn,
    make_model,
    split_features,
    write_dataset,
)

INTEGER = ["tenure_months", "num_support_calls", "age", "num_lines"]


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return generate_churn(20_000, seed=2)


@pytest.fixture(scope="module")
def hgb() -> Pipeline:
    model = make_model("hgb", seed=0)
    model.fit(*split_features(generate_churn(20_000, seed=1)))
    return model


def auc(model: Pipeline, frame: pd.DataFrame) -> float:
    features, label = split_features(frame)
    return float(roc_auc_score(label, model.predict_proba(features)[:, 1]))


def test_same_inputs_give_the_same_frame() -> None:
    drift = Drift.preset("data")
    pd.testing.assert_frame_equal(generate_churn(3000, seed=7), generate_churn(3000, seed=7))
    pd.testing.assert_frame_equal(
        generate_churn(3000, seed=7, drift=drift), generate_churn(3000, seed=7, drift=drift)
    )
    other = generate_churn(3000, seed=8)
    assert not generate_churn(3000, seed=7)[FEATURES].equals(other[FEATURES])


def test_columns_and_dtypes(baseline: pd.DataFrame) -> None:
    assert list(baseline.columns) == COLUMNS
    assert FEATURES == NUMERIC + CATEGORICAL
    assert not {LABEL, ID, TIME} & set(FEATURES)
    for name in INTEGER:
        assert baseline[name].dtype == np.int64, name
    for name in set(NUMERIC) - set(INTEGER):
        assert baseline[name].dtype == np.float64, name
    for name in [ID, *CATEGORICAL]:
        assert pd.api.types.is_string_dtype(baseline[name]), name
    assert pd.api.types.is_datetime64_any_dtype(baseline[TIME])
    assert baseline[LABEL].dtype == np.int64
    assert set(baseline[LABEL].unique()) == {0, 1}

    assert list(generate_churn(10, with_label=False).columns) == COLUMNS[:-1]
    assert len(generate_churn(0)) == 0


def test_values_look_like_customer_records(baseline: pd.DataFrame) -> None:
    assert baseline[ID].is_unique
    assert baseline[ID].str.fullmatch(r"C\d{6}").all()
    assert baseline["tenure_months"].between(0, 72).all()
    assert baseline["num_lines"].between(1, 5).all()
    assert baseline["dropped_call_rate"].between(0, 1).all()
    assert (baseline["num_support_calls"] >= 0).all()
    assert baseline["data_usage_gb"].to_numpy().mean() > baseline["data_usage_gb"].median() * 1.2
    assert set(baseline["contract"]) == {"month-to-month", "one-year", "two-year"}
    assert baseline["payment_method"].nunique() == 4
    assert set(baseline["internet_service"]) == {"dsl", "fiber", "none"}
    assert "ile-de-france" in set(baseline["region"])
    assert set(baseline["plan"]) == {"basic", "standard", "premium"}
    assert set(baseline["paperless_billing"]) == {"yes", "no"}

    billed = baseline["total_charges"].notna()
    assert (baseline.loc[~billed, "tenure_months"] == 0).all()
    expected = baseline["tenure_months"] * baseline["monthly_charges"]
    ratio = baseline.loc[billed, "total_charges"] / expected[billed]
    assert ratio.between(0.8, 1.2).mean() > 0.99

    times = baseline[TIME]
    assert times.is_monotonic_increasing
    assert times.min() >= pd.Timestamp(2024, 1, 1)
    assert times.max() < pd.Timestamp(2024, 1, 31)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    aware = generate_churn(100, start=start, period=timedelta(hours=1))[TIME]
    assert aware.min() >= pd.Timestamp(start)
    assert aware.max() < pd.Timestamp(start + timedelta(hours=1))


def test_base_churn_rate_is_realistic() -> None:
    assert 0.20 <= generate_churn(50_000, seed=3)[LABEL].mean() <= 0.27


def test_some_values_are_missing_at_baseline(baseline: pd.DataFrame) -> None:
    rates = baseline[FEATURES].isna().mean()
    assert ((rates > 0.005) & (rates < 0.10)).sum() >= 2


def test_a_good_model_is_good_but_not_perfect(hgb: Pipeline, baseline: pd.DataFrame) -> None:
    assert 0.75 <= auc(hgb, baseline) <= 0.95


def test_logreg_pipeline_fits() -> None:
    model = make_model("logreg")
    model.fit(*split_features(generate_churn(5000, seed=1)))
    assert 0.75 <= auc(model, generate_churn(5000, seed=2)) <= 0.95
    with pytest.raises(ValueError, match="kind"):
        make_model("forest")


def test_split_features(baseline: pd.DataFrame) -> None:
    features, label = split_features(baseline)
    assert list(features.columns) == FEATURES
    assert label.name == LABEL
    assert len(features) == len(label) == len(baseline)
    with pytest.raises(KeyError, match=LABEL):
        split_features(baseline.drop(columns=LABEL))


@pytest.mark.parametrize("name", ["monthly_charges", "age", "data_usage_gb"])
def test_mean_shift_moves_the_mean_by_that_many_stds(baseline: pd.DataFrame, name: str) -> None:
    shifted = generate_churn(20_000, seed=2, drift=Drift(mean_shift={name: 1.0}))
    moved = (shifted[name].mean() - baseline[name].mean()) / baseline[name].std()
    assert moved == pytest.approx(1.0, abs=0.1)


def test_scale_widens_the_spread_but_keeps_the_mean(baseline: pd.DataFrame) -> None:
    scaled = generate_churn(20_000, seed=2, drift=Drift(scale={"monthly_charges": 1.5}))
    before, after = baseline["monthly_charges"], scaled["monthly_charges"]
    assert after.std() / before.std() == pytest.approx(1.5, rel=0.05)
    assert abs(after.mean() - before.mean()) < 0.05 * before.std()


def test_drift_flows_into_derived_features(baseline: pd.DataFrame) -> None:
    shifted = generate_churn(20_000, seed=2, drift=Drift(mean_shift={"monthly_charges": 1.0}))
    assert shifted["total_charges"].mean() > baseline["total_charges"].mean() * 1.1
    # Covariate shift only: churn reacts to higher prices through the same relation.
    assert shifted[LABEL].mean() > baseline[LABEL].mean()


def test_new_categories_appear_at_the_asked_share(baseline: pd.DataFrame) -> None:
    drift = Drift(new_categories={"region": {"corse": 0.1}, "payment_method": {"mobile-wallet": 0.2}})
    drifted = generate_churn(20_000, seed=2, drift=drift)
    assert (drifted["region"] == "corse").mean() == pytest.approx(0.1, abs=0.01)
    assert (drifted["payment_method"] == "mobile-wallet").mean() == pytest.approx(0.2, abs=0.015)
    # The existing levels keep their proportions among themselves.
    old = drifted.loc[drifted["region"] != "corse", "region"].value_counts(normalize=True)
    pd.testing.assert_series_equal(
        old.sort_index(), baseline["region"].value_counts(normalize=True).sort_index(), atol=0.015
    )


def test_category_shift_changes_the_level_shares(baseline: pd.DataFrame) -> None:
    drifted = generate_churn(
        20_000, seed=2, drift=Drift(category_shift={"contract": {"month-to-month": 0.8}})
    )
    shares = drifted["contract"].value_counts(normalize=True)
    before = baseline["contract"].value_counts(normalize=True)
    assert before["month-to-month"] == pytest.approx(0.55, abs=0.015)
    assert shares["month-to-month"] == pytest.approx(0.8, abs=0.015)
    assert shares["one-year"] / shares["two-year"] == pytest.approx(
        before["one-year"] / before["two-year"], rel=0.1
    )

    full = Drift(category_shift={"internet_service": {"dsl": 2, "fiber": 1, "none": 1}})
    service = generate_churn(20_000, seed=2, drift=full)["internet_service"].value_counts(normalize=True)
    assert service["dsl"] == pytest.approx(0.5, abs=0.015)


def test_missing_rate_reaches_the_target(baseline: pd.DataFrame) -> None:
    targets = {"age": 0.2, "contract": 0.1, "total_charges": 0.3, "days_since_last_upgrade": 0.01}
    drifted = generate_churn(20_000, seed=2, drift=Drift(missing_rate=targets))
    for name, rate in list(targets.items())[:3]:
        assert drifted[name].isna().mean() == pytest.approx(rate, abs=0.015), name
    # Below what the column already has: left as it is.
    pd.testing.assert_series_equal(drifted["days_since_last_upgrade"], baseline["days_since_last_upgrade"])
    assert drifted["age"].dtype == np.float64
    untouched = [column for column in COLUMNS if column not in targets]
    pd.testing.assert_frame_equal(drifted[untouched], baseline[untouched])


def test_concept_drift_hurts_the_model_but_not_the_features(hgb: Pipeline, baseline: pd.DataFrame) -> None:
    half = generate_churn(20_000, seed=2, drift=Drift(concept=0.5))
    drifted = generate_churn(20_000, seed=2, drift=Drift.preset("concept"))
    before, middle, after = auc(hgb, baseline), auc(hgb, half), auc(hgb, drifted)
    assert before - after >= 0.05
    assert before > middle > after

    stds = baseline[NUMERIC].std()
    moved = ((drifted[NUMERIC].mean() - baseline[NUMERIC].mean()) / stds).abs()
    assert (moved < 0.05).all()
    for name in CATEGORICAL:
        shares = drifted[name].value_counts(normalize=True)
        pd.testing.assert_series_equal(shares, baseline[name].value_counts(normalize=True), atol=0.01)
    assert abs(drifted[LABEL].mean() - baseline[LABEL].mean()) < 0.03


def test_data_preset_drifts_several_features(baseline: pd.DataFrame) -> None:
    drift = Drift.preset("data")
    touched = (
        set(drift.mean_shift)
        | set(drift.scale)
        | set(drift.new_categories)
        | set(drift.category_shift)
        | set(drift.missing_rate)
    )
    assert 3 <= len(touched) <= 4
    assert drift.concept == 0
    drifted = generate_churn(20_000, seed=2, drift=drift)
    assert (drifted["payment_method"] == "mobile-wallet").any()
    assert drifted["monthly_charges"].mean() > baseline["monthly_charges"].mean()


def test_presets_and_validation() -> None:
    assert Drift.preset("none") == Drift()
    assert Drift.preset("concept").concept == 1.0
    with pytest.raises(ValueError, match="preset"):
        Drift.preset("schema")
    with pytest.raises(ValueError, match="features"):
        Drift(mean_shift={"contract": 1.0})
    with pytest.raises(ValueError, match="features"):
        Drift(missing_rate={LABEL: 0.1})
    with pytest.raises(ValueError, match="already exist"):
        Drift(new_categories={"plan": {"basic": 0.1}})
    with pytest.raises(ValueError, match="new_categories"):
        Drift(category_shift={"plan": {"gold": 0.1}})
    with pytest.raises(ValueError, match="more than 1"):
        Drift(category_shift={"plan": {"basic": 0.7, "premium": 0.6}})
    with pytest.raises(ValueError, match="concept"):
        Drift(concept=1.5)
    with pytest.raises(ValueError, match="missing_rate"):
        Drift(missing_rate={"age": -0.1})

    shifts = {"age": 1.0}
    drift = Drift(mean_shift=shifts)
    shifts["age"] = 5.0
    assert drift.mean_shift == {"age": 1.0}


@pytest.mark.parametrize("kind", ["hgb", "logreg"])
def test_model_saves_with_only_sklearn_and_numpy_types(
    kind: str, hgb: Pipeline, baseline: pd.DataFrame, tmp_path: Path
) -> None:
    if kind == "hgb":
        model = hgb
    else:
        model = make_model(kind)
        model.fit(*split_features(generate_churn(2000, seed=1)))
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    untrusted = sio.get_untrusted_types(file=path)
    assert all(name.startswith(("sklearn.", "numpy.")) for name in untrusted), untrusted

    # Drifted input with unseen levels and holes in every kind of column must still score.
    drift = Drift(new_categories={"region": {"corse": 0.1}}, missing_rate={"contract": 0.1, "age": 0.1})
    features, _ = split_features(generate_churn(500, seed=4, drift=drift))
    loaded = sio.load(path, trusted=untrusted)
    np.testing.assert_array_equal(loaded.predict_proba(features), model.predict_proba(features))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_write_dataset_round_trips(tmp_path: Path, suffix: str) -> None:
    frame = generate_churn(200, seed=1, drift=Drift(missing_rate={"region": 0.2}))
    path = tmp_path / "nested" / f"churn{suffix}"
    write_dataset(frame, path)
    if suffix == ".parquet":
        back = pd.read_parquet(path)
    else:
        back = pd.read_csv(path, dtype={ID: "str"}, parse_dates=[TIME])
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    with pytest.raises(ValueError, match="format"):
        write_dataset(frame, tmp_path / "churn.xlsx")


def test_large_frames_keep_ids_unique() -> None:
    frame = generate_churn(300_000, seed=0, drift=Drift.preset("data"))
    assert len(frame) == 300_000
    assert frame[ID].is_unique
