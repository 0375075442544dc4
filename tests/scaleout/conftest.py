"""Real `passerelle serve` processes for the scale-out tests: settings come from the environment only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from passerelle.settings import Settings
from tests.conftest import free_port

EXE = str(Path(sys.executable).with_name("passerelle"))
_SHARED = ("database_url", "artifact_uri", "s3_endpoint_url", "s3_access_key_id", "s3_region")


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The variables a process needs to act on ``settings``' store, and nothing of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_HOME"] = str(settings.home)
    env["PASSERELLE_USER"] = "tester"
    for name in _SHARED:
        value = getattr(settings, name)
        if value:
            env[f"PASSERELLE_{name.upper()}"] = str(value)
    if settings.s3_secret_access_key is not None:
        env["PASSERELLE_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env | extra


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[bytes]
    #: where the process's stderr goes: a file, so a chatty server can never block on a full pipe
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def replicas(*homes: tuple[Path, dict[str, str]], timeout_s: float = 90.0) -> Iterator[list[Replica]]:
    """Start one `passerelle serve` per (home, environment) at once; stop them all at the end."""
    with ExitStack() as stack:
        started: list[Replica] = []
        for home, env in homes:
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            log = home / "serve.stderr"
            handle = stack.enter_context(log.open("wb"))
            proc = subprocess.Popen(
                [EXE, "serve", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=handle,
                start_new_session=True,
            )
            replica = Replica(f"http://127.0.0.1:{port}", proc, log)
            stack.callback(_stop, replica)
            started.append(replica)
        deadline = time.monotonic() + timeout_s
        for replica in started:
            while not _ready(replica.url):
                if replica.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{replica.url} did not become ready:\n{replica.stderr()}")
                time.sleep(0.2)
        yield started


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(replica: Replica) -> None:
    if replica.proc.poll() is not None:
        return
    os.killpg(replica.proc.pid, signal.SIGTERM)
    try:
        replica.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(replica.proc.pid, signal.SIGKILL)
        replica.proc.wait()
