"""Erasure by business key: the database, the unshipped segments, set-aside lines and the audit log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import orjson
import pytest

from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError, NotFoundError
from passerelle.predictionlog import (
    ERASE_ACTION,
    LogShipper,
    PredictionLog,
    PredictionRecord,
    ShadowRecord,
    hash_key,
    new_prediction_id,
    redaction_secret,
)
from tests.privacy.conftest import audit_rows, days_ago, endpoint, kept_label, logged, stored

KEY = "C000042"


def record(key: str, *, at: dt.datetime | None = None) -> PredictionRecord:
    return PredictionRecord(
        id=new_prediction_id(),
        endpoint="churn-api",
        revision=1,
        model="churn",
        version=1,
        at=at or dt.datetime.now(dt.UTC),
        latency_ms=1.0,
        inputs={"customer_id": key, "age": 40},
        outputs={"prediction": 1},
        key=key,
    )


def shadow_of(of: PredictionRecord) -> ShadowRecord:
    return ShadowRecord(of.id, of.endpoint, "churn", 2, of.at, 2.0, outputs={"prediction": 0})


def test_erase_by_key_removes_shipped_unshipped_and_set_aside_rows(local: LocalClient) -> None:
    ctx = local.ctx
    endpoint(ctx, "churn-api", key_column="customer_id")
    mine = [logged(ctx, "churn-api", days_ago(d), key=KEY, label=1) for d in (3, 2)]
    theirs = logged(ctx, "churn-api", days_ago(2), key="C000007", label=0)
    elsewhere = logged(ctx, "other-api", days_ago(2), key=KEY)
    mine_kept = kept_label(ctx, "churn-api", days_ago(1), key=KEY)
    theirs_kept = kept_label(ctx, "churn-api", days_ago(1), key="C000007")

    # Records still in a live segment of a running worker when the erasure arrives.
    folder = Path(ctx.settings.home).resolve() / "predictions"
    log = PredictionLog(folder, worker="w0", fsync=False)
    waiting, other = record(KEY), record("C000007")
    log.append_sync([waiting, other])
    log.append_shadow([shadow_of(waiting), shadow_of(other)])
    log.flush()
    # A line the database once refused, set aside with its reason.
    (folder / "rejected").mkdir()
    set_aside = folder / "rejected" / "w9-00000001.jsonl"
    lines = [
        {"error": "refused", "line": json.dumps({"t": "p", **_plain(record(KEY))})},
        {"error": "refused", "line": json.dumps({"t": "p", **_plain(record("C000007"))})},
    ]
    set_aside.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))

    erased = local.erase_predictions("churn-api", f"customer_id={KEY}", reason="request #881")

    secret = redaction_secret(ctx.settings)
    assert erased.key_hash == hash_key(secret, KEY)
    assert (erased.predictions, erased.shadows, erased.feedback, erased.feedback_unmatched) == (2, 2, 2, 1)
    assert erased.set_aside == 1
    left = stored(ctx)
    assert not set(mine) & left["predictions"]
    assert {theirs, elsewhere} <= left["predictions"]
    assert not set(mine) & (left["shadows"] | left["feedback"])
    assert theirs in left["feedback"]
    assert left["feedback_unmatched"] == {theirs_kept}
    assert mine_kept not in left["feedback_unmatched"]
    assert KEY not in set_aside.read_text()
    assert "C000007" in set_aside.read_text()

    # The tombstone: the shipper drops what was waiting, with its shadow answer, and ships the rest.
    later = record(KEY)
    log.append_sync([later])
    LogShipper(folder, ctx.store, log=log).ship_once()
    log.close()
    left = stored(ctx)
    assert waiting.id not in left["predictions"] | left["shadows"]
    assert {other.id, later.id} <= left["predictions"], "predictions made after the erasure are kept"
    assert other.id in left["shadows"]
    # Shipping the same segment again (a lost position) cannot bring an erased record back.
    for pos in folder.glob("*.pos"):
        pos.write_text("0")
    LogShipper(folder, ctx.store).ship_once()
    assert waiting.id not in stored(ctx)["predictions"]

    (entry,) = audit_rows(ctx, ERASE_ACTION)
    assert entry.target == "churn-api"
    assert entry.actor == "tester"
    assert entry.reason == "request #881"
    assert entry.after == {
        "key_hash": erased.key_hash,
        "predictions": 2,
        "shadows": 2,
        "feedback": 2,
        "feedback_unmatched": 1,
        "set_aside": 1,
    }
    assert KEY not in json.dumps([entry.before, entry.after, entry.reason, entry.target])


def test_erasure_refusals_are_one_readable_line(local: LocalClient) -> None:
    ctx = local.ctx
    endpoint(ctx, "churn-api", key_column="customer_id")
    endpoint(ctx, "plain-api")
    with pytest.raises(
        NotFoundError, match=r"^endpoint 'ghost' does not exist and has no logged predictions$"
    ):
        local.erase_predictions("ghost", KEY)
    with pytest.raises(InvalidInputError, match="endpoint 'plain-api' has no key column"):
        local.erase_predictions("plain-api", KEY)
    with pytest.raises(InvalidInputError, match="keyed by the column 'customer_id', not 'account'"):
        local.erase_predictions("churn-api", f"account={KEY}")
    with pytest.raises(InvalidInputError, match="contains the key itself"):
        local.erase_predictions("churn-api", KEY, reason=f"customer {KEY} asked")
    assert audit_rows(ctx, ERASE_ACTION) == []
    # A key column given by name works without one configured; a bare value with one configured.
    assert local.erase_predictions("plain-api", f"customer_id={KEY}").predictions == 0
    assert local.erase_predictions("churn-api", KEY).predictions == 0


def _plain(rec: PredictionRecord) -> dict[str, object]:
    return {**dataclasses.asdict(rec), "at": rec.at.isoformat()}
