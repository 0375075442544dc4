"""``compute_drift``: one window against one reference, with decisions that respect sample size.

For each column the engine measures effect sizes (the configured methods), runs one
significance test for the distribution (KS for numeric columns, chi-square for
categorical ones) and, where configured, checks the share of missing values and of new
categories. A check drifts only when

1. the window has at least ``min_n`` values (otherwise: insufficient data);
2. its effect size reaches its threshold: the method's own, raised to the noise the
   reference shows for that statistic at the window's size; and
3. its p-value survives Benjamini-Hochberg across every test of the report.

At a million rows every p-value is tiny, so (2) decides; on small windows noise can
produce large effect sizes, so (3) and the noise floor decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from passerelle.drift.config import DETAIL_METHODS, DriftConfig
from passerelle.drift.exact import exact_chi2, ks_exact_p_value, ks_fast_p_value
from passerelle.drift.histograms import CategoricalHist, CategoricalPair, Hist, NumericHist, NumericPair, Pair
from passerelle.drift.methods import DriftMethod
from passerelle.drift.multivariate import project
from passerelle.drift.report import Check, ColumnDrift, DriftReport, MultivariateDrift, SchemaDrift, Status
from passerelle.drift.sketch import ColumnSpec, ReferenceStats, Table, WindowSketch
from passerelle.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]
_LISTED = 10


def benjamini_hochberg(p_values: Any) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the order given."""
    p = np.asarray(p_values, dtype=np.float64)
    count = p.size
    if not count:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * count / np.arange(1, count + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(count)
    out[order] = np.minimum(adjusted, 1.0)
    return out


@dataclass
class _Test:
    name: str
    statistic: float
    p_value: float
    q_value: float = float("nan")


@dataclass
class _Draft:
    """A check before the q-values are known."""

    method: str
    effect_size: float
    base_threshold: float
    noise_threshold: float | None
    test: _Test

    @property
    def threshold(self) -> float:
        return max(self.base_threshold, self.noise_threshold or 0.0)


@dataclass
class _Column:
    spec: ColumnSpec
    reference_n: int
    window_n: int
    distribution: list[_Draft] = field(default_factory=list)
    others: list[_Draft] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def compute_drift(
    reference: ReferenceStats, window: WindowSketch | Table, config: DriftConfig | None = None
) -> DriftReport:
    """Compare ``window`` (a sketch, or a frame summarised on the spot) with ``reference``."""
    config = config or DriftConfig()
    sketch = window if isinstance(window, WindowSketch) else WindowSketch.from_frame(reference, window)
    if sketch.reference_key != reference.key:
        raise InvalidInputError("this window was summarised against other reference statistics")

    drafts: list[_Column] = []
    for name, spec in reference.specs.items():
        if name in config.ignore:
            continue
        noise = reference.noise.get(name, {})
        drafts.append(_evaluate(spec, reference.hists[name], sketch.hists[name], noise, config))

    tests = {id(d.test): d.test for col in drafts for d in [*col.distribution, *col.others]}
    q_values = benjamini_hochberg([t.p_value for t in tests.values()])
    for test, q in zip(tests.values(), q_values.tolist(), strict=True):
        test.q_value = q

    columns = tuple(_verdict(col, config) for col in drafts)
    features = [c for c in columns if c.role == "feature"]
    evaluated = [c for c in features if c.status != "insufficient data"]
    share = sum(c.drifted for c in evaluated) / len(evaluated) if evaluated else None
    dataset_drift = share is not None and share >= config.drift_share
    multivariate = _multivariate(reference, sketch, config) if config.multivariate else None
    status: Status
    if not evaluated:
        status = "insufficient data"
    elif (
        dataset_drift
        or any(c.drifted for c in columns if c.role == "prediction")
        or (multivariate is not None and multivariate.drifted)
    ):
        status = "drift"
    else:
        status = "ok"
    schema = sketch.schema
    return DriftReport(
        columns=columns,
        schema=SchemaDrift(
            checked=sketch.validate,
            rows=schema.rows,
            missing_columns=schema.absent,
            added_columns=schema.added,
            type_changes=schema.types,
            out_of_signature=schema.problems,
            rejected_rows=schema.rejected,
        ),
        multivariate=multivariate,
        share_drifted=share,
        dataset_drift=dataset_drift,
        status=status,
        reference_rows=reference.rows,
        window_rows=sketch.rows,
        config=config,
        skipped=dict(reference.skipped),
    )


# ---------------------------------------------------------------------------------------
# one column


def _evaluate(
    spec: ColumnSpec, ref: Hist, win: Hist, noise: dict[str, float], config: DriftConfig
) -> _Column:
    pair = spec.pair(ref, win)
    m, n = pair.reference_n, pair.window_n
    col = _Column(spec, m, n)
    col.details = _describe(pair)
    enough = n >= config.min_n and m >= config.min_reference_n
    if enough:
        test = _distribution_test(pair, config)
        col.details["test"] = {"name": test.name, "statistic": test.statistic, "p_value": test.p_value}
        effective = m * n / (m + n)
        for method in config.methods_for(spec.name, spec.kind, m):
            col.distribution.append(_draft(method, pair, test, noise, effective, config))
        col.details["statistics"] = _statistics(pair, config.methods_for(spec.name, spec.kind, m))
    if config.missing_rate_change is not None and win.rows >= config.min_n:
        col.others.append(_missing_check(ref, win, config.missing_rate_change))
    if config.new_category_share is not None and isinstance(pair, CategoricalPair) and enough:
        col.others.append(_new_category_check(pair, config.new_category_share))
    return col


def _draft(
    method: DriftMethod,
    pair: Pair,
    test: _Test,
    noise: dict[str, float],
    effective: float,
    config: DriftConfig,
) -> _Draft:
    level = noise.get(method.key())
    floor = None
    if level is not None and config.noise_multiplier > 0:
        floor = config.noise_multiplier * level * effective ** (-method.null_power)
    return _Draft(method.name, method.statistic(pair), method.threshold, floor, test)


def _distribution_test(pair: Pair, config: DriftConfig) -> _Test:
    m, n = pair.reference_n, pair.window_n
    if isinstance(pair, NumericPair):
        units = pair.ks_units()
        statistic = units / (m * n)
        if m + n <= config.ks_exact_limit:
            return _Test("ks", statistic, ks_exact_p_value(m, n, units))
        return _Test("ks", statistic, ks_fast_p_value(m, n, statistic))
    reference, window = pair.counts()
    result = exact_chi2(reference, window)
    return _Test("chi2", result.statistic, result.p_value)


def _unusable(hist: Hist) -> int:
    """Values a model cannot use: missing ones, and text or infinities in a numeric column."""
    return hist.missing + (hist.invalid if isinstance(hist, NumericHist) else 0)


def _missing_check(ref: Hist, win: Hist, threshold: float) -> _Draft:
    ref_missing, win_missing = _unusable(ref), _unusable(win)
    ref_rate = ref_missing / ref.rows if ref.rows else 0.0
    win_rate = win_missing / win.rows
    result = exact_chi2([ref_missing, ref.rows - ref_missing], [win_missing, win.rows - win_missing])
    test = _Test("chi2", result.statistic, result.p_value)
    return _Draft("missing rate", abs(win_rate - ref_rate), threshold, None, test)


def _new_category_check(pair: CategoricalPair, threshold: float) -> _Draft:
    _, window = pair.counts()
    new = int(window[pair.new_levels()].sum())
    n, m = pair.window_n, pair.reference_n
    result = exact_chi2([0, m], [new, n - new])
    test = _Test("chi2", result.statistic, result.p_value)
    return _Draft("new categories", new / n if n else 0.0, threshold, None, test)


def _passes(draft: _Draft, config: DriftConfig) -> bool:
    significant = config.fdr is None or draft.test.q_value <= config.fdr
    return draft.effect_size >= draft.threshold and significant


def _ratio(draft: _Draft) -> float:
    if draft.threshold > 0:
        return draft.effect_size / draft.threshold
    return float("inf") if draft.effect_size > 0 else 0.0


def _verdict(col: _Column, config: DriftConfig) -> ColumnDrift:
    checks: list[tuple[_Draft, Check]] = []
    for draft in [*col.distribution, *col.others]:
        check = Check(
            method=draft.method,
            effect_size=draft.effect_size,
            threshold=draft.threshold,
            test=draft.test.name,
            statistic=draft.test.statistic,
            p_value=draft.test.p_value,
            q_value=draft.test.q_value,
            drifted=_passes(draft, config),
            base_threshold=draft.base_threshold,
            noise_threshold=draft.noise_threshold,
        )
        checks.append((draft, check))
    drifted = [item for item in checks if item[1].drifted]
    candidates = drifted or [item for item in checks if item[0] in col.distribution] or checks
    lead = max(candidates, key=lambda item: _ratio(item[0]))[1] if candidates else None
    status: Status = "insufficient data" if not checks else ("drift" if drifted else "ok")
    spec = col.spec
    return ColumnDrift(
        column=spec.name,
        kind=spec.kind,
        role=spec.role,
        status=status,
        drifted=bool(drifted),
        method=None if lead is None else lead.method,
        effect_size=None if lead is None else lead.effect_size,
        threshold=None if lead is None else lead.threshold,
        statistic=None if lead is None else lead.statistic,
        p_value=None if lead is None else lead.p_value,
        q_value=None if lead is None else lead.q_value,
        reference_n=col.reference_n,
        window_n=col.window_n,
        checks=tuple(check for _, check in checks),
        details=col.details,
    )


def _statistics(pair: Pair, methods: tuple[DriftMethod, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for method in [*methods, *DETAIL_METHODS]:
        if method.supports(pair.kind) and method.name not in out:
            out[method.name] = method.statistic(pair)
    return out


def _describe(pair: Pair) -> dict[str, Any]:
    """Figures that help a reader see what moved; they decide nothing."""
    ref, win = pair.reference, pair.window
    out: dict[str, Any] = {
        "reference_missing_rate": ref.missing / ref.rows if ref.rows else None,
        "window_missing_rate": win.missing / win.rows if win.rows else None,
        "window_rows": win.rows,
    }
    if isinstance(pair, NumericPair):
        assert isinstance(ref, NumericHist)
        assert isinstance(win, NumericHist)
        grid = pair.grid
        ref_mean, ref_std = ref.mean(grid), ref.std()
        win_mean, win_std = win.mean(grid), win.std()
        out |= {
            "window_invalid": win.invalid,
            "reference_mean": ref_mean,
            "window_mean": win_mean,
            "reference_std": ref_std,
            "window_std": win_std,
            "mean_shift_in_std": (win_mean - ref_mean) / ref_std if ref_std > 0 else None,
            "std_ratio": win_std / ref_std if ref_std > 0 else None,
            "out_of_reference_range": (
                (int(win.counts[0]) + int(win.counts[-1])) / pair.window_n if pair.window_n else None
            ),
        }
        return out
    assert isinstance(ref, CategoricalHist)
    assert isinstance(win, CategoricalHist)
    reference, window = pair.counts()
    m, n = max(pair.reference_n, 1), max(pair.window_n, 1)
    shares = [
        (level, r / m, w / n)
        for level, r, w in zip(pair.levels, reference.tolist(), window.tolist(), strict=True)
    ]
    moved = sorted(shares, key=lambda item: -abs(item[2] - item[1]))[:_LISTED]
    new = pair.new_levels()
    out |= {
        "levels_moved": [{"level": lv, "reference_share": r, "window_share": w} for lv, r, w in moved],
        "new_levels": {
            pair.levels[i]: int(window[i])
            for i in sorted(np.flatnonzero(new).tolist(), key=lambda i: -int(window[i]))[:_LISTED]
        },
        # a level vanished when the window should have shown it at least five times
        "vanished_levels": [
            level
            for level, r, w in zip(pair.levels, reference.tolist(), window.tolist(), strict=True)
            if r and not w and r / m * pair.window_n >= 5
        ][:_LISTED],
    }
    return out


# ---------------------------------------------------------------------------------------
# multivariate


def _multivariate(
    reference: ReferenceStats, sketch: WindowSketch, config: DriftConfig
) -> MultivariateDrift | None:
    standard, moments = reference.standard, sketch.moments
    if standard is None or moments is None or not reference.chunk_moments:
        return None
    projection = project(reference.chunk_moments, config.explained_variance)
    rows = moments.rows
    expected = projection.reference_error
    if rows < config.min_n:
        return MultivariateDrift(
            columns=standard.columns,
            components=projection.components,
            explained_variance=projection.explained,
            reference_error=expected,
            window_error=projection.error(moments),
            effect_size=float("nan"),
            threshold=config.multivariate_change,
            band=(float("nan"), float("nan")),
            window_rows=rows,
            drifted=False,
            status="insufficient data",
        )
    observed = projection.error(moments)
    spread = float(np.std(projection.chunk_errors, ddof=1)) if projection.chunk_errors.size > 1 else 0.0
    # The chunks' spread, narrowed to the window's size: a mean over n rows varies as 1/sqrt(n).
    half = config.multivariate_sigmas * spread * np.sqrt(projection.chunk_rows / rows)
    # A reference whose kept components explain everything has no error to compare to.
    change = observed / expected - 1.0 if expected > 0 else (0.0 if observed <= 0 else float("inf"))
    drifted = abs(change) >= config.multivariate_change and abs(observed - expected) > half
    return MultivariateDrift(
        columns=standard.columns,
        components=projection.components,
        explained_variance=projection.explained,
        reference_error=expected,
        window_error=observed,
        effect_size=change,
        threshold=config.multivariate_change,
        band=(expected - float(half), expected + float(half)),
        window_rows=rows,
        drifted=bool(drifted),
        status="drift" if drifted else "ok",
    )
