"""The durable prediction log: every answered row, on local disk before the answer leaves.

Three parts (see ``docs/predictions.md`` and ADR 5):

- :class:`PredictionLog` appends records to local segment files with group commit: one writer
  thread per process drains whatever is queued, writes it with one ``write`` and one ``fdatasync``,
  then wakes every caller of that group. The serving layer answers a request only after
  :meth:`PredictionLog.append` returns.
- :class:`LogShipper` moves the records from the segments into the ``predictions`` and
  ``shadow_predictions`` tables in large idempotent batches. While the database is unreachable
  the segments simply stay on disk: they are the spool.
- :func:`tail`, :func:`count` and :func:`export` read what has been shipped.

Data protection (``docs/predictions.md``, "Data protection"): a :class:`Redaction` keeps an
endpoint's redacted columns out of the records and hashes a redacted key with
:func:`hash_key`; :func:`erase_predictions` deletes what is stored under a business key and
leaves a tombstone the shipper honours for records still in the segments; :func:`apply_retention`
deletes what is older or beyond the limits of each endpoint.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson
from filelock import FileLock, Timeout
from pydantic import BaseModel
from sqlalchemy import Table, and_, delete, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, RowMapping
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Delete, Insert
from sqlalchemy.sql.elements import ColumnElement

from passerelle import audit
from passerelle._failpoints import failpoint
from passerelle.entropy import random_bytes
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError, StoreError
from passerelle.policy import Policy
from passerelle.settings import Settings, load_settings
from passerelle.store import Store
from passerelle.store.schema import (
    AuditRecord,
    Endpoint,
    EndpointRevision,
    Feedback,
    FeedbackUnmatched,
    Prediction,
    ShadowPrediction,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from passerelle.archive import ArchiveLocation
    from passerelle.context import Context

__all__ = [
    "ERASE_ACTION",
    "HASHED_KEY_PREFIX",
    "RETENTION_ACTION",
    "Erasure",
    "LogFigures",
    "LogShipper",
    "PredictionLog",
    "PredictionLogError",
    "PredictionRecord",
    "Redaction",
    "ShadowRecord",
    "ShipperFigures",
    "apply_retention",
    "count",
    "endpoint_policy",
    "endpoint_redaction",
    "erase_predictions",
    "export",
    "hash_key",
    "new_prediction_id",
    "read_log",
    "redaction",
    "redaction_secret",
    "retention_limits",
    "retention_tick",
    "tail",
    "without_erased",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
_PREDICTIONS = cast(Table, Prediction.__table__)
_SHADOWS = cast(Table, ShadowPrediction.__table__)
_FEEDBACK = cast(Table, Feedback.__table__)
_UNMATCHED = cast(Table, FeedbackUnmatched.__table__)
_WORKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Greedy on the worker part so that a worker name may itself contain "-<digits>".
_FILE_RE = re.compile(r"(?P<worker>[A-Za-z0-9][A-Za-z0-9_.-]*)-(?P<seq>\d{8,})\.(?P<state>seg|done|pos)")
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
# Column widths of the tables: a record that does not fit would be refused by PostgreSQL at
# shipping time, long after its request was answered, so it is refused before it is answered.
_LIMITS = {"id": 40, "endpoint": 200, "model": 200, "key": 500, "request_id": 40, "source": 20}
_sync_file: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class PredictionLogError(PasserelleError):
    """The prediction log cannot take or write records (closed, worker name in use, disk error)."""


# --------------------------------------------------------------------------------------------- records


@dataclass(slots=True)
class PredictionRecord:
    """One answered row, as logged."""

    id: str
    endpoint: str
    revision: int
    model: str
    version: int
    at: dt.datetime
    latency_ms: float
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    key: str | None = None
    request_id: str = ""
    source: str = "online"


@dataclass(slots=True)
class ShadowRecord:
    """A shadow version's answer (or failure) for a served prediction, under the same id."""

    prediction_id: str
    endpoint: str
    model: str
    version: int
    at: dt.datetime
    latency_ms: float
    outputs: dict[str, Any] | None = None
    error: str | None = None


def new_prediction_id() -> str:
    """A UUIDv7 in canonical form: sortable by time, unique across processes, no lock taken.

    48 bits of Unix milliseconds, then 12 bits of sub-millisecond time (RFC 9562, method 3) so
    that ids from one process also sort within a millisecond, then 62 random bits from the
    kernel (:mod:`passerelle.entropy`, which never hands the same bytes to a forked child).
    """
    ns = time.time_ns()
    ms, sub = divmod(ns, 1_000_000)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (sub * 4096 // 1_000_000) << 64
        | 0b10 << 62
        | int.from_bytes(random_bytes(8)) & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _default(value: Any) -> Any:
    # Logging must not fail a request that the model answered: odd values degrade to text.
    if type(value).__name__ in ("NaTType", "NAType"):  # pandas' missing values, without importing pandas
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "backslashreplace")
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _check(record: PredictionRecord | ShadowRecord) -> None:
    if record.at.tzinfo is None:
        raise ValueError("PredictionLog records need an aware UTC datetime in `at`")
    for name, limit in _LIMITS.items():
        value = getattr(record, name, None)
        if value is not None and len(value) > limit:
            raise ValueError(f"{name} is longer than {limit} characters: {value[:60]!r}…")


def _encode(kind: bytes, records: Iterable[PredictionRecord | ShadowRecord]) -> bytes:
    parts = []
    for record in records:
        _check(record)
        # A dataclass serialises as '{"id":…}'; splicing the type tag in front avoids
        # building an intermediate dict for every record.
        parts.append(kind + orjson.dumps(record, default=_default, option=_DUMP_OPTIONS)[1:])
    return b"".join(parts)


# ------------------------------------------------------------------------------------------ the writer


@dataclass(frozen=True, slots=True)
class LogFigures:
    """What /metrics shows about one process's log."""

    queue_depth: int
    records_written: int
    groups_written: int
    records_per_group: float
    bytes_written: int
    last_fsync_ms: float
    write_errors: int
    #: age of the oldest record not yet in the database; None without a shipper attached
    lag_seconds: float | None


