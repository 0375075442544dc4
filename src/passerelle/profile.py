"""Dataset profiles: a small JSON summary of each column, kept to compare data over time.

Profiles are stored with datasets and compared by monitoring, so their shape is stable
and every number is a plain JSON value: NaN and infinities become None.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from passerelle.errors import InvalidInputError
from passerelle.signature import json_scalar, logical_type

QUANTILES: Final[tuple[float, ...]] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
TOP_CATEGORIES: Final = 20


def profile_frame(frame: pd.DataFrame) -> dict[str, Any]:
    """``{"rows": n, "columns": {name: stats}}`` for every column of ``frame``.

    Every column has ``type`` and ``missing_rate``. Numeric columns add min, max, mean,
    std and ``quantiles`` (keyed ``"0.01"``... ``"0.99"``) computed over finite values;
    string and boolean columns add ``distinct`` and ``top`` (at most 20 ``{"value",
    "count"}`` pairs, most frequent first); datetime columns add min and max as ISO 8601
    text. A column of mixed value types gets type ``"unsupported"`` and a ``reason``.
    """
    columns: dict[str, dict[str, Any]] = {}
    for position, label in enumerate(frame.columns):
        series = frame.iloc[:, position]
        columns[str(label)] = _profile_column(series, str(label))
    return {"rows": len(frame), "columns": columns}


def _profile_column(series: pd.Series[Any], name: str) -> dict[str, Any]:
    missing = series.isna()
    stats: dict[str, Any] = {"missing_rate": json_scalar(float(missing.mean())) if len(series) else None}
    try:
        ltype = logical_type(series, name)
    except InvalidInputError as exc:
        return {"type": "unsupported", **stats, "reason": str(exc)}
    stats = {"type": ltype, **stats}
    present = series[~missing]
    if isinstance(present.dtype, pd.CategoricalDtype):
        # Plain values: counting a categorical would also list its unused categories.
        present = pd.Series(np.asarray(present, dtype=object), index=present.index, dtype=object)
    if ltype in ("integer", "float"):
        stats.update(_numeric(present, ltype))
    elif ltype in ("string", "boolean"):
        stats.update(_categorical(present))
    else:
        stats.update(_datetimes(present))
    return stats


def _numeric(present: pd.Series[Any], ltype: str) -> dict[str, Any]:
    numbers = pd.to_numeric(present).to_numpy(dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    if not finite.size:
        return {
            "min": None,
            "max": None,
            "mean": None,
            "std": None,
            "quantiles": dict.fromkeys(map(str, QUANTILES)),
        }
    if ltype == "integer":
        # Exact ends: floats would round integers beyond 2**53.
        low, high = present.min(), present.max()
    else:
        low, high = finite.min(), finite.max()
    # Values near the float limit overflow in sums and differences; the overflowed
    # statistic becomes inf, then None, rather than a warning.
    with np.errstate(over="ignore", invalid="ignore"):
        qs = np.quantile(finite, QUANTILES)
        mean = float(finite.mean())
        # Sample standard deviation, as pandas reports it; undefined for a single value.
        std = float(finite.std(ddof=1)) if finite.size > 1 else None
    return {
        "min": json_scalar(low),
        "max": json_scalar(high),
        "mean": json_scalar(mean),
        "std": json_scalar(std),
        "quantiles": {str(q): json_scalar(float(v)) for q, v in zip(QUANTILES, qs, strict=True)},
    }


def _categorical(present: pd.Series[Any]) -> dict[str, Any]:
    counts = present.value_counts(sort=False)
    table = pd.DataFrame({"value": np.asarray(counts.index, dtype=object), "count": counts.to_numpy()})
    # Ties are broken by value so that the same data always gives the same profile.
    table["key"] = table["value"].map(str)
    top = table.sort_values(["count", "key"], ascending=[False, True], kind="stable").head(TOP_CATEGORIES)
    return {
        "distinct": len(table),
        "top": [
            {"value": json_scalar(v), "count": int(c)}
            for v, c in zip(top["value"].tolist(), top["count"].tolist(), strict=True)
        ],
    }


def _datetimes(present: pd.Series[Any]) -> dict[str, Any]:
    if not len(present):
        return {"min": None, "max": None}
    if present.dtype == object:
        present = pd.to_datetime(present, utc=True, format="ISO8601")
    return {"min": json_scalar(present.min()), "max": json_scalar(present.max())}


def fingerprint_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """``"sha256:<hex>"`` of the file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return f"sha256:{digest.hexdigest()}"
