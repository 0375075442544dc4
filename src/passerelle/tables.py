"""Turn whatever tabular data a user hands over into a pandas DataFrame.

Every entry point that takes data (signature inference, validation, batch scoring,
dataset registration) goes through :func:`to_frame`, so the set of accepted inputs and
the wording of the errors is the same everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from passerelle.errors import InvalidInputError

TableFormat = Literal["csv", "parquet"]

_SUFFIXES: tuple[tuple[str, TableFormat], ...] = (
    (".csv.gz", "csv"),
    (".csv", "csv"),
    (".parquet", "parquet"),
    (".pq", "parquet"),
)


def table_format(path: str | Path) -> TableFormat:
    """``"csv"`` or ``"parquet"``, decided by the file name's extension."""
    text = str(path)
    if "://" in text:
        # Remote URIs may carry a query string (a version, a signature) after the name.
        text = text.split("?", 1)[0]
    name = Path(text).name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise InvalidInputError(f"{path}: unsupported file type; expected a .csv, .csv.gz, .parquet or .pq file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line or type(exc).__name__


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; any failure becomes one readable :class:`InvalidInputError`."""
    path = Path(path)
    fmt = table_format(path)
    # A Parquet "file" may be a folder of part files, as written by Spark.
    exists = path.exists() if fmt == "parquet" else path.is_file()
    if not exists:
        raise InvalidInputError(f"cannot read {path}: no such file")
    try:
        if fmt == "csv":
            # low_memory=False infers each column's type from the whole file rather than
            # chunk by chunk, which would otherwise give mixed-type columns and a warning.
            return pd.read_csv(path, low_memory=False)
        return pd.read_parquet(path)
    except (
        OSError,
        EOFError,
        zlib.error,
        ValueError,
        UnicodeDecodeError,
        pa.ArrowException,
        pd.errors.ParserError,
    ) as exc:
        raise InvalidInputError(f"cannot read {path} as {fmt}: {_first_line(exc)}") from exc


def is_array_like(data: Any) -> bool:
    """True for plain numpy arrays, whose columns have no names of their own."""
    return isinstance(data, np.ndarray) and data.dtype.names is None


def _from_array(data: np.ndarray[Any, Any]) -> pd.DataFrame:
    if data.dtype.names is not None:
        # Record arrays carry their own column names.
        return pd.DataFrame(data)
    if data.ndim == 1:
        return pd.DataFrame({"x0": data})
    if data.ndim == 2:
        return pd.DataFrame(data, columns=[f"x{i}" for i in range(data.shape[1])])
    raise InvalidInputError(f"expected a 1-D or 2-D array, got an array of shape {data.shape}")


def _from_polars(data: Any) -> pd.DataFrame | None:
    import polars as pl

    if isinstance(data, pl.DataFrame):
        frame: pd.DataFrame = data.to_pandas()
        return frame
    if isinstance(data, pl.Series):
        series: pd.Series[Any] = data.to_pandas()
        return series.to_frame()
    if isinstance(data, pl.LazyFrame):
        collected: pd.DataFrame = data.collect().to_pandas()
        return collected
    return None


def _from_records(data: list[Any]) -> pd.DataFrame:
    if not all(isinstance(row, Mapping) for row in data):
        kinds = sorted({type(row).__name__ for row in data if not isinstance(row, Mapping)})
        raise InvalidInputError(f"a list must hold one dict per row; found items of type {', '.join(kinds)}")
    return pd.DataFrame.from_records(data)


def _type_name(data: Any) -> str:
    kind = type(data)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def to_frame(data: Any) -> pd.DataFrame:
    """A DataFrame view of ``data``.

    Accepts a pandas DataFrame (returned as it is, not copied) or Series, a polars
    DataFrame, a pyarrow Table or RecordBatch, a 1-D or 2-D numpy array (columns ``x0``,
    ``x1``...), a dict of columns, a list of row dicts, or the path of a CSV or Parquet file.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, pd.Series):
        return data.to_frame(name="x0" if data.name is None else data.name)
    if isinstance(data, (str, Path)):
        return read_table(data)
    if isinstance(data, np.ndarray):
        return _from_array(data)
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        converted: pd.DataFrame = data.to_pandas()
        return converted
    # polars is optional: only import it when the object plainly comes from it.
    if type(data).__module__.startswith("polars"):
        frame = _from_polars(data)
        if frame is not None:
            return frame
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame(dict(data))
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"cannot build a table from this dict: {_first_line(exc)}") from exc
    if isinstance(data, list):
        return _from_records(data)
    raise InvalidInputError(
        f"unsupported data type {_type_name(data)}; pass a pandas, "
        "polars or pyarrow table, a numpy array, a dict of columns, a list of row dicts "
        "or the path of a CSV or Parquet file"
    )
