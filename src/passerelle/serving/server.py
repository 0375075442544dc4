"""``passerelle serve``: one or several worker processes answering on one port.

Several workers each bind their own socket with ``SO_REUSEPORT`` so the kernel spreads
connections across them: with one shared listening socket, keep-alive clients all tend to
land on whichever worker accepted first, and the other cores idle. Each worker also caps
its native thread pools (OpenMP, BLAS) to its share of the cores so workers do not fight
over them under load.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from passerelle.errors import InvalidInputError
from passerelle.settings import Settings

log = logging.getLogger("passerelle.server")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    insecure: bool = False
    fsync: bool = True
    log_level: str = "warning"
    threads_per_worker: int | None = None
    #: require API tokens (also turned on by the auth setting, PASSERELLE_AUTH=1)
    auth: bool = False
    #: TLS: a PEM certificate (chain), and its key unless the certificate file holds it
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(options: ServeOptions) -> None:
    """Refuse what must not start: a reachable address without authentication, unless insisted on."""
    if not is_loopback(options.host) and not options.auth and not options.insecure:
        raise InvalidInputError(
            f"refusing to listen on {options.host} without authentication: pass --auth to require API "
            "tokens (create them with 'passerelle tokens create'), or --insecure to let anyone who "
            "reaches this address do anything"
        )
    if options.workers < 1:
        raise InvalidInputError("--workers must be at least 1")
    if options.ssl_keyfile and not options.ssl_certfile:
        raise InvalidInputError("--ssl-keyfile needs --ssl-certfile")
    for flag, path in (("--ssl-certfile", options.ssl_certfile), ("--ssl-keyfile", options.ssl_keyfile)):
        if path is not None and not os.path.isfile(path):
            raise InvalidInputError(f"{flag} {path}: no such file")


def with_options(settings: Settings, options: ServeOptions) -> Settings:
    """``settings`` as the server runs them: --auth turns authentication on, never off."""
    if options.auth and not settings.auth:
        return settings.model_copy(update={"auth": True})
    return settings


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(
    settings: Settings, options: ServeOptions, index: int, sock: socket.socket | None = None
) -> None:
    """Serve in this process until told to stop."""
    import uvicorn

    from passerelle.serving.app import create_serving_app
    from passerelle.serving.threads import limit_native_threads

    threads = options.threads_per_worker or max(1, (os.cpu_count() or 1) // options.workers)
    limit_native_threads(threads)
    if sock is None:
        sock = bind_socket(options.host, options.port, reuse_port=options.workers > 1)
    app = create_serving_app(
        with_options(settings, options), fsync=options.fsync, worker=f"{socket.gethostname()}-{os.getpid()}"
    )
    config = uvicorn.Config(
        app,
        log_level=options.log_level,
        access_log=False,
        loop=_best("uvloop", "auto"),
        http=_best("httptools", "auto"),
        timeout_graceful_shutdown=10,
        lifespan="on",
        ssl_certfile=options.ssl_certfile,
        ssl_keyfile=options.ssl_keyfile,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def _best(module: str, fallback: str) -> Any:
    try:
        __import__(module)
    except ImportError:
        return fallback
    return module


def _child(settings_json: str, options: ServeOptions, index: int) -> None:
    settings = Settings.model_validate_json(settings_json)
    run_worker(settings, options, index)


def serve(settings: Settings, options: ServeOptions) -> None:
    """Run the gateway; with several workers, supervise them and restart any that dies."""
    check_bind(options)
    if options.workers == 1:
        sock = bind_socket(options.host, options.port, reuse_port=False)
        run_worker(settings, options, 0, sock)
        return
    # Fail fast on a taken port before starting children that would each fail alone.
    probe = bind_socket(options.host, options.port, reuse_port=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="passerelle-metrics-"))
    ctx = multiprocessing.get_context("spawn")
    settings_json = settings.model_dump_json()
    children: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(index: int) -> None:
        proc = ctx.Process(
            target=_child, args=(settings_json, options, index), name=f"passerelle-worker-{index}"
        )
        proc.start()
        children[index] = proc

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(options.workers):
        start(index)
    probe.close()
    while not stopping:
        time.sleep(0.5)
        for index, proc in list(children.items()):
            if not proc.is_alive() and not stopping:
                from passerelle.serving.metrics import worker_exited

                if proc.pid is not None:
                    worker_exited(proc.pid)
                log.error("worker %s exited with %s; restarting it", index, proc.exitcode)
                print(f"passerelle: worker {index} exited ({proc.exitcode}); restarting", file=sys.stderr)
                start(index)
    deadline = time.monotonic() + 15
    for proc in children.values():
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()


@contextlib.contextmanager
def background_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` from a thread of this process until the block ends; yields its base URL.

    For the demo and tests: a real socket and real HTTP, without a second process.
    """
    import threading

    import uvicorn

    sock = bind_socket(host, port, reuse_port=False)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", loop=_best("uvloop", "auto")
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="passerelle-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()
