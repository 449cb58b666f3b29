"""The DICOM destination: one pynetdicom Storage SCP per project that has opened ``dicom_destination``.

Deny by default: an association is accepted only from a sender listed in the project's
``dicom_senders`` setting (calling AE title *and* source address); anyone else is rejected with
"calling AE title not recognised" (the same answer for both, so a prober learns nothing), and the
called AE title must be the project's.

A C-STORE is acknowledged only once it is safe: the object streamed to the spool (flat memory), was
de-identified in the worker pool (a malformed object gets a failure status and the SCP carries on),
and the de-identified file and its summary are on disk (fsync). Verification (leak scan, risk check),
encryption into the archive and the database rows follow asynchronously in the archiver thread, in
groups; a crash anywhere leaves spool files that the next start picks up, so nothing acknowledged is
lost. Quiet projects get their verified instances published as a new dataset version.

Other capabilities add DIMSE services to every destination through ``destination.DESTINATION_SERVICES``
(dicomweb: C-FIND, C-GET and C-MOVE); they are reached through the same allow-list.

One project never affects another. A port that two projects' destinations claim (rows written before
``settings.check_destination`` refused that) or that a hub service uses starts *no* destination: a scanner is
never routed into another project (an error in the log, an audit event in each project, a metric). Each
project's quota counts what was acknowledged and not yet archived (``_Quota``, in memory: no database
write per object), so a sender gets "out of resources" (0xA700) for what does not fit instead of a success
the archive cannot honour; archiving goes project by project, and an acknowledged object that does not fit
after all (another channel used the quota meanwhile) waits in the spool until the quota allows it, without
holding up any other project's objects.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge, Histogram, start_http_server
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom import acse as pynetdicom_acse
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from ..archive.backend import storage_for
from ..archive.storage.durable import fsync_path
from ..audit import outbox
from ..audit import service as audit
from ..hub import Hub
from ..paths import private_dir
from ..projects import service as projects
from ..projects.models import Project, ProjectSetting
from ..projects.quota import QuotaExceeded
from ..projects.settings import DicomSender
from . import keystore, pipeline, reactor, service
from .deid import DeidError
from .destination import DESTINATION_SERVICES, DestinationRef
from .models import ImportBatch
from .settings import DicomDestination, hub_ports

log = structlog.get_logger("strongroom.dicom")
ASSOCIATIONS = MetricCounter("strongroom_dicom_associations_total", "DICOM associations", ["project", "outcome"])
STORES = MetricCounter("strongroom_dicom_stores_total", "C-STORE requests answered", ["project", "status"])
STORE_SECONDS = Histogram("strongroom_dicom_store_seconds", "C-STORE: data received to response sent",
                          ["project"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
ARCHIVED = MetricCounter("strongroom_dicom_archived_total", "instances archived, quarantined or duplicate; rejected: "
                         "acknowledged on receipt, then not processable", ["project", "outcome"])
WAITING = Gauge("strongroom_dicom_waiting_for_verification",
                "acknowledged objects waiting in the spool while senders are connected (imaging.receive_backlog)")
WAITING_FOR_QUOTA = Gauge("strongroom_dicom_waiting_for_quota",
                          "acknowledged objects kept in the spool until the project's quota allows them", ["project"])
CONFLICTS = Gauge("strongroom_dicom_destination_conflicts",
                  "project destinations not started: their port is claimed twice or used by a hub service")

# C-STORE statuses (PS3.4 B.2.3)
PARKED_RETRY_SECONDS = 60  # an object whose five archive tries failed (a long outage) is tried again this often
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_NOBODY = "<no sender allowed from here>"  # longer than any AE title: matches no caller
UNLIMITED = 1 << 62


def quota_estimate(size: int) -> int:
    """What an object received with ``size`` bytes is held against its project's quota until archived: the
    archive counts the sealed de-identified file, which de-identification (a few attributes added, UIDs
    replaced) and the encryption (28 bytes per 64 KiB segment) can make slightly larger than what arrived."""
    return size + size // 256 + 2048


def sealed_estimate(deidentified_size: int) -> int:
    """What the archive counts for a de-identified file: its size and the encryption's 28 bytes per 64 KiB."""
    return deidentified_size + 28 * (deidentified_size // 65536 + 1)


def _follow_the_senders_preference(negotiate: Any) -> Any:
    """pynetdicom accepts, per presentation context, the first of the *acceptor's* transfer syntaxes that
    the sender proposed: with every syntax supported, that is Implicit VR Little Endian whenever a sender
    also offers it, which forces a sender holding JPEG 2000 (or RLE, JPEG-LS...) to decompress, and fail
    when it cannot. Senders list the syntax they prefer (the one their file is in) first; like Orthanc,
    accept that one. Nothing is transcoded here: de-identification copies the encapsulated pixel data."""
    if getattr(negotiate, "follows_sender", False):
        return negotiate

    def negotiate_as_acceptor(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
        result, reply_roles = negotiate(rq_contexts, ac_contexts, roles)
        proposed = {cx.context_id: list(cx.transfer_syntax) for cx in rq_contexts}
        supported = {cx.abstract_syntax: set(cx.transfer_syntax) for cx in ac_contexts}
        for cx in result:
            if cx.result == 0x00:
                accepted = supported.get(cx.abstract_syntax, set())
                for syntax in proposed.get(cx.context_id, []):
                    if syntax in accepted:
                        cx.transfer_syntax = [syntax]
                        break
        return result, reply_roles

    negotiate_as_acceptor.follows_sender = True  # type: ignore[attr-defined]
    return negotiate_as_acceptor


# the destination is this process's only association acceptor (senders here are requestors: unaffected)
pynetdicom_acse.negotiate_as_acceptor = _follow_the_senders_preference(pynetdicom_acse.negotiate_as_acceptor)


def _senders_allow(senders: list[DicomSender], ip: str) -> list[str]:
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return []
    out = []
    for s in senders:
        try:
            if addr in ipaddress.ip_network(s.address, strict=False):
                out.append(s.ae_title.strip())
        except ValueError:
            continue
    return out


class _ProjectAE(AE):
    """An AE whose accepted calling AE titles depend on who is connecting (the association's thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.senders: list[DicomSender] = []

    @property
    def require_calling_aet(self) -> list[str]:
        assoc = threading.current_thread()
        ip = assoc.requestor.address if isinstance(assoc, Association) else ""
        return _senders_allow(self.senders, ip) or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, value: list[str]) -> None:  # the base class sets [] at start
        pass


@dataclass
class _Destination:
    project_id: uuid.UUID
    slug: str
    config: DicomDestination
    ae: _ProjectAE
    server: Any
    ctx: service.ImportContext
    last_activity: float = 0.0
    open_associations: int = 0


@dataclass
class _Quota:
    """A project's storage quota as the destination counts it between two reads of the database (under
    ``DicomService.lock``): one object's reservation is a few additions, never a database write."""

    room: int = UNLIMITED  # quota - used - reserved, as last read (``refresh``)
    pending: int = 0  # held for objects being stored or acknowledged and not archived yet (waiting ones too)
    # released into the archive since the last read began: the read may not show them yet (counted twice
    # until the next read if it does: the safe side)
    settled: int = 0

    def fits(self, nbytes: int) -> bool:
        return self.pending + self.settled + nbytes <= self.room


@dataclass
class _Item:
    dest: _Destination
    batch_id: str
    stem: Path  # spool path without suffix: .raw (original), .dcm (de-identified), .json (summary)
    summary: dict[str, Any] = field(default_factory=dict)
    # acknowledged on receipt (imaging.acknowledge = "received"): de-identified in the pool, summary empty until then
    received: bool = False
    attempts: int = 0
    verified: Future[tuple[dict[str, Any], Any]] | None = None  # verification + sealing in the pool
    nbytes: int = 0  # held against the project's quota from before the acknowledgement until archived
    needs: int = 0  # waiting for quota: what its archive file takes (its sealed size once known)

    def spooled(self) -> bool:
        """Still in the spool (an item of a retried group may have been archived already)."""
        return self.stem.with_suffix(".raw" if self.received else ".json").exists()


@dataclass
class _Close:
    dest: _Destination
    batch_id: str


class _Wake:
    """On the dispatcher's queue: look again (an association without objects ended)."""


_WAKE = _Wake()


# The verification pool runs at a lower CPU priority than the receiving process: senders are acknowledged
# first, and the pool catches up in the gaps (it has the spool to work from, and a crash loses nothing).
# imaging.pool_priority = "idle" goes further (SCHED_IDLE, see ImagingSettings).
POOL_NICENESS = 10
# The receiving threads (pynetdicom's reactors, the C-STORE handler, the fsync threads) wait on I/O and hand
# the GIL back and forth; with the archiver busy in the ORM each hand-over could wait the default 5 ms switch
# interval, several times per acknowledged object. `strongroom dicom serve` sets this one instead.
SWITCH_INTERVAL_SECONDS = 0.001


def stop_pool(pool: ProcessPoolExecutor, grace_seconds: float = 5) -> None:
    """Shut a worker pool down without hanging: a spawned worker that never picks up the shutdown
    sentinel (seen with Python 3.11's executor when a worker is still starting) would block
    ``shutdown(wait=True)`` forever. Whatever was acknowledged is in the spool and recovered at the next
    start, so a straggler may simply be terminated."""
    workers = list(getattr(pool, "_processes", {}).values())  # the executor keeps no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_seconds
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("dicom.worker_terminated", pid=worker.pid)
            worker.terminate()
            worker.join(timeout=grace_seconds)


class DicomService:
    """Every project destination of this hub, the worker pool and the archiver."""

    def __init__(self, hub: Hub, *, workers: int | None = None, host: str | None = None) -> None:
        self.hub = hub
        self.cfg = hub.settings.imaging
        self.host = host or self.cfg.dicom_host
        self.spool = self.cfg.spool_dir or hub.settings.var_dir / "dicom-spool"
        private_dir(self.spool / "incoming")
        os.chmod(self.spool, 0o700)
        self.storage = storage_for(hub)
        self.pool_size = workers or self.cfg.workers or os.cpu_count() or 1
        self.pool = self._new_pool()
        self.archive_pool = self._new_archive_pool()  # the archiver's database work, out of this process's GIL
        self.destinations: dict[uuid.UUID, _Destination] = {}
        self.queue: queue.Queue[_Item | _Close | _Wake | None] = queue.Queue()  # acknowledged, in order
        self.ready: queue.Queue[_Item | _Close | None] = queue.Queue()  # the same, verification under way
        self.batches: dict[int, str] = {}  # id(association) → batch id
        self.live: set[int] = set()  # id(association) of accepted, still connected associations
        self.unarchived: Counter[uuid.UUID] = Counter()  # acknowledged, not yet archived, per project
        self.quotas: dict[uuid.UUID, _Quota] = {}  # per project, under ``lock``
        self.waiting: dict[uuid.UUID, list[_Item]] = {}  # acknowledged, kept in the spool until the quota allows
        self.conflicts: dict[uuid.UUID, str] = {}  # projects whose destination is not started, and why
        self.lock = threading.Lock()
        self._pending_publish: set[uuid.UUID] = set()  # projects with archived, unpublished instances
        self.stopping = threading.Event()
        self.stale = False  # stopped because the hub secret was rotated away (the command exits 3)
        self.fsyncer = ThreadPoolExecutor(32, thread_name_prefix="dicom-fsync")
        self.dispatcher = threading.Thread(target=self._dispatch_loop, name="dicom-dispatcher", daemon=True)
        self.archiver = threading.Thread(target=self._archive_loop, name="dicom-archiver", daemon=True)
        reactor.install()  # pynetdicom's reactors wake on work instead of polling every millisecond
        # pynetdicom streams each received data set into a temporary file: keep those in the spool
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool / "incoming")
        for name in ("pynetdicom", "pynetdicom.events", "pynetdicom.assoc", "pynetdicom.dul", "pynetdicom.acse"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # pynetdicom's "standard" handlers describe every PDU and DIMSE message for its debug/info log,
        # which is silenced above: the work was thrown away, ~0.5 ms per received object (measured)
        _config.LOG_HANDLER_LEVEL = "none"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.metrics_port:  # Prometheus for this process (the web app's /metrics is another process)
            start_http_server(self.cfg.metrics_port, addr=self.cfg.metrics_host)
        self._recover()
        self.dispatcher.start()
        self.archiver.start()
        self.refresh()

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self.stopping.wait(self.cfg.refresh_seconds):
                if self._secret_rotated():
                    break
                self.refresh()
                self.publish_quiet()
        finally:
            self.stop()

    def _secret_rotated(self) -> bool:
        """After a rotation of the hub secret nothing this process archives can be audited: stop taking objects
        (what was acknowledged stays in the spool for the next start) and let the supervisor restart it."""
        with self.hub.sessions() as session:
            self.stale = audit.holds_rotated_secret(session)
        if self.stale:
            log.error("dicom.stale_secret", detail="the hub secret was rotated: restart with the current one")
        return self.stale

    def stop(self) -> None:
        self.stopping.set()
        for dest in list(self.destinations.values()):
            self._stop_destination(dest)
        self.queue.put(None)
        if self.dispatcher.is_alive():
            self.dispatcher.join(timeout=60)  # it waits for the archiver
        stop_pool(self.pool)
        stop_pool(self.archive_pool)
        self.fsyncer.shutdown(wait=False)


    # -- configuration --------------------------------------------------------------------------
    def _wanted(self) -> dict[uuid.UUID, tuple[str, DicomDestination, list[DicomSender], int]]:
        with self.hub.sessions() as session:
            rows = session.execute(select(ProjectSetting.project_id, ProjectSetting.value, Project.slug,
                                          Project.quota_bytes - Project.used_bytes - Project.reserved_bytes)
                                   .join(Project, Project.id == ProjectSetting.project_id)
                                   .where(ProjectSetting.key == "dicom_destination",
                                          projects.open_clause()))  # closed or past its end date: stopped
            wanted = {}
            for project_id, value, slug, free in rows:
                if not value:
                    continue
                senders = [DicomSender.model_validate(s) for s in
                           projects.get_setting(session, project_id, "dicom_senders")]
                wanted[project_id] = (slug, DicomDestination.model_validate(value), senders, int(free or 0))
        return wanted

    def refresh(self) -> None:
        """Start, stop or update destinations to match the project settings; read each project's quota and
        send objects waiting for it on once it allows them."""
        with self.lock:  # what was archived from here on may be missing from the read below
            marks = {project_id: q.settled for project_id, q in self.quotas.items()}
            waiting = list(self.waiting)
        try:
            wanted = self._wanted()
            rooms = {project_id: w[3] for project_id, w in wanted.items()}
            rooms.update(self._rooms([p for p in waiting if p not in rooms]))
        except Exception:
            log.exception("dicom.refresh_failed")
            return
        with self.lock:
            for project_id, room in rooms.items():
                q = self.quotas.setdefault(project_id, _Quota())
                q.room, q.settled = room, q.settled - marks.get(project_id, 0)
        for project_id, room in rooms.items():
            self._resume_waiting(project_id, room)
        self._refuse_conflicts(wanted)
        for project_id, running in list(self.destinations.items()):
            w = wanted.get(project_id)
            if w is None or w[1] != running.config:
                self._stop_destination(running)
                del self.destinations[project_id]
        for project_id, (slug, config, senders, _) in wanted.items():
            dest = self.destinations.get(project_id)
            if dest is None:
                try:
                    dest = self._start_destination(project_id, slug, config)
                except OSError as exc:
                    log.error("dicom.destination_failed", project=slug, port=config.port, error=str(exc))
                    continue
                self.destinations[project_id] = dest
            dest.ae.senders = senders
            try:  # the profile may have changed: new batches use the new one
                if not dest.open_associations:
                    dest.ctx = service.load_context(self.hub, project_id)
            except Exception:
                log.exception("dicom.context_failed", project=slug)

    def _rooms(self, project_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """What each project's quota has room for (quota - used - reserved)."""
        if not project_ids:
            return {}
        with self.hub.sessions() as session:
            rows = session.execute(select(Project.id, Project.quota_bytes - Project.used_bytes - Project.reserved_bytes)
                                   .where(Project.id.in_(project_ids)))
            return {project_id: int(free or 0) for project_id, free in rows}

    def _refuse_conflicts(self, wanted: dict[uuid.UUID, tuple[str, DicomDestination, list[DicomSender], int]]
                          ) -> None:
        """Take out of ``wanted`` every destination whose port another wanted destination claims too, or a hub
        service uses: none of them starts (one that runs is stopped), because whichever got the port would
        receive the other project's scanners. Never "the first one read wins". Each new conflict is logged as
        an error and audited in the project (the event does not name the other project)."""
        reserved = hub_ports(self.hub.settings)
        by_port: dict[int, list[uuid.UUID]] = {}
        for project_id, (_, config, _, _) in wanted.items():
            by_port.setdefault(config.port, []).append(project_id)
        conflicts: dict[uuid.UUID, str] = {}
        for port, claimants in by_port.items():
            if port in reserved:
                reason = f"port {port} is used by a service of this hub ({reserved[port]})"
            elif len(claimants) > 1:
                reason = f"port {port} is claimed by another project's DICOM destination too"
            else:
                continue
            conflicts.update(dict.fromkeys(claimants, reason))
        for project_id, reason in conflicts.items():
            slug, config = wanted[project_id][0], wanted[project_id][1]
            if self.conflicts.get(project_id) != reason:
                log.error("dicom.destination_conflict", project=slug, port=config.port, ae_title=config.ae_title,
                          reason=reason, detail="not started: change the port of all but one of the projects")
                try:
                    outbox.record_after(self.hub, service.IMPORT_ACTOR, "imaging.destination.not_started",
                                        outcome="denied", project_id=project_id, target=f"dicom:{config.ae_title}",
                                        details={"port": config.port, "reason": reason})
                except Exception:
                    log.exception("dicom.audit_failed", project=slug)
        for project_id in self.conflicts.keys() - conflicts.keys():
            log.info("dicom.destination_conflict_resolved", project=str(project_id))
        self.conflicts = conflicts
        CONFLICTS.set(len(conflicts))
        for project_id in conflicts:
            del wanted[project_id]

    def _start_destination(self, project_id: uuid.UUID, slug: str, config: DicomDestination) -> _Destination:
        ctx = service.load_context(self.hub, project_id)
        ae = _ProjectAE(ae_title=config.ae_title)
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.require_called_aet = True
        ae.maximum_associations = 16
        ae.network_timeout = 60
        ae.dimse_timeout = 120
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:  # each has one
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        dest = _Destination(project_id=project_id, slug=slug, config=config, ae=ae, server=None, ctx=ctx)
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_ACCEPTED, self._on_accepted, [dest]),
            (evt.EVT_REJECTED, self._on_rejected, [dest]),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store, [dest]),
            (evt.EVT_CONN_CLOSE, self._on_end, [dest]),  # after release, abort or a dropped connection
        ]
        ref = DestinationRef(self.hub, self.storage, project_id, slug, config.ae_title)
        for extension in DESTINATION_SERVICES:
            handlers += extension(ae, ref)
        dest.server = ae.start_server((self.host, config.port), block=False, evt_handlers=handlers)
        log.info("dicom.destination_started", project=slug, ae_title=config.ae_title, port=config.port)
        return dest

    def _stop_destination(self, dest: _Destination) -> None:
        try:
            dest.server.shutdown()
        except Exception:
            log.exception("dicom.stop_failed", project=dest.slug)
        log.info("dicom.destination_stopped", project=dest.slug)

    # -- association events ---------------------------------------------------------------------
    @staticmethod
    def _on_connect(event: evt.Event) -> None:
        # Nagle + delayed ACK stall every small C-STORE response by ~40 ms
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_accepted(self, event: evt.Event, dest: _Destination) -> None:
        ASSOCIATIONS.labels(dest.slug, "accepted").inc()
        with self.lock:
            self.live.add(id(event.assoc))
            dest.open_associations += 1
            dest.last_activity = time.monotonic()

    def _batch_for(self, assoc: Association, dest: _Destination) -> str:
        """The association's batch, opened with its first C-STORE (a C-ECHO alone leaves no trace)."""
        batch_id = self.batches.get(id(assoc))
        if batch_id is None:
            origin = f"{assoc.requestor.ae_title.strip()} from {assoc.requestor.address}"
            batch_id = service.open_batch(self.hub, dest.project_id, source="dicom", origin=origin)
            self.batches[id(assoc)] = batch_id
        return batch_id

    def _on_rejected(self, event: evt.Event, dest: _Destination) -> None:
        assoc = event.assoc
        caller = (assoc.requestor.ae_title or "").strip()[:16]
        ASSOCIATIONS.labels(dest.slug, "rejected").inc()
        log.warning("dicom.association_rejected", project=dest.slug, calling_ae=caller,
                    address=assoc.requestor.address)
        # the association is refused already: if the database does not answer, the event waits in the
        # audit outbox (pynetdicom would only log an exception from this handler)
        outbox.record_after(self.hub, service.IMPORT_ACTOR, "imaging.association.rejected", outcome="denied",
                            project_id=dest.project_id, target=f"dicom:{dest.config.ae_title}",
                            details={"calling_ae": caller, "address": assoc.requestor.address,
                                     "called_ae": (assoc.acceptor.ae_title or "").strip()[:16]})

    def _on_end(self, event: evt.Event, dest: _Destination) -> None:
        with self.lock:
            batch_id = self.batches.pop(id(event.assoc), None)
            if id(event.assoc) in self.live:
                self.live.discard(id(event.assoc))
                dest.open_associations -= 1
            dest.last_activity = time.monotonic()
        # (a sender gone: objects held back while it was connected may go to verification now)
        self.queue.put(_Close(dest, batch_id) if batch_id is not None else _WAKE)

    def _on_store(self, event: evt.Event, dest: _Destination) -> Dataset | int:
        started = time.perf_counter()
        result = self._store(event, dest)
        STORE_SECONDS.labels(dest.slug).observe(time.perf_counter() - started)
        STORES.labels(dest.slug, f"{result if isinstance(result, int) else result.Status:04X}").inc()
        return result

    def _store(self, event: evt.Event, dest: _Destination) -> Dataset | int:
        tmp = Path(event.dataset_path)
        try:
            batch_id = self._batch_for(event.assoc, dest)
        except Exception:  # the database is unreachable: the sender may retry later
            tmp.unlink(missing_ok=True)
            log.exception("dicom.batch_failed", project=dest.slug)
            return _status(OUT_OF_RESOURCES, "temporarily unable to store")
        size = tmp.stat().st_size
        nbytes = quota_estimate(size)
        # held against the quota from here (with what is acknowledged and not archived yet), so that concurrent
        # associations cannot both take the last room; given back unless acknowledged
        if not self._reserve(dest.project_id, nbytes):
            tmp.unlink(missing_ok=True)
            service.record_rejected(self.hub, batch_id, "the project's storage quota is full", nbytes=size)
            return _status(OUT_OF_RESOURCES, "storage quota exhausted")
        acknowledged = False
        try:
            result = self._spool_and_acknowledge(dest, batch_id, tmp, size, nbytes)
            acknowledged = isinstance(result, int) and result == SUCCESS
        finally:
            if not acknowledged:
                self._release(dest.project_id, nbytes, settled=False)
        return result

    def _spool_and_acknowledge(self, dest: _Destination, batch_id: str, tmp: Path, size: int, nbytes: int
                               ) -> Dataset | int:
        folder = self.spool / str(dest.project_id) / batch_id
        new_dirs = [] if folder.is_dir() else [folder.parent, folder.parent.parent]  # their entries, once
        folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.acknowledge == "received":
            return self._keep_received(dest, batch_id, tmp, [folder, *new_dirs], size, nbytes)
        stem = folder / uuid.uuid4().hex
        raw = stem.with_suffix(".raw")
        os.replace(tmp, raw)
        ctx = dest.ctx
        try:
            # In this thread: the engine takes ~1 ms and a pool round trip would add as much; the
            # heavier verification runs in the process pool after the acknowledgement.
            summary = pipeline.deidentify_stage(str(raw), str(stem.with_suffix(".dcm")), ctx.profile, ctx.secret)
        except DeidError as exc:
            raw.unlink(missing_ok=True)
            service.record_rejected(self.hub, batch_id, f"not processable DICOM: {exc}", nbytes=size)
            log.info("dicom.store_refused", project=dest.slug, reason=service.safe_reason(str(exc)))
            return _status(CANNOT_UNDERSTAND, f"refused: {exc}")
        except OSError as exc:  # the disk is full or failing: the sender may retry later
            raw.unlink(missing_ok=True)
            stem.with_suffix(".dcm").unlink(missing_ok=True)
            log.exception("dicom.store_failed", project=dest.slug)
            return _status(OUT_OF_RESOURCES, f"temporarily unable to store: {exc.strerror or 'I/O error'}")
        except Exception as exc:  # an object the engine cannot handle: refuse it, never store it as is
            raw.unlink(missing_ok=True)
            stem.with_suffix(".dcm").unlink(missing_ok=True)
            log.exception("dicom.store_error", project=dest.slug)
            service.record_rejected(self.hub, batch_id, f"de-identification failed: {type(exc).__name__}",
                                    nbytes=size)
            return _status(CANNOT_UNDERSTAND, "refused: the object could not be de-identified")
        summary["received_size"] = size
        spool_size = stem.with_suffix(".dcm").stat().st_size
        # what the archive will count is known now: the object holds that instead of the estimate; one larger
        # than estimated (a deflated object is inflated) is refused if the quota has no room for the difference
        grown = sealed_estimate(spool_size) - nbytes
        if grown > 0 and not self._reserve(dest.project_id, grown):
            for suffix in (".raw", ".dcm"):
                stem.with_suffix(suffix).unlink(missing_ok=True)
            service.record_rejected(self.hub, batch_id, "the project's storage quota is full", nbytes=size)
            return _status(OUT_OF_RESOURCES, "storage quota exhausted")
        try:
            # durable before the success status goes out; the output's fsync starts while the summary is written
            started = [self.fsyncer.submit(fsync_path, stem.with_suffix(".dcm"))] if self.cfg.fsync else []
            self._write_sidecar(stem, batch_id, summary, spool_size=spool_size)
            if self.cfg.fsync:
                self._durable([stem.with_suffix(".json"), folder, *new_dirs], started)
        except OSError as exc:  # not acknowledged: the sender may retry later
            for suffix in (".raw", ".dcm", ".json", ".json.tmp"):
                stem.with_suffix(suffix).unlink(missing_ok=True)
            self._release(dest.project_id, max(grown, 0), settled=False)  # (the caller gives back the rest)
            log.exception("dicom.store_failed", project=dest.slug)
            return _status(OUT_OF_RESOURCES, f"temporarily unable to store: {exc.strerror or 'I/O error'}")
        if grown < 0:  # smaller than estimated: the surplus is free again
            self._release(dest.project_id, -grown, settled=False)
        return self._acknowledged(_Item(dest, batch_id, stem, summary, nbytes=nbytes + grown))

    def _keep_received(self, dest: _Destination, batch_id: str, tmp: Path, dirs: list[Path], size: int,
                       nbytes: int) -> Dataset | int:
        """``imaging.acknowledge = "received"``: the original, durable in the spool, is what is acknowledged;
        the pool de-identifies it (``pipeline.deidentify_verify_and_seal``). Its size is in its name, so that
        a start after a power cut keeps only an original whose fsyncs completed (``_received_in_full``)."""
        stem = dirs[0] / f"{uuid.uuid4().hex}_{size}"
        raw = stem.with_suffix(".raw")
        os.replace(tmp, raw)
        try:
            if self.cfg.fsync:  # durable before the success status goes out
                self._durable([raw, *dirs])
        except OSError as exc:  # not acknowledged: the sender may retry later
            raw.unlink(missing_ok=True)
            log.exception("dicom.store_failed", project=dest.slug)
            return _status(OUT_OF_RESOURCES, f"temporarily unable to store: {exc.strerror or 'I/O error'}")
        return self._acknowledged(_Item(dest, batch_id, stem, received=True, nbytes=nbytes))

    def _acknowledged(self, item: _Item) -> int:
        item.dest.last_activity = time.monotonic()
        self._enqueue(item)
        return SUCCESS

    # -- quota ----------------------------------------------------------------------------------
    def _reserve(self, project_id: uuid.UUID, nbytes: int) -> bool:
        """Hold ``nbytes`` of the project's quota for an object being stored, if they fit beside what is held
        already (acknowledged, not archived) and what was archived since the quota was last read."""
        with self.lock:
            q = self.quotas.setdefault(project_id, _Quota())
            if not q.fits(nbytes):
                return False
            q.pending += nbytes
            return True

    def _release(self, project_id: uuid.UUID, nbytes: int, *, settled: bool) -> None:
        """Give back what an object held: not acknowledged, refused, or (``settled``) now in the archive."""
        with self.lock:
            q = self.quotas.setdefault(project_id, _Quota())
            q.pending -= nbytes
            if settled:
                q.settled += nbytes

    # -- spool ----------------------------------------------------------------------------------
    def _write_sidecar(self, stem: Path, batch_id: str, summary: dict[str, Any], *, spool_size: int | None = None
                       ) -> None:
        """The summary beside the de-identified file. Original identifiers (the pseudonym map) are
        sealed under the key-store key; the rest holds only pseudonyms. Renamed into place last:
        a ``.json`` means the object was (or was about to be) acknowledged. It records the size of the
        ``.dcm``, so that a start after a power cut drops a pair whose fsyncs had not completed (never
        acknowledged: the sender resends it)."""
        context = f"strongroom/spool|{batch_id}|{stem.name}".encode()
        sealed = keystore.seal(keystore.keystore_key(self.hub.settings), json.dumps(summary["pseudonym_map"]).encode(),
                               context)
        public = {k: v for k, v in summary.items() if k != "pseudonym_map"}
        body = json.dumps(public | {"batch_id": batch_id, "sealed_map": base64.b64encode(sealed).decode(),
                                    "spool_size": stem.with_suffix(".dcm").stat().st_size if spool_size is None
                                    else spool_size}).encode()
        tmp = stem.with_suffix(".json.tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
        # The original is not made durable: after a power cut without it the output cannot be
        # leak-scanned, so it goes to quarantine (verification fails closed), never into the dataset.
        os.replace(tmp, stem.with_suffix(".json"))

    def _durable(self, paths: list[Path], started: Sequence[Future[None]] = ()) -> None:
        """fsync every path (the files and the directories holding their names) and return once all
        are on disk, and the fsyncs already ``started``. The fsyncs run concurrently, so the file system
        commits them together (one journal commit instead of one per file, also across concurrent
        associations): ~3x fewer synchronous disk waits per acknowledged object than one after the other."""
        futures = [*started, *(self.fsyncer.submit(fsync_path, path) for path in paths)]
        for future in futures:
            future.result()  # raises the OSError of any that failed: then nothing is acknowledged

    def _read_sidecar(self, stem: Path) -> dict[str, Any] | None:
        """The summary of a spooled object; ``None`` when the pair is incomplete (a power cut before its
        fsyncs completed: it was never acknowledged)."""
        try:
            summary = json.loads(stem.with_suffix(".json").read_bytes())
            context = f"strongroom/spool|{summary['batch_id']}|{stem.name}".encode()
            sealed = base64.b64decode(summary.pop("sealed_map"))
            summary["pseudonym_map"] = json.loads(keystore.open_sealed(self.hub.settings, sealed, context))
            expected = summary.pop("spool_size", None)
            if expected is not None and stem.with_suffix(".dcm").stat().st_size != expected:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return summary

    def _recover(self) -> None:
        """After a crash: re-queue what was acknowledged (has a ``.json``, or is an original acknowledged on
        receipt), drop the rest (the sender got no success for it and will resend), close batches whose
        association is gone."""
        for leftover in (self.spool / "incoming").iterdir():
            leftover.unlink(missing_ok=True)
        with self.hub.sessions() as session:
            open_batches = {b.id: b.project_id for b in session.scalars(
                select(ImportBatch).where(ImportBatch.state == "open", ImportBatch.source == "dicom"))}
        contexts: dict[uuid.UUID, _Destination] = {}

        def context(project_id: uuid.UUID) -> _Destination:
            if project_id not in contexts:
                ctx = service.load_context(self.hub, project_id)
                contexts[project_id] = _Destination(project_id, ctx.slug, None, None, None, ctx)  # type: ignore[arg-type]
            return contexts[project_id]

        recovered = 0
        for project_dir in sorted(p for p in self.spool.iterdir() if p.is_dir() and p.name != "incoming"):
            try:
                project_id = uuid.UUID(project_dir.name)
            except ValueError:
                continue
            for batch_dir in sorted(p for p in project_dir.iterdir() if p.is_dir()):
                for path in sorted(batch_dir.iterdir()):
                    if path.suffix not in (".raw", ".dcm", ".tmp") or path.with_suffix(".json").exists():
                        continue
                    if path.suffix == ".raw" and _received_in_full(path):  # acknowledged on receipt
                        stem = path.with_suffix("")
                        self._requeue_recovered(_Item(context(project_id), batch_dir.name, stem, received=True,
                                                      nbytes=quota_estimate(_named_size(stem))))
                        recovered += 1
                    else:
                        path.unlink(missing_ok=True)
                for sidecar in sorted(batch_dir.glob("*.json")):
                    stem = sidecar.with_suffix("")
                    summary = self._read_sidecar(stem)
                    if summary is None:  # never acknowledged (see _read_sidecar): the sender resends it
                        log.warning("dicom.incomplete_spool_entry_dropped", spool=str(stem))
                        for suffix in (".raw", ".dcm", ".json"):
                            stem.with_suffix(suffix).unlink(missing_ok=True)
                        continue
                    self._requeue_recovered(_Item(context(project_id), batch_dir.name, stem, summary,
                                                  nbytes=_held_for(stem, summary)))
                    recovered += 1
                open_batches.pop(batch_dir.name, None)
                if project_id in contexts:
                    self.queue.put(_Close(contexts[project_id], batch_dir.name))
                else:
                    service.close_batch(self.hub, batch_dir.name)
                    if not any(batch_dir.iterdir()):
                        batch_dir.rmdir()
        for batch_id in open_batches:  # interrupted associations with nothing left to archive
            service.close_batch(self.hub, batch_id)
        if recovered:
            log.warning("dicom.recovered", instances=recovered)
        for project_id in contexts:
            self._pending_publish.add(project_id)

    def _requeue_recovered(self, item: _Item) -> None:
        """An object acknowledged before the restart: it holds its share of the quota again until archived."""
        with self.lock:
            self.quotas.setdefault(item.dest.project_id, _Quota()).pending += item.nbytes
        self._enqueue(item)

    # -- archiver -------------------------------------------------------------------------------
    def _enqueue(self, item: _Item) -> None:
        with self.lock:
            self.unarchived[item.dest.project_id] += 1
        self.queue.put(item)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.pool_size, mp_context=get_context("spawn"), initializer=pipeline.worker_init,
                                   initargs=(os.getpid(), POOL_NICENESS, self.cfg.pool_priority == "idle"))

    def _new_archive_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_archive_worker_init,
                                   initargs=(os.getpid(), self.hub.settings))

    def _archive_elsewhere(self, ctx: service.ImportContext, processed: list[service.Processed]) -> list[str]:
        """``service.archive_processed`` in the archive worker: the rows' ORM work (a quarter of this
        process's GIL time when it ran here) no longer delays the threads acknowledging senders. Only the
        archiver thread calls this (the worker dies with the thread that started it)."""
        try:
            return self.archive_pool.submit(_archive_in_worker, ctx, processed).result()
        except BrokenProcessPool:  # killed or out of memory: a new worker, and the group is tried again
            log.error("dicom.archive_worker_replaced")
            stop_pool(self.archive_pool, grace_seconds=0)
            self.archive_pool = self._new_archive_pool()
            raise

    def _dispatch_loop(self) -> None:
        """Hand acknowledged objects, in order, to verification and then to the archiver, so that the pool
        keeps working while the archiver waits for a group or commits the previous one. With
        ``imaging.receive_backlog``, ``_may_wait`` holds objects back while senders are connected (bounded by
        the backlog): the receiving threads get the CPU and the disk first. Only this long-lived thread
        submits: the pool's workers are started by the thread that submits, and die with it (their
        parent-death signal follows the thread, not the process), so an association's thread must not."""
        held: deque[_Item | _Close | None] = deque()  # in arrival order; the archiver gets them in that order
        waiting = 0  # objects in ``held``
        stopping = False  # None (stop) is in ``held``: nothing waits any more
        while True:
            got = self.queue.get()
            if not isinstance(got, _Wake):
                held.append(got)
                waiting += isinstance(got, _Item)
                stopping = stopping or got is None
            while held:
                item = held[0]
                if isinstance(item, _Item):
                    if item.verified is None:
                        if not stopping and self._may_wait(waiting):
                            break
                        item.verified = self._submit_safely(item)
                    waiting -= 1
                held.popleft()
                self.ready.put(item)
                if item is None:
                    self.archiver.join()  # the workers live until the archiver has their last results
                    return
            WAITING.set(waiting)

    def _may_wait(self, waiting: int) -> bool:
        """Whether the oldest acknowledged object waits: senders are connected and the backlog is within
        ``imaging.receive_backlog``."""
        if waiting > self.cfg.receive_backlog:
            return False
        with self.lock:
            return bool(self.live)

    def _submit_safely(self, item: _Item) -> Future[tuple[dict[str, Any], Any]]:
        try:
            return self._submit(item)
        except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool, once
            log.error("dicom.pool_replaced")
            stop_pool(self.pool, grace_seconds=0)
            self.pool = self._new_pool()
            return self._submit(item)

    def _submit(self, item: _Item) -> Future[tuple[dict[str, Any], Any]]:
        raw, out, ctx = str(item.stem.with_suffix(".raw")), str(item.stem.with_suffix(".dcm")), item.dest.ctx
        if item.received:
            return self.pool.submit(pipeline.deidentify_verify_and_seal, raw, out, ctx.profile, ctx.secret,
                                    self._target(item))
        return self.pool.submit(pipeline.verify_and_seal, raw, out, ctx.profile, item.summary, self._target(item))

    def _archive_loop(self) -> None:
        self.archive_pool.submit(os.getpid)  # start the archive worker now, from this thread (see above)
        while True:
            first = self.ready.get()
            if first is None:
                return
            group: list[_Item | _Close] = [first]
            deadline = time.monotonic() + 0.05
            while len(group) < 64:  # one transaction per project for everything that arrived within 50 ms
                try:
                    nxt = self.ready.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.ready.put(None)
                    break
                group.append(nxt)
            try:
                again = self._archive_group(group)
            except Exception:  # not expected (each project's failure is caught): the whole group again
                log.exception("dicom.archive_failed")
                again = group
            if again:
                self._try_again(again)

    def _try_again(self, again: list[_Item | _Close]) -> None:
        """Storage or database away, a worker that died: archiving is idempotent, so try these again (objects
        verified and sealed anew) in 2 s, up to 5 times; then the object is parked in the spool, publishing goes on
        without it, and it is tried again every ``PARKED_RETRY_SECONDS`` while this process runs (an outage longer
        than the five tries left acknowledged objects unarchived until the next start). The archiver goes on
        meanwhile: one project's failures do not hold up another's objects."""
        retry: list[_Item | _Close] = []
        parked: list[_Item] = []
        for g in again:
            if isinstance(g, _Item):
                g.attempts += 1
                g.verified = None  # verified and sealed again (the dispatcher starts it)
                if g.attempts >= 5:
                    log.error("dicom.archive_parked", spool=str(g.stem), retry_seconds=PARKED_RETRY_SECONDS)
                    with self.lock:
                        self.unarchived[g.dest.project_id] -= 1
                    parked.append(g)
                    continue
            retry.append(g)
        for delay, items, then in ((2, retry, self._requeue), (PARKED_RETRY_SECONDS, parked, self._unpark)):
            if items:
                timer = threading.Timer(delay, then, args=(items,))
                timer.daemon = True
                timer.start()

    def _unpark(self, items: list[_Item]) -> None:
        """Parked objects back in the queue for five more tries (counted as waiting again while they run)."""
        if self.stopping.is_set():  # they wait in the spool for the next start
            return
        for g in items:
            if not g.spooled():  # archived after all by the try that reported a failure
                continue
            g.attempts = 0
            with self.lock:
                self.unarchived[g.dest.project_id] += 1
            self.queue.put(g)

    def _requeue(self, items: list[_Item | _Close]) -> None:
        if not self.stopping.is_set():  # (stopping: they wait in the spool for the next start)
            for g in items:
                self.queue.put(g)

    def _archive_group(self, group: list[_Item | _Close]) -> list[_Item | _Close]:
        """Archive a group, project by project: what fails for one project (its quota, its rows) never holds
        up another's objects. Returns what is to be tried again."""
        # (an item of a retried group may have been archived already: its spool files are gone)
        items = [g for g in group if isinstance(g, _Item) and g.spooled()]
        again: list[_Item | _Close] = []
        by_project: dict[uuid.UUID, list[tuple[_Item, service.Processed]]] = {}
        refused: list[tuple[_Item, str]] = []
        for item in items:
            fut = item.verified
            sealed = None
            try:
                assert fut is not None
                summary, sealed = fut.result()
            except BrokenProcessPool:  # a worker that died is not the object's fault: verified again
                again.append(item)
                continue
            except Exception as exc:  # never release what could not be verified; seal it for review
                if item.received:  # nothing de-identified to hold: left in the spool, tried again
                    log.error("dicom.deidentify_in_pool_failed", spool=str(item.stem), error=type(exc).__name__)
                    again.append(item)
                    continue
                summary = item.summary | {"reasons": [f"verification failed: {type(exc).__name__}"],
                                          "size": item.stem.with_suffix(".dcm").stat().st_size}
            if "rejected" in summary:  # acknowledged on receipt, then found not processable
                refused.append((item, summary["rejected"]))
                continue
            by_project.setdefault(item.dest.project_id, []).append(
                (item, service.Processed(item.batch_id, str(item.stem.with_suffix(".dcm")), summary, sealed=sealed)))
        for project_id, pairs in by_project.items():
            try:
                self._archive_project(project_id, pairs)
            except Exception:
                log.exception("dicom.archive_failed", project=pairs[0][0].dest.slug or str(project_id))
                again.extend(item for item, _ in pairs)
        for item, reason in refused:  # in the import report: the sender already has its success status
            try:
                if service.record_refused_after_acknowledgement(self.hub, item.batch_id, item.stem.name, reason,
                                                                nbytes=_named_size(item.stem)):
                    ARCHIVED.labels(item.dest.slug or str(item.dest.project_id), "rejected").inc()
                    log.info("dicom.refused_after_acknowledgement", project=item.dest.slug, reason=reason)
            except Exception:
                log.exception("dicom.archive_failed", project=item.dest.slug or str(item.dest.project_id))
                again.append(item)
                continue
            for suffix in (".raw", ".dcm"):
                item.stem.with_suffix(suffix).unlink(missing_ok=True)
            self._release(item.dest.project_id, item.nbytes, settled=False)
            with self.lock:
                self.unarchived[item.dest.project_id] -= 1
        for close in (g for g in group if isinstance(g, _Close)):
            try:
                service.close_batch(self.hub, close.batch_id)
            except Exception:
                log.exception("dicom.archive_failed", project=close.dest.slug or str(close.dest.project_id))
                again.append(close)
                continue
            folder = self.spool / str(close.dest.project_id) / close.batch_id
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return again

    def _archive_project(self, project_id: uuid.UUID, pairs: list[tuple[_Item, service.Processed]]) -> None:
        """One project's objects of a group, in one transaction. Over its quota (another channel used it since
        they were acknowledged, or an object grew): the ones that fit are archived, the others wait."""
        ctx = pairs[0][0].dest.ctx
        try:
            outcomes = self._archive_elsewhere(ctx, [p for _, p in pairs])
        except QuotaExceeded:
            fit = self._what_fits(project_id, pairs)
            outcomes = []
            if fit:
                try:
                    outcomes = self._archive_elsewhere(ctx, [p for _, p in pairs[:fit]])
                except QuotaExceeded:
                    fit = 0
            self._wait_for_quota(project_id, pairs[fit:])
            pairs = pairs[:fit]
        slug = pairs[0][0].dest.slug if pairs else ""
        for outcome in outcomes:
            ARCHIVED.labels(slug or str(project_id), outcome).inc()
        for (item, _), outcome in zip(pairs, outcomes, strict=True):
            for suffix in (".raw", ".dcm", ".json"):
                item.stem.with_suffix(suffix).unlink(missing_ok=True)
            self._release(project_id, item.nbytes, settled=outcome != "duplicate")
            if item.needs or item.attempts:  # it waited (quota, a retry): its batch may be closed, its folder empty
                self._drop_empty_folder(item)
        with self.lock:
            self.unarchived[project_id] -= len(pairs)
        if pairs:
            self._pending_publish.add(project_id)

    def _what_fits(self, project_id: uuid.UUID, pairs: list[tuple[_Item, service.Processed]]) -> int:
        """How many of ``pairs``, in order, the project's quota has room for now."""
        room = self._rooms([project_id]).get(project_id, 0)
        fit = 0
        for item, processed in pairs:
            room -= processed.sealed.body_size if processed.sealed is not None else item.nbytes
            if room < 0:
                break
            fit += 1
        return fit

    def _wait_for_quota(self, project_id: uuid.UUID, pairs: list[tuple[_Item, service.Processed]]) -> None:
        """Acknowledged objects the quota has no room for: kept in the spool (they hold their share of the quota,
        so the destination refuses new objects of the project) and archived once the quota allows them
        (``_resume_waiting``, at each refresh; or at the next start). Never deleted; audited once per episode."""
        if not pairs:
            return
        item0 = pairs[0][0]
        slug = item0.dest.slug or str(project_id)
        for item, processed in pairs:
            item.needs = max(1, item.nbytes if processed.sealed is None else processed.sealed.body_size)
            item.verified = None  # verified and sealed again when it is tried again: this body is not needed
            if processed.sealed is not None:
                try:
                    self.storage.delete(processed.sealed.body_key)
                except Exception:
                    log.exception("dicom.delete_failed", project=slug)
        with self.lock:
            waiting = self.waiting.setdefault(project_id, [])
            first = not waiting
            waiting.extend(item for item, _ in pairs)
            self.unarchived[project_id] -= len(pairs)  # publishing what is archived goes on
            count, nbytes = len(waiting), sum(i.needs for i in waiting)
        WAITING_FOR_QUOTA.labels(slug).set(count)
        log.warning("dicom.waiting_for_quota", project=slug, objects=count, bytes=nbytes)
        if first:
            try:
                outbox.record_after(self.hub, service.IMPORT_ACTOR, "imaging.import.waiting_for_quota",
                                    outcome="denied", project_id=project_id, target=f"import:{item0.batch_id}",
                                    details={"objects": len(pairs), "bytes": sum(i.needs for i, _ in pairs),
                                             "detail": "acknowledged DICOM objects wait in the spool until the "
                                                       "project's storage quota has room for them"})
            except Exception:
                log.exception("dicom.audit_failed", project=slug)

    def _resume_waiting(self, project_id: uuid.UUID, room: int) -> None:
        """Send objects waiting for quota on, in order, as far as the project's quota has ``room`` for them."""
        with self.lock:
            waiting = self.waiting.get(project_id)
            if not waiting:
                return
            taken = 0
            for item in waiting:
                if item.needs > room:
                    break
                room -= item.needs
                taken += 1
            resumed, waiting[:] = waiting[:taken], waiting[taken:]
            left = len(waiting)
            if not waiting:
                del self.waiting[project_id]
        if not resumed:
            return
        slug = resumed[0].dest.slug or str(project_id)
        WAITING_FOR_QUOTA.labels(slug).set(left)
        log.info("dicom.quota_resumed", project=slug, objects=len(resumed), still_waiting=left)
        for item in resumed:
            item.attempts = 0
            self._enqueue(item)

    def _drop_empty_folder(self, item: _Item) -> None:
        folder = item.stem.parent
        with self.lock:
            if item.batch_id in list(self.batches.values()):  # its association is still storing into it
                return
        with contextlib.suppress(OSError):  # not empty (another waiting object), or gone already
            folder.rmdir()

    def _target(self, item: _Item) -> pipeline.SealTarget:
        fingerprint, keypair = item.dest.ctx.keys.current
        # (acknowledged on receipt: the instance is known only once the worker has de-identified it, and
        # the worker names the file)
        file_id = "" if item.received else service.archive_file_id(item.dest.ctx, item.summary["sop_instance_uid"])
        return pipeline.SealTarget(self.hub.settings.archive.storage, self.hub.settings.var_dir, fingerprint,
                                   keypair.public, str(item.dest.project_id), file_id)

    def publish_quiet(self) -> None:
        """Publish projects whose imports have been quiet for ``publish_idle_seconds``."""
        now = time.monotonic()
        for project_id in list(self._pending_publish):
            dest = self.destinations.get(project_id)
            busy = self.unarchived[project_id] > 0 or (dest is not None and (
                dest.open_associations or now - dest.last_activity < self.cfg.publish_idle_seconds))
            if busy:
                continue
            self._pending_publish.discard(project_id)
            try:
                version = service.publish_pending(self.hub, project_id)
            except Exception:
                log.exception("dicom.publish_failed", project=str(project_id))
                self._pending_publish.add(project_id)
                continue
            if version:
                log.info("dicom.published", project=dest.slug if dest else str(project_id), version=version)


