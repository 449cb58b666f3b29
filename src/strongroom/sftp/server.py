"""The SFTP server (asyncssh): public-key logins with registered keys, the SFTP subsystem only (no shell, no
exec, no forwarding), each operation answered by ``service`` in a worker thread.

Errors map to SFTP statuses: NotFound → "no such file" (also for projects one is not in), PermissionDenied /
Forbidden → "permission denied" with the hub's message, anything else the hub refuses → "failure" with
its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import asyncssh
import structlog
from asyncssh import SFTPAttrs, SFTPName
from sqlalchemy import select

from ..audit import service as audit
from ..db import open_session, transaction
from ..errors import DomainError, Forbidden, MfaRequired, NotFound
from ..hub import Hub
from . import hostkeys, paths, service
from .models import SshKey

log = structlog.get_logger("strongroom.sftp")
T = TypeVar("T")

FILE_RO, FILE_RW, DIR_RO, DIR_RW = 0o100440, 0o100640, 0o040550, 0o040750


def _sftp_error(exc: Exception) -> asyncssh.SFTPError:
    if isinstance(exc, asyncssh.SFTPError):
        return exc
    if isinstance(exc, NotFound):
        return asyncssh.SFTPNoSuchFile(exc.detail)
    if isinstance(exc, service.PermissionDenied | Forbidden | MfaRequired):
        return asyncssh.SFTPPermissionDenied(exc.detail)
    if isinstance(exc, DomainError):
        return asyncssh.SFTPFailure(exc.detail)
    if isinstance(exc, paths.NoSuchPath):
        return asyncssh.SFTPNoSuchFile("no such file or directory")
    log.exception("sftp.error", exc_info=exc)
    return asyncssh.SFTPFailure("the hub could not complete this operation")


async def _run(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    try:
        return await asyncio.to_thread(functools.partial(fn, *args, **kw))
    except Exception as exc:
        raise _sftp_error(exc) from exc


def _attrs(entry: service.Entry) -> SFTPAttrs:
    mode = ((DIR_RW if entry.writable else DIR_RO) if entry.is_dir
            else (FILE_RW if entry.writable else FILE_RO))
    stamp = int(entry.mtime.timestamp()) if entry.mtime else None
    return SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY if entry.is_dir else asyncssh.FILEXFER_TYPE_REGULAR,
                     size=entry.size, permissions=mode, atime=stamp, mtime=stamp, uid=0, gid=0,
                     owner="strongroom", group="strongroom")


class _Login(asyncssh.SSHServer):
    """Public keys registered on the hub, nothing else."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.key_id: uuid.UUID | None = None
        self.ip: str | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self.ip = peer[0] if peer else None

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")

        def known() -> bool:
            with open_session(self.hub.sessions) as session:
                return session.scalar(select(SshKey.id).where(SshKey.fingerprint == fingerprint)) is not None
        return await asyncio.to_thread(known)


class HubSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one user: paths are the layout of ``paths``; nothing maps to a local file."""

    def __init__(self, chan: asyncssh.SSHServerChannel, hub: Hub) -> None:
        super().__init__(chan)
        self.hub = hub
        conn = chan.get_connection()
        self.key_id: uuid.UUID = conn.get_extra_info("strongroom_key_id")
        self.ip: str | None = conn.get_extra_info("peername", ("",))[0] or None
        self._storing: dict[int, asyncio.Future[None]] = {}  # upload handle → its part being stored
        self.made: set[str] = set()  # folders made in upload areas this session (they exist once files do)

    # -- helpers ----------------------------------------------------------------------------------
    def _principal(self, session: Any) -> Any:
        return service.key_principal(session, self.key_id, self.ip)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with open_session(self.hub.sessions) as session:
            return fn(session, self._principal(session), *args)

    # -- paths ------------------------------------------------------------------------------------
    def format_user(self, _uid: int | None) -> str:
        return "strongroom"

    def format_group(self, _gid: int | None) -> str:
        return "strongroom"

    def realpath(self, path: bytes) -> bytes:
        try:
            return paths.normalize(path).encode()
        except (paths.NoSuchPath, UnicodeDecodeError) as exc:
            raise asyncssh.SFTPNoSuchFile("no such file or directory") from exc

    async def stat(self, path: bytes) -> SFTPAttrs:
        return _attrs(await self._stat(_where(path)))

    async def _stat(self, where: paths.Where) -> service.Entry:
        try:
            return await _run(self._read, service.stat, where)
        except asyncssh.SFTPNoSuchFile:
            if where.kind == "uploads" and f"{where.slug}/{where.rest}" in self.made:
                return service.Entry(where.rest.rsplit("/", 1)[-1], True, writable=True)
            raise

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self.stat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        where = _where(path)
        entry = await self._stat(where)
        if not entry.is_dir:
            raise asyncssh.SFTPNoSuchFile("not a directory")
        yield SFTPName(b".", attrs=_attrs(entry))
        yield SFTPName(b"..", attrs=_attrs(service.Entry("..", True)))
        cursor: str | None = None
        shown: set[str] = set()
        while True:  # one page of rows per query; the SFTP layer sends 128 names per READDIR reply
            try:
                page, cursor = await _run(self._read, service.list_page, where, cursor)
            except asyncssh.SFTPNoSuchFile:
                if f"{where.slug}/{where.rest}" in self.made:
                    return  # a folder made this session, still empty
                raise
            for _key, item in page:
                if item.is_dir:
                    if item.name in shown:
                        continue
                    shown.add(item.name)
                yield SFTPName(item.name.encode(), attrs=_attrs(item))
            if cursor is None:
                return

    # -- files ------------------------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        where = _where(path)
        if pflags & asyncssh.FXF_WRITE:
            if pflags & asyncssh.FXF_READ:
                raise asyncssh.SFTPPermissionDenied("open files for reading or for writing, not both")
            return await _run(service.open_write, self.hub, self.key_id, self.ip, where,
                              truncate=bool(pflags & asyncssh.FXF_TRUNC))

        def opening() -> service.Reading:
            with transaction(self.hub.sessions) as session:
                return service.open_read(self.hub, session, self._principal(session), where, key_id=self.key_id)
        return await _run(opening)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if not isinstance(file_obj, service.Reading):
            raise asyncssh.SFTPPermissionDenied("this file is open for writing")
        return await _run(file_obj.read, offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        if not isinstance(file_obj, service.Writing):
            raise asyncssh.SFTPPermissionDenied("this file is open for reading")
        # May the writer still write here (key, account, membership, right)? One indexed query (reads check
        # inside Reading.read); a removed member's next write fails.
        await _run(file_obj.check)
        try:
            full = file_obj.accept(offset, data)  # memory only
        except Exception as exc:
            raise _sftp_error(exc) from exc
        if full:
            # One part is stored (encrypted, written, committed) while the next one arrives: wait for the
            # previous part first (at most one in flight, so memory stays at about two parts per upload).
            await self._settle(file_obj)
            self._storing[id(file_obj)] = asyncio.ensure_future(_run(file_obj.store_part, file_obj.take_part()))
        return len(data)

    async def _settle(self, file_obj: service.Writing) -> None:
        """Wait for the part being stored; its error (over quota, storage) is this operation's error."""
        pending = self._storing.pop(id(file_obj), None)
        if pending is not None:
            await pending

    async def close(self, file_obj: object) -> None:
        # asyncssh closes every open handle when the session ends too: a channel that got its end of input
        # (the client sent EOF or went away) without a CLOSE for this file means the transfer was cut off,
        # so an upload stays resumable instead of being completed with what arrived.
        gone = self._chan.is_closing() or getattr(self._chan, "_recv_state", "open") != "open"
        if isinstance(file_obj, service.Writing):
            try:
                await self._settle(file_obj)
            except asyncssh.SFTPError:
                await _run(file_obj.release, interrupted=gone)
                raise
            if gone:
                await _run(file_obj.release, interrupted=True)
            else:
                await _run(file_obj.finish)
        elif isinstance(file_obj, service.Reading):
            await _run(file_obj.close)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        if isinstance(file_obj, service.Writing):
            return _attrs(service.Entry("", False, file_obj.size, writable=True))
        assert isinstance(file_obj, service.Reading)
        return _attrs(service.Entry("", False, file_obj.size))

    # -- what is allowed nowhere or has no effect ------------------------------------------------
    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Modes, owners and times are the hub's: accepted and ignored (so `put -p` and rclone work)."""

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        pass

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        pass

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Folders in an upload area exist through the files in them: making one is accepted."""
        where = _where(path)
        if where.kind != "uploads":
            raise asyncssh.SFTPPermissionDenied("folders are made only inside /<project>/uploads/")
        await _run(self._read, lambda session, principal: service.writable_area(session, principal, where.slug))
        if where.rest:
            self.made.add(f"{where.slug}/{where.rest}")

    def rmdir(self, path: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("folders are not removed over SFTP")

    async def remove(self, path: bytes) -> None:
        await _run(service.remove, self.hub, self.key_id, self.ip, _where(path))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await _run(service.rename, self.hub, self.key_id, self.ip, _where(oldpath), _where(newpath))

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self.rename(oldpath, newpath)

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("there are no links")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links cannot be made")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links cannot be made")

    def fsync(self, file_obj: object) -> None:
        pass

    def statvfs(self, path: bytes) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")

    def fstatvfs(self, file_obj: object) -> Any:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")


def _where(path: bytes) -> paths.Where:
    try:
        return paths.parse(path)
    except paths.NoSuchPath as exc:
        raise asyncssh.SFTPNoSuchFile("no such file or directory") from exc


def _server_factory(hub: Hub) -> Callable[[], asyncssh.SSHServer]:
    def make() -> asyncssh.SSHServer:
        return _KeyServer(hub)
    return make


class _KeyServer(_Login):
    """Records which registered key logged in (and audits the login) once authentication succeeded."""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        super().connection_made(conn)
        self.conn = conn
        self.fingerprint: str | None = None

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = await super().validate_public_key(username, key)
        if ok:
            self.fingerprint = key.get_fingerprint("sha256")
        return ok

    def auth_completed(self) -> None:
        fingerprint, ip = self.fingerprint, self.ip

        def record() -> uuid.UUID | None:
            with transaction(self.hub.sessions) as session:
                return service.login(session, fingerprint or "", ip)
        # auth_completed is synchronous: the login is recorded before the first channel opens
        key_id = record()
        if key_id is None:
            self.conn.close()
            return
        self.conn.set_extra_info(strongroom_key_id=key_id)


async def _process_write_leniently(handler: Any, packet: Any) -> int:
    """WRITE as OpenSSH's sftp-server reads it: bytes after the data field are ignored. pkg/sftp (rclone's
    SFTP library) sends such packets from its concurrent writer whenever a read of its source came back
    short; asyncssh's own parser refuses them as "unexpected data at end of packet"."""
    handle, offset, data = packet.get_string(), packet.get_uint64(), packet.get_string()
    file_obj = handler._file_handles.get(handle)
    if not file_obj:
        raise asyncssh.SFTPInvalidHandle("Invalid file handle")
    result = handler._server.write(file_obj, offset, data)
    return cast(int, await result if inspect.isawaitable(result) else result)


