"""Reference statistics, computed once per version, and window sketches, streamed.

:class:`ReferenceStats` summarises a reference frame (by default a version's training
dataset) into JSON-safe histograms on a grid of its own quantiles (see
:mod:`passerelle.drift.histograms`), the noise level of each statistic between random
chunks of the reference, and the second moments the multivariate check needs. It is
computed once and stored.

:class:`WindowSketch` summarises traffic on the same grid, batch by batch, in memory that
does not depend on how many rows it has seen; two sketches of the same reference merge
by addition. Comparing a window therefore costs time proportional to the window, never
to the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from passerelle.drift.config import DETAIL_METHODS, DriftConfig
from passerelle.drift.histograms import (
    CategoricalHist,
    CategoricalPair,
    FloatArray,
    Hist,
    Kind,
    NumericGrid,
    NumericHist,
    NumericPair,
    Pair,
    Role,
)
from passerelle.drift.multivariate import Moments, Standardisation, one_blas_thread, standardise
from passerelle.errors import InvalidInputError
from passerelle.signature import LOGICAL_TYPES, Column, Signature, infer_signature, logical_type
from passerelle.tables import to_frame

FORMAT_VERSION: Final = 1
DEFAULT_BINS: Final = 1000
DEFAULT_CHUNKS: Final = 10
#: string or boolean columns with more distinct values are identifiers or free text
DEFAULT_MAX_LEVELS: Final = 200
#: distinct new levels a window tracks per column; the rest are counted together
MAX_NEW_LEVELS: Final = 50
#: rows handled at once inside a batch, which bounds the memory of the temporaries
ROWS_PER_STEP: Final = 1 << 18
_MIN_CHUNK_ROWS: Final = 50

Table = Any  # a pandas DataFrame, or a pyarrow Table / RecordBatch


@dataclass(frozen=True, eq=False)
class ColumnSpec:
    """How one reference column is compared."""

    name: str
    kind: Kind
    role: Role
    #: the logical type in the reference (see :data:`passerelle.signature.LOGICAL_TYPES`)
    type: str
    grid: NumericGrid | None = None
    #: the reference's levels, most frequent first (categorical columns)
    levels: tuple[str, ...] = ()

    def empty(self) -> Hist:
        if self.grid is not None:
            return NumericHist.empty(self.grid)
        return CategoricalHist()

    def pair(self, reference: Hist, window: Hist) -> Pair:
        if self.grid is not None:
            assert isinstance(reference, NumericHist)
            assert isinstance(window, NumericHist)
            return NumericPair(self.grid, reference, window)
        assert isinstance(reference, CategoricalHist)
        assert isinstance(window, CategoricalHist)
        return CategoricalPair(reference, window)

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "role": self.role}
        if self.grid is not None:
            out["grid"] = [
                hashlib.sha256(self.grid.edges.tobytes()).hexdigest(),
                hashlib.sha256(self.grid.quantiles.tobytes()).hexdigest(),
                self.grid.shift,
            ]
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "role": self.role, "type": self.type}
        if self.grid is not None:
            out["grid"] = self.grid.to_dict()
        else:
            out["levels"] = list(self.levels)
        return out

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> ColumnSpec:
        kind, role = data["kind"], data["role"]
        if kind not in ("numeric", "categorical") or role not in ("feature", "prediction"):
            raise InvalidInputError(f"column {name!r}: unknown kind {kind!r} or role {role!r}")
        grid = NumericGrid.from_dict(data["grid"]) if kind == "numeric" else None
        return cls(name, kind, role, str(data["type"]), grid, tuple(str(v) for v in data.get("levels", ())))


# ---------------------------------------------------------------------------------------
# reading columns


def _table(data: Table) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    to_pandas = getattr(data, "to_pandas", None)
    if callable(to_pandas):
        frame = to_pandas()
        if isinstance(frame, pd.DataFrame):
            return frame
    return to_frame(data)


def _columns(frame: pd.DataFrame) -> dict[str, pd.Series[Any]]:
    out: dict[str, pd.Series[Any]] = {}
    for position, label in enumerate(frame.columns):
        out.setdefault(str(label), frame.iloc[:, position])
    return out


def numeric_values(series: pd.Series[Any]) -> tuple[FloatArray, int, int]:
    """Values as float64 (NaN where unusable), the count of missing ones and of invalid ones.

    Invalid values are present but not finite numbers: infinities, text in a numeric column.
    """
    dtype = series.dtype
    rows = len(series)
    if isinstance(dtype, pd.CategoricalDtype):
        series = pd.Series(np.asarray(series, dtype=object))
        dtype = series.dtype
    if ptypes.is_bool_dtype(dtype) or ptypes.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = int(np.count_nonzero(np.isnan(values)))
    elif ptypes.is_datetime64_any_dtype(dtype):
        missing = int(series.isna().sum())
        return np.full(rows, np.nan), missing, rows - missing
    else:
        missing = int(series.isna().sum())
        numbers = pd.to_numeric(series, errors="coerce")
        values = np.asarray(numbers.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    finite = int(np.count_nonzero(np.isfinite(values)))
    return values, missing, rows - missing - finite


def level_name(value: Any) -> str:
    """How a categorical value is named in histograms and reports."""
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def level_counts(series: pd.Series[Any]) -> tuple[dict[str, int], int]:
    """Counts per level (as text) and the number of missing values."""
    missing = int(series.isna().sum())
    counted = series.value_counts(dropna=True, sort=False)
    out: dict[str, int] = {}
    for value, count in zip(counted.index.tolist(), counted.to_numpy().tolist(), strict=True):
        if count:
            name = level_name(value)
            out[name] = out.get(name, 0) + int(count)
    return out, missing


# ---------------------------------------------------------------------------------------
# accumulating rows on a grid


@dataclass(eq=False)
class _Accumulator:
    """Histograms of the reference's columns and the multivariate moments of some rows."""

    specs: dict[str, ColumnSpec]
    standard: Standardisation | None
    hists: dict[str, Hist]
    moments: Moments | None
    rows: int = 0
    #: column -> rows of batches that did not have it
    absent: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, specs: dict[str, ColumnSpec], standard: Standardisation | None) -> _Accumulator:
        moments = Moments.empty(len(standard.columns)) if standard is not None else None
        return cls(specs, standard, {name: spec.empty() for name, spec in specs.items()}, moments)

    def update(self, frame: pd.DataFrame, known: Mapping[str, frozenset[str]] | None) -> None:
        with one_blas_thread():
            self._update(frame, known)

    def _update(self, frame: pd.DataFrame, known: Mapping[str, frozenset[str]] | None) -> None:
        columns = _columns(frame)
        rows = len(frame)
        self.rows += rows
        numbers: dict[str, FloatArray] = {}
        for name, spec in self.specs.items():
            series = columns.get(name)
            if series is None:
                self.absent[name] = self.absent.get(name, 0) + rows
                continue
            hist = self.hists[name]
            hist.rows += rows
            if isinstance(hist, NumericHist):
                assert spec.grid is not None
                values, missing, invalid = numeric_values(series)
                hist.missing += missing
                hist.invalid += invalid
                finite = values[np.isfinite(values)] if missing or invalid else values.copy()
                finite.sort()
                hist.add_sorted(spec.grid, finite)
                numbers[name] = values
            else:
                counts, missing = level_counts(series)
                hist.missing += missing
                hist.add_counts(counts, None if known is None else known[name], MAX_NEW_LEVELS)
        if self.moments is not None and self.standard is not None and rows:
            absent = np.full(rows, np.nan)
            arrays = [numbers.get(name, absent) for name in self.standard.columns]
            self.moments.add(standardise(arrays, self.standard))

    def merged(self, other: _Accumulator, known: Mapping[str, frozenset[str]] | None) -> _Accumulator:
        hists: dict[str, Hist] = {}
        for name, mine in self.hists.items():
            theirs = other.hists[name]
            if isinstance(mine, NumericHist):
                assert isinstance(theirs, NumericHist)
                hists[name] = mine.merged(theirs)
            else:
                assert isinstance(theirs, CategoricalHist)
                hists[name] = mine.merged(theirs, None if known is None else known[name], MAX_NEW_LEVELS)
        moments = None
        if self.moments is not None and other.moments is not None:
            moments = self.moments.merged(other.moments)
        absent = dict(self.absent)
        for name, rows in other.absent.items():
            absent[name] = absent.get(name, 0) + rows
        return _Accumulator(self.specs, self.standard, hists, moments, self.rows + other.rows, absent)

    def hists_to_dict(self) -> dict[str, Any]:
        return {name: hist.to_dict() for name, hist in self.hists.items()}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], specs: dict[str, ColumnSpec], standard: Standardisation | None
    ) -> _Accumulator:
        raw = data["columns"]
        if set(raw) != set(specs):
            raise InvalidInputError("the histograms do not match the reference's columns")
        hists: dict[str, Hist] = {}
        for name, spec in specs.items():
            if spec.grid is not None:
                hists[name] = NumericHist.from_dict(raw[name], spec.grid)
            else:
                hists[name] = CategoricalHist.from_dict(raw[name])
        moments = None
        if standard is not None and data.get("moments") is not None:
            moments = Moments.from_dict(data["moments"], len(standard.columns))
        absent = {str(k): int(v) for k, v in data.get("absent", {}).items()}
        return cls(specs, standard, hists, moments, int(data["rows"]), absent)


