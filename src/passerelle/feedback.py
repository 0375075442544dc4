"""Feedback: the ground truth of logged predictions, and the figures computed from it.

Labels arrive any time after their predictions, by prediction id or by business key (the
``predictions.key`` column). A label given by key joins the latest prediction of the endpoint
with that key made at or before the label's time. Labels are stored beside the prediction's
own time, and every figure is computed on demand from the stored, joined rows, so a label that
arrives days late changes the figures of the window its prediction belongs to the next time
they are computed. The last label received for a prediction wins; the change is audited
(``feedback.relabel``). Labels that match no prediction are kept in ``feedback_unmatched``
with the reason, reported, and joined by :func:`rejoin_unmatched` once the prediction ships
(the prediction log reaches the database asynchronously).

These are domain functions on a :class:`~passerelle.context.Context`; the figures themselves
come from :mod:`passerelle.performance`. See ``docs/monitoring.md`` and ADR 9.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, select, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from passerelle import audit, performance
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError, SchemaError, StoreError
from passerelle.policy import Policy
from passerelle.predictionlog import endpoint_redaction
from passerelle.store.schema import (
    Endpoint,
    EndpointRevision,
    Feedback,
    FeedbackUnmatched,
    Model,
    ModelVersion,
    Prediction,
)

__all__ = [
    "Coverage",
    "EstimateReport",
    "FeedbackItem",
    "FeedbackResult",
    "LabelLag",
    "UnknownFeedback",
    "UnmatchedFeedback",
    "ab_test",
    "coverage",
    "estimated_performance",
    "items_from_frame",
    "label_lag",
    "labelled",
    "read_items",
    "record_feedback",
    "rejoin_unmatched",
    "unmatched",
    "window_performance",
]

# Ids and keys are looked up in chunks: bounded statements on both backends.
_CHUNK = 500
_MAX_ID = 40
_MAX_KEY = 500
# How many refused rows an error message spells out before summarising.
_SHOWN_PROBLEMS = 5
_ATTEMPTS = 3
OnInvalid = Literal["raise", "reject"]
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class FeedbackItem:
    """One label: for a prediction id, or for a business key at a time (default: now)."""

    label: Any
    prediction_id: str | None = None
    key: str | None = None
    time: dt.datetime | None = None


@dataclass(frozen=True)
class UnknownFeedback:
    """A label that matched no prediction; it is kept and joined later by :func:`rejoin_unmatched`."""

    index: int
    prediction_id: str | None
    key: str | None
    reason: str


@dataclass(frozen=True)
class FeedbackResult:
    #: labels joined to a prediction (new or replacing an earlier label)
    matched: int
    #: of those, labels that changed an earlier label (each one audited)
    updated: int
    unknown: list[UnknownFeedback] = field(default_factory=list)
    #: (position in the batch, reason); only filled with ``on_invalid="reject"``
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Coverage:
    predictions: int
    labelled: int
    #: labelled / predictions; NaN without predictions
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelLag:
    """Label time minus prediction time, in seconds, over the labelled predictions of a window."""

    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UnmatchedFeedback:
    id: int
    endpoint: str
    prediction_id: str | None
    key: str | None
    label: Any
    label_at: dt.datetime
    received_at: dt.datetime
    received_by: str
    #: waiting (retried by a rejoin) or invalid (its prediction shipped but the label does not fit it)
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EstimateReport:
    """Estimated figures of a version over a window, beside the realized ones so far."""

    model: str
    version: int
    #: isotonic, platt, or "none: <why>" when the model's own probabilities were trusted
    calibration: str
    reference_rows: int
    figures: list[performance.Reconciled]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "calibration": self.calibration,
            "reference_rows": self.reference_rows,
            "figures": [f.to_dict() for f in self.figures],
        }


@dataclass
class _Pending:
    """A label on its way to a prediction: from a new batch, or from ``feedback_unmatched``."""

    index: int
    prediction_id: str | None
    key: str | None
    label: Any
    label_at: dt.datetime
    received_at: dt.datetime
    received_by: str
    unmatched_id: int | None = None


@dataclass(frozen=True)
class _Found:
    id: str
    endpoint: str
    at: dt.datetime
    model: str
    version: int
    outputs: dict[str, Any]


# ----------------------------------------------------------------------------------- intake


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_time(value: Any) -> dt.datetime:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time {value!r} is not an ISO 8601 date and time") from None
    if not isinstance(value, dt.datetime):
        raise ValueError(f"time {value!r} is not a date and time")
    if value.tzinfo is None:
        raise ValueError(f"time {value.isoformat()} has no time zone; give one, such as +00:00")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        # 0001-01-01T00:00+05:00 is a valid ISO time whose UTC falls before year 1.
        raise ValueError(f"time {value.isoformat()} is out of range") from None


def _item(raw: FeedbackItem | Mapping[str, Any]) -> FeedbackItem:
    if isinstance(raw, FeedbackItem):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError("expected an object with prediction_id or key, and label")
    unknown = set(raw) - {"prediction_id", "id", "key", "label", "time"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    if "label" not in raw:
        raise ValueError("label is missing")
    return FeedbackItem(
        label=raw["label"],
        prediction_id=raw.get("prediction_id", raw.get("id")),
        key=raw.get("key"),
        time=raw.get("time"),
    )


def _pending(index: int, raw: FeedbackItem | Mapping[str, Any], now: dt.datetime, actor: str) -> _Pending:
    """Check one item's shape (not yet its label's type, which depends on the prediction)."""
    item = _item(raw)
    pid = None if _is_missing(item.prediction_id) else _scalar(item.prediction_id)
    key = None if _is_missing(item.key) else _scalar(item.key)
    if (pid is None) == (key is None):
        raise ValueError("give either prediction_id or key")
    if pid is not None and (not isinstance(pid, str) or not pid or len(pid) > _MAX_ID):
        raise ValueError(
            f"prediction_id {pid!r} is not a prediction id (text of at most {_MAX_ID} characters)"
        )
    if key is not None:
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise ValueError(f"key {key!r} must be text")
        key = str(key)
        if not key or len(key) > _MAX_KEY:
            raise ValueError(f"key must be text of 1 to {_MAX_KEY} characters")
    label = _scalar(item.label)
    if _is_missing(label):
        raise ValueError("label is missing")
    if not isinstance(label, bool | int | float | str):
        raise ValueError(f"label {label!r} must be a single value (number, text or true/false)")
    if isinstance(label, float) and not math.isfinite(label):
        raise ValueError(f"label {label!r} is not a finite number")
    label_at = now if _is_missing(item.time) else _as_time(item.time)
    return _Pending(index, pid, key, label, label_at, now, actor)


def _summary(problems: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"row {i}: {why}" for i, why in problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    head = f"{len(problems)} feedback row{'s' if len(problems) > 1 else ''} refused: {shown}"
    return head + (f"; and {more} more" if more > 0 else "")


def _refuse(problems: list[tuple[int, str]]) -> SchemaError:
    return SchemaError(
        _summary(problems), [{"row": i, "column": "label", "reason": why} for i, why in problems]
    )


# --------------------------------------------------------------------------------- label types


def _classes_of(found: _Found, schema: dict[str, Any] | None) -> tuple[str, list[Any] | None]:
    """The logical type of the version's predictions and its classes, if it is a classifier."""
    if schema and schema.get("prediction"):
        classes = schema.get("classes")
        return str(schema["prediction"]), list(classes) if classes is not None else None
    # No recorded output schema: read what this prediction looked like.
    prediction = found.outputs.get("prediction")
    kind = (
        "boolean"
        if isinstance(prediction, bool)
        else "integer"
        if isinstance(prediction, int)
        else "float"
        if isinstance(prediction, float)
        else "string"
    )
    proba = found.outputs.get("proba")
    if isinstance(proba, dict) and proba:
        return kind, [_typed_class(str(c), kind) for c in proba]
    return kind, None


