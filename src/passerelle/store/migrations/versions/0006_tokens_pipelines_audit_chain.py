"""tokens pipelines audit chain

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 02:45:06.622617
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

import passerelle.store.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=20), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("created_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("expires_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.Column("last_used_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_tokens_secret_hash")),
    )
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("trigger_detail", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("code", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("environment_hash", sa.String(length=80), nullable=False),
        sa.Column("log_path", sa.String(length=2000), nullable=False),
        sa.Column("model_version", sa.String(length=300), nullable=True),
        sa.Column("evaluation", sa.JSON(), nullable=False),
        sa.Column("promotion", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("not_before", passerelle.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retry_of", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_runs")),
        sa.UniqueConstraint("pipeline", "number", name="uq_pipeline_runs_pipeline_number"),
    )
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.create_index("ix_pipeline_runs_pipeline_state", ["pipeline", "state"], unique=False)

    op.create_table(
        "pipelines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=2000), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("trigger_state", sa.JSON(), nullable=False),
        sa.Column("created_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipelines")),
        sa.UniqueConstraint("name", name=op.f("uq_pipelines_name")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))

    _backfill_audit_chain()


# The chain of the records written before this revision. The canonical form is copied here
# rather than imported from passerelle.audit: what this migration computed must stay what it
# computes, whatever later releases do to the module.
_GENESIS = "0" * 64
_BATCH = 1000


def _canonical(row: Any, prev_hash: str) -> bytes:
    document = {
        "id": row.id,
        "at": row.at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "before": row.before,
        "after": row.after,
        "reason": row.reason,
        "prev_hash": prev_hash,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _backfill_audit_chain() -> None:
    log = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("at", passerelle.store.schema.UTCDateTime(timezone=True)),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("target", sa.String()),
        sa.column("before", sa.JSON()),
        sa.column("after", sa.JSON()),
        sa.column("reason", sa.Text()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    update = (
        sa.update(log)
        .where(log.c.id == sa.bindparam("row_id"))
        .values(prev_hash=sa.bindparam("new_prev_hash"), hash=sa.bindparam("new_hash"))
    )
    connection = op.get_bind()
    prev_hash = _GENESIS
    last_id: int | None = None
    while True:
        query = sa.select(log)
        if last_id is not None:
            query = query.where(log.c.id > last_id)
        rows = connection.execute(query.order_by(log.c.id).limit(_BATCH)).all()
        if not rows:
            return
        changes = []
        for row in rows:
            digest = hashlib.sha256(_canonical(row, prev_hash)).hexdigest()
            changes.append({"row_id": row.id, "new_prev_hash": prev_hash, "new_hash": digest})
            prev_hash = digest
        connection.execute(update, changes)
        last_id = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")

    op.drop_table("pipelines")
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_runs_pipeline_state")

    op.drop_table("pipeline_runs")
    op.drop_table("api_tokens")
