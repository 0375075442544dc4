"""kill -9 in the middle of a policy change, on SQLite and PostgreSQL: the old policy stays whole."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from passerelle import monitor
from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.errors import NotFoundError
from passerelle.settings import Settings
from tests.helpers import small_model
from tests.scaleout.conftest import environment

_CHANGES = {
    # Moves churn-api to churn:2 and churn@champion with it, in one revision.
    "promote": "c.promote('churn-api', 'churn:2', reason='crash test')",
    # Creates an endpoint, its first revision, its monitor and its alert rules.
    "deploy": "c.deploy('fraud-api', DeploySpec(routes=[('churn:2', 100)]), reason='crash test')",
}
_SCRIPT = """
from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
with LocalClient() as c:
    {change}
"""


def test_kill_during_policy_changes_leaves_every_policy_whole(backend: str, tmp_path: Path) -> None:
    """Two changes at once: the first holds the locks at its commit and dies; the one waiting behind
    it then gets through to its own commit and dies too. Neither leaves anything behind."""
    settings = Settings(home=tmp_path / "home", database_url=backend)
    model, frame = small_model()
    with LocalClient(settings) as c:
        c.register(model, "churn", sample=frame)
        c.register(small_model(seed=1)[0], "churn", sample=frame)
        c.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        records = len(c.audit(limit=10_000))
    env = environment(settings, PASSERELLE_FAILPOINTS="endpoints.before_commit=pause")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _SCRIPT.format(change=change)], env=env, stderr=subprocess.PIPE, text=True
        )
        for name, change in _CHANGES.items()
    }
    try:
        killed = _kill_each_at_its_failpoint(procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert sorted(killed) == sorted(_CHANGES)

    with LocalClient(settings) as c:
        # The endpoint is exactly as before: its revision, its policy, its alias, its history.
        detail = c.get_endpoint("churn-api")
        assert detail.endpoint.revision == 1
        assert [(r.ref, r.weight) for r in detail.endpoint.policy.routes] == [("churn:1", 100)]
        assert [r.number for r in detail.revisions] == [1]
        assert c.get_version("churn:2").aliases == []
        # The new endpoint does not exist at all: no revision, no monitor, no alert rule.
        assert [e.name for e in c.list_endpoints()] == ["churn-api"]
        with pytest.raises(NotFoundError):
            monitor.get_monitor(c.ctx, "fraud-api")
        assert [r.name for r in c.list_alert_rules() if r.endpoint == "fraud-api"] == []
        assert len(c.audit(limit=10_000)) == records
        report = c.doctor()
        assert report.ok, report.problems
        # Nothing the dead processes held (row locks, the audit lock, SQLite's write lock) is left.
        assert c.promote("churn-api", "churn:2", reason="after the crash").number == 2
        assert c.get_version("churn:2").aliases == ["champion"]
        assert c.deploy("fraud-api", DeploySpec(routes=[("churn:2", 100)])).number == 1
        assert monitor.get_monitor(c.ctx, "fraud-api").endpoint == "fraud-api"
        assert len(c.audit(limit=10_000)) > records
        assert c.doctor().ok


def _kill_each_at_its_failpoint(procs: dict[str, subprocess.Popen[str]], timeout_s: float = 120) -> list[str]:
    """kill -9 each process as soon as it reports its failpoint, in the order they reach it."""
    killed: list[str] = []
    with selectors.DefaultSelector() as selector:
        for name, proc in procs.items():
            assert proc.stderr is not None
            selector.register(proc.stderr, selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout_s
        while len(killed) < len(procs):
            ready = selector.select(timeout=max(0.0, deadline - time.monotonic()))
            assert ready, f"only {killed} reached the failpoint within {timeout_s} s"
            for key, _ in ready:
                name = key.data
                proc = procs[name]
                line = proc.stderr.readline() if proc.stderr is not None else ""
                assert "failpoint endpoints.before_commit reached" in line, f"{name}: {line}"
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                selector.unregister(key.fileobj)
                killed.append(name)
    return killed