def _typed_class(text: str, kind: str) -> Any:
    """A class named by a JSON key, typed back like the predictions (for messages)."""
    try:
        if kind == "integer":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text
    if kind == "boolean" and text in ("True", "False"):
        return text == "True"
    return text


_KIND_WORDS = {
    "integer": "integer",
    "float": "numeric",
    "boolean": "true/false",
    "string": "text",
    "datetime": "date and time",
}


def _typed_label(label: Any, found: _Found, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """The label as the version's predictions are typed, or why it cannot be."""
    kind, classes = _classes_of(found, schema)
    ref = f"{found.model}:{found.version}"
    what = "classes" if classes is not None else "values"
    wrong = (
        f"label {label!r} ({type(label).__name__}) does not fit {ref}, "
        f"which predicts {_KIND_WORDS.get(kind, kind)} {what}"
    )
    value: Any
    if kind == "integer":
        if isinstance(label, bool):
            return None, wrong
        if isinstance(label, int):
            value = label
        elif isinstance(label, float) and label.is_integer():
            value = int(label)
        else:
            return None, wrong
    elif kind == "float":
        if isinstance(label, bool) or not isinstance(label, int | float):
            return None, wrong
        value = float(label)
    elif kind == "boolean":
        if not isinstance(label, bool):
            return None, wrong
        value = label
    elif kind in ("string", "datetime"):
        if not isinstance(label, str):
            return None, wrong
        value = label
    else:
        value = label
    if classes is not None:
        # Classes from a prediction's probabilities are JSON keys, hence text.
        known = {str(c) for c in classes}
        if str(value) not in known:
            shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
            return None, f"label {label!r} is not one of the classes of {ref} ({shown})"
    return value, None


# ------------------------------------------------------------------------------------- joining


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _found(row: Any) -> _Found:
    return _Found(row.id, row.endpoint, row.at, row.model, row.version, row.outputs or {})


def _resolve(
    session: Session, endpoint: str, pendings: Sequence[_Pending]
) -> tuple[dict[int, _Found], dict[int, str], dict[int, str]]:
    """Find each pending label's prediction: (found, unknown reasons, refused reasons) by position."""
    found: dict[int, _Found] = {}
    unknown: dict[int, str] = {}
    refused: dict[int, str] = {}
    cols = (
        Prediction.id,
        Prediction.endpoint,
        Prediction.at,
        Prediction.model,
        Prediction.version,
        Prediction.outputs,
    )

    by_id = {i: p.prediction_id for i, p in enumerate(pendings) if p.prediction_id is not None}
    ids = sorted(set(by_id.values()))
    rows: dict[str, _Found] = {}
    for chunk in _chunks(ids):
        for row in session.execute(select(*cols).where(Prediction.id.in_(chunk))):
            rows[row.id] = _found(row)
    for i, pid in by_id.items():
        hit = rows.get(pid)
        if hit is None:
            unknown[i] = "no prediction with this id (yet)"
        elif hit.endpoint != endpoint:
            refused[i] = f"prediction {pid} was answered by endpoint {hit.endpoint!r}, not {endpoint!r}"
        else:
            found[i] = hit

    by_key = {i: p.key for i, p in enumerate(pendings) if p.key is not None}
    keys = sorted(set(by_key.values()))
    latest = max((pendings[i].label_at for i in by_key), default=None)
    history: dict[str, tuple[list[dt.datetime], list[str]]] = {}
    for chunk in _chunks(keys):
        query = (
            select(Prediction.key, Prediction.at, Prediction.id)
            .where(Prediction.endpoint == endpoint, Prediction.key.in_(chunk), Prediction.at <= latest)
            .order_by(Prediction.key, Prediction.at, Prediction.id)
        )
        for key, at, pid in session.execute(query):
            times, pids = history.setdefault(str(key), ([], []))
            times.append(at)
            pids.append(pid)
    chosen: dict[int, str] = {}
    for i, key in by_key.items():
        pending = pendings[i]
        times, pids = history.get(key, ([], []))
        # Rows are in (at, id) order, so the one just before the insertion point is the
        # latest prediction at or before the label's time (the highest id on a tie).
        pos = bisect.bisect_right(times, pending.label_at)
        if pos == 0:
            unknown[i] = f"no prediction with key {pending.key!r} at or before {pending.label_at.isoformat()}"
        else:
            chosen[i] = pids[pos - 1]
    wanted = sorted(set(chosen.values()) - set(rows))
    for chunk in _chunks(wanted):
        for row in session.execute(select(*cols).where(Prediction.id.in_(chunk))):
            rows[row.id] = _found(row)
    for i, pid in chosen.items():
        found[i] = rows[pid]
    return found, unknown, refused


def _schemas(
    session: Session, versions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any] | None]:
    """The output schema of each (model, version); None for versions not in the registry."""
    pairs = sorted(set(versions))
    schemas: dict[tuple[str, int], dict[str, Any] | None] = dict.fromkeys(pairs)
    for chunk in _chunks(pairs):
        query = (
            select(Model.name, ModelVersion.number, ModelVersion.output_schema)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(tuple_(Model.name, ModelVersion.number).in_(list(chunk)))
        )
        for name, number, schema in session.execute(query):
            schemas[(name, number)] = schema
    return schemas


