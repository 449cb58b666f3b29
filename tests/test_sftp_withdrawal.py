"""Withdrawing access reaches SFTP: the real OpenSSH ``sftp`` client for new logins and an asyncssh client holding
a file open, against the server of test_sftp's ``world``.

- A password change, an MFA reset or a deactivation (identity's ``revoke_access``) removes every SSH key of the
  user with their sessions and tokens (sftp hooks ``CREDENTIAL_REVOKERS``), audited with the fingerprints.
- A removed key, a removed member or a download lock ends an open read handle at its next read; a removed
  member's open upload fails at its next write.
"""
# ruff: noqa: F811 - `world` is test_sftp's fixture, imported here and taken as the tests' argument

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import PASSWORD, Person, bearer, token_for, web_client
from helpers import csrf_for
from strongroom.archive.models import ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.identity.models import User
from strongroom.projects import service as projects
from strongroom.sftp import service as sftp_service
from strongroom.sftp.models import SftpUpload, SshKey
from test_sftp import Hubsftp, _allow_downloads, _events, _fresh, _ingest, world  # noqa: F401

FILE = "/lung/uploads/scan.bin"
DATA = os.urandom(3 * 1024 * 1024)  # larger than one read window: later reads go back to storage
CHUNK = 64 * 1024


def _fingerprint(world: Hubsftp, who: str) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(world.keys[who].with_suffix(".pub"))], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]


def _user_id(hub, who: str) -> Any:
    with hub.sessions() as s:
        return s.scalar(select(User.id).where(User.email == f"{who}@example.org"))


def _person(hub, who: str) -> Person:
    """One of ``world``'s people, to act as them (a browser session, a token)."""
    with hub.sessions() as s:
        return Person(user=s.scalar(select(User).where(User.email == f"{who}@example.org")), username=who, seed=None)


def _archived(world: Hubsftp, *, downloads: bool = True) -> None:
    src = world.tmp / "scan.bin"
    src.write_bytes(DATA)
    r = world.sftp("alice", f"put {src} {FILE}")
    assert r.returncode == 0, r.stderr
    _ingest(world.hub)
    _allow_downloads(world.hub, "lung", downloads)


def _with_bob_in_lung(hub) -> None:
    with transaction(hub.sessions) as s:
        pi = _fresh(s, "alice")
        projects.add_member(s, pi, projects.open_project(s, pi, "lung"), "bob", role="member", fresh_minutes=10)


def _remove_bob_from_lung(hub) -> None:
    bob = _user_id(hub, "bob")
    with transaction(hub.sessions) as s:
        pi = _fresh(s, "alice")
        projects.remove_member(s, pi, projects.open_project(s, pi, "lung"), bob)


def _holding_open(world: Hubsftp, who: str, path: str, withdraw: Callable[[], None],
                  then: Callable[[asyncssh.SFTPClientFile], Awaitable[Any]], *, mode: str = "rb",
                  before: Callable[[asyncssh.SFTPClientFile], Awaitable[Any]] | None = None) -> Any:
    """Open ``path`` as ``who`` (asyncssh client, pinned host key), use it once (``before``, default: read the
    first chunk), run ``withdraw`` (in this thread, while the handle stays open), then ``then`` on the same
    handle; returns what ``then`` returned or raised."""

    async def go() -> Any:
        key = asyncssh.read_private_key(str(world.keys[who]))
        async with asyncssh.connect("127.0.0.1", world.port, username=who, client_keys=[key],
                                    known_hosts=str(world.known_hosts)) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open(path, mode)
            if before is None:
                assert await f.read(CHUNK, 0) == DATA[:CHUNK]
            else:
                await before(f)
            await asyncio.to_thread(withdraw)
            try:
                return await then(f)
            except asyncssh.SFTPError as exc:
                return exc
            finally:
                with contextlib.suppress(asyncssh.SFTPError):  # closing a refused handle may fail too
                    await f.close()

    return asyncio.run(go())


async def _read_rest(f: asyncssh.SFTPClientFile) -> Any:
    return await f.read(len(DATA), CHUNK)


def _refused(result: Any) -> None:
    assert isinstance(result, asyncssh.SFTPPermissionDenied), f"the open handle still read: {type(result)}"
    assert "withdrawn" in result.reason


def _login_refused(world: Hubsftp, who: str) -> None:
    r = world.sftp(who, "ls /")
    assert r.returncode != 0 and "Permission denied (publickey)" in r.stderr, (r.returncode, r.stderr)


# -- withdrawal of the user's access: the keys go ------------------------------------------------------------------
def _reset_mfa(app, hub, people) -> None:
    admin = people("root", admin=True)
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    r = api.post(f"/api/v1/admin/users/{_user_id(hub, 'alice')}/mfa-reset", headers=bearer(token_for(hub, admin)))
    assert r.status_code == 204, r.text


def _change_password(app, hub, people) -> None:
    c = web_client(app, hub, _person(hub, "alice"))
    r = c.post("/account/password", data={"current_password": PASSWORD, "new_password": "a quite different one 42",
                                          "new_password_again": "a quite different one 42",
                                          "csrf_token": csrf_for(c)})
    assert r.status_code == 200 and "Password changed." in r.text, r.text[:500]


def _deactivate(app, hub, people) -> None:
    admin = people("root", admin=True)
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    r = api.post(f"/api/v1/admin/users/{_user_id(hub, 'alice')}/deactivate", headers=bearer(token_for(hub, admin)))
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("withdraw, reason", [(_reset_mfa, "mfa reset"), (_change_password, "password changed"),
                                              (_deactivate, "account deactivated")],
                         ids=["reset-mfa", "password-change", "deactivation"])
