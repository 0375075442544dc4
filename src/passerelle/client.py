"""One client interface for the CLI, the Python API and the console.

:class:`LocalClient` runs the services in-process on the store. A remote implementation
speaking the management API over HTTP implements the same :class:`Client` methods, so
nothing above this layer reaches into the store.
"""

from __future__ import annotations

import abc
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from passerelle import audit
from passerelle.audit import AuditEntry
from passerelle.context import Context
from passerelle.datasets import DatasetInfo, Datasets, DatasetVersionInfo
from passerelle.endpoints import DeploySpec, EndpointDetail, EndpointInfo, Endpoints, RevisionInfo
from passerelle.errors import InvalidInputError, PasserelleError
from passerelle.registry import LoadedModel, ModelInfo, Registry, VersionInfo
from passerelle.serving.compare import Comparison
from passerelle.settings import Settings, load_settings

if TYPE_CHECKING:
    from passerelle.batch import BatchRunInfo, ProgressCallback
    from passerelle.export import ExportInfo


class DoctorReport(BaseModel):
    database: str
    schema_revision: str
    artifact_uri: str
    versions_checked: int
    problems: list[str]
    orphans: list[str]

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
        limit: int = 100,
    ) -> list[AuditEntry]: ...

    @abc.abstractmethod
    def doctor(self) -> DoctorReport: ...

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
        limit: int = 100,
    ) -> list[AuditEntry]:
        return audit.list_entries(self.ctx.store, since=since, target=target, action=action, limit=limit)

    def doctor(self) -> DoctorReport:
        from passerelle.store.migrate import head_revision

        store = self.ctx.store
        store.ping()
        problems = self.registry.verify_artifacts()
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
        self.endpoints.get(name)
        return export(self.ctx.store, name, since=since, output=output, format=formats[fmt])

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


def connect(settings: Settings | None = None) -> Client:
    """The client the settings call for: remote when a server URL is set, local otherwise."""
    settings = settings or load_settings()
    if settings.url:
        from passerelle.remote import RemoteClient

        return RemoteClient(settings)
    return LocalClient(settings)
