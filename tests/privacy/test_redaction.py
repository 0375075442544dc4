"""Redacted columns never reach a segment file or the database; a redacted key still joins and erases."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
from sqlalchemy import select

from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.errors import InvalidInputError
from passerelle.predictionlog import HASHED_KEY_PREFIX, hash_key, redaction_secret
from passerelle.settings import Settings
from passerelle.store.schema import Feedback, Prediction
from tests.privacy.conftest import stored
from tests.serving.conftest import serving

EMAIL = "MARKER-EMAIL-ann@example.org"
CUSTOMER = "MARKER-CUSTOMER-0042"
PHONE = "KEPT-PHONE-0611"


def _home_bytes(home: Path) -> bytes:
    """Every byte passerelle keeps under its home: segments, set-aside lines, the database and its WAL."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file() and not p.is_symlink())


def test_served_endpoint_keeps_redacted_values_out_of_the_log(
    registered: tuple[Settings, LocalClient, pd.DataFrame],
) -> None:
    settings, client, frame = registered
    client.deploy(
        "churn-api",
        DeploySpec(
            routes=[("churn@champion", 100)],
            shadows=[("churn:2", 100.0)],
            key_column="customer",
            redact=["email", "customer"],
        ),
    )
    rows = frame.head(3).assign(email=EMAIL, customer=CUSTOMER, phone=PHONE).to_dict("records")
    home = settings.home.resolve()
    with serving(settings) as (url, gateway):
        # Held back, so the records sit in the segment file as the erasure of a customer would find them.
        gateway.shipper.stop(flush=False)
        answered = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": rows})
        assert answered.status_code == 200, answered.text
        ids = [p["prediction_id"] for p in answered.json()["predictions"]]
        # A request the signature refuses: what it held is not kept anywhere either.
        bad = [{**rows[0], "age": "old"}]
        refused = httpx.post(f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": bad})
        assert refused.status_code == 422
        # A request naming a redacted column as its key: the key is logged hashed all the same.
        by_email = httpx.post(
            f"{url}/v1/endpoints/churn-api/predict", json={"dataframe_records": rows[:1], "key": "email"}
        )
        assert by_email.status_code == 200, by_email.text
        gateway.log.flush()
        segments = b"".join(p.read_bytes() for p in (home / "predictions").glob("*.seg"))
        assert PHONE.encode() in segments, "the unredacted column is logged (the search works)"
        assert EMAIL.encode() not in segments
        assert CUSTOMER.encode() not in segments
        gateway.shipper.ship_once()
        gateway.figures.flush(client.ctx.store)

    with client.ctx.store.read() as session:
        logged = {row.id: row for row in session.scalars(select(Prediction))}
    assert set(ids) <= set(logged)
    secret = redaction_secret(settings)
    for pid in ids:
        assert set(logged[pid].inputs) == {"age", "income", "score", "phone"}
        assert logged[pid].key == hash_key(secret, CUSTOMER)
    assert {row.key for row in logged.values()} == {hash_key(secret, CUSTOMER), hash_key(secret, EMAIL)}
    assert len(stored(client.ctx)["shadows"]) == 4, "shadow answers are logged as before"

    # Labels given by the key in clear join the hashed predictions, and are kept hashed.
    result = client.record_feedback("churn-api", [{"key": CUSTOMER, "label": 1}])
    assert result.matched == 1
    with client.ctx.store.read() as session:
        (label,) = session.scalars(select(Feedback))
    assert label.key is not None
    assert label.key.startswith(HASHED_KEY_PREFIX)

    everything = _home_bytes(home)
    database = b"".join(p.read_bytes() for p in home.glob("passerelle.db*"))
    assert PHONE.encode() in database, "the database files are searched"
    assert EMAIL.encode() not in everything
    assert CUSTOMER.encode() not in everything

    # Erasure by the key in clear finds what was logged under its hash.
    erased = client.erase_predictions("churn-api", CUSTOMER)
    assert (erased.predictions, erased.shadows, erased.feedback) == (3, 3, 1)
    assert erased.key_hash == hash_key(secret, CUSTOMER)
    assert stored(client.ctx)["predictions"] == set(logged) - set(ids)


def test_batch_log_follows_the_endpoint_redaction(
    registered: tuple[Settings, LocalClient, pd.DataFrame], tmp_path: Path
) -> None:
    settings, client, frame = registered
    client.deploy(
        "churn-api",
        DeploySpec(routes=[("churn:1", 100)], key_column="customer", redact=["income", "customer"]),
    )
    source = tmp_path / "customers.csv"
    frame.head(5).assign(customer=[f"{CUSTOMER}-{i}" for i in range(5)]).to_csv(source, index=False)
    run = client.score(
        "churn:1", source, tmp_path / "scored.csv", log=True, log_endpoint="churn-api", key_column="customer"
    )
    assert run.details["logged_rows"] == 5
    secret = redaction_secret(settings)
    with client.ctx.store.read() as session:
        rows = list(session.scalars(select(Prediction).where(Prediction.source == "batch")))
    assert len(rows) == 5
    assert all(set(row.inputs) == {"age", "score"} for row in rows)
    assert {row.key for row in rows} == {hash_key(secret, f"{CUSTOMER}-{i}") for i in range(5)}


def test_redaction_is_a_revision_kept_by_redeploys_and_rollbacks(
    registered: tuple[Settings, LocalClient, pd.DataFrame],
) -> None:
    _, client, _ = registered
    client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    second = client.deploy(
        "churn-api", DeploySpec(routes=[("churn:1", 100)], redact=["email"], retention_days=90)
    )
    assert second.number == 2
    assert second.policy.redact == ["email"]
    assert second.policy.retention.max_age_days == 90
    # A deploy that does not mention them, and a rollback to before them, keep them.
    third = client.deploy("churn-api", DeploySpec(routes=[("churn:2", 100)], retention_rows=1000))
    assert (third.policy.redact, third.policy.retention.max_age_days) == (["email"], 90)
    assert third.policy.retention.max_rows == 1000
    back = client.rollback("churn-api", to=1)
    assert back.policy.routes[0].ref == "churn:1"
    assert back.policy.redact == ["email"]
    assert back.policy.retention.max_rows == 1000
    cleared = client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], redact=[], retention_days=0))
    assert cleared.policy.redact == []
    assert cleared.policy.retention.max_age_days == 0
    (change,) = [e for e in client.audit(target="churn-api") if e.after and e.after.get("revision") == 2]
    assert change.after is not None
    assert change.after["redact"] == ["email"]
    with pytest.raises(InvalidInputError, match=r"^invalid traffic policy: redact: '' is not a column name"):
        client.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], redact=[""]))
