"""PostgreSQL goes away under a running `passerelle serve`, then comes back.

A TCP proxy stands between the server and the database, so the test can cut every connection
and refuse new ones, as a database failover or a network partition would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url

from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec
from passerelle.settings import Settings
from passerelle.store.schema import Prediction
from tests.conftest import free_port
from tests.helpers import small_model
from tests.scaleout.conftest import Replica, environment, replicas

#: longest a management request may take while the database is away: it must fail, not hang
#: (the PostgreSQL connect timeout is 5 s)
FAIL_WITHIN_S = 10.0


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; :meth:`cut` drops everything, :meth:`restore` resumes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        #: accept connections but never forward a byte: a database host that hangs
        self.silent = False

    def restore(self) -> None:
        self.cut()
        self.silent = False
        self._listen()

    def hang(self) -> None:
        """Drop every connection, then accept new ones and leave them without an answer."""
        self.cut()
        self.silent = True
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Close the listening socket (new connections are refused) and every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        with self._lock:
            dropped, self._sockets = self._sockets, set()
        for sock in dropped:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # cut
            if self.silent:
                with self._lock:
                    self._sockets.add(downstream)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    downstream.close()
                    upstream.close()
                    return
                self._sockets |= {downstream, upstream}
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def proxy_to(url: str) -> Iterator[tuple[Proxy, str]]:
    """A proxy to the database of ``url``, and the URL that goes through it."""
    parsed = make_url(url)
    proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxy.restore()
    try:
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.cut()


def _predict(http: httpx.Client, rows: list[dict[Hashable, Any]]) -> list[str]:
    r = http.post("/v1/endpoints/churn-api/predict", json={"dataframe_records": rows})
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert elapsed < FAIL_WITHIN_S, f"took {elapsed:.1f} s to fail"
    body = response.json()
    assert body["error"]["type"] == "Store", body
    message = body["error"]["message"]
    assert "metadata store" in message, message
    assert "Traceback" not in response.text


def test_management_fails_fast_while_predictions_go_on_and_ship_later(
    tmp_path: Path, postgres_url: str
) -> None:
    home = tmp_path / "home"
    model, frame = small_model()
    rows = frame.head(3).to_dict("records")
    with (
        proxy_to(postgres_url) as (proxy, proxied),
        LocalClient(Settings(home=home, database_url=postgres_url)) as admin,
    ):
        assert isinstance(admin, LocalClient)
        admin.register(model, "churn", sample=frame)
        admin.register(small_model(seed=1)[0], "churn", sample=frame)
        admin.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
        settings = Settings(home=home, database_url=proxied)
        with replicas((home, environment(settings, PASSERELLE_MONITOR_INTERVAL_SECONDS="0"))) as [server]:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                before = _predict(http, rows)
                assert http.get("/api/v1/models").status_code == 200

                proxy.cut()
                during: list[str] = []
                for _ in range(20):
                    during += _predict(http, rows)
                _assert_unavailable(*_timed(lambda: http.get("/api/v1/models")))
                _assert_unavailable(
                    *_timed(
                        lambda: http.put(
                            "/api/v1/endpoints/fraud-api",
                            json={"routes": [["churn:2", 100]], "reason": "during the outage"},
                        )
                    )
                )
                # Several requests at once, each on its own dead or refused connection.
                with httpx.Client(base_url=server.url, timeout=30) as other:
                    _assert_unavailable(*_timed(lambda: other.get("/api/v1/endpoints")))
                for _ in range(20):
                    during += _predict(http, rows)

                # Worse than refused: the database host takes connections and never answers.
                proxy.hang()
                for _ in range(20):
                    during += _predict(http, rows)
                _assert_unavailable(*_timed(lambda: http.get("/api/v1/models")))
                for _ in range(20):
                    during += _predict(http, rows)
                # The answered predictions wait on the server's disk, none is in the database yet.
                assert _stored(admin, during) == set()
                assert list((home / "predictions").glob("*.seg"))

                proxy.restore()
                wanted = set(before) | set(during)
                deadline = time.monotonic() + 30
                while (stored := _stored(admin, wanted)) != wanted and time.monotonic() < deadline:
                    time.sleep(0.25)
                assert wanted - stored == set(), f"{len(wanted - stored)} answered predictions never shipped"
                r = http.get("/api/v1/models")
                assert r.status_code == 200, r.text
                assert [m["name"] for m in r.json()] == ["churn"]
                r = http.put(
                    "/api/v1/endpoints/fraud-api",
                    json={"routes": [["churn:2", 100]], "reason": "after the outage"},
                )
                assert r.status_code == 200, r.text
            _no_internal_error(server)
        # The deploy refused during the outage left nothing: the one after it is revision 1.
        assert [r.number for r in admin.get_endpoint("fraud-api").revisions] == [1]
        assert admin.doctor().ok


def _stored(client: LocalClient, ids: list[str] | set[str]) -> set[str]:
    with client.ctx.store.read() as session:
        return set(session.scalars(select(Prediction.id).where(Prediction.id.in_(list(ids)))))


def _no_internal_error(server: Replica) -> None:
    """Every failed request was the database's expected failure, none an unexpected one (500)."""
    logs = server.stderr()
    assert "internal error (request id" not in logs, logs
    assert "Store (request id" in logs