def _lenient_writes() -> None:
    """Server-side only (the hub's SFTP clients, e.g. the airlock's, use SFTPClientHandler); idempotent."""
    from asyncssh.sftp import FXP_WRITE, SFTPServerHandler

    SFTPServerHandler._packet_handlers[FXP_WRITE] = _process_write_leniently


async def start(hub: Hub, host: str, port: int) -> asyncssh.SSHAcceptor:
    """Listen on host:port (port 0: any free port) and serve until the acceptor is closed."""
    _lenient_writes()
    # send_server_host_keys: after login, clients are told every key (the next one during a rotation)
    return await asyncssh.create_server(
        _server_factory(hub), host, port, server_host_keys=hostkeys.host_keys(hub), send_server_host_keys=True,
        sftp_factory=lambda chan: HubSFTPServer(chan, hub), allow_scp=False,
        agent_forwarding=False, x11_forwarding=False, allow_pty=False, process_factory=None,
        server_version="Strongroom")


CHECK_SECONDS = 5.0  # how often a running server looks at its host key files and the hub secret


def _secret_rotated(hub: Hub) -> bool:
    with hub.sessions() as session:
        return audit.holds_rotated_secret(session)


async def keep_current(hub: Hub, server: asyncssh.SSHAcceptor) -> bool:
    """Upkeep of a running server, every few seconds: new connections get the host keys on disk (a rotation
    needs no restart), and the server closes if the hub secret was rotated away (nothing it does could be
    audited any more). Returns True in that case."""
    seen = hostkeys.stamp(hub)
    while not await _run(_secret_rotated, hub):
        await asyncio.sleep(CHECK_SECONDS)
        if (now := hostkeys.stamp(hub)) != seen:
            server.update(server_host_keys=await _run(hostkeys.host_keys, hub), send_server_host_keys=True)
            seen = now
            log.info("sftp.host_keys_reloaded", keys=[hostkeys.fingerprint(k) for k in hostkeys.host_keys(hub)])
    log.error("sftp.stale_secret", detail="the hub secret was rotated: restart with the current one")
    server.close()
    return True


def serve(hub: Hub, host: str, port: int) -> bool:
    """Run the server until interrupted. Returns True when it stopped because the hub secret was rotated away."""
    async def main() -> bool:
        server = await start(hub, host, port)
        bound = server.sockets[0].getsockname() if server.sockets else (host, port)
        log.info("sftp.listening", host=bound[0], port=bound[1])
        upkeep = asyncio.create_task(keep_current(hub, server))
        with contextlib.suppress(asyncio.CancelledError):
            await server.wait_closed()
        if upkeep.done():
            return upkeep.result()
        upkeep.cancel()
        return False
    return asyncio.run(main())
