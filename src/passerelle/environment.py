"""Record the environment a model was registered in, and compare it with the one loading it."""

from __future__ import annotations

import functools
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    # Scanning every installed distribution takes a quarter of a second: do it once per process.
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def distributions_of(names: list[str]) -> list[str]:
    """The installed distributions providing the top-level packages of dotted ``names``, in order."""
    found: list[str] = []
    for name in names:
        for dist in _module_owners().get(name.split(".")[0].split(":")[0], []):
            if dist not in found:
                found.append(dist)
    return found


def capture(libraries: list[str]) -> dict[str, Any]:
    packages = {}
    for name in sorted(set(libraries)):
        found = package_version(name)
        if found is not None:
            packages[name] = found
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "packages": packages,
    }


def differences(recorded: dict[str, Any], current: dict[str, Any] | None = None) -> list[str]:
    """Human-readable differences between a recorded environment and this one."""
    if not recorded:
        return []
    now = current or capture(list(recorded.get("packages", {})))
    diffs: list[str] = []
    old_py, new_py = recorded.get("python"), now.get("python")
    if old_py and new_py and old_py.split(".")[:2] != new_py.split(".")[:2]:
        diffs.append(f"python {old_py} -> {new_py}")
    for name, old in sorted(recorded.get("packages", {}).items()):
        new = now.get("packages", {}).get(name)
        if new is None:
            diffs.append(f"{name} {old} -> not installed")
        elif new != old:
            diffs.append(f"{name} {old} -> {new}")
    return diffs