def _state(row: Feedback) -> dict[str, Any]:
    return {
        "label": row.label,
        "label_at": row.label_at.isoformat(),
        "received_at": row.received_at.isoformat(),
        "received_by": row.received_by,
    }


def _apply(
    session: Session, ctx: Context, endpoint: str, joined: list[tuple[_Pending, _Found, Any]]
) -> tuple[int, int, int]:
    """Store joined labels in order, the last received winning: (matched, updated, superseded)."""
    ids = sorted({found.id for _, found, _ in joined})
    current: dict[str, Feedback] = {}
    for chunk in _chunks(ids):
        query = select(Feedback).where(Feedback.prediction_id.in_(chunk)).with_for_update()
        for row in session.scalars(query):
            current[row.prediction_id] = row
    matched = updated = superseded = 0
    for pending, found, value in joined:
        existing = current.get(found.id)
        if existing is None:
            current[found.id] = Feedback(
                prediction_id=found.id,
                endpoint=endpoint,
                prediction_at=found.at,
                label=value,
                label_at=pending.label_at,
                received_at=pending.received_at,
                received_by=pending.received_by,
                key=pending.key,
            )
            session.add(current[found.id])
            matched += 1
            continue
        row = existing
        if row.received_at > pending.received_at:
            # A label kept while its prediction had not shipped lost to one received after it.
            superseded += 1
            continue
        matched += 1
        if row.label == value and type(row.label) is type(value):
            # A label sent again is not news: the time the truth was first known is kept.
            continue
        before = _state(row)
        row.label, row.label_at, row.key = value, pending.label_at, pending.key
        row.received_at, row.received_by = pending.received_at, pending.received_by
        audit.record(
            session,
            actor=ctx.actor,
            action="feedback.relabel",
            target=f"{endpoint}:{found.id}",
            before=before,
            after=_state(row),
        )
        updated += 1
    return matched, updated, superseded