class _Group:
    """Records waiting for the same write and the same fsync."""

    __slots__ = ("chunks", "error", "event", "futures", "records")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.records = 0
        self.futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        self.event: threading.Event | None = None
        self.error: BaseException | None = None


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the caller was cancelled; the record is written all the same
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(PredictionLogError(f"the prediction log could not write: {error}"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seg_name(worker: str, seq: int, state: str) -> str:
    return f"{worker}-{seq:08d}.{state}"


def _scan(directory: Path) -> dict[str, dict[int, set[str]]]:
    """worker -> seq -> states present among seg, done and pos."""
    found: dict[str, dict[int, set[str]]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        match = _FILE_RE.fullmatch(name)
        if match:
            seqs = found.setdefault(match["worker"], {})
            seqs.setdefault(int(match["seq"]), set()).add(match["state"])
    return found


def _writer_lock(directory: Path, worker: str) -> FileLock:
    # Held by the live writer of a worker for its whole life. The kernel drops it when the process
    # dies, even by kill -9, which is how a shipper tells a crashed worker from a running one.
    return FileLock(directory / "locks" / f"{worker}.writer.lock", thread_local=False)


def _shipper_lock(directory: Path, worker: str) -> FileLock:
    return FileLock(directory / "locks" / f"{worker}.shipper.lock", thread_local=False)


class PredictionLog:
    """A local append-only log with group commit; one instance (and one writer thread) per process.

    Files are ``<directory>/<worker>-<seq>.seg`` while written and ``.done`` once closed; each line
    is one JSON record ``{"t": "p"|"s", ...}``. ``worker`` names this process's segments and must
    be unique among the processes alive on the directory; stable names (``w0``, ``w1``…) keep the
    ``locks/`` folder small. Create the log after forking, never before.
    """

    def __init__(
        self,
        directory: Path,
        *,
        worker: str,
        fsync: bool = True,
        segment_bytes: int = 64 * MiB,
        lock_timeout: float = 10.0,
    ) -> None:
        if not _WORKER_RE.fullmatch(worker):
            raise ValueError(f"invalid worker name {worker!r}: letters, digits, '_', '.', '-' (≤ 100)")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.directory = Path(directory)
        self.worker = worker
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        created = not self.directory.exists()
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        if created and fsync:
            # Without this, a power loss could take the whole folder, acknowledged records included.
            _fsync_dir(self.directory.parent)
        self._lock_file = _writer_lock(self.directory, worker)
        try:
            self._lock_file.acquire(timeout=lock_timeout)
        except Timeout:
            raise PredictionLogError(
                f"the worker name {worker!r} is in use by another process on {self.directory}"
            ) from None
        try:
            self._seq = self._recover()
        except BaseException:
            self._lock_file.release()
            raise
        self._fd = -1
        self._size = 0
        #: (seq, offset) of the live segment up to which everything is written and synced
        self._live: tuple[int, int] | None = None
        self._cond = threading.Condition(threading.Lock())
        self._group = _Group()
        self._queued = 0
        self._closed = False
        self._records_written = 0
        self._groups_written = 0
        self._bytes_written = 0
        self._last_fsync_s = 0.0
        self._write_errors = 0
        self._lag_known = False
        self._oldest_unshipped: dt.datetime | None = None
        self._thread = threading.Thread(target=self._run, name=f"predictionlog-{worker}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _recover(self) -> int:
        """Seal what a previous process of the same name left open; return the next sequence number."""
        seqs = _scan(self.directory).get(self.worker, {})
        for seq, states in seqs.items():
            if "seg" in states:
                os.replace(
                    self.directory / _seg_name(self.worker, seq, "seg"),
                    self.directory / _seg_name(self.worker, seq, "done"),
                )
        # Sidecars count too: a fresh segment must never inherit a stale shipping position.
        return max(seqs, default=0) + 1

    # ------------------------------------------------------------------ appending (the hot path)

    async def append(self, records: Sequence[PredictionRecord]) -> None:
        """Return once the records are written (and on disk, with fsync): only then may the answer go."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        data = _encode(b'{"t":"p",', records)
        with self._cond:
            group = self._enqueue(data, len(records))
            group.futures.setdefault(loop, []).append(future)
        await future

    def append_sync(self, records: Sequence[PredictionRecord]) -> None:
        """:meth:`append` for threads outside an event loop."""
        if records:
            self._wait(_encode(b'{"t":"p",', records), len(records))

    def append_shadow(self, records: Sequence[ShadowRecord]) -> None:
        """Queue shadow answers for the next group commit; never waits (they are off the response path)."""
        if records:
            data = _encode(b'{"t":"s",', records)
            with self._cond:
                self._enqueue(data, len(records))

    def flush(self) -> None:
        """Wait until everything queued so far, shadow records included, is durable."""
        self._wait(b"", 0)

    def _wait(self, data: bytes, records: int) -> None:
        with self._cond:
            group = self._enqueue(data, records)
            if group.event is None:
                group.event = threading.Event()
            event = group.event
        event.wait()
        if group.error is not None:
            raise PredictionLogError(f"the prediction log could not write: {group.error}")

    def _enqueue(self, data: bytes, records: int) -> _Group:
        # Called with self._cond held.
        if self._closed:
            raise PredictionLogError("the prediction log is closed")
        group = self._group
        if not group.chunks:
            # Only the first record of a group can find the writer asleep.
            self._cond.notify()
        group.chunks.append(data)
        group.records += records
        self._queued += records
        return group

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._group.chunks:
                    if self._closed:
                        return
                    self._cond.wait()
                group, self._group = self._group, _Group()
                self._queued -= group.records
            error: BaseException | None = None
            try:
                data = b"".join(group.chunks)
                if data:
                    self._write(data)
                    self._records_written += group.records
                    self._groups_written += 1
                    self._bytes_written += len(data)
            except BaseException as exc:  # waiters must hear of any failure, or they hang
                error = exc
                self._write_errors += 1
                logger.error("prediction log %s: write failed: %s", self.worker, exc)
            self._resolve(group, error)

    def _write(self, data: bytes) -> None:
        if self._fd >= 0 and self._size > 0 and self._size + len(data) > self.segment_bytes:
            self._seal()
        if self._fd < 0:
            self._open_segment()
        start = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync:
                began = time.perf_counter()
                _sync_file(self._fd)
                self._last_fsync_s = time.perf_counter() - began
        except OSError:
            self._abandon_segment(start)
            raise
        self._size = start + len(data)
        self._live = (self._seq, self._size)

    def _open_segment(self) -> None:
        while True:
            path = self.directory / _seg_name(self.worker, self._seq, "seg")
            try:
                self._fd = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
                )
                break
            except FileExistsError:
                self._seq += 1
        if self.fsync:
            # fdatasync persists the file's data, not its name in the folder.
            try:
                _fsync_dir(self.directory)
            except OSError:
                os.close(self._fd)
                self._fd = -1
                path.unlink(missing_ok=True)
                raise
        self._size = 0
        self._live = (self._seq, 0)

    def _seal(self) -> None:
        fd, self._fd = self._fd, -1
        seq = self._seq
        self._seq += 1
        self._live = None
        os.close(fd)
        # No fsync of the folder: if a power loss undoes the rename, the next start seals it again.
        os.replace(
            self.directory / _seg_name(self.worker, seq, "seg"),
            self.directory / _seg_name(self.worker, seq, "done"),
        )

    def _abandon_segment(self, start: int) -> None:
        # After a failed write or fsync the file's tail is unknown (a failed fsync may even have
        # dropped dirty pages); later groups go to a fresh segment, and the unacknowledged tail is
        # cut off when possible.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, start)
        try:
            self._seal()
        except OSError as exc:
            logger.error("prediction log %s: cannot seal a failed segment: %s", self.worker, exc)

    def _resolve(self, group: _Group, error: BaseException | None) -> None:
        for loop, futures in group.futures.items():
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, futures, error)
        if group.event is not None:
            group.error = error
            group.event.set()

    # ------------------------------------------------------------------ lifecycle and figures

    def close(self) -> None:
        """Write what is queued, seal the live segment and free the worker name."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        try:
            if self._fd >= 0:
                self._seal()
        finally:
            self._lock_file.release()
            atexit.unregister(self.close)

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def figures(self) -> LogFigures:
        groups = self._groups_written
        lag: float | None = None
        if self._lag_known:
            oldest = self._oldest_unshipped
            lag = 0.0 if oldest is None else max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
        return LogFigures(
            queue_depth=self._queued,
            records_written=self._records_written,
            groups_written=groups,
            records_per_group=self._records_written / groups if groups else 0.0,
            bytes_written=self._bytes_written,
            last_fsync_ms=self._last_fsync_s * 1000,
            write_errors=self._write_errors,
            lag_seconds=lag,
        )

    def _shippable_end(self, seq: int) -> int | None:
        """How far segment ``seq`` may be shipped while it is live; None when it is not the live one."""
        live = self._live
        if live is None or live[0] != seq:
            return None
        return live[1]

    def _note_unshipped(self, oldest: dt.datetime | None) -> None:
        self._oldest_unshipped = oldest
        self._lag_known = True


# ------------------------------------------------------------------------------------------ reading


def _decode(line: bytes) -> tuple[str, dict[str, Any]]:
    """One log line as a row of its table; raises ValueError, KeyError or TypeError when it is not one."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise TypeError("a log line holds a JSON object")
    at = dt.datetime.fromisoformat(obj["at"])
    if at.tzinfo is None:
        raise ValueError("naive timestamp")
    kind = obj["t"]
    if kind == "p":
        return kind, {
            "id": obj["id"],
            "endpoint": obj["endpoint"],
            "revision": obj["revision"],
            "model": obj["model"],
            "version": obj["version"],
            "at": at,
            "latency_ms": obj["latency_ms"],
            "inputs": obj["inputs"],
            "outputs": obj["outputs"],
            "key": obj.get("key"),
            "request_id": obj.get("request_id") or "",
            "source": obj.get("source") or "online",
        }
    if kind == "s":
        return kind, {
            "prediction_id": obj["prediction_id"],
            "endpoint": obj["endpoint"],
            "model": obj["model"],
            "version": obj["version"],
            "at": at,
            "latency_ms": obj["latency_ms"],
            "outputs": obj.get("outputs"),
            "error": obj.get("error"),
        }
    raise ValueError(f"unknown record type {kind!r}")


_BAD_LINE = (ValueError, KeyError, TypeError)


def read_log(directory: Path, *, worker: str | None = None) -> Iterator[dict[str, Any]]:
    """Every readable record still in the segments (shipped or not), oldest segment first.

    Each record is a dict with ``"t"`` (``"p"`` or ``"s"``) and the fields of its table. A line
    that cannot be read, such as the torn tail of a group that was never acknowledged, is skipped.
    """
    directory = Path(directory)
    for name, seqs in sorted(_scan(directory).items()):
        if worker is not None and name != worker:
            continue
        for seq in sorted(seqs):
            for state in ("done", "seg"):
                if state not in seqs[seq]:
                    continue
                try:
                    content = (directory / _seg_name(name, seq, state)).read_bytes()
                except FileNotFoundError:  # sealed or shipped meanwhile
                    continue
                for line in content.split(b"\n"):
                    if not line:
                        continue
                    try:
                        kind, row = _decode(line)
                    except _BAD_LINE:
                        continue
                    yield {"t": kind, **row}


# ------------------------------------------------------------------------------------------ shipping

_TRANSIENT = (
    StoreError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)


def _is_row_error(exc: BaseException) -> bool:
    """True when the data, not the database, is at fault: retrying it would fail forever."""
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    # Raised while binding parameters, before the database saw anything.
    return isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)


@dataclass(frozen=True, slots=True)
class ShipperFigures:
    shipped: int
    batches: int
    rejected: int
    passes: int
    failed_passes: int
    last_error: str | None
    last_success: dt.datetime | None


@dataclass
class _Batch:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    shadows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)
    rejected: list[tuple[bytes, str]] = field(default_factory=list)

    def add(self, line: bytes) -> None:
        try:
            kind, row = _decode(line)
        except _BAD_LINE as exc:
            self.rejected.append((line, f"unreadable line: {exc!r}"))
            return
        (self.predictions if kind == "p" else self.shadows).append(row)
        self.lines.append((kind, row, line))

    def __len__(self) -> int:
        return len(self.lines)


class LogShipper:
    """Moves records from the segments into the database, in batches, idempotently.

    With ``log`` (the serving process's own log), the shipper ships that worker's segments, the
    live one included up to what is already durable. With or without it, it also takes over the
    segments of workers whose process no longer exists (their writer lock is free), so that the
    leftovers of a crashed process are shipped by whoever is still running.
    """

    def __init__(
        self,
        directory: Path,
        store: Store,
        *,
        log: PredictionLog | None = None,
        batch_size: int = 5000,
        read_bytes: int = 4 * MiB,
        secret: Callable[[], bytes] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.store = store
        self.log = log
        self.batch_size = batch_size
        self.read_bytes = read_bytes
        #: the redaction secret, asked for only when an erasure concerns a batch; by default the
        #: one of the settings whose home holds ``directory``
        self.secret = secret or (lambda: redaction_secret(load_settings(home=self.directory.parent)))
        self._erased = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pass_lock = threading.Lock()
        self._shipped = 0
        self._batches = 0
        self._rejected = 0
        self._passes = 0
        self._failed_passes = 0
        self.last_error: str | None = None
        self._last_success: dt.datetime | None = None

    # ------------------------------------------------------------------ one pass

    def ship_once(self) -> int:
        """Ship what can be shipped now; return the number of records inserted or already present.

        An unreachable database is not an error here: the pass stops, the segments stay, and the
        next pass resumes from the last recorded position.
        """
        with self._pass_lock:
            before = self._shipped
            self._passes += 1
            try:
                own = self.log.worker if self.log is not None else None
                for worker in sorted(_scan(self.directory)):
                    if worker == own:
                        self._ship_worker(worker, own=True)
                    else:
                        self._take_over(worker)
            except _TRANSIENT as exc:
                self._failed_passes += 1
                if self.last_error is None:
                    logger.warning("prediction log: database unreachable, records stay on disk: %s", exc)
                self.last_error = str(exc)
            else:
                if self.last_error is not None:
                    logger.info("prediction log: database reachable again, shipping resumed")
                self.last_error = None
                self._last_success = dt.datetime.now(dt.UTC)
            finally:
                self._note_lag()
            return self._shipped - before

    def _take_over(self, worker: str) -> None:
        lock = _writer_lock(self.directory, worker)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return  # alive: its own shipper ships it
        try:
            # Holding its writer lock, nothing else can write these: seal them for good.
            for seq, states in _scan(self.directory).get(worker, {}).items():
                if "seg" in states:
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(
                            self.directory / _seg_name(worker, seq, "seg"),
                            self.directory / _seg_name(worker, seq, "done"),
                        )
        finally:
            lock.release()
        self._ship_worker(worker, own=False)

    def _ship_worker(self, worker: str, *, own: bool) -> None:
        lock = _shipper_lock(self.directory, worker)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return  # another shipper is on it; try again next pass
        try:
            for seq, states in sorted(_scan(self.directory).get(worker, {}).items()):
                stem = f"{worker}-{seq:08d}"
                if "done" in states:
                    self._ship_segment(stem, self.directory / f"{stem}.done", end=None, sealed=True)
                elif "seg" in states:
                    bound = self.log._shippable_end(seq) if own and self.log is not None else None
                    if bound is not None:
                        self._ship_segment(stem, self.directory / f"{stem}.seg", end=bound, sealed=False)
                    # else: being sealed right now, or owned by a writer we cannot see; next pass
                else:
                    # A position whose segment was deleted after shipping, before its sidecar.
                    with contextlib.suppress(FileNotFoundError):
                        (self.directory / f"{stem}.pos").unlink()
        finally:
            lock.release()

    def _ship_segment(self, stem: str, path: Path, *, end: int | None, sealed: bool) -> None:
        pos_path = self.directory / f"{stem}.pos"
        pos = _read_position(pos_path)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            limit = size if end is None else min(end, size)
            pos = min(pos, limit)
            handle.seek(pos)
            offset = pos  # file offset of carry[0]
            carry = b""
            batch = _Batch()
            remaining = limit - pos
            while remaining > 0:
                chunk = handle.read(min(self.read_bytes, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                buf = carry + chunk if carry else chunk
                start = 0
                while (newline := buf.find(b"\n", start)) >= 0:
                    line = buf[start:newline]
                    start = newline + 1
                    if line:
                        batch.add(line)
                    if len(batch) >= self.batch_size:
                        self._commit(stem, batch, pos_path, offset + start)
                        batch = _Batch()
                offset += start
                carry = buf[start:]
            if carry and sealed:
                # The last line of a closed segment without its newline: either whole (written,
                # never acknowledged) or torn by a crash; only a whole one is kept.
                try:
                    _decode(carry)
                    batch.add(carry)
                except _BAD_LINE:
                    logger.info("prediction log %s: skipped a torn last line (%d bytes)", stem, len(carry))
                offset += len(carry)
            if len(batch) or batch.rejected or offset > pos:
                self._commit(stem, batch, pos_path, offset)
        if sealed and offset >= size:
            path.unlink(missing_ok=True)
            pos_path.unlink(missing_ok=True)
            pos_path.with_name(pos_path.name + ".tmp").unlink(missing_ok=True)

    def _commit(self, stem: str, batch: _Batch, pos_path: Path, position: int) -> None:
        if len(batch):
            refused = self._insert(batch)
            self._batches += 1
            self._shipped += len(batch) - refused
            # A crash from here until the position is saved re-ships the batch: harmless, every
            # insert skips rows already present.
            failpoint("predictionlog.shipped_batch")
        if batch.rejected:
            self._reject(stem, batch.rejected)
        _write_position(pos_path, position)

    def _insert_stmt(self, table: Table) -> Insert:
        if self.store.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def _insert(self, batch: _Batch) -> int:
        """Insert the batch; return how many of its rows were not stored (refused, or erased)."""
        try:
            with self.store.write() as session:
                predictions, shadows = self._unerased(session, batch.predictions, batch.shadows)
                if predictions:
                    session.execute(self._insert_stmt(_PREDICTIONS), predictions)
                if shadows:
                    session.execute(self._insert_stmt(_SHADOWS), shadows)
        except Exception as exc:
            if not _is_row_error(exc):
                raise
            return self._insert_one_by_one(batch)
        return len(batch.predictions) - len(predictions) + len(batch.shadows) - len(shadows)

    def _unerased(
        self, session: Session, predictions: list[dict[str, Any]], shadows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        kept_predictions, kept_shadows = without_erased(session, predictions, shadows, self.secret)
        dropped = len(predictions) - len(kept_predictions) + len(shadows) - len(kept_shadows)
        if dropped:
            self._erased += dropped
            logger.info("prediction log: %d record(s) erased before they were shipped, dropped", dropped)
        return kept_predictions, kept_shadows

    def _insert_one_by_one(self, batch: _Batch) -> int:
        # Rare path: find the rows the database refuses and set them aside, so that one bad row
        # cannot hold back every record behind it.
        refused = 0
        for kind, row, line in batch.lines:
            table = _PREDICTIONS if kind == "p" else _SHADOWS
            try:
                with self.store.write() as session:
                    predictions, shadows = self._unerased(
                        session, [row] if kind == "p" else [], [row] if kind == "s" else []
                    )
                    if not predictions and not shadows:
                        refused += 1  # erased: not stored, and nothing to set aside
                        continue
                    session.execute(self._insert_stmt(table), [row])
            except Exception as exc:
                if not _is_row_error(exc):
                    raise
                batch.rejected.append((line, f"refused by the database: {exc}"))
                refused += 1
        return refused

    def _reject(self, stem: str, rejected: list[tuple[bytes, str]]) -> None:
        folder = self.directory / "rejected"
        folder.mkdir(exist_ok=True)
        with (folder / f"{stem}.jsonl").open("ab") as out:
            for line, reason in rejected:
                out.write(
                    orjson.dumps(
                        {"error": reason, "line": line.decode("utf-8", "replace")},
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
        self._rejected += len(rejected)
        logger.warning("prediction log %s: %d record(s) set aside in %s", stem, len(rejected), folder)

    def _note_lag(self) -> None:
        log = self.log
        if log is None:
            return
        oldest: dt.datetime | None = None
        for seq, states in sorted(_scan(self.directory).get(log.worker, {}).items()):
            stem = f"{log.worker}-{seq:08d}"
            state = "done" if "done" in states else "seg" if "seg" in states else None
            if state is None:
                continue
            end = log._shippable_end(seq) if state == "seg" else None
            oldest = _first_record_time(
                self.directory / f"{stem}.{state}", self.directory / f"{stem}.pos", end
            )
            if oldest is not None:
                break
        log._note_unshipped(oldest)

    # ------------------------------------------------------------------ background

    def start(self, interval_s: float = 0.5) -> None:
        """Ship in a background thread every ``interval_s``, backing off while the database is away."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="predictionlog-shipper", daemon=True
        )
        self._thread.start()

    def stop(self, *, flush: bool = True, timeout: float = 30.0) -> None:
        """Stop the background thread; with ``flush``, make one last pass (after the log is closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Stuck on a database that does not answer: the records are safe on disk anyway.
                logger.warning("prediction log: the shipper did not stop within %.0f s", timeout)
                return
            self._thread = None
        if flush:
            try:
                self.ship_once()
            except Exception:
                logger.exception("prediction log: the last shipping pass failed")

    def _loop(self, interval_s: float) -> None:
        delay = interval_s
        while not self._stop.is_set():
            try:
                self.ship_once()
                failed = self.last_error is not None
            except Exception:  # never let a bad pass take the process down
                logger.exception("prediction log: shipping pass failed")
                failed = True
            delay = min(max(delay, interval_s) * 2, 30.0) if failed else interval_s
            self._stop.wait(delay)

    def figures(self) -> ShipperFigures:
        return ShipperFigures(
            shipped=self._shipped,
            batches=self._batches,
            rejected=self._rejected,
            passes=self._passes,
            failed_passes=self._failed_passes,
            last_error=self.last_error,
            last_success=self._last_success,
        )


def _read_position(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        # A position is only a shortcut; re-shipping from the start is always correct.
        return 0


def _write_position(path: Path, position: int) -> None:
    # Not fsynced: a lost update only makes the next pass re-ship rows that are already there.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(position))
    os.replace(tmp, path)


def _first_record_time(path: Path, pos_path: Path, end: int | None) -> dt.datetime | None:
    pos = _read_position(pos_path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            limit = size if end is None else min(end, size)
            if pos >= limit:
                return None
            handle.seek(pos)
            line = handle.read(min(limit - pos, 1 * MiB)).split(b"\n", 1)[0]
    except FileNotFoundError:
        return None
    try:
        return dt.datetime.fromisoformat(orjson.loads(line)["at"])
    except (*_BAD_LINE, orjson.JSONDecodeError):
        # Unreadable but unshipped: lag is still real, its age unknown; count it from now.
        return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------------ queries


def _prediction_filter(endpoint: str, since: dt.datetime | None, until: dt.datetime | None) -> Any:
    clauses = [_PREDICTIONS.c.endpoint == endpoint]
    if since is not None:
        clauses.append(_PREDICTIONS.c.at >= since)
    if until is not None:
        clauses.append(_PREDICTIONS.c.at < until)
    return and_(*clauses)


def count(store: Store, endpoint: str, since: dt.datetime | None = None) -> int:
    """Shipped predictions of ``endpoint`` (since ``since``, inclusive)."""
    query = select(func.count()).select_from(_PREDICTIONS).where(_prediction_filter(endpoint, since, None))
    with store.read() as session:
        return int(session.execute(query).scalar_one())


def _shadows_of(session: Any, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    attached: dict[str, list[dict[str, Any]]] = {}
    if not ids:
        return attached
    query = (
        select(_SHADOWS)
        .where(_SHADOWS.c.prediction_id.in_(ids))
        .order_by(_SHADOWS.c.model, _SHADOWS.c.version)
    )
    for row in session.execute(query).mappings():
        shadow = dict(row)
        attached.setdefault(shadow.pop("prediction_id"), []).append(shadow)
    return attached


def tail(
    store: Store, endpoint: str, *, limit: int = 20, since: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The newest shipped predictions of ``endpoint``, newest first, each with its ``shadows``."""
    query = (
        select(_PREDICTIONS)
        .where(_prediction_filter(endpoint, since, None))
        .order_by(_PREDICTIONS.c.at.desc(), _PREDICTIONS.c.id.desc())
        .limit(limit)
    )
    with store.read() as session:
        rows = [dict(row) for row in session.execute(query).mappings()]
        shadows = _shadows_of(session, [row["id"] for row in rows])
    for row in rows:
        row["shadows"] = shadows.get(row["id"], [])
    return rows


_BASE_COLUMNS = (
    "id",
    "at",
    "endpoint",
    "revision",
    "model",
    "version",
    "latency_ms",
    "key",
    "request_id",
    "source",
)


def _chunks(
    store: Store, endpoint: str, since: dt.datetime | None, until: dt.datetime | None, size: int
) -> Iterator[tuple[list[RowMapping], dict[str, list[dict[str, Any]]]]]:
    # Keyset pagination on (at, id): each chunk is one short read, and memory stays bounded.
    last: tuple[dt.datetime, str] | None = None
    while True:
        query = select(_PREDICTIONS).where(_prediction_filter(endpoint, since, until))
        if last is not None:
            query = query.where(
                or_(
                    _PREDICTIONS.c.at > last[0],
                    and_(_PREDICTIONS.c.at == last[0], _PREDICTIONS.c.id > last[1]),
                )
            )
        query = query.order_by(_PREDICTIONS.c.at, _PREDICTIONS.c.id).limit(size)
        with store.read() as session:
            rows = list(session.execute(query).mappings())
            if not rows:
                return
            shadows = _shadows_of(session, [row["id"] for row in rows])
        yield rows, shadows
        if len(rows) < size:
            return
        last = (rows[-1]["at"], rows[-1]["id"])


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return value


def _flatten_into(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for name, inner in value.items():
            _flatten_into(f"{prefix}_{name}", inner, into)
    else:
        into[prefix] = _cell(value)


def _flat_row(row: RowMapping, shadows: list[dict[str, Any]]) -> dict[str, Any]:
    flat = {name: row[name] for name in _BASE_COLUMNS}
    for name, value in (row["inputs"] or {}).items():
        flat[f"in_{name}"] = _cell(value)
    _flatten_into("out", row["outputs"] or {}, flat)
    for shadow in shadows:
        outputs = shadow["outputs"] or {}
        if "prediction" in outputs:
            flat[f"shadow_{shadow['model']}_{shadow['version']}_prediction"] = _cell(outputs["prediction"])
    return flat


def _export_schema(columns: dict[str, list[pa.DataType]]) -> pa.Schema:
    import pyarrow as pa

    base = {
        "id": pa.string(),
        "at": pa.timestamp("us", tz="UTC"),
        "endpoint": pa.string(),
        "revision": pa.int64(),
        "model": pa.string(),
        "version": pa.int64(),
        "latency_ms": pa.float64(),
        "key": pa.string(),
        "request_id": pa.string(),
        "source": pa.string(),
    }
    fields = [pa.field(name, kind) for name, kind in base.items()]
    for prefix in ("in_", "out_", "shadow_"):
        fields += [
            pa.field(name, _unify(types))
            for name, types in columns.items()
            if name.startswith(prefix) and name not in base
        ]
    return pa.schema(fields)


def _arrow_column(values: list[Any]) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # Mixed kinds in one column (a number here, a string there): text keeps them all.
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _arrow_table(flat: list[dict[str, Any]], names: list[str]) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [row.get(name) for row in flat]
        if name == "at":
            columns[name] = pa.array(values, type=pa.timestamp("us", tz="UTC"))
        else:
            columns[name] = _arrow_column(values)
    return pa.table(columns)


def _unify(types: list[pa.DataType]) -> pa.DataType:
    import pyarrow as pa

    kinds = {t for t in types if not pa.types.is_null(t)}
    if not kinds:
        return pa.string()
    if len(kinds) == 1:
        return kinds.pop()
    if all(pa.types.is_integer(t) for t in kinds):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
        return pa.float64()
    return pa.string()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    arrays = []
    for target in schema:
        if target.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, type=target.type))
            continue
        column = table.column(target.name)
        if column.type != target.type:
            try:
                column = column.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = pa.array(
                    [None if v is None else str(v) for v in column.to_pylist()], type=pa.string()
                )
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


ExportFormat = Literal["parquet", "csv", "jsonl"]


def export(
    store: Store,
    endpoint: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    output: Path,
    format: ExportFormat = "parquet",
    chunk_rows: int = 10_000,
    include_archive: bool = True,
    archive: ArchiveLocation | None = None,
) -> int:
    """Write the shipped predictions of ``endpoint`` in ``[since, until)`` to ``output``; return the rows.

    Columns are flat: the prediction's own fields, ``in_<column>`` per input, ``out_<name>`` per
    output (``out_proba_<class>`` for nested ones) and ``shadow_<model>_<version>_prediction``.
    Rows are read in chunks; since a column may first appear in a late chunk, chunks are staged
    on disk next to ``output`` and written out once the full set of columns is known. The file
    appears whole or not at all.

    With ``include_archive``, rows already moved to the Parquet archive (``archive``, by default
    the one of the settings; see :mod:`passerelle.archive`) come first, each row once.
    """
    import pyarrow as pa
    import pyarrow.ipc

    if format not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"unknown export format {format!r}: parquet, csv or jsonl")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.parent) as tmp:
        staging = Path(tmp)
        parts: list[Path] = []
        names: dict[str, list[pa.DataType]] = {name: [] for name in _BASE_COLUMNS}
        total = 0
        for rows, shadows in _chunks(store, endpoint, since, until, chunk_rows):
            flat = [_flat_row(row, shadows.get(row["id"], [])) for row in rows]
            for row in flat:
                for name in row:
                    if name not in names:
                        names[name] = []
            present = [name for name in names if any(name in row for row in flat)]
            table = _arrow_table(flat, present)
            for column in table.schema:
                names[column.name].append(column.type)
            part = staging / f"{len(parts):06d}.arrow"
            with pa.OSFile(str(part), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            parts.append(part)
            total += len(rows)
        if include_archive:
            # Read after the database: a row archived meanwhile is then in the archive, and a row
            # found in both is left out of the archive's side by export_tables.
            from passerelle.archive import export_tables

            archived: list[Path] = []
            for table in export_tables(
                endpoint, since, until, exported=parts, location=archive, chunk_rows=chunk_rows
            ):
                for column in table.schema:
                    names.setdefault(column.name, []).append(column.type)
                part = staging / f"archive-{len(archived):06d}.arrow"
                with pa.OSFile(str(part), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
                archived.append(part)
                total += table.num_rows
            parts = archived + parts
        schema = _export_schema(names)
        target = staging / "output"
        _write_export(parts, schema, target, format)
        os.replace(target, output)
    return total


def _write_export(parts: list[Path], schema: pa.Schema, target: Path, format: ExportFormat) -> None:
    import pyarrow as pa
    import pyarrow.ipc

    def tables() -> Iterator[pa.Table]:
        for part in parts:
            with pa.memory_map(str(part)) as source:
                yield _conform(pyarrow.ipc.open_file(source).read_all(), schema)

    if format == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(str(target), schema) as parquet:
            for table in tables():
                parquet.write_table(table)
            if not parts:
                parquet.write_table(schema.empty_table())
    elif format == "csv":
        import pyarrow.csv

        with pyarrow.csv.CSVWriter(str(target), schema) as csv:
            for table in tables():
                csv.write_table(table)
    else:
        with target.open("wb") as out:
            for table in tables():
                for row in table.to_pylist():
                    out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))


# ------------------------------------------------------------------------------------ data protection

#: what a redacted business key is logged as: this prefix, then the hex HMAC-SHA256 of the key
HASHED_KEY_PREFIX = "hmac-sha256:"
#: audit actions of an erasure (its record is also the tombstone the shipper honours) and of a sweep
ERASE_ACTION = "predictions.erase"
RETENTION_ACTION = "predictions.retention"
#: predictions deleted per transaction by a retention sweep
RETENTION_BATCH = 2000
_RETENTION_LEASE = "prediction-retention"
# Taken shared by every transaction that stores predictions and exclusively by an erasure, so
# that on PostgreSQL a batch is either stored before the erasure deletes (and is deleted) or
# checked after the erasure commits (and is dropped). SQLite serialises writers already.
_PG_ERASURE_LOCK = 0x7072_6976
_IN_CHUNK = 500
_COLUMN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\- ]{0,199}")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_secrets: dict[Path, bytes] = {}
_secrets_lock = threading.Lock()


