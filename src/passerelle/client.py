"""One client interface for the CLI, the Python API and the console.

:class:`LocalClient` runs the services in-process on the store. A remote implementation
speaking the management API over HTTP implements the same :class:`Client` methods, so
nothing above this layer reaches into the store.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from passerelle import audit
from passerelle.audit import AuditEntry, ChainReport
from passerelle.context import Context
from passerelle.datasets import DatasetInfo, Datasets, DatasetVersionInfo
from passerelle.endpoints import DeploySpec, EndpointDetail, EndpointInfo, Endpoints, RevisionInfo
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError
from passerelle.registry import LoadedModel, ModelInfo, Registry, VersionInfo
from passerelle.serving.compare import Comparison
from passerelle.settings import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from passerelle.alerts import AlertInfo, RuleInfo, RuleSpec, SilenceInfo
    from passerelle.auth import CreatedToken, TokenInfo
    from passerelle.batch import BatchRunInfo, ProgressCallback
    from passerelle.export import ExportInfo
    from passerelle.feedback import FeedbackItem, FeedbackResult, UnmatchedFeedback
    from passerelle.monitor import MonitorInfo, MonitorSpec, ResultInfo, RunSummary
    from passerelle.notify import NotifierInfo
    from passerelle.pipelines import Pipeline, PipelineInfo, RunInfo
    from passerelle.predictionlog import Erasure

#: Most kept labels one listing returns.
UNMATCHED_MAX = 100_000
#: Most outbox rows one listing returns.
NOTIFICATIONS_MAX = 10_000
#: Longest monitor window or delay.
MONITOR_MAX_S = 366 * 24 * 3600
#: Largest row id the store's integer columns hold (PostgreSQL's integer).
ROW_ID_MAX = 2**31 - 1
#: Most pipeline runs one listing returns.
RUNS_MAX = 1000
#: Most bytes of a run's log one read returns.
LOG_CHUNK = 1 << 20


class DoctorReport(BaseModel):
    database: str
    schema_revision: str
    artifact_uri: str
    versions_checked: int
    problems: list[str]
    orphans: list[str]
    #: the audit log's hash chain; when broken, its problem is also one of ``problems``
    audit_chain: ChainReport

    @property
    def ok(self) -> bool:
        return not self.problems


class Client(abc.ABC):
    """Everything a user can do with passerelle, independent of where the store lives."""

    # registry
    @abc.abstractmethod
    def register(
        self,
        model: Any,
        name: str,
        *,
        flavor: str | None = None,
        sample: Any = None,
        closed: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        dataset: str | None = None,
        description: str = "",
        trust: bool = False,
        reason: str | None = None,
    ) -> VersionInfo: ...

    @abc.abstractmethod
    def load(self, ref: str) -> LoadedModel: ...

    @abc.abstractmethod
    def list_models(self) -> list[ModelInfo]: ...

    @abc.abstractmethod
    def get_model(self, name: str) -> tuple[ModelInfo, list[VersionInfo]]: ...

    @abc.abstractmethod
    def get_version(self, ref: str) -> VersionInfo: ...

    @abc.abstractmethod
    def set_alias(self, model: str, alias: str, number: int, *, reason: str | None = None) -> VersionInfo: ...

    @abc.abstractmethod
    def remove_alias(self, model: str, alias: str, *, reason: str | None = None) -> None: ...

    @abc.abstractmethod
    def set_tags(
        self,
        ref: str,
        set_: dict[str, Any] | None = None,
        remove: list[str] | None = None,
        *,
        reason: str | None = None,
    ) -> VersionInfo: ...

    @abc.abstractmethod
    def set_archived(self, ref: str, archived: bool, *, reason: str | None = None) -> VersionInfo: ...

    # datasets
    @abc.abstractmethod
    def register_dataset(
        self, source: str | Path, name: str, *, tags: dict[str, Any] | None = None, reason: str | None = None
    ) -> DatasetVersionInfo: ...

    @abc.abstractmethod
    def list_datasets(self) -> list[DatasetInfo]: ...

    @abc.abstractmethod
    def get_dataset(self, ref: str) -> DatasetVersionInfo: ...

    @abc.abstractmethod
    def dataset_versions(self, name: str) -> list[DatasetVersionInfo]: ...

    # governance and housekeeping
    @abc.abstractmethod
    def audit(
        self,
        *,
        since: dt.datetime | None = None,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit records newest first; the newest one's ``hash`` anchors the whole log."""

    @abc.abstractmethod
    def doctor(self, *, audit_anchor: str | None = None) -> DoctorReport:
        """Check the store; ``audit_anchor`` (``ID:HASH``) is a head of the audit log kept elsewhere."""

    @abc.abstractmethod
    def gc(self, *, dry_run: bool = False) -> list[str]: ...

    # endpoints and traffic
    @abc.abstractmethod
    def deploy(self, name: str, spec: DeploySpec, *, reason: str | None = None) -> RevisionInfo: ...

    @abc.abstractmethod
    def set_weights(
        self, name: str, routes: list[tuple[str, int]], *, reason: str | None = None
    ) -> RevisionInfo: ...

    @abc.abstractmethod
    def promote(self, name: str, ref: str, *, reason: str | None = None) -> RevisionInfo: ...

    @abc.abstractmethod
    def rollback(self, name: str, *, to: int | None = None, reason: str | None = None) -> RevisionInfo: ...

    @abc.abstractmethod
    def list_endpoints(self) -> list[EndpointInfo]: ...

    @abc.abstractmethod
    def get_endpoint(self, name: str) -> EndpointDetail: ...

    @abc.abstractmethod
    def compare(self, name: str, *, since: dt.datetime) -> Comparison: ...

    @abc.abstractmethod
    def predictions_tail(self, name: str, *, limit: int = 20) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def predictions_export(
        self, name: str, *, output: Path, since: dt.datetime | None = None, fmt: str = "parquet"
    ) -> int: ...

    # feedback
    @abc.abstractmethod
    def record_feedback(
        self,
        endpoint: str,
        items: Sequence[FeedbackItem | Mapping[str, Any]],
        *,
        on_invalid: Literal["raise", "reject"] = "raise",
        reason: str | None = None,
    ) -> FeedbackResult:
        """Join labels to the endpoint's predictions; see :func:`passerelle.feedback.record_feedback`."""

    @abc.abstractmethod
    def feedback_unmatched(
        self, endpoint: str, *, status: str | None = None, limit: int = 1000
    ) -> list[UnmatchedFeedback]:
        """Labels that matched no prediction, oldest first: ``waiting`` ones, ``invalid`` ones, or both."""

    @abc.abstractmethod
    def rejoin_feedback(self, endpoint: str) -> int:
        """Join the kept labels whose prediction has reached the log since; how many joined."""

    # monitors, alerts and notifiers
    @abc.abstractmethod
    def set_monitor(
        self,
        endpoint: str,
        spec: MonitorSpec,
        *,
        enabled: bool = True,
        start: dt.datetime | None = None,
        reason: str | None = None,
    ) -> MonitorInfo:
        """Create or change the monitor of an endpoint; ``start`` (re)evaluates windows from that time."""

    @abc.abstractmethod
    def get_monitor(self, endpoint: str) -> MonitorInfo: ...

    @abc.abstractmethod
    def list_monitors(self) -> list[MonitorInfo]: ...

    @abc.abstractmethod
    def remove_monitor(self, endpoint: str, *, reason: str | None = None) -> None:
        """Stop the monitor (it stays listed, disabled); its stored results stay readable."""

    @abc.abstractmethod
    def run_monitors(self, endpoint: str | None = None) -> list[RunSummary]:
        """Evaluate the closed windows of one monitor, or of every enabled one, where the store is."""

    @abc.abstractmethod
    def monitor_results(
        self,
        endpoint: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        version: str | None = None,
    ) -> list[ResultInfo]:
        """Stored window results, oldest first, without drift sketches; ``version`` "all" or "churn:3"."""

    @abc.abstractmethod
    def monitor_report(
        self, endpoint: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> str:
        """The self-contained HTML report of an endpoint (default: the last 7 days)."""

    @abc.abstractmethod
    def set_alert_rule(self, endpoint: str, spec: RuleSpec, *, reason: str | None = None) -> RuleInfo: ...

    @abc.abstractmethod
    def list_alert_rules(self, endpoint: str | None = None) -> list[RuleInfo]: ...

    @abc.abstractmethod
    def remove_alert_rule(self, endpoint: str, name: str, *, reason: str | None = None) -> None: ...

    @abc.abstractmethod
    def list_alerts(
        self, endpoint: str | None = None, *, state: str | None = None, limit: int = 200
    ) -> list[AlertInfo]:
        """Alerts, newest first; ``state`` is pending, firing, resolved, cleared or open."""

    @abc.abstractmethod
    def ack_alert(self, alert_id: int, *, reason: str | None = None) -> AlertInfo: ...

    @abc.abstractmethod
    def silence(
        self, endpoint: str, *, rule: str = "*", duration: dt.timedelta, comment: str = ""
    ) -> SilenceInfo:
        """Mute the notifications of an endpoint's alerts (one rule, or ``*``) from now on."""

    @abc.abstractmethod
    def expire_silence(self, silence_id: int, *, reason: str | None = None) -> SilenceInfo: ...

    @abc.abstractmethod
    def list_silences(
        self, endpoint: str | None = None, *, active_only: bool = False
    ) -> list[SilenceInfo]: ...

    @abc.abstractmethod
    def set_notifier(
        self,
        name: str,
        kind: str,
        config: Mapping[str, Any],
        *,
        enabled: bool = True,
        reason: str | None = None,
    ) -> NotifierInfo:
        """Create or replace a notifier; answers show its config with credentials masked."""

    @abc.abstractmethod
    def list_notifiers(self) -> list[NotifierInfo]: ...

    @abc.abstractmethod
    def remove_notifier(self, name: str, *, reason: str | None = None) -> None: ...

    @abc.abstractmethod
    def test_notifier(self, name: str) -> None:
        """Send a test message now; raises :class:`passerelle.notify.NotifyError` saying why it failed."""

    @abc.abstractmethod
    def notifications(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The notification outbox, latest first; ``status`` is pending, sent or failed."""

    # batch scoring and export: in-process work on local files; clients that cannot do it say so
    def score(
        self,
        ref: str,
        input: str | Path,
        output: str | Path,
        *,
        keep: list[str] | None = None,
        rejects: str | Path | None = None,
        fail_on_reject: bool = False,
        overwrite: bool = False,
        log: bool = False,
        log_endpoint: str | None = None,
        key_column: str | None = None,
        batch_rows: int | None = None,
        engine: str = "local",
        spark_master: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> BatchRunInfo:
        """Score a CSV or Parquet file with a version; see :func:`passerelle.batch.score_file`."""
        raise PasserelleError(f"{type(self).__name__} cannot score files; use a local client")

    def batch_runs(self, *, model: str | None = None, limit: int = 50) -> list[BatchRunInfo]:
        raise PasserelleError(f"{type(self).__name__} cannot list batch runs; use a local client")

    def batch_run(self, run_id: str) -> BatchRunInfo:
        raise PasserelleError(f"{type(self).__name__} cannot show batch runs; use a local client")

    def export(
        self,
        ref: str,
        output: str | Path,
        *,
        fmt: str = "onnx",
        tolerance: float | None = None,
        sample: str | Path | None = None,
        register: str | None = None,
        overwrite: bool = False,
        reason: str | None = None,
    ) -> ExportInfo:
        """Convert a version for embedded use; see :func:`passerelle.export.export_model`."""
        raise PasserelleError(f"{type(self).__name__} cannot export models; use a local client")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; the client must not be used afterwards."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # data protection
    @abc.abstractmethod
    def erase_predictions(self, endpoint: str, key: str, *, reason: str | None = None) -> Erasure:
        """Delete what is logged under a business key (``VALUE`` or ``COLUMN=VALUE``).

        See :func:`passerelle.predictionlog.erase_predictions`.
        """

    @abc.abstractmethod
    def apply_retention(self, *, dry_run: bool = False) -> dict[str, int]:
        """Delete the predictions beyond each endpoint's retention; deleted (or, dry, due) per endpoint.

        See :func:`passerelle.predictionlog.apply_retention`.
        """

    # API tokens
    @abc.abstractmethod
    def create_token(
        self,
        name: str,
        role: str,
        *,
        expires_in: dt.timedelta | None = None,
        endpoints: Sequence[str] = (),
        reason: str | None = None,
    ) -> CreatedToken:
        """A new API token; its secret is in the answer only. See :func:`passerelle.auth.create_token`."""

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenInfo]:
        """Every token (never its secret), revoked and expired ones included, newest first."""

    @abc.abstractmethod
    def revoke_token(self, name: str, *, reason: str | None = None) -> TokenInfo:
        """Revoke a token for good; servers stop accepting it within their token cache time."""

    # retraining pipelines and lineage
    @abc.abstractmethod
    def list_pipelines(self) -> list[PipelineInfo]:
        """The stored pipelines by name, each with its last run."""

    @abc.abstractmethod
    def get_pipeline(self, name: str) -> PipelineInfo: ...

    @abc.abstractmethod
    def apply_pipelines(
        self, pipelines: Sequence[Pipeline], *, source: str = "python", reason: str | None = None
    ) -> list[PipelineInfo]:
        """Store (create or replace) the definitions, each change audited.

        A training step without ``workdir`` (or with a relative one) runs in the folder current
        here when they are applied; the process that runs the pipeline must see that folder.
        """

    @abc.abstractmethod
    def run_pipeline(
        self,
        name: str,
        *,
        trigger: str = "manual",
        params: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> RunInfo:
        """Queue a run; it is executed by a scheduler (``passerelle serve``) or by :meth:`wait_run`."""

    @abc.abstractmethod
    def list_runs(
        self, name: str | None = None, *, state: str | None = None, limit: int = 50
    ) -> list[RunInfo]:
        """Runs of one pipeline or of all, newest first; ``limit`` from 1 to 1000."""

    @abc.abstractmethod
    def get_run(self, ref: str) -> RunInfo:
        """A run by id or by ``PIPELINE#NUMBER``."""

    @abc.abstractmethod
    def cancel_run(self, ref: str, *, reason: str | None = None) -> RunInfo:
        """Cancel a queued or running run; a running one's process group is stopped by its holder."""

    @abc.abstractmethod
    def run_logs(self, ref: str, *, offset: int = 0) -> tuple[str, int]:
        """The run's log from byte ``offset`` (at most 1 MiB, whole characters) and the offset to ask next.

        To follow a run, read its state with :meth:`get_run` first, then its log, until the state
        is terminal and no text is left.
        """

    @abc.abstractmethod
    def wait_run(
        self,
        ref: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_run: Callable[[RunInfo], None] | None = None,
    ) -> RunInfo:
        """Wait for a run and its retries to end; the last attempt as it ended (or as it is at the timeout).

        A local client executes each due attempt in this process unless a server took it first; a
        remote one polls the server, whose scheduler executes it. ``on_run`` is told of each attempt.
        """

    @abc.abstractmethod
    def lineage(self, ref: str) -> dict[str, Any]:
        """Where a version came from and where it went: ``root``, ``nodes`` and ``edges``."""


class LocalClient(Client):
    """Services in-process on the metadata and artifact stores named by the settings."""

    def __init__(self, settings: Settings | None = None, *, actor: str | None = None) -> None:
        self.ctx = Context(settings or load_settings(), actor=actor or "")
        self.registry = Registry(self.ctx)
        self.datasets = Datasets(self.ctx)
        self.endpoints = Endpoints(self.ctx, self.registry)
        # A revision may name a version only once it is proven to load (checksums, flavor, trust).
        self.endpoints.load_check = self._check_loads

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def register(
        self,
        model: Any,
        name: str,
        *,
        flavor: str | None = None,
        sample: Any = None,
        closed: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        dataset: str | None = None,
        description: str = "",
        trust: bool = False,
        reason: str | None = None,
    ) -> VersionInfo:
        return self.registry.register(
            model,
            name,
            flavor=flavor,
            sample=sample,
            closed=closed,
            metrics=metrics,
            params=params,
            tags=tags,
            dataset=dataset,
            description=description,
            trust=trust,
            reason=reason,
        )

    def load(self, ref: str) -> LoadedModel:
        return self.registry.load(ref)

    def list_models(self) -> list[ModelInfo]:
        return self.registry.list_models()

    def get_model(self, name: str) -> tuple[ModelInfo, list[VersionInfo]]:
        return self.registry.get_model(name)

    def get_version(self, ref: str) -> VersionInfo:
        return self.registry.get_version(ref)

    def set_alias(self, model: str, alias: str, number: int, *, reason: str | None = None) -> VersionInfo:
        return self.registry.set_alias(model, alias, number, reason=reason)

    def remove_alias(self, model: str, alias: str, *, reason: str | None = None) -> None:
        self.registry.remove_alias(model, alias, reason=reason)

    def set_tags(
        self,
        ref: str,
        set_: dict[str, Any] | None = None,
        remove: list[str] | None = None,
        *,
        reason: str | None = None,
    ) -> VersionInfo:
        return self.registry.set_tags(ref, set_, remove, reason=reason)

    def set_archived(self, ref: str, archived: bool, *, reason: str | None = None) -> VersionInfo:
        return self.registry.set_archived(ref, archived, reason=reason)

    def register_dataset(
        self, source: str | Path, name: str, *, tags: dict[str, Any] | None = None, reason: str | None = None
    ) -> DatasetVersionInfo:
        return self.datasets.register(source, name, tags=tags, reason=reason)

    def list_datasets(self) -> list[DatasetInfo]:
        return self.datasets.list_datasets()

    def get_dataset(self, ref: str) -> DatasetVersionInfo:
        return self.datasets.get(ref)

    def dataset_versions(self, name: str) -> list[DatasetVersionInfo]:
        return self.datasets.versions(name)

    def audit(
        self,
        *,
        since: dt.datetime | None = None,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        return audit.list_entries(
            self.ctx.store, since=since, target=target, action=action, actor=actor, limit=limit
        )

    def doctor(self, *, audit_anchor: str | None = None) -> DoctorReport:
        from passerelle.store.migrate import head_revision

        store = self.ctx.store
        store.ping()
        problems = self.registry.verify_artifacts()
        chain = audit.verify_chain(store, anchor=audit_anchor)
        if not chain.ok:
            problems.append(f"audit chain: {chain.problem}")
        orphans = self.registry.sweep_orphans(dry_run=True, older_than=dt.timedelta(0))
        with store.read() as session:
            from sqlalchemy import func, select

            from passerelle.store.schema import ModelVersion

            count = session.scalar(select(func.count()).select_from(ModelVersion)) or 0
        return DoctorReport(
            database=self.settings.describe()["database_url"],
            schema_revision=head_revision(store),
            artifact_uri=self.settings.effective_artifact_uri,
            versions_checked=count,
            problems=problems,
            orphans=orphans,
            audit_chain=chain,
        )

    def gc(self, *, dry_run: bool = False) -> list[str]:
        return self.registry.sweep_orphans(dry_run=dry_run)

    def _check_loads(self, ref: str) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an environment difference is not a reason to refuse
            self.registry.load(ref)

    def deploy(self, name: str, spec: DeploySpec, *, reason: str | None = None) -> RevisionInfo:
        return self.endpoints.deploy(name, spec, reason=reason)

    def set_weights(
        self, name: str, routes: list[tuple[str, int]], *, reason: str | None = None
    ) -> RevisionInfo:
        return self.endpoints.set_weights(name, routes, reason=reason)

    def promote(self, name: str, ref: str, *, reason: str | None = None) -> RevisionInfo:
        return self.endpoints.promote(name, ref, reason=reason)

    def rollback(self, name: str, *, to: int | None = None, reason: str | None = None) -> RevisionInfo:
        return self.endpoints.rollback(name, to=to, reason=reason)

    def list_endpoints(self) -> list[EndpointInfo]:
        return self.endpoints.list_endpoints()

    def get_endpoint(self, name: str) -> EndpointDetail:
        return self.endpoints.detail(name)

    def compare(self, name: str, *, since: dt.datetime) -> Comparison:
        from passerelle.serving.compare import compare

        self.endpoints.get(name)
        return compare(self.ctx.store, name, since=since)

    def predictions_tail(self, name: str, *, limit: int = 20) -> list[dict[str, Any]]:
        from passerelle.predictionlog import tail

        self.endpoints.get(name)
        return tail(self.ctx.store, name, limit=limit)

    def predictions_export(
        self, name: str, *, output: Path, since: dt.datetime | None = None, fmt: str = "parquet"
    ) -> int:
        from passerelle.predictionlog import export

        formats: dict[str, Literal["parquet", "csv", "jsonl"]] = {
            "parquet": "parquet",
            "csv": "csv",
            "jsonl": "jsonl",
        }
        if fmt not in formats:
            raise InvalidInputError(f"unknown export format {fmt!r}: choose parquet, csv or jsonl")
        from passerelle.archive import ArchiveLocation

        self.endpoints.get(name)
        # The archive of this client's settings, not of whatever the environment says.
        where = ArchiveLocation.from_settings(self.ctx.settings)
        return export(self.ctx.store, name, since=since, output=output, format=formats[fmt], archive=where)

    def record_feedback(
        self,
        endpoint: str,
        items: Sequence[FeedbackItem | Mapping[str, Any]],
        *,
        on_invalid: Literal["raise", "reject"] = "raise",
        reason: str | None = None,
    ) -> FeedbackResult:
        from passerelle.feedback import record_feedback

        return record_feedback(self.ctx, endpoint, items, on_invalid=on_invalid, reason=reason)

    def feedback_unmatched(
        self, endpoint: str, *, status: str | None = None, limit: int = 1000
    ) -> list[UnmatchedFeedback]:
        from passerelle.feedback import unmatched

        if status not in (None, "waiting", "invalid"):
            raise InvalidInputError(f"status must be waiting or invalid, got {status!r}")
        if isinstance(limit, bool) or not 1 <= limit <= UNMATCHED_MAX:
            raise InvalidInputError(f"limit must be from 1 to {UNMATCHED_MAX}, got {limit!r}")
        self._feedback_endpoint(endpoint)
        return unmatched(self.ctx, endpoint, status=status, limit=limit)

    def rejoin_feedback(self, endpoint: str) -> int:
        from passerelle.feedback import rejoin_unmatched

        self._feedback_endpoint(endpoint)
        return rejoin_unmatched(self.ctx, endpoint)

    def set_monitor(
        self,
        endpoint: str,
        spec: MonitorSpec,
        *,
        enabled: bool = True,
        start: dt.datetime | None = None,
        reason: str | None = None,
    ) -> MonitorInfo:
        from passerelle import monitor

        _check_monitor_spec(spec)
        return monitor.set_monitor(
            self.ctx, endpoint, spec, enabled=enabled, start=_utc(start, "start"), reason=reason or ""
        )

    def get_monitor(self, endpoint: str) -> MonitorInfo:
        from passerelle import monitor

        return monitor.get_monitor(self.ctx, endpoint)

    def list_monitors(self) -> list[MonitorInfo]:
        from passerelle import monitor

        return monitor.list_monitors(self.ctx)

    def remove_monitor(self, endpoint: str, *, reason: str | None = None) -> None:
        from passerelle import monitor

        monitor.remove_monitor(self.ctx, endpoint, reason=reason or "")

    def run_monitors(self, endpoint: str | None = None) -> list[RunSummary]:
        import dataclasses

        from passerelle import monitor
        from passerelle.pipelines import install_alert_trigger

        # Alerts with a pipeline queue a run, as they do inside `passerelle serve`.
        release = install_alert_trigger()
        try:
            summaries = monitor.run(self.ctx, endpoint)
        finally:
            release()
        return [dataclasses.replace(s, results=[_without_sketch(r) for r in s.results]) for s in summaries]

    def monitor_results(
        self,
        endpoint: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        version: str | None = None,
    ) -> list[ResultInfo]:
        from passerelle import monitor

        # An endpoint never monitored is named as such rather than answered with no results.
        monitor.get_monitor(self.ctx, endpoint)
        since, until = _utc(since, "since"), _utc(until, "until")
        return monitor.results(self.ctx, endpoint, since=since, until=until, version=version)

    def monitor_report(
        self, endpoint: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> str:
        from passerelle import monitor, report

        since, until = _utc(since, "since"), _utc(until, "until")
        if since is None and until is not None:
            # The report's default period, computed here where an impossible date can be named.
            try:
                since = until - dt.timedelta(days=7)
            except OverflowError:
                raise InvalidInputError(f"until {until.isoformat()} is out of range") from None
        return report.render(monitor.report_data(self.ctx, endpoint, since=since, until=until))

    def set_alert_rule(self, endpoint: str, spec: RuleSpec, *, reason: str | None = None) -> RuleInfo:
        from passerelle import alerts

        return alerts.set_rule(self.ctx, endpoint, spec, reason=reason or "")

    def list_alert_rules(self, endpoint: str | None = None) -> list[RuleInfo]:
        from passerelle import alerts

        return alerts.list_rules(self.ctx, endpoint)

    def remove_alert_rule(self, endpoint: str, name: str, *, reason: str | None = None) -> None:
        from passerelle import alerts

        alerts.remove_rule(self.ctx, endpoint, name, reason=reason or "")

    def list_alerts(
        self, endpoint: str | None = None, *, state: str | None = None, limit: int = 200
    ) -> list[AlertInfo]:
        from passerelle import alerts

        return alerts.list_alerts(self.ctx, endpoint, state=state, limit=limit)

    def ack_alert(self, alert_id: int, *, reason: str | None = None) -> AlertInfo:
        from passerelle import alerts

        return alerts.ack(self.ctx, check_row_id(alert_id, "alert"), reason=reason or "")

    def silence(
        self, endpoint: str, *, rule: str = "*", duration: dt.timedelta, comment: str = ""
    ) -> SilenceInfo:
        from passerelle import alerts

        return alerts.silence(self.ctx, endpoint, rule=rule, duration=duration, comment=comment)

    def expire_silence(self, silence_id: int, *, reason: str | None = None) -> SilenceInfo:
        from passerelle import alerts

        return alerts.expire_silence(self.ctx, check_row_id(silence_id, "silence"), reason=reason or "")

    def list_silences(self, endpoint: str | None = None, *, active_only: bool = False) -> list[SilenceInfo]:
        from passerelle import alerts

        return alerts.list_silences(self.ctx, endpoint, active_only=active_only)

    def set_notifier(
        self,
        name: str,
        kind: str,
        config: Mapping[str, Any],
        *,
        enabled: bool = True,
        reason: str | None = None,
    ) -> NotifierInfo:
        from passerelle import notify

        return notify.set_notifier(self.ctx, name, kind, config, enabled=enabled, reason=reason or "")

    def list_notifiers(self) -> list[NotifierInfo]:
        from passerelle import notify

        return notify.list_notifiers(self.ctx)

    def remove_notifier(self, name: str, *, reason: str | None = None) -> None:
        from passerelle import notify

        notify.remove_notifier(self.ctx, name, reason=reason or "")

    def test_notifier(self, name: str) -> None:
        from passerelle import notify

        notify.test_notifier(self.ctx, name)

    def notifications(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        from passerelle import notify

        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= NOTIFICATIONS_MAX:
            raise InvalidInputError(
                f"limit must be a whole number from 1 to {NOTIFICATIONS_MAX:,}, got {limit!r}"
            )
        return notify.outbox(self.ctx, status=status, limit=limit)

    def _feedback_endpoint(self, name: str) -> None:
        """Refuse a name that is neither an endpoint nor one batch scoring logged predictions under.

        The same rule and message as recording feedback, so that a mistyped name is reported
        rather than answered with nothing waiting.
        """
        from sqlalchemy import select

        from passerelle.store.schema import Endpoint, Prediction

        with self.ctx.store.read() as session:
            if session.scalar(select(Endpoint.id).where(Endpoint.name == name)) is not None:
                return
            if session.scalar(select(Prediction.id).where(Prediction.endpoint == name).limit(1)) is not None:
                return
        raise NotFoundError(f"endpoint {name!r} does not exist and has no logged predictions")

    def score(
        self,
        ref: str,
        input: str | Path,
        output: str | Path,
        *,
        keep: list[str] | None = None,
        rejects: str | Path | None = None,
        fail_on_reject: bool = False,
        overwrite: bool = False,
        log: bool = False,
        log_endpoint: str | None = None,
        key_column: str | None = None,
        batch_rows: int | None = None,
        engine: str = "local",
        spark_master: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> BatchRunInfo:
        from passerelle.batch import score_file

        return score_file(
            self.ctx,
            ref,
            input,
            output,
            keep=keep or [],
            rejects=rejects,
            fail_on_reject=fail_on_reject,
            overwrite=overwrite,
            log=log,
            log_endpoint=log_endpoint,
            key_column=key_column,
            batch_rows=batch_rows,
            engine=engine,
            spark_master=spark_master,
            progress=progress,
        )

    def batch_runs(self, *, model: str | None = None, limit: int = 50) -> list[BatchRunInfo]:
        from passerelle.batch import list_runs

        return list_runs(self.ctx, model=model, limit=limit)

    def batch_run(self, run_id: str) -> BatchRunInfo:
        from passerelle.batch import get_run

        return get_run(self.ctx, run_id)

    def export(
        self,
        ref: str,
        output: str | Path,
        *,
        fmt: str = "onnx",
        tolerance: float | None = None,
        sample: str | Path | None = None,
        register: str | None = None,
        overwrite: bool = False,
        reason: str | None = None,
    ) -> ExportInfo:
        from passerelle.export import export_model

        return export_model(
            self.ctx,
            ref,
            output,
            fmt=fmt,
            tolerance=tolerance,
            sample=sample,
            register=register,
            overwrite=overwrite,
            reason=reason,
        )

    def close(self) -> None:
        self.ctx.close()

    def erase_predictions(self, endpoint: str, key: str, *, reason: str | None = None) -> Erasure:
        from passerelle.predictionlog import erase_predictions

        return erase_predictions(self.ctx, endpoint, key, reason=reason)

    def apply_retention(self, *, dry_run: bool = False) -> dict[str, int]:
        from passerelle.predictionlog import apply_retention

        return apply_retention(self.ctx, dry_run=dry_run)

    # Whoever can open the store has every right: tokens are for the HTTP API.
    def create_token(
        self,
        name: str,
        role: str,
        *,
        expires_in: dt.timedelta | None = None,
        endpoints: Sequence[str] = (),
        reason: str | None = None,
    ) -> CreatedToken:
        from passerelle.auth import create_token

        return create_token(self.ctx, name, role, expires_in=expires_in, endpoints=endpoints, reason=reason)

    def list_tokens(self) -> list[TokenInfo]:
        from passerelle.auth import list_tokens

        return list_tokens(self.ctx)

    def revoke_token(self, name: str, *, reason: str | None = None) -> TokenInfo:
        from passerelle.auth import revoke_token

        return revoke_token(self.ctx, name, reason=reason)

    def list_pipelines(self) -> list[PipelineInfo]:
        from passerelle.pipelines import list_pipelines

        return list_pipelines(self.ctx)

    def get_pipeline(self, name: str) -> PipelineInfo:
        from passerelle.pipelines import get_pipeline

        return get_pipeline(self.ctx, name)

    def apply_pipelines(
        self, pipelines: Sequence[Pipeline], *, source: str = "python", reason: str | None = None
    ) -> list[PipelineInfo]:
        from passerelle.pipelines import register_pipelines

        return register_pipelines(self.ctx, pipelines, source=source, reason=reason)

    def run_pipeline(
        self,
        name: str,
        *,
        trigger: str = "manual",
        params: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> RunInfo:
        from passerelle.pipelines import start_run

        return start_run(self.ctx, name, trigger, params=dict(params or {}), reason=reason)

    def list_runs(
        self, name: str | None = None, *, state: str | None = None, limit: int = 50
    ) -> list[RunInfo]:
        from passerelle.pipelines import list_runs

        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= RUNS_MAX:
            raise InvalidInputError(f"limit must be a whole number from 1 to {RUNS_MAX}, got {limit!r}")
        return list_runs(self.ctx, name, state=state, limit=limit)

    def get_run(self, ref: str) -> RunInfo:
        from passerelle.pipelines import get_run

        return get_run(self.ctx, ref)

    def cancel_run(self, ref: str, *, reason: str | None = None) -> RunInfo:
        from passerelle.pipelines import cancel_run

        return cancel_run(self.ctx, ref, reason=reason)

    def run_logs(self, ref: str, *, offset: int = 0) -> tuple[str, int]:
        import codecs

        from passerelle.pipelines import ACTIVE_STATES, get_run
        from passerelle.pipelines.runs import log_path

        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInputError(f"offset must be a whole number of bytes, 0 or more, got {offset!r}")
        info = get_run(self.ctx, ref)
        path = Path(info.log_path) if info.log_path else log_path(self.ctx, info.id)
        if not path.is_file():
            if info.state in ACTIVE_STATES:
                return "", offset  # not started, or written by another machine until it ends
            where = f" on the machine that ran it ({info.holder})" if info.holder else ""
            raise NotFoundError(f"the log of run {info.ref} is not here; it was written{where} at {path}")
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(LOG_CHUNK)
        # A character cut by the chunk's end (or by a write under way) is left for the next read;
        # the end of a finished log is decoded as it is.
        final = info.terminal and len(data) < LOG_CHUNK
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=final)
        pending = 0 if final else len(decoder.getstate()[0])
        return text, offset + len(data) - pending

    def wait_run(
        self,
        ref: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_run: Callable[[RunInfo], None] | None = None,
    ) -> RunInfo:
        from passerelle.pipelines import wait

        return wait(self.ctx, ref, execute_here=True, poll_s=poll_s, timeout_s=timeout_s, on_run=on_run)

    def lineage(self, ref: str) -> dict[str, Any]:
        from passerelle.lineage import graph

        return graph(self.ctx, ref)


def _utc(when: dt.datetime | None, what: str) -> dt.datetime | None:
    """``when`` in UTC; a time without a zone is taken as UTC, as the HTTP routes take it."""
    if when is None:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidInputError(f"{what} {when.isoformat()} is out of range") from None


def check_row_id(value: int, what: str) -> int:
    """``value`` as the id of an alert or silence; ids beyond the store's integer column cannot exist."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{what} id must be a whole number, got {value!r}")
    if not 1 <= value <= ROW_ID_MAX:
        raise NotFoundError(f"{what} {value} does not exist")
    return value


def _check_monitor_spec(spec: MonitorSpec) -> None:
    from passerelle.monitor import MonitorSpec

    if not isinstance(spec, MonitorSpec):
        raise InvalidInputError(f"a monitor spec must be a MonitorSpec, got {type(spec).__name__}")
    # A window or delay longer than a year is a typo, and would not fit the store's integer column.
    for what, seconds in (("window", spec.window_s), ("delay", spec.delay_s)):
        if seconds > MONITOR_MAX_S:
            raise InvalidInputError(f"{what} must be at most 366 days, got {seconds} s")


def _without_sketch(result: ResultInfo) -> ResultInfo:
    """A result as :func:`passerelle.monitor.results` gives it: the window's sketch stays in the store."""
    import dataclasses

    return dataclasses.replace(result, details={k: v for k, v in result.details.items() if k != "sketch"})


def connect(settings: Settings | None = None) -> Client:
    """The client the settings call for: remote when a server URL is set, local otherwise."""
    settings = settings or load_settings()
    if settings.url:
        from passerelle.remote import RemoteClient

        return RemoteClient(settings)
    return LocalClient(settings)
