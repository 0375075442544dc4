"""The monitoring report of an endpoint: one self-contained HTML file.

The page opens with no network: its style sheet is inline, its charts are inline SVG, it
loads no script, font or image, and every figure behind a chart is also in a table, so
it reads the same printed, mailed or opened from an air-gapped machine.

:func:`overlays` turns a reference and a window (drift sketches) into per-column
distributions; ``passerelle.monitor`` gathers those with the windows' figures, the A/B
verdict and the alerts into a :class:`ReportData`; :func:`render` makes the page and
:func:`write` puts it on disk atomically. See ``docs/report.md`` for how to read it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from passerelle.__about__ import __version__
from passerelle.drift.histograms import CategoricalHist, CategoricalPair, NumericGrid, NumericHist
from passerelle.drift.report import ColumnDrift, DriftReport
from passerelle.drift.sketch import ColumnSpec, ReferenceStats, WindowSketch
from passerelle.errors import InvalidInputError

__all__ = [
    "MAX_LEVELS",
    "MISSING_LABEL",
    "OTHER_LABEL",
    "Overlay",
    "ReportData",
    "WindowPoint",
    "comparison_text",
    "distribution_card",
    "drift_heatmap",
    "drift_share_chart",
    "overlays",
    "performance_chart",
    "render",
    "time_series_chart",
    "verdict_summary",
    "write",
]

#: categorical levels an overlay shows; the least frequent of the rest are summed together
MAX_LEVELS: Final = 30
#: the bar of missing (or, in numeric columns, unusable) values; parenthesised so that a
#: real level called "missing" stays distinct
MISSING_LABEL: Final = "(missing)"
#: the bar holding the levels beyond :data:`MAX_LEVELS`
OTHER_LABEL: Final = "(other levels)"

_KINDS: Final = ("numeric", "categorical")
_ROLES: Final = ("feature", "prediction")
#: shown where a figure is unknown
_NONE: Final = "\u2013"


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Overlay:
    """One column, reference against window, as shares of each side's rows.

    ``labels`` are bin labels (``[0.1, 0.25)``) or levels, with :data:`MISSING_LABEL` last
    when either side has missing values. ``edges`` (numeric columns) bound the value bins:
    one more edge than value bins, the missing bar having none. ``method`` is the deciding
    check and its score against its threshold; ``detail`` what moved, in words.
    """

    column: str
    role: str
    kind: str
    labels: list[str]
    edges: list[float] | None
    reference: list[float]
    window: list[float]
    drifted: bool
    method: str
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidInputError(f"overlay {self.column!r}: kind must be numeric or categorical")
        if self.role not in _ROLES:
            raise InvalidInputError(f"overlay {self.column!r}: role must be feature or prediction")
        if not len(self.labels) == len(self.reference) == len(self.window):
            raise InvalidInputError(
                f"overlay {self.column!r}: labels, reference and window must have the same length "
                f"({len(self.labels)}, {len(self.reference)}, {len(self.window)})"
            )
        if not all(math.isfinite(v) and v >= 0 for v in [*self.reference, *self.window]):
            raise InvalidInputError(f"overlay {self.column!r}: shares must be finite and not negative")
        if self.edges is not None:
            value_bins = len(self.labels) - (1 if self.labels and self.labels[-1] == MISSING_LABEL else 0)
            if value_bins and len(self.edges) != value_bins + 1:
                raise InvalidInputError(
                    f"overlay {self.column!r}: edges must have one more entry than the {value_bins} "
                    f"value bins, got {len(self.edges)}"
                )


@dataclass(frozen=True)
class WindowPoint:
    """The figures of one monitored window for one version (``"all"``: every version)."""

    start: dt.datetime
    end: dt.datetime
    version: str
    #: ok, drift, insufficient, no_traffic or error
    status: str
    rows: int
    #: the monitor's flat figures: ``drift.share``, ``drift.column.<name>`` (0/1),
    #: ``latency.p99_ms``, ``errors.rate``, ``performance.<metric>`` (+ ``.low``/``.high``),
    #: ``estimated.<metric>`` (+ ``.low``/``.high``), ``labels.coverage``
    figures: Mapping[str, float | None]


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows; ``passerelle.monitor`` builds it."""

    endpoint: str
    generated_at: dt.datetime
    since: dt.datetime
    until: dt.datetime
    #: the current policy in words: "churn:3 90% · churn:4 10% · shadow churn:5"
    policy: str
    windows: list[WindowPoint]
    #: the latest window (or the whole period) against the reference
    overlays: list[Overlay]
    #: what the reference is: "dataset churn-train:2, 20,000 rows"
    reference: str
    #: ``DriftReport.to_dict()`` of the comparison behind ``overlays``
    drift: Mapping[str, Any] | None
    #: the metric the performance chart shows: "roc_auc", "accuracy", "rmse"...
    performance_metric: str
    #: ``Verdict.to_dict()`` (which carries "message")
    verdict: Mapping[str, Any] | None
    #: alert dicts: rule, severity, state, value, summary, started_at, fired_at,
    #: resolved_at, model, version
    alerts: list[Mapping[str, Any]]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ overlays


def overlays(
    reference: ReferenceStats, window: WindowSketch, drift: DriftReport | None = None, *, bins: int = 20
) -> list[Overlay]:
    """Per column of ``reference``, its distribution and the window's, drifted columns first.

    Numeric columns are cut into about ``bins`` bins of equal reference share (merged cells
    of the reference's quantile grid), so the reference looks flat and the window's bars
    show where traffic moved; values outside the reference's range get a bin of their own
    on each side. Columns with few distinct values get one bin per value. Categorical
    columns keep their levels (at most :data:`MAX_LEVELS`). ``drift``, the report of the
    same comparison, says which columns drifted and why.
    """
    if bins < 1:
        raise InvalidInputError(f"bins: must be at least 1, got {bins}")
    if window.reference_key != reference.key:
        raise InvalidInputError("window: it was summarised against other reference statistics")
    judged = {column.column: column for column in drift.columns} if drift is not None else {}
    out: list[tuple[tuple[bool, float, int], Overlay]] = []
    for index, (name, spec) in enumerate(reference.specs.items()):
        column = judged.get(name)
        overlay = _overlay(spec, reference.hists[name], window.hists[name], column, drift is not None, bins)
        ratio = _ratio(column) if column is not None and column.drifted else 0.0
        out.append(((not overlay.drifted, -ratio, index), overlay))
    out.sort(key=lambda item: item[0])
    return [overlay for _, overlay in out]


