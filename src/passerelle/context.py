"""What every service needs: settings, the metadata store, the artifact store, and who acts."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from passerelle.artifacts import ArtifactStore, storage_options_from_settings
from passerelle.audit import current_user
from passerelle.settings import Settings, load_settings
from passerelle.store import Store


@dataclass
class Context:
    settings: Settings
    actor: str = ""
    _store: Store | None = field(default=None, repr=False)
    _artifacts: ArtifactStore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.actor:
            self.actor = current_user(self.settings.user)

    @functools.cached_property
    def store(self) -> Store:
        return self._store or Store(self.settings.effective_database_url)

    @functools.cached_property
    def artifacts(self) -> ArtifactStore:
        return self._artifacts or ArtifactStore(
            self.settings.effective_artifact_uri,
            storage_options_from_settings(self.settings),
            cache_dir=Path(self.settings.home).resolve() / "cache",
        )

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.dispose()


def default_context() -> Context:
    return Context(load_settings())
