"""The SFTP server's host key, and its rotation in two steps that SSH clients can follow without a warning.

SSH clients pin a server's host key in ``known_hosts``, so a new key is announced before it is used: step one
(``strongroom sftp rotate-host-key``) makes the *next* key, which the running server announces to every client
after login alongside the current one (OpenSSH's ``hostkeys-00@openssh.com``; ``UpdateHostKeys``, on by default
in OpenSSH clients, adds it to ``known_hosts``); step two (``--finish``), once the clients had time to connect,
makes it the key the server proves, keeps only the old key's public half in ``retired/`` and deletes its private
half. The running server reads the files again when they change (``stamp``); no restart.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh

from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction
from ..errors import Conflict
from ..hub import Hub
from ..keyfiles import read_or_create, replace
from ..paths import private_dir


def host_key_path(hub: Hub) -> Path:
    return hub.settings.var_dir / "sftp" / "ssh_host_ed25519_key"


def next_key_path(hub: Hub) -> Path:
    return host_key_path(hub).with_name("ssh_host_ed25519_key.next")


def retired_dir(hub: Hub) -> Path:
    return host_key_path(hub).parent / "retired"


def _new_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519", comment="strongroom-sftp").export_private_key().decode()


def _read(path: Path) -> asyncssh.SSHKey:
    """The key in ``path``, made on first use (mode 0600, appearing whole: concurrent first uses agree)."""
    private_dir(path.parent)
    return asyncssh.import_private_key(read_or_create(path, _new_key))


def host_key(hub: Hub) -> asyncssh.SSHKey:
    """The key the server proves: made on first use and kept in the hub's var dir."""
    return _read(host_key_path(hub))


def next_key(hub: Hub) -> asyncssh.SSHKey | None:
    """The key announced for a rotation under way, or None."""
    path = next_key_path(hub)
    return asyncssh.read_private_key(str(path)) if path.exists() else None


def host_keys(hub: Hub) -> list[asyncssh.SSHKey]:
    """What the server is given: the key it proves first, then the one it announces for the next rotation."""
    upcoming = next_key(hub)
    return [host_key(hub), *([upcoming] if upcoming else [])]


def stamp(hub: Hub) -> tuple[tuple[int, int], ...]:
    """Changes whenever either key file is replaced (inode and mtime), so a running server reloads them."""
    found = []
    for path in (host_key_path(hub), next_key_path(hub)):
        try:
            st = path.stat()
        except FileNotFoundError:
            found.append((0, 0))
        else:
            found.append((st.st_ino, st.st_mtime_ns))
    return tuple(found)


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def begin_rotation(hub: Hub, actor: Actor) -> str:
    """Step one: make the next key (announced from now on); returns its fingerprint."""
    if (announced := next_key(hub)) is not None:
        raise Conflict(f"a rotation is already under way: the next key {fingerprint(announced)} is "
                       "announced; finish it with `strongroom sftp rotate-host-key --finish`")
    current, upcoming = host_key(hub), _read(next_key_path(hub))
    with transaction(hub.sessions) as session:
        audit.record(session, actor, "sftp.host_key.announced", target=f"sftp-host-key:{fingerprint(upcoming)}",
                     details={"current": fingerprint(current)})
    return fingerprint(upcoming)


def finish_rotation(hub: Hub, actor: Actor) -> tuple[str, str]:
    """Step two: the announced key becomes the one the server proves; the old one's public half is kept in
    ``retired/`` (to check a client's report against), its private half is gone. Returns (old, new). Interrupted
    after the key file was replaced, it completes when run again."""
    upcoming = next_key(hub)
    if upcoming is None:
        raise Conflict("no rotation is under way: start one with `strongroom sftp rotate-host-key`")
    old = host_key(hub)
    if old.public_data != upcoming.public_data:
        replace(retired_dir(hub) / f"{_file_name(old)}.pub", old.export_public_key().decode())
        replace(host_key_path(hub), next_key_path(hub).read_text())  # the server proves the old key or the new
        with transaction(hub.sessions) as session:
            audit.record(session, actor, "sftp.host_key.rotated", target=f"sftp-host-key:{fingerprint(upcoming)}",
                         details={"retired": fingerprint(old)})
    next_key_path(hub).unlink()
    return fingerprint(old), fingerprint(upcoming)


def retired_fingerprints(hub: Hub) -> list[str]:
    return sorted(fingerprint(asyncssh.read_public_key(str(p))) for p in retired_dir(hub).glob("*.pub"))


def _file_name(key: asyncssh.SSHKey) -> str:
    return fingerprint(key).removeprefix("SHA256:").replace("/", "_").replace("+", "-")