def _overlay(
    spec: ColumnSpec,
    ref: NumericHist | CategoricalHist,
    win: NumericHist | CategoricalHist,
    column: ColumnDrift | None,
    judged: bool,
    bins: int,
) -> Overlay:
    edges: list[float] | None
    if spec.grid is not None:
        assert isinstance(ref, NumericHist)
        assert isinstance(win, NumericHist)
        labels, edges, ref_counts, win_counts = _numeric_bins(spec.grid, ref, win, bins)
        ref_unusable, win_unusable = ref.missing + ref.invalid, win.missing + win.invalid
        detail = _numeric_detail(spec.grid, ref, win)
    else:
        assert isinstance(ref, CategoricalHist)
        assert isinstance(win, CategoricalHist)
        labels, ref_counts, win_counts = _categorical_levels(ref, win)
        edges = None
        ref_unusable, win_unusable = ref.missing, win.missing
        detail = _categorical_detail(ref, win)
    if ref_unusable or win_unusable:
        labels.append(MISSING_LABEL)
        ref_counts.append(ref_unusable)
        win_counts.append(win_unusable)
    return Overlay(
        column=spec.name,
        role=spec.role,
        kind=spec.kind,
        labels=labels,
        edges=edges,
        reference=_shares(ref_counts),
        window=_shares(win_counts),
        drifted=column is not None and column.drifted,
        method=_method_text(column, judged),
        detail=detail,
    )


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def _numeric_bins(
    grid: NumericGrid, ref: NumericHist, win: NumericHist, bins: int
) -> tuple[list[str], list[float], list[int], list[int]]:
    """Labels, edges and counts per bin; see :func:`overlays`.

    A bin runs from the point cell of one edge to the cell before the next cut, so bins
    read ``[a, b)`` and the last one is closed on the reference's maximum.
    """
    size = int(grid.edges.size)
    if size - 1 <= bins:
        # Few distinct values: a bin per value seen. The grid's interpolated quantiles
        # between two values hold nothing and would only add empty bins.
        cuts = [k for k in range(1, size) if ref.counts[2 * k + 1] or win.counts[2 * k + 1]]
    else:
        targets = (int(grid.quantiles[round(j * grid.bins / bins)]) for j in range(1, bins))
        cuts = sorted({t for t in targets if 0 < t < size})
    starts = [1, *(2 * k + 1 for k in cuts)]
    ends = [*starts[1:], 2 * size]
    edge_index = [0, *cuts]
    ref_sum = np.concatenate([[0], np.cumsum(ref.counts)])
    win_sum = np.concatenate([[0], np.cumsum(win.counts)])
    values = grid.edges.tolist()

    ref_counts = [int(ref_sum[e] - ref_sum[s]) for s, e in zip(starts, ends, strict=True)]
    win_counts = [int(win_sum[e] - win_sum[s]) for s, e in zip(starts, ends, strict=True)]
    edges = [values[k] for k in edge_index] + [values[-1]]
    # A bin whose only values sit on its first edge is that single value.
    single = [
        not (ref.counts[s + 1 : e].any() or win.counts[s + 1 : e].any())
        for s, e in zip(starts, ends, strict=True)
    ]
    below = int(ref.counts[0]) + int(win.counts[0])
    above = int(ref.counts[-1]) + int(win.counts[-1])
    if below:
        edges.insert(0, min(ref.low, win.low))
    if above:
        edges.append(max(ref.high, win.high))
    texts = _edge_texts(edges)
    offset = 1 if below else 0
    labels: list[str] = []
    for i, is_single in enumerate(single):
        low, high = texts[offset + i], texts[offset + i + 1]
        if is_single:
            labels.append(low)
        else:
            labels.append(f"[{low}, {high}]" if i == len(single) - 1 else f"[{low}, {high})")
    if below:
        labels.insert(0, f"< {texts[1]}")
        ref_counts.insert(0, int(ref.counts[0]))
        win_counts.insert(0, int(win.counts[0]))
    if above:
        labels.append(f"> {texts[-2]}")
        ref_counts.append(int(ref.counts[-1]))
        win_counts.append(int(win.counts[-1]))
    return labels, [float(v) for v in edges], ref_counts, win_counts


def _categorical_levels(ref: CategoricalHist, win: CategoricalHist) -> tuple[list[str], list[int], list[int]]:
    pair = CategoricalPair(ref, win)
    ref_counts, win_counts = (c.tolist() for c in pair.counts())
    ref_total = max(pair.reference_n + ref.missing, 1)
    win_total = max(pair.window_n + win.missing, 1)
    order = sorted(
        range(len(pair.levels)),
        key=lambda i: (-ref_counts[i] / ref_total, -win_counts[i] / win_total, i),
    )
    if len(order) > MAX_LEVELS:
        weight = {i: max(ref_counts[i] / ref_total, win_counts[i] / win_total) for i in order}
        kept = set(sorted(order, key=lambda i: (-weight[i], i))[: MAX_LEVELS - 1])
        rest = [i for i in order if i not in kept]
        order = [i for i in order if i in kept]
        return (
            [pair.levels[i] for i in order] + [OTHER_LABEL],
            [int(ref_counts[i]) for i in order] + [sum(int(ref_counts[i]) for i in rest)],
            [int(win_counts[i]) for i in order] + [sum(int(win_counts[i]) for i in rest)],
        )
    return (
        [pair.levels[i] for i in order],
        [int(ref_counts[i]) for i in order],
        [int(win_counts[i]) for i in order],
    )


def _ratio(column: ColumnDrift) -> float:
    if column.effect_size is None or column.threshold is None:
        return 0.0
    if column.threshold > 0:
        return column.effect_size / column.threshold
    return math.inf if column.effect_size > 0 else 0.0


def _method_text(column: ColumnDrift | None, judged: bool) -> str:
    if column is None:
        return "not compared (ignored by the drift configuration)" if judged else "not judged"
    if column.status == "insufficient data":
        return f"insufficient data ({column.window_n:,} values in the window)"
    if column.method is None or column.effect_size is None or column.threshold is None:
        return "not judged"
    score = f"{column.method} {_num(column.effect_size)}"
    threshold = _num(column.threshold)
    if column.drifted:
        return f"{score} ≥ {threshold}"
    if column.effect_size >= column.threshold:
        q = "" if column.q_value is None else f" (q {_num(column.q_value, 2)})"
        return f"{score} ≥ {threshold} but not significant{q}"
    return f"{score} < {threshold}"


def _numeric_detail(grid: NumericGrid, ref: NumericHist, win: NumericHist) -> str:
    if not win.rows:
        return "no rows in the window"
    parts: list[str] = []
    if ref.n and win.n:
        ref_mean, win_mean, ref_std = ref.mean(grid), win.mean(grid), ref.std()
        if ref_std > 0:
            shift = (win_mean - ref_mean) / ref_std
            parts.append(f"mean {_num(ref_mean)} → {_num(win_mean)} (shift {shift:+.2f} sd)")
            parts.append(f"sd ratio {win.std() / ref_std:.2f}")
        else:
            parts.append(f"mean {_num(ref_mean)} → {_num(win_mean)}")
        outside = (int(win.counts[0]) + int(win.counts[-1])) / win.n
        if outside:
            parts.append(f"{_pct(outside)} outside the reference's range")
    ref_rate = (ref.missing + ref.invalid) / ref.rows if ref.rows else 0.0
    win_rate = (win.missing + win.invalid) / win.rows
    if ref_rate or win_rate:
        parts.append(f"missing {_pct(ref_rate)} → {_pct(win_rate)}")
    if win.invalid:
        parts.append(f"{win.invalid:,} invalid values (text or infinities) counted as missing")
    return ", ".join(parts) or "no finite value in the window"


def _categorical_detail(ref: CategoricalHist, win: CategoricalHist) -> str:
    if not win.rows:
        return "no rows in the window"
    parts: list[str] = []
    pair = CategoricalPair(ref, win)
    ref_counts, win_counts = pair.counts()
    if pair.reference_n and pair.window_n:
        ref_share = ref_counts / pair.reference_n
        win_share = win_counts / pair.window_n
        moved = int(np.argmax(np.abs(win_share - ref_share)))
        parts.append(
            f"largest move: '{pair.levels[moved]}' {_pct(float(ref_share[moved]))} → "
            f"{_pct(float(win_share[moved]))}"
        )
        new = pair.new_levels()
        if new.any():
            count = int(new.sum())
            share = float(win_counts[new].sum()) / pair.window_n
            parts.append(f"{count} new level{'s' if count > 1 else ''} ({_pct(share)} of the window)")
    ref_rate = ref.missing / ref.rows if ref.rows else 0.0
    win_rate = win.missing / win.rows
    if ref_rate or win_rate:
        parts.append(f"missing {_pct(ref_rate)} → {_pct(win_rate)}")
    return ", ".join(parts) or "no value in the window"


