"""Leases: one holder at a time, renewal, expiry and take-over, under real concurrency."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.serving import leases
from passerelle.store import Store


@pytest.fixture
def store(backend: str) -> Iterator[Store]:
    s = Store(backend)
    try:
        yield s
    finally:
        s.dispose()


def test_one_holder_renewal_and_release(store: Store) -> None:
    assert leases.holder(store, "canary:churn") is None
    assert leases.acquire(store, "canary:churn", "worker-a", 30)
    assert not leases.acquire(store, "canary:churn", "worker-b", 30)
    assert leases.acquire(store, "canary:churn", "worker-a", 30)  # renewal
    assert leases.holder(store, "canary:churn") == "worker-a"
    assert leases.acquire(store, "monitor:churn", "worker-b", 30)  # another lease is independent
    assert not leases.release(store, "canary:churn", "worker-b")
    assert leases.release(store, "canary:churn", "worker-a")
    assert leases.holder(store, "canary:churn") is None
    assert leases.acquire(store, "canary:churn", "worker-b", 30)
    with pytest.raises(ValueError, match="positive"):
        leases.acquire(store, "canary:churn", "worker-b", 0)


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    assert leases.acquire(store, "job", "dead-worker", 0.3)
    assert not leases.acquire(store, "job", "worker-b", 10)
    time.sleep(0.4)
    assert leases.holder(store, "job") is None
    assert leases.acquire(store, "job", "worker-b", 10)
    assert not leases.acquire(store, "job", "dead-worker", 0.3)
    assert leases.holder(store, "job") == "worker-b"


def contend(store: Store, name: str, contenders: int) -> list[str]:
    """Threads that all ask for ``name`` at the same moment; returns the winners."""
    barrier = threading.Barrier(contenders)
    wins: list[str] = []
    errors: list[BaseException] = []

    def ask(me: str) -> None:
        barrier.wait()
        try:
            if leases.acquire(store, name, me, 30):
                wins.append(me)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(f"t{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return wins


def test_exactly_one_of_many_threads_wins(store: Store) -> None:
    for round_ in range(5):
        wins = contend(store, f"job-{round_}", 8)
        assert len(wins) == 1
        assert leases.holder(store, f"job-{round_}") == wins[0]


CONTENDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from passerelle.serving import leases
    from passerelle.store import Store

    url, name, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = Store(url, migrate=False)
    store.ping()
    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.001)
    print("won" if leases.acquire(store, name, f"pid-{os.getpid()}", 30) else "lost")
    store.dispose()
    """
)


def test_exactly_one_of_many_processes_wins(store: Store, tmp_path: Path) -> None:
    contenders = 3
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, store.url, "canary:churn", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(contenders)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready-*"))) < contenders:
            assert time.monotonic() < deadline, "the contenders did not start"
            assert all(p.poll() is None for p in processes), "a contender died"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outcomes = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            outcomes.append(out.strip())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert sorted(outcomes) == ["lost"] * (contenders - 1) + ["won"]
    assert (leases.holder(store, "canary:churn") or "").startswith("pid-")
