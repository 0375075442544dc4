"""A synthetic telecom customer churn dataset, with knobs to inject drift, and a model for it.

The data is generated from a small causal story rather than drawn column by column, so that
the columns relate to each other the way real customer records do: the contract drives the
tenure, the internet service and plan drive the monthly charges, the total charges follow
from tenure and monthly charges, dropped calls drive support calls, and an unobserved
satisfaction level drives both support calls and churn. The label comes from a logistic
model on top of that, which keeps a good model's ROC AUC well below 1.

Every random draw happens in the same order whatever the drift, so a drifted frame is the
same customer book as the undrifted frame of the same seed, seen through the drift.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder, StandardScaler

__all__ = [
    "CATEGORICAL",
    "COLUMNS",
    "FEATURES",
    "ID",
    "LABEL",
    "NUMERIC",
    "TIME",
    "Drift",
    "generate_churn",
    "make_model",
    "split_features",
    "write_dataset",
]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

ID = "customer_id"
TIME = "event_time"
LABEL = "churned"
NUMERIC: list[str] = [
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "num_support_calls",
    "data_usage_gb",
    "age",
    "num_lines",
    "days_since_last_upgrade",
    "dropped_call_rate",
]
CATEGORICAL: list[str] = [
    "contract",
    "payment_method",
    "internet_service",
    "region",
    "plan",
    "paperless_billing",
]
FEATURES: list[str] = [*NUMERIC, *CATEGORICAL]
#: every column of a generated frame, in order (the label only when it is asked for)
COLUMNS: list[str] = [ID, *FEATURES, TIME, LABEL]

DEFAULT_START = datetime(2024, 1, 1)
DEFAULT_PERIOD = timedelta(days=30)

# Baseline share of each level; the order of the levels is the order of the codes.
_LEVELS: dict[str, dict[str, float]] = {
    "contract": {"month-to-month": 0.55, "one-year": 0.24, "two-year": 0.21},
    "payment_method": {
        "electronic-check": 0.33,
        "mailed-check": 0.22,
        "bank-transfer": 0.22,
        "credit-card": 0.23,
    },
    "internet_service": {"dsl": 0.34, "fiber": 0.44, "none": 0.22},
    "region": {
        "ile-de-france": 0.28,
        "auvergne-rhone-alpes": 0.17,
        "nouvelle-aquitaine": 0.14,
        "occitanie": 0.14,
        "hauts-de-france": 0.13,
        "provence-alpes-cote-d-azur": 0.14,
    },
    "plan": {"basic": 0.42, "standard": 0.38, "premium": 0.20},
    "paperless_billing": {"yes": 0.59, "no": 0.41},
}

# (lowest, highest, decimals): drifted values are clipped and rounded back to these, so a
# drifted column still looks like the field it stands for (bounded features therefore
# move a little less than the asked shift).
_NUMERIC_SPEC: dict[str, tuple[float, float, int]] = {
    "tenure_months": (0.0, 72.0, 0),
    "monthly_charges": (10.0, math.inf, 2),
    "total_charges": (0.0, math.inf, 2),
    "num_support_calls": (0.0, math.inf, 0),
    "data_usage_gb": (0.0, math.inf, 2),
    "age": (18.0, 95.0, 0),
    "num_lines": (1.0, 5.0, 0),
    "days_since_last_upgrade": (0.0, math.inf, 1),
    "dropped_call_rate": (0.0, 1.0, 4),
}
_INTEGER = frozenset(name for name, (_, _, decimals) in _NUMERIC_SPEC.items() if decimals == 0)


@dataclass(frozen=True)
class _Concept:
    """Coefficients of the churn logit; drift moves linearly from the baseline to the shifted one."""

    intercept: float
    contract: dict[str, float]
    internet_service: dict[str, float]
    payment_method: dict[str, float]
    paperless_billing: dict[str, float]
    plan: dict[str, float]
    monthly_charges: float
    log_tenure: float
    support_calls: float
    dropped_call_rate: float
    days_since_last_upgrade: float
    log_data_usage: float
    age: float
    satisfaction: float


_BASELINE = _Concept(
    intercept=-2.3,
    contract={"month-to-month": 0.95, "one-year": -0.45, "two-year": -1.5},
    internet_service={"dsl": 0.0, "fiber": 0.55, "none": -0.45},
    payment_method={
        "electronic-check": 0.4,
        "mailed-check": 0.05,
        "bank-transfer": -0.15,
        "credit-card": -0.15,
    },
    paperless_billing={"yes": 0.15, "no": 0.0},
    plan={"basic": 0.0, "standard": 0.0, "premium": -0.1},
    monthly_charges=0.022,
    log_tenure=-0.55,
    support_calls=0.3,
    dropped_call_rate=12.0,
    days_since_last_upgrade=0.0008,
    log_data_usage=0.0,
    age=0.0,
    satisfaction=1.0,
)

# The story behind the shifted concept: a competitor's cheap fiber offer lures DSL customers
# away while a network upgrade has made fiber customers happy, heavy data users and young
# customers leave for 5G offers, and price and support calls matter much less than before.
# Feature distributions are untouched, only how they relate to churn changes.
_SHIFTED = _Concept(
    intercept=-2.3,
    contract=_BASELINE.contract,
    internet_service={"dsl": 0.75, "fiber": -0.45, "none": -0.2},
    payment_method=_BASELINE.payment_method,
    paperless_billing=_BASELINE.paperless_billing,
    plan={"basic": -0.1, "standard": 0.0, "premium": 0.3},
    monthly_charges=-0.01,
    log_tenure=-0.15,
    support_calls=0.1,
    dropped_call_rate=_BASELINE.dropped_call_rate,
    days_since_last_upgrade=_BASELINE.days_since_last_upgrade,
    log_data_usage=0.75,
    age=-0.035,
    satisfaction=1.0,
)


@dataclass(frozen=True)
class Drift:
    """How a generated frame departs from the baseline population; the defaults mean no drift.

    ``mean_shift``
        numeric feature -> shift of its mean, in units of that feature's standard deviation.
    ``scale``
        numeric feature -> factor applied to the spread around its mean.
    ``new_categories``
        categorical feature -> {new level: share of rows}; the existing levels share the rest
        in their usual proportions.
    ``category_shift``
        categorical feature -> {existing level: probability}. Levels left out share what
        remains in their usual proportions; when every level is given, the probabilities are
        normalised.
    ``missing_rate``
        feature -> share of missing values the column ends up with (never fewer than it has
        anyway). An integer column given a positive rate becomes float, as it would after a
        round trip through a CSV file with holes.
    ``concept``
        0..1, strength of concept drift: how far the relation between features and churn
        moves towards a different one (the effect of the internet service flips, price and
        support calls matter less, data usage and age start to matter). Feature
        distributions do not move, but a model trained on undrifted data loses accuracy.

    Numeric features derived from a drifted one follow it (total charges follow tenure and
    monthly charges), and so does churn, which reacts to drifted features through the same
    relation as before: only ``concept`` changes that relation.
    """

    mean_shift: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    new_categories: dict[str, dict[str, float]] = field(default_factory=dict)
    category_shift: dict[str, dict[str, float]] = field(default_factory=dict)
    missing_rate: dict[str, float] = field(default_factory=dict)
    concept: float = 0.0

    PRESETS = ("none", "data", "concept")

    def __post_init__(self) -> None:
        # Copies, so that mutating the caller's dictionaries later cannot change a frozen drift.
        object.__setattr__(self, "mean_shift", dict(self.mean_shift))
        object.__setattr__(self, "scale", dict(self.scale))
        object.__setattr__(self, "new_categories", {k: dict(v) for k, v in self.new_categories.items()})
        object.__setattr__(self, "category_shift", {k: dict(v) for k, v in self.category_shift.items()})
        object.__setattr__(self, "missing_rate", dict(self.missing_rate))
        self._validate()

    def _validate(self) -> None:
        for knob, allowed in (
            ("mean_shift", NUMERIC),
            ("scale", NUMERIC),
            ("new_categories", CATEGORICAL),
            ("category_shift", CATEGORICAL),
            ("missing_rate", FEATURES),
        ):
            unknown = sorted(set(getattr(self, knob)) - set(allowed))
            if unknown:
                raise ValueError(f"Drift.{knob}: {unknown} are not among the features {allowed}")
        for name, shift in self.mean_shift.items():
            if not math.isfinite(shift):
                raise ValueError(f"Drift.mean_shift[{name!r}] must be finite, got {shift}")
        for name, factor in self.scale.items():
            if not (math.isfinite(factor) and factor >= 0):
                raise ValueError(f"Drift.scale[{name!r}] must be a finite factor >= 0, got {factor}")
        for name, rate in self.missing_rate.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Drift.missing_rate[{name!r}] must be within [0, 1], got {rate}")
        if not 0.0 <= self.concept <= 1.0:
            raise ValueError(f"Drift.concept must be within [0, 1], got {self.concept}")
        for name, new in self.new_categories.items():
            clash = sorted(set(new) & set(_LEVELS[name]))
            if clash:
                raise ValueError(f"Drift.new_categories[{name!r}]: {clash} already exist; use category_shift")
            if any(not level for level in new):
                raise ValueError(f"Drift.new_categories[{name!r}]: a level cannot be empty")
            if any(not share > 0 for share in new.values()) or sum(new.values()) >= 1:
                raise ValueError(f"Drift.new_categories[{name!r}]: shares must be > 0 and sum to less than 1")
        for name, target in self.category_shift.items():
            unknown = sorted(set(target) - set(_LEVELS[name]))
            if unknown:
                raise ValueError(
                    f"Drift.category_shift[{name!r}]: {unknown} are not levels of {name} "
                    f"({list(_LEVELS[name])}); use new_categories for new levels"
                )
            if any(not (math.isfinite(p) and p >= 0) for p in target.values()):
                raise ValueError(f"Drift.category_shift[{name!r}]: probabilities must be >= 0")
            total = sum(target.values())
            if len(target) == len(_LEVELS[name]):
                if total <= 0:
                    raise ValueError(f"Drift.category_shift[{name!r}]: probabilities sum to 0")
            elif total > 1 + 1e-9:
                raise ValueError(
                    f"Drift.category_shift[{name!r}]: probabilities of some levels sum to more than 1"
                )

    @classmethod
    def preset(cls, name: str) -> Drift:
        """A ready-made drift: ``"none"``, ``"data"`` (prices up, data usage more spread out
        with holes, a new payment method, more month-to-month contracts) or ``"concept"``."""
        if name == "none":
            return cls()
        if name == "data":
            return cls(
                mean_shift={"monthly_charges": 1.0},
                scale={"data_usage_gb": 1.8},
                new_categories={"payment_method": {"mobile-wallet": 0.15}},
                category_shift={"contract": {"month-to-month": 0.75}},
                missing_rate={"data_usage_gb": 0.15},
            )
        if name == "concept":
            return cls(concept=1.0)
        raise ValueError(f"Unknown drift preset {name!r}; choose one of {list(cls.PRESETS)}")


@dataclass
class _Categorical:
    codes: IntArray
    levels: list[str]

    def effect(self, table: dict[str, float], default: float = 0.0) -> FloatArray:
        """``table[level]`` for each row; levels the table does not know (new ones) get ``default``."""
        per_level = np.array([table.get(level, default) for level in self.levels], dtype=np.float64)
        return per_level[self.codes]

    def strings(self) -> np.ndarray[Any, np.dtype[np.object_]]:
        # Code -1 (missing) picks the trailing NaN.
        lookup = np.array([*self.levels, np.nan], dtype=object)
        return lookup[self.codes]


def _draw_categorical(name: str, uniform: FloatArray, drift: Drift) -> _Categorical:
    base = _LEVELS[name]
    probs = dict(base)
    target = drift.category_shift.get(name)
    if target:
        if len(target) == len(base):
            total = sum(target.values())
            probs = {level: target[level] / total for level in base}
        else:
            rest = 1.0 - sum(target.values())
            rest_base = sum(p for level, p in base.items() if level not in target)
            probs = {
                level: target[level] if level in target else max(rest, 0.0) * p / rest_base
                for level, p in base.items()
            }
    new = drift.new_categories.get(name, {})
    keep = 1.0 - sum(new.values())
    probs = {level: p * keep for level, p in probs.items()} | new
    cdf = np.cumsum(np.fromiter(probs.values(), dtype=np.float64))
    cdf /= cdf[-1]
    # Inverse CDF on a uniform drawn whatever the drift, so rows keep their draw.
    codes = np.minimum(np.searchsorted(cdf, uniform, side="right"), len(cdf) - 1).astype(np.int64)
    return _Categorical(codes, list(probs))


def _finish_numeric(name: str, values: FloatArray, drift: Drift) -> FloatArray:
    """Apply the drift asked for ``name``, then clip and round to what the field allows."""
    low, high, decimals = _NUMERIC_SPEC[name]
    factor = drift.scale.get(name, 1.0)
    shift = drift.mean_shift.get(name, 0.0)
    if factor != 1.0 or shift != 0.0:
        present = values[~np.isnan(values)]
        if present.size:
            mean = float(present.mean())
            std = float(present.std())
            values = mean + (values - mean) * factor + shift * std
    return _round(np.clip(values, low, high), decimals)


def _round(values: np.ndarray[Any, Any], decimals: int) -> FloatArray:
    return np.asarray(np.round(values, decimals), dtype=np.float64)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _lerp_table(a: dict[str, float], b: dict[str, float], t: float) -> dict[str, float]:
    return {level: _lerp(a.get(level, 0.0), b.get(level, 0.0), t) for level in a.keys() | b.keys()}


def _sigmoid(z: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-z))


def generate_churn(
    n: int,
    *,
    seed: int = 0,
    drift: Drift | None = None,
    start: datetime | None = None,
    with_label: bool = True,
    period: timedelta = DEFAULT_PERIOD,
) -> pd.DataFrame:
    """``n`` telecom customers, one row each, in the order of :data:`COLUMNS`.

    Columns:

    - ``customer_id`` (str): ``"C"`` and a zero-padded row number, unique within a frame
      and the same for every seed (frames of different seeds describe different snapshots
      of one customer book, not disjoint customers).
    - ``tenure_months`` (int, 0-72): months since the customer joined; longer on long contracts.
    - ``monthly_charges`` (float): from the internet service, the plan and the number of lines.
    - ``total_charges`` (float): about tenure x monthly charges; missing for customers in their
      first month, who have not been billed yet.
    - ``num_support_calls`` (int): Poisson, more with dropped calls, fiber and dissatisfaction.
    - ``data_usage_gb`` (float): monthly mobile data, lognormal (right-skewed).
    - ``age`` (int, 18-95).
    - ``num_lines`` (int, 1-5).
    - ``days_since_last_upgrade`` (float): missing for customers who never upgraded their
      device (mostly recent ones).
    - ``dropped_call_rate`` (float, 0-1): a few percent, depending on the region.
    - ``contract`` (str): ``month-to-month``, ``one-year``, ``two-year``.
    - ``payment_method`` (str): ``electronic-check``, ``mailed-check``, ``bank-transfer``,
      ``credit-card``.
    - ``internet_service`` (str): ``dsl``, ``fiber``, ``none``.
    - ``region`` (str): ``ile-de-france``, ``auvergne-rhone-alpes``, ``nouvelle-aquitaine``,
      ``occitanie``, ``hauts-de-france``, ``provence-alpes-cote-d-azur``.
    - ``plan`` (str): ``basic``, ``standard``, ``premium``.
    - ``paperless_billing`` (str): ``yes``, ``no``.
    - ``event_time`` (datetime64): when the record was observed, sorted, spread uniformly over
      ``period`` from ``start`` (default 2024-01-01, naive; an aware ``start`` gives aware
      times).
    - ``churned`` (int 0/1, only ``with_label``): about 24 % of customers at baseline. Churn
      rises with month-to-month contracts, fiber, electronic checks, high charges, support
      calls, dropped calls and an old device, falls with tenure and long contracts, and
      depends on an unobserved satisfaction level, so a good model reaches a ROC AUC of
      about 0.85, not 1.

    The same ``(n, seed, drift, start, period)`` always gives the same frame.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if period <= timedelta(0):
        raise ValueError(f"period must be positive, got {period}")
    drift = drift or Drift()
    rng = np.random.default_rng(seed)

    cat_uniforms = rng.random((len(CATEGORICAL), n))
    cats = {name: _draw_categorical(name, cat_uniforms[i], drift) for i, name in enumerate(CATEGORICAL)}
    contract = cats["contract"]
    internet = cats["internet_service"]
    plan = cats["plan"]

    tenure_a = contract.effect({"month-to-month": 0.7, "one-year": 1.3, "two-year": 2.0}, 1.0)
    tenure_b = contract.effect({"month-to-month": 1.9, "one-year": 1.2, "two-year": 0.8}, 1.0)
    tenure = _finish_numeric(
        "tenure_months", np.minimum(np.floor(rng.beta(tenure_a, tenure_b) * 73), 72), drift
    )

    num_lines = _finish_numeric("num_lines", 1.0 + np.minimum(rng.poisson(0.7, n), 4), drift)
    age = _finish_numeric("age", _round(np.clip(rng.normal(46.0, 15.0, n), 18, 95), 0), drift)
    # Unobserved; drives both support calls and churn, which keeps the label noisy.
    satisfaction = rng.standard_normal(n)

    monthly = (
        internet.effect({"dsl": 42.0, "fiber": 72.0, "none": 22.0}, 50.0)
        + plan.effect({"basic": 0.0, "standard": 12.0, "premium": 28.0}, 10.0)
        + 6.0 * (num_lines - 1.0)
        + rng.normal(0.0, 7.0, n)
    )
    monthly = _finish_numeric("monthly_charges", _round(np.maximum(monthly, 15.0), 2), drift)

    # Price changes over the years make the total only roughly tenure x monthly.
    total = _round(tenure * monthly * rng.normal(1.0, 0.04, n), 2)
    total[tenure == 0] = np.nan
    total = _finish_numeric("total_charges", total, drift)

    log_usage_mean = (
        1.6
        + internet.effect({"dsl": 0.1, "fiber": 0.5, "none": -0.6})
        + plan.effect({"basic": 0.0, "standard": 0.15, "premium": 0.4})
        - 0.012 * (age - 46.0)
    )
    usage = _finish_numeric("data_usage_gb", _round(rng.lognormal(log_usage_mean, 0.75), 2), drift)

    region_factor = cats["region"].effect(
        {
            "ile-de-france": 0.8,
            "auvergne-rhone-alpes": 1.1,
            "nouvelle-aquitaine": 1.2,
            "occitanie": 1.15,
            "hauts-de-france": 1.0,
            "provence-alpes-cote-d-azur": 1.0,
        },
        1.0,
    )
    dropped = _finish_numeric(
        "dropped_call_rate", _round(np.clip(rng.beta(1.6, 45.0, n) * region_factor, 0, 1), 4), drift
    )

    calls_rate = np.exp(
        math.log(1.1)
        + 0.45 * satisfaction
        + 0.25 * internet.effect({"fiber": 1.0})
        + 8.0 * (dropped - 0.035)
        + 0.1 * (num_lines - 1.0)
    )
    calls = _finish_numeric("num_support_calls", rng.poisson(calls_rate).astype(np.float64), drift)

    # Devices are upgraded through the operator, so only since the customer joined.
    upgrade = _round(np.minimum(rng.exponential(300.0, n), (tenure + 1.0) * 30.44), 1)
    never_upgraded = rng.random(n) < 0.02 + 0.3 * np.exp(-tenure / 3.0)
    upgrade[never_upgraded] = np.nan
    upgrade = _finish_numeric("days_since_last_upgrade", upgrade, drift)

    c = drift.concept
    a, b = _BASELINE, _SHIFTED
    # Customers who never upgraded have the oldest possible device.
    device_age = np.where(never_upgraded, (tenure + 1.0) * 30.44, upgrade)
    logit = (
        _lerp(a.intercept, b.intercept, c)
        + contract.effect(_lerp_table(a.contract, b.contract, c))
        + internet.effect(_lerp_table(a.internet_service, b.internet_service, c))
        + cats["payment_method"].effect(_lerp_table(a.payment_method, b.payment_method, c))
        + cats["paperless_billing"].effect(_lerp_table(a.paperless_billing, b.paperless_billing, c))
        + plan.effect(_lerp_table(a.plan, b.plan, c))
        + _lerp(a.monthly_charges, b.monthly_charges, c) * (monthly - 65.0)
        + _lerp(a.log_tenure, b.log_tenure, c) * (np.log1p(tenure) - 2.8)
        + _lerp(a.support_calls, b.support_calls, c) * (calls - 1.2)
        + _lerp(a.dropped_call_rate, b.dropped_call_rate, c) * (dropped - 0.035)
        + _lerp(a.days_since_last_upgrade, b.days_since_last_upgrade, c) * (device_age - 300.0)
        + _lerp(a.log_data_usage, b.log_data_usage, c) * (np.log(usage + 0.1) - 1.6)
        + _lerp(a.age, b.age, c) * (age - 46.0)
        + _lerp(a.satisfaction, b.satisfaction, c) * satisfaction
    )
    churned = (rng.random(n) < _sigmoid(logit)).astype(np.int64)

    offsets = np.sort(rng.random(n)) * period.total_seconds()
    origin = pd.Timestamp(start if start is not None else DEFAULT_START)
    event_time = origin + pd.to_timedelta(np.floor(offsets), unit="s")

    numeric: dict[str, FloatArray] = {
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": total,
        "num_support_calls": calls,
        "data_usage_gb": usage,
        "age": age,
        "num_lines": num_lines,
        "days_since_last_upgrade": upgrade,
        "dropped_call_rate": dropped,
    }
    _inject_missing(numeric, cats, drift, seed, n)

    width = max(6, len(str(max(n - 1, 0))))
    columns: dict[str, Any] = {ID: "C" + pd.Series(np.arange(n)).astype(str).str.zfill(width)}
    for name in NUMERIC:
        values = numeric[name]
        keep_int = name in _INTEGER and not drift.missing_rate.get(name, 0.0) > 0
        columns[name] = values.astype(np.int64) if keep_int else values
    for name in CATEGORICAL:
        # Inferred rather than forced: forcing "str" turns NaN into "nan" on pandas 2.
        columns[name] = pd.Series(cats[name].strings())
    columns[TIME] = event_time
    if with_label:
        columns[LABEL] = churned
    return pd.DataFrame(columns)


