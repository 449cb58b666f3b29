"""Workspaces: start (fresh MFA, the read-data right, a project-bound token, scratch, namespace, launcher), stop
(by the owner, an operator, idle time, the booking's end: process gone, namespace gone, token revoked, scratch
wiped), the proxy's check, and the periodic checks. Every start and stop is audited."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit import service as audit
from ..audit.service import Actor
from ..compute.models import ACTIVE as BOOKING_ACTIVE
from ..compute.models import Booking
from ..config import Settings, internal_address
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..identity import service as identity
from ..identity.models import User
from ..identity.principal import Principal
from ..jobs import service as jobs
from ..paths import state_folders
from ..projects import service as projects
from ..projects.models import Membership, Project
from . import fuse, netns, origin
from . import launcher as launching
from . import settings as ws_settings
from .launcher import AddressRefused, Handle, Launcher, LaunchError, LocalLauncher, SlurmLauncher, Spec
from .limits import Limits
from .models import LIVE, RUNNING, STOPPED, ClusterAccount, Handoff, Workspace

# What STRONGROOM_TOKEN may do, within its one project: read its data (the plaintext route, from this
# workspace's own address only: ``in_platform_reader``) and save results back as files through the archive's
# upload routes (data:write; deps.require_scope refuses a project-bound token every other data:write route:
# datasets, releases, shares, catalogue, airlock, runs, keys).
TOKEN_SCOPES = ["data:read", "data:write", "projects:read"]


# -- pure helpers ------------------------------------------------------------------------------
def jupyter_token(secret: bytes, workspace_id: uuid.UUID) -> str:
    """The workspace's own Jupyter token, derived (never stored): any hub process can proxy to it."""
    return hmac.new(secret, f"workspace-jupyter:{workspace_id}".encode(), hashlib.sha256).hexdigest()


