"""`passerelle serve` as a real process: the address it accepts with and without --auth, TLS, banners."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from passerelle.client import LocalClient
from passerelle.errors import InvalidInputError
from passerelle.serving.server import ServeOptions, check_bind, with_options
from passerelle.settings import Settings
from tests.conftest import free_port

EXE = str(Path(sys.executable).with_name("passerelle"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    return {**env, "PASSERELLE_HOME": str(home), **extra}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_a_reachable_address_without_auth_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [EXE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0 without authentication: pass --auth" in done.stderr
    assert "--insecure" in done.stderr


def test_serve_with_auth_on_every_address_over_tls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with LocalClient(Settings(home=home)) as local:
        secret = local.create_token("ops", "viewer").secret
    cert, key = _self_signed(tmp_path)
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    port = free_port()
    log = (tmp_path / "out.txt").open("w+")
    proc = subprocess.Popen(
        [EXE, "serve", "--host", "0.0.0.0", "--port", str(port), "--auth", *tls],
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, verify=trusted, timeout=5) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, (tmp_path / "out.txt").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            assert http.get("/api/v1/models").status_code == 401
            answer = http.get("/api/v1/models", headers={"Authorization": f"Bearer {secret}"})
            assert answer.status_code == 200, answer.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    banner = (tmp_path / "out.txt").read_text()
    assert f"serving on https://0.0.0.0:{port}" in banner
    assert "authentication on" in banner


def test_on_loopback_without_auth_a_banner_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # The port is taken, so the server stops right after its banner.
        done = subprocess.run(
            [EXE, "serve", "--port", str(port)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "no authentication (--auth turns it on): only this machine can reach the server" in done.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_the_auth_setting_counts_as_the_flag_and_tls_files_are_checked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, auth=True)
    check_bind(ServeOptions(host="0.0.0.0", auth=settings.auth))
    assert with_options(Settings(home=tmp_path), ServeOptions(auth=True)).auth
    assert not with_options(Settings(home=tmp_path), ServeOptions()).auth
    with pytest.raises(InvalidInputError, match=r"--ssl-certfile .*: no such file"):
        check_bind(ServeOptions(ssl_certfile=str(tmp_path / "missing.pem")))
    with pytest.raises(InvalidInputError, match="--ssl-keyfile needs --ssl-certfile"):
        check_bind(ServeOptions(ssl_keyfile=str(tmp_path / "key.pem")))
