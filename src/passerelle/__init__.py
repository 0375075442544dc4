"""passerelle: take a trained model to a monitored production endpoint, and keep it healthy."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from passerelle.__about__ import __version__
from passerelle.errors import PasserelleError

if TYPE_CHECKING:
    from passerelle.client import Client
    from passerelle.registry import LoadedModel, VersionInfo

__all__ = ["Client", "LocalClient", "PasserelleError", "__version__", "connect", "load", "register"]

_default: tuple[tuple[tuple[str, str], ...], Client] | None = None


def _client() -> Client:
    """The module-level client, rebuilt when the PASSERELLE_* environment changes."""
    global _default
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("PASSERELLE_")))
    if _default is None or _default[0] != env:
        from passerelle.client import connect

        if _default is not None:
            _default[1].close()
        _default = (env, connect())
    return _default[1]


def register(model: Any, name: str, **kwargs: Any) -> VersionInfo:
    """Register ``model`` as a new version of ``name``; see :meth:`passerelle.client.Client.register`."""
    return _client().register(model, name, **kwargs)


def load(ref: str) -> LoadedModel:
    """Load ``churn``, ``churn:3`` or ``churn@champion``, its artifact checked against its sha256."""
    return _client().load(ref)


def __getattr__(name: str) -> Any:
    # The client pulls in SQLAlchemy and pandas; keep `import passerelle` light until it is used.
    if name in {"Client", "LocalClient", "connect"}:
        from passerelle import client

        return getattr(client, name)
    raise AttributeError(name)
