"""Tables of the metadata store. One definition serves SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Always hands back aware UTC datetimes; SQLite would otherwise return naive ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, dt.datetime: UTCDateTime}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.number"
    )
    aliases: Mapped[list[Alias]] = relationship(back_populates="model", order_by="Alias.name")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_model_versions_model_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    flavor: Mapped[str] = mapped_column(String(50))
    flavor_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_key: Mapped[str] = mapped_column(String(500))
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    environment: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), nullable=True)
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    model: Mapped[Model] = relationship(back_populates="versions")
    files: Mapped[list[ArtifactFile]] = relationship(
        back_populates="version", order_by="ArtifactFile.path", cascade="all, delete-orphan"
    )
    dataset_version: Mapped[DatasetVersion | None] = relationship()


class ArtifactFile(Base):
    __tablename__ = "artifact_files"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_artifact_files_version_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)

    version: Mapped[ModelVersion] = relationship(back_populates="files")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))

    model: Mapped[Model] = relationship(back_populates="aliases")
    version: Mapped[ModelVersion] = relationship()


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.number"
    )


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_dataset_number"),
        UniqueConstraint("dataset_id", "fingerprint", name="uq_dataset_versions_dataset_fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(2000))
    format: Mapped[str] = mapped_column(String(20))
    fingerprint: Mapped[str] = mapped_column(String(80))
    rows: Mapped[int] = mapped_column(BigInteger)
    schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100), index=True)
    target: Mapped[str] = mapped_column(String(500), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")


class Endpoint(Base):
    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    #: number of the revision in force; every policy change adds a revision and moves this
    current_revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    revisions: Mapped[list[EndpointRevision]] = relationship(
        back_populates="endpoint", order_by="EndpointRevision.number"
    )


class EndpointRevision(Base):
    __tablename__ = "endpoint_revisions"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "number", name="uq_endpoint_revisions_endpoint_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    #: the whole policy, with every version pinned to a number
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: deploy, update, promote, rollback, canary-step, canary-rollback, canary-done
    kind: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")

    endpoint: Mapped[Endpoint] = relationship(back_populates="revisions")


class Prediction(Base):
    """One answered row. Written from the gateway's durable log, never on the response path."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_endpoint_at", "endpoint", "at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column()
    latency_ms: Mapped[float] = mapped_column(Float)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    key: Mapped[str | None] = mapped_column(String(500), nullable=True, index=True)
    request_id: Mapped[str] = mapped_column(String(40), default="")
    #: online, batch
    source: Mapped[str] = mapped_column(String(20), default="online")


class ShadowPrediction(Base):
    """A shadow version's answer to a served prediction, under the same prediction id."""

    __tablename__ = "shadow_predictions"

    prediction_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[dt.datetime] = mapped_column()
    latency_ms: Mapped[float] = mapped_column(Float)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Figure(Base):
    """Operational figures of one worker for one endpoint version over one time bucket.

    Latency is kept as a histogram on fixed bounds so buckets of several workers and
    replicas merge exactly into percentiles.
    """

    __tablename__ = "figures"
    __table_args__ = (
        UniqueConstraint("endpoint", "model", "version", "bucket", "worker", name="uq_figures_series"),
        Index("ix_figures_endpoint_bucket", "endpoint", "bucket"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[dt.datetime] = mapped_column()
    worker: Mapped[str] = mapped_column(String(100))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_hist: Mapped[list[Any]] = mapped_column(default=list)
    shadow_compared: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_disagreed: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    rejections: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Lease(Base):
    """A named lease so that one worker among many runs a periodic job (canary steps, monitors)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column()


class BatchRun(Base):
    """One batch scoring run of a file by a model version (``passerelle score``).

    Inserted as ``running`` when scoring starts and updated when it ends, so a run whose
    process died stays visible as ``running`` with no end time.
    """

    __tablename__ = "batch_runs"
    __table_args__ = (Index("ix_batch_runs_model_started", "model", "started_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    input_uri: Mapped[str] = mapped_column(String(2000))
    #: ``sha256:<hex>`` of the bytes, or ``s3-etag:<etag>:<size>`` for objects in a bucket
    input_fingerprint: Mapped[str] = mapped_column(String(200), default="")
    output_uri: Mapped[str] = mapped_column(String(2000))
    rejects_uri: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    rows_in: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_scored: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: running, succeeded, failed
    status: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: local, spark
    engine: Mapped[str] = mapped_column(String(20), default="local")
    #: options and figures that do not need their own column (rejections by reason, logging...)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(200))


class Feedback(Base):
    """The ground truth of one prediction. The last label received wins; relabels are audited.

    ``prediction_at`` repeats the prediction's time so that a late label lands in the window
    of its prediction and windows are found from this table's own index.
    """

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_endpoint_prediction_at", "endpoint", "prediction_at"),)

    prediction_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    prediction_at: Mapped[dt.datetime] = mapped_column()
    label: Mapped[Any] = mapped_column(JSON)
    label_at: Mapped[dt.datetime] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    received_by: Mapped[str] = mapped_column(String(200))
    #: the business key the label was given by, when it was not given by prediction id
    key: Mapped[str | None] = mapped_column(String(500), nullable=True)


class FeedbackUnmatched(Base):
    """A label that matched no prediction (yet): kept so it can be joined once the prediction ships."""

    __tablename__ = "feedback_unmatched"
    __table_args__ = (Index("ix_feedback_unmatched_endpoint_status", "endpoint", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    prediction_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    label: Mapped[Any] = mapped_column(JSON)
    label_at: Mapped[dt.datetime] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    received_by: Mapped[str] = mapped_column(String(200))
    #: waiting (retried by a rejoin), invalid (found its prediction, but the label does not fit it)
    status: Mapped[str] = mapped_column(String(20), default="waiting")
    reason: Mapped[str] = mapped_column(Text, default="")