def test_withdrawing_access_removes_ssh_keys_and_ends_open_reads(app, world: Hubsftp, people, withdraw,
                                                                 reason) -> None:
    hub = world.hub
    _archived(world)
    fingerprint = _fingerprint(world, "alice")
    token = token_for(hub, _person(hub, "alice"))
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    assert api.get("/api/v1/me", headers=bearer(token)).status_code == 200

    result = _holding_open(world, "alice", FILE, lambda: withdraw(app, hub, people), _read_rest)
    _refused(result)
    assert api.get("/api/v1/me", headers=bearer(token)).status_code == 401  # the tokens went as before
    _login_refused(world, "alice")
    alice, bob = _user_id(hub, "alice"), _user_id(hub, "bob")
    with hub.sessions() as s:
        assert s.scalar(select(SshKey.id).where(SshKey.user_id == alice)) is None
        assert s.scalar(select(SshKey.id).where(SshKey.user_id == bob)) is not None  # only hers
        removed = s.scalar(select(AuditEvent).where(AuditEvent.action == "sftp.key.removed"))
        assert removed.target == f"ssh-key:{fingerprint}" and removed.details == {"reason": reason}
    revoked = [d for a, d in _events(hub, "user.access_revoked") if d["reason"] == reason]
    assert revoked and revoked[-1]["ssh_keys"] == [fingerprint]
    refused = [d for a, d in _events(hub, "archive.download.refused")]
    assert refused and refused[-1]["open_handle"] is True and refused[-1]["bytes_sent"] == CHUNK
    # bob's key and data are untouched
    assert world.sftp("bob", "ls /heart").returncode == 0


# -- the key, the membership, the download rule: an open read ends at its next read ------------------------------
def _remove_key(app, hub) -> None:
    bob = _person(hub, "bob")
    with hub.sessions() as s:
        key_id = s.scalar(select(SshKey.id).where(SshKey.user_id == bob.user.id))
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    r = api.delete(f"/api/v1/me/ssh-keys/{key_id}", headers=bearer(token_for(hub, bob)))
    assert r.status_code == 204, r.text


def _lock_downloads(app, hub) -> None:
    with transaction(hub.sessions) as s:
        pi = _fresh(s, "alice")
        projects.change_setting(s, pi, projects.open_project(s, pi, "lung"), "download_allowed", False,
                                fresh_minutes=15)


@pytest.mark.parametrize("change", ["key-removed", "removed-from-project", "downloads-locked"])
def test_open_read_ends_at_its_next_read(app, world: Hubsftp, change: str) -> None:
    hub = world.hub
    _archived(world)
    _with_bob_in_lung(hub)
    out = world.tmp / "before.bin"
    assert world.sftp("bob", f"get {FILE} {out}").returncode == 0 and out.read_bytes() == DATA
    withdraw = {"key-removed": lambda: _remove_key(app, hub),
                "removed-from-project": lambda: _remove_bob_from_lung(hub),
                "downloads-locked": lambda: _lock_downloads(app, hub)}[change]

    _refused(_holding_open(world, "bob", FILE, withdraw, _read_rest))
    # and a new session cannot start what the open one was refused
    again = world.tmp / "after.bin"
    r = world.sftp("bob", f"get {FILE} {again}")
    assert r.returncode != 0 and not again.exists()
    if change == "key-removed":
        assert "Permission denied (publickey)" in r.stderr
    elif change == "removed-from-project":
        assert "No such file" in r.stderr or "not found" in r.stderr.lower()
        assert "lung" not in world.sftp("bob", "ls /").stdout
    else:
        assert "Permission denied" in r.stderr
    details = [d for _a, d in _events(hub, "archive.download.refused") if d.get("open_handle")]
    assert len(details) == 1 and details[0]["via"] == "sftp"


def test_an_unchanged_handle_reads_to_the_end(world: Hubsftp, monkeypatch) -> None:
    """The re-check lets an allowed read through, also its full re-check (made due on every read here)."""
    monkeypatch.setattr(sftp_service, "RECHECK_SECONDS", 0.0)
    _archived(world)

    async def read_all(f: asyncssh.SFTPClientFile) -> bytes:
        return await f.read(len(DATA), CHUNK)

    assert _holding_open(world, "alice", FILE, lambda: None, read_all) == DATA[CHUNK:]


# -- an open upload ------------------------------------------------------------------------------------------------
def test_open_upload_fails_at_its_next_write_after_removal_from_the_project(world: Hubsftp) -> None:
    hub = world.hub
    _with_bob_in_lung(hub)
    path = "/lung/uploads/bob/run.bin"
    part = os.urandom(1024 * 1024)

    async def first_write(f: asyncssh.SFTPClientFile) -> None:
        await f.write(part, 0)

    async def next_write(f: asyncssh.SFTPClientFile) -> Any:
        return await f.write(part, len(part))

    result = _holding_open(world, "bob", path, lambda: _remove_bob_from_lung(hub), next_write, mode="wb",
                           before=first_write)
    assert isinstance(result, asyncssh.SFTPPermissionDenied), f"the removed member still wrote: {result!r}"
    assert "withdrawn" in result.reason
    events = _events(hub, "sftp.upload.refused")
    assert len(events) == 1 and "no project" in events[0][1]["reason"]
    # nothing more was stored and nothing completed: the upload stays unfinished, with no bytes
    _ingest(hub)
    with hub.sessions() as s:
        f = s.scalar(select(ArchiveFile).where(ArchiveFile.path == "bob/run.bin"))
        assert f.state == "receiving" and s.get(SftpUpload, f.id).received == 0