# ------------------------------------------------------------------------------------------ formatting


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, without exponents for everyday magnitudes."""
    if not math.isfinite(value):
        return _NONE
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -4:
        return f"{value:.{digits}g}"
    text = f"{value:.{max(0, digits - 1 - magnitude)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _edge_texts(values: Sequence[float]) -> list[str]:
    """The fewest significant digits (3 at least) that keep distinct edges distinct."""
    texts = [_num(v) for v in values]
    for digits in range(3, 16):
        texts = [_num(v, digits) for v in values]
        if len(set(texts)) == len(set(values)):
            break
    return texts


def _pct(share: float) -> str:
    if not math.isfinite(share):
        return _NONE
    if share == 0:
        return "0%"
    percent = share * 100
    if abs(percent) < 0.1:
        return "<0.1%"
    text = f"{percent:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _utc(moment: dt.datetime) -> dt.datetime:
    # Stored times are aware UTC; a naive one is read as UTC rather than as local time.
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _ts(moment: dt.datetime) -> float:
    return _utc(moment).timestamp()


def _when(moment: Any) -> str:
    if isinstance(moment, dt.datetime):
        return _utc(moment).strftime("%Y-%m-%d %H:%M UTC")
    if moment is None or moment == "":
        return _NONE
    if isinstance(moment, str):
        with contextlib.suppress(ValueError):
            return _when(dt.datetime.fromisoformat(moment))
    return str(moment)


def _span(start: dt.datetime, end: dt.datetime) -> str:
    a, b = _utc(start), _utc(end)
    if a.date() == b.date():
        return f"{a:%Y-%m-%d %H:%M}-{b:%H:%M} UTC"
    return f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M} UTC"


def _nice_scale(low: float, high: float, count: int = 4) -> tuple[float, float, list[float]]:
    """A domain covering [low, high] with round ends, and its ticks."""
    if not high > low:
        pad = abs(low) * 0.05 or 0.05
        low, high = low - pad, high + pad
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


# ------------------------------------------------------------------------------------------ charts

_STATUS_COLOURS: Final = {
    "ok": "#8fc98f",
    "drift": "#c62828",
    "insufficient": "#bdbdbd",
    "no_traffic": "#e6e6e6",
    "error": "#6a1b9a",
}
_VERSION_COLOURS: Final = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)
_REFERENCE_COLOUR: Final = "#9fb3d9"
_WINDOW_COLOUR: Final = "#e66101"
_PLACEHOLDER_STATUS: Final = "#cccccc"
# Severity order of window statuses, to say what the latest windows show in one word.
_STATUS_RANK: Final = {"error": 4, "drift": 3, "insufficient": 2, "no_traffic": 1, "ok": 0}


@dataclass(frozen=True)
class _Plot:
    """A time (x) by value (y) plot area inside an SVG of ``width`` by ``height``."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    t0: float
    t1: float
    v0: float = 0.0
    v1: float = 1.0

    @property
    def inner_width(self) -> float:
        return float(self.width - self.left - self.right)

    @property
    def inner_height(self) -> float:
        return float(self.height - self.top - self.bottom)

    def x(self, t: float) -> float:
        return self.left + (t - self.t0) / (self.t1 - self.t0) * self.inner_width

    def y(self, v: float) -> float:
        return self.top + (1.0 - (v - self.v0) / (self.v1 - self.v0)) * self.inner_height


def _f(value: float) -> str:
    return f"{value:.1f}"


def _svg(width: int, height: int, title: str, body: Iterable[str], cls: str = "chart") -> str:
    return (
        f'<svg class="{cls}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>{"".join(body)}</svg>'
    )


def _time_axis(plot: _Plot, label: str) -> list[str]:
    span = plot.t1 - plot.t0
    pattern = "%Y-%m-%d" if span >= 3 * 86400 else "%m-%d %H:%M"
    base = plot.top + plot.inner_height
    out = [
        f'<line class="axis" x1="{plot.left}" y1="{_f(base)}" x2="{plot.width - plot.right}" '
        f'y2="{_f(base)}"/>'
    ]
    count = 5
    for i in range(count):
        t = plot.t0 + span * i / (count - 1)
        x = plot.x(t)
        anchor = "start" if i == 0 else "end" if i == count - 1 else "middle"
        text = dt.datetime.fromtimestamp(t, dt.UTC).strftime(pattern)
        out.append(f'<line class="tick" x1="{_f(x)}" y1="{_f(base)}" x2="{_f(x)}" y2="{_f(base + 4)}"/>')
        out.append(f'<text x="{_f(x)}" y="{_f(base + 15)}" text-anchor="{anchor}">{text}</text>')
    centre = plot.left + plot.inner_width / 2
    out.append(
        f'<text class="label" x="{_f(centre)}" y="{plot.height - 3}" text-anchor="middle">{label}</text>'
    )
    return out


def _value_axis(plot: _Plot, ticks: Sequence[float], label: str, percent: bool = False) -> list[str]:
    out = [
        f'<line class="axis" x1="{plot.left}" y1="{plot.top}" x2="{plot.left}" '
        f'y2="{_f(plot.top + plot.inner_height)}"/>'
    ]
    for value in ticks:
        y = plot.y(value)
        text = _e(_pct(value)) if percent else _num(value)
        out.append(
            f'<line class="grid" x1="{plot.left}" y1="{_f(y)}" x2="{plot.width - plot.right}" y2="{_f(y)}"/>'
        )
        out.append(f'<text x="{plot.left - 4}" y="{_f(y + 3)}" text-anchor="end">{text}</text>')
    middle = plot.top + plot.inner_height / 2
    out.append(
        f'<text class="label" x="11" y="{_f(middle)}" text-anchor="middle" '
        f'transform="rotate(-90 11 {_f(middle)})">{_e(label)}</text>'
    )
    return out