def authority(host: str, port: int) -> str:
    """``host:port`` for a URL (an IPv6 address in brackets: a Slurm node may have one)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def base_path(slug: str, workspace_id: uuid.UUID | str) -> str:
    return f"/projects/{slug}/workspaces/{workspace_id}/"


def scratch_root(settings: Settings) -> Path:
    """Per-workspace scratch lives here: the configured directory, tmpfs (/dev/shm) when there is one, else the
    var directory."""
    if settings.workspaces.scratch_dir is not None:
        return settings.workspaces.scratch_dir
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / "strongroom-workspaces"
    return settings.var_dir / "workspaces"


def launcher_for(settings: Settings) -> Launcher:
    w = settings.workspaces
    if w.launcher == "slurm":
        return SlurmLauncher(sbatch=w.sbatch, scancel=w.scancel, squeue=w.squeue,
                             scontrol=settings.compute.slurm.scontrol, slurm_conf=settings.compute.slurm.slurm_conf)
    return LocalLauncher()


def isolation_for(settings: Settings) -> tuple[str, str]:
    """("namespace" | "none", why): the fallback without a namespace is refused unless allowed."""
    w = settings.workspaces
    if w.launcher == "slurm":
        # The namespace is made on the hub's machine; a Slurm node applies its own network policy.
        return "none", "Slurm node (the cluster's network policy applies)"
    if w.isolation == "namespace":
        why = netns.missing()
        if why is None:
            return "namespace", ""
        if not w.allow_unisolated:
            raise Conflict(f"workspaces need a network namespace and {why}; an operator may allow unisolated "
                           "workspaces ([workspaces] allow_unisolated) for development only")
        return "none", f"NO EGRESS CONTROL: {why}"
    if not w.allow_unisolated:
        raise Conflict("unisolated workspaces are not allowed on this hub ([workspaces] allow_unisolated)")
    return "none", "NO EGRESS CONTROL: isolation is off"


def _resolve(host: str, port: int) -> list[tuple[str, int]]:
    try:
        return [(str(ipaddress.ip_address(host.strip("[]"))), port)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({(str(info[4][0]), port) for info in infos})


def package_mirror(session: Session, project_id: uuid.UUID) -> str:
    """The project's ``workspace_package_mirror`` as saved (a mirror's name; a value saved before
    the operator pinned the mirrors may be a URL), or ""."""
    return str(projects.get_setting(session, project_id, ws_settings.KEY) or "")


def mirror_url(session: Session, settings: Settings, project_id: uuid.UUID) -> str:
    """The simple index URL of the operator's mirror the project's setting names and that serves the project, or
    "" (none, unknown, not this project's)."""
    slug = session.scalar(select(Project.slug).where(Project.id == project_id)) or ""
    found = ws_settings.configured_mirror(settings.workspaces, package_mirror(session, project_id), slug)
    return found.url if found is not None else ""


def _outside(addresses: list[tuple[str, int]], subnet: str) -> list[tuple[str, int]]:
    """Drop the addresses that are the hub machine's own or its internals (a mirror's name may resolve there)."""
    return [(a, p) for a, p in addresses if internal_address(a, subnet) is None]


def allowed_destinations(session: Session, settings: Settings, project_id: uuid.UUID) -> list[tuple[str, int]]:
    """The project's allow-listed network destinations: the airlock's approved destinations that are network
    endpoints (the host and port of their SFTP credentials, the endpoint of their S3 credentials: the operator's,
    for the credentials that serve this project) and the host and port of the operator's package mirror the
    project's setting names (when it serves the project), resolved to addresses when the workspace starts."""
    out: list[tuple[str, int]] = []
    if (mirror := ws_settings.endpoint(mirror_url(session, settings, project_id))) is not None:
        out += _outside(_resolve(*mirror), settings.workspaces.subnet)
    slug = session.scalar(select(Project.slug).where(Project.id == project_id)) or ""
    for d in projects.get_setting(session, project_id, "egress_destinations") or []:
        name = str(d.get("credential"))
        if d.get("kind") == "sftp" and (sftp := settings.airlock.sftp.get(name)) is not None and sftp.serves(slug):
            out += _resolve(sftp.host, sftp.port)
        elif d.get("kind") == "s3" and (cred := settings.airlock.s3.get(name)) is not None and cred.serves(slug):
            parts = urlsplit(cred.endpoint_url or "https://s3.amazonaws.com")
            if parts.hostname:
                out += _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    return sorted(set(out))


# -- reading -----------------------------------------------------------------------------------
def _require_reader(principal: Principal, access: projects.ProjectAccess, settings: Settings) -> None:
    access.require("read-data")
    if principal.via != "session":
        raise Forbidden("workspaces are started from the project's page")
    if not principal.mfa_is_fresh(settings.security.fresh_mfa_minutes):
        raise MfaRequired("starting a workspace needs a fresh multi-factor login")


def active_booking(session: Session, project_id: uuid.UUID, now: dt.datetime) -> Booking | None:
    return session.scalar(select(Booking).where(
        Booking.project_id == project_id, Booking.state == BOOKING_ACTIVE, Booking.start_at <= now,
        Booking.end_at > now).order_by(Booking.end_at.desc()).limit(1))


def list_mine(session: Session, access: projects.ProjectAccess, user: User) -> list[Workspace]:
    return list(session.scalars(select(Workspace).where(
        Workspace.project_id == access.project.id, Workspace.user_id == user.id)
        .order_by(Workspace.created_at.desc()).limit(50)))


def list_live(session: Session) -> list[Workspace]:
    return list(session.scalars(select(Workspace).where(Workspace.state.in_(LIVE))
                                .order_by(Workspace.created_at)))


def _free_slot(session: Session) -> int:
    taken = set(session.scalars(select(Workspace.slot).where(Workspace.state.in_(LIVE),
                                                             Workspace.slot.is_not(None))))
    slot = 0
    while slot in taken:
        slot += 1
    return slot


def plan_of(settings: Settings, ws: Workspace, allowed: list[tuple[str, int]] | None = None) -> netns.Plan:
    assert ws.slot is not None
    return netns.plan_for(ws.slot, settings.workspaces.subnet, hub_port=settings.workspaces.hub_port or settings.port,
                          allowed=allowed or [])


def _launcher_of(settings: Settings, ws: Workspace) -> Launcher:
    """The launcher that started ``ws`` (the setting may have changed since)."""
    if ws.launcher == "slurm":
        return SlurmLauncher(sbatch=settings.workspaces.sbatch, scancel=settings.workspaces.scancel,
                             squeue=settings.workspaces.squeue, scontrol=settings.compute.slurm.scontrol,
                             slurm_conf=settings.compute.slurm.slurm_conf)
    return LocalLauncher()


def _handle(ws: Workspace) -> Handle:
    return Handle(host=ws.host, port=ws.port, pid=ws.pid, job_id=ws.job_id, scratch=ws.scratch,
                  uid=ws.uid if ws.launcher == "local" else None)


# -- each local workspace's own uid ------------------------------------------------------------
LEASE_ATTEMPTS = 20
_RANDOM = random.SystemRandom()


def _known_id(uid: int) -> bool:
    """Is ``uid`` an account, or a group's gid, in the machine's user directory? (A workspace's gid is its uid.)"""
    import grp
    import pwd

    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _candidates(lo: int, hi: int) -> Iterator[int]:
    """Where to look for a free uid: random ones first (concurrent starts rarely pick the same, and a stopped
    workspace's uid is seldom the next one's), then every one of the range."""
    for _ in range(64):
        yield _RANDOM.randint(lo, hi)
    yield from range(lo, hi + 1)


def free_uid(session: Session, settings: Settings) -> int:
    """A uid of ``uid_range`` no live workspace holds, no process runs as, and no account or group has."""
    lo, hi = settings.workspaces.uid_range
    taken = set(session.scalars(select(Workspace.uid).where(Workspace.state.in_(LIVE), Workspace.uid.is_not(None))))
    busy = launching.uids_in_use()
    for uid in _candidates(lo, hi):
        if uid not in taken and uid not in busy and not _known_id(uid):
            return uid
    raise Conflict(f"every uid of [workspaces] uid_range ({lo}-{hi}) is in use: no workspace can start now")


def lease(session: Session, settings: Settings, ws: Workspace, *, uid: bool, slot: bool) -> None:
    """Insert ``ws`` (new, not yet flushed) with what it must hold alone while live: a uid of its own (``uid``)
    and a network slot, i.e. its namespace, address pair and rules (``slot``). Partial unique indexes on live
    workspaces' uids and slots decide between concurrent starts that picked the same one: the loser picks again
    (two live workspaces on one slot would share a namespace, and the second one's teardown would remove the
    first one's)."""
    for _ in range(LEASE_ATTEMPTS):
        if slot:
            ws.slot = _free_slot(session)
        if uid:
            ws.uid = free_uid(session, settings)
        try:
            with session.begin_nested():
                session.add(ws)
                session.flush()
            return
        except IntegrityError as exc:
            if "uid" not in str(exc.orig) and "slot" not in str(exc.orig):
                raise
    raise Conflict("no free uid or network slot for the workspace after several attempts (many starts at "
                   "once?): try again")


def _private_scratch_root(root: Path) -> None:
    """The scratch root holds every workspace's scratch: the hub's own and only traversable by others (a
    folder someone else made in a world-writable place, e.g. /dev/shm, is refused)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    info = root.lstat()
    if not root.is_dir() or root.is_symlink() or info.st_uid != os.geteuid():
        raise Conflict(f"the workspaces' scratch folder {root} is not the hub's own: an operator must remove it")
    if info.st_mode & 0o7777 != 0o711:
        root.chmod(0o711)


def leftover_scratches(root: Path, uid: int) -> list[Path]:
    """The scratches in ``root`` a free ``uid`` still owns: no live workspace holds the uid and no process runs as
    it, so each is a leftover of a hub that died meanwhile (its row never committed, or stopped without the wipe),
    perhaps with its own tmpfs and data mount still mounted."""
    found = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == uid:
                found.append(Path(entry.path))
    return found


# -- members' cluster accounts (the Slurm launcher submits as them) -----------------------------------
def cluster_account_of(session: Session, user_id: uuid.UUID) -> str:
    """The member's cluster account, or "" when they have none usable: one the shared rule refuses (stored before it
    held) or one another member holds too (one POSIX identity per person)."""
    from ..compute.accounts import account_problem

    row = session.get(ClusterAccount, user_id)
    if row is None or account_problem(row.account):
        return ""
    holders = session.scalar(select(func.count()).where(ClusterAccount.account == row.account))
    return row.account if holders == 1 else ""


def set_cluster_account(session: Session, actor: Actor, user: User, account: str) -> str:
    """Set (or, with "", remove) the member's POSIX account on the cluster; audited. The rule is the one GPU
    reservations read the mapping with (``compute.accounts.account_problem``), and their reservations follow at once."""
    from ..compute.accounts import account_problem
    from ..compute.service import resync_user

    account = account.strip()
    if account and (why := account_problem(account)):
        raise Invalid(why)
    row = session.get(ClusterAccount, user.id)
    before = row.account if row is not None else ""
    if account == before:
        return account
    taken = Conflict(f"the cluster account {account!r} is already another member's; each member needs their own")
    if account and session.scalar(select(ClusterAccount.user_id).where(ClusterAccount.account == account,
                                                                        ClusterAccount.user_id != user.id)):
        # one POSIX identity per person: two members' workspaces on one account would read each other's files
        raise taken
    try:
        # the unique index settles two operators mapping one account at the same moment (the check above cannot)
        with session.begin_nested():
            if not account:
                assert row is not None
                session.delete(row)
            elif row is None:
                session.add(ClusterAccount(user_id=user.id, account=account))
            else:
                row.account, row.set_at = account, utcnow()
    except IntegrityError:
        raise taken from None
    audit.record(session, actor, "workspace.cluster_account.set", subject_user_id=user.id, target=f"user:{user.id}",
                 details={"account": account, "before": before})
    session.flush()
    resync_user(session, user.id)  # the member's projects' reservations name the new account (or none) now
    return account


def list_cluster_accounts(session: Session) -> list[tuple[User, str]]:
    return [(u, a) for u, a in session.execute(select(User, ClusterAccount.account)
                                               .join(ClusterAccount, ClusterAccount.user_id == User.id)
                                               .order_by(ClusterAccount.account))]


# -- the workspace's own token, from the workspace ---------------------------------------------------
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def addresses(settings: Settings, ws: Workspace) -> frozenset[str]:
    """Where the workspace's requests to the hub come from: its namespace's address (namespace isolation),
    the compute node (a Slurm job without a namespace), else loopback (a local process on the hub's machine)."""
    if ws.isolation == "namespace" and ws.slot is not None:
        return frozenset({plan_of(settings, ws).ns_ip})
    if ws.launcher == "slurm" and ws.host:
        try:
            return frozenset(str(info[4][0]) for info in socket.getaddrinfo(ws.host, None))
        except OSError:
            return frozenset()
    return LOOPBACK


def in_platform_reader(session: Session, settings: Settings, principal: Principal) -> str | None:
    """``archive.authz.IN_PLATFORM_READERS`` entry: a live workspace's own token (``Workspace.token_prefix``),
    bound to the workspace's project and user, used from the workspace's own address → ``workspace:<id>``.
    The same token from anywhere else (copied out of a notebook onto a laptop) is no workspace."""
    if principal.via != "token" or principal.project_id is None or not principal.credential_id.startswith("token:"):
        return None
    prefix = principal.credential_id.removeprefix("token:")
    ws = session.scalar(select(Workspace).where(Workspace.token_prefix == prefix, Workspace.state.in_(LIVE)))
    if ws is None or ws.project_id != principal.project_id or ws.user_id != principal.user.id:
        return None
    return f"workspace:{ws.id}" if principal.ip in addresses(settings, ws) else None


# -- start / stop ------------------------------------------------------------------------------
def start(session: Session, settings: Settings, secret: bytes, principal: Principal,
          access: projects.ProjectAccess) -> Workspace:
    """Start a JupyterLab for the caller in this project; returns it running (or raises, leaving nothing)."""
    _require_reader(principal, access, settings)
    w = settings.workspaces
    mine = session.scalars(select(Workspace).where(Workspace.user_id == principal.user.id,
                                                   Workspace.state.in_(LIVE))).all()
    if len(mine) >= w.max_per_user:
        raise Conflict(f"you already run {len(mine)} workspaces (at most {w.max_per_user}): stop one first")
    isolation, why = isolation_for(settings)
    account = cluster_account_of(session, principal.user.id) if w.launcher == "slurm" else ""
    if w.launcher == "slurm" and not account:
        raise Conflict("workspaces here run as Slurm jobs under your own cluster account, and none is set for you: "
                       "ask an operator (`strongroom admin cluster-account`)")
    if w.mount_data and w.launcher == "local" and (missing := fuse.missing()):
        raise Conflict(f"the read-only data mount needs FUSE and {missing}; an operator may turn it off "
                       "([workspaces] mount_data = false)")
    now = utcnow()
    booking = active_booking(session, access.project.id, now)
    ws = Workspace(id=uuid.uuid4(), project_id=access.project.id, user_id=principal.user.id, launcher=w.launcher,
                   isolation=isolation, detail=why, booking_id=booking.id if booking else None,
                   ends_at=booking.end_at if booking else None)
    root = os.geteuid() == 0
    # Who the workspace runs as: a Slurm job as the member's cluster account; a local one (the hub as root)
    # under a uid of its own, leased here — or, legacy (run_as = ""), as root without capabilities; a hub that
    # is not root (development only: it needs allow_unisolated) cannot switch, so its workspaces run as itself.
    own_uid = w.launcher == "local" and root and w.run_as is None
    lease(session, settings, ws, uid=own_uid, slot=isolation == "namespace")
    scratch = scratch_root(settings) / str(ws.id)
    _private_scratch_root(scratch.parent)
    if ws.uid is not None:
        for leftover in leftover_scratches(scratch.parent, ws.uid):
            wipe(str(leftover))  # a hub that died with this uid leased left it (its tmpfs, its data mount)
    scratch.mkdir(mode=0o700)
    if ws.uid is not None:
        os.chown(scratch, ws.uid, ws.uid)
    elif account and root:
        import pwd

        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            entry = None  # the account exists on the nodes only: the shared scratch's owner is the site's affair
        if entry is not None:  # the member's to write, as the job's: where the hub dials is never read from it
            os.chown(scratch, entry.pw_uid, entry.pw_gid)
    scratch.chmod(0o700)
    ws.scratch = str(scratch)
    token, plaintext = identity.create_project_token(
        session, principal.actor, principal.user, project_id=access.project.id, name=f"workspace {ws.id}",
        scopes=TOKEN_SCOPES, minutes=w.token_minutes)
    ws.token_prefix = token.prefix
    plan = None
    allowed = allowed_destinations(session, settings, access.project.id)
    mirror = mirror_url(session, settings, access.project.id)
    hub_url = settings.base_url.rstrip("/")
    listen_ip, port = "127.0.0.1", 0
    if isolation == "namespace":
        plan = plan_of(settings, ws, allowed)
        hub_url = w.hub_url.rstrip("/") or f"http://{plan.host_ip}:{plan.hub_port}"
        listen_ip, port = plan.ns_ip, plan.jupyter_port
    spec = Spec(workspace_id=str(ws.id), base_url=base_path(access.project.slug, ws.id),
                jupyter_token=jupyter_token(secret, ws.id), scratch=scratch,
                env={"STRONGROOM_URL": hub_url, "STRONGROOM_TOKEN": plaintext,
                     "STRONGROOM_PROJECT": access.project.slug, **ws_settings.pip_env(mirror),
                     # the hub chose this address for its own workspace (a veth link to it alone by default):
                     # the client's refusal of plain http is lifted for it on purpose
                     **({"STRONGROOM_ALLOW_HTTP": "1"} if hub_url.startswith("http://") else {})},
                python=w.python, netns=plan.name if plan else "", uid=ws.uid,
                drop_caps=root and w.launcher == "local" and w.run_as == "", listen_ip=listen_ip, port=port,
                reservation=booking.reservation_name if booking and w.launcher == "slurm" else "",
                gpus=booking.gpus if booking and w.launcher == "slurm" else 0, partition=w.slurm_partition,
                license=_license(settings, booking), slurm_host=w.slurm_host, subnet=w.subnet,
                mount_data=w.mount_data, cluster_account=account, tmp_max_bytes=w.tmp_max_bytes,
                shm_max_bytes=w.shm_max_bytes, scratch_max_bytes=w.scratch_max_bytes,
                hub_state=tuple(state_folders(settings)),
                limits=Limits(memory_bytes=w.memory_max_bytes, pids=w.pids_max, cpus=w.cpus_max))
    try:
        if plan is not None:
            netns.teardown(plan)  # leftovers of a hub that died with this slot in use
            netns.setup(plan)
        handle = launcher_for(settings).start(spec, timeout=w.start_timeout_seconds)
    except (LaunchError, netns.NetnsError, OSError) as exc:
        if plan is not None:
            netns.teardown(plan)
        fuse.unmount(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, AddressRefused):
            _refused(session, principal, access.project.id, w.launcher, spec, exc)
        raise Conflict(f"the workspace could not start: {str(exc)[-1500:]}") from None
    ws.host, ws.port, ws.pid, ws.job_id = handle.host, handle.port, handle.pid, handle.job_id
    ws.state, ws.started_at = RUNNING, utcnow()
    audit.record(session, principal.actor, "workspace.started", project_id=access.project.id,
                 subject_user_id=principal.user.id, target=f"workspace:{ws.id}",
                 details={"launcher": ws.launcher, "isolation": ws.isolation, "booking": ws.booking_id,
                          "allowed": [f"{a}:{p}" for a, p in allowed], "token": token.prefix,
                          **({"cluster_account": account} if account else {}),
                          **({"uid": ws.uid} if ws.uid is not None else {}),
                          **({"shared_identity": "root" if root else "hub"}
                             if w.launcher == "local" and ws.uid is None else {}),
                          "package_mirror": mirror or None,
                          **({"mount": str(scratch / fuse.MOUNT_NAME)} if w.mount_data else {})})
    return ws


def _refused(session: Session, principal: Principal, project_id: uuid.UUID, launcher: str, spec: Spec,
             refusal: AddressRefused) -> None:
    """On record although the start fails: the hub refused to dial where the workspace's job runs (its reason names
    the node and the kind of address, never an address). Nothing else of the start is kept."""
    actor, user_id = principal.actor, principal.user.id  # read before the rollback expires them
    session.rollback()
    audit.record(session, actor, "workspace.start", outcome="denied", project_id=project_id,
                 subject_user_id=user_id, target=f"workspace:{spec.workspace_id}",
                 details={"launcher": launcher, "job": refusal.job_id, "reason": str(refusal)})
    session.commit()


def _license(settings: Settings, booking: Booking | None) -> str:
    machine = settings.compute.machines.get(booking.machine) if booking is not None else None
    return machine.slurm_license if machine is not None else ""


def wipe(path: str) -> None:
    """Remove the scratch directory: every file overwritten with zeros first when it is not on tmpfs."""
    p = Path(path)
    if path:
        fuse.unmount(p)  # never walk into the read-only data mount (nor leave it behind)
    if not path or not p.exists():
        return
    if not str(p).startswith("/dev/shm/"):
        for f in p.rglob("*"):
            if f.is_file() and not f.is_symlink():
                try:
                    size = f.stat().st_size
                    with f.open("r+b") as fh:
                        fh.write(b"\0" * size)
                except OSError:
                    pass
    shutil.rmtree(p, ignore_errors=True)


def stop(session: Session, settings: Settings, ws: Workspace, actor: Actor, *, reason: str) -> Workspace:
    """Stop it whatever state it is in: process, namespace, token, scratch. Idempotent."""
    if ws.state in LIVE:
        _launcher_of(settings, ws).stop(_handle(ws))
    if ws.slot is not None:
        netns.teardown(plan_of(settings, ws))
    if ws.token_prefix:
        identity.revoke_token_by_prefix(session, actor, ws.token_prefix)
    wipe(ws.scratch)
    was = ws.state
    if was in LIVE:
        ws.state, ws.stopped_at, ws.stop_reason = STOPPED, utcnow(), reason
        audit.record(session, actor, "workspace.stopped", project_id=ws.project_id, subject_user_id=ws.user_id,
                     target=f"workspace:{ws.id}", details={"reason": reason})
    return ws


def get_mine(session: Session, access: projects.ProjectAccess, user: User, workspace_id: uuid.UUID) -> Workspace:
    ws = session.get(Workspace, workspace_id)
    if ws is None or ws.project_id != access.project.id or ws.user_id != user.id:
        raise NotFound("no such workspace")
    return ws


def stop_mine(session: Session, settings: Settings, principal: Principal, access: projects.ProjectAccess,
              workspace_id: uuid.UUID) -> Workspace:
    return stop(session, settings, get_mine(session, access, principal.user, workspace_id), principal.actor,
                reason="user")


def require_operator(principal: Principal) -> None:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")


def stop_by_operator(session: Session, settings: Settings, principal: Principal, workspace_id: uuid.UUID
                     ) -> Workspace:
    require_operator(principal)
    if not principal.mfa_is_fresh(settings.security.fresh_mfa_minutes):
        raise MfaRequired("stopping another's workspace needs a fresh multi-factor login")
    ws = session.get(Workspace, workspace_id)
    if ws is None:
        raise NotFound("no such workspace")
    return stop(session, settings, ws, principal.actor, reason="operator")


# -- the proxy's check -------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    host: str
    port: int
    token: str


def proxy_target(session: Session, settings: Settings, secret: bytes, principal: Principal, slug: str,
                 workspace_id: str) -> Target:
    """Only the owner, still a member with read-data, with fresh MFA, of a running workspace; else 404."""
    try:
        wid = uuid.UUID(workspace_id)
    except ValueError:
        raise NotFound("no such workspace") from None
    ws = session.get(Workspace, wid)
    if ws is None or ws.state != RUNNING or ws.user_id != principal.user.id:
        raise NotFound("no such workspace")
    row = session.execute(select(Project, Membership).join(Membership, Membership.project_id == Project.id)
                          .where(Project.id == ws.project_id, Project.slug == slug,
                                 Membership.user_id == principal.user.id)).first()
    if row is None or "read-data" not in projects.effective_rights(session, row[1]):
        raise NotFound("no such workspace")
    if projects.project_ended(row[0]):  # closed or past its end date: its stop job is queued; no page meanwhile
        raise projects.ended_refusal(row[0])
    # Fresh MFA when the workspace started (the session that started it, or a later MFA) holds for the
    # workspace's life: a notebook open for hours must not lock out mid-computation; the session's own idle
    # timeout and lifetime still apply.
    fresh = dt.timedelta(minutes=settings.security.fresh_mfa_minutes)
    if principal.via != "session" or principal.mfa_at is None or ws.started_at is None or (
            principal.mfa_at < ws.started_at - fresh):
        raise NotFound("no such workspace")
    return Target(ws.host, ws.port, jupyter_token(secret, ws.id))


# -- the workspaces' own origin ----------------------------------------------------------------
NO_ORIGIN = ("workspaces cannot be opened on this hub yet: its operator must set [workspaces] origin, a host name of "
             "their own for the notebooks (e.g. https://workspaces.<the hub's name>, routed to this hub with its own "
             "certificate; docs/workspaces.md)")


def browser_origin(settings: Settings) -> str:
    """Where browsers open workspaces ("": nowhere yet, ``NO_ORIGIN``); never the hub's own host."""
    return settings.workspaces.browser_origin(settings.base_url)


def issue_handoff(session: Session, secret: bytes, workspace_id: uuid.UUID, user_id: uuid.UUID, session_hash: str,
                  next_path: str, *, now: dt.datetime | None = None) -> str:
    """A one-time code, good for ``origin.HANDOFF_SECONDS``, that opens ``workspace_id`` on the workspaces' origin
    for this user's hub session (``session_hash``) at ``next_path``. Called once the hub's own checks passed."""
    now = now or utcnow()
    session.execute(delete(Handoff).where(Handoff.expires_at < now))  # used or not, an expired code opens nothing
    code = origin.new_code()
    session.add(Handoff(code_hash=origin.code_hash(secret, code), workspace_id=workspace_id, user_id=user_id,
                        session_hash=session_hash, next_path=next_path,
                        expires_at=now + dt.timedelta(seconds=origin.HANDOFF_SECONDS)))
    return code


@dataclass(frozen=True)
class Opened:
    """What a redeemed handoff code was issued for."""

    workspace_id: uuid.UUID
    user_id: uuid.UUID
    session_hash: str
    next_path: str


def redeem_handoff(session: Session, secret: bytes, code: str) -> Opened | None:
    """Use ``code``: what it was issued for, or None when it is unknown, used or expired. One conditional update
    marks it used, so of two web servers (or two requests) only one ever gets it; commit before checking more."""
    if not code or len(code) > 100:
        return None
    key = origin.code_hash(secret, code)
    now = utcnow()
    used = session.execute(update(Handoff).where(Handoff.code_hash == key, Handoff.used_at.is_(None),
                                                 Handoff.expires_at > now).values(used_at=now)
                           .execution_options(synchronize_session=False))
    row = session.get(Handoff, key) if getattr(used, "rowcount", 0) == 1 else None
    if row is None:
        return None
    return Opened(row.workspace_id, row.user_id, row.session_hash, row.next_path)


def hub_session_principal(session: Session, settings: Settings, session_hash: str, ip: str | None) -> Principal:
    """The hub session a workspace cookie names, checked as the hub's pages check their cookie
    (``identity.load_session``, here by its stored hash): logged out, expired, idle too long, not fully logged in,
    or its user deactivated — 404. Work in the workspace keeps the session from going idle, as it did on the hub."""
    ws = identity.load_session_by_hash(session, session_hash, idle_minutes=settings.security.session_idle_minutes)
    if ws is None or ws.stage != "active":
        raise NotFound("no such workspace")
    user = session.get(User, ws.user_id)
    if user is None or not user.is_active:
        raise NotFound("no such workspace")
    return identity.session_principal(ws, user, ip)


# -- periodic checks ---------------------------------------------------------------------------
def last_activity(ws: Workspace, secret: bytes, slug: str) -> dt.datetime | None:
    """Jupyter's own ``last_activity`` (kernels and requests), or None when it does not answer."""
    try:
        r = httpx.get(f"http://{authority(ws.host, ws.port)}{base_path(slug, ws.id)}api/status",
                      headers={"Authorization": f"token {jupyter_token(secret, ws.id)}"}, timeout=5.0)
        r.raise_for_status()
        return dt.datetime.fromisoformat(r.json()["last_activity"].replace("Z", "+00:00"))
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def lost_access(session: Session, ws: Workspace) -> str | None:
    """Why ``ws``'s owner may no longer work in it — the account is deactivated, they left the project or lost
    its read-data right, the project is closed or past its end date — or None while they still may."""
    user = session.get(User, ws.user_id)
    project = session.get(Project, ws.project_id)
    if user is None or not user.is_active:
        return "owner-deactivated"
    if project is None or project.status != "active" or project.end_date < utcnow().date():
        return "project-ended"
    membership = session.scalar(select(Membership).where(Membership.project_id == ws.project_id,
                                                         Membership.user_id == ws.user_id))
    if membership is None or "read-data" not in projects.effective_rights(session, membership):
        return "left-project"
    return None


def check_access(session: Session, settings: Settings, *, project_id: uuid.UUID | None = None) -> dict[str, int]:
    """Stop every live workspace (of one project, or all) whose owner lost access: what a workspace reads is
    the project's data, so it ends with its owner's right to read it, not at the next idle check."""
    query = select(Workspace).where(Workspace.state.in_(LIVE))
    if project_id is not None:
        query = query.where(Workspace.project_id == project_id)
    stopped = 0
    for ws in session.scalars(query).all():
        if (why := lost_access(session, ws)) is not None:
            stop(session, settings, ws, Actor.system("workspaces"), reason=why)
            stopped += 1
    return {"stopped": stopped}


def reapply_egress(session: Session, settings: Settings, project_id: uuid.UUID) -> dict[str, int]:
    """Give the project's running namespaced workspaces its current allow-list (egress destinations, package
    mirror): what the PI closes is closed for them too, what the PI opens opens without a restart."""
    allowed = allowed_destinations(session, settings, project_id)
    applied = 0
    for ws in session.scalars(select(Workspace).where(Workspace.project_id == project_id,
                                                      Workspace.state.in_(LIVE), Workspace.slot.is_not(None))):
        netns.reapply(plan_of(settings, ws, allowed))
        applied += 1
    if applied:
        audit.record(session, Actor.system("workspaces"), "workspace.egress_reapplied", project_id=project_id,
                     details={"workspaces": applied, "destinations": len(allowed)})
    return {"reapplied": applied}


def members_changed(session: Session, project_id: uuid.UUID, what: str) -> None:
    """``PROJECT_CHANGED`` listener: after a member left or lost a right, or the project was closed or cut short,
    the access check runs for that project at once (a job: stopping needs the launcher's settings, which a
    listener has not)."""
    if what in ("members", "project"):
        jobs.enqueue(session, "workspaces.access", {"project_id": str(project_id)})
    elif what in EGRESS_SETTINGS:
        jobs.enqueue(session, "workspaces.egress", {"project_id": str(project_id)})


# the project settings a running workspace's network rules are made from (``allowed_destinations``)
EGRESS_SETTINGS = (f"setting:{ws_settings.KEY}", "setting:egress_destinations")


def check_idle(session: Session, settings: Settings, secret: bytes, *, now: dt.datetime) -> dict[str, int]:
    """Stop workspaces idle longer than ``idle_minutes`` (their owner e-mailed ``warn_minutes`` before) and those
    whose process is gone."""
    from ..notify import service as notify

    idle = dt.timedelta(minutes=settings.workspaces.idle_minutes)
    warn = dt.timedelta(minutes=settings.workspaces.warn_minutes)
    stopped = gone = warned = 0
    for ws in session.scalars(select(Workspace).where(Workspace.state == RUNNING)).all():
        project = session.get(Project, ws.project_id)
        if not _launcher_of(settings, ws).alive(_handle(ws)):
            stop(session, settings, ws, Actor.system("workspaces"), reason="exited")
            gone += 1
            continue
        seen = last_activity(ws, secret, project.slug if project else "")
        stops_at = (seen or ws.started_at or now) + idle
        if stops_at <= now:
            stop(session, settings, ws, Actor.system("workspaces"), reason="idle")
            stopped += 1
        elif stops_at - warn <= now and ws.idle_warned_at is None:
            ws.idle_warned_at = now
            notify.notify_user(session, ws.user_id, "workspace_ending", {
                "project": project.slug if project else "", "workspace": str(ws.id), "ends": stops_at.isoformat(),
                "minutes": int((stops_at - now).total_seconds() // 60), "reason": "idle"})
            warned += 1
        elif stops_at - warn > now and ws.idle_warned_at is not None:
            ws.idle_warned_at = None  # busy again: the next idle spell warns anew
    return {"idle": stopped, "exited": gone, "warned": warned}


def resources(settings: Settings, ws: Workspace) -> dict[str, str]:
    """CPU, memory and GPU of a running workspace, as its launcher sees them ({} when it cannot tell)."""
    if ws.state != RUNNING:
        return {}
    try:
        return _launcher_of(settings, ws).resources(_handle(ws))
    except (OSError, subprocess.SubprocessError):
        return {}


def stopping_soon(settings: Settings, ws: Workspace, now: dt.datetime) -> tuple[dt.datetime, str] | None:
    """(when, why) when ``ws`` stops within ``warn_minutes`` on its own: its booking's end or idle time (the
    owner was e-mailed); for the pages' banner."""
    warn = dt.timedelta(minutes=settings.workspaces.warn_minutes)
    if ws.state != RUNNING:
        return None
    if ws.ends_at is not None and ws.ends_at - warn <= now:
        return ws.ends_at, "the GPU booking ends"
    if ws.idle_warned_at is not None:
        return ws.idle_warned_at + warn, "it has been idle"
    return None


def check_bookings(session: Session, settings: Settings, *, now: dt.datetime) -> dict[str, int]:
    """Warn owners ``warn_minutes`` before their booking ends; stop workspaces whose booking has ended."""
    from ..notify import service as notify

    warned = stopped = 0
    warn = dt.timedelta(minutes=settings.workspaces.warn_minutes)
    for ws in session.scalars(select(Workspace).where(Workspace.state == RUNNING,
                                                      Workspace.booking_id.is_not(None))).all():
        booking = session.get(Booking, ws.booking_id)
        ends = booking.end_at if booking is not None else now  # a deleted booking ends now
        if booking is not None and booking.state != BOOKING_ACTIVE:
            ends = min(ends, booking.updated_at)
        ws.ends_at = ends
        project = session.get(Project, ws.project_id)
        if ends <= now:
            stop(session, settings, ws, Actor.system("workspaces"), reason="booking-end")
            stopped += 1
        elif ends - warn <= now and ws.warned_at is None:
            ws.warned_at = now
            notify.notify_user(session, ws.user_id, "workspace_ending", {
                "project": project.slug if project else "", "workspace": str(ws.id), "ends": ends.isoformat(),
                "minutes": int((ends - now).total_seconds() // 60), "reason": "booking"})
            warned += 1
    return {"warned": warned, "stopped": stopped}
