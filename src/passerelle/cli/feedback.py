"""Commands for feedback: send labels from a file, list the kept ones, join them again.

``passerelle feedback churn-api --input labels.csv`` is short for ``passerelle feedback send
churn-api --input labels.csv``. Exit status: 0 when every row joined its prediction or was
kept as unknown, 1 when rows were refused, 2 for a file, a column or an endpoint that cannot
be used (one line on standard error).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from passerelle.cli._common import JSON, REASON, client, console, err_console, print_json, when
from passerelle.errors import (
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    PasserelleError,
    SchemaError,
)

if TYPE_CHECKING:
    import pandas as pd

    from passerelle.batch import Location
    from passerelle.client import Client

SEND = "send"
#: Rows per call: well under the server's limit of 100,000 items, and each call is one
#: transaction, so a refused chunk costs little to send again.
CHUNK_ROWS = 10_000
# How many unknown or rejected rows the summary spells out.
_SHOWN = 5
# Exit status when rows were refused (2 is for what could not be used at all).
_REFUSED = 1
_UNUSABLE = 2


class _SendByDefault(TyperGroup):
    """A group whose first argument, when it names no command, is the endpoint of ``send``."""

    # ctx is the Context of the click that typer vendors, which it does not export.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [SEND, *args]
        return super().parse_args(ctx, args)


feedback_app = typer.Typer(
    cls=_SendByDefault,
    help="Labels (ground truth) of logged predictions. `passerelle feedback ENDPOINT --input FILE` "
    "is short for `passerelle feedback send ENDPOINT --input FILE`.",
    no_args_is_help=True,
)


class OnInvalid(enum.StrEnum):
    raise_ = "raise"
    reject = "reject"


class Status(enum.StrEnum):
    waiting = "waiting"
    invalid = "invalid"


def _error(message: str) -> None:
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> NoReturn:
    _error(message)
    raise typer.Exit(_UNUSABLE)


def _say(text: str) -> None:
    """One line of plain text: never wrapped, brackets and all, so that it can be grepped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _unusable() -> Iterator[None]:
    """A file, column or endpoint that cannot be used ends the command with status 2."""
    try:
        yield
    except (InvalidInputError, InvalidReferenceError, NotFoundError) as exc:
        _fail(str(exc))


# ------------------------------------------------------------------------------------------ send


@dataclass
class _Sent:
    """What the calls of one file did, with row positions counted over the whole file."""

    endpoint: str
    rows: int = 0
    calls: int = 0
    matched: int = 0
    updated: int = 0
    unknown: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "rows": self.rows,
            "calls": self.calls,
            "matched": self.matched,
            "updated": self.updated,
            "unknown": self.unknown,
            "rejected": [list(pair) for pair in self.rejected],
        }


@dataclass(frozen=True)
class _Columns:
    """Which column of the file plays which part."""

    id: str | None
    key: str | None
    label: str
    time: str | None

    @property
    def names(self) -> list[str]:
        return [c for c in (self.id, self.key, self.label, self.time) if c is not None]

    @property
    def renames(self) -> dict[str, str]:
        parts = {self.id: "prediction_id", self.key: "key", self.label: "label", self.time: "time"}
        return {column: part for column, part in parts.items() if column is not None}


def _choose_columns(
    found: list[str], uri: str, id_column: str | None, key_column: str | None, label: str, time: str | None
) -> _Columns:
    if id_column is not None and key_column is not None:
        raise InvalidInputError("give --id-column or --key-column, not both")
    if id_column is None and key_column is None:
        id_column = next((c for c in ("prediction_id", "id") if c in found), None)
        key_column = "key" if id_column is None and "key" in found else None
        if id_column is None and key_column is None:
            raise InvalidInputError(
                f"{uri} has no prediction_id, id or key column; name one with --id-column or --key-column "
                f"(columns: {', '.join(found) or 'none'})"
            )
    if time is None and "time" in found:
        time = "time"
    columns = _Columns(id_column, key_column, label, time)
    missing = [c for c in columns.names if c not in found]
    if missing:
        raise InvalidInputError(f"{uri} has no column {missing[0]!r} (columns: {', '.join(found) or 'none'})")
    if len(set(columns.names)) < len(columns.names):
        raise InvalidInputError("one column cannot be used for two parts (id or key, label, time)")
    return columns


