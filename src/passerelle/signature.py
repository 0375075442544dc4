"""Signatures: the columns a model takes, and the checks that guard its inputs.

A signature is inferred once from training data and stored with the model version as
JSON. At serving and batch-scoring time :meth:`Signature.validate` tells, row by row,
which inputs the model can take, and :meth:`Signature.conform` hands the model the
column types it was trained on. Validation runs on every request and on batches of
millions of rows, so every check works on whole columns at once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api import types as ptypes

from passerelle.errors import InvalidInputError, NotFoundError, SchemaError
from passerelle.tables import is_array_like, to_frame

LOGICAL_TYPES: Final[tuple[str, ...]] = ("integer", "float", "boolean", "string", "datetime")
FORMATS: Final[tuple[str, ...]] = ("table", "array")
#: columns with more distinct values than this are free text or identifiers, not categories
MAX_CATEGORIES: Final = 100
DEFAULT_MAX_PROBLEMS: Final = 1000

BoolArray = npt.NDArray[np.bool_]
Category = str | int | bool

# What pandas builds for a column of Python strings: object on pandas 2, "str" on pandas 3.
# Conformed string columns use it so a model sees what the same pandas gave it in training.
_STRING_DTYPE: Final = pd.Series(["a"]).dtype

_INFERRED: Final[dict[str, str]] = {
    "string": "string",
    # A column with no value at all says nothing about its type; string is the loosest.
    "empty": "string",
    "integer": "integer",
    "floating": "float",
    "mixed-integer-float": "float",
    "boolean": "boolean",
    "datetime": "datetime",
    "datetime64": "datetime",
}

_INT64_LIMIT: Final = float(2**63)
_UINT_TO_INT_LIMIT: Final = np.uint64(2**63 - 1)
_NS_PER_UNIT: Final[dict[str, int]] = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_MAX_SHOWN: Final = 60


def json_scalar(value: Any) -> Any:
    """``value`` as a plain Python scalar that :func:`json.dumps` takes; NaN and inf become None."""
    if isinstance(value, np.datetime64):
        # .item() would give an int for nanosecond datetimes
        value = pd.Timestamp(value)
    elif isinstance(value, np.generic):
        value = value.item()
    if value is pd.NaT or value is pd.NA:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


# ---------------------------------------------------------------------------------------
# logical types


def _unsupported(name: str | None, what: str) -> InvalidInputError:
    where = f"column {name!r}" if name is not None else "data"
    return InvalidInputError(
        f"{where} {what}; supported types are integer, float, boolean, string and datetime"
    )


def logical_type(series: pd.Series[Any], name: str | None = None) -> str:
    """The logical type of a column: one of :data:`LOGICAL_TYPES`.

    Object columns are typed by their non-missing values; a column mixing kinds of
    values (except integers with floats) raises :class:`InvalidInputError`.
    """
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        inferred = ptypes.infer_dtype(dtype.categories, skipna=True)
    elif ptypes.is_bool_dtype(dtype):
        return "boolean"
    elif ptypes.is_integer_dtype(dtype):
        return "integer"
    elif ptypes.is_float_dtype(dtype):
        return "float"
    elif ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    elif isinstance(dtype, pd.StringDtype):
        return "string"
    elif ptypes.is_object_dtype(dtype):
        inferred = ptypes.infer_dtype(series, skipna=True)
    else:
        raise _unsupported(name, f"has unsupported type {dtype}")
    try:
        return _INFERRED[inferred]
    except KeyError:
        raise _unsupported(name, f"holds values of mixed or unsupported types ({inferred})") from None


def _categories(series: pd.Series[Any], ltype: str) -> list[Category] | None:
    if ltype not in ("string", "boolean"):
        return None
    seen = np.asarray(pd.unique(series.dropna()))
    if len(seen) > MAX_CATEGORIES:
        return None
    if ltype == "boolean":
        return sorted({bool(v) for v in seen})
    return sorted({str(v) for v in seen})


# ---------------------------------------------------------------------------------------
# signature


@dataclass
class Column:
    """One input column. ``closed`` refuses values outside ``categories`` at validation."""

    name: str
    type: str
    nullable: bool
    categories: list[Category] | None = None
    closed: bool = False

    def __post_init__(self) -> None:
        if self.type not in LOGICAL_TYPES:
            raise InvalidInputError(
                f"column {self.name!r}: unknown type {self.type!r}; "
                f"expected one of {', '.join(LOGICAL_TYPES)}"
            )
        if self.closed and self.categories is None:
            raise InvalidInputError(f"column {self.name!r} cannot be closed: it has no categories")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "nullable": self.nullable,
            "categories": None if self.categories is None else list(self.categories),
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Column:
        try:
            name, ltype, nullable = data["name"], data["type"], data["nullable"]
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"invalid signature column {data!r}: missing {exc}") from exc
        categories = data.get("categories")
        if not isinstance(name, str) or not isinstance(nullable, bool):
            raise InvalidInputError(f"invalid signature column {data!r}")
        if categories is not None and not isinstance(categories, list):
            raise InvalidInputError(f"invalid signature column {name!r}: categories must be a list")
        closed = data.get("closed", False)
        if not isinstance(closed, bool):
            raise InvalidInputError(f"invalid signature column {name!r}: closed must be true or false")
        return cls(
            name=name,
            type=ltype,
            nullable=nullable,
            categories=None if categories is None else list(categories),
            closed=closed,
        )


@dataclass
class Problem:
    """Why one row (or, when ``row`` is None, every row) was refused.

    ``row`` is the position of the row in the validated frame, not its index label.
    """

    row: int | None
    column: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"row": self.row, "column": self.column, "reason": self.reason}


@dataclass
class Validation:
    """The outcome of :meth:`Signature.validate`.

    ``problems`` is capped; ``counts`` and ``valid`` always cover every row. The keys of
    ``counts`` use the kind of reason without the offending value (``"expected
    integer"``), so that millions of distinct bad values still give a handful of keys.
    """

    valid: BoolArray
    problems: list[Problem]
    extra_columns: list[str] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def rejected_rows(self) -> int:
        return int(self.valid.size - np.count_nonzero(self.valid))

    @property
    def truncated(self) -> bool:
        """True when more problems were found than ``problems`` holds."""
        return self.problem_count > len(self.problems)

    def by_column_reason(self) -> Counter[tuple[str, str]]:
        """Rows refused per ``(column, reason kind)``; a missing column counts every row."""
        return Counter(self.counts)

    def summary(self) -> str:
        if self.ok:
            return "all rows match the signature"
        head = f"{self.rejected_rows} of {self.valid.size} rows do not match the signature"
        if self.problems:
            first = self.problems[0]
            where = "" if first.row is None else f" (row {first.row})"
            head += f"; first problem: {first.column}: {first.reason}{where}"
        return head

    def raise_for_problems(self) -> None:
        """Raise :class:`SchemaError` listing the problems, unless every row is fine."""
        if not self.ok:
            raise SchemaError(self.summary(), [p.to_dict() for p in self.problems])


@dataclass
class Signature:
    """The ordered input columns of a model. ``format`` is ``"array"`` for numpy inputs."""

    columns: list[Column]
    format: str = "table"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidInputError(f"unknown signature format {self.format!r}; expected table or array")
        seen: set[str] = set()
        for col in self.columns:
            if col.name in seen:
                raise InvalidInputError(f"column {col.name!r} appears twice in the signature")
            seen.add(col.name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise NotFoundError(f"the signature has no column {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        columns = data.get("columns") if isinstance(data, Mapping) else None
        if not isinstance(columns, list):
            raise InvalidInputError("invalid signature: expected a mapping with a list of columns")
        return cls([Column.from_dict(c) for c in columns], format=data.get("format", "table"))

    # -- comparison -------------------------------------------------------------------

    def differences(self, other: Signature) -> list[str]:
        """What ``other`` changes that inputs valid for ``self`` could trip on.

        Categories never count: they describe the data seen, not what the model takes.
        """
        out: list[str] = []
        if self.format != other.format:
            out.append(f"format: {self.format} -> {other.format}")
        theirs = {c.name: c for c in other.columns}
        mine = {c.name: c for c in self.columns}
        out.extend(f"missing column {c.name!r}" for c in self.columns if c.name not in theirs)
        out.extend(f"added column {c.name!r}" for c in other.columns if c.name not in mine)
        for col in self.columns:
            new = theirs.get(col.name)
            if new is None:
                continue
            if new.type != col.type:
                out.append(f"{col.name}: {col.type} -> {new.type}")
            if new.nullable != col.nullable:
                before, after = ("nullable", "not nullable") if col.nullable else ("not nullable", "nullable")
                out.append(f"{col.name}: {before} -> {after}")
        return out

    def compatible(self, other: Signature) -> bool:
        return not self.differences(other)

    # -- validation -------------------------------------------------------------------

    def validate(self, frame: pd.DataFrame, *, max_problems: int = DEFAULT_MAX_PROBLEMS) -> Validation:
        """Check every row of ``frame``; see :class:`Validation`.

        Columns not in the signature are listed in ``extra_columns`` and otherwise ignored.
        """
        frame = to_frame(frame)
        rows = len(frame)
        lookup, duplicated = _labels(frame)
        valid = np.ones(rows, dtype=np.bool_)
        counts: dict[tuple[str, str], int] = {}
        whole: list[Problem] = []
        found: list[tuple[int, int, Problem]] = []
        total = 0
        limit = max(max_problems, 0)

        for position, col in enumerate(self.columns):
            label = lookup.get(col.name)
            if label is None or col.name in duplicated:
                reason = "missing column" if label is None else "duplicate column"
                whole.append(Problem(None, col.name, reason))
                valid[:] = False
                total += 1
                if rows:
                    counts[(col.name, reason)] = rows
                continue
            series = frame[label]
            for failure in _failures(series, col):
                bad = int(np.count_nonzero(failure.mask))
                if not bad:
                    continue
                total += bad
                counts[(col.name, failure.kind)] = counts.get((col.name, failure.kind), 0) + bad
                valid &= ~failure.mask
                # Only the first rows of each column can make it into the capped list.
                for row in np.flatnonzero(failure.mask)[:limit].tolist():
                    reason = failure.reason.format(value=_show(series.iloc[row]))
                    found.append((row, position, Problem(row, col.name, reason)))

        found.sort(key=lambda item: (item[0], item[1]))
        problems = (whole + [p for _, _, p in found])[:limit]
        expected = set(self.names)
        extra = [name for name in lookup if name not in expected]
        return Validation(valid, problems, extra, counts, total)

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A new frame with the signature's columns, in its order, cast to its types.

        Meant for rows that passed :meth:`validate`; values that cannot be cast raise
        :class:`SchemaError`. Integer columns with missing values come out as float64,
        the way pandas itself represents them.
        """
        frame = to_frame(frame)
        lookup, duplicated = _labels(frame)
        unusable = {
            c.name: "missing column" if c.name not in lookup else "duplicate column"
            for c in self.columns
            if c.name not in lookup or c.name in duplicated
        }
        if unusable:
            raise SchemaError(
                f"cannot conform: missing or duplicate column(s) {', '.join(map(repr, unusable))}",
                [{"row": None, "column": name, "reason": why} for name, why in unusable.items()],
            )
        data: dict[str, Any] = {}
        for col in self.columns:
            try:
                data[col.name] = _cast(frame[lookup[col.name]], col.type)
            except (TypeError, ValueError, OverflowError) as exc:
                raise SchemaError(
                    f"column {col.name!r} cannot be converted to {col.type}: {exc}; validate the rows first",
                    [{"row": None, "column": col.name, "reason": f"cannot convert to {col.type}"}],
                ) from exc
        return pd.DataFrame(data, index=frame.index, columns=self.names)


def infer_signature(data: Any, *, closed: Iterable[str] = ()) -> Signature:
    """The signature of ``data`` (anything :func:`passerelle.tables.to_frame` takes).

    A column is nullable when the sample has a missing value in it. ``closed`` names
    string or boolean columns whose seen values are the only ones to accept later.
    """
    frame = to_frame(data)
    names = [str(label) for label in frame.columns]
    duplicates = sorted(n for n, times in Counter(names).items() if times > 1)
    if duplicates:
        raise InvalidInputError(f"column names appear more than once: {', '.join(duplicates)}")
    columns: list[Column] = []
    for position, name in enumerate(names):
        series = frame.iloc[:, position]
        ltype = logical_type(series, name)
        columns.append(
            Column(
                name=name,
                type=ltype,
                nullable=bool(series.isna().any()),
                categories=_categories(series, ltype),
            )
        )
    by_name = {c.name: c for c in columns}
    for name in [closed] if isinstance(closed, str) else closed:
        col = by_name.get(name)
        if col is None:
            raise InvalidInputError(f"cannot close column {name!r}: there is no such column")
        if col.categories is None:
            raise InvalidInputError(
                f"cannot close column {name!r}: only string or boolean columns with at most "
                f"{MAX_CATEGORIES} distinct values have categories"
            )
        col.closed = True
    return Signature(columns, format="array" if is_array_like(data) else "table")


def output_schema(
    predictions: npt.NDArray[Any], proba: npt.NDArray[Any] | None, classes: list[Any] | None
) -> dict[str, Any]:
    """What a model returns: the logical type of its predictions, and its classes if any."""
    values = np.asarray(predictions)
    return {
        "prediction": logical_type(pd.Series(values.ravel()), "prediction"),
        "proba": proba is not None,
        "classes": None if classes is None else [json_scalar(c) for c in classes],
    }


# ---------------------------------------------------------------------------------------
# column checks


@dataclass
class _Failure:
    mask: BoolArray
    #: the reason without the value, for counting
    kind: str
    #: the reason shown for one row; ``{value}`` is replaced by the offending value
    reason: str


def _labels(frame: pd.DataFrame) -> tuple[dict[str, Any], set[str]]:
    """Column name (as text) to frame label, and the names given to several columns."""
    lookup: dict[str, Any] = {}
    duplicated: set[str] = set()
    for label in frame.columns:
        name = str(label)
        if name in lookup:
            duplicated.add(name)
        lookup[name] = label
    return lookup, duplicated


def _show(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _isna(series: pd.Series[Any]) -> BoolArray:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iub":
        # numpy integer and bool columns cannot hold a missing value
        return np.zeros(len(series), dtype=np.bool_)
    return np.asarray(series.isna(), dtype=np.bool_)


# Kinds of Python objects found in object columns.
_BOOL, _INT, _FLOAT, _STR, _DATETIME, _OTHER = range(6)
_type_of = np.frompyfunc(type, 1, 1)


def _kind_of_type(kind: type) -> int:
    if issubclass(kind, (bool, np.bool_)):
        return _BOOL
    if issubclass(kind, (int, np.integer)):
        return _INT
    if issubclass(kind, (float, np.floating)):
        return _FLOAT
    if issubclass(kind, str):
        return _STR
    if issubclass(kind, (dt.datetime, np.datetime64)):
        return _DATETIME
    return _OTHER


def _kinds(values: npt.NDArray[np.object_]) -> npt.NDArray[np.int8]:
    """The kind of each object; the Python-level work is per distinct type, not per row."""
    if not len(values):
        return np.zeros(0, dtype=np.int8)
    types: npt.NDArray[np.object_] = np.asarray(_type_of(values), dtype=object)
    codes, uniques = pd.factorize(types)
    table = np.array([_kind_of_type(t) for t in uniques], dtype=np.int8)
    return table[codes]


def _as_floats(values: npt.NDArray[np.object_], take: BoolArray) -> npt.NDArray[np.float64]:
    """Numbers at ``take`` as floats (inf when too large), NaN elsewhere."""
    out = np.full(len(values), np.nan)
    try:
        out[take] = values[take].astype(np.float64)
    except OverflowError:
        # Python ints beyond float range: rare enough for a per-value fallback.
        out[take] = [float(v) if abs(v) < 1e308 else np.inf for v in values[take]]
    return out


def _int64_fits(values: npt.NDArray[np.object_], take: BoolArray) -> BoolArray:
    """``take`` narrowed to the integers that fit in int64."""
    try:
        values[take].astype(np.int64)
    except OverflowError:
        # Only Python ints beyond 64 bits get here: rare enough for a per-value check.
        fits = np.zeros(len(values), dtype=np.bool_)
        fits[take] = [-(2**63) <= int(v) < 2**63 for v in values[take]]
        return fits
    return take


def _whole_in_int64(numbers: npt.NDArray[np.float64]) -> BoolArray:
    with np.errstate(invalid="ignore"):
        fits: BoolArray = (
            np.isfinite(numbers) & (numbers == np.trunc(numbers)) & (np.abs(numbers) < _INT64_LIMIT)
        )
    return fits


def _datetime_out_of_range(series: pd.Series[Any]) -> BoolArray:
    """Datetimes that nanosecond timestamps cannot represent (years before 1677 or after 2262)."""
    unit = str(series.dt.unit)
    factor = _NS_PER_UNIT.get(unit, 1)
    if factor == 1:
        return np.zeros(len(series), dtype=np.bool_)
    naive = series.dt.tz_convert(None) if series.dt.tz is not None else series
    ticks = np.asarray(naive.to_numpy()).view(np.int64)
    limit = (2**63 - 1) // factor
    nat = np.iinfo(np.int64).min
    out: BoolArray = (ticks != nat) & ((ticks > limit) | (ticks < -limit))
    return out


def _parse_datetimes(series: pd.Series[Any]) -> pd.Series[Any]:
    """Datetime objects and ISO 8601 strings as UTC datetimes; anything else as NaT."""
    return pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")


def _storage(dtype: Any) -> str:
    if ptypes.is_bool_dtype(dtype):
        return "bool"
    if ptypes.is_integer_dtype(dtype):
        return "int"
    if ptypes.is_float_dtype(dtype):
        return "float"
    if ptypes.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.StringDtype):
        return "str"
    if ptypes.is_object_dtype(dtype):
        return "object"
    return "other"


def _type_failures(series: pd.Series[Any], ltype: str, null: BoolArray) -> list[_Failure]:
    """Present values that are not of ``ltype`` (several kinds of reason may apply)."""
    present = ~null
    mismatch = _Failure(present, f"expected {ltype}", f"expected {ltype}, got {{value}}")
    storage = _storage(series.dtype)

    if storage == "object":
        values = np.asarray(series, dtype=object)
        kinds = _kinds(values)
        if ltype == "integer":
            floats = present & (kinds == _FLOAT)
            fits = _int64_fits(values, kinds == _INT) | (floats & _whole_in_int64(_as_floats(values, floats)))
        elif ltype == "float":
            numeric = present & ((kinds == _INT) | (kinds == _FLOAT))
            fits = numeric & ~np.isposinf(np.abs(_as_floats(values, kinds == _INT)))
        elif ltype == "boolean":
            fits = kinds == _BOOL
        elif ltype == "string":
            fits = kinds == _STR
        else:
            candidates = present & ((kinds == _STR) | (kinds == _DATETIME))
            return _datetime_failures(series, candidates, present, mismatch)
        mismatch.mask = present & ~fits
        return [mismatch]

    if ltype == "integer":
        if storage == "int":
            if series.dtype in (np.dtype(np.uint64), pd.UInt64Dtype()):
                big = series.to_numpy(dtype=np.uint64, na_value=0) > _UINT_TO_INT_LIMIT
                return [_Failure(big, "integer out of range", "{value} does not fit in a 64-bit integer")]
            return []
        if storage == "float":
            numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
            mismatch.mask = present & ~_whole_in_int64(numbers)
            return [mismatch]
    elif ltype == "float":
        if storage in ("int", "float"):
            return []
    elif ltype == "boolean":
        if storage == "bool":
            return []
    elif ltype == "string":
        if storage == "str":
            return []
    elif storage == "datetime":
        return [_out_of_range(_datetime_out_of_range(series))]
    elif storage == "str":
        return _datetime_failures(series, present, present, mismatch)
    return [mismatch]


def _datetime_failures(
    series: pd.Series[Any], candidates: BoolArray, present: BoolArray, mismatch: _Failure
) -> list[_Failure]:
    parsed = _parse_datetimes(series.where(candidates))
    unparsed = np.asarray(parsed.isna(), dtype=np.bool_)
    mismatch.mask = present & (~candidates | unparsed)
    return [mismatch, _out_of_range(_datetime_out_of_range(parsed))]


def _out_of_range(mask: BoolArray) -> _Failure:
    return _Failure(mask, "datetime out of range", "{value} is outside the supported datetime range")


def _failures(series: pd.Series[Any], col: Column) -> list[_Failure]:
    """Every reason to refuse rows of ``series``; each row fails for at most one reason."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        # Check the few categories once, then spread the verdicts over the rows by code.
        codes = series.cat.codes.to_numpy()
        null = codes < 0
        on_categories = _failures(pd.Series(series.cat.categories), col)
        refused = null if not col.nullable else np.zeros_like(null)
        spread = [_Failure(~null & f.mask[codes], f.kind, f.reason) for f in on_categories if len(f.mask)]
        return [_Failure(refused, "null not allowed", "null not allowed"), *spread]

    null = _isna(series)
    out: list[_Failure] = []
    if not col.nullable:
        out.append(_Failure(null, "null not allowed", "null not allowed"))
    out += _type_failures(series, col.type, null)
    if col.closed and col.categories is not None:
        fine = ~null
        for failure in out:
            fine &= ~failure.mask
        known = np.asarray(series.isin(col.categories), dtype=np.bool_)
        out.append(
            _Failure(
                fine & ~known,
                "value not among the allowed categories",
                "value {value} not among the allowed categories",
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# conversion


def _cast(series: pd.Series[Any], ltype: str) -> Any:
    """The values of ``series`` as the array type used for ``ltype``."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = pd.Series(np.asarray(series), index=series.index)
    storage = _storage(series.dtype)
    null = _isna(series)
    has_null = bool(null.any())

    if ltype in ("integer", "float"):
        if storage not in ("int", "float", "object"):
            raise TypeError(f"{series.dtype} values are not numbers")
        if storage == "object":
            values = np.asarray(series, dtype=object)
            if ltype == "integer" and not has_null:
                return values.astype(np.int64)
            return np.where(null, np.nan, values).astype(np.float64)
        if ltype == "integer" and not has_null:
            return series.to_numpy(dtype=np.int64)
        return series.to_numpy(dtype=np.float64, na_value=np.nan)

    if ltype == "boolean":
        if storage not in ("bool", "object"):
            raise TypeError(f"{series.dtype} values are not booleans")
        if not has_null:
            return series.to_numpy(dtype=np.bool_)
        # pandas keeps booleans with gaps as objects with NaN, as read_csv gives them.
        return np.where(null, np.nan, np.asarray(series, dtype=object))

    if ltype == "string":
        if storage not in ("str", "object"):
            raise TypeError(f"{series.dtype} values are not strings")
        return series.astype(_STRING_DTYPE).array

    if storage == "datetime":
        moment = series.dt.tz_convert("UTC") if series.dt.tz is not None else series.dt.tz_localize("UTC")
    elif storage in ("str", "object"):
        moment = _parse_datetimes(series)
        if bool((moment.isna().to_numpy() & ~null).any()):
            raise ValueError("some values are not datetimes")
    else:
        raise TypeError(f"{series.dtype} values are not datetimes")
    return moment.astype("datetime64[ns, UTC]").array