_archive_hub: Hub | None = None


def _archive_worker_init(parent_pid: int, settings: Any) -> None:
    """The archive worker: dies with the destination's process, has its own connections."""
    global _archive_hub
    pipeline.worker_init(parent_pid)
    _archive_hub = Hub.from_settings(settings)


def _archive_in_worker(ctx: service.ImportContext, processed: list[service.Processed]) -> list[str]:
    assert _archive_hub is not None
    return service.archive_processed(_archive_hub, storage_for(_archive_hub), ctx, processed)


def _named_size(stem: Path) -> int:
    """The size in the name of an original acknowledged on receipt (``<hex>_<size>``); 0 if none."""
    size = stem.name.rpartition("_")[2]
    return int(size) if size.isdigit() else 0


def _held_for(stem: Path, summary: dict[str, Any]) -> int:
    """What a recovered de-identified object holds of its project's quota (as when it was acknowledged)."""
    try:
        return sealed_estimate(stem.with_suffix(".dcm").stat().st_size)
    except OSError:
        return quota_estimate(int(summary.get("received_size") or 0))


def _received_in_full(raw: Path) -> bool:
    """An original acknowledged on receipt: its name carries its size and the file has that size. After a power
    cut, one whose fsyncs had not completed (it was never acknowledged; the sender resends it) is shorter or
    absent, and one kept by ``imaging.acknowledge = "deidentified"`` carries no size (it waits for its
    ``.json``)."""
    try:
        return "_" in raw.stem and raw.stat().st_size == _named_size(raw.with_suffix(""))
    except OSError:
        return False


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds
