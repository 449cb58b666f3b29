"""The airlock's external destinations (issue 20 §3 "an export to each destination kind"): ``s3`` (a bucket
on the test SeaweedFS) and ``sftp`` (an asyncssh server this test starts on 127.0.0.1, rooted in tmp_path).

Each export is approved by two reviewers; what arrives is a crypt4gh stream re-encrypted to the partner's
key, which the reference ``crypt4gh`` library decrypts to the very bytes of the archive. A server whose host
key differs from the one its credential pins is refused; credentials never show in project settings or the audit
trail. The server's address, account and host key are the credential's (the hub's configuration, bound to the
projects it serves), never a project's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crypt4gh.lib
import pytest
from sqlalchemy import select

from conftest import bearer, web_client
from strongroom.archive import c4gh
from strongroom.audit.models import AuditEvent
from strongroom.config import AirlockSettings, Settings
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_airlock import (
    _drain,
    _export,
    _get,
    _put_file,
    _review,
    world,  # noqa: F401 - the fixture: projects, people, reviewers
)

PARTNER = c4gh.generate_keypair()
PARTNER_PEM = c4gh.public_key_file(PARTNER.public).decode()

def _impostor_host_key() -> str:
    """A real host key, but not the test server's."""
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@dataclass
class SftpServer:
    port: int
    root: Path
    host_key_line: str  # known_hosts line of the server's real host key
    client_key_file: Path  # the hub's private key, authorized on the server


@pytest.fixture
def sftp_server(tmp_path) -> Iterator[SftpServer]:
    """A real SSH server with an SFTP subsystem rooted in tmp_path, on its own event loop thread."""
    import asyncssh

    root = tmp_path / "sftp-root"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "hub-sftp-key"
    client_key.write_private_key(str(key_file))
    key_file.chmod(0o600)
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-sftp-server", daemon=True)
    thread.start()

    async def start() -> Any:
        return await asyncssh.create_server(
            asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root).encode()), allow_scp=False)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    port = server.sockets[0].getsockname()[1]
    line = f"[127.0.0.1]:{port} {host_key.export_public_key().decode().strip()}"
    try:
        yield SftpServer(port, root, line, key_file)
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture
def partner_bucket(request) -> tuple[Any, str]:
    """The session's SeaweedFS and a fresh bucket on it."""
    sw = request.getfixturevalue("seaweedfs")
    name = f"partner-{uuid.uuid4().hex[:12]}"
    sw.client().create_bucket(Bucket=name)
    return sw, name


def _sftp_credential(sftp: SftpServer, host_key: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": sftp.port, "username": "strongroom", "host_key": host_key,
            "directory": "/inbox", "private_key_file": str(sftp.client_key_file), "connect_timeout": 5,
            "projects": ["lung"]}


@pytest.fixture
def settings(settings: Settings, partner_bucket: tuple[Any, str], sftp_server: SftpServer) -> Settings:
    """The hub's configuration holds the credentials, by name, each for the projects it serves."""
    sw, bucket = partner_bucket
    return settings.model_copy(update={"airlock": AirlockSettings.model_validate({
        "s3": {"partner-bucket": {"endpoint_url": sw.endpoint_url, "bucket": bucket,
                                  "access_key": sw.access_key, "secret_key": sw.secret_key,
                                  "region": sw.region, "prefix": "from-strongroom/", "verify_tls": False,
                                  "max_attempts": 2, "connect_timeout": 2, "read_timeout": 10,
                                  "projects": ["lung"]}},
        "sftp": {"partner-sftp": _sftp_credential(sftp_server, sftp_server.host_key_line),
                 "impostor-sftp": _sftp_credential(sftp_server, _impostor_host_key())}})})


def _destinations(w, sftp: SftpServer) -> None:
    dests = [{"kind": "s3", "name": "Partner bucket", "credential": "partner-bucket", "prefix": "lung/",
              "public_key": PARTNER_PEM},
             {"kind": "sftp", "name": "Partner SFTP", "credential": "partner-sftp", "public_key": PARTNER_PEM},
             {"kind": "sftp", "name": "Impostor SFTP", "credential": "impostor-sftp", "public_key": PARTNER_PEM},
             {"kind": "s3", "name": "Unconfigured bucket", "credential": "nobody-configured-this",
              "public_key": PARTNER_PEM}]
    r = w["c"].put("/api/v1/projects/lung/settings/egress_destinations", json={"value": dests},
                   headers=bearer(w["t"]["alice"]))
    assert r.status_code == 200, r.text


def _approved_export(w, fid: str, destination: str) -> dict:
    req = _export(w, "sam", [fid], destination)
    assert req.status_code == 201, req.text
    rid = req.json()["id"]
    _drain(w["hub"])
    assert _review(w, rid, "rita").status_code == 200
    assert _review(w, rid, "ron").json()["state"] == "approved"
    _drain(w["hub"])
    return _get(w, rid)


def _decrypt(stream: bytes) -> bytes:
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, PARTNER.secret, None)], io.BytesIO(stream), out)
    return out.getvalue()


