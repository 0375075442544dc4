"""Where a model came from: the code (git commit, dirty tree) it was registered from."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_lineage(cwd: Path | None = None) -> dict[str, Any]:
    """The commit and dirtiness of the git work tree around ``cwd``; empty outside git."""
    where = cwd or Path.cwd()
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    info: dict[str, Any] = {"git_commit": commit, "git_dirty": bool(status)}
    remote = _git(["config", "--get", "remote.origin.url"], where)
    if remote:
        info["git_remote"] = remote
    return info