def redaction_secret(settings: Settings) -> bytes:
    """The secret of the keyed hash: ``redaction_key`` from the settings, else ``<home>/redaction.key``.

    The file is created on first use with 32 random bytes (as hex), readable by its owner only.
    Processes sharing a home share it; replicas on separate disks must be given the same
    ``redaction_key``, or their hashes of one key differ.
    """
    configured = settings.redaction_key.get_secret_value() if settings.redaction_key is not None else ""
    if configured:
        return configured.encode()
    path = Path(settings.home).resolve() / "redaction.key"
    with _secrets_lock:
        found = _secrets.get(path)
        if found is None:
            found = _read_or_create_secret(path)
            _secrets[path] = found
        return found


def _read_or_create_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".redaction-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            # A link never replaces: when two processes create it at once, both read the winner's.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        text = path.read_text().strip()
    if len(text) < 16:
        raise StoreError(
            f"{path} holds no usable secret (at least 16 characters); restore it or set redaction_key"
        )
    return text.encode()


def hash_key(secret: bytes, key: str) -> str:
    """The keyed hash a redacted business key is logged as; a key already hashed is kept as it is."""
    if key.startswith(HASHED_KEY_PREFIX):
        return key
    return HASHED_KEY_PREFIX + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Redaction:
    """What an endpoint keeps out of its log: input columns, and keys in clear taken from them."""

    columns: tuple[str, ...]
    secret: bytes
    #: the endpoint's key column is redacted: every key it logs is hashed
    hash_keys: bool = False

    def inputs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        kept = dict(values)
        for name in self.columns:
            kept.pop(name, None)
        return kept

    def key(self, key: str | None) -> str | None:
        return None if key is None else hash_key(self.secret, key)

    def hashes(self, keys: Sequence[str | None], columns: Mapping[str, Sequence[Any]]) -> bool:
        """Whether ``keys`` are logged hashed: the key column is redacted, or a request took its
        keys from a redacted column (compared from the first value, so a mismatch costs little)."""
        if self.hash_keys:
            return True
        for name in self.columns:
            values = columns.get(name)
            if (
                values is not None
                and len(values) == len(keys)
                and len(keys) > 0
                and _as_key(values[0]) == keys[0]
                and [_as_key(v) for v in values] == list(keys)
            ):
                return True
        return False