def _csv_chunks(loc: Location, columns: _Columns, rows: int) -> Iterator[pd.DataFrame]:
    import pandas as pd

    with loc.fs.open(loc.path, "rb") as handle:
        reader = pd.read_csv(
            handle,
            usecols=columns.names,
            dtype=dict.fromkeys(columns.names, str),
            chunksize=rows,
            compression="gzip" if loc.gzip else None,
        )
        with reader:
            for frame in reader:
                frame[columns.label] = frame[columns.label].map(_csv_label)
                yield frame


_INTEGER = re.compile(r"^[+-]?\d+$")


def _csv_label(text: Any) -> Any:
    """A label of a CSV file, typed by its own text (ids, keys and times stay text).

    Typing each value rather than the column keeps one bad value from turning a whole column
    (or chunk) of integer classes into text, which would refuse every row of it.
    """
    if not isinstance(text, str):
        return text  # missing: refused by the server as such
    value = text.strip()
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if _INTEGER.match(value):
        return int(value)
    if "_" not in value:
        with contextlib.suppress(ValueError):
            return float(value)
    return text


def _parquet_chunks(loc: Location, columns: _Columns, rows: int) -> Iterator[pd.DataFrame]:
    from passerelle.batch import read_chunks

    for batch, _done, _total in read_chunks(loc, columns.names, rows):
        yield batch.to_pandas()


def _chunks(loc: Location, columns: _Columns, rows: int) -> Iterator[pd.DataFrame]:
    """The file's rows in frames of ``rows``, read as they are sent, so any size fits in memory."""
    import zlib

    import pyarrow as pa

    reader = _parquet_chunks if loc.fmt == "parquet" else _csv_chunks
    try:
        yield from reader(loc, columns, rows)
    # pandas' ParserError is a ValueError.
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"cannot read {loc.uri} as {loc.fmt}: {first}") from exc


def _locate(uri: str) -> tuple[Location, list[str]]:
    from passerelle.batch import input_columns, locate
    from passerelle.settings import load_settings

    loc = locate(uri, load_settings())
    if not loc.exists():
        raise InvalidInputError(f"cannot read {uri}: no such file")
    return loc, input_columns(loc)


def _send_chunk(
    c: Client, sent: _Sent, frame: pd.DataFrame, columns: _Columns, on_invalid: OnInvalid, reason: str | None
) -> None:
    from passerelle.feedback import items_from_frame

    items = items_from_frame(frame[columns.names].rename(columns=columns.renames))
    first = sent.rows
    try:
        result = c.record_feedback(sent.endpoint, items, on_invalid=on_invalid.value, reason=reason)
    except SchemaError as exc:
        exc.problems = [{**p, "row": _shift(p.get("row"), first)} for p in exc.problems]
        raise
    sent.calls += 1
    sent.rows += len(items)
    sent.matched += result.matched
    sent.updated += result.updated
    sent.unknown += [
        {"row": u.index + first, "prediction_id": u.prediction_id, "key": u.key, "reason": u.reason}
        for u in result.unknown
    ]
    sent.rejected += [(index + first, why) for index, why in result.rejected]


def _shift(row: Any, by: int) -> Any:
    return row + by if isinstance(row, int) else row


def _print_sent(sent: _Sent) -> None:
    rows = f"{sent.rows:,} row{'s' if sent.rows != 1 else ''}"
    calls = f"{sent.calls:,} call{'s' if sent.calls != 1 else ''}"
    _say(
        f"{sent.endpoint}: {rows} in {calls}: {sent.matched:,} matched "
        f"({sent.updated:,} updated), {len(sent.unknown):,} unknown, {len(sent.rejected):,} rejected"
    )
    for u in sent.unknown[:_SHOWN]:
        which = f"prediction_id {u['prediction_id']}" if u["prediction_id"] is not None else f"key {u['key']}"
        _say(f"  unknown   row {u['row']:,} ({which}): {u['reason']}")
    if len(sent.unknown) > _SHOWN:
        _say(f"  ... and {len(sent.unknown) - _SHOWN:,} more unknown")
    if sent.unknown:
        _say(
            f"  unknown labels are kept: `passerelle feedback rejoin {sent.endpoint}` joins them once "
            "their predictions are logged"
        )
    for row, why in sent.rejected[:_SHOWN]:
        _say(f"  rejected  row {row:,}: {why}")
    if len(sent.rejected) > _SHOWN:
        _say(f"  ... and {len(sent.rejected) - _SHOWN:,} more rejected")


def _refusal(exc: SchemaError, sent: _Sent) -> str:
    shown = "; ".join(f"row {p.get('row')}: {p.get('reason')}" for p in exc.problems[:_SHOWN])
    more = len(exc.problems) - _SHOWN
    shown = (shown or str(exc)) + (f"; and {more} more" if more > 0 else "")
    return (
        f"{shown} — rows from {sent.rows:,} on were not stored (rows before were); fix them and send the "
        "file again, or use --on-invalid reject to store the good rows"
    )


