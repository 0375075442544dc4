"""Shared pieces of the command line: the client, option parsing, and output helpers."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from passerelle.errors import InvalidInputError

if TYPE_CHECKING:
    from passerelle.client import Client

# Piped output is read by scripts and grep: folding a run name or a digest to fit 80 columns
# would break both, so only a terminal (or an explicit COLUMNS) sets the width.
_PIPED_WIDTH = 400


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=_PIPED_WIDTH if piped else None)


console = _console()
err_console = _console(stderr=True)

REASON = typer.Option(None, "--reason", help="Why this change is made; kept in the audit log.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def client() -> Client:
    # Imported here so that `passerelle --help` does not pay for pandas and SQLAlchemy.
    from passerelle.client import connect

    return connect()


def parse_pairs(values: list[str] | None, what: str, numeric: bool = False) -> dict[str, Any]:
    """``["auc=0.91", "k=v"]`` → dict; metrics must be numbers."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--{what} expects KEY=VALUE, got {item!r}")
        key = key.strip()
        if numeric:
            try:
                out[key] = float(value)
            except ValueError:
                raise InvalidInputError(f"--{what} {key}: {value!r} is not a number") from None
        else:
            out[key] = value
    return out


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None) -> dt.datetime | None:
    """``7d``, ``12h``, ``30m`` or an ISO date/time → an aware UTC datetime."""
    if not text:
        return None
    match = _DURATION.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return dt.datetime.now(dt.UTC) - dt.timedelta(**{_UNITS[unit]: amount})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"--since {text!r}: use a duration such as 7d, 12h, 30m or an ISO date"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
