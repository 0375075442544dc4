"""How well a version performs, from labelled predictions: realized, estimated, and A/B verdicts.

Pure functions on arrays and frames; nothing here reads the store (``passerelle.feedback`` does,
and hands frames to these functions). See ``docs/monitoring.md`` and ADR 9.

- :func:`classification_metrics` and :func:`regression_metrics` give each figure with its
  sample count and an interval: Wilson for proportions (accuracy, binary precision and recall),
  DeLong for a binary ROC AUC, and a seeded percentile bootstrap (200 resamples, vectorised)
  for everything else.
- :func:`estimate_classification` estimates a classifier's figures before its labels arrive,
  from its probabilities calibrated on a labelled reference (:class:`Calibrator`);
  :func:`estimated_vs_realized` puts the estimate beside the realized figure and the gap.
- :func:`ab_verdict` compares two routes on one metric and says "B better", "A better",
  "no significant difference" or "not enough data yet", with the test, the interval and the
  number of labelled rows still needed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from passerelle.errors import InvalidInputError

__all__ = [
    "AB_METRICS",
    "ArmEstimate",
    "Calibrator",
    "Metric",
    "Reconciled",
    "Verdict",
    "ab_verdict",
    "ab_verdict_frames",
    "arm_estimate",
    "by_window",
    "classification_metrics",
    "delong",
    "estimate_classification",
    "estimate_frame",
    "estimated_vs_realized",
    "evaluate",
    "frame_classes",
    "proportion_estimate",
    "regression_metrics",
    "wilson_interval",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_RESAMPLES = 200
DEFAULT_SEED = 0
ECE_BINS = 10
# A bootstrap block's index matrix holds about this many entries: enough to vectorise,
# small enough (16 MB) that a window of millions of rows does not exhaust memory.
_BLOCK_CELLS = 2_000_000
# sklearn clips probabilities to the float64 machine epsilon before taking logs; so do we,
# so that log loss agrees with it to the last digit.
_EPS = float(np.finfo(np.float64).eps)

Task = Literal["classification", "regression"]


# ------------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Metric:
    """One figure over ``n`` rows, with its interval at the confidence it was asked for.

    ``interval`` names how the interval was obtained: ``wilson``, ``delong``, ``bootstrap``,
    ``simulation`` (estimates: where the realized figure should fall if the calibration holds)
    or ``none``. ``value`` is NaN when the figure is undefined on these rows (no positive row
    for a recall, one class only for an AUC...).
    """

    name: str
    value: float
    n: int
    low: float
    high: float
    interval: str
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must be between 0 and 1, got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(
    successes: npt.ArrayLike, n: npt.ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval of a proportion; works element-wise on arrays. NaN where ``n`` is 0."""
    z = _z(confidence)
    x = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = m + z * z
        center = (x + z * z / 2.0) / denom
        half = z / denom * np.sqrt(np.maximum(x * (m - x) / m, 0.0) + z * z / 4.0)
        low = np.where(m > 0, np.clip(center - half, 0.0, 1.0), np.nan)
        high = np.where(m > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    return low, high


def _proportion(name: str, successes: int, n: int, confidence: float) -> Metric:
    low, high = wilson_interval(successes, n, confidence)
    value = successes / n if n else math.nan
    return Metric(name, value, n, float(low), float(high), "wilson")


def _percentiles(drawn: FloatArray, wanted: int, confidence: float) -> tuple[float, float]:
    drawn = drawn[np.isfinite(drawn)]
    # Figures undefined on most draws (a class almost absent) get no interval rather than one
    # computed from the few draws where they happened to exist.
    if drawn.size == 0 or drawn.size < wanted / 2:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(drawn, [tail, 1.0 - tail])
    return float(low), float(high)


def _bootstrap(
    stat: Callable[[IntArray], FloatArray], n: int, *, resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile interval of ``stat`` over resampled row indices, drawn in vectorised blocks.

    ``stat`` takes a ``(b, n)`` matrix of row indices and returns ``b`` values. The same seed
    gives the same resamples to every figure of a call, so their intervals are coherent.
    """
    if n < 2 or resamples < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    values: list[FloatArray] = []
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        values.append(np.asarray(stat(rng.integers(0, n, size=(size, n))), dtype=np.float64))
        done += size
    return _percentiles(np.concatenate(values), resamples, confidence)


def _simulate(
    stat: Callable[[IntArray], FloatArray],
    chances: FloatArray,
    *,
    resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float]:
    """Percentile interval of ``stat`` over label matrices drawn from per-row class chances."""
    n, k = chances.shape
    if n < 2 or resamples < 1:
        return math.nan, math.nan
    cum = np.cumsum(chances, axis=1)
    cum[:, -1] = 1.0
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // (n * k))
    values: list[FloatArray] = []
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        u = rng.random((size, n, 1))
        labels = (u > cum[None, :, :]).sum(axis=-1).astype(np.int64)
        values.append(np.asarray(stat(labels), dtype=np.float64))
        done += size
    return _percentiles(np.concatenate(values), resamples, confidence)


def _safe_div(num: npt.ArrayLike, den: npt.ArrayLike) -> FloatArray:
    a = np.asarray(num, dtype=np.float64)
    b = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


# ---------------------------------------------------------------------------- classification


def _codes(values: Sequence[Any] | npt.ArrayLike, classes: Sequence[Any], what: str) -> IntArray:
    """Position of each value in ``classes``; -1 for a value outside them (always a wrong answer)."""
    series = pd.Series(np.asarray(values, dtype=object))
    if series.isna().any():
        raise InvalidInputError(f"{what} has missing values; drop unlabelled rows first")
    lookup = {c: i for i, c in enumerate(classes)}
    return np.fromiter((lookup.get(v, -1) for v in series), dtype=np.int64, count=len(series))


def _binary_auc_ranks(ranks: FloatArray, positive: BoolArray) -> FloatArray:
    """Mann-Whitney AUC along the last axis from average ranks of the scores."""
    n_pos = positive.sum(axis=-1).astype(np.float64)
    n_neg = positive.shape[-1] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=-1)
    return _safe_div(rank_sum - n_pos * (n_pos + 1.0) / 2.0, n_pos * n_neg)


def _auc_batch(score: FloatArray, positive: BoolArray) -> FloatArray:
    ranks = np.asarray(stats.rankdata(score, axis=-1), dtype=np.float64)
    return _binary_auc_ranks(ranks, positive)


def delong(score: npt.ArrayLike, positive: npt.ArrayLike) -> tuple[float, float]:
    """ROC AUC and its DeLong variance (midrank algorithm of Sun and Xu, 2014).

    NaN for both when one of the two classes is absent.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=np.bool_)
    x_pos, x_neg = s[y], s[~y]
    m, k = x_pos.size, x_neg.size
    if m == 0 or k == 0:
        return math.nan, math.nan
    tx = stats.rankdata(x_pos)
    ty = stats.rankdata(x_neg)
    tz = stats.rankdata(np.concatenate([x_pos, x_neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * k))
    v01 = (tz[:m] - tx) / k
    v10 = 1.0 - (tz[m:] - ty) / m
    s01 = float(np.var(v01, ddof=1)) if m > 1 else 0.0
    s10 = float(np.var(v10, ddof=1)) if k > 1 else 0.0
    return auc, s01 / m + s10 / k


def _delong_metric(name: str, score: FloatArray, positive: BoolArray, confidence: float) -> Metric:
    auc, var = delong(score, positive)
    if not math.isfinite(auc):
        return Metric(name, math.nan, int(score.size), math.nan, math.nan, "delong")
    z = _z(confidence)
    se = math.sqrt(max(var, 0.0))
    if 0.0 < auc < 1.0 and se > 0:
        # On the logit scale the interval stays inside [0, 1] and covers better near 1.
        centre = math.log(auc / (1.0 - auc))
        spread = z * se / (auc * (1.0 - auc))
        low, high = 1.0 / (1.0 + math.exp(-(centre - spread))), 1.0 / (1.0 + math.exp(-(centre + spread)))
    else:
        low, high = max(0.0, auc - z * se), min(1.0, auc + z * se)
    return Metric(name, auc, int(score.size), low, high, "delong")


def _ece_batch(conf: FloatArray, hit: FloatArray, bins: IntArray) -> FloatArray:
    """Expected calibration error along the last axis: sum over bins of |hits - confidence| / n."""
    n = conf.shape[-1]
    total = np.zeros(conf.shape[:-1], dtype=np.float64)
    for b in range(ECE_BINS):
        inside = bins == b
        total += np.abs(np.where(inside, hit - conf, 0.0).sum(axis=-1))
    return np.asarray(total / n, dtype=np.float64)


def _ece_bins(conf: FloatArray) -> IntArray:
    # Equal-width bins with the edges of sklearn.calibration.calibration_curve("uniform").
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return np.searchsorted(edges[1:-1], conf).astype(np.int64)


def classification_metrics(
    y_true: Sequence[Any] | npt.ArrayLike,
    y_pred: Sequence[Any] | npt.ArrayLike,
    proba: npt.ArrayLike | None = None,
    *,
    classes: Sequence[Any] | None = None,
    positive: Any = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Metric]:
    """Accuracy, precision, recall, F1, and with probabilities ROC AUC, log loss and calibration error.

    ``classes`` orders the columns of ``proba`` (default: the sorted labels and predictions).
    With two classes, precision, recall, F1 and AUC are those of ``positive`` (default: the
    last class, as scikit-learn's ``pos_label=1`` for 0/1 labels); with more, they are macro
    averages (one-vs-rest for the AUC) over the classes seen in the labels or predictions.
    The calibration error is the expected calibration error on 10 equal-width bins: of the
    positive class's probability for two classes, of the top class's otherwise.
    """
    truth = np.asarray(y_true, dtype=object)
    pred_values = np.asarray(y_pred, dtype=object)
    if truth.shape != pred_values.shape or truth.ndim != 1:
        raise InvalidInputError("labels and predictions must be two sequences of the same length")
    if classes is None:
        classes = sorted(set(truth.tolist()) | set(pred_values.tolist()), key=_sort_key)
    classes = list(classes)
    y = _codes(truth, classes, "the labels")
    pred = _codes(pred_values, classes, "the predictions")
    n = int(y.size)
    k = len(classes)
    out: dict[str, Metric] = {}
    boot: dict[str, Any] = {"resamples": resamples, "seed": seed, "confidence": confidence}

    hit = y == pred
    out["accuracy"] = _proportion("accuracy", int(hit.sum()), n, confidence)

    if k == 2:
        pos = classes.index(positive) if positive is not None else 1
        pred_pos, true_pos = pred == pos, y == pos
        both = pred_pos & true_pos
        tp = int(both.sum())
        out["precision"] = _proportion("precision", tp, int(pred_pos.sum()), confidence)
        out["recall"] = _proportion("recall", tp, int(true_pos.sum()), confidence)

        def f1(idx: IntArray) -> FloatArray:
            return _safe_div(
                2.0 * both[idx].sum(axis=1), pred_pos[idx].sum(axis=1) + true_pos[idx].sum(axis=1)
            )

        f1_value = float(_safe_div(2.0 * tp, pred_pos.sum() + true_pos.sum()))
        out["f1"] = Metric("f1", f1_value, n, *_bootstrap(f1, n, **boot), "bootstrap")
    else:
        seen = sorted(set(y[y >= 0].tolist()) | set(pred[pred >= 0].tolist()))

        def macro(idx: IntArray | None) -> tuple[FloatArray, FloatArray, FloatArray]:
            ys = y if idx is None else y[idx]
            ps = pred if idx is None else pred[idx]
            shape = ys.shape[:-1]
            p_sum, r_sum, f_sum = np.zeros(shape), np.zeros(shape), np.zeros(shape)
            for c in seen:
                is_pred, is_true = ps == c, ys == c
                tp_c = (is_pred & is_true).sum(axis=-1)
                n_pred, n_true = is_pred.sum(axis=-1), is_true.sum(axis=-1)
                # scikit-learn's convention for macro averages: a class never predicted
                # (or never present) contributes 0, not an undefined value.
                p_sum += np.nan_to_num(_safe_div(tp_c, n_pred))
                r_sum += np.nan_to_num(_safe_div(tp_c, n_true))
                f_sum += np.nan_to_num(_safe_div(2.0 * tp_c, n_pred + n_true))
            count = max(len(seen), 1)
            return p_sum / count, r_sum / count, f_sum / count

        whole = macro(None)
        for i, name in enumerate(("precision", "recall", "f1")):

            def part(idx: IntArray, i: int = i) -> FloatArray:
                return macro(idx)[i]

            out[name] = Metric(name, float(whole[i]), n, *_bootstrap(part, n, **boot), "bootstrap")

    if proba is None:
        return out
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape != (n, k):
        raise InvalidInputError(
            f"probabilities must have shape ({n}, {k}) for classes {classes}, got {p.shape}"
        )

    if k == 2:
        pos = classes.index(positive) if positive is not None else 1
        out["roc_auc"] = _delong_metric("roc_auc", p[:, pos], y == pos, confidence)
    else:
        present = [c for c in range(k) if 0 < int((y == c).sum()) < n]

        def ovr(idx: IntArray | None) -> FloatArray:
            values = []
            for c in present:
                score = p[:, c] if idx is None else p[:, c][idx]
                is_c = (y == c) if idx is None else (y[idx] == c)
                values.append(_auc_batch(score, is_c))
            if not values:
                return np.full(() if idx is None else idx.shape[0], np.nan)
            with np.errstate(all="ignore"):
                return np.asarray(np.mean(np.stack(values), axis=0), dtype=np.float64)

        auc_value = float(ovr(None)) if present else math.nan
        out["roc_auc"] = Metric("roc_auc", auc_value, n, *_bootstrap(ovr, n, **boot), "bootstrap")

    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    row_p = np.where(y >= 0, clipped[np.arange(n), np.maximum(y, 0)], _EPS)
    losses = -np.log(row_p)
    out["log_loss"] = Metric(
        "log_loss",
        float(losses.mean()) if n else math.nan,
        n,
        *_bootstrap(lambda idx: losses[idx].mean(axis=1), n, **boot),
        "bootstrap",
    )

    if k == 2:
        pos = classes.index(positive) if positive is not None else 1
        conf = p[:, pos]
        outcome = (y == pos).astype(np.float64)
    else:
        conf = p.max(axis=1)
        outcome = (p.argmax(axis=1) == y).astype(np.float64)
    bins = _ece_bins(conf)
    ece_value = float(_ece_batch(conf, outcome, bins)) if n else math.nan
    out["calibration_error"] = Metric(
        "calibration_error",
        ece_value,
        n,
        *_bootstrap(lambda idx: _ece_batch(conf[idx], outcome[idx], bins[idx]), n, **boot),
        "bootstrap",
    )
    return out


def _sort_key(value: Any) -> tuple[str, Any]:
    # Mixed kinds (1 and "1") must still sort; within a kind the natural order is kept.
    return (type(value).__name__, value)


# -------------------------------------------------------------------------------- regression


def regression_metrics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Metric]:
    """MAE, RMSE, MAPE and R², each with a bootstrap interval.

    MAPE divides by ``max(|y|, eps)`` as scikit-learn does, so a zero label gives a huge term
    rather than an error. R² is NaN when the labels do not vary.
    """
    y = np.asarray(y_true, dtype=np.float64)
    f = np.asarray(y_pred, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 1:
        raise InvalidInputError("labels and predictions must be two sequences of the same length")
    if not (np.isfinite(y).all() and np.isfinite(f).all()):
        raise InvalidInputError("labels and predictions must be finite numbers; drop unlabelled rows first")
    n = int(y.size)
    err = f - y
    abs_err, sq_err = np.abs(err), err * err
    pct = abs_err / np.maximum(np.abs(y), _EPS)
    boot: dict[str, Any] = {"resamples": resamples, "seed": seed, "confidence": confidence}

    def r2(idx: IntArray | None) -> FloatArray:
        ys = y if idx is None else y[idx]
        sq = sq_err if idx is None else sq_err[idx]
        ss_tot = ((ys - ys.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
        ss_res = sq.sum(axis=-1)
        return 1.0 - _safe_div(ss_res, ss_tot)

    def mean_of(values: FloatArray) -> float:
        return float(values.mean()) if n else math.nan

    return {
        "mae": Metric(
            "mae", mean_of(abs_err), n, *_bootstrap(lambda i: abs_err[i].mean(axis=1), n, **boot), "bootstrap"
        ),
        "rmse": Metric(
            "rmse",
            math.sqrt(mean_of(sq_err)) if n else math.nan,
            n,
            *_bootstrap(lambda i: np.sqrt(sq_err[i].mean(axis=1)), n, **boot),
            "bootstrap",
        ),
        "mape": Metric(
            "mape", mean_of(pct), n, *_bootstrap(lambda i: pct[i].mean(axis=1), n, **boot), "bootstrap"
        ),
        "r2": Metric(
            "r2", float(r2(None)) if n > 1 else math.nan, n, *_bootstrap(r2, n, **boot), "bootstrap"
        ),
    }


# ---------------------------------------------------------------------------------- frames


PROBA_PREFIX = "proba_"


def frame_classes(frame: pd.DataFrame) -> list[str]:
    """The classes of a labelled frame, in the order of its ``proba_<class>`` columns.

    A column empty on every row is left out: a frame read across versions has one column
    per class of any version, and a version without that class has no probability for it.
    """
    return [
        str(c)[len(PROBA_PREFIX) :]
        for c in frame.columns
        if str(c).startswith(PROBA_PREFIX) and (frame.empty or bool(frame[c].notna().any()))
    ]


def _as_class_text(values: pd.Series[Any]) -> npt.NDArray[Any]:
    # Probability columns are named by the text of each class (JSON object keys), so labels
    # and predictions are compared to them as text: 1 -> "1", True -> "True".
    return np.asarray([None if _missing(v) else str(v) for v in values], dtype=object)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    # .loc with a boolean array: plain [] would read an empty list as a selection of columns.
    mask = np.array([not _missing(v) for v in frame["label"]], dtype=np.bool_)
    return frame.loc[mask]


def _infer_task(frame: pd.DataFrame) -> Task:
    if frame_classes(frame):
        return "classification"
    preds = frame["prediction"].dropna()
    if len(preds) and all(isinstance(v, float) for v in preds):
        return "regression"
    if pd.api.types.is_float_dtype(frame["prediction"].dtype):
        return "regression"
    return "classification"


def evaluate(
    frame: pd.DataFrame,
    *,
    task: Task | None = None,
    positive: Any = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Metric]:
    """The realized figures of a labelled frame (``passerelle.feedback.labelled``'s shape).

    Rows without a label are ignored. ``task`` defaults to classification when the frame has
    probability columns or non-float predictions, regression otherwise.
    """
    task = task or _infer_task(frame)
    rows = _with_labels(frame)
    if task == "regression":
        return regression_metrics(
            rows["label"].to_numpy(dtype=np.float64),
            rows["prediction"].to_numpy(dtype=np.float64),
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        )
    classes = frame_classes(frame)
    truth = _as_class_text(rows["label"])
    pred = _as_class_text(rows["prediction"])
    proba = rows[[PROBA_PREFIX + c for c in classes]].to_numpy(dtype=np.float64) if classes else None
    if proba is not None and np.isnan(proba).any():
        # A row logged without a probability for some class (another version's classes):
        # probability figures would be wrong, the others are still right.
        proba = None
    if not classes:
        classes = sorted(set(truth.tolist()) | set(pred.tolist()))
    return classification_metrics(
        truth,
        pred,
        proba,
        classes=classes,
        positive=None if positive is None else str(positive),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def by_window(
    frame: pd.DataFrame,
    every: dt.timedelta | str,
    *,
    task: Task | None = None,
    positive: Any = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Realized figures per window of prediction time and per version, one row per figure.

    Windows are aligned on the Unix epoch in UTC (``every="1D"`` gives calendar days), and a
    row belongs to the window of its prediction, whenever its label arrived: recomputing after
    late labels changes the figures of the windows those labels belong to, and only those.
    """
    columns = ["window_start", "window_end", "model", "version", "metric", "value", "n", "low", "high"]
    columns += ["interval"]
    labelled_rows = _with_labels(frame)
    if labelled_rows.empty:
        return pd.DataFrame(columns=columns)
    step = pd.Timedelta(every)
    starts = pd.to_datetime(labelled_rows["at"], utc=True).dt.floor(step)
    task = task or _infer_task(frame)
    records: list[dict[str, Any]] = []
    grouped = labelled_rows.assign(window_start=starts).groupby(
        ["window_start", "model", "version"], sort=True
    )
    for (start, model, version), group in grouped:
        figures = evaluate(
            group, task=task, positive=positive, confidence=confidence, resamples=resamples, seed=seed
        )
        begins = pd.Timestamp(start)  # type: ignore[arg-type]
        for m in figures.values():
            records.append(
                {
                    "window_start": begins,
                    "window_end": begins + step,
                    "model": model,
                    "version": version,
                    "metric": m.name,
                    "value": m.value,
                    "n": m.n,
                    "low": m.low,
                    "high": m.high,
                    "interval": m.interval,
                }
            )
    return pd.DataFrame.from_records(records, columns=columns)


# ----------------------------------------------------------------------- estimated performance


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.asarray(np.log(q / (1.0 - q)), dtype=np.float64)


def _platt_fit(score: FloatArray, outcome: FloatArray) -> tuple[float, float]:
    """Logistic regression of the outcome on the logit of the score, by Newton's method.

    A tiny ridge keeps the steps finite when the reference separates perfectly.
    """
    x = _logit(score)
    a, b = 1.0, 0.0
    for _ in range(50):
        q = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = q * (1.0 - q)
        grad = np.array([np.dot(x, q - outcome) + 1e-6 * a, np.sum(q - outcome) + 1e-6 * b])
        hess = np.array([[np.dot(w, x * x) + 1e-6, np.dot(w, x)], [np.dot(w, x), w.sum() + 1e-6]])
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if float(np.abs(step).max()) < 1e-9:
            break
    return a, b


@dataclass
class Calibrator:
    """Maps a version's probabilities to calibrated ones, fitted on a labelled reference.

    ``isotonic`` (the default) needs a few hundred reference rows; ``platt`` (a logistic fit on
    the logit) is steadier on small references. With two classes the positive class is
    calibrated; with more, each class one-vs-rest and the rows are renormalised.
    """

    classes: list[str]
    method: Literal["isotonic", "platt"]
    positive: int
    _maps: list[Callable[[FloatArray], FloatArray]]
    reference_rows: int

    @classmethod
    def fit(
        cls,
        proba: npt.ArrayLike,
        y_true: npt.ArrayLike,
        classes: Sequence[Any],
        *,
        method: Literal["isotonic", "platt"] = "isotonic",
        positive: Any = None,
    ) -> Calibrator:
        p = np.asarray(proba, dtype=np.float64)
        names = list(classes)
        y = _codes(y_true, names, "the reference labels")
        if p.ndim != 2 or p.shape != (y.size, len(names)):
            raise InvalidInputError(
                f"reference probabilities must have shape ({y.size}, {len(names)}), got {p.shape}"
            )
        if y.size < 10:
            raise InvalidInputError(f"a calibration needs at least 10 labelled reference rows, got {y.size}")
        pos = names.index(positive) if positive is not None else len(names) - 1
        targets = [pos] if len(names) == 2 else list(range(len(names)))
        maps = [cls._fit_one(p[:, c], (y == c).astype(np.float64), method) for c in targets]
        return cls(names, method, pos, maps, int(y.size))

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, *, method: Literal["isotonic", "platt"] = "isotonic", positive: Any = None
    ) -> Calibrator:
        """Fit on the labelled rows of a labelled frame (its unlabelled rows are ignored)."""
        classes = frame_classes(frame)
        if not classes:
            raise InvalidInputError("a calibration needs predicted probabilities (proba_<class> columns)")
        rows = _with_labels(frame)
        proba = rows[[PROBA_PREFIX + c for c in classes]].to_numpy(dtype=np.float64)
        keep = ~np.isnan(proba).any(axis=1)
        return cls.fit(
            proba[keep],
            _as_class_text(rows["label"])[keep],
            classes,
            method=method,
            positive=None if positive is None else str(positive),
        )

    @staticmethod
    def _fit_one(
        score: FloatArray, outcome: FloatArray, method: Literal["isotonic", "platt"]
    ) -> Callable[[FloatArray], FloatArray]:
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, outcome)
            return lambda s: np.asarray(iso.predict(s), dtype=np.float64)
        if method == "platt":
            a, b = _platt_fit(score, outcome)
            return lambda s: np.asarray(1.0 / (1.0 + np.exp(-(a * _logit(s) + b))), dtype=np.float64)
        raise InvalidInputError(f"unknown calibration method {method!r}; use isotonic or platt")

    def transform(self, proba: npt.ArrayLike) -> FloatArray:
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.classes):
            raise InvalidInputError(f"probabilities must have {len(self.classes)} columns ({self.classes})")
        if len(self.classes) == 2:
            c = np.clip(self._maps[0](p[:, self.positive]), 0.0, 1.0)
            out = np.empty_like(p)
            out[:, self.positive] = c
            out[:, 1 - self.positive] = 1.0 - c
            return out
        out = np.column_stack([m(p[:, i]) for i, m in enumerate(self._maps)])
        total = out.sum(axis=1, keepdims=True)
        # A row every one-vs-rest map sends to 0 keeps the model's own probabilities.
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), p)


def _normalised(p: FloatArray) -> FloatArray:
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])


def _expected_auc(score: FloatArray, p_pos: FloatArray) -> float:
    """Expected concordant pairs over expected positive-negative pairs, ties counting half."""
    _, group = np.unique(score, return_inverse=True)
    pos_by = np.bincount(group, weights=p_pos)
    neg_by = np.bincount(group, weights=1.0 - p_pos)
    cross_by = np.bincount(group, weights=p_pos * (1.0 - p_pos))
    neg_below = np.concatenate([[0.0], np.cumsum(neg_by)[:-1]])
    # Pairs inside a tie group count half; a row is never paired with itself.
    concordant = float(np.dot(pos_by, neg_below) + 0.5 * (np.dot(pos_by, neg_by) - cross_by.sum()))
    pairs = float(p_pos.sum() * (1.0 - p_pos).sum() - np.dot(p_pos, 1.0 - p_pos))
    return concordant / pairs if pairs > 0 else math.nan


def estimate_classification(
    proba: npt.ArrayLike,
    *,
    classes: Sequence[Any],
    y_pred: npt.ArrayLike | None = None,
    positive: Any = None,
    calibrator: Calibrator | None = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Metric]:
    """Confidence-based estimates of a classifier's figures, before (or without) labels.

    Each row's calibrated probabilities are taken as the chance of each label (CBPE): the
    expected accuracy is the mean calibrated probability of the predicted class, the expected
    confusion matrix gives precision, recall and F1 (two classes), the expected ranking gives
    the ROC AUC, and the expected log loss is the cross-entropy. The intervals come from
    labels simulated from the calibrated probabilities (seeded, vectorised): where the realized
    figure should fall if the calibration holds. Without a calibrator the model's own
    probabilities are trusted, which overconfident models make optimistic.
    """
    names = list(classes)
    raw = np.asarray(proba, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise InvalidInputError(f"probabilities must have {len(names)} columns ({names})")
    n, k = raw.shape
    pred = raw.argmax(axis=1).astype(np.int64) if y_pred is None else _codes(y_pred, names, "the predictions")
    c = calibrator.transform(raw) if calibrator is not None else _normalised(raw)
    rows = np.arange(n)

    def est(name: str, value: float, stat: Callable[[IntArray], FloatArray]) -> Metric:
        low, high = _simulate(stat, c, resamples=resamples, seed=seed, confidence=confidence)
        return Metric(name, value, n, low, high, "simulation", estimated=True)

    out: dict[str, Metric] = {}
    pred_conf = c[rows, pred] if n else np.zeros(0)
    out["accuracy"] = est(
        "accuracy", float(pred_conf.mean()) if n else math.nan, lambda y: (y == pred).mean(axis=1)
    )
    if k == 2:
        pos = names.index(positive) if positive is not None else 1
        p_pos = c[:, pos]
        pred_pos = pred == pos
        tp = float(p_pos[pred_pos].sum())
        fp = float((1.0 - p_pos[pred_pos]).sum())
        fn = float(p_pos[~pred_pos].sum())
        ranks = np.asarray(stats.rankdata(raw[:, pos]), dtype=np.float64)

        def confusion(y: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
            true_pos = y == pos
            return (
                (true_pos & pred_pos).sum(axis=1).astype(np.float64),
                pred_pos.sum() * np.ones(y.shape[0]),
                true_pos.sum(axis=1).astype(np.float64),
            )

        def sim_precision(y: IntArray) -> FloatArray:
            t, pp, _ = confusion(y)
            return _safe_div(t, pp)

        def sim_recall(y: IntArray) -> FloatArray:
            t, _, ap = confusion(y)
            return _safe_div(t, ap)

        def sim_f1(y: IntArray) -> FloatArray:
            t, pp, ap = confusion(y)
            return _safe_div(2.0 * t, pp + ap)

        out["precision"] = est("precision", float(_safe_div(tp, tp + fp)), sim_precision)
        out["recall"] = est("recall", float(_safe_div(tp, tp + fn)), sim_recall)
        out["f1"] = est("f1", float(_safe_div(2.0 * tp, 2.0 * tp + fp + fn)), sim_f1)
        out["roc_auc"] = est(
            "roc_auc",
            _expected_auc(raw[:, pos], p_pos) if n else math.nan,
            lambda y: _binary_auc_ranks(ranks[None, :], y == pos),
        )
    log_p = np.log(np.clip(raw, _EPS, 1.0 - _EPS))
    out["log_loss"] = est(
        "log_loss",
        float(-(c * log_p).sum(axis=1).mean()) if n else math.nan,
        lambda y: -log_p[rows[None, :], y].mean(axis=1),
    )
    return out


@dataclass(frozen=True)
class Reconciled:
    """An estimated figure beside the realized one (on the labelled rows) and the gap between them."""

    name: str
    estimated: Metric
    realized: Metric | None
    #: realized minus estimated; NaN until labels land
    gap: float
    labelled: int
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "estimated": self.estimated.to_dict(),
            "realized": None if self.realized is None else self.realized.to_dict(),
            "gap": self.gap,
            "labelled": self.labelled,
            "rows": self.rows,
        }


def estimated_vs_realized(
    proba: npt.ArrayLike,
    y_true: Sequence[Any] | npt.ArrayLike,
    *,
    classes: Sequence[Any],
    y_pred: npt.ArrayLike | None = None,
    positive: Any = None,
    calibrator: Calibrator | None = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[Reconciled]:
    """The estimate over every row, the realized figure over the labelled ones, and the gap.

    ``y_true`` holds None (or NaN) for rows whose label has not arrived.
    """
    names = list(classes)
    p = np.asarray(proba, dtype=np.float64)
    truth = np.asarray(y_true, dtype=object)
    if truth.ndim != 1 or truth.size != p.shape[0]:
        raise InvalidInputError("labels and probabilities must describe the same rows")
    pred = (
        np.asarray(y_pred, dtype=object)
        if y_pred is not None
        else np.asarray(names, dtype=object)[p.argmax(axis=1)]
    )
    estimated = estimate_classification(
        p,
        classes=names,
        y_pred=pred,
        positive=positive,
        calibrator=calibrator,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    has = np.array([not _missing(v) for v in truth], dtype=np.bool_)
    realized: dict[str, Metric] = {}
    if has.any():
        realized = classification_metrics(
            truth[has],
            pred[has],
            p[has],
            classes=names,
            positive=positive,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        )
    out = []
    for name, est in estimated.items():
        real = realized.get(name)
        gap = real.value - est.value if real is not None else math.nan
        out.append(Reconciled(name, est, real, gap, int(has.sum()), int(truth.size)))
    return out


def estimate_frame(
    frame: pd.DataFrame,
    *,
    calibrator: Calibrator | None = None,
    positive: Any = None,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[Reconciled]:
    """:func:`estimated_vs_realized` on a frame of predictions, labelled or not."""
    classes = frame_classes(frame)
    if not classes:
        raise InvalidInputError("an estimate needs predicted probabilities (proba_<class> columns)")
    proba = frame[[PROBA_PREFIX + c for c in classes]].to_numpy(dtype=np.float64)
    keep = ~np.isnan(proba).any(axis=1)
    preds = _as_class_text(frame["prediction"])[keep]
    return estimated_vs_realized(
        proba[keep],
        _as_class_text(frame["label"])[keep],
        classes=classes,
        y_pred=preds,
        positive=None if positive is None else str(positive),
        calibrator=calibrator,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


# ------------------------------------------------------------------------------------ A/B tests

AB_METRICS: dict[str, bool] = {
    # metric -> higher is better
    "accuracy": True,
    "roc_auc": True,
    "log_loss": False,
    "mae": False,
    "mse": False,
}
#: absolute minimum detectable effects; the loss metrics default to 5% of route A's value
DEFAULT_MDE: dict[str, float] = {"accuracy": 0.02, "roc_auc": 0.02}
DEFAULT_RELATIVE_MDE = 0.05
# Planning guesses used before an arm has data to estimate its variance from.
_PRIOR_AUC = 0.75

Design = Literal["sequential", "fixed"]
VerdictKind = Literal["B better", "A better", "no significant difference", "not enough data yet"]


@dataclass(frozen=True)
class ArmEstimate:
    """One route's figure on its labelled rows, with what the A/B test needs to know of it."""

    metric: str
    value: float
    #: sampling variance of ``value``
    variance: float
    n: int
    #: ``variance * n``: how the variance shrinks with more rows, for the sample size
    unit_variance: float
    successes: int | None = None
    #: share of positive labels (AUC), for planning before the variance can be estimated
    prevalence: float | None = None


def proportion_estimate(successes: int, n: int, metric: str = "accuracy") -> ArmEstimate:
    """An arm whose figure is a proportion, from its counts alone."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise InvalidInputError(f"invalid counts: {successes} successes out of {n}")
    # Laplace's (x+1)/(n+2) keeps the variance positive at 0% and 100%, where the plain
    # estimate would claim certainty from a handful of rows.
    smoothed = (successes + 1.0) / (n + 2.0)
    unit = smoothed * (1.0 - smoothed)
    value = successes / n if n else math.nan
    return ArmEstimate(metric, value, unit / n if n else math.inf, n, unit, successes=successes)


def _hanley_mcneil_unit(auc: float, prevalence: float) -> float:
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    prevalence = min(max(prevalence, 0.01), 0.99)
    return (q1 - auc * auc) / prevalence + (q2 - auc * auc) / (1.0 - prevalence)


def arm_estimate(
    metric: str,
    y_true: npt.ArrayLike,
    *,
    y_pred: npt.ArrayLike | None = None,
    score: npt.ArrayLike | None = None,
    positive: Any = None,
) -> ArmEstimate:
    """One route's figure from its labelled rows.

    ``accuracy`` needs ``y_pred``; ``roc_auc`` needs ``score`` (the positive class's
    probability) and ``positive`` (default: the larger label); ``log_loss`` needs ``score``
    as the probability given to the true label; ``mae`` and ``mse`` need numeric ``y_pred``.
    """
    if metric not in AB_METRICS:
        raise InvalidInputError(f"unknown A/B metric {metric!r}; use one of {', '.join(AB_METRICS)}")
    y = np.asarray(y_true, dtype=object)
    n = int(y.size)
    if metric == "accuracy":
        if y_pred is None:
            raise InvalidInputError("accuracy needs the predictions")
        pred = np.asarray(y_pred, dtype=object)
        return proportion_estimate(int(np.sum(y == pred)), n)
    if metric == "roc_auc":
        if score is None:
            raise InvalidInputError("roc_auc needs the score of the positive class")
        labels = sorted(set(y.tolist()), key=_sort_key)
        if len(labels) > 2:
            raise InvalidInputError("the A/B test of roc_auc needs two classes")
        pos_label = positive if positive is not None else (labels[-1] if labels else None)
        is_pos = y == pos_label
        prevalence = float(is_pos.mean()) if n else 0.5
        auc, var = delong(np.asarray(score, dtype=np.float64), is_pos)
        unit = var * n if math.isfinite(var) and var > 0 else math.nan
        if not math.isfinite(unit):
            unit = _hanley_mcneil_unit(_PRIOR_AUC if not math.isfinite(auc) else auc, prevalence)
        return ArmEstimate(
            metric, auc, var if math.isfinite(var) else math.inf, n, unit, prevalence=prevalence
        )
    if metric == "log_loss":
        if score is None:
            raise InvalidInputError("log_loss needs the probability given to the true label")
        values = -np.log(np.clip(np.asarray(score, dtype=np.float64), _EPS, 1.0 - _EPS))
    else:
        if y_pred is None:
            raise InvalidInputError(f"{metric} needs the predictions")
        err = np.asarray(y_pred, dtype=np.float64) - y.astype(np.float64)
        values = np.abs(err) if metric == "mae" else err * err
    if n == 0:
        return ArmEstimate(metric, math.nan, math.inf, 0, math.nan)
    unit = float(np.var(values, ddof=1)) if n > 1 else math.nan
    return ArmEstimate(metric, float(values.mean()), unit / n if n > 1 else math.inf, n, unit)


@dataclass(frozen=True)
class Verdict:
    """The outcome of an A/B comparison; ``str(verdict)`` is the sentence to show."""

    verdict: VerdictKind
    metric: str
    a: float
    b: float
    n_a: int
    n_b: int
    #: B minus A, in the metric's units
    difference: float
    low: float
    high: float
    confidence: float
    test: str
    p_value: float
    mde: float
    design: Design
    #: labelled rows (both routes) at which an effect of ``mde`` is found with the chosen power
    horizon: int
    #: labelled rows still needed to reach the horizon (0 once reached)
    needed: int
    a_ref: str = "A"
    b_ref: str = "B"

    @property
    def message(self) -> str:
        if self.verdict == "not enough data yet":
            if self.needed > 0:
                return f"not enough data yet (about {self.needed:,} more labelled rows needed)"
            return "not enough data yet"
        if not math.isfinite(self.difference):
            return self.verdict
        return (
            f"{self.verdict}: {self.metric} {self.b:.4g} ({self.b_ref}) vs {self.a:.4g} ({self.a_ref}), "
            f"difference {self.difference:+.4g}, {self.confidence:.0%} interval "
            f"[{self.low:+.4g}, {self.high:+.4g}] ({self.test})"
        )

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


def _half_width_sequential(var: float, tau2: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence (Robbins; Johari et al. mSPRT)."""
    return math.sqrt(var * (var + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log((var + tau2) / var)))


def _target_variance(mde: float, alpha: float, power: float, design: Design) -> float:
    """The variance of the difference at which an effect of ``mde`` is detected with ``power``."""
    z_power = float(stats.norm.ppf(power))
    if design == "fixed":
        return (mde / (float(stats.norm.ppf(1.0 - alpha / 2.0)) + z_power)) ** 2
    tau2 = mde * mde

    def gap(log_var: float) -> float:
        var = math.exp(log_var)
        return mde - _half_width_sequential(var, tau2, alpha) - z_power * math.sqrt(var)

    lo, hi = math.log(mde * mde) - 60.0, math.log(mde * mde)
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if gap(mid) > 0:
            lo = mid
        else:
            hi = mid
    return math.exp(lo)


def _newcombe(a: ArmEstimate, b: ArmEstimate, confidence: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for the difference of two proportions, B - A."""
    assert a.successes is not None
    assert b.successes is not None
    la, ua = (float(v) for v in wilson_interval(a.successes, a.n, confidence))
    lb, ub = (float(v) for v in wilson_interval(b.successes, b.n, confidence))
    d = b.value - a.value
    return (
        d - math.sqrt((b.value - lb) ** 2 + (ua - a.value) ** 2),
        d + math.sqrt((ub - b.value) ** 2 + (a.value - la) ** 2),
    )


def ab_verdict(
    a: ArmEstimate,
    b: ArmEstimate,
    *,
    mde: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    design: Design = "sequential",
    min_rows: int = 100,
    split: float | None = None,
    a_ref: str = "A",
    b_ref: str = "B",
) -> Verdict:
    """Is route B better than route A on this metric, and if it cannot tell yet, how much longer?

    ``sequential`` (the default) may be asked again and again as labels land: its interval is
    an always-valid confidence sequence (a normal-mixture mSPRT with mixing scale ``mde``), so
    looking after every batch does not inflate the false verdicts beyond ``alpha``. ``fixed``
    is the textbook test (Newcombe's interval for accuracy, DeLong's variance for the AUC,
    Welch's for means), valid only if looked at once: it answers nothing before the horizon.

    The horizon is the number of labelled rows, both routes together and in their observed
    split (``split`` = share of route A when there is no data yet, default half), at which a
    difference of ``mde`` is found with probability ``power``. ``min_rows`` per route are
    required before any verdict, as the variances are estimated from the data.
    """
    if a.metric != b.metric:
        raise InvalidInputError(f"cannot compare {a.metric} with {b.metric}")
    metric = a.metric
    if metric not in AB_METRICS:
        raise InvalidInputError(f"unknown A/B metric {metric!r}; use one of {', '.join(AB_METRICS)}")
    if not 0.0 < alpha < 0.5 or not 0.5 <= power < 1.0:
        raise InvalidInputError("alpha must be in (0, 0.5) and power in [0.5, 1)")
    if design not in ("sequential", "fixed"):
        raise InvalidInputError(f"unknown design {design!r}; use sequential or fixed")
    higher = AB_METRICS[metric]
    if mde is None:
        mde = DEFAULT_MDE.get(
            metric, DEFAULT_RELATIVE_MDE * abs(a.value) if math.isfinite(a.value) else math.nan
        )
    if math.isfinite(mde) and mde <= 0:
        raise InvalidInputError(f"the minimum detectable effect must be positive, got {mde}")

    n = a.n + b.n
    share_a = a.n / n if a.n > 0 and b.n > 0 else (0.5 if split is None else split)
    share_a = min(max(share_a, 1e-3), 1.0 - 1e-3)
    spread = a.unit_variance / share_a + b.unit_variance / (1.0 - share_a)
    if math.isfinite(mde) and math.isfinite(spread):
        horizon = math.ceil(spread / _target_variance(mde, alpha, power, design))
    else:
        horizon = 0
    # Every route needs its minimum too, at the current split.
    horizon = max(horizon, math.ceil(min_rows / min(share_a, 1.0 - share_a)))
    needed = max(0, horizon - n)
    confidence = 1.0 - alpha
    d = b.value - a.value
    var = a.variance + b.variance

    if design == "sequential":
        test = f"mSPRT on the difference of {metric} (normal mixture, tau={mde:.3g}), always-valid interval"
    elif metric == "accuracy":
        test = "two-proportion z-test, Newcombe interval (fixed horizon)"
    elif metric == "roc_auc":
        test = "z-test on the difference of AUCs with DeLong variances (fixed horizon)"
    else:
        test = f"Welch z-test on the difference of mean {metric} (fixed horizon)"

    def result(kind: VerdictKind, low: float, high: float, p_value: float) -> Verdict:
        return Verdict(
            verdict=kind,
            metric=metric,
            a=a.value,
            b=b.value,
            n_a=a.n,
            n_b=b.n,
            difference=d,
            low=low,
            high=high,
            confidence=confidence,
            test=test,
            p_value=p_value,
            mde=mde,
            design=design,
            horizon=horizon,
            needed=needed,
            a_ref=a_ref,
            b_ref=b_ref,
        )

    usable = a.n >= min_rows and b.n >= min_rows and math.isfinite(d) and math.isfinite(var) and var > 0
    if not usable:
        return result("not enough data yet", math.nan, math.nan, math.nan)

    if design == "sequential":
        tau2 = mde * mde if math.isfinite(mde) else var
        half = _half_width_sequential(var, tau2, alpha)
        low, high = d - half, d + half
        log_lr = 0.5 * math.log(var / (var + tau2)) + tau2 * d * d / (2.0 * var * (var + tau2))
        p_value = min(1.0, math.exp(-log_lr))
    else:
        z = _z(confidence)
        if metric == "accuracy":
            low, high = _newcombe(a, b, confidence)
            assert a.successes is not None
            assert b.successes is not None
            pooled = (a.successes + b.successes) / n
            se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / a.n + 1.0 / b.n))
            p_value = float(2.0 * stats.norm.sf(abs(d) / se0)) if se0 > 0 else 1.0
        else:
            se = math.sqrt(var)
            low, high = d - z * se, d + z * se
            p_value = float(2.0 * stats.norm.sf(abs(d) / se))
        if needed > 0:
            # A fixed-horizon test read before its horizon is a peek: no verdict.
            return result("not enough data yet", low, high, p_value)

    gain_low, gain_high = (low, high) if higher else (-high, -low)
    if gain_low > 0:
        kind: VerdictKind = "B better"
    elif gain_high < 0:
        kind = "A better"
    elif needed == 0 or (math.isfinite(mde) and -mde < low and high < mde):
        kind = "no significant difference"
    else:
        kind = "not enough data yet"
    return result(kind, low, high, p_value)


def _arm_from_frame(frame: pd.DataFrame, metric: str, positive: Any) -> ArmEstimate:
    rows = _with_labels(frame)
    if metric in ("mae", "mse"):
        return arm_estimate(
            metric, rows["label"].to_numpy(dtype=np.float64), y_pred=rows["prediction"].to_numpy(np.float64)
        )
    truth = _as_class_text(rows["label"])
    if metric == "accuracy":
        return arm_estimate(metric, truth, y_pred=_as_class_text(rows["prediction"]))
    classes = frame_classes(frame)
    if not classes:
        raise InvalidInputError(f"{metric} needs predicted probabilities (proba_<class> columns)")
    proba = rows[[PROBA_PREFIX + c for c in classes]].to_numpy(dtype=np.float64)
    if metric == "roc_auc":
        if len(classes) != 2:
            raise InvalidInputError("the A/B test of roc_auc needs a model with two classes")
        pos = str(positive) if positive is not None else classes[1]
        return arm_estimate(metric, truth, score=proba[:, classes.index(pos)], positive=pos)
    codes = _codes(truth, classes, "the labels")
    given = np.where(codes >= 0, proba[np.arange(len(codes)), np.maximum(codes, 0)], 0.0)
    return arm_estimate(metric, truth, score=given)


def ab_verdict_frames(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    metric: str = "accuracy",
    *,
    positive: Any = None,
    **options: Any,
) -> Verdict:
    """:func:`ab_verdict` on two labelled frames (one per route); ``options`` go to it."""
    return ab_verdict(
        _arm_from_frame(frame_a, metric, positive), _arm_from_frame(frame_b, metric, positive), **options
    )
