"""Batch scoring: a CSV or Parquet file of any size through a model version, in chunks.

The input is streamed (PyArrow's Parquet batches, PyArrow's incremental CSV reader), each
chunk is checked against the version's signature, the rows that pass are conformed and
scored, and the chunk is written out before the next one is read, so memory does not grow
with the file. Rows that fail go to a rejects file with the reason. The output is written
under a temporary name next to its destination and moved into place only when every row
has been scored: a run that fails or is killed leaves no half-written output.

Every run is recorded in ``batch_runs`` (input fingerprint, version, row counts, duration,
status) with an audit entry, and ``log=True`` appends each scored row to the prediction log
so that a model used only in batch is monitored like one behind an endpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel
from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle._deps import require
from passerelle._failpoints import failpoint
from passerelle.artifacts import storage_options_from_settings
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError, SchemaError
from passerelle.flavors import Predictor
from passerelle.predictionlog import endpoint_redaction, redaction_secret, without_erased
from passerelle.registry import LoadedModel, Registry
from passerelle.settings import Settings
from passerelle.signature import Signature, Validation, json_scalar
from passerelle.store.schema import BatchRun, Prediction
from passerelle.tables import TableFormat, table_format

ENGINES: Final[tuple[str, ...]] = ("local", "spark")

#: rows per chunk: large enough that per-chunk overheads vanish next to the model's own
#: work, small enough that a chunk of a few hundred columns stays within a few hundred MB
DEFAULT_BATCH_ROWS: Final = 100_000
#: bytes of CSV text parsed at a time (the rows of a CSV chunk follow from it)
CSV_BLOCK_BYTES: Final = 16 << 20
PREDICTION: Final = "prediction"
PROBA_PREFIX: Final = "proba_"
MODEL_VERSION: Final = "model_version"
RUN_ID: Final = "run_id"
#: columns added in front of the input's columns in a rejects file
REJECT_COLUMNS: Final[tuple[str, str, str]] = ("row", "column", "reason")
#: text read as missing in CSV files: PyArrow's defaults, which are also pandas' defaults,
#: so a CSV means the same to ``passerelle score`` as to the registration that read its sample
NULL_VALUES: Final[tuple[str, ...]] = tuple(pacsv.ConvertOptions().null_values)

_TEXT_PARSED: Final = {"integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_()}
_LOGICAL_ARROW: Final = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "datetime": pa.timestamp("ns", tz="UTC"),
}
_BOOLEAN_TEXT: Final = {"true": True, "false": False, "1": True, "0": False}
_LOG_INSERT_ROWS: Final = 5_000
#: rows of the first chunk on which a classifier's predictions are compared with the class of
#: highest probability; when they all agree, later predictions are taken from the probabilities
_CHECK_ROWS: Final = 10_000
_HASH_CHUNK: Final = 8 << 20
# Core inserts of plain dicts: the ORM's unit of work would cost more than the rows themselves.
_PREDICTIONS: Final = cast(Table, Prediction.__table__)


class BatchRunInfo(BaseModel):
    """A batch run as recorded: what was scored, by which version, with what outcome."""

    run_id: str
    model: str
    version: int
    engine: str
    status: str
    input_uri: str
    input_fingerprint: str
    output_uri: str
    rejects_uri: str | None
    rows_in: int
    rows_scored: int
    rows_rejected: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_s: float | None
    error: str | None
    created_by: str
    details: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def rows_per_second(self) -> float | None:
        if not self.duration_s:
            return None
        return self.rows_in / self.duration_s


@dataclass(frozen=True)
class ProgressUpdate:
    """How far a run is: ``done`` out of ``total`` ``unit`` (rows for Parquet, bytes for CSV)."""

    rows: int
    done: float
    total: float | None
    unit: Literal["rows", "bytes"]


ProgressCallback = Callable[[ProgressUpdate], None]


# ---------------------------------------------------------------------------------------
# where the data lives


@dataclass(frozen=True)
class Location:
    """A local path or a remote URI, with the fsspec filesystem that reaches it."""

    uri: str
    fs: Any
    path: str
    fmt: TableFormat
    gzip: bool
    local: bool

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path.rstrip("/") else ""

    def exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.path))
        except OSError as exc:
            raise InvalidInputError(f"cannot reach {self.uri}: {_first_line(exc)}") from exc

    def sibling(self, name: str, *, same_format: bool = False) -> Location:
        """Another file in the same folder (or prefix), same filesystem.

        ``same_format`` keeps this file's format whatever the name (for temporary names).
        """
        path = f"{self.parent}/{name}" if self.parent else name
        uri = path if self.local else self.uri[: len(self.uri) - len(self.name)] + name
        if same_format:
            return Location(uri, self.fs, path, self.fmt, self.gzip, self.local)
        return Location(uri, self.fs, path, table_format(name), name.lower().endswith(".gz"), self.local)


def storage_options(settings: Settings, uri: str) -> dict[str, Any]:
    """fsspec options for ``uri``: the S3 endpoint and keys of the settings for ``s3://``."""
    if not uri.startswith("s3://"):
        return {}
    require("s3fs", "s3")
    # The settings name one S3 endpoint, for the artifact store; data files live on it too.
    return storage_options_from_settings(settings.model_copy(update={"artifact_uri": uri}))


