"""Serve an app for real (uvicorn on a loopback port) for tests that use HTTP clients or the CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_slice() -> range:
    """This process's own slice of the ports below the kernel's ephemeral range: each xdist worker walks its
    own, so two workers never hand out the same port."""
    low, high = 10000, max(_ephemeral_low(), 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (high - low) // max(count, 1)
    return range(low + index * width, low + (index + 1) * width)


_slice = _port_slice()
_next = itertools.count(os.getpid() % len(_slice))  # two separate runs start at different places


def free_port() -> int:
    """A loopback port no one listens on, for a test server — from below the kernel's ephemeral range, so
    no outbound connection or port-0 bind can take it between this pick and the server's bind, nor while
    the server is down for a restart on the same port (a SeaweedFS restart once failed exactly so)."""
    for _ in range(len(_slice)):
        port = _slice[next(_next) % len(_slice)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port still in TIME_WAIT is skipped too
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_slice}")


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), for serving over TLS to clients that insist on https;
    clients trust it as their CA file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@contextmanager
def serving(app, port: int | None = None, *, sock: socket.socket | None = None,
            tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve on ``port``, or on an already bound ``sock`` (so nothing can take the port meanwhile);
    with ``tls`` (certificate, key: `self_signed_cert`) over https."""
    port = sock.getsockname()[1] if sock is not None else port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="on", ssl_certfile=tls and str(tls[0]),
                                           ssl_keyfile=tls and str(tls[1])))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]} if sock else {}, daemon=True,
                              name="uvicorn-test")
    thread.start()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(tls[0])) if tls else True
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not shut down"