def _as_key(value: Any) -> str | None:
    return None if value is None else str(value)


def redaction(columns: Sequence[str], key_column: str | None, settings: Settings) -> Redaction | None:
    """The redaction of a policy's ``redact`` list; None when nothing is redacted."""
    if not columns:
        return None
    hashed = key_column is not None and key_column in columns
    return Redaction(tuple(columns), redaction_secret(settings), hashed)


def endpoint_policy(session: Session, name: str) -> Policy | None:
    """The policy in force on endpoint ``name``; None when no endpoint has that name."""
    query = (
        select(EndpointRevision.policy)
        .join(Endpoint, Endpoint.id == EndpointRevision.endpoint_id)
        .where(Endpoint.name == name, EndpointRevision.number == Endpoint.current_revision)
    )
    found = session.execute(query).scalar_one_or_none()
    return None if found is None else Policy.model_validate(found)


def endpoint_redaction(ctx: Context, name: str) -> Redaction | None:
    """What endpoint ``name`` redacts now; None for a name with no endpoint or nothing redacted."""
    with ctx.store.read() as session:
        policy = endpoint_policy(session, name)
    if policy is None:
        return None
    return redaction(policy.redact, policy.key_column or policy.sticky_key, ctx.settings)


def _chunked(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _id_time(prediction_id: str) -> dt.datetime:
    """No later than the prediction's time for the UUIDv7 ids of the gateway; the epoch otherwise."""
    digits = prediction_id.replace("-", "")
    if len(digits) == 32 and digits[12] == "7":
        with contextlib.suppress(ValueError, OverflowError, OSError):
            return dt.datetime.fromtimestamp(int(digits[:12], 16) / 1000, dt.UTC)
    return _EPOCH


def without_erased(
    session: Session,
    predictions: list[dict[str, Any]],
    shadows: list[dict[str, Any]],
    secret: Callable[[], bytes],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows not covered by an erasure, to insert in the same transaction ``session``.

    A prediction is dropped when an erasure of its endpoint and key was recorded at or after its
    time; a shadow answer, when an erasure concerns its endpoint and its prediction is neither kept
    here nor stored (it was erased, or dropped in an earlier batch). ``secret`` is called only
    when a key in clear has to be compared with an erasure's keyed hash.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock_shared(_PG_ERASURE_LOCK)))
    if not predictions and not shadows:
        return predictions, shadows
    since = min([row["at"] for row in predictions] + [_id_time(row["prediction_id"]) for row in shadows])
    tombstones: dict[str, list[tuple[dt.datetime, str]]] = {}
    query = select(AuditRecord.target, AuditRecord.at, AuditRecord.after).where(
        AuditRecord.action == ERASE_ACTION, AuditRecord.at >= since
    )
    for target, at, after in session.execute(query):
        digest = (after or {}).get("key_hash")
        if isinstance(digest, str):
            tombstones.setdefault(target, []).append((at, digest))
    if not tombstones:
        return predictions, shadows
    digests: dict[str, str] = {}
    kept: list[dict[str, Any]] = []
    dropped: set[str] = set()
    for row in predictions:
        marks, key = tombstones.get(row["endpoint"]), row["key"]
        if marks and key is not None:
            digest = digests.get(key)
            if digest is None:
                digest = digests[key] = hash_key(secret(), key)
            if any(digest == mark and erased_at >= row["at"] for erased_at, mark in marks):
                dropped.add(row["id"])
                continue
        kept.append(row)
    present = {row["id"] for row in kept}
    doubtful = sorted(
        {
            row["prediction_id"]
            for row in shadows
            if row["endpoint"] in tombstones
            and row["prediction_id"] not in present
            and row["prediction_id"] not in dropped
        }
    )
    for chunk in _chunked(doubtful):
        present.update(session.scalars(select(_PREDICTIONS.c.id).where(_PREDICTIONS.c.id.in_(chunk))))
    kept_shadows = [
        row for row in shadows if row["endpoint"] not in tombstones or row["prediction_id"] in present
    ]
    return kept, kept_shadows


def _count_deleted(session: Session, statement: Delete) -> int:
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount or 0)


def _delete_predictions(session: Session, endpoint: str, ids: Sequence[str]) -> dict[str, int]:
    """Delete predictions by id with their shadow answers and labels; the counts of each."""
    counts = {"predictions": 0, "shadows": 0, "feedback": 0, "feedback_unmatched": 0}
    for chunk in _chunked(ids):
        counts["shadows"] += _count_deleted(
            session, delete(_SHADOWS).where(_SHADOWS.c.prediction_id.in_(chunk))
        )
        counts["feedback"] += _count_deleted(
            session, delete(_FEEDBACK).where(_FEEDBACK.c.prediction_id.in_(chunk))
        )
        counts["feedback_unmatched"] += _count_deleted(
            session,
            delete(_UNMATCHED).where(
                _UNMATCHED.c.endpoint == endpoint, _UNMATCHED.c.prediction_id.in_(chunk)
            ),
        )
        counts["predictions"] += _count_deleted(
            session, delete(_PREDICTIONS).where(_PREDICTIONS.c.id.in_(chunk))
        )
    return counts


# -------------------------------------------------------------------------------------------- erasure


class Erasure(BaseModel):
    """What an erasure by business key deleted. ``key_hash`` names the key; the key is not kept."""

    endpoint: str
    key_hash: str
    at: dt.datetime
    predictions: int
    shadows: int
    feedback: int
    feedback_unmatched: int
    #: lines set aside by this host's shipper (``rejected/``) removed from their files
    set_aside: int
    #: rows removed from the Parquet archive (see :mod:`passerelle.archive`)
    archived: int = 0


def _key_value(endpoint: str, text: str, key_column: str | None) -> str:
    """The key of ``VALUE`` or ``COLUMN=VALUE``, the column checked against the endpoint's."""
    if not text:
        raise InvalidInputError("key: give the business key, as VALUE or COLUMN=VALUE")
    column, sep, value = text.partition("=")
    if sep and _COLUMN_RE.fullmatch(column):
        if key_column is not None and column != key_column:
            raise InvalidInputError(
                f"key: endpoint {endpoint!r} is keyed by the column {key_column!r}, not {column!r}"
            )
        if not value:
            raise InvalidInputError(f"key: {column}= gives no value")
        return value
    if key_column is None:
        raise InvalidInputError(
            f"key: endpoint {endpoint!r} has no key column (deploy --key-column), so name it: COLUMN=VALUE"
        )
    return text


def _has_data(session: Session, endpoint: str) -> bool:
    for column in (_PREDICTIONS.c.endpoint, _UNMATCHED.c.endpoint, _FEEDBACK.c.endpoint):
        if session.execute(select(column).where(column == endpoint).limit(1)).first() is not None:
            return True
    return False


def erase_predictions(ctx: Context, endpoint: str, key: str, *, reason: str | None = None) -> Erasure:
    """Delete everything logged under business ``key`` on ``endpoint``; keep a tombstone for the rest.

    ``key`` is ``VALUE`` when the endpoint has a key column, or ``COLUMN=VALUE``. Deleted in one
    transaction: the predictions with that key (in clear or hashed), their shadow answers, their
    labels, and the kept labels given by that key or for those predictions. The audit record
    (:data:`ERASE_ACTION`) holds the counts and the keyed hash of the key, never the key; it is
    also the tombstone: records of that key made up to now and still in a prediction log segment
    (not shipped yet, on any host) are dropped by the shipper instead of being stored. Lines this
    host's shipper set aside in ``rejected/`` are removed from their files, and archived rows
    from their Parquet partitions.
    """
    with ctx.store.read() as session:
        policy = endpoint_policy(session, endpoint)
        if policy is None and not _has_data(session, endpoint):
            raise NotFoundError(f"endpoint {endpoint!r} does not exist and has no logged predictions")
    value = _key_value(endpoint, key, None if policy is None else policy.key_column or policy.sticky_key)
    if reason and value in reason:
        raise InvalidInputError("reason: it contains the key itself, which the audit log must never hold")
    digest = hash_key(redaction_secret(ctx.settings), value)
    candidates = sorted({value, digest})
    set_aside = _scrub_set_aside(Path(ctx.settings.home).resolve() / "predictions", endpoint, candidates)
    with ctx.store.write() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(_PG_ERASURE_LOCK)))
        ids = list(
            session.scalars(
                select(_PREDICTIONS.c.id).where(
                    _PREDICTIONS.c.endpoint == endpoint, _PREDICTIONS.c.key.in_(candidates)
                )
            )
        )
        counts = _delete_predictions(session, endpoint, ids)
        counts["feedback"] += _count_deleted(
            session,
            delete(_FEEDBACK).where(_FEEDBACK.c.endpoint == endpoint, _FEEDBACK.c.key.in_(candidates)),
        )
        counts["feedback_unmatched"] += _count_deleted(
            session,
            delete(_UNMATCHED).where(_UNMATCHED.c.endpoint == endpoint, _UNMATCHED.c.key.in_(candidates)),
        )
        after: dict[str, Any] = {"key_hash": digest, **counts, "set_aside": set_aside}
        audit.record(
            session, actor=ctx.actor, action=ERASE_ACTION, target=endpoint, after=after, reason=reason
        )
        session.flush()
        at = session.scalars(
            select(AuditRecord.at)
            .where(AuditRecord.action == ERASE_ACTION, AuditRecord.target == endpoint)
            .order_by(AuditRecord.id.desc())
            .limit(1)
        ).one()
    # The archive holds older predictions of the same key: erased too, partition by partition.
    from passerelle import archive

    archived = archive.erase_key(ctx, endpoint, value, reason=reason)
    return Erasure(
        endpoint=endpoint, key_hash=digest, at=at, set_aside=set_aside, archived=archived, **counts
    )