def locate(uri: str | Path, settings: Settings) -> Location:
    text = str(uri)
    fmt = table_format(text)
    gz = text.split("?", 1)[0].lower().endswith(".gz")
    if "://" in text and not text.startswith("file://"):
        try:
            fs, path = fsspec.core.url_to_fs(text, **storage_options(settings, text))
        except (ImportError, ValueError) as exc:
            raise InvalidInputError(f"cannot open {text}: {_first_line(exc)}") from exc
        return Location(text, fs, str(path), fmt, gz, local=False)
    local = Path(text.removeprefix("file://")).expanduser().resolve()
    return Location(str(local), LocalFileSystem(), str(local), fmt, gz, local=True)


def fingerprint(loc: Location) -> str:
    """``sha256:<hex>`` of a local file; ``s3-etag:<etag>:<size>`` of a remote object.

    Hashing a remote object would read it a second time over the network; its ETag and size
    identify its content as the store sees it (an ETag of a multipart upload is not a hash of
    the bytes, but it changes whenever they do).
    """
    if not loc.local:
        info = loc.fs.info(loc.path)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"s3-etag:{etag}:{info.get('size')}" if etag else f"size:{info.get('size')}"
    digest = hashlib.sha256()
    root = Path(loc.path)
    # A folder of part files (Spark's layout) is fingerprinted by its files' names and bytes.
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for path in files:
        if path != root:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_CHUNK):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class _Fingerprinter(threading.Thread):
    """Hashes the input beside the scoring: hashlib releases the GIL, so it costs little time."""

    def __init__(self, loc: Location) -> None:
        super().__init__(name="passerelle-fingerprint", daemon=True)
        self.loc = loc
        self.value = ""
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.value = fingerprint(self.loc)
        except OSError as exc:
            self.error = _first_line(exc)

    def result(self) -> str:
        self.join()
        return self.value or f"unavailable: {self.error}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line or type(exc).__name__


# ---------------------------------------------------------------------------------------
# reading


_READ_ERRORS: Final = (pa.ArrowException, OSError, EOFError, UnicodeDecodeError, ValueError)


def _unreadable(loc: Location, exc: BaseException) -> InvalidInputError:
    return InvalidInputError(f"cannot read {loc.uri} as {loc.fmt}: {_first_line(exc)}")


def input_columns(loc: Location) -> list[str]:
    """The column names of a CSV or Parquet input, read from its header or footer only."""
    try:
        if loc.local and Path(loc.path).is_dir():
            return _folder_columns(loc)
        if loc.fmt == "parquet":
            with _open_parquet(loc) as parquet:
                return list(parquet.schema_arrow.names)
        with _open_stream(loc) as (stream, _raw):
            reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=1 << 20))
            names = list(reader.schema.names)
            reader.close()
            return names
    except _READ_ERRORS as exc:
        raise _unreadable(loc, exc) from exc


def _folder_columns(loc: Location) -> list[str]:
    """The columns of a folder of part files: a dataset's schema, or the first CSV part's header."""
    if loc.fmt == "parquet":
        return list(pads.dataset(loc.path, format="parquet").schema.names)
    parts = sorted(p for p in Path(loc.path).iterdir() if p.name.lower().endswith((".csv", ".csv.gz")))
    if not parts:
        raise InvalidInputError(f"cannot read {loc.uri}: the folder holds no .csv part")
    return input_columns(
        Location(str(parts[0]), loc.fs, str(parts[0]), "csv", parts[0].name.endswith(".gz"), True)
    )


@contextlib.contextmanager
def _open_parquet(loc: Location) -> Iterator[pq.ParquetFile]:
    with contextlib.ExitStack() as stack:
        # Local files go through Arrow's own reader; remote ones through fsspec.
        source = loc.path if loc.local else stack.enter_context(loc.fs.open(loc.path, "rb"))
        parquet = pq.ParquetFile(source)
        stack.callback(parquet.close)
        yield parquet


@contextlib.contextmanager
def _open_stream(loc: Location) -> Iterator[tuple[Any, Any]]:
    """A PyArrow input stream over the file, decompressed for ``.gz``, and the raw stream under it."""
    with contextlib.ExitStack() as stack:
        raw: Any = (
            pa.OSFile(loc.path, "rb")
            if loc.local
            else pa.PythonFile(stack.enter_context(loc.fs.open(loc.path, "rb")), mode="r")
        )
        stack.callback(raw.close)
        stream: Any = raw
        if loc.gzip:
            stream = pa.CompressedInputStream(raw, "gzip")
            stack.callback(stream.close)
        yield stream, raw