def _check_endpoint(session: Session, endpoint: str) -> None:
    if session.scalar(select(Endpoint.id).where(Endpoint.name == endpoint)) is not None:
        return
    if session.scalar(select(Prediction.id).where(Prediction.endpoint == endpoint).limit(1)) is not None:
        return
    raise NotFoundError(f"endpoint {endpoint!r} does not exist and has no logged predictions")


def _with_retries(work: Callable[[], _T]) -> _T:
    # On PostgreSQL two writers may insert the first label of the same prediction at once;
    # the loser retries on a fresh snapshot and finds the winner's row to update.
    for attempt in range(_ATTEMPTS):
        try:
            return work()
        except sa_exc.IntegrityError as exc:
            if attempt == _ATTEMPTS - 1:
                raise StoreError(f"feedback could not be stored: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def record_feedback(
    ctx: Context,
    endpoint: str,
    items: Sequence[FeedbackItem | Mapping[str, Any]],
    *,
    on_invalid: OnInvalid = "raise",
    reason: str | None = None,
) -> FeedbackResult:
    """Join labels to the endpoint's predictions and store them, in one transaction.

    Each item gives ``prediction_id`` or ``key``, a ``label`` and optionally a ``time`` (an
    aware datetime or ISO text; default: now). Labels must fit the version that made the
    prediction (its output schema, else the logged outputs): an integer class, a known class,
    a number for a regressor. With ``on_invalid="raise"`` one bad row refuses the whole batch
    with a :class:`~passerelle.errors.SchemaError` naming each row (by position); with
    ``"reject"`` the bad rows are listed in ``rejected`` and the rest is stored.

    Labels matching no prediction are returned in ``unknown`` and kept for
    :func:`rejoin_unmatched`; their type is checked when they join.
    """
    if on_invalid not in ("raise", "reject"):
        raise InvalidInputError(f"on_invalid must be raise or reject, got {on_invalid!r}")
    now = dt.datetime.now(dt.UTC)
    pendings: list[_Pending] = []
    problems: list[tuple[int, str]] = []
    for index, raw in enumerate(items):
        try:
            pendings.append(_pending(index, raw, now, ctx.actor))
        except ValueError as exc:
            problems.append((index, str(exc)))
    if problems and on_invalid == "raise":
        raise _refuse(problems)
    redacted = endpoint_redaction(ctx, endpoint)
    if redacted is not None and redacted.hash_keys:
        # The endpoint logs its keys hashed: labels join, and are kept, under the same hash.
        for pending in pendings:
            pending.key = redacted.key(pending.key)

    def work() -> FeedbackResult:
        rejected = list(problems)
        with ctx.store.write() as session:
            _check_endpoint(session, endpoint)
            found, unknown, refused = _resolve(session, endpoint, pendings)
            schemas = _schemas(session, ((f.model, f.version) for f in found.values()))
            joined: list[tuple[_Pending, _Found, Any]] = []
            for pos, pending in enumerate(pendings):
                if pos in refused:
                    rejected.append((pending.index, refused[pos]))
                    continue
                hit = found.get(pos)
                if hit is None:
                    continue
                value, why = _typed_label(pending.label, hit, schemas.get((hit.model, hit.version)))
                if why is not None:
                    rejected.append((pending.index, why))
                else:
                    joined.append((pending, hit, value))
            rejected.sort()
            if rejected and on_invalid == "raise":
                raise _refuse(rejected)
            matched, updated, _ = _apply(session, ctx, endpoint, joined)
            lost: list[UnknownFeedback] = []
            for pos, why in sorted(unknown.items()):
                pending = pendings[pos]
                session.add(
                    FeedbackUnmatched(
                        endpoint=endpoint,
                        prediction_id=pending.prediction_id,
                        key=pending.key,
                        label=pending.label,
                        label_at=pending.label_at,
                        received_at=pending.received_at,
                        received_by=pending.received_by,
                        status="waiting",
                        reason=why,
                    )
                )
                lost.append(UnknownFeedback(pending.index, pending.prediction_id, pending.key, why))
            result = FeedbackResult(matched, updated, lost, rejected)
            audit.record(
                session,
                actor=ctx.actor,
                action="feedback.record",
                target=endpoint,
                after={
                    "items": len(items),
                    "matched": matched,
                    "updated": updated,
                    "unknown": len(lost),
                    "rejected": len(rejected),
                },
                reason=reason,
            )
            return result

    return _with_retries(work)


