"""The prediction log's archive: old predictions as Parquet files that DuckDB, Spark or pandas read.

Answered rows reach the ``predictions`` and ``shadow_predictions`` tables first (see
:mod:`passerelle.predictionlog`); :func:`archive` later moves the rows older than a cut-off,
per endpoint and per day, to files laid out Hive-style under the archive root (a local folder
or ``s3://bucket/prefix``)::

    <root>/predictions/endpoint=<name>/date=YYYY-MM-DD/part-<uuid>.parquet
    <root>/predictions/endpoint=<name>/date=YYYY-MM-DD/_files/part-<uuid>.json          the file's record
    <root>/predictions/endpoint=<name>/date=YYYY-MM-DD/_files/part-<uuid>.pending.json  while in flight

A batch is written whole (a temporary name then a rename on a local disk; one PUT on S3), read
back and checked, and only then deleted from the database, in one transaction with its audit
record. Its record is written *before* the file, as pending: a run interrupted between the file
and the delete leaves that pending record behind, and the next run (or :func:`erase_key`)
finishes the batch from it instead of archiving the same rows a second time. Labels stay in the
database. See ``docs/predictions.md`` and ADR 14.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import duckdb
import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Table, delete, func, select
from sqlalchemy.engine import RowMapping

from passerelle import audit
from passerelle._deps import require
from passerelle._failpoints import failpoint
from passerelle.artifacts import storage_options_from_settings
from passerelle.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PasserelleError,
    StoreError,
)
from passerelle.predictionlog import (
    _BASE_COLUMNS,
    HASHED_KEY_PREFIX,
    _arrow_table,
    _conform,
    _export_schema,
    _flat_row,
    _shadows_of,
    hash_key,
    redaction_secret,
)
from passerelle.references import check_name
from passerelle.serving import leases
from passerelle.store import Store
from passerelle.store.schema import Endpoint, Prediction, ShadowPrediction

if TYPE_CHECKING:
    from passerelle.context import Context
    from passerelle.settings import Settings

__all__ = [
    "ARCHIVE_ACTION",
    "ERASE_ARCHIVED_ACTION",
    "ArchiveBatch",
    "ArchiveLocation",
    "ArchiveReport",
    "archive",
    "archive_tick",
    "erase_key",
    "export_tables",
    "read_archive",
]

logger = logging.getLogger(__name__)

PREFIX = "predictions"
#: audit actions: a batch moved out of the database, and an archived file rewritten by an erasure
ARCHIVE_ACTION = "predictions.archive"
ERASE_ARCHIVED_ACTION = "predictions.erase_archived"
#: where the archive goes when neither ``--to`` nor the ``archive_uri`` setting says
DEFAULT_FOLDER = "predictions-archive"
# Long enough for one batch on a slow store; renewed after every batch.
_LEASE_TTL_S = 600.0
# Ids per IN (...) list: SQLite refuses more than 32,766 bound parameters in one statement.
_ID_CHUNK = 5000
_DAY = dt.timedelta(days=1)
_DATE_DIR = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_PART = re.compile(r"part-[0-9a-f]{32}\.parquet")
_PREDICTIONS = cast(Table, Prediction.__table__)
_SHADOWS = cast(Table, ShadowPrediction.__table__)
_SHADOW_TYPE = pa.list_(
    pa.struct(
        [
            ("model", pa.string()),
            ("version", pa.int64()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("latency_ms", pa.float64()),
            ("outputs", pa.string()),
            ("error", pa.string()),
        ]
    )
)


# ------------------------------------------------------------------------------------------ location


@dataclass(frozen=True)
class ArchiveLocation:
    """Where the archive lives, and how to reach it."""

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, root: str | None = None) -> ArchiveLocation:
        """``root``, else the ``archive_uri`` setting, else ``<artifact store>/predictions-archive``.

        An ``s3://`` archive uses the S3 endpoint and credentials of the settings.
        """
        uri = (
            root or settings.archive_uri or f"{settings.effective_artifact_uri.rstrip('/')}/{DEFAULT_FOLDER}"
        )
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
        # The artifact store's own helper, pointed at this URI, gives the same credentials.
        options = storage_options_from_settings(settings.model_copy(update={"artifact_uri": uri}))
        return cls(uri.rstrip("/"), options)


class _Tier:
    """The archive's files, through fsspec."""

    def __init__(self, location: ArchiveLocation) -> None:
        self.uri = location.uri
        self.remote = "://" in self.uri and not self.uri.startswith("file://")
        if self.uri.startswith(("s3://", "s3a://")):
            require("s3fs", "s3")
        try:
            self.fs, base = fsspec.core.url_to_fs(self.uri, **location.storage_options)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the prediction archive {self.uri}: {exc}") from exc
        self.base = str(base).rstrip("/")

    def endpoint_dir(self, endpoint: str) -> str:
        return f"{self.base}/{PREFIX}/endpoint={endpoint}"

    def partition_dir(self, endpoint: str, day: dt.date) -> str:
        return f"{self.endpoint_dir(endpoint)}/date={day.isoformat()}"

    def url(self, path: str) -> str:
        """The name DuckDB and users know the file by."""
        return str(self.fs.unstrip_protocol(path)) if self.remote else path

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"the prediction archive at {self.uri} cannot {what}: {exc}")

    def put(self, path: str, data: bytes) -> None:
        """Write ``path`` whole or not at all."""
        try:
            if self.remote:
                # An object appears only once its upload completes: readers never see half of it.
                self.fs.pipe_file(path, data)
                return
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with tmp.open("wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            fd = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._fail(f"write {path}", exc) from exc

    def get(self, path: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail(f"read {path}", exc) from exc

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(f"delete {path}", exc) from exc

    def scan(self, endpoint: str) -> _Scan:
        """Every file of ``endpoint``: one listing request per thousand files on S3."""
        top = self.endpoint_dir(endpoint)
        try:
            # Another process may have written since this process last listed.
            self.fs.invalidate_cache(top)
            found = self.fs.find(top)
        except FileNotFoundError:
            found = []
        except OSError as exc:
            raise self._fail(f"list {top}", exc) from exc
        scan = _Scan()
        for path in sorted(found):
            rel = path[len(top) :].strip("/").split("/")
            if not rel or not _DATE_DIR.fullmatch(rel[0]):
                continue
            day = dt.date.fromisoformat(rel[0][5:])
            name = rel[-1]
            if len(rel) == 2 and _PART.fullmatch(name):
                scan.parts.setdefault(day, []).append(path)
            elif len(rel) == 3 and rel[1] == "_files" and name.endswith(".pending.json"):
                scan.pending.append(path)
            elif name.startswith(".") and name.endswith(".tmp"):
                scan.stale.append(path)
        return scan


@dataclass
class _Scan:
    parts: dict[dt.date, list[str]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    #: temporary files of a local write that was interrupted
    stale: list[str] = field(default_factory=list)


def _record_path(part: str, *, pending: bool) -> str:
    folder, _, name = part.rpartition("/")
    stem = name.removesuffix(".parquet")
    return f"{folder}/_files/{stem}{'.pending' if pending else ''}.json"


def _part_of(record_path: str, record: dict[str, Any]) -> str:
    folder = record_path.rpartition("/")[0].rpartition("/")[0]
    return f"{folder}/{record['file']}"


def _encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"


def _read_record(tier: _Tier, path: str) -> dict[str, Any] | None:
    try:
        data = tier.get(path)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"archive record {tier.url(path)} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        raise IntegrityError(f"archive record {tier.url(path)} does not name its file")
    return record


def _live_parts(tier: _Tier, scan: _Scan) -> dict[dt.date, list[str]]:
    """The files a reader must read: those replaced by a rewrite that completed are left out."""
    replaced: set[str] = set()
    existing = {path for paths in scan.parts.values() for path in paths}
    for path in scan.pending:
        record = _read_record(tier, path)
        if record is None or _part_of(path, record) not in existing:
            continue
        folder = path.rpartition("/")[0].rpartition("/")[0]
        replaced.update(f"{folder}/{name}" for name in record.get("replaces", []))
    return {
        day: kept
        for day, paths in sorted(scan.parts.items())
        if (kept := [p for p in paths if p not in replaced])
    }


# ------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class ArchiveBatch:
    """Rows of one endpoint and one day moved (or, in a dry run, to be moved) to one file."""

    endpoint: str
    date: dt.date
    rows: int
    #: the file written; None in a dry run
    file: str | None = None
    bytes: int = 0


@dataclass(frozen=True)
class ArchiveReport:
    root: str
    #: rows strictly older than this were due (midnight UTC: days are archived whole)
    cutoff: dt.datetime
    dry_run: bool
    batches: list[ArchiveBatch] = field(default_factory=list)
    #: batches of an interrupted run found and finished
    recovered: int = 0
    #: endpoints another process was archiving; they were left to it
    busy: list[str] = field(default_factory=list)
    #: endpoint -> why it could not be archived (the others still were)
    failed: dict[str, str] = field(default_factory=dict)
    #: stopped at ``max_batches`` with rows still due: run again
    more: bool = False

    @property
    def rows(self) -> int:
        return sum(batch.rows for batch in self.batches)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = self.rows
        return out


# ------------------------------------------------------------------------------------------ helpers


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _midnight(value: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(value.astimezone(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _lease_name(endpoint: str) -> str:
    return f"predictions-archive:{endpoint}"


def _endpoints(store: Store) -> list[str]:
    """Endpoints with rows in the table, one index lookup each (no scan of the table)."""
    names: list[str] = []
    with store.read() as session:
        while True:
            query = select(func.min(_PREDICTIONS.c.endpoint))
            if names:
                query = query.where(_PREDICTIONS.c.endpoint > names[-1])
            name = session.execute(query).scalar()
            if name is None:
                return names
            names.append(str(name))


def _oldest(
    store: Store, endpoint: str, before: dt.datetime, since: dt.datetime | None = None
) -> dt.datetime | None:
    """The time of the endpoint's oldest prediction in ``[since, before)``: an index lookup."""
    query = select(func.min(_PREDICTIONS.c.at)).where(
        _PREDICTIONS.c.endpoint == endpoint, _PREDICTIONS.c.at < before
    )
    if since is not None:
        query = query.where(_PREDICTIONS.c.at >= since)
    with store.read() as session:
        value: dt.datetime | None = session.execute(query).scalar()
    return _utc(value)


def _known(store: Store, endpoint: str) -> bool:
    with store.read() as session:
        if session.scalar(select(Endpoint.id).where(Endpoint.name == endpoint)) is not None:
            return True
        return (
            session.scalar(select(_PREDICTIONS.c.id).where(_PREDICTIONS.c.endpoint == endpoint).limit(1))
            is not None
        )


def _chunked(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _ID_CHUNK):
        yield ids[start : start + _ID_CHUNK]


def _delete_rows(session: Any, ids: Sequence[str]) -> int:
    deleted = 0
    for chunk in _chunked(ids):
        session.execute(delete(_SHADOWS).where(_SHADOWS.c.prediction_id.in_(chunk)))
        result = session.execute(delete(_PREDICTIONS).where(_PREDICTIONS.c.id.in_(chunk)))
        deleted += int(result.rowcount or 0)
    return deleted


def _shadow_cell(shadow: dict[str, Any]) -> dict[str, Any]:
    outputs = shadow.get("outputs")
    return {
        "model": shadow["model"],
        "version": shadow["version"],
        "at": shadow["at"],
        "latency_ms": shadow["latency_ms"],
        "outputs": None
        if outputs is None
        else orjson.dumps(outputs, option=orjson.OPT_NON_STR_KEYS).decode(),
        "error": shadow.get("error"),
    }


def _batch_table(rows: list[RowMapping], shadows: dict[str, list[dict[str, Any]]]) -> pa.Table:
    """The rows as export flattens them, plus every shadow answer in full in a nested column.

    The endpoint is left out of the file: it is the ``endpoint=`` partition, and Spark refuses a
    column that is both in the data and in the path.
    """
    flat = [_flat_row(row, shadows.get(row["id"], [])) for row in rows]
    names = list(dict.fromkeys(name for row in flat for name in row))
    table = _arrow_table(flat, names)
    table = _conform(table, _export_schema({column.name: [column.type] for column in table.schema}))
    nested = pa.array(
        [[_shadow_cell(s) for s in shadows.get(row["id"], [])] for row in rows], type=_SHADOW_TYPE
    )
    return table.drop_columns(["endpoint"]).append_column(pa.field("shadows", _SHADOW_TYPE), nested)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _ids_of(data: bytes) -> list[str]:
    return [str(v) for v in pq.read_table(pa.BufferReader(data), columns=["id"]).column("id").to_pylist()]


def _verify(tier: _Tier, path: str, sha256: str, ids: Sequence[str]) -> None:
    """Read the file back from the store: the bytes and the ids must be the ones written."""
    try:
        data = tier.get(path)
    except FileNotFoundError as exc:
        raise IntegrityError(f"archive file {tier.url(path)} vanished right after it was written") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"archive file {tier.url(path)} does not read back as written")
    if _ids_of(data) != list(ids):
        raise IntegrityError(f"archive file {tier.url(path)} does not hold the ids it was written with")


def _duckdb(tier: _Tier) -> duckdb.DuckDBPyConnection:
    # Extensions would be downloaded at run time; the store's own filesystem is lent instead.
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    if tier.remote:
        con.register_filesystem(tier.fs)
    return con


_READ = (
    "SELECT * EXCLUDE (date) FROM read_parquet($files, hive_partitioning = true, union_by_name = true, "
    "hive_types = {'endpoint': 'VARCHAR', 'date': 'DATE'}) "
    'WHERE ($since IS NULL OR "at" >= $since) AND ($until IS NULL OR "at" < $until)'
)


def _ordered(table: pa.Table) -> pa.Table:
    rest = [n for n in table.column_names if n not in _BASE_COLUMNS and n != "shadows"]
    tail = ["shadows"] if "shadows" in table.column_names else []
    return table.select([*_BASE_COLUMNS, *rest, *tail])


def _empty() -> pa.Table:
    schema = _export_schema({name: [] for name in _BASE_COLUMNS})
    return schema.empty_table().append_column(pa.field("shadows", _SHADOW_TYPE), pa.array([], _SHADOW_TYPE))


def _files_for(
    tier: _Tier, endpoint: str, since: dt.datetime | None, until: dt.datetime | None
) -> list[tuple[dt.date, str]]:
    """The live files of ``endpoint`` whose day meets ``[since, until)``: the partition pruning."""
    out = []
    for day, paths in _live_parts(tier, tier.scan(endpoint)).items():
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        if (since is None or start + _DAY > since) and (until is None or start < until):
            out += [(day, path) for path in paths]
    return out


# ------------------------------------------------------------------------------------------ reading


def read_archive(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    root: str | None = None,
) -> pa.Table:
    """The archived predictions of ``endpoint`` in ``[since, until)``, oldest first, through DuckDB.

    Columns are those of :func:`passerelle.predictionlog.export` (``id``, ``at``, ``endpoint``…,
    ``in_*``, ``out_*``, ``shadow_<model>_<version>_prediction``) followed by ``shadows``, the
    full shadow answers. Only the days that meet the period are read.
    """
    check_name(endpoint, "endpoint")
    since, until = _utc(since), _utc(until)
    tier = _Tier(ArchiveLocation.from_settings(ctx.settings, root))
    files = _files_for(tier, endpoint, since, until)
    if not files:
        return _empty()
    con = _duckdb(tier)
    try:
        query = f'{_READ} ORDER BY "at", id'
        params = {"files": [tier.url(path) for _, path in files], "since": since, "until": until}
        table = con.sql(query, params=params).to_arrow_table()
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the prediction archive at {tier.uri}: {exc}") from exc
    finally:
        con.close()
    return _ordered(table)


def export_tables(
    endpoint: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    exported: Sequence[Path],
    location: ArchiveLocation | None = None,
    chunk_rows: int = 10_000,
) -> Iterator[pa.Table]:
    """Archived rows for :func:`passerelle.predictionlog.export`, in export's flat columns.

    ``exported`` are the staged Arrow files of the rows already read from the database. A row
    may be in both tiers for a moment (being archived right now, or left by an interrupted run),
    so an archived row whose id was exported from the database is left out. Only database rows
    older than the newest archived day can be such a row, which keeps that set of ids small.
    """
    import pyarrow.ipc

    if location is None:
        from passerelle.settings import load_settings

        location = ArchiveLocation.from_settings(load_settings())
    tier = _Tier(location)
    since, until = _utc(since), _utc(until)
    files = _files_for(tier, endpoint, since, until)
    if not files:
        return
    bound = dt.datetime.combine(max(day for day, _ in files), dt.time(), tzinfo=dt.UTC) + _DAY
    seen: list[pa.Array] = []
    for part in exported:
        with pa.memory_map(str(part)) as source:
            staged = pyarrow.ipc.open_file(source).read_all().select(["id", "at"])
        if staged.num_rows:
            older = staged.filter(
                pc.less(staged.column("at"), pa.scalar(bound, staged.schema.field("at").type))
            )
            seen.append(older.column("id").combine_chunks())
    excluded = pa.concat_arrays(seen) if seen else pa.array([], pa.string())
    con = _duckdb(tier)
    try:
        params = {"files": [tier.url(path) for _, path in files], "since": since, "until": until}
        # No ORDER BY: files are read in day order, each sorted by time, without a global sort.
        reader = con.sql(_READ, params=params).to_arrow_reader(batch_size=chunk_rows)
        for batch in reader:
            table = _ordered(pa.Table.from_batches([batch])).drop_columns(["shadows"])
            if len(excluded):
                table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=excluded)))
            if table.num_rows:
                yield table
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the prediction archive at {tier.uri}: {exc}") from exc
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ archiving


def _commit(tier: _Tier, part: str, record: dict[str, Any]) -> None:
    """Turn the pending record of ``part`` into its lasting one."""
    committed = {k: v for k, v in record.items() if k != "replaces"}
    if record.get("replaces"):
        committed["replaced"] = record["replaces"]
    tier.put(_record_path(part, pending=False), _encode_record(committed))
    tier.remove(_record_path(part, pending=True))


def _recover(ctx: Context, tier: _Tier, endpoint: str, reason: str) -> int:
    """Finish what an interrupted run left behind; return how many files it finished.

    Call it holding the endpoint's lease. A pending record whose file was never written is
    dropped (its rows never left the database). One whose file exists was written whole: the
    rows of a new batch still in the database are deleted now, and the files a rewrite replaced
    are removed.
    """
    scan = tier.scan(endpoint)
    for path in scan.stale:
        tier.remove(path)
    finished = 0
    for path in scan.pending:
        record = _read_record(tier, path)
        if record is None:
            continue
        part = _part_of(path, record)
        try:
            data = tier.get(part)
        except FileNotFoundError:
            tier.remove(path)
            continue
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise IntegrityError(
                f"archive file {tier.url(part)} does not match its pending record; "
                "inspect it before archiving this endpoint again"
            )
        folder = part.rpartition("/")[0]
        if record.get("replaces"):
            for name in record["replaces"]:
                old = f"{folder}/{name}"
                tier.remove(old)
                tier.remove(_record_path(old, pending=False))
        else:
            ids = _ids_of(data)
            with ctx.store.write() as session:
                deleted = _delete_rows(session, ids)
                if deleted:
                    audit.record(
                        session,
                        actor=ctx.actor,
                        action=ARCHIVE_ACTION,
                        target=endpoint,
                        before={"rows": deleted, "date": record.get("date"), "where": "database"},
                        after={"file": tier.url(part), "rows": len(ids), "recovered": True},
                        reason=reason,
                    )
        _commit(tier, part, record)
        finished += 1
    return finished


class _Run:
    """One archiving pass over one endpoint, under its lease."""

    def __init__(
        self,
        ctx: Context,
        tier: _Tier,
        endpoint: str,
        *,
        cutoff: dt.datetime,
        batch_rows: int,
        reason: str,
        holder: str,
    ) -> None:
        self.ctx = ctx
        self.tier = tier
        self.endpoint = endpoint
        self.cutoff = cutoff
        self.batch_rows = batch_rows
        self.reason = reason
        self.holder = holder

    def days(self) -> Iterator[tuple[dt.date, int]]:
        """Each day with due rows and how many (what a dry run reports)."""
        store = self.ctx.store
        oldest = _oldest(store, self.endpoint, self.cutoff)
        while oldest is not None:
            start = _midnight(oldest)
            end = min(start + _DAY, self.cutoff)
            query = select(func.count()).where(
                _PREDICTIONS.c.endpoint == self.endpoint,
                _PREDICTIONS.c.at >= start,
                _PREDICTIONS.c.at < end,
            )
            with store.read() as session:
                rows = int(session.execute(query).scalar_one())
            yield start.date(), rows
            oldest = _oldest(store, self.endpoint, self.cutoff, since=start + _DAY)

    def next_batch(self) -> ArchiveBatch | None:
        """Move the oldest due rows (one day at most, ``batch_rows`` at most); None when none are due."""
        store = self.ctx.store
        oldest = _oldest(store, self.endpoint, self.cutoff)
        if oldest is None:
            return None
        start = _midnight(oldest)
        end = min(start + _DAY, self.cutoff)
        query = (
            select(_PREDICTIONS)
            .where(
                _PREDICTIONS.c.endpoint == self.endpoint,
                _PREDICTIONS.c.at >= start,
                _PREDICTIONS.c.at < end,
            )
            .order_by(_PREDICTIONS.c.at, _PREDICTIONS.c.id)
            .limit(self.batch_rows)
        )
        with store.read() as session:
            rows = list(session.execute(query).mappings())
            shadows: dict[str, list[dict[str, Any]]] = {}
            for chunk in _chunked([row["id"] for row in rows]):
                shadows.update(_shadows_of(session, list(chunk)))
        if not rows:
            return None
        return self._write(start.date(), rows, shadows)

    def _write(
        self, day: dt.date, rows: list[RowMapping], shadows: dict[str, list[dict[str, Any]]]
    ) -> ArchiveBatch:
        tier = self.tier
        ids = [str(row["id"]) for row in rows]
        data = _parquet_bytes(_batch_table(rows, shadows))
        sha256 = hashlib.sha256(data).hexdigest()
        name = f"part-{uuid.uuid4().hex}.parquet"
        part = f"{tier.partition_dir(self.endpoint, day)}/{name}"
        record = {
            "file": name,
            "endpoint": self.endpoint,
            "date": day.isoformat(),
            "rows": len(rows),
            "first_at": rows[0]["at"].astimezone(dt.UTC).isoformat(),
            "last_at": rows[-1]["at"].astimezone(dt.UTC).isoformat(),
            "sha256": sha256,
            "bytes": len(data),
            "archived_at": dt.datetime.now(dt.UTC).isoformat(),
            "archived_by": self.ctx.actor,
        }
        # The record goes first: whatever happens next, the next run knows this file may exist.
        tier.put(_record_path(part, pending=True), _encode_record(record))
        tier.put(part, data)
        failpoint("archive.file_written")
        try:
            _verify(tier, part, sha256, ids)
        except IntegrityError:
            tier.remove(part)
            tier.remove(_record_path(part, pending=True))
            raise
        failpoint("archive.before_delete")
        with self.ctx.store.write() as session:
            deleted = _delete_rows(session, ids)
            audit.record(
                session,
                actor=self.ctx.actor,
                action=ARCHIVE_ACTION,
                target=self.endpoint,
                before={
                    "rows": deleted,
                    "date": day.isoformat(),
                    "first_at": record["first_at"],
                    "last_at": record["last_at"],
                    "where": "database",
                },
                after={"file": tier.url(part), "rows": len(rows), "sha256": sha256},
                reason=self.reason,
            )
        failpoint("archive.deleted")
        _commit(self.tier, part, record)
        return ArchiveBatch(self.endpoint, day, len(rows), tier.url(part), len(data))

    def renew(self) -> bool:
        return leases.acquire(self.ctx.store, _lease_name(self.endpoint), self.holder, _LEASE_TTL_S)


def archive(
    ctx: Context,
    endpoint: str | None = None,
    *,
    older_than: dt.timedelta,
    root: str | None = None,
    batch_rows: int = 100_000,
    dry_run: bool = False,
    max_batches: int | None = None,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> ArchiveReport:
    """Move the predictions of ``endpoint`` (every endpoint when None) older than ``older_than``
    from the database to Parquet files under ``root`` (default: the ``archive_uri`` setting).

    The cut-off is rounded down to midnight UTC, so that each day is archived whole. Each batch
    (one day of one endpoint, ``batch_rows`` at most) is written, read back and checked before
    its rows and their shadow answers leave the database, in one transaction with its audit
    record. Labels stay in the database. ``dry_run`` counts the rows per day and changes nothing.
    ``max_batches`` bounds the work of one call; the report's ``more`` says when rows are left.
    """
    if older_than <= dt.timedelta(0):
        raise InvalidInputError(f"older_than must be a positive duration, got {older_than}")
    if batch_rows < 1:
        raise InvalidInputError(f"batch_rows must be at least 1, got {batch_rows}")
    if max_batches is not None and max_batches < 1:
        raise InvalidInputError(f"max_batches must be at least 1, got {max_batches}")
    now = _utc(now) or dt.datetime.now(dt.UTC)
    cutoff = _midnight(now - older_than)
    location = ArchiveLocation.from_settings(ctx.settings, root)
    tier = _Tier(location)
    store = ctx.store
    if endpoint is not None:
        check_name(endpoint, "endpoint")
        if not _known(store, endpoint):
            raise NotFoundError(f"endpoint {endpoint!r} does not exist and has no logged predictions")
        names = [endpoint]
    else:
        names = _endpoints(store)
    why = reason or f"predictions from before {cutoff:%Y-%m-%d} (UTC) moved to the archive"
    holder = _holder()
    batches: list[ArchiveBatch] = []
    busy: list[str] = []
    failed: dict[str, str] = {}
    recovered = 0
    more = False
    for name in names:
        if more:
            break
        run = _Run(ctx, tier, name, cutoff=cutoff, batch_rows=batch_rows, reason=why, holder=holder)
        if dry_run:
            batches += [ArchiveBatch(name, day, rows) for day, rows in run.days()]
            continue
        if _oldest(store, name, cutoff) is None:
            continue  # the common case on a scheduler's tick: nothing due, no lease taken
        if not run.renew():
            if endpoint is not None:
                raise ConflictError(f"another process is archiving {name!r}; try again when it is done")
            busy.append(name)
            continue
        try:
            recovered += _recover(ctx, tier, name, why)
            while True:
                if max_batches is not None and len(batches) >= max_batches:
                    more = _oldest(store, name, cutoff) is not None
                    break
                batch = run.next_batch()
                if batch is None:
                    break
                batches.append(batch)
                if not run.renew():
                    busy.append(name)
                    break
        except PasserelleError as exc:
            if endpoint is not None:
                raise
            logger.warning("archiving the predictions of %s failed: %s", name, exc)
            failed[name] = str(exc)
        finally:
            leases.release(store, _lease_name(name), holder)
    return ArchiveReport(
        root=location.uri,
        cutoff=cutoff,
        dry_run=dry_run,
        batches=batches,
        recovered=recovered,
        busy=busy,
        failed=failed,
        more=more,
    )


def archive_tick(
    ctx: Context, *, max_batches: int = 20, now: dt.datetime | None = None
) -> ArchiveReport | None:
    """One round for a periodic scheduler: archive what ``archive_after_days`` makes due.

    Returns None when the setting is unset. Cheap when nothing is due (one indexed query per
    endpoint, no lease taken), so it can run on every tick; ``max_batches`` bounds one round so
    that a first run over a long history does not hold the scheduler for long.
    """
    days = ctx.settings.archive_after_days
    if days is None:
        return None
    return archive(ctx, older_than=dt.timedelta(days=days), max_batches=max_batches, now=now)


# ------------------------------------------------------------------------------------------ erasure


class _KeyMatch:
    """Which stored keys stand for the key being erased.

    An endpoint that redacts its key column logs keys as their keyed hash
    (:func:`passerelle.predictionlog.hash_key`), others log them in clear, and a policy may have
    changed in between: a key given in clear matches itself and its hash; a hash matches itself
    and every key in clear that hashes to it.
    """

    def __init__(self, value: str, secret: Callable[[], bytes]) -> None:
        self.value = value
        self.by_hash = value.startswith(HASHED_KEY_PREFIX)
        self.exact = [value] if self.by_hash else sorted({value, hash_key(secret(), value)})
        self._secret = secret

    def of(self, keys: Iterable[str | None]) -> set[str]:
        """Those of ``keys`` (stored keys) that stand for this key."""
        found = {k for k in keys if k is not None and k in self.exact}
        if self.by_hash:
            secret = self._secret()
            found |= {
                k
                for k in keys
                if k is not None and not k.startswith(HASHED_KEY_PREFIX) and hash_key(secret, k) == self.value
            }
        return found


def erase_key(
    ctx: Context,
    endpoint: str,
    key_hash_or_key: str,
    *,
    root: str | None = None,
    reason: str | None = None,
    wait_s: float = 120.0,
) -> int:
    """Remove from the archive every prediction of ``endpoint`` under a business key; return how
    many rows were removed.

    ``key_hash_or_key`` is the key's value in clear, or its keyed hash as the erasure's audit
    record names it (``hmac-sha256:…``, see :func:`passerelle.predictionlog.hash_key`); rows
    logged with the key in clear or hashed are both found. Only the files holding such a row are
    rewritten (read, filter, write a new file, delete the old one); the others are not touched.
    Waits up to ``wait_s`` for an archiving run of the endpoint to end. Each rewritten file gets
    an audit record with counts only: the key never reaches the audit log.
    """
    check_name(endpoint, "endpoint")
    if not isinstance(key_hash_or_key, str) or not key_hash_or_key:
        raise InvalidInputError("key: give the business key, or its keyed hash (hmac-sha256:…)")
    if reason and key_hash_or_key in reason:
        raise InvalidInputError("reason: it contains the key itself, which the audit log must never hold")
    match = _KeyMatch(key_hash_or_key, lambda: redaction_secret(ctx.settings))
    tier = _Tier(ArchiveLocation.from_settings(ctx.settings, root))
    store = ctx.store
    holder = _holder()
    lease = _lease_name(endpoint)
    deadline = time.monotonic() + wait_s
    while not leases.acquire(store, lease, holder, _LEASE_TTL_S):
        if time.monotonic() >= deadline:
            raise ConflictError(f"another process is archiving {endpoint!r}; erase again when it is done")
        time.sleep(0.5)
    try:
        # A batch left half-done would otherwise keep its rows in the database after this erasure.
        _recover(ctx, tier, endpoint, reason or "")
        removed = 0
        for part in _files_with_key(tier, endpoint, match):
            removed += _rewrite_without(ctx, tier, endpoint, part, match, reason)
            leases.acquire(store, lease, holder, _LEASE_TTL_S)
        return removed
    finally:
        leases.release(store, lease, holder)


def _files_with_key(tier: _Tier, endpoint: str, match: _KeyMatch) -> list[str]:
    files = [path for paths in _live_parts(tier, tier.scan(endpoint)).values() for path in paths]
    if not files:
        return []
    by_url = {tier.url(path): path for path in files}
    source = "read_parquet($files, filename = true, union_by_name = true, hive_partitioning = false)"
    con = _duckdb(tier)
    try:
        if match.by_hash:
            # Keys in clear must be hashed to be compared: each distinct one once.
            pairs = con.sql(
                f"SELECT DISTINCT filename, key FROM {source} WHERE key IS NOT NULL",
                params={"files": list(by_url)},
            ).fetchall()
            wanted = match.of({str(key) for _, key in pairs})
            found = {str(name) for name, key in pairs if key in wanted}
        else:
            rows = con.sql(
                f"SELECT DISTINCT filename FROM {source} WHERE list_contains($keys, key)",
                params={"files": list(by_url), "keys": match.exact},
            ).fetchall()
            found = {str(row[0]) for row in rows}
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the prediction archive at {tier.uri}: {exc}") from exc
    finally:
        con.close()
    return sorted(by_url[name] for name in found if name in by_url)


def _rewrite_without(
    ctx: Context, tier: _Tier, endpoint: str, part: str, match: _KeyMatch, reason: str | None
) -> int:
    data = tier.get(part)
    table = pq.read_table(pa.BufferReader(data))
    keys = table.column("key")
    doomed = match.of(pc.unique(keys).to_pylist())
    kept = table.filter(pc.invert(pc.is_in(keys, value_set=pa.array(sorted(doomed), pa.string()))))
    removed = int(table.num_rows - kept.num_rows)
    if not removed:
        return 0
    folder, _, old_name = part.rpartition("/")
    old_record = _read_record(tier, _record_path(part, pending=False)) or {"file": old_name}
    new_url: str | None = None
    if kept.num_rows:
        new_data = _parquet_bytes(kept)
        sha256 = hashlib.sha256(new_data).hexdigest()
        name = f"part-{uuid.uuid4().hex}.parquet"
        new = f"{folder}/{name}"
        at = kept.column("at")
        record = {
            **{k: v for k, v in old_record.items() if k not in {"replaced", "replaces"}},
            "file": name,
            "rows": kept.num_rows,
            "first_at": pc.min(at).as_py().astimezone(dt.UTC).isoformat(),
            "last_at": pc.max(at).as_py().astimezone(dt.UTC).isoformat(),
            "sha256": sha256,
            "bytes": len(new_data),
            "rewritten_at": dt.datetime.now(dt.UTC).isoformat(),
            "rewritten_by": ctx.actor,
            "replaces": [old_name],
        }
        # Until the old file is gone, this pending record tells readers to skip it.
        tier.put(_record_path(new, pending=True), _encode_record(record))
        tier.put(new, new_data)
        _verify(tier, new, sha256, [str(v) for v in kept.column("id").to_pylist()])
        failpoint("archive.erase_written")
        tier.remove(part)
        tier.remove(_record_path(part, pending=False))
        _commit(tier, new, record)
        new_url = tier.url(new)
    else:
        # Nothing left: deleting the one object is the whole change.
        tier.remove(part)
        tier.remove(_record_path(part, pending=False))
    with ctx.store.write() as session:
        audit.record(
            session,
            actor=ctx.actor,
            action=ERASE_ARCHIVED_ACTION,
            target=endpoint,
            before={"file": tier.url(part), "rows": table.num_rows},
            after={"file": new_url, "rows": kept.num_rows, "removed": removed},
            reason=reason,
        )
    return removed