def read_chunks(
    loc: Location, columns: Sequence[str], batch_rows: int
) -> Iterator[tuple[pa.RecordBatch, float, float | None]]:
    """``(chunk, done, total)`` over the file: rows for Parquet, bytes of the file for CSV.

    CSV columns are all read as text: a CSV has no types, and inferring them from the first
    block would make a bad value further down fail the whole read instead of one row.
    """
    names = list(columns)
    try:
        if loc.fmt == "parquet":
            with _open_parquet(loc) as parquet:
                total = float(parquet.metadata.num_rows)
                done = 0
                # One row group at a time: a reader over the whole file keeps the pre-buffered
                # bytes of every row group it has read, so its memory grows with the file.
                for group in range(parquet.metadata.num_row_groups):
                    for batch in parquet.iter_batches(
                        batch_size=batch_rows, row_groups=[group], columns=names, use_threads=True
                    ):
                        done += batch.num_rows
                        yield batch, float(done), total
            return
        size = float(loc.fs.size(loc.path))
        convert = pacsv.ConvertOptions(
            include_columns=names,
            column_types=dict.fromkeys(names, pa.string()),
            null_values=list(NULL_VALUES),
            strings_can_be_null=True,
        )
        read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=True)
        with _open_stream(loc) as (stream, raw):
            reader = pacsv.open_csv(stream, read_options=read, convert_options=convert)
            for batch in reader:
                yield batch, float(raw.tell()), size
    except _READ_ERRORS as exc:
        raise _unreadable(loc, exc) from exc


# ---------------------------------------------------------------------------------------
# scoring one chunk


@dataclass
class ChunkResult:
    """One scored chunk. ``conformed``, ``predictions`` and ``proba`` cover the valid rows only."""

    valid: np.ndarray[Any, np.dtype[np.bool_]]
    conformed: pd.DataFrame
    predictions: np.ndarray[Any, Any]
    proba: np.ndarray[Any, Any] | None
    #: per rejected row, in row order: the failing column(s) and why
    reject_columns: list[str]
    reject_reasons: list[str]
    counts: dict[tuple[str, str], int]
    seconds: float

    @property
    def all_valid(self) -> bool:
        return not self.reject_reasons


def _mixed_text(values: pa.Array, ltype: str) -> pd.Series[Any]:
    """Text values parsed where they can be, kept as text where not (so validation names them)."""
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    if ltype == "boolean":
        parsed = text.str.lower().map(_BOOLEAN_TEXT)
    else:
        parsed = pd.to_numeric(text, errors="coerce")
    return pd.Series(np.where(parsed.notna(), parsed.astype(object), text), dtype=object)