def _steps(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    if len(frame) <= ROWS_PER_STEP:
        yield frame
        return
    for start in range(0, len(frame), ROWS_PER_STEP):
        yield frame.iloc[start : start + ROWS_PER_STEP]


# ---------------------------------------------------------------------------------------
# reference


@dataclass(eq=False)
class ReferenceStats:
    """The stored summary of a reference; see the module docstring.

    Build it with :meth:`from_frame`, store :meth:`to_dict` (JSON-safe), reload it with
    :meth:`from_dict`, and open windows on it with :meth:`window`.
    """

    specs: dict[str, ColumnSpec]
    hists: dict[str, Hist]
    #: column -> method key -> noise level: the statistic between a random chunk of the
    #: reference and the rest, times n_eff ** null_power, averaged over the chunks
    noise: dict[str, dict[str, float]]
    signature: Signature
    rows: int
    standard: Standardisation | None = None
    #: second moments per random chunk of the reference (multivariate check)
    chunk_moments: list[Moments] = field(default_factory=list)
    #: columns left out, and why
    skipped: dict[str, str] = field(default_factory=dict)
    bins: int = DEFAULT_BINS
    #: identifies the grids: windows and references with the same key compare and merge
    key: str = field(init=False)
    _known: dict[str, frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        identity = {
            "columns": [spec.fingerprint() for spec in self.specs.values()],
            "standard": None if self.standard is None else self.standard.to_dict(),
        }
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        self.key = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        self._known = {
            name: frozenset(spec.levels) | frozenset(self._levels(name))
            for name, spec in self.specs.items()
            if spec.kind == "categorical"
        }

    def _levels(self, name: str) -> list[str]:
        hist = self.hists[name]
        return list(hist.counts) if isinstance(hist, CategoricalHist) else []

    @property
    def columns(self) -> list[str]:
        return list(self.specs)

    def multivariate_rows(self) -> int:
        """Rows behind the multivariate check's moments (0 without the check)."""
        return sum(m.rows for m in self.chunk_moments)

    @property
    def known_levels(self) -> dict[str, frozenset[str]]:
        """Categorical column -> the levels the reference has seen."""
        return self._known

    # -- building ---------------------------------------------------------------------

    @classmethod
    def from_frame(
        cls,
        frame: Table,
        signature: Signature | None = None,
        *,
        predictions: Sequence[str] = (),
        bins: int = DEFAULT_BINS,
        chunks: int = DEFAULT_CHUNKS,
        max_levels: int = DEFAULT_MAX_LEVELS,
        config: DriftConfig | None = None,
        like: ReferenceStats | None = None,
        seed: int = 0,
    ) -> ReferenceStats:
        """Summarise ``frame``.

        ``signature`` (the version's) chooses the feature columns and their types; without
        one every column is used and the signature is inferred. ``predictions`` names
        columns holding the model's outputs on the reference: they are compared like
        features but reported apart. ``bins`` is the resolution of numeric grids (divisible
        by the bin counts of PSI and Jensen-Shannon). ``config`` names the methods whose
        noise levels are measured (by default :class:`DriftConfig`'s). ``like`` reuses
        another reference's grids so that the two merge; ``seed`` fixes the random chunks.
        """
        frame = _table(frame)
        if bins < 2:
            raise InvalidInputError(f"bins must be at least 2, got {bins}")
        if chunks < 1:
            raise InvalidInputError(f"chunks must be at least 1, got {chunks}")
        config = config or DriftConfig()
        columns = _columns(frame)
        absent_predictions = [p for p in predictions if p not in columns]
        if absent_predictions:
            raise InvalidInputError(f"prediction columns not in the frame: {', '.join(absent_predictions)}")
        if signature is None:
            signature = _infer(frame, skip=set(predictions))
        wanted = [c.name for c in signature.columns] + [p for p in predictions if p not in signature.names]
        roles: dict[str, Role] = dict.fromkeys(wanted, "feature")
        roles.update(dict.fromkeys(predictions, "prediction"))

        skipped: dict[str, str] = {}
        specs: dict[str, ColumnSpec] = {}
        for name in wanted:
            series = columns.get(name)
            if series is None:
                skipped[name] = "not in the reference"
                continue
            if like is not None:
                theirs = like.specs.get(name)
                if theirs is None:
                    skipped[name] = like.skipped.get(name, "not in the reference it is like")
                else:
                    specs[name] = theirs
                continue
            ltype = signature.column(name).type if name in signature.names else None
            spec, why = _spec(name, series, ltype, roles[name], bins, max_levels)
            if spec is None:
                skipped[name] = why
            else:
                specs[name] = spec
        if like is not None and set(specs) != set(like.specs):
            raise InvalidInputError("the frame does not have the columns of the reference it is like")

        standard = like.standard if like is not None else _standardisation(specs, columns)
        # Random chunks, not slices: a reference sorted by some column must not look noisy.
        order = np.random.default_rng(seed).permutation(len(frame))
        count = max(1, min(chunks, len(frame) // _MIN_CHUNK_ROWS))
        parts: list[_Accumulator] = []
        for indices in np.array_split(order, count):
            part = _Accumulator.empty(specs, standard)
            rows = frame.take(np.sort(indices))
            for step in _steps(rows):
                part.update(step, None)
            parts.append(part)
        total = parts[0]
        for part in parts[1:]:
            total = total.merged(part, None)
        noise = _noise(specs, total.hists, [p.hists for p in parts], config)
        moments = [p.moments for p in parts if p.moments is not None] if standard is not None else []
        return cls(
            specs=specs,
            hists=total.hists,
            noise=noise,
            signature=signature,
            rows=len(frame),
            standard=standard,
            chunk_moments=moments,
            skipped=skipped,
            bins=like.bins if like is not None else bins,
        )

    def window(self, *, validate: bool = True) -> WindowSketch:
        """An empty window on this reference."""
        return WindowSketch(self, validate=validate)

    def merge(self, other: ReferenceStats) -> ReferenceStats:
        """The reference of both frames; both must share their grids (built with ``like=``).

        Noise levels are averaged, weighted by values seen: an approximation, exact only
        when both parts are alike.
        """
        if other.key != self.key:
            raise InvalidInputError(
                "references with different grids cannot merge; build one with like=the other"
            )
        total = _Accumulator(self.specs, self.standard, self.hists, None).merged(
            _Accumulator(other.specs, other.standard, other.hists, None), None
        )
        noise: dict[str, dict[str, float]] = {}
        for name in self.specs:
            mine, theirs = self.noise.get(name, {}), other.noise.get(name, {})
            a, b = self.hists[name].n, other.hists[name].n
            noise[name] = {
                key: (mine[key] * a + theirs[key] * b) / (a + b) if a + b else mine[key]
                for key in mine.keys() & theirs.keys()
            }
        return ReferenceStats(
            specs=self.specs,
            hists=total.hists,
            noise=noise,
            signature=self.signature,
            rows=self.rows + other.rows,
            standard=self.standard,
            chunk_moments=self.chunk_moments + other.chunk_moments,
            skipped={**other.skipped, **self.skipped},
            bins=self.bins,
        )

    # -- storage ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (no NaN, no infinity) that :meth:`from_dict` reads back."""
        return {
            "format": "passerelle.drift.reference",
            "version": FORMAT_VERSION,
            "rows": self.rows,
            "bins": self.bins,
            "signature": self.signature.to_dict(),
            "specs": {name: spec.to_dict() for name, spec in self.specs.items()},
            "columns": {name: hist.to_dict() for name, hist in self.hists.items()},
            "noise": self.noise,
            "skipped": self.skipped,
            "standard": None if self.standard is None else self.standard.to_dict(),
            "chunk_moments": [m.to_dict() for m in self.chunk_moments],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        if not isinstance(data, Mapping) or data.get("format") != "passerelle.drift.reference":
            raise InvalidInputError("not passerelle drift reference statistics")
        if data.get("version") != FORMAT_VERSION:
            raise InvalidInputError(
                f"reference statistics of format version {data.get('version')!r}; "
                f"this passerelle reads version {FORMAT_VERSION}: recompute them"
            )
        try:
            specs = {name: ColumnSpec.from_dict(name, spec) for name, spec in data["specs"].items()}
            standard = Standardisation.from_dict(data["standard"]) if data.get("standard") else None
            hists = _Accumulator.from_dict(
                {"columns": data["columns"], "rows": data["rows"]}, specs, None
            ).hists
            dimension = 0 if standard is None else len(standard.columns)
            return cls(
                specs=specs,
                hists=hists,
                noise={str(k): {str(m): float(v) for m, v in d.items()} for k, d in data["noise"].items()},
                signature=Signature.from_dict(data["signature"]),
                rows=int(data["rows"]),
                standard=standard,
                chunk_moments=[Moments.from_dict(m, dimension) for m in data.get("chunk_moments", [])],
                skipped={str(k): str(v) for k, v in data.get("skipped", {}).items()},
                bins=int(data["bins"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"invalid drift reference statistics: {exc}") from exc


def _infer(frame: pd.DataFrame, skip: set[str]) -> Signature:
    """The signature of ``frame``, column by column, leaving out columns of mixed types."""
    columns: list[Column] = []
    for name, series in _columns(frame).items():
        if name in skip:
            continue
        try:
            columns.extend(infer_signature(series.to_frame(name)).columns)
        except InvalidInputError:
            continue
    return Signature(columns)


def _spec(
    name: str, series: pd.Series[Any], ltype: str | None, role: Role, bins: int, max_levels: int
) -> tuple[ColumnSpec | None, str]:
    if ltype is None:
        try:
            ltype = logical_type(series, name)
        except InvalidInputError as exc:
            return None, str(exc)
    if ltype not in LOGICAL_TYPES or ltype == "datetime":
        return None, f"{ltype} columns are not compared"
    if ltype in ("integer", "float"):
        values, _, _ = numeric_values(series)
        finite = values[np.isfinite(values)]
        if not finite.size:
            return None, "no finite value in the reference"
        finite.sort()
        return ColumnSpec(name, "numeric", role, ltype, grid=NumericGrid.from_sorted(finite, bins)), ""
    counts, _ = level_counts(series)
    if not counts:
        return None, "no value in the reference"
    if len(counts) > max_levels:
        return None, f"{len(counts)} distinct values (more than {max_levels}): an identifier or free text"
    levels = tuple(sorted(counts, key=lambda level: (-counts[level], level)))
    return ColumnSpec(name, "categorical", role, ltype, levels=levels), ""


def _standardisation(
    specs: dict[str, ColumnSpec], columns: dict[str, pd.Series[Any]]
) -> Standardisation | None:
    names, means, scales = [], [], []
    for name, spec in specs.items():
        if spec.kind != "numeric" or spec.role != "feature":
            continue
        values, _, _ = numeric_values(columns[name])
        finite = values[np.isfinite(values)]
        scale = float(finite.std()) if finite.size > 1 else 0.0
        if scale > 0 and np.isfinite(scale):
            names.append(name)
            means.append(float(finite.mean()))
            scales.append(scale)
    if len(names) < 2:
        return None
    return Standardisation(tuple(names), np.asarray(means), np.asarray(scales))


def _without(whole: Hist, part: Hist) -> Hist:
    if isinstance(whole, NumericHist):
        assert isinstance(part, NumericHist)
        return whole.without(part)
    assert isinstance(part, CategoricalHist)
    return whole.without(part)


def _noise(
    specs: dict[str, ColumnSpec],
    total: dict[str, Hist],
    parts: list[dict[str, Hist]],
    config: DriftConfig,
) -> dict[str, dict[str, float]]:
    """Per column and method, the mean of statistic * n_eff ** null_power over chunk-vs-rest pairs."""
    methods = {m.key(): m for m in [*config.all_methods(), *DETAIL_METHODS]}
    out: dict[str, dict[str, float]] = {}
    if len(parts) < 2:
        return out
    for name, spec in specs.items():
        levels: dict[str, list[float]] = {}
        whole = total[name]
        for part in parts:
            chunk = part[name]
            rest = _without(whole, chunk)
            n, m = chunk.n, rest.n
            if not n or not m:
                continue
            pair = spec.pair(rest, chunk)
            effective = n * m / (n + m)
            for key, method in methods.items():
                if method.supports(spec.kind):
                    value = method.statistic(pair)
                    levels.setdefault(key, []).append(value * effective**method.null_power)
        out[name] = {key: float(np.mean(values)) for key, values in levels.items()}
    return out


# ---------------------------------------------------------------------------------------
# window


@dataclass
class SchemaCounts:
    """What a window's batches showed against the reference's signature (mergeable)."""

    rows: int = 0
    #: signature column -> rows of batches without it
    absent: dict[str, int] = field(default_factory=dict)
    #: column not in the signature -> rows of batches with it
    added: dict[str, int] = field(default_factory=dict)
    #: signature column -> logical type seen -> rows, when it is not the expected type
    types: dict[str, dict[str, int]] = field(default_factory=dict)
    #: signature column -> reason -> rows refused by the signature
    problems: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected: int = 0

    def merged(self, other: SchemaCounts) -> SchemaCounts:
        def add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            out = dict(a)
            for k, v in b.items():
                out[k] = out.get(k, 0) + v
            return out

        def add2(
            a: Mapping[str, Mapping[str, int]], b: Mapping[str, Mapping[str, int]]
        ) -> dict[str, dict[str, int]]:
            return {k: add(a.get(k, {}), b.get(k, {})) for k in [*a, *(k for k in b if k not in a)]}

        return SchemaCounts(
            self.rows + other.rows,
            add(self.absent, other.absent),
            add(self.added, other.added),
            add2(self.types, other.types),
            add2(self.problems, other.problems),
            self.rejected + other.rejected,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "absent": self.absent,
            "added": self.added,
            "types": self.types,
            "problems": self.problems,
            "rejected": self.rejected,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchemaCounts:
        return cls(
            int(data["rows"]),
            {str(k): int(v) for k, v in data["absent"].items()},
            {str(k): int(v) for k, v in data["added"].items()},
            {str(k): {str(t): int(n) for t, n in v.items()} for k, v in data["types"].items()},
            {str(k): {str(t): int(n) for t, n in v.items()} for k, v in data["problems"].items()},
            int(data["rejected"]),
        )


_COMPATIBLE: Final[dict[str, frozenset[str]]] = {
    "integer": frozenset({"integer", "float"}),
    "float": frozenset({"integer", "float"}),
}


def _schema_counts(frame: pd.DataFrame, signature: Signature, predictions: frozenset[str]) -> SchemaCounts:
    rows = len(frame)
    columns = _columns(frame)
    expected = set(signature.names)
    counts = SchemaCounts(rows=rows)
    counts.absent = {name: rows for name in signature.names if name not in columns}
    counts.added = {name: rows for name in columns if name not in expected and name not in predictions}
    for col in signature.columns:
        series = columns.get(col.name)
        if series is None or not rows:
            continue
        try:
            seen = logical_type(series, col.name)
        except InvalidInputError:
            seen = "mixed"
        if series.isna().all():
            continue
        if seen != col.type and seen not in _COMPATIBLE.get(col.type, frozenset()):
            counts.types[col.name] = {seen: rows}
    validation = signature.validate(frame, max_problems=0)
    for (column, reason), count in validation.counts.items():
        if reason in ("missing column", "duplicate column"):
            continue
        counts.problems.setdefault(column, {})[reason] = count
    counts.rejected = validation.rejected_rows
    return counts


class WindowSketch:
    """A window of traffic summarised on a reference's grid; see the module docstring.

    ``update`` takes batches (pandas DataFrames, pyarrow Tables or RecordBatches) in any
    number; ``merge`` joins two windows of the same reference. ``validate`` also checks
    every batch against the reference's signature for schema drift.
    """

    def __init__(self, reference: ReferenceStats, *, validate: bool = True) -> None:
        self.reference_key = reference.key
        self._signature = reference.signature
        self._known = reference.known_levels
        self._predictions = frozenset(n for n, s in reference.specs.items() if s.role == "prediction")
        self._acc = _Accumulator.empty(reference.specs, reference.standard)
        self.validate = validate
        self.schema = SchemaCounts()

    @classmethod
    def from_frame(cls, reference: ReferenceStats, frame: Table, *, validate: bool = True) -> WindowSketch:
        return cls(reference, validate=validate).update(frame)

    @classmethod
    def from_batches(
        cls, reference: ReferenceStats, batches: Iterable[Table], *, validate: bool = True
    ) -> WindowSketch:
        sketch = cls(reference, validate=validate)
        for batch in batches:
            sketch.update(batch)
        return sketch

    @classmethod
    def from_parquet(
        cls,
        reference: ReferenceStats,
        path: str | os.PathLike[str],
        *,
        batch_rows: int = ROWS_PER_STEP,
        validate: bool = True,
        filesystem: Any = None,
    ) -> WindowSketch:
        """Stream a Parquet file in batches of ``batch_rows``: memory is one batch, whatever its size.

        ``filesystem`` is any pyarrow or fsspec file system, for ``s3://`` and the like.
        """
        import pyarrow.parquet as pq

        # pyarrow's default pre-buffering keeps the ranges it read ahead: streaming ten
        # million rows grew by 1.1 GiB with it, and stays flat without it.
        source = pq.ParquetFile(path, pre_buffer=False, filesystem=filesystem)
        return cls.from_batches(reference, source.iter_batches(batch_size=batch_rows), validate=validate)

    @property
    def rows(self) -> int:
        return self._acc.rows

    @property
    def hists(self) -> Mapping[str, Hist]:
        return self._acc.hists

    @property
    def moments(self) -> Moments | None:
        return self._acc.moments

    def update(self, batch: Table) -> Self:
        """Add the rows of ``batch``."""
        frame = _table(batch)
        for step in _steps(frame):
            self._acc.update(step, self._known)
            if self.validate:
                self.schema = self.schema.merged(_schema_counts(step, self._signature, self._predictions))
        return self

    def merge(self, other: WindowSketch) -> WindowSketch:
        """A new window holding the rows of both."""
        if other.reference_key != self.reference_key:
            raise InvalidInputError("windows of different references cannot merge")
        out = self._empty_like()
        out._acc = self._acc.merged(other._acc, self._known)
        out.schema = self.schema.merged(other.schema)
        out.validate = self.validate and other.validate
        return out

    def _empty_like(self) -> WindowSketch:
        out = WindowSketch.__new__(WindowSketch)
        out.reference_key = self.reference_key
        out._signature = self._signature
        out._known = self._known
        out._predictions = self._predictions
        out._acc = _Accumulator.empty(self._acc.specs, self._acc.standard)
        out.validate = self.validate
        out.schema = SchemaCounts()
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary; :meth:`from_dict` needs the same reference to read it."""
        return {
            "format": "passerelle.drift.window",
            "version": FORMAT_VERSION,
            "reference": self.reference_key,
            "rows": self.rows,
            "validate": self.validate,
            "columns": self._acc.hists_to_dict(),
            "absent": self._acc.absent,
            "moments": None if self._acc.moments is None else self._acc.moments.to_dict(),
            "schema": self.schema.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], reference: ReferenceStats) -> WindowSketch:
        if not isinstance(data, Mapping) or data.get("format") != "passerelle.drift.window":
            raise InvalidInputError("not a passerelle drift window")
        if data.get("version") != FORMAT_VERSION:
            raise InvalidInputError(
                f"window of format version {data.get('version')!r}; expected {FORMAT_VERSION}"
            )
        if data.get("reference") != reference.key:
            raise InvalidInputError("this window was computed against other reference statistics")
        out = cls(reference, validate=bool(data.get("validate", True)))
        try:
            out._acc = _Accumulator.from_dict(data, reference.specs, reference.standard)
            out.schema = SchemaCounts.from_dict(data["schema"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"invalid drift window: {exc}") from exc
        return out


def merge_windows(windows: Iterable[WindowSketch]) -> WindowSketch:
    """One window holding the rows of all ``windows`` (at least one)."""
    iterator = iter(windows)
    try:
        out = next(iterator)
    except StopIteration:
        raise InvalidInputError("no window to merge") from None
    for window in iterator:
        out = out.merge(window)
    return out


def coalesce_windows(windows: Sequence[WindowSketch], min_rows: int) -> list[WindowSketch]:
    """Consecutive ``windows`` merged until each group holds at least ``min_rows`` rows.

    Windows too small to judge are not alerted on; they join the next ones. A last group
    still short of ``min_rows`` is returned as it is (its report says insufficient data).
    """
    out: list[WindowSketch] = []
    current: WindowSketch | None = None
    for window in windows:
        current = window if current is None else current.merge(window)
        if current.rows >= min_rows:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return out