def _no_credentials_anywhere(w, secrets: list[str]) -> None:
    hub = w["hub"]
    setting = w["c"].get("/api/v1/projects/lung/settings", headers=bearer(w["t"]["alice"])).text
    with hub.sessions() as s:
        trail = json.dumps([e.details for e in s.scalars(select(AuditEvent))], default=str)
    for secret in secrets:
        assert secret not in setting and secret not in trail


def test_export_to_an_s3_bucket_arrives_encrypted_to_the_partner(
        world, app, partner_bucket, sftp_server) -> None:  # noqa: F811
    w, hub = world, world["hub"]
    sw, bucket = partner_bucket
    _destinations(w, sftp_server)
    data = b"region,cases\nnorth,12\nsouth,40\n" * 3000
    fid = _put_file(hub, "lung", w["p"]["sam"], "out/cases by region.csv", data)
    req = _approved_export(w, fid, "Partner bucket")
    assert req["state"] == "done", req
    [entry] = req["receipt"]["files"]
    assert entry["verified"] and req["receipt"]["all_verified"]
    assert entry["recipient_key"] == c4gh.fingerprint(PARTNER.public)
    key = f"from-strongroom/lung/{req['id']}/{fid}-cases_by_region.csv.c4gh"
    assert entry["location"] == f"s3://{bucket}/{key}"
    stream = sw.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(stream) == entry["stream_size"] and hashlib.sha256(stream).hexdigest() == entry["stream_sha256"]
    assert data not in stream and b"north,12" not in stream  # nothing leaves in plaintext
    assert _decrypt(stream) == data and entry["sha256"] == hashlib.sha256(data).hexdigest()
    with hub.sessions() as s:
        delivered = s.scalars(select(AuditEvent).where(AuditEvent.action == "airlock.file.delivered")).one()
        assert delivered.details["location"] == entry["location"] and delivered.details["to"] == "s3"
    page = web_client(app, hub, w["p"]["rita"]).get(f"/projects/lung/airlock/{req['id']}")
    assert page.status_code == 200 and entry["location"] in page.text
    _no_credentials_anywhere(w, [sw.secret_key, sw.access_key])


def test_export_to_sftp_arrives_encrypted_to_the_partner(world, sftp_server) -> None:  # noqa: F811
    w, hub = world, world["hub"]
    _destinations(w, sftp_server)
    data = "".join(f"line {i}: mean 4.{i % 10}, sd 0.{i % 7}\n" for i in range(20000)).encode()
    fid = _put_file(hub, "lung", w["p"]["sam"], "notes/summary.txt", data)
    req = _approved_export(w, fid, "Partner SFTP")
    assert req["state"] == "done", req
    [entry] = req["receipt"]["files"]
    arrived = sftp_server.root / "inbox" / req["id"] / f"{fid}-summary.txt.c4gh"
    stream = arrived.read_bytes()
    assert entry["location"].endswith(f"/inbox/{req['id']}/{fid}-summary.txt.c4gh")
    assert hashlib.sha256(stream).hexdigest() == entry["stream_sha256"] and len(stream) == entry["stream_size"]
    assert _decrypt(stream) == data
    key_text = sftp_server.client_key_file.read_text()
    _no_credentials_anywhere(w, [key_text.splitlines()[1], str(sftp_server.client_key_file)])


def test_a_wrong_host_key_or_a_missing_credential_is_refused(world, app, sftp_server) -> None:  # noqa: F811
    w, hub = world, world["hub"]
    _destinations(w, sftp_server)
    fid = _put_file(hub, "lung", w["p"]["sam"], "a.txt", b"hello partner\n")
    req = _approved_export(w, fid, "Impostor SFTP")  # its credential pins another host key
    assert req["state"] == "failed" and "host key does not match" in req["reason"], req
    assert req["receipt"]["failed"] == req["reason"] and req["receipt"]["files"] == []
    assert list(sftp_server.root.iterdir()) == []  # nothing was sent
    page = web_client(app, hub, w["p"]["rita"]).get(f"/projects/lung/airlock/{req['id']}")
    assert "Transfer failed" in page.text and "host key does not match" in page.text
    other = _approved_export(w, fid, "Unconfigured bucket")
    assert other["state"] == "failed" and "no S3 credential 'nobody-configured-this'" in other["reason"]
    # a destination carries no secret of its own, nor where the hub connects (the credential's)
    bad = w["c"].put("/api/v1/projects/lung/settings/egress_destinations", headers=bearer(w["t"]["alice"]), json={
        "value": [{"kind": "s3", "name": "x", "credential": "partner-bucket", "public_key": PARTNER_PEM,
                   "secret_key": "inline"}]})
    assert bad.status_code == 422
    bad = w["c"].put("/api/v1/projects/lung/settings/egress_destinations", headers=bearer(w["t"]["alice"]), json={
        "value": [{"kind": "sftp", "name": "x", "credential": "partner-sftp", "host": "h", "username": "u",
                   "public_key": PARTNER_PEM}]})
    assert bad.status_code == 422