class ChunkScorer:
    """Validates, conforms and scores chunks; the local engine and Spark executors share it."""

    def __init__(self, signature: Signature, predictor: Predictor) -> None:
        self.signature = signature
        self.predictor = predictor
        self.names = signature.names
        self.classes = predictor.classes
        self.has_proba = predictor.has_proba
        # None until the first chunk tells whether the model's predictions are simply the
        # class of highest probability; when they are, asking the model twice is wasted work.
        self._from_proba: bool | None = None if self.has_proba and self.classes else False
        self._class_values: np.ndarray[Any, Any] | None = None

    @property
    def prediction_source(self) -> str:
        return "proba" if self._from_proba else "predict"

    def frame(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """The signature's columns of ``batch`` as pandas, numbers and booleans parsed from text."""
        arrays: list[pa.Array] = []
        mixed: dict[str, pa.Array] = {}
        for col in self.signature.columns:
            values = batch.column(col.name)
            target = _TEXT_PARSED.get(col.type)
            if target is not None and (
                pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            ):
                try:
                    values = pc.cast(values, target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    mixed[col.name] = values
            arrays.append(values)
        frame: pd.DataFrame = pa.RecordBatch.from_arrays(arrays, names=self.names).to_pandas(
            split_blocks=True
        )
        for name, values in mixed.items():
            frame[name] = _mixed_text(values, self.signature.column(name).type).to_numpy()
        return frame

    def _predict(self, table: pd.DataFrame) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
        if not self.has_proba:
            return np.asarray(self.predictor.predict(table)), None
        proba = np.asarray(self.predictor.predict_proba(table))
        if self._from_proba is None:
            head = table.iloc[:_CHECK_ROWS]
            direct = np.asarray(self.predictor.predict(head))
            classes = np.asarray(self.classes)
            try:
                derived = classes.astype(direct.dtype)[proba[: len(head)].argmax(axis=1)]
                same = direct.shape == derived.shape and bool(np.all(direct == derived))
            except (TypeError, ValueError):
                same = False
            self._from_proba = same
            self._class_values = classes.astype(direct.dtype) if same else None
        if self._from_proba:
            assert self._class_values is not None
            return self._class_values[proba.argmax(axis=1)], proba
        return np.asarray(self.predictor.predict(table)), proba

    def score(self, batch: pa.RecordBatch) -> ChunkResult:
        started = time.perf_counter()
        frame = self.frame(batch)
        rows = len(frame)
        # Every problem of every row: the rejects file gives each rejected row its reason.
        check = self.signature.validate(frame, max_problems=max(rows * len(self.names), 1))
        if check.ok:
            conformed = self.signature.conform(frame)
        elif check.valid.any():
            conformed = self.signature.conform(frame[check.valid])
        else:
            # Nothing to conform: a column of the wrong type could not even be cast empty.
            conformed = pd.DataFrame(columns=self.names)
        if len(conformed):
            conformed = _row_major(conformed)
            predictions, proba = self._predict(conformed)
        else:
            predictions = np.empty(0)
            proba = np.empty((0, len(self.classes or []))) if self.has_proba else None
        columns, reasons = _reasons(check) if not check.ok else ([], [])
        return ChunkResult(
            valid=check.valid,
            conformed=conformed,
            predictions=predictions,
            proba=proba,
            reject_columns=columns,
            reject_reasons=reasons,
            counts=dict(check.counts),
            seconds=time.perf_counter() - started,
        )


def _row_major(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` over one row-major array when its columns share a numeric type.

    A frame built column by column hands models a column-major array, and tree ensembles,
    which walk each row's features, run markedly slower on it than on rows laid out one
    after the other (the layout a model gets from the NumPy array it was usually trained on).
    """
    kinds = {dtype.kind for dtype in frame.dtypes if isinstance(dtype, np.dtype)}
    if len(kinds) != 1 or len(set(frame.dtypes)) != 1 or kinds.isdisjoint("fiu"):
        return frame
    values = np.ascontiguousarray(frame.to_numpy())
    return pd.DataFrame(values, index=frame.index, columns=frame.columns, copy=False)


def _reasons(check: Validation) -> tuple[list[str], list[str]]:
    by_row: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for problem in check.problems:
        if problem.row is not None:
            by_row[problem.row].append((problem.column, problem.reason))
    columns: list[str] = []
    reasons: list[str] = []
    for row in np.flatnonzero(~check.valid).tolist():
        found = by_row.get(row) or [("", "rejected")]
        columns.append(", ".join(c for c, _ in found))
        reasons.append(found[0][1] if len(found) == 1 else "; ".join(f"{c}: {r}" for c, r in found))
    return columns, reasons


# ---------------------------------------------------------------------------------------
# writing


def proba_names(classes: list[Any] | None, width: int) -> list[str]:
    labels = [str(c) for c in classes] if classes else [str(i) for i in range(width)]
    return [f"{PROBA_PREFIX}{label}" for label in labels]


def _to_arrow(values: np.ndarray[Any, Any]) -> pa.Array:
    if values.dtype != object:
        return pa.array(values)
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Labels of mixed Python types: one JSON-safe value at a time.
        return pa.array([json_scalar(v) for v in values])


class _AtomicFile:
    """A file written under a temporary name in its destination's folder, moved there at the end."""

    def __init__(self, loc: Location, run_id: str) -> None:
        self.loc = loc
        self.temp = loc.sibling(f".{loc.name}.{run_id[:12]}.part", same_format=True)
        self._handle: Any = None

    def sink(self) -> Any:
        if self.loc.local:
            return self.temp.path
        self._handle = self.loc.fs.open(self.temp.path, "wb")
        return self._handle

    def commit(self) -> None:
        if self.loc.local:
            with open(self.temp.path, "rb+") as handle:
                os.fsync(handle.fileno())
            if os.path.isdir(self.loc.path):
                # What --overwrite replaces may be a folder of parts written by the Spark engine.
                shutil.rmtree(self.loc.path)
            os.replace(self.temp.path, self.loc.path)
            return
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        # On S3 a move is a server-side copy: the final key appears whole or not at all.
        self.loc.fs.mv(self.temp.path, self.loc.path)

    def abort(self) -> None:
        if self._handle is not None:
            discard = getattr(self._handle, "discard", None)
            # Closing would upload the half-written part; discarding abandons it.
            if callable(discard):
                discard()
            else:
                self._handle.close()
            self._handle = None
        try:
            if self.temp.fs.exists(self.temp.path):
                self.temp.fs.rm(self.temp.path)
        except OSError:
            pass


class TableWriter:
    """Writes record batches to a CSV or Parquet file atomically; the schema is set by the first."""

    def __init__(self, loc: Location, run_id: str) -> None:
        self.loc = loc
        self.file = _AtomicFile(loc, run_id)
        self.schema: pa.Schema | None = None
        self._writer: Any = None
        self._stream: Any = None

    def _open(self, schema: pa.Schema) -> None:
        sink = self.file.sink()
        if self.loc.gzip:
            self._stream = pa.CompressedOutputStream(sink, "gzip")
            sink = self._stream
        if self.loc.fmt == "parquet":
            self._writer = pq.ParquetWriter(sink, schema, compression="snappy")
        else:
            self._writer = pacsv.CSVWriter(sink, schema)
        self.schema = schema

    def write(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self._open(batch.schema)
        assert self.schema is not None
        if batch.schema != self.schema:
            batch = _cast_batch(batch, self.schema)
        self._writer.write_batch(batch)

    def commit(self, fallback: pa.Schema) -> None:
        if self.schema is None:
            self._open(fallback)
        self._writer.close()
        if self._stream is not None:
            self._stream.close()
        self.file.commit()

    def abort(self) -> None:
        for closable in (self._writer, self._stream):
            if closable is not None:
                with contextlib.suppress(OSError, pa.ArrowException):
                    closable.close()
        self.file.abort()


def _cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for field_, array in zip(schema, batch.columns, strict=True):
        if array.type != field_.type:
            try:
                array = array.cast(field_.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InvalidInputError(
                    f"column {field_.name!r} changed type from {field_.type} to {array.type} "
                    f"between chunks: {_first_line(exc)}"
                ) from exc
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------------------
# the prediction log


@dataclass
class LogSpec:
    endpoint: str
    key_column: str | None


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain JSON values (NaN and NaT as None, datetimes as ISO text)."""
    columns: dict[str, list[Any]] = {}
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            columns[str(name)] = [None if pd.isna(v) else v.isoformat() for v in series]
        elif pd.api.types.is_float_dtype(series.dtype):
            values = series.to_numpy(dtype=np.float64)
            boxed = values.astype(object)
            boxed[~np.isfinite(values)] = None
            columns[str(name)] = boxed.tolist()
        else:
            columns[str(name)] = [json_scalar(v) for v in series.tolist()]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


class PredictionLogger:
    """Appends scored rows to the prediction log, one transaction per chunk."""

    def __init__(self, ctx: Context, spec: LogSpec, model: str, version: int, run_id: str) -> None:
        self.ctx = ctx
        self.spec = spec
        self.model = model
        self.version = version
        self.run_id = run_id
        self.rows = 0
        # Logged under an endpoint's name, rows follow what that endpoint redacts; keys read from
        # a redacted column are hashed like the endpoint's own.
        self.redaction = endpoint_redaction(ctx, spec.endpoint)
        if self.redaction is not None and spec.key_column in self.redaction.columns:
            self.redaction = dataclasses.replace(self.redaction, hash_keys=True)

    def write(
        self,
        conformed: pd.DataFrame,
        predictions: np.ndarray[Any, Any],
        proba: np.ndarray[Any, Any] | None,
        keys: list[Any] | None,
        seconds: float,
    ) -> None:
        count = len(conformed)
        if not count:
            return
        labels = [json_scalar(p) for p in predictions.tolist()]
        probabilities = proba.tolist() if proba is not None else None
        self.insert(json_records(conformed), labels, probabilities, keys, seconds * 1000.0 / count)

    def insert(
        self,
        inputs: list[dict[str, Any]],
        labels: list[Any],
        probabilities: list[list[float]] | None,
        keys: list[Any] | None,
        latency_ms: float | list[float],
    ) -> None:
        """Append rows given as JSON-safe inputs, labels and probabilities (one transaction)."""
        count = len(inputs)
        if not count:
            return
        redacted = self.redaction
        if redacted is not None:
            inputs = [redacted.inputs(row) for row in inputs]
            if keys is not None and redacted.hash_keys:
                keys = [None if k is None else redacted.key(str(k)) for k in keys]
        at = dt.datetime.now(dt.UTC)
        latencies = latency_ms if isinstance(latency_ms, list) else [latency_ms] * count
        rows = [
            {
                "id": uuid.uuid4().hex,
                "endpoint": self.spec.endpoint,
                "revision": 0,
                "model": self.model,
                "version": self.version,
                "at": at,
                "latency_ms": latencies[i],
                "inputs": inputs[i],
                "outputs": (
                    {"prediction": labels[i], "proba": probabilities[i]}
                    if probabilities is not None
                    else {"prediction": labels[i]}
                ),
                "key": None if keys is None or keys[i] is None else str(keys[i])[:500],
                "request_id": self.run_id,
                "source": "batch",
            }
            for i in range(count)
        ]
        with self.ctx.store.write() as session:
            # An erasure of a key made while this chunk was scored must not be undone by it.
            rows, _ = without_erased(session, rows, [], lambda: redaction_secret(self.ctx.settings))
            for start in range(0, len(rows), _LOG_INSERT_ROWS):
                session.execute(insert(_PREDICTIONS), rows[start : start + _LOG_INSERT_ROWS])
        self.rows += len(rows)


# ---------------------------------------------------------------------------------------
# a run


@dataclass
class ScorePlan:
    """Everything a run needs, checked before anything is written."""

    run_id: str
    loaded: LoadedModel
    signature: Signature
    source: Location
    target: Location
    rejects: Location
    keep: list[str]
    key_column: str | None
    #: the input columns read: kept ones, then the signature's, then the key
    columns: list[str]
    batch_rows: int
    fail_on_reject: bool
    overwrite: bool
    log: LogSpec | None
    progress: ProgressCallback | None

    @property
    def ref(self) -> str:
        return self.loaded.info.ref

    @property
    def proba_columns(self) -> list[str]:
        if not self.loaded.has_proba:
            return []
        classes = self.loaded.classes
        return proba_names(classes, len(classes or []))

    @property
    def output_columns(self) -> list[str]:
        return [*self.keep, PREDICTION, *self.proba_columns, MODEL_VERSION, RUN_ID]

    def fallback_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The output schema when no row was scored, so the types come from the registry."""
        outputs = self.loaded.info.output_schema or {}
        prediction = _LOGICAL_ARROW.get(str(outputs.get("prediction")), pa.string())
        fields = [input_schema.field(k) for k in self.keep]
        fields.append(pa.field(PREDICTION, prediction))
        fields.extend(pa.field(name, pa.float64()) for name in self.proba_columns)
        fields += [pa.field(MODEL_VERSION, pa.string()), pa.field(RUN_ID, pa.string())]
        return pa.schema(fields)

    def rejects_names(self) -> list[tuple[str, str]]:
        """(input column, name in the rejects file): the input's names, clear of ours."""
        seen = set(REJECT_COLUMNS)
        out: list[tuple[str, str]] = []
        for name in dict.fromkeys([*self.keep, *self.signature.names]):
            shown = name
            while shown in seen:
                shown = f"{shown}_input"
            seen.add(shown)
            out.append((name, shown))
        return out


@dataclass
class EngineResult:
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    logged: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    #: set when the run must fail after its rejects were written (``fail_on_reject``)
    failure: PasserelleError | None = None


def default_rejects(output: Location) -> Location:
    name = output.name
    lowered = name.lower()
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq"):
        if lowered.endswith(suffix):
            return output.sibling(f"{name[: -len(suffix)]}.rejects{name[-len(suffix) :]}")
    return output.sibling(f"{name}.rejects")


def plan_run(
    ctx: Context,
    ref: str,
    input: str | Path,
    output: str | Path,
    *,
    keep: Sequence[str] = (),
    rejects: str | Path | None = None,
    fail_on_reject: bool = False,
    overwrite: bool = False,
    log: bool = False,
    log_endpoint: str | None = None,
    key_column: str | None = None,
    batch_rows: int | None = None,
    progress: ProgressCallback | None = None,
    folders: bool = False,
) -> ScorePlan:
    """Check the arguments, the files and the model; nothing is written here.

    ``folders`` accepts an input folder of part files (the Spark engine reads them).
    """
    rows = DEFAULT_BATCH_ROWS if batch_rows is None else int(batch_rows)
    if rows < 1:
        raise InvalidInputError(f"the batch size must be at least 1 row, got {rows}")
    source = locate(input, ctx.settings)
    target = locate(output, ctx.settings)
    reject_loc = locate(rejects, ctx.settings) if rejects is not None else default_rejects(target)
    if not source.exists():
        raise InvalidInputError(f"cannot read {source.uri}: no such file")
    if source.local and not Path(source.path).is_file() and not (folders and Path(source.path).is_dir()):
        raise InvalidInputError(f"cannot read {source.uri}: not a file")
    if target.path == source.path or reject_loc.path == source.path:
        raise InvalidInputError(f"{source.uri} cannot be both the input and an output")
    if reject_loc.path == target.path:
        raise InvalidInputError("the output and the rejects file must be different files")
    for loc, what in ((target, "output"), (reject_loc, "rejects file")):
        if loc.local and not Path(loc.parent or "/").is_dir():
            raise InvalidInputError(
                f"cannot write the {what} {loc.uri}: the folder {loc.parent} does not exist"
            )
        if not overwrite and loc.exists():
            raise InvalidInputError(f"the {what} {loc.uri} already exists; pass --overwrite to replace it")

    loaded = Registry(ctx).load(ref)
    if loaded.signature is None:
        raise InvalidInputError(
            f"{loaded.info.ref} has no signature (it was registered without a sample); batch scoring "
            "needs one to know which columns to read and check"
        )
    signature = loaded.signature
    names = input_columns(source)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidInputError(
            f"{source.uri}: column(s) {', '.join(map(repr, duplicated))} appear more than once"
        )
    present = set(names)
    missing = [n for n in signature.names if n not in present]
    if missing:
        raise InvalidInputError(
            f"{source.uri} has no column {', '.join(map(repr, missing))}, which {loaded.info.ref} needs"
        )
    keep_list = list(dict.fromkeys(keep))
    absent = [k for k in keep_list if k not in present]
    if absent:
        raise InvalidInputError(f"--keep: {source.uri} has no column {', '.join(map(repr, absent))}")
    if key_column is not None and key_column not in present:
        raise InvalidInputError(f"--key-column: {source.uri} has no column {key_column!r}")
    added = {PREDICTION, MODEL_VERSION, RUN_ID}
    if loaded.has_proba:
        added.update(proba_names(loaded.classes, len(loaded.classes or [])))
    clash = [k for k in keep_list if k in added]
    if clash:
        raise InvalidInputError(
            f"--keep {', '.join(clash)}: the output adds a column of that name; rename it in the input"
        )
    if log_endpoint is not None and not log:
        raise InvalidInputError("--log-endpoint only makes sense with --log")
    return ScorePlan(
        run_id=uuid.uuid4().hex,
        loaded=loaded,
        signature=signature,
        source=source,
        target=target,
        rejects=reject_loc,
        keep=keep_list,
        key_column=key_column,
        columns=list(dict.fromkeys([*keep_list, *signature.names, *([key_column] if key_column else [])])),
        batch_rows=rows,
        fail_on_reject=fail_on_reject,
        overwrite=overwrite,
        log=LogSpec(log_endpoint or f"{loaded.info.model}-batch", key_column) if log else None,
        progress=progress,
    )


def _score_local(ctx: Context, plan: ScorePlan, result: EngineResult) -> EngineResult:
    """Score ``plan`` in this process; ``result`` is filled as chunks go (a failure keeps the counts)."""
    scorer = ChunkScorer(plan.signature, plan.loaded.predictor)
    writer = TableWriter(plan.target, plan.run_id)
    rejects = TableWriter(plan.rejects, plan.run_id)
    logger = (
        PredictionLogger(ctx, plan.log, plan.loaded.info.model, plan.loaded.info.number, plan.run_id)
        if plan.log is not None
        else None
    )
    version = plan.ref
    reject_names = plan.rejects_names()
    rejections: dict[str, int] = defaultdict(int)
    input_schema: pa.Schema | None = None
    try:
        for batch, done, total in read_chunks(plan.source, plan.columns, plan.batch_rows):
            input_schema = batch.schema
            chunk = scorer.score(batch)
            first_row = result.rows_in
            count = batch.num_rows
            result.rows_in += count
            scored_rows = len(chunk.conformed)
            result.rows_scored += scored_rows
            for (column, kind), n in chunk.counts.items():
                rejections[f"{column}: {kind}"] += n

            taken = batch if chunk.all_valid else batch.filter(pa.array(chunk.valid))
            arrays: list[pa.Array] = [taken.column(k) for k in plan.keep]
            arrays.append(_to_arrow(chunk.predictions))
            if chunk.proba is not None:
                arrays.extend(
                    pa.array(np.ascontiguousarray(chunk.proba[:, j])) for j in range(chunk.proba.shape[1])
                )
            arrays += [pa.repeat(version, scored_rows), pa.repeat(plan.run_id, scored_rows)]
            if scored_rows:
                writer.write(pa.RecordBatch.from_arrays(arrays, names=plan.output_columns))

            if not chunk.all_valid:
                bad = np.flatnonzero(~chunk.valid)
                result.rows_rejected += len(bad)
                picked = batch.take(pa.array(bad))
                rejects.write(
                    pa.RecordBatch.from_arrays(
                        [
                            pa.array(bad + first_row, pa.int64()),
                            pa.array(chunk.reject_columns, pa.string()),
                            pa.array(chunk.reject_reasons, pa.string()),
                            *[picked.column(name) for name, _ in reject_names],
                        ],
                        names=[*REJECT_COLUMNS, *[shown for _, shown in reject_names]],
                    )
                )
                if plan.fail_on_reject:
                    result.failure = SchemaError(
                        f"row {first_row + int(bad[0])} of {plan.source.uri} does not match the signature of "
                        f"{plan.ref} ({chunk.reject_columns[0]}: {chunk.reject_reasons[0]}) and "
                        f"--fail-on-reject is set: no output written; the rejected rows of this chunk are in "
                        f"{plan.rejects.uri}"
                    )
                    break

            if logger is not None and scored_rows:
                keys = taken.column(plan.key_column).to_pylist() if plan.key_column else None
                logger.write(chunk.conformed, chunk.predictions, chunk.proba, keys, chunk.seconds)
            failpoint("batch.chunk_written")
            if plan.progress is not None:
                unit: Literal["rows", "bytes"] = "rows" if plan.source.fmt == "parquet" else "bytes"
                plan.progress(ProgressUpdate(result.rows_in, done, total, unit))

        if input_schema is None:
            input_schema = _empty_schema(plan)
        if result.failure is not None:
            writer.abort()
        else:
            writer.commit(plan.fallback_schema(input_schema))
        if result.rows_rejected:
            rejects.commit(input_schema)
        else:
            rejects.abort()
            if plan.overwrite and plan.rejects.exists():
                # A rejects file left by an earlier run would describe rows this run accepted.
                plan.rejects.fs.rm(plan.rejects.path, recursive=True)
    except BaseException:
        writer.abort()
        rejects.abort()
        raise
    result.rejections = dict(rejections)
    result.logged = logger.rows if logger is not None else 0
    result.details["prediction_from"] = scorer.prediction_source
    return result


def _empty_schema(plan: ScorePlan) -> pa.Schema:
    return pa.schema([pa.field(name, pa.string()) for name in plan.columns])


# ---------------------------------------------------------------------------------------
# run records


def _info(row: BatchRun) -> BatchRunInfo:
    return BatchRunInfo(
        run_id=row.id,
        model=row.model,
        version=row.version,
        engine=row.engine,
        status=row.status,
        input_uri=row.input_uri,
        input_fingerprint=row.input_fingerprint,
        output_uri=row.output_uri,
        rejects_uri=row.rejects_uri,
        rows_in=row.rows_in,
        rows_scored=row.rows_scored,
        rows_rejected=row.rows_rejected,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        error=row.error,
        created_by=row.created_by,
        details=dict(row.details or {}),
    )


def _start_record(ctx: Context, plan: ScorePlan, engine: str, started: dt.datetime) -> None:
    details: dict[str, Any] = {"keep": plan.keep, "batch_rows": plan.batch_rows}
    if plan.log is not None:
        details["log_endpoint"] = plan.log.endpoint
    with ctx.store.write() as session:
        session.add(
            BatchRun(
                id=plan.run_id,
                model=plan.loaded.info.model,
                version=plan.loaded.info.number,
                input_uri=plan.source.uri,
                input_fingerprint="",
                output_uri=plan.target.uri,
                rejects_uri=None,
                started_at=started,
                status="running",
                engine=engine,
                details=details,
                created_by=ctx.actor,
            )
        )


def _finish_record(
    ctx: Context,
    plan: ScorePlan,
    *,
    status: str,
    fingerprint_: str,
    result: EngineResult,
    error: str | None,
    started: float,
) -> BatchRunInfo:
    with ctx.store.write() as session:
        row = session.get(BatchRun, plan.run_id)
        if row is None:  # pragma: no cover - inserted by _start_record in this process
            raise NotFoundError(f"batch run {plan.run_id} vanished")
        row.status = status
        row.error = error
        row.input_fingerprint = fingerprint_
        row.rows_in = result.rows_in
        row.rows_scored = result.rows_scored
        row.rows_rejected = result.rows_rejected
        row.rejects_uri = plan.rejects.uri if result.rows_rejected else None
        row.finished_at = dt.datetime.now(dt.UTC)
        row.duration_s = round(time.perf_counter() - started, 3)
        details = dict(row.details or {})
        details.update(result.details)
        if result.rejections:
            details["rejections"] = result.rejections
        if plan.log is not None:
            details["logged_rows"] = result.logged
        row.details = details
        info = _info(row)
        _audit(session, ctx, info)
    return info


def _audit(session: Session, ctx: Context, info: BatchRunInfo) -> None:
    audit.record(
        session,
        actor=ctx.actor,
        action="batch.score",
        target=info.ref,
        after={
            "run_id": info.run_id,
            "status": info.status,
            "engine": info.engine,
            "input": info.input_uri,
            "input_fingerprint": info.input_fingerprint,
            "output": info.output_uri,
            "rows_in": info.rows_in,
            "rows_scored": info.rows_scored,
            "rows_rejected": info.rows_rejected,
            "error": info.error,
        },
    )


def score_file(
    ctx: Context,
    ref: str,
    input: str | Path,
    output: str | Path,
    *,
    keep: Sequence[str] = (),
    rejects: str | Path | None = None,
    fail_on_reject: bool = False,
    overwrite: bool = False,
    log: bool = False,
    log_endpoint: str | None = None,
    key_column: str | None = None,
    batch_rows: int | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    progress: ProgressCallback | None = None,
) -> BatchRunInfo:
    """Score the CSV or Parquet file ``input`` with the version ``ref`` into ``output``.

    Refusals (missing file, unreadable file, missing column, existing output without
    ``overwrite``) raise before anything is recorded; a run that starts is recorded as
    ``running``, then ``succeeded`` or ``failed``. ``fail_on_reject`` makes the first rejected
    row fail the run (the rejects found so far are still written).
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "spark":
        from passerelle import spark

        spark.check_paths(input, output, rejects)
    plan = plan_run(
        ctx,
        ref,
        input,
        output,
        keep=keep,
        rejects=rejects,
        fail_on_reject=fail_on_reject,
        overwrite=overwrite,
        log=log,
        log_endpoint=log_endpoint,
        key_column=key_column,
        batch_rows=batch_rows,
        progress=progress,
        folders=engine == "spark",
    )
    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    _start_record(ctx, plan, engine, started_at)
    hasher = _Fingerprinter(plan.source)
    hasher.start()
    result = EngineResult()
    try:
        if engine == "spark":
            from passerelle import spark

            result = spark.score(ctx, plan, master=spark_master)
        else:
            result = _score_local(ctx, plan, result)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _first_line(exc)
        _finish_record(
            ctx,
            plan,
            status="failed",
            fingerprint_=hasher.result(),
            result=result,
            error=reason,
            started=started,
        )
        raise
    if result.failure is not None:
        _finish_record(
            ctx,
            plan,
            status="failed",
            fingerprint_=hasher.result(),
            result=result,
            error=_first_line(result.failure),
            started=started,
        )
        raise result.failure
    return _finish_record(
        ctx,
        plan,
        status="succeeded",
        fingerprint_=hasher.result(),
        result=result,
        error=None,
        started=started,
    )


def list_runs(ctx: Context, *, model: str | None = None, limit: int = 50) -> list[BatchRunInfo]:
    """Batch runs, newest first."""
    query = select(BatchRun).order_by(BatchRun.started_at.desc()).limit(limit)
    if model is not None:
        query = query.where(BatchRun.model == model)
    with ctx.store.read() as session:
        return [_info(row) for row in session.scalars(query).all()]


def get_run(ctx: Context, run_id: str) -> BatchRunInfo:
    """One batch run, by its id or an unambiguous prefix of at least 6 characters."""
    text = run_id.strip().lower()
    with ctx.store.read() as session:
        row = session.get(BatchRun, text)
        if row is not None:
            return _info(row)
        if len(text) >= 6:
            found = session.scalars(select(BatchRun).where(BatchRun.id.startswith(text)).limit(2)).all()
            if len(found) == 1:
                return _info(found[0])
            if len(found) > 1:
                raise InvalidInputError(f"batch run id {run_id!r} is ambiguous; give more characters")
    raise NotFoundError(f"batch run {run_id!r} does not exist")
