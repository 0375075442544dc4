"""feedback

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:12:31.504117
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import passerelle.store.schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("prediction_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("label", sa.JSON(), nullable=False),
        sa.Column("label_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_by", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("prediction_id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(
            "ix_feedback_endpoint_prediction_at", ["endpoint", "prediction_at"], unique=False
        )

    op.create_table(
        "feedback_unmatched",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("prediction_id", sa.String(length=40), nullable=True),
        sa.Column("key", sa.String(length=500), nullable=True),
        sa.Column("label", sa.JSON(), nullable=False),
        sa.Column("label_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", passerelle.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_by", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_unmatched")),
    )
    with op.batch_alter_table("feedback_unmatched", schema=None) as batch_op:
        batch_op.create_index("ix_feedback_unmatched_endpoint_status", ["endpoint", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback_unmatched", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_unmatched_endpoint_status")
    op.drop_table("feedback_unmatched")

    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_endpoint_prediction_at")
    op.drop_table("feedback")