def _inject_missing(
    numeric: dict[str, FloatArray], cats: dict[str, _Categorical], drift: Drift, seed: int, n: int
) -> None:
    for name, rate in drift.missing_rate.items():
        # A stream per feature, apart from the main one: asking for holes in one column
        # leaves every other value of the frame as it was.
        uniform = np.random.default_rng([seed, 1, FEATURES.index(name)]).random(n)
        missing = np.isnan(numeric[name]) if name in numeric else cats[name].codes < 0
        already = float(missing.mean()) if n else 0.0
        if rate <= already:
            continue
        extra = ~missing & (uniform < (rate - already) / (1.0 - already))
        if name in numeric:
            numeric[name][extra] = np.nan
        else:
            cats[name].codes[extra] = -1


def split_features(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The model's inputs (:data:`FEATURES`, in that order) and the label of a generated frame."""
    absent = [column for column in [*FEATURES, LABEL] if column not in frame.columns]
    if absent:
        raise KeyError(f"frame lacks the columns {absent}")
    return frame.loc[:, FEATURES].copy(), frame[LABEL].copy()


def make_model(kind: str = "hgb", seed: int = 0) -> Pipeline:
    """An unfitted pipeline that takes a :data:`FEATURES` frame: ``"hgb"`` or ``"logreg"``.

    Only scikit-learn classes are used, so that a fitted model saved with skops loads
    without trusting any other code. Categorical levels unseen in training and missing ones
    are both encoded as -1; gradient boosting handles missing numeric values natively.
    """
    categories = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
    )
    if kind == "hgb":
        preprocess = ColumnTransformer(
            [("categorical", categories, CATEGORICAL), ("numeric", "passthrough", NUMERIC)],
            verbose_feature_names_out=False,
        )
        # Ordinal codes go in as numbers: declaring them categorical would make the model
        # hold a functools.partial, a type that loading with skops would have to trust.
        classifier: Any = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    elif kind == "logreg":
        numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        preprocess = ColumnTransformer(
            [("categorical", categories, CATEGORICAL), ("numeric", numbers, NUMERIC)],
            verbose_feature_names_out=False,
        )
        classifier = LogisticRegression(max_iter=1000)
    else:
        raise ValueError(f"Unknown model kind {kind!r}; choose 'hgb' or 'logreg'")
    model = Pipeline([("preprocess", preprocess), ("classifier", classifier)])
    model.set_output(transform="pandas")
    return model


_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def write_dataset(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` without its index, as CSV (``.csv``, possibly compressed: ``.csv.gz``...)
    or Parquet (``.parquet``, ``.pq``), chosen by the extension of ``path``."""
    target = os.fspath(path)
    name = target.lower()
    if not name.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES):
        raise ValueError(
            f"Cannot tell the format of {target!r}; use one of {list(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}"
        )
    if "://" not in target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(_CSV_SUFFIXES):
        frame.to_csv(target, index=False)
    else:
        frame.to_parquet(target, index=False)