def _scrub_set_aside(directory: Path, endpoint: str, keys: Sequence[str]) -> int:
    """Remove the set-aside lines of ``endpoint`` under one of ``keys`` (and their shadows); the count.

    A line too damaged to read is removed when one of the keys appears in its text.
    """
    folder = directory / "rejected"
    if not folder.is_dir():
        return 0
    wanted = set(keys)
    removed = 0
    for path in sorted(folder.glob("*.jsonl")):
        worker = path.stem.rpartition("-")[0]
        if not _WORKER_RE.fullmatch(worker):
            continue
        (directory / "locks").mkdir(exist_ok=True)
        lock = _shipper_lock(directory, worker)
        try:
            # The shipper of that worker appends here under this lock.
            lock.acquire(timeout=60)
        except Timeout:
            raise StoreError(f"{path} stays locked by a shipper; erase again in a moment") from None
        try:
            lines = path.read_bytes().splitlines()
            erased: set[str] = set()
            verdicts: list[bool] = []
            for line in lines:
                record = _set_aside_record(line)
                if record is None:
                    verdicts.append(any(k.encode() in line for k in wanted))
                    continue
                hit = (
                    record.get("t") == "p"
                    and record.get("endpoint") == endpoint
                    and record.get("key") in wanted
                )
                if hit:
                    erased.add(str(record.get("id")))
                verdicts.append(hit)
            for i, line in enumerate(lines):
                record = _set_aside_record(line)
                if record is not None and record.get("t") == "s" and record.get("prediction_id") in erased:
                    verdicts[i] = True
            if not any(verdicts):
                continue
            kept = [line + b"\n" for line, gone in zip(lines, verdicts, strict=True) if not gone]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"".join(kept))
            os.replace(tmp, path)
            removed += sum(verdicts)
        finally:
            lock.release()
    return removed