def _placeholder(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


# ------------------------------------------------------------------------------------------ page


def render(data: ReportData) -> str:
    """The whole report as one HTML document (see the module docstring)."""
    windows = sorted(data.windows, key=lambda w: (_ts(w.start), w.version))
    t0 = min([_ts(data.since), *(_ts(w.start) for w in windows)])
    t1 = max([_ts(data.until), *(_ts(w.end) for w in windows)])
    if t1 <= t0:
        t1 = t0 + 1.0
    shown = sorted(data.overlays, key=lambda o: not o.drifted)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(data.endpoint)} · monitoring report</title>",
        f"<style>{_CSS}</style></head><body>",
        _header(data),
        _summary(data, windows, shown),
        _notes(data),
        _drift_section(data, windows, shown, t0, t1),
        _distributions(data, shown),
        _performance(data, windows, t0, t1),
        _verdict(data.verdict),
        _alerts(data.alerts),
        _window_table(data, windows),
        f"<footer>passerelle {_e(__version__)} · generated {_e(_when(data.generated_at))}. "
        "Every time is UTC. This file needs no network.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write(data: ReportData, path: str | os.PathLike[str]) -> Path:
    """Render ``data`` and write it to ``path`` (UTF-8) atomically: a complete file or none."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise InvalidInputError(f"output {path}: is a folder; name the HTML file to write")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"output {path}: the folder {folder} does not exist")
    page = render(data).encode("utf-8")
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InvalidInputError(f"output {path}: cannot write in {folder}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(page)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates the file readable by its owner only; a report is meant to be shared.
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except OSError as exc:
        raise InvalidInputError(f"output {path}: cannot write the report: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return target


def _header(data: ReportData) -> str:
    rows = [
        ("Period", f"{_when(data.since)} → {_when(data.until)}"),
        ("Policy", data.policy or _NONE),
        ("Reference", data.reference or _NONE),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{_e(value)}</dd>" for name, value in rows)
    return f'<header><h1>Monitoring report · {_e(data.endpoint)}</h1><dl class="meta">{items}</dl></header>'


def _card(title: str, value: str, sub: str, tone: str) -> str:
    return (
        f'<div class="card {tone}"><div class="card-title">{title}</div>'
        f'<div class="card-value">{_e(value)}</div><div class="card-sub">{_e(sub)}</div></div>'
    )


def _drift_columns(drift: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    columns = drift.get("columns") if drift is not None else None
    return [c for c in columns if isinstance(c, Mapping)] if isinstance(columns, list) else []


def _summary(data: ReportData, windows: list[WindowPoint], shown: list[Overlay]) -> str:
    cards: list[str] = []
    columns = _drift_columns(data.drift)
    if columns:
        features = [c for c in columns if c.get("role") == "feature"]
        evaluated = [c for c in features if c.get("status") != "insufficient data"]
        drifted = [c for c in evaluated if c.get("drifted")]
        status = str(data.drift.get("status", "")) if data.drift is not None else ""
        sub = f"status {status}" if status else ""
        predictions = [c for c in columns if c.get("role") == "prediction" and c.get("drifted")]
        if predictions:
            sub += " · prediction drifted"
        tone = "bad" if drifted or status == "drift" else "good"
        cards.append(_card("Drifted features", f"{len(drifted)} of {len(evaluated)}", sub, tone))
    elif shown:
        drifted_overlays = [o for o in shown if o.drifted and o.role == "feature"]
        total = sum(o.role == "feature" for o in shown)
        tone = "bad" if drifted_overlays else "good"
        cards.append(_card("Drifted features", f"{len(drifted_overlays)} of {total}", "", tone))
    else:
        cards.append(_card("Drifted features", _NONE, "no drift comparison", "neutral"))

    if windows:
        last_end = max(_ts(w.end) for w in windows)
        latest = [w for w in windows if _ts(w.end) == last_end]
        overall = next((w for w in latest if w.version == "all"), None)
        status = (
            overall.status
            if overall is not None
            else max((w.status for w in latest), key=lambda s: _STATUS_RANK.get(s, 5))
        )
        tone = {"ok": "good", "drift": "bad", "error": "bad"}.get(status, "neutral")
        cards.append(_card("Latest window", status, _span(latest[0].start, latest[0].end), tone))
    else:
        cards.append(_card("Latest window", _NONE, "no monitored window in this period", "neutral"))

    states = [str(a.get("state", "")) for a in data.alerts]
    firing, pending = states.count("firing"), states.count("pending")
    resolved = len(states) - firing - pending
    sub = f"{pending} pending · {resolved} resolved" if data.alerts else "no alert in this period"
    cards.append(_card("Firing alerts", str(firing), sub, "bad" if firing else "good"))

    if data.verdict is not None:
        kind = str(data.verdict.get("verdict", ""))
        metric = str(data.verdict.get("metric", ""))
        tone = "good" if kind in ("B better", "no significant difference") else "neutral"
        cards.append(_card("A/B verdict", kind or _NONE, f"on {metric}" if metric else "", tone))
    else:
        cards.append(_card("A/B verdict", _NONE, "no A/B comparison", "neutral"))
    return f'<section class="band" aria-label="summary">{"".join(cards)}</section>'


def _notes(data: ReportData) -> str:
    if not data.notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in data.notes)
    return f'<ul class="notes">{items}</ul>'


# ------------------------------------------------------------------------------------------ drift


def _by_version(windows: Iterable[WindowPoint]) -> dict[str, list[WindowPoint]]:
    out: dict[str, list[WindowPoint]] = {}
    for window in windows:
        out.setdefault(window.version, []).append(window)
    # "all" first: it is what endpoint-wide figures are computed on.
    return dict(sorted(out.items(), key=lambda item: (item[0] != "all", item[0])))


def _colours(versions: Iterable[str]) -> dict[str, str]:
    return {v: _VERSION_COLOURS[i % len(_VERSION_COLOURS)] for i, v in enumerate(versions)}


def _legend(colours: Mapping[str, str], extra: str = "") -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>{_e(version)}</span>'
        for version, colour in colours.items()
    )
    return f'<p class="legend">{items}{extra}</p>'


_DRIFT_PREFIX: Final = "drift.column."
# Shape as well as colour: a full cell is a finding (drift, an error), a low one a check that
# passed, so a strip reads the same printed in grey or by a reader who does not tell red from green.
_CELL_HEIGHT: Final = {
    "drift": 1.0,
    "error": 1.0,
    "insufficient": 0.6,
    "ok": 0.35,
    "judged": 0.35,
    "no_traffic": 0.2,
}


def _drift_section(
    data: ReportData, windows: list[WindowPoint], shown: list[Overlay], t0: float, t1: float
) -> str:
    head = "<section><h2>Drift over time</h2>"
    if not windows:
        return head + _placeholder("no monitored window in this period yet") + "</section>"
    series = _by_version(windows)
    with_share = {
        v: ws
        for v, ws in series.items()
        if any(_finite(w.figures.get("drift.share")) is not None for w in ws)
    }
    parts = [head]
    if with_share:
        parts.append(_share_chart(_drift_threshold(data.drift), with_share, t0, t1))
    else:
        parts.append(
            _placeholder("no drift figures yet: the windows had no traffic or too few rows to judge")
        )
    order = [o.column for o in shown]
    for version, ws in series.items():
        parts.append(_heat_strip(version, ws, order, t0, t1, len(series) > 1))
    parts.append("</section>")
    return "".join(parts)


def _drift_threshold(drift: Mapping[str, Any] | None) -> float | None:
    config = drift.get("config") if drift is not None else None
    return _finite(config.get("drift_share")) if isinstance(config, Mapping) else None


def _share_chart(
    threshold: float | None, series: Mapping[str, list[WindowPoint]], t0: float, t1: float
) -> str:
    plot = _Plot(760, 220, 58, 16, 10, 40, t0, t1)
    body = [*_value_axis(plot, [0.0, 0.25, 0.5, 0.75, 1.0], "share of drifted features", percent=True)]
    if threshold is not None and 0 <= threshold <= 1:
        y = plot.y(threshold)
        body.append(
            f'<line class="threshold" x1="{plot.left}" y1="{_f(y)}" x2="{plot.width - plot.right}" '
            f'y2="{_f(y)}"/><text class="note" x="{plot.width - plot.right - 2}" y="{_f(y - 3)}" '
            f'text-anchor="end">dataset drift at {_e(_pct(threshold))}</text>'
        )
    colours = _colours(series)
    for version, ws in series.items():
        colour = colours[version]
        path: list[str] = []
        previous_end: float | None = None
        dots: list[str] = []
        for w in ws:
            share = _finite(w.figures.get("drift.share"))
            if share is None:
                previous_end = None
                continue
            share = min(max(share, 0.0), 1.0)
            xs, xe, y = plot.x(_ts(w.start)), plot.x(_ts(w.end)), plot.y(share)
            joined = previous_end is not None and abs(previous_end - _ts(w.start)) < 1e-6
            path.append(f"{'L' if joined else 'M'}{_f(xs)} {_f(y)}H{_f(xe)}")
            previous_end = _ts(w.end)
            fill = _STATUS_COLOURS.get(w.status, _PLACEHOLDER_STATUS)
            dots.append(
                f'<circle cx="{_f((xs + xe) / 2)}" cy="{_f(y)}" r="2.5" fill="{fill}" stroke="{colour}">'
                f"<title>{_e(version)} {_e(_span(w.start, w.end))}: {_e(_pct(share))} of features drifted "
                f"({_e(w.status)})</title></circle>"
            )
        body.append(f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body.extend(dots)
    body.extend(_time_axis(plot, "window (UTC)"))
    chart = _svg(plot.width, plot.height, "Share of drifted features per window", body)
    return chart + _legend(colours, ' <span class="key">dot colour: window status</span>')


def _runs(values: Sequence[str | None], windows: Sequence[WindowPoint]) -> list[tuple[str, int, int]]:
    """Consecutive adjacent windows with the same value: (value, first index, last index)."""
    out: list[tuple[str, int, int]] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if out:
            last_value, first, last = out[-1]
            adjacent = last == i - 1 and abs(_ts(windows[last].end) - _ts(windows[i].start)) < 1e-6
            if last_value == value and adjacent:
                out[-1] = (value, first, i)
                continue
        out.append((value, i, i))
    return out


def _heat_strip(
    version: str, windows: list[WindowPoint], order: Sequence[str], t0: float, t1: float, named: bool
) -> str:
    drifted: dict[str, int] = {}
    for w in windows:
        for key, value in w.figures.items():
            if key.startswith(_DRIFT_PREFIX):
                name = key[len(_DRIFT_PREFIX) :]
                drifted[name] = drifted.get(name, 0) + (1 if _finite(value) == 1.0 else 0)
    listed = set(order)
    names = [n for n in order if n in drifted]
    names += sorted((n for n in drifted if n not in listed), key=lambda n: (-drifted[n], n))
    row, top = 13, 4
    lanes = len(names) + 1
    height = top + row * lanes + 32
    plot = _Plot(760, height, 170, 16, top, height - top - row * lanes, t0, t1)
    body: list[str] = []

    def lane(index: int, name: str, values: Sequence[str | None], colours: Mapping[str, str]) -> None:
        y = plot.top + index * row
        body.append(
            f'<rect class="lane" x="{plot.left}" y="{y}" width="{_f(plot.inner_width)}" height="{row - 2}"/>'
            f'<text x="{plot.left - 4}" y="{y + row - 4}" text-anchor="end">{_e(_short(name, 26))}'
            f"<title>{_e(name)}</title></text>"
        )
        for value, first, last in _runs(values, windows):
            xs, xe = plot.x(_ts(windows[first].start)), plot.x(_ts(windows[last].end))
            # Titles only where something happened keeps a 50 by 200 strip small.
            title = ""
            if value not in ("ok", "judged"):
                span = _span(windows[first].start, windows[last].end)
                title = f"<title>{_e(name)}: {_e(value)} {_e(span)}</title>"
            tall = (row - 2) * _CELL_HEIGHT.get(value, 1.0)
            body.append(
                f'<rect x="{_f(xs)}" y="{_f(y + row - 2 - tall)}" width="{_f(max(xe - xs, 0.8))}" '
                f'height="{_f(tall)}" fill="{colours.get(value, _PLACEHOLDER_STATUS)}">{title}</rect>'
            )

    lane(0, "window status", [w.status for w in windows], _STATUS_COLOURS)
    cells = {"drift": _STATUS_COLOURS["drift"], "judged": "#dcefdc"}
    for index, name in enumerate(names, start=1):
        values: list[str | None] = []
        for w in windows:
            flag = _finite(w.figures.get(_DRIFT_PREFIX + name))
            values.append(None if flag is None else "drift" if flag >= 1.0 else "judged")
        lane(index, name, values, cells)
    body.extend(_time_axis(plot, "window (UTC)"))
    title = "Window status and drifted columns per window" + (f" · {version}" if named else "")
    out = (f"<h3>{_e(title)}</h3>" if named else "") + _svg(plot.width, height, title, body, "chart strip")
    if not names:
        return out + _placeholder(f"no per-column drift figures for {version} yet")
    swatch = '<span class="key"><span class="swatch" style="background:{}"></span>{}</span>'
    legend = (
        swatch.format(_STATUS_COLOURS["drift"], "drifted")
        + swatch.format(cells["judged"], "judged, no drift")
        + '<span class="key"><span class="swatch lane-swatch"></span>not judged</span> · status row: '
        + "".join(swatch.format(c, s) for s, c in _STATUS_COLOURS.items())
    )
    return f'{out}<p class="legend">{legend}</p>'


# ------------------------------------------------------------------------------------------ distributions


def _comparison_text(drift: Mapping[str, Any] | None) -> list[str]:
    """What the comparison behind the distributions concluded, sentence by sentence."""
    if drift is None:
        return []
    out: list[str] = []
    columns = _drift_columns(drift)
    features = [c for c in columns if c.get("role") == "feature"]
    evaluated = [c for c in features if c.get("status") != "insufficient data"]
    drifted = [c for c in evaluated if c.get("drifted")]
    window_rows, reference_rows = _finite(drift.get("window_rows")), _finite(drift.get("reference_rows"))
    sentence = f"Status {drift.get('status', _NONE)}"
    if window_rows is not None and reference_rows is not None:
        sentence += f": {int(window_rows):,} window rows against {int(reference_rows):,} reference rows"
    sentence += f"; {len(drifted)} of {len(evaluated)} judged features drifted"
    config = drift.get("config")
    threshold = _finite(config.get("drift_share")) if isinstance(config, Mapping) else None
    if threshold is not None:
        sentence += f" (the dataset drifts at {_pct(threshold)})"
    out.append(sentence + ".")
    moved = [str(c.get("column")) for c in columns if c.get("role") == "prediction" and c.get("drifted")]
    if moved:
        out.append(f"The model's output drifted: {', '.join(moved)}.")
    multi = drift.get("multivariate")
    if isinstance(multi, Mapping):
        effect, limit = _finite(multi.get("effect_size")), _finite(multi.get("threshold"))
        if multi.get("status") == "insufficient data" or effect is None:
            out.append("Columns together (PCA reconstruction error): too few rows to judge.")
        else:
            verdict = "drifted" if multi.get("drifted") else "no drift"
            out.append(
                f"Columns together (PCA reconstruction error): {effect * 100:+.1f}% against a threshold of "
                f"±{_pct(limit or 0.0)}: {verdict}."
            )
    schema = drift.get("schema")
    if isinstance(schema, Mapping) and schema.get("changed"):
        pieces: list[str] = []
        for key, words in (
            ("missing_columns", "missing columns"),
            ("added_columns", "unexpected columns"),
            ("type_changes", "changed types"),
            ("out_of_signature", "values the signature refuses"),
        ):
            named = schema.get(key)
            if isinstance(named, Mapping) and named:
                pieces.append(f"{words}: {', '.join(str(n) for n in named)}")
        share = _finite(schema.get("rejected_share"))
        if share:
            pieces.append(f"{_pct(share)} of rows would be rejected")
        out.append("Schema changed: " + "; ".join(pieces) + ".")
    skipped = drift.get("skipped")
    if isinstance(skipped, Mapping) and skipped:
        listed = "; ".join(f"{name} ({why})" for name, why in skipped.items())
        out.append(f"Not compared: {listed}.")
    return out


def _distributions(data: ReportData, shown: list[Overlay]) -> str:
    parts = ["<section><h2>Distributions</h2>"]
    sentences = _comparison_text(data.drift)
    if sentences:
        parts.append(f'<p class="lead">{_e(" ".join(sentences))}</p>')
    if not shown:
        parts.append(_placeholder("no distribution to compare yet: no window has been summarised"))
        return "".join(parts) + "</section>"
    parts.append(
        '<p class="legend"><span class="key"><span class="swatch" style="background:'
        f'{_REFERENCE_COLOUR}"></span>reference</span><span class="key"><span class="swatch outline" '
        f'style="border-color:{_WINDOW_COLOUR}"></span>window</span> · numeric bins each hold an equal '
        "share of the reference, so the reference looks flat where nothing moved</p>"
    )
    parts.append('<div class="grid">')
    parts.extend(_overlay_card(o) for o in shown)
    parts.append("</div></section>")
    return "".join(parts)


def _overlay_card(overlay: Overlay) -> str:
    badges = '<span class="badge bad">drifted</span>' if overlay.drifted else ""
    if overlay.role == "prediction":
        badges += '<span class="badge">model output</span>'
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td>{_e(_pct(r))}</td><td>{_e(_pct(w))}</td></tr>"
        for label, r, w in zip(overlay.labels, overlay.reference, overlay.window, strict=True)
    )
    return (
        f'<figure class="dist{" drifted" if overlay.drifted else ""}"><figcaption><strong>'
        f"{_e(overlay.column)}</strong> {badges}</figcaption>"
        f'<p class="method">{_e(overlay.method)}</p><p class="detail">{_e(overlay.detail)}</p>'
        f"{_overlay_svg(overlay)}<details><summary>values</summary><table><thead><tr>"
        f"<th>{'bin' if overlay.kind == 'numeric' else 'level'}</th><th>reference</th><th>window</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></details></figure>"
    )


def _overlay_svg(overlay: Overlay) -> str:
    width, height, left, right, top, bottom = 340, 160, 42, 8, 8, 42
    count = len(overlay.labels)
    title = f"{overlay.column}: reference and window distributions"
    if not count:
        return _placeholder("no values on either side")
    largest = max([*overlay.reference, *overlay.window, 0.01])
    _, high, ticks = _nice_scale(0.0, largest, 2)
    plot = _Plot(width, height, left, right, top, bottom, 0.0, float(count), 0.0, high)
    body = _value_axis(plot, ticks, "share of rows", percent=True)
    slot = plot.inner_width / count
    base = plot.y(0.0)
    for i, (label, r, w) in enumerate(zip(overlay.labels, overlay.reference, overlay.window, strict=True)):
        x = plot.x(float(i))
        ry, wy = plot.y(r), plot.y(w)
        body.append(
            f"<g><title>{_e(label)}: reference {_e(_pct(r))}, window {_e(_pct(w))}</title>"
            f'<rect x="{_f(x + slot * 0.08)}" y="{_f(ry)}" width="{_f(slot * 0.84)}" '
            f'height="{_f(base - ry)}" fill="{_REFERENCE_COLOUR}"/>'
            f'<rect x="{_f(x + slot * 0.2)}" y="{_f(wy)}" width="{_f(slot * 0.6)}" height="{_f(base - wy)}" '
            f'fill="none" stroke="{_WINDOW_COLOUR}" stroke-width="1.6"/></g>'
        )
    body.append(f'<line class="axis" x1="{left}" y1="{_f(base)}" x2="{width - right}" y2="{_f(base)}"/>')
    text_y = base + 13
    missing = bool(overlay.labels) and overlay.labels[-1] == MISSING_LABEL
    value_bins = count - (1 if missing else 0)
    if overlay.kind == "numeric" and overlay.edges is not None and value_bins:
        texts = _edge_texts(overlay.edges)
        picks = sorted({0, value_bins // 2, value_bins}) if value_bins > 1 else [0, 1]
        for k in picks:
            anchor = "start" if k == 0 else "end" if k == value_bins else "middle"
            body.append(
                f'<text x="{_f(plot.x(float(k)))}" y="{_f(text_y)}" text-anchor="{anchor}">'
                f"{_e(_short(texts[k], 12))}</text>"
            )
        axis = "value (bins of equal reference share)"
    elif count <= 6:
        for i, label in enumerate(overlay.labels[:value_bins]):
            limit = max(3, int(slot / 6))
            body.append(
                f'<text x="{_f(plot.x(i + 0.5))}" y="{_f(text_y)}" text-anchor="middle">'
                f"{_e(_short(label, limit))}</text>"
            )
        axis = "level"
    else:
        axis = "levels, most frequent in the reference first (see the values)"
    if missing:
        body.append(
            f'<text x="{_f(plot.x(float(count)))}" y="{_f(text_y + 11)}" text-anchor="end">missing</text>'
        )
    body.append(
        f'<text class="label" x="{_f(left + plot.inner_width / 2)}" y="{height - 3}" '
        f'text-anchor="middle">{_e(axis)}</text>'
    )
    return _svg(width, height, title, body, "chart small")


# ------------------------------------------------------------------------------------------ performance


@dataclass(frozen=True)
class _Point:
    window: WindowPoint
    value: float
    low: float | None
    high: float | None


def _points(windows: Iterable[WindowPoint], key: str) -> list[_Point | None]:
    out: list[_Point | None] = []
    for w in windows:
        value = _finite(w.figures.get(key))
        if value is None:
            out.append(None)
            continue
        low, high = _finite(w.figures.get(f"{key}.low")), _finite(w.figures.get(f"{key}.high"))
        out.append(_Point(w, value, low, high))
    return out


def _performance(data: ReportData, windows: list[WindowPoint], t0: float, t1: float) -> str:
    metric = data.performance_metric
    head = f"<section><h2>Performance over time · {_e(metric)}</h2>"
    return head + _performance_body(metric, windows, t0, t1) + "</section>"


def _performance_body(metric: str, windows: list[WindowPoint], t0: float, t1: float) -> str:
    series = _by_version(windows)
    realized = {v: _points(ws, f"performance.{metric}") for v, ws in series.items()}
    estimated = {v: _points(ws, f"estimated.{metric}") for v, ws in series.items()}
    has_realized = {v for v, ps in realized.items() if any(ps)}
    has_estimated = {v for v, ps in estimated.items() if any(ps)}
    if not has_realized and not has_estimated:
        return _placeholder(f"no labelled predictions yet, and no estimate of {metric}")
    values: list[float] = []
    for group in (realized, estimated):
        for ps in group.values():
            for p in ps:
                if p is not None:
                    values += [v for v in (p.value, p.low, p.high) if v is not None]
    low, high, ticks = _nice_scale(min(values), max(values), 4)
    plot = _Plot(760, 240, 58, 16, 10, 40, t0, t1, low, high)
    body = _value_axis(plot, ticks, metric)
    shown = [v for v in series if v in has_realized or v in has_estimated]
    colours = _colours(shown)
    for version in shown:
        body.extend(_metric_series(plot, version, realized[version], colours[version], estimate=False))
        body.extend(_metric_series(plot, version, estimated[version], colours[version], estimate=True))
    body.extend(_time_axis(plot, "window (UTC)"))
    parts: list[str] = []
    if not has_realized:
        parts.append(_placeholder("no labelled predictions yet: every point below is an estimate"))
    parts.append(_svg(plot.width, plot.height, f"{metric} per window and version, with intervals", body))
    parts.append(
        _legend(
            colours,
            ' <span class="key">● realized, band = interval</span>'
            '<span class="key">○ dashed = estimated before labels arrive</span>',
        )
    )
    parts.append(_performance_table(metric, {v: series[v] for v in shown}, realized, estimated))
    return "".join(parts)


def _metric_series(
    plot: _Plot, version: str, points: Sequence[_Point | None], colour: str, *, estimate: bool
) -> list[str]:
    out: list[str] = []
    segments: list[list[_Point]] = [[]]
    for point in points:
        if point is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append(point)
    dash = ' stroke-dasharray="4 3"' if estimate else ""
    what = "estimated" if estimate else "realized"
    for segment in segments:
        if not segment:
            continue
        xs = [plot.x((_ts(p.window.start) + _ts(p.window.end)) / 2) for p in segment]
        bounded = [p.low is not None and p.high is not None for p in segment]
        if not estimate and len(segment) > 1 and all(bounded):
            upper = [f"{_f(x)},{_f(plot.y(p.high or 0.0))}" for x, p in zip(xs, segment, strict=True)]
            lower = [f"{_f(x)},{_f(plot.y(p.low or 0.0))}" for x, p in zip(xs, segment, strict=True)]
            out.append(
                f'<polygon points="{" ".join(upper + lower[::-1])}" fill="{colour}" fill-opacity="0.15"/>'
            )
        if len(segment) > 1:
            line = " L".join(f"{_f(x)} {_f(plot.y(p.value))}" for x, p in zip(xs, segment, strict=True))
            out.append(f'<path d="M{line}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        for x, p in zip(xs, segment, strict=True):
            interval = ""
            if p.low is not None and p.high is not None:
                interval = f" [{_num(p.low)}, {_num(p.high)}]"
                if estimate or len(segment) == 1:
                    out.append(
                        f'<line x1="{_f(x)}" y1="{_f(plot.y(p.low))}" x2="{_f(x)}" y2="{_f(plot.y(p.high))}" '
                        f'stroke="{colour}"{dash}/>'
                    )
            fill = "#ffffff" if estimate else colour
            out.append(
                f'<circle cx="{_f(x)}" cy="{_f(plot.y(p.value))}" r="3" fill="{fill}" stroke="{colour}" '
                f'stroke-width="1.5"><title>{_e(version)} {_e(_span(p.window.start, p.window.end))}: '
                f"{what} {_num(p.value)}{interval}</title></circle>"
            )
    return out


def _performance_table(
    metric: str,
    series: Mapping[str, list[WindowPoint]],
    realized: Mapping[str, list[_Point | None]],
    estimated: Mapping[str, list[_Point | None]],
) -> str:
    def latest(points: Sequence[_Point | None]) -> str:
        found = [p for p in points if p is not None]
        if not found:
            return _NONE
        p = found[-1]
        interval = f" [{_num(p.low)}, {_num(p.high)}]" if p.low is not None and p.high is not None else ""
        return f"{_num(p.value)}{interval} · {_span(p.window.start, p.window.end)}"

    rows: list[str] = []
    for version, ws in series.items():
        coverage = [c for c in (_finite(w.figures.get("labels.coverage")) for w in ws) if c is not None]
        labelled = sum(p is not None for p in realized[version])
        rows.append(
            f"<tr><td>{_e(version)}</td><td>{_e(latest(realized[version]))}</td>"
            f"<td>{_e(latest(estimated[version]))}</td><td>{labelled} of {len(ws)}</td>"
            f"<td>{_e(_pct(coverage[-1])) if coverage else _NONE}</td></tr>"
        )
    return (
        f"<table><thead><tr><th>version</th><th>latest realized {_e(metric)}</th><th>latest estimate</th>"
        "<th>windows with labels</th><th>label coverage (latest)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# ------------------------------------------------------------------------------------------ verdict, alerts


def _verdict(verdict: Mapping[str, Any] | None) -> str:
    return "<section><h2>A/B verdict</h2>" + _verdict_body(verdict) + "</section>"


def _verdict_body(verdict: Mapping[str, Any] | None) -> str:
    if verdict is None:
        return _placeholder(
            "no A/B comparison in this period: one route only, or no labelled predictions yet"
        )
    kind = str(verdict.get("verdict", ""))
    message = str(verdict.get("message") or kind or "no verdict")
    tone = {"B better": "good", "A better": "bad"}.get(kind, "neutral")
    metric = str(verdict.get("metric", ""))
    a_ref, b_ref = str(verdict.get("a_ref", "A")), str(verdict.get("b_ref", "B"))

    def figure(key: str) -> str:
        value = _finite(verdict.get(key))
        return _NONE if value is None else _num(value, 4)

    def count(key: str) -> str:
        value = _finite(verdict.get(key))
        return _NONE if value is None else f"{int(value):,}"

    confidence = _finite(verdict.get("confidence"))
    low, high = _finite(verdict.get("low")), _finite(verdict.get("high"))
    interval = _NONE if low is None or high is None else f"[{_num(low, 4)}, {_num(high, 4)}]"
    if confidence is not None and low is not None:
        interval += f" at {_pct(confidence)}"
    rows = [
        ("metric", metric or _NONE),
        (f"A = {a_ref}", f"{figure('a')} on {count('n_a')} labelled rows"),
        (f"B = {b_ref}", f"{figure('b')} on {count('n_b')} labelled rows"),
        ("difference B - A", f"{figure('difference')}, interval {interval}"),
        ("test", str(verdict.get("test", _NONE))),
        ("p-value", figure("p_value")),
        ("minimum detectable effect", figure("mde")),
        ("design", str(verdict.get("design", _NONE))),
        ("labelled rows at the horizon", count("horizon")),
        ("labelled rows still needed", count("needed")),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    chart = ""
    difference = _finite(verdict.get("difference"))
    if low is not None and high is not None and difference is not None:
        chart = _interval_svg(difference, low, high, _finite(verdict.get("mde")), metric, a_ref, b_ref)
    return f'<p class="verdict {tone}">{_e(message)}</p>{chart}<dl class="meta">{items}</dl>'


def _interval_svg(
    difference: float, low: float, high: float, mde: float | None, metric: str, a_ref: str, b_ref: str
) -> str:
    edges = [low, high, 0.0, difference]
    if mde is not None and mde > 0:
        edges += [-mde, mde]
    v0, v1, ticks = _nice_scale(min(edges), max(edges), 6)
    width, height = 560, 96
    # the value axis runs horizontally here: reuse the time mapping of _Plot for it
    plot = _Plot(width, height, 20, 20, 10, 46, v0, v1)
    middle = 30.0
    body: list[str] = []
    if mde is not None and mde > 0:
        xs, xe = plot.x(-mde), plot.x(mde)
        body.append(
            f'<rect x="{_f(xs)}" y="12" width="{_f(xe - xs)}" height="36" fill="#eeeeee">'
            f"<title>differences smaller than the minimum detectable effect ({_num(mde)})</title></rect>"
        )
    zero = plot.x(0.0)
    body.append(f'<line class="axis" x1="{_f(zero)}" y1="8" x2="{_f(zero)}" y2="52"/>')
    xl, xh, xd = plot.x(low), plot.x(high), plot.x(difference)
    body.append(
        f'<line x1="{_f(xl)}" y1="{middle}" x2="{_f(xh)}" y2="{middle}" stroke="#333" stroke-width="2"/>'
        + "".join(
            f'<line x1="{_f(x)}" y1="{middle - 6}" x2="{_f(x)}" y2="{middle + 6}" '
            'stroke="#333" stroke-width="2"/>'
            for x in (xl, xh)
        )
        + f'<circle cx="{_f(xd)}" cy="{middle}" r="4" fill="#333"/>'
    )
    base = 56.0
    body.append(f'<line class="axis" x1="{plot.left}" y1="{base}" x2="{width - plot.right}" y2="{base}"/>')
    for value in ticks:
        x = plot.x(value)
        body.append(
            f'<line class="tick" x1="{_f(x)}" y1="{base}" x2="{_f(x)}" y2="{base + 4}"/>'
            f'<text x="{_f(x)}" y="{base + 15}" text-anchor="middle">{_num(value)}</text>'
        )
    label = f"difference in {metric}, {b_ref} - {a_ref} (grey: smaller than the minimum detectable effect)"
    body.append(
        f'<text class="label" x="{width / 2}" y="{height - 3}" text-anchor="middle">{_e(label)}</text>'
    )
    title = f"Interval of the difference in {metric}, {b_ref} minus {a_ref}"
    return _svg(width, height, title, body, "chart interval")


_ALERT_ORDER: Final = {"firing": 0, "pending": 1}


def _alerts(alerts: Sequence[Mapping[str, Any]]) -> str:
    head = "<section><h2>Alerts</h2>"
    if not alerts:
        return head + _placeholder("no alerts in this period") + "</section>"

    def started(alert: Mapping[str, Any]) -> float:
        moment = alert.get("started_at")
        if isinstance(moment, str):
            with contextlib.suppress(ValueError):
                moment = dt.datetime.fromisoformat(moment)
        return -_ts(moment) if isinstance(moment, dt.datetime) else 0.0

    ordered = sorted(alerts, key=lambda a: (_ALERT_ORDER.get(str(a.get("state", "")), 2), started(a)))
    rows: list[str] = []
    for alert in ordered:
        state = str(alert.get("state", ""))
        shown_state = state or _NONE
        if alert.get("inhibited"):
            shown_state += " (inhibited)"
        if alert.get("acked_by"):
            shown_state += f" (acknowledged by {alert.get('acked_by')})"
        model, version = alert.get("model") or "", alert.get("version")
        target = str(model)
        if version not in (None, "", 0):
            target = f"{model}:{version}" if model and ":" not in str(version) else str(version)
        number = _finite(alert.get("value"))
        shown = _NONE if number is None else _num(number, 4)
        rows.append(
            f'<tr class="{_e(state)}"><td>{_e(shown_state)}</td>'
            f"<td>{_e(alert.get('severity', _NONE))}</td>"
            f"<td>{_e(alert.get('rule', _NONE))}</td><td>{_e(target or 'all')}</td><td>{shown}</td>"
            f"<td>{_e(alert.get('summary', ''))}</td><td>{_e(_when(alert.get('started_at')))}</td>"
            f"<td>{_e(_when(alert.get('fired_at')))}</td><td>{_e(_when(alert.get('resolved_at')))}</td></tr>"
        )
    return (
        f'{head}<table class="alerts"><thead><tr><th>state</th><th>severity</th><th>rule</th><th>version</th>'
        "<th>value</th><th>summary</th><th>started</th><th>fired</th><th>resolved</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _window_table(data: ReportData, windows: list[WindowPoint]) -> str:
    if not windows:
        return ""
    metric = data.performance_metric

    def cell(w: WindowPoint, key: str, percent: bool = False) -> str:
        value = _finite(w.figures.get(key))
        if value is None:
            return f"<td>{_NONE}</td>"
        return f"<td>{_e(_pct(value)) if percent else _num(value)}</td>"

    rows = "".join(
        f"<tr><td>{_e(_span(w.start, w.end))}</td><td>{_e(w.version)}</td><td>{_e(w.status)}</td>"
        f"<td>{w.rows:,}</td>{cell(w, 'drift.share', True)}{cell(w, 'latency.p99_ms')}"
        f"{cell(w, 'errors.rate', True)}{cell(w, f'performance.{metric}')}{cell(w, f'estimated.{metric}')}"
        f"{cell(w, 'labels.coverage', True)}</tr>"
        for w in windows
    )
    return (
        f"<section><details><summary>Every window ({len(windows)})</summary><table><thead><tr>"
        "<th>window</th><th>version</th><th>status</th><th>rows</th><th>drifted features</th>"
        f"<th>p99 latency (ms)</th><th>error rate</th><th>{_e(metric)}</th><th>estimated</th>"
        f"<th>label coverage</th></tr></thead><tbody>{rows}</tbody></table></details></section>"
    )


# ------------------------------------------------------------------------------------------ pieces
# The web console draws the same charts inside its own pages: these give it the report's
# pieces without the page around them, so there is one charting code for both.


def _period(
    windows: Iterable[WindowPoint], since: dt.datetime, until: dt.datetime
) -> tuple[list[WindowPoint], float, float]:
    ordered = sorted(windows, key=lambda w: (_ts(w.start), w.version))
    t0 = min([_ts(since), *(_ts(w.start) for w in ordered)])
    t1 = max([_ts(until), *(_ts(w.end) for w in ordered)])
    return ordered, t0, max(t1, t0 + 1.0)


def drift_heatmap(
    windows: Iterable[WindowPoint],
    *,
    since: dt.datetime,
    until: dt.datetime,
    order: Sequence[str] = (),
) -> str:
    """Features by windows, one strip per version: the window status row, then a row per column.

    ``order`` names the columns to list first (the others follow, most often drifted first).
    """
    ordered, t0, t1 = _period(windows, since, until)
    if not ordered:
        return _placeholder("no monitored window in this period yet")
    series = _by_version(ordered)
    return "".join(_heat_strip(v, ws, order, t0, t1, len(series) > 1) for v, ws in series.items())


def drift_share_chart(
    windows: Iterable[WindowPoint],
    *,
    since: dt.datetime,
    until: dt.datetime,
    drift: Mapping[str, Any] | None = None,
) -> str:
    """The share of drifted features per window and version; ``drift`` (a drift report's dict)
    draws the dataset-drift threshold of its configuration."""
    ordered, t0, t1 = _period(windows, since, until)
    series = {
        v: ws
        for v, ws in _by_version(ordered).items()
        if any(_finite(w.figures.get("drift.share")) is not None for w in ws)
    }
    if not series:
        return _placeholder("no drift figures yet: the windows had no traffic or too few rows to judge")
    return _share_chart(_drift_threshold(drift), series, t0, t1)


def distribution_card(overlay: Overlay) -> str:
    """One column's reference and window distributions, with the check that judged it and its values."""
    return _overlay_card(overlay)


def comparison_text(drift: Mapping[str, Any] | None) -> list[str]:
    """What a drift report (its dict) concluded, sentence by sentence."""
    return _comparison_text(drift)


def performance_chart(
    windows: Iterable[WindowPoint], metric: str, *, since: dt.datetime, until: dt.datetime
) -> str:
    """``metric`` per window and version: realized with its interval, estimated before labels arrive,
    and the table of the latest figures and label coverage."""
    ordered, t0, t1 = _period(windows, since, until)
    return _performance_body(metric, ordered, t0, t1)


def verdict_summary(verdict: Mapping[str, Any] | None) -> str:
    """The A/B verdict (``Verdict.to_dict()`` with its message) in words, its interval and figures."""
    return _verdict_body(verdict)


def time_series_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[dt.datetime, float | None]]],
    *,
    since: dt.datetime,
    until: dt.datetime,
    label: str,
    percent: bool = False,
    unit: str = "",
) -> str:
    """One line per series (a version), a dot per point with its value in a tooltip.

    ``None`` is a gap (no traffic in that step): the line breaks there instead of pretending
    to know. Values are shares when ``percent``; ``unit`` follows other values in tooltips.
    """
    shown = {name: [(t, v) for t, v in points] for name, points in series.items()}
    values = [v for points in shown.values() for _, v in points if v is not None and math.isfinite(v)]
    if not values:
        return _placeholder(f"no {label} in this period: no request was recorded")
    t0, t1 = _ts(since), max(_ts(until), _ts(since) + 1.0)
    low = 0.0 if min(values) >= 0 else min(values)
    high = max(values)
    if percent:
        high = min(max(high, 0.01), 1.0) if high <= 1.0 else high
    low, high, ticks = _nice_scale(low, high if high > low else low + (0.01 if percent else 1.0), 4)
    plot = _Plot(760, 220, 58, 16, 10, 40, t0, t1, low, high)
    body = _value_axis(plot, ticks, label, percent=percent)
    colours = _colours(shown)
    for name, points in shown.items():
        colour = colours[name]
        path: list[str] = []
        dots: list[str] = []
        joined = False
        for moment, value in points:
            if value is None or not math.isfinite(value):
                joined = False
                continue
            x, y = plot.x(_ts(moment)), plot.y(value)
            path.append(f"{'L' if joined else 'M'}{_f(x)} {_f(y)}")
            joined = True
            shown_value = _pct(value) if percent else f"{_num(value)}{unit}"
            dots.append(
                f'<circle class="point" cx="{_f(x)}" cy="{_f(y)}" r="2.2" fill="{colour}">'
                f"<title>{_e(name)} {_e(_when(moment))}: {_e(shown_value)}</title></circle>"
            )
        if path:
            body.append(f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body.extend(dots)
    body.extend(_time_axis(plot, "time (UTC)"))
    return _svg(plot.width, plot.height, title, body) + _legend(colours)


_CSS: Final = (
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
    "color:#222;margin:0 auto;max-width:1200px;padding:0 20px 40px}"
    "h1{font-size:22px;margin:20px 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;"
    "padding-bottom:4px}h3{font-size:14px;margin:14px 0 4px}"
    "dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}"
    "dl.meta dt{color:#666}dl.meta dd{margin:0}"
    ".band{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px;margin:16px 0}"
    ".card{border:1px solid #ddd;border-left:5px solid #999;border-radius:4px;padding:8px 12px}"
    ".card.good{border-left-color:#2e7d32}.card.bad{border-left-color:#c62828}"
    ".card-title{color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.04em}"
    ".card-value{font-size:20px;font-weight:600}.card-sub{color:#555;font-size:12px}"
    ".notes{background:#fff8e1;border:1px solid #f0d78c;border-radius:4px;padding:8px 8px 8px 28px}"
    ".empty{color:#666;font-style:italic;background:#f6f6f6;padding:10px;border-radius:4px}"
    ".lead{margin:4px 0 10px}.legend{font-size:12px;color:#444;margin:4px 0 12px}"
    ".key{margin-right:12px;white-space:nowrap}"
    ".swatch{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;"
    "border:1px solid #bbb}.swatch.outline{background:none;border-width:2px}"
    ".lane-swatch{background:#f3f3f3}"
    "svg{display:block;max-width:100%;height:auto}svg text{font-size:10px;fill:#333}"
    "svg .label{font-size:11px;fill:#555}svg .note{font-size:10px;fill:#c62828}"
    "svg .axis{stroke:#888}svg .tick{stroke:#888}svg .grid{stroke:#eee}"
    "svg .threshold{stroke:#c62828;stroke-dasharray:5 4}svg .lane{fill:#f3f3f3}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(350px,1fr));gap:12px}"
    "figure.dist{margin:0;border:1px solid #ddd;border-radius:4px;padding:8px}"
    "figure.dist.drifted{border-color:#c62828;box-shadow:inset 4px 0 0 #c62828}"
    "figcaption{font-size:14px;word-break:break-all}.method,.detail{margin:2px 0;font-size:12px;color:#444}"
    ".badge{font-size:11px;border:1px solid #999;border-radius:3px;padding:0 4px;margin-left:4px;color:#444}"
    ".badge.bad{border-color:#c62828;color:#c62828}"
    "table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border-bottom:1px solid #eee;"
    "padding:3px 8px;text-align:left;vertical-align:top}th{color:#555}"
    "tr.firing td:first-child{color:#c62828;font-weight:600}tr.pending td:first-child{color:#a66b00}"
    ".verdict{font-size:16px;font-weight:600;padding:8px 12px;border-left:5px solid #999;background:#fafafa}"
    ".verdict.good{border-left-color:#2e7d32}.verdict.bad{border-left-color:#c62828}"
    "details summary{cursor:pointer;color:#444}footer{margin-top:30px;color:#777;font-size:12px}"
    "@media print{details{display:block}}"
)
