"""One client interface for the CLI, the Python API and the console.

:class:`LocalClient` runs the services in-process on the store. A remote implementation
speaking the management API over HTTP implements the same :class:`Client` methods, so
nothing above this layer reaches into the store.
"""

from __future__ import annotations

import abc
import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from passerelle import audit
from passerelle.audit import AuditEntry
from passerelle.context import Context
from passerelle.datasets import DatasetInfo, Datasets, DatasetVersionInfo
from passerelle.registry import LoadedModel, ModelInfo, Registry, VersionInfo
from passerelle.settings import Settings, load_settings


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

    def close(self) -> None:
        self.ctx.close()


def connect(settings: Settings | None = None) -> Client:
    """The client the settings call for (local today; remote when a server URL is set)."""
    return LocalClient(settings)