def rejoin_unmatched(ctx: Context, endpoint: str, *, batch: int = 5000) -> int:
    """Join the endpoint's waiting unmatched labels whose prediction has shipped since.

    Rows are taken in the order they were received, so the last label received still wins
    (also against a label sent directly after it). A label that finds its prediction but does
    not fit it stays, marked ``invalid`` with the reason. Returns how many labels joined.
    """
    joined_total = 0
    after = 0
    while True:

        def work(after: int = after) -> tuple[int, int, int]:
            with ctx.store.write() as session:
                query = (
                    select(FeedbackUnmatched)
                    .where(
                        FeedbackUnmatched.endpoint == endpoint,
                        FeedbackUnmatched.status == "waiting",
                        FeedbackUnmatched.id > after,
                    )
                    .order_by(FeedbackUnmatched.id)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
                rows = list(session.scalars(query))
                if not rows:
                    return 0, 0, after
                pendings = [
                    _Pending(
                        i, r.prediction_id, r.key, r.label, r.label_at, r.received_at, r.received_by, r.id
                    )
                    for i, r in enumerate(rows)
                ]
                found, _unknown, refused = _resolve(session, endpoint, pendings)
                schemas = _schemas(session, ((f.model, f.version) for f in found.values()))
                joined: list[tuple[_Pending, _Found, Any]] = []
                done: list[FeedbackUnmatched] = []
                for pos, row in enumerate(rows):
                    if pos in refused:
                        row.status, row.reason = "invalid", refused[pos]
                        continue
                    hit = found.get(pos)
                    if hit is None:
                        continue
                    value, why = _typed_label(row.label, hit, schemas.get((hit.model, hit.version)))
                    if why is not None:
                        row.status, row.reason = "invalid", why
                        continue
                    joined.append((pendings[pos], hit, value))
                    done.append(row)
                matched, updated, superseded = _apply(session, ctx, endpoint, joined)
                for row in done:
                    session.delete(row)
                if done or any(r.status == "invalid" for r in rows):
                    audit.record(
                        session,
                        actor=ctx.actor,
                        action="feedback.rejoin",
                        target=endpoint,
                        after={
                            "joined": len(done),
                            "updated": updated,
                            "superseded": superseded,
                            "invalid": sum(r.status == "invalid" for r in rows),
                        },
                    )
                return len(rows), matched + superseded, rows[-1].id

        taken, joined, last = _with_retries(work)
        joined_total += joined
        if taken < batch:
            return joined_total
        after = last


def unmatched(
    ctx: Context, endpoint: str, *, status: str | None = None, limit: int = 1000
) -> list[UnmatchedFeedback]:
    """Labels of the endpoint that matched no prediction, oldest first."""
    query = select(FeedbackUnmatched).where(FeedbackUnmatched.endpoint == endpoint)
    if status is not None:
        query = query.where(FeedbackUnmatched.status == status)
    query = query.order_by(FeedbackUnmatched.id).limit(limit)
    with ctx.store.read() as session:
        return [
            UnmatchedFeedback(
                r.id,
                r.endpoint,
                r.prediction_id,
                r.key,
                r.label,
                r.label_at,
                r.received_at,
                r.received_by,
                r.status,
                r.reason,
            )
            for r in session.scalars(query)
        ]


# -------------------------------------------------------------------------------- CSV and frames


def items_from_frame(frame: pd.DataFrame) -> list[FeedbackItem]:
    """Items from a table with ``prediction_id`` (or ``id``) or ``key``, ``label`` and optional ``time``."""
    columns = set(map(str, frame.columns))
    id_column = "prediction_id" if "prediction_id" in columns else "id" if "id" in columns else None
    if "label" not in columns or (id_column is None and "key" not in columns):
        raise InvalidInputError(
            "feedback needs a label column and a prediction_id (or id) or key column; "
            f"found {', '.join(sorted(columns)) or 'no columns'}"
        )
    ids = frame[id_column].tolist() if id_column else [None] * len(frame)
    keys = frame["key"].tolist() if "key" in columns else [None] * len(frame)
    times = frame["time"].tolist() if "time" in columns else [None] * len(frame)
    return [
        FeedbackItem(
            label=_scalar(label),
            prediction_id=None if _is_missing(pid) else str(pid),
            key=None if _is_missing(key) else str(_scalar(key)),
            time=None if _is_missing(time) else time,
        )
        for pid, key, label, time in zip(ids, keys, frame["label"].tolist(), times, strict=True)
    ]


def read_items(path: str | Path) -> list[FeedbackItem]:
    """Items from a CSV or Parquet file (ids and keys read as text, labels typed by their column)."""
    target = Path(path)
    if target.suffix.lower() == ".parquet":
        frame = pd.read_parquet(target)
    else:
        frame = pd.read_csv(target, dtype={"prediction_id": str, "id": str, "key": str, "time": str})
    return items_from_frame(frame)


# ------------------------------------------------------------------------------------ reading


def _window(
    query: Any,
    column: Any,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def _versions(query: Any, model: str | None, version: int | None) -> Any:
    if model is not None:
        query = query.where(Prediction.model == model)
    if version is not None:
        query = query.where(Prediction.version == version)
    return query


_FRAME_COLUMNS = ["prediction_id", "at", "model", "version", "prediction", "label", "label_at"]


def labelled(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model: str | None = None,
    version: int | None = None,
    *,
    include_unlabelled: bool = False,
) -> pd.DataFrame:
    """Predictions made in ``[since, until)`` joined to their labels, in prediction order.

    Columns: ``prediction_id, at, model, version, prediction``, one ``proba_<class>`` per class
    (in the version's class order), ``label, label_at``. Rows are selected by the prediction's
    time, whenever the label came. With ``include_unlabelled`` every prediction is there, with
    missing labels where none arrived (what an estimate needs).
    """
    query = (
        select(
            Prediction.id,
            Prediction.at,
            Prediction.model,
            Prediction.version,
            Prediction.outputs,
            Feedback.label,
            Feedback.label_at,
        )
        .select_from(Prediction)
        .join(Feedback, Feedback.prediction_id == Prediction.id, isouter=include_unlabelled)
        .where(Prediction.endpoint == endpoint)
    )
    query = _versions(_window(query, Prediction.at, since, until), model, version)
    query = query.order_by(Prediction.at, Prediction.id)
    with ctx.store.read() as session:
        rows = session.execute(query).all()
        pairs = {(r.model, r.version) for r in rows}
        schemas = _schemas(session, pairs)
    classes: list[str] = []
    for pair in sorted(pairs):
        for c in (schemas.get(pair) or {}).get("classes") or []:
            if str(c) not in classes:
                classes.append(str(c))
    extra: set[str] = set()
    for r in rows:
        proba = (r.outputs or {}).get("proba")
        if isinstance(proba, dict):
            extra.update(str(c) for c in proba if str(c) not in classes)
    classes += sorted(extra)
    data: dict[str, list[Any]] = {name: [] for name in _FRAME_COLUMNS}
    probas: dict[str, list[float]] = {c: [] for c in classes}
    for r in rows:
        outputs = r.outputs or {}
        data["prediction_id"].append(r.id)
        data["at"].append(r.at)
        data["model"].append(r.model)
        data["version"].append(r.version)
        floats = (schemas.get((r.model, r.version)) or {}).get("prediction") == "float"
        data["prediction"].append(_as_float(outputs.get("prediction"), floats))
        data["label"].append(_as_float(r.label, floats))
        data["label_at"].append(r.label_at)
        proba = outputs.get("proba")
        proba = proba if isinstance(proba, dict) else {}
        for c in classes:
            value = proba.get(c)
            probas[c].append(math.nan if value is None else float(value))
    frame = pd.DataFrame(
        {
            "prediction_id": pd.Series(data["prediction_id"], dtype=object),
            "at": pd.to_datetime(pd.Series(data["at"], dtype=object), utc=True),
            "model": pd.Series(data["model"], dtype=object),
            "version": pd.Series(data["version"], dtype="int64"),
            "prediction": pd.Series(data["prediction"], dtype=_dtype(data["prediction"])),
            **{f"{performance.PROBA_PREFIX}{c}": pd.Series(probas[c], dtype="float64") for c in classes},
            "label": pd.Series(data["label"], dtype=_dtype(data["label"])),
            "label_at": pd.to_datetime(pd.Series(data["label_at"], dtype=object), utc=True),
        }
    )
    return frame


def _as_float(value: Any, floats: bool) -> Any:
    # JSON does not keep 14.0 apart from 14 on every backend (SQLite gives 14 back); the
    # version's output type says which it was.
    if floats and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _dtype(values: list[Any]) -> str:
    # Keep labels and predictions as the model typed them: numbers as numbers, classes that
    # are text, booleans or mixed as Python objects.
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int64" if len(present) == len(values) else "object"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float64"
    return "object"


def coverage(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model: str | None = None,
    version: int | None = None,
) -> Coverage:
    """How many predictions of the window have a label, by the predictions' time."""
    total = _versions(
        _window(
            select(func.count()).select_from(Prediction).where(Prediction.endpoint == endpoint),
            Prediction.at,
            since,
            until,
        ),
        model,
        version,
    )
    done = _versions(
        _window(
            select(func.count())
            .select_from(Prediction)
            .join(Feedback, Feedback.prediction_id == Prediction.id)
            .where(Prediction.endpoint == endpoint),
            Prediction.at,
            since,
            until,
        ),
        model,
        version,
    )
    with ctx.store.read() as session:
        predictions = int(session.execute(total).scalar_one())
        labelled_count = int(session.execute(done).scalar_one())
    ratio = labelled_count / predictions if predictions else math.nan
    return Coverage(predictions, labelled_count, ratio)


def label_lag(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model: str | None = None,
    version: int | None = None,
) -> LabelLag:
    """Percentiles of label time minus prediction time over the labelled predictions of the window."""
    query = select(Feedback.prediction_at, Feedback.label_at).where(Feedback.endpoint == endpoint)
    query = _window(query, Feedback.prediction_at, since, until)
    if model is not None or version is not None:
        query = _versions(query.join(Prediction, Prediction.id == Feedback.prediction_id), model, version)
    with ctx.store.read() as session:
        rows = session.execute(query).all()
    if not rows:
        return LabelLag(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    lags = np.array([(label_at - at).total_seconds() for at, label_at in rows], dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(lags, [50, 90, 99]))
    return LabelLag(int(lags.size), float(lags.mean()), p50, p90, p99, float(lags.max()))


# ---------------------------------------------------------------------------------- figures


def window_performance(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    every: dt.timedelta | str | None = None,
    model: str | None = None,
    version: int | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Realized figures per version (and per window of ``every``), from the labels stored now.

    One row per (window, version, figure) with its value, sample count and interval; the
    ``options`` go to :func:`passerelle.performance.evaluate`.
    """
    frame = labelled(ctx, endpoint, since, until, model, version)
    if every is not None:
        return performance.by_window(frame, every, **options)
    columns = ["window_start", "window_end", "model", "version", "metric", "value", "n", "low", "high"]
    columns += ["interval"]
    records: list[dict[str, Any]] = []
    for (name, number), group in frame.groupby(["model", "version"], sort=True):
        for m in performance.evaluate(group, **options).values():
            records.append(
                {
                    "window_start": since,
                    "window_end": until,
                    "model": name,
                    "version": number,
                    "metric": m.name,
                    "value": m.value,
                    "n": m.n,
                    "low": m.low,
                    "high": m.high,
                    "interval": m.interval,
                }
            )
    return pd.DataFrame.from_records(records, columns=columns)


def estimated_performance(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    model: str,
    version: int,
    calibrator: performance.Calibrator | None = None,
    reference_since: dt.datetime | None = None,
    reference_until: dt.datetime | None = None,
    method: Literal["isotonic", "platt"] = "isotonic",
    min_reference: int = 200,
    **options: Any,
) -> EstimateReport:
    """Estimated figures of one version over a window, with the realized ones so far and the gaps.

    The calibration is ``calibrator`` when given (fitted on the version's evaluation data, say),
    else one fitted on this version's labelled predictions in ``[reference_since,
    reference_until)`` (default: everything labelled before ``since``). With fewer than
    ``min_reference`` reference labels the model's own probabilities are used, and the report
    says so.
    """
    frame = labelled(ctx, endpoint, since, until, model, version, include_unlabelled=True)
    calibration: str = calibrator.method if calibrator is not None else ""
    reference_rows = calibrator.reference_rows if calibrator is not None else 0
    if calibrator is None:
        ref = labelled(ctx, endpoint, reference_since, reference_until or since, model, version)
        reference_rows = len(ref)
        if reference_rows >= min_reference:
            calibrator = performance.Calibrator.from_frame(ref, method=method)
            calibration = method
        else:
            calibration = f"none: {reference_rows} labelled reference rows, {min_reference} needed"
    figures = performance.estimate_frame(frame, calibrator=calibrator, **options) if len(frame) else []
    return EstimateReport(model, version, calibration, reference_rows, figures)


def _split_ref(text: str) -> tuple[str, int]:
    name, sep, number = text.rpartition(":")
    if not sep or not name or not number.isdigit():
        raise InvalidInputError(f"expected a version such as churn:3, got {text!r}")
    return name, int(number)


def ab_test(
    ctx: Context,
    endpoint: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    *,
    metric: str = "accuracy",
    a: str | None = None,
    b: str | None = None,
    positive: Any = None,
    **options: Any,
) -> performance.Verdict:
    """A/B verdict between two routes of an endpoint on one metric, over the labelled window.

    By default A is the policy's primary route (the heaviest that is not a canary) and B the
    other one; an endpoint with more than two routes needs ``a`` and ``b`` (``churn:3``).
    ``options`` go to :func:`passerelle.performance.ab_verdict` (``mde``, ``alpha``, ``power``,
    ``design``, ``min_rows``).
    """
    split: float | None = None
    if a is None or b is None:
        with ctx.store.read() as session:
            row = session.execute(
                select(EndpointRevision.policy)
                .join(Endpoint, Endpoint.id == EndpointRevision.endpoint_id)
                .where(and_(Endpoint.name == endpoint, EndpointRevision.number == Endpoint.current_revision))
            ).first()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint!r} does not exist")
        policy = Policy.model_validate(row.policy)
        if len(policy.routes) != 2:
            raise InvalidInputError(
                f"endpoint {endpoint!r} has {len(policy.routes)} routes; name the two to compare (a=…, b=…)"
            )
        first = policy.primary
        second = next(r for r in policy.routes if r.ref != first.ref)
        a, b = a or first.ref, b or second.ref
        split = first.weight / 100.0
    pair_a, pair_b = _split_ref(a), _split_ref(b)
    if pair_a == pair_b:
        raise InvalidInputError(f"cannot compare {a} with itself")
    frame = labelled(ctx, endpoint, since, until)
    keys = list(zip(frame["model"], frame["version"], strict=True))
    mask_a = np.array([k == pair_a for k in keys], dtype=np.bool_)
    mask_b = np.array([k == pair_b for k in keys], dtype=np.bool_)
    options.setdefault("split", split)
    return performance.ab_verdict_frames(
        frame.loc[mask_a], frame.loc[mask_b], metric, positive=positive, a_ref=a, b_ref=b, **options
    )
