"""Stores for the prediction log tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.store import Store


@pytest.fixture
def store(backend: str) -> Iterator[Store]:
    """A migrated store on each backend in turn."""
    s = Store(backend)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield s
    s.dispose()