def _set_aside_record(line: bytes) -> dict[str, Any] | None:
    try:
        outer = orjson.loads(line)
        inner = orjson.loads(outer["line"]) if isinstance(outer, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return inner if isinstance(inner, dict) else None


# ------------------------------------------------------------------------------------------ retention


def retention_limits(policy: Policy | None, settings: Settings) -> tuple[int | None, int | None]:
    """(days, rows) in force for an endpoint: its own, else the server's; None where unlimited."""
    days, rows = settings.prediction_retention_days, settings.prediction_retention_rows
    if policy is not None:
        if policy.retention.max_age_days is not None:
            days = policy.retention.max_age_days
        if policy.retention.max_rows is not None:
            rows = policy.retention.max_rows
    return days or None, rows or None


def _retention_plan(ctx: Context) -> dict[str, tuple[int | None, int | None]]:
    settings = ctx.settings
    plan: dict[str, tuple[int | None, int | None]] = {}
    with ctx.store.read() as session:
        names = list(session.scalars(select(Endpoint.name).order_by(Endpoint.name)))
        if settings.prediction_retention_days or settings.prediction_retention_rows:
            # Names batch scoring logged under without an endpoint follow the server's default;
            # found by skipping from one name to the next along the (endpoint, at) index.
            last: str | None = None
            while True:
                query = select(func.min(_PREDICTIONS.c.endpoint))
                if last is not None:
                    query = query.where(_PREDICTIONS.c.endpoint > last)
                last = session.scalar(query)
                if last is None:
                    break
                if last not in names:
                    names.append(last)
        for name in sorted(names):
            days, rows = retention_limits(endpoint_policy(session, name), settings)
            if days is not None or rows is not None:
                plan[name] = (days, rows)
    return plan


def _expired(
    cutoff: dt.datetime | None, boundary: tuple[dt.datetime, str] | None
) -> ColumnElement[bool] | None:
    clauses: list[ColumnElement[bool]] = []
    if cutoff is not None:
        clauses.append(_PREDICTIONS.c.at < cutoff)
    if boundary is not None:
        at, pid = boundary
        clauses.append(or_(_PREDICTIONS.c.at < at, and_(_PREDICTIONS.c.at == at, _PREDICTIONS.c.id <= pid)))
    return or_(*clauses) if clauses else None


def _row_boundary(session: Session, endpoint: str, rows: int) -> tuple[dt.datetime, str] | None:
    """(at, id) of the newest prediction beyond the ``rows`` newest ones; None when there is none."""
    found = session.execute(
        select(_PREDICTIONS.c.at, _PREDICTIONS.c.id)
        .where(_PREDICTIONS.c.endpoint == endpoint)
        .order_by(_PREDICTIONS.c.at.desc(), _PREDICTIONS.c.id.desc())
        .offset(rows)
        .limit(1)
    ).first()
    return None if found is None else (found.at, found.id)


def apply_retention(
    ctx: Context,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    batch_rows: int = RETENTION_BATCH,
) -> dict[str, int]:
    """Delete the predictions each endpoint's retention no longer covers; predictions deleted per endpoint.

    Limits come from each endpoint's policy, else the settings' ``prediction_retention_days`` and
    ``prediction_retention_rows`` (also for names batch scoring logged under). With an age limit,
    kept labels received before the cutoff go too. Shadow answers and labels go with their
    predictions, ``batch_rows`` predictions per transaction, so that a large backlog never holds a
    long transaction; each endpoint gets one audit record per sweep, with the counts only. With
    ``dry_run`` nothing is deleted and the counts are what would be. Endpoints under a limit
    appear in the result, with 0 when nothing had to go.
    """
    if batch_rows < 1:
        raise InvalidInputError(f"batch_rows must be at least 1, got {batch_rows}")
    now = now or dt.datetime.now(dt.UTC)
    deleted: dict[str, int] = {}
    for endpoint, (days, rows) in _retention_plan(ctx).items():
        cutoff = now - dt.timedelta(days=days) if days is not None else None
        with ctx.store.read() as session:
            boundary = _row_boundary(session, endpoint, rows) if rows is not None else None
            expired = _expired(cutoff, boundary)
            if dry_run:
                query = (
                    select(func.count()).select_from(_PREDICTIONS).where(_PREDICTIONS.c.endpoint == endpoint)
                )
                deleted[endpoint] = 0 if expired is None else int(session.scalar(query.where(expired)) or 0)
                continue
        deleted[endpoint] = _sweep(ctx, endpoint, expired, cutoff, (days, rows), batch_rows)
    return deleted


def _sweep(
    ctx: Context,
    endpoint: str,
    expired: ColumnElement[bool] | None,
    cutoff: dt.datetime | None,
    limits: tuple[int | None, int | None],
    batch_rows: int,
) -> int:
    totals = {"predictions": 0, "shadows": 0, "feedback": 0, "feedback_unmatched": 0}
    while True:
        with ctx.store.write() as session:
            done = True
            if expired is not None:
                ids = list(
                    session.scalars(
                        select(_PREDICTIONS.c.id)
                        .where(_PREDICTIONS.c.endpoint == endpoint, expired)
                        .order_by(_PREDICTIONS.c.at, _PREDICTIONS.c.id)
                        .limit(batch_rows)
                    )
                )
                for name, n in _delete_predictions(session, endpoint, ids).items():
                    totals[name] += n
                done = len(ids) < batch_rows
            if cutoff is not None:
                stale = list(
                    session.scalars(
                        select(_UNMATCHED.c.id)
                        .where(_UNMATCHED.c.endpoint == endpoint, _UNMATCHED.c.received_at < cutoff)
                        .limit(batch_rows)
                    )
                )
                if stale:
                    totals["feedback_unmatched"] += _count_deleted(
                        session, delete(_UNMATCHED).where(_UNMATCHED.c.id.in_(stale))
                    )
                done = done and len(stale) < batch_rows
            # The one audit record of the sweep goes with its last transaction; should the sweep
            # stop before, the next one deletes (and records) the rest.
            if done and any(totals.values()):
                days, rows = limits
                audit.record(
                    session,
                    actor=ctx.actor,
                    action=RETENTION_ACTION,
                    target=endpoint,
                    after={**totals, "max_age_days": days, "max_rows": rows},
                    reason="retention of the prediction log",
                )
        if done:
            return totals["predictions"]


def retention_tick(ctx: Context, *, holder: str | None = None) -> dict[str, int] | None:
    """A retention sweep when one is due; None when it is not (or another worker took it).

    Meant for a periodic scheduler: call it every tick from every worker of every replica. A
    sweep runs at most once per ``prediction_retention_interval_seconds`` across all of them
    (0 disables it). Errors propagate: the caller logs them and tries again at a later tick.
    """
    interval = ctx.settings.prediction_retention_interval_seconds
    if interval <= 0:
        return None
    from passerelle.serving.leases import acquire

    # A holder nobody renews: the lease, once taken, turns every caller away (this one too)
    # until it expires, which spaces the sweeps by the interval.
    token = f"{holder or socket.gethostname()}:{uuid.uuid4().hex[:12]}"
    if not acquire(ctx.store, _RETENTION_LEASE, token, ttl_s=interval):
        return None
    return apply_retention(ctx)