@feedback_app.command(SEND)
def send(
    endpoint: str = typer.Argument(
        ..., help="The endpoint whose predictions the labels are for, e.g. churn-api."
    ),
    input: str = typer.Option(..., "--input", "-i", help="CSV or Parquet file of labels, local or s3://."),
    id_column: str | None = typer.Option(
        None, "--id-column", help="Column of prediction ids (default: prediction_id or id, when present)."
    ),
    key_column: str | None = typer.Option(
        None, "--key-column", help="Column of business keys, to join by key instead of by id (default: key)."
    ),
    label_column: str = typer.Option("label", "--label-column", help="Column of labels."),
    time_column: str | None = typer.Option(
        None,
        "--time-column",
        help="Column of the times the labels held, with a time zone (default: time, when present; "
        "else the time they are received).",
    ),
    on_invalid: OnInvalid = typer.Option(
        OnInvalid.raise_,
        "--on-invalid",
        help="raise: a bad row refuses its chunk and stops the upload; reject: bad rows are listed, "
        "the others stored.",
    ),
    reason: str | None = REASON,
    chunk_rows: int = typer.Option(
        CHUNK_ROWS, "--chunk-rows", min=1, max=100_000, help="Rows sent per call (one transaction each)."
    ),
    as_json: bool = JSON,
) -> None:
    """Send labels from a CSV or Parquet file, in chunks, and print what joined."""
    with _unusable():
        loc, found = _locate(input)
        columns = _choose_columns(found, input, id_column, key_column, label_column, time_column)
    sent = _Sent(endpoint)
    with client() as c:
        try:
            frames = _chunks(loc, columns, chunk_rows)
            first = next(frames, None)
            if first is None:
                # An empty file still asks the server, so that an unknown endpoint is reported.
                c.record_feedback(endpoint, [], on_invalid=on_invalid.value, reason=reason)
            else:
                _send_chunk(c, sent, first, columns, on_invalid, reason)
                for frame in frames:
                    _send_chunk(c, sent, frame, columns, on_invalid, reason)
        except SchemaError as exc:
            _report(sent, as_json)
            _error(_refusal(exc, sent))
            raise typer.Exit(_REFUSED) from None
        except (InvalidInputError, InvalidReferenceError, NotFoundError) as exc:
            if sent.calls:
                # The rows sent before the file or the server failed are stored: say so.
                _report(sent, as_json)
            _fail(str(exc))
        except PasserelleError:
            if sent.calls:
                _report(sent, as_json)
            raise
    _report(sent, as_json)
    if sent.rejected:
        raise typer.Exit(_REFUSED)


def _report(sent: _Sent, as_json: bool) -> None:
    if as_json:
        print_json(sent.to_dict())
    else:
        _print_sent(sent)


# ------------------------------------------------------------------------------ unmatched, rejoin


@feedback_app.command("unmatched")
def unmatched(
    endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api."),
    status: Status | None = typer.Option(None, "--status", help="Only waiting or only invalid labels."),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000, help="At most this many labels."),
    as_json: bool = JSON,
) -> None:
    """List labels that matched no prediction, oldest first: waiting ones and invalid ones."""
    with _unusable(), client() as c:
        kept = c.feedback_unmatched(endpoint, status=status.value if status else None, limit=limit)
    if as_json:
        print_json([k.to_dict() for k in kept])
        return
    if not kept:
        _say(f"no kept labels for {endpoint}")
        return
    table = Table()
    for header in ("id", "prediction id / key", "label", "label time", "received", "by", "status", "reason"):
        # Folded rather than cut: an id is only useful whole.
        table.add_column(header, overflow="fold")
    for k in kept:
        which = k.prediction_id if k.prediction_id is not None else f"key {k.key}"
        table.add_row(
            str(k.id),
            escape(str(which)),
            escape(repr(k.label)),
            when(k.label_at),
            when(k.received_at),
            escape(k.received_by),
            k.status,
            escape(k.reason),
        )
    console.print(table)


@feedback_app.command("rejoin")
def rejoin(endpoint: str = typer.Argument(..., help="The endpoint, e.g. churn-api.")) -> None:
    """Join the kept labels whose prediction has reached the log since they were sent."""
    with _unusable(), client() as c:
        joined = c.rejoin_feedback(endpoint)
    _say(f"{endpoint}: {joined:,} kept label(s) joined to their predictions")
