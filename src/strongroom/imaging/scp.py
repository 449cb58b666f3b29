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
"""

from __future__ import annotations

import base64
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
from ..projects import service as projects
from ..projects.models import Project, ProjectSetting
from ..projects.settings import DicomSender
from . import keystore, pipeline, reactor, service
from .deid import DeidError
from .destination import DESTINATION_SERVICES, DestinationRef
from .models import ImportBatch
from .settings import DicomDestination

log = structlog.get_logger("strongroom.dicom")
ASSOCIATIONS = MetricCounter("strongroom_dicom_associations_total", "DICOM associations", ["project", "outcome"])
STORES = MetricCounter("strongroom_dicom_stores_total", "C-STORE requests answered", ["project", "status"])
STORE_SECONDS = Histogram("strongroom_dicom_store_seconds", "C-STORE: data received to response sent",
                          ["project"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
ARCHIVED = MetricCounter("strongroom_dicom_archived_total", "instances archived, quarantined or duplicate; rejected: "
                         "acknowledged on receipt, then not processable", ["project", "outcome"])
WAITING = Gauge("strongroom_dicom_waiting_for_verification",
                "acknowledged objects waiting in the spool while senders are connected (imaging.receive_backlog)")

# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_NOBODY = "<no sender allowed from here>"  # longer than any AE title: matches no caller


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
    free_bytes: int = 1 << 62
    last_activity: float = 0.0
    open_associations: int = 0


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
        (self.spool / "incoming").mkdir(parents=True, exist_ok=True, mode=0o700)
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
                                          Project.status == "active"))
            wanted = {}
            for project_id, value, slug, free in rows:
                if not value:
                    continue
                senders = [DicomSender.model_validate(s) for s in
                           projects.get_setting(session, project_id, "dicom_senders")]
                wanted[project_id] = (slug, DicomDestination.model_validate(value), senders, int(free or 0))
        return wanted

    def refresh(self) -> None:
        """Start, stop or update destinations to match the project settings."""
        try:
            wanted = self._wanted()
        except Exception:
            log.exception("dicom.refresh_failed")
            return
        for project_id, running in list(self.destinations.items()):
            w = wanted.get(project_id)
            if w is None or w[1] != running.config:
                self._stop_destination(running)
                del self.destinations[project_id]
        for project_id, (slug, config, senders, free) in wanted.items():
            dest = self.destinations.get(project_id)
            if dest is None:
                try:
                    dest = self._start_destination(project_id, slug, config)
                except OSError as exc:
                    log.error("dicom.destination_failed", project=slug, port=config.port, error=str(exc))
                    continue
                self.destinations[project_id] = dest
            dest.ae.senders = senders
            dest.free_bytes = free
            try:  # the profile may have changed: new batches use the new one
                if not dest.open_associations:
                    dest.ctx = service.load_context(self.hub, project_id)
            except Exception:
                log.exception("dicom.context_failed", project=slug)

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
        if size * 2 > dest.free_bytes:
            tmp.unlink(missing_ok=True)
            service.record_rejected(self.hub, batch_id, "the project's storage quota is full", nbytes=size)
            return _status(OUT_OF_RESOURCES, "storage quota exhausted")
        folder = self.spool / str(dest.project_id) / batch_id
        new_dirs = [] if folder.is_dir() else [folder.parent, folder.parent.parent]  # their entries, once
        folder.mkdir(parents=True, exist_ok=True)
        if self.cfg.acknowledge == "received":
            return self._keep_received(dest, batch_id, tmp, [folder, *new_dirs], size)
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
            log.info("dicom.store_refused", project=dest.slug, reason=str(exc))
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
        try:
            # durable before the success status goes out; the output's fsync starts while the summary is written
            started = [self.fsyncer.submit(fsync_path, stem.with_suffix(".dcm"))] if self.cfg.fsync else []
            self._write_sidecar(stem, batch_id, summary)
            if self.cfg.fsync:
                self._durable([stem.with_suffix(".json"), folder, *new_dirs], started)
        except OSError as exc:  # not acknowledged: the sender may retry later
            for suffix in (".raw", ".dcm", ".json", ".json.tmp"):
                stem.with_suffix(suffix).unlink(missing_ok=True)
            log.exception("dicom.store_failed", project=dest.slug)
            return _status(OUT_OF_RESOURCES, f"temporarily unable to store: {exc.strerror or 'I/O error'}")
        return self._acknowledged(_Item(dest, batch_id, stem, summary), size)

    def _keep_received(self, dest: _Destination, batch_id: str, tmp: Path, dirs: list[Path], size: int
                       ) -> Dataset | int:
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
        return self._acknowledged(_Item(dest, batch_id, stem, received=True), size)

    def _acknowledged(self, item: _Item, size: int) -> int:
        item.dest.free_bytes -= size
        item.dest.last_activity = time.monotonic()
        self._enqueue(item)
        return SUCCESS

    # -- spool ----------------------------------------------------------------------------------
    def _write_sidecar(self, stem: Path, batch_id: str, summary: dict[str, Any]) -> None:
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
                                    "spool_size": stem.with_suffix(".dcm").stat().st_size}).encode()
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
                contexts[project_id] = _Destination(project_id, "", None, None, None,  # type: ignore[arg-type]
                                                    service.load_context(self.hub, project_id))
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
                        self._enqueue(_Item(context(project_id), batch_dir.name, path.with_suffix(""), received=True))
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
                    self._enqueue(_Item(context(project_id), batch_dir.name, stem, summary))
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
            while len(group) < 64:  # one transaction for everything that arrived within 50 ms
                try:
                    nxt = self.ready.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.ready.put(None)
                    break
                group.append(nxt)
            try:
                self._archive_group(group)
            except Exception:  # storage or database away: archiving is idempotent, so try the group again
                log.exception("dicom.archive_failed")
                time.sleep(2)
                for g in group:
                    if isinstance(g, _Item):
                        g.attempts += 1
                        g.verified = None  # verified and sealed again (the dispatcher starts it)
                        if g.attempts >= 5:  # left in the spool for the next start; publishing goes on
                            log.error("dicom.archive_gave_up", spool=str(g.stem))
                            with self.lock:
                                self.unarchived[g.dest.project_id] -= 1
                            continue
                    self.queue.put(g)

    def _archive_group(self, group: list[_Item | _Close]) -> None:
        # (an item of a retried group may have been archived already: its spool files are gone)
        items = [g for g in group if isinstance(g, _Item) and g.spooled()]
        futures = [item.verified for item in items]
        for fut in futures:  # a worker that died is not the object's fault: the group is tried again
            if fut is not None and isinstance(fut.exception(), BrokenProcessPool):
                raise RuntimeError("the verification pool broke")
        by_project: dict[uuid.UUID, list[tuple[_Item, service.Processed]]] = {}
        refused: list[tuple[_Item, str]] = []
        for item, fut in zip(items, futures, strict=True):
            sealed = None
            try:
                assert fut is not None
                summary, sealed = fut.result()
            except Exception as exc:  # never release what could not be verified; seal it for review
                if item.received:  # nothing de-identified to hold: left in the spool, tried again
                    raise RuntimeError(f"de-identification in the pool failed: {type(exc).__name__}") from exc
                summary = item.summary | {"reasons": [f"verification failed: {type(exc).__name__}"],
                                          "size": item.stem.with_suffix(".dcm").stat().st_size}
            if "rejected" in summary:  # acknowledged on receipt, then found not processable
                refused.append((item, summary["rejected"]))
                continue
            by_project.setdefault(item.dest.project_id, []).append(
                (item, service.Processed(item.batch_id, str(item.stem.with_suffix(".dcm")), summary, sealed=sealed)))
        for project_id, pairs in by_project.items():
            ctx = pairs[0][0].dest.ctx
            outcomes = self._archive_elsewhere(ctx, [p for _, p in pairs])
            for outcome in outcomes:
                ARCHIVED.labels(pairs[0][0].dest.slug or str(project_id), outcome).inc()
            for item, _ in pairs:
                for suffix in (".raw", ".dcm", ".json"):
                    item.stem.with_suffix(suffix).unlink(missing_ok=True)
            with self.lock:
                self.unarchived[project_id] -= len(pairs)
            self._pending_publish.add(project_id)
        for item, reason in refused:  # in the import report: the sender already has its success status
            if service.record_refused_after_acknowledgement(self.hub, item.batch_id, item.stem.name, reason,
                                                            nbytes=_named_size(item.stem)):
                ARCHIVED.labels(item.dest.slug or str(item.dest.project_id), "rejected").inc()
                log.info("dicom.refused_after_acknowledgement", project=item.dest.slug, reason=reason)
            for suffix in (".raw", ".dcm"):
                item.stem.with_suffix(suffix).unlink(missing_ok=True)
            with self.lock:
                self.unarchived[item.dest.project_id] -= 1
        for close in (g for g in group if isinstance(g, _Close)):
            service.close_batch(self.hub, close.batch_id)
            folder = self.spool / str(close.dest.project_id) / close.batch_id
            if folder.is_dir() and not any(folder.iterdir()):
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
