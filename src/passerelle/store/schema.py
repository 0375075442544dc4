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
    #: sha256 of the previous record's hash and this record's content: an edit or a deletion
    #: made behind the application's back breaks the chain (``passerelle doctor``)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


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


class ReferenceProfile(Base):
    """Reference statistics of one version against one reference, computed once and kept.

    ``reference`` names what was summarised (``dataset:churn-train:2``); ``stats`` is
    :meth:`passerelle.drift.ReferenceStats.to_dict`, so a window is compared without reading the
    reference again.
    """

    __tablename__ = "reference_profiles"
    __table_args__ = (UniqueConstraint("model", "version", "reference", name="uq_reference_profiles_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    reference: Mapped[str] = mapped_column(String(500))
    fingerprint: Mapped[str] = mapped_column(String(200), default="")
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Monitor(Base):
    """The checks of one endpoint over consecutive windows of prediction time.

    ``next_window`` is the start of the first window not evaluated yet: a run evaluates every
    closed window from there and moves it forward in the same transaction as the results, so a
    window is evaluated once and a restart resumes where the last run stopped.
    """

    __tablename__ = "monitors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200), unique=True)
    window_s: Mapped[int] = mapped_column(Integer)
    #: seconds after a window's end before it is evaluated, so late-shipped predictions are in
    delay_s: Mapped[int] = mapped_column(Integer, default=60)
    #: "training" (each version's training dataset) or a dataset reference such as "churn-train:2"
    reference: Mapped[str] = mapped_column(String(500), default="training")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_window: Mapped[dt.datetime] = mapped_column()
    #: labels received after this moment recompute the performance of the windows they belong to
    labels_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MonitorResult(Base):
    """The figures of one monitor over one window, for one version (or ``version`` 0: all of them)."""

    __tablename__ = "monitor_results"
    __table_args__ = (
        UniqueConstraint("monitor_id", "window_start", "model", "version", name="uq_monitor_results_window"),
        Index("ix_monitor_results_endpoint_window", "endpoint", "window_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    monitor_id: Mapped[int] = mapped_column(ForeignKey("monitors.id"))
    endpoint: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[dt.datetime] = mapped_column()
    window_end: Mapped[dt.datetime] = mapped_column()
    model: Mapped[str] = mapped_column(String(200), default="")
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: ok, drift, insufficient (too few rows), no_traffic, error
    status: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    #: flat name → number, the names alert rules use (``drift.share``, ``latency.p99_ms``)
    figures: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the drift report, performance and window sketch behind the figures
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evaluated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AlertRule(Base):
    """A condition on a monitor figure, held for ``for_windows`` windows before it fires."""

    __tablename__ = "alert_rules"
    __table_args__ = (UniqueConstraint("endpoint", "name", name="uq_alert_rules_endpoint_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    #: ``drift.share > 0.3``: figure, operator, threshold
    expression: Mapped[str] = mapped_column(String(500))
    for_windows: Mapped[int] = mapped_column(Integer, default=1)
    keep_firing_windows: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[str] = mapped_column(String(20), default="warning")
    #: names of rules whose firing silences this one (a schema alert inhibits drift alerts)
    inhibited_by: Mapped[list[Any]] = mapped_column(default=list)
    #: notifier names; empty means every enabled notifier
    notify: Mapped[list[Any]] = mapped_column(default=list)
    #: a pipeline to trigger when the alert fires (the retraining hook)
    pipeline: Mapped[str | None] = mapped_column(String(200), nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class Alert(Base):
    """One episode of a rule being true for one endpoint and version: pending → firing → resolved."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_endpoint_state", "endpoint", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id"))
    endpoint: Mapped[str] = mapped_column(String(200))
    #: the group an alert is deduplicated in: rule, endpoint and version
    fingerprint: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(200), default="")
    version: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    true_windows: Mapped[int] = mapped_column(Integer, default=0)
    false_windows: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    fired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_window: Mapped[dt.datetime] = mapped_column()
    inhibited: Mapped[bool] = mapped_column(Boolean, default=False)
    acked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    acked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")


class Silence(Base):
    """Mutes notifications of matching alerts between two times; the alerts still change state."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    #: a rule name, or "*" for every rule of the endpoint
    rule: Mapped[str] = mapped_column(String(200), default="*")
    starts_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ends_at: Mapped[dt.datetime] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")


class Notifier(Base):
    """Where notifications go: a JSON webhook, a Slack/Mattermost webhook or SMTP e-mail."""

    __tablename__ = "notifiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class Notification(Base):
    """An outbox row: one message for one notifier, retried with backoff until sent or given up."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"), nullable=True)
    notifier: Mapped[str] = mapped_column(String(200))
    #: firing, resolved, test
    event: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: pending, sent, failed (gave up)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiToken(Base):
    """An API token: only its hash is kept; the secret is shown once, when created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    #: viewer, predictor, scientist, operator, admin
    role: Mapped[str] = mapped_column(String(20))
    #: sha256 of the secret, hex
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: the first characters of the secret, to recognise a token in lists and logs
    prefix: Mapped[str] = mapped_column(String(20))
    #: endpoint names the token is limited to; empty means every endpoint
    endpoints: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PipelineRecord(Base):
    """A retraining pipeline, as last loaded from a passerelle.yaml or from Python."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    #: the validated definition (training step, input, evaluation, promotion, triggers)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: where it was defined: a file path, or "python"
    source: Mapped[str] = mapped_column(String(2000), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: what the triggers have seen: dataset versions, the last schedule tick, the last trigger time
    trigger_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PipelineRun(Base):
    """One execution of a pipeline: its state, inputs, outputs, evaluation and promotion."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        UniqueConstraint("pipeline", "number", name="uq_pipeline_runs_pipeline_number"),
        Index("ix_pipeline_runs_pipeline_state", "pipeline", "state"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    number: Mapped[int] = mapped_column(Integer)
    #: manual, dataset, alert, schedule
    trigger: Mapped[str] = mapped_column(String(20))
    trigger_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: queued, running, succeeded, rejected (gates failed), failed, interrupted, cancelled
    state: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the process running it and its last sign of life; a stale heartbeat means interrupted
    holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: dataset versions and fingerprints read
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    code: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    environment_hash: Mapped[str] = mapped_column(String(80), default="")
    log_path: Mapped[str] = mapped_column(String(2000), default="")
    #: the version the run registered, e.g. churn:7
    model_version: Mapped[str | None] = mapped_column(String(300), nullable=True)
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    promotion: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the pipeline's definition when the run was queued, so a later apply does not change it
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: a retry is queued with a backoff: it is not started before this time
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the failed or interrupted run this one retries
    retry_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
