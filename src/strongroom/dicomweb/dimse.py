"""DIMSE Query/Retrieve on each project's DICOM destination: C-FIND, C-GET and C-MOVE SCP (PS3.4 Annex C).

The same door as C-STORE: the association is accepted only from a calling AE title registered in the
project's allowed DICOM senders *and* from that sender's address (``imaging.scp``); the handlers are bound
to one project's destination and see only that project, with a member's view (archived and published
instances; quarantined, held or discarded ones never appear).

- **C-FIND** (Study Root and Patient Root, STUDY / SERIES / IMAGE levels) answers from the index only, with
  the QIDO functions of ``query`` (the same matching: single value, ``*``/``?`` wildcards, UID lists,
  date/time ranges, universal matching; counts computed when asked). Nothing is decrypted.
- **C-GET** sends the instances back on the same association, **C-MOVE** to a destination AE the project
  registered (``settings.MOVE_DESTINATIONS_SETTING``: AE title, host, port; anything else is 0xA801; an entry
  the project itself added is resolved at each move and dialled by its checked address, and one that resolves to
  the hub's machine or its internals is 0xA801 as well, audited, no association opened), both
  as C-STORE sub-operations. Each instance is the de-identified archived plaintext, decrypted in memory one
  at a time (``retrieve.Decryptor``), never written to disk. A retrieve hands the bytes out, so it is a
  download: ``archive.authz.require_download_allowed`` decides as for a member on WADO-RS (the project's
  *Download to researchers' own machines* setting; locked: 0x0124 *Refused: Not Authorised* with the reason).

Audit: one ``dicom.find`` event per C-FIND request, one ``dicom.study.retrieved`` event per study and
C-GET/C-MOVE request (with the number of instances), never one per instance; refusals are audited too.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import structlog
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..archive.authz import ReadGrant, require_download_allowed
from ..archive.models import READY, ArchiveFile
from ..audit import service as audit
from ..audit.service import Actor
from ..db import transaction
from ..errors import Forbidden
from ..imaging.destination import DestinationRef
from ..projects import service as projects
from ..projects.settings import DicomSender
from . import attributes as attrs
from . import query
from .attributes import INSTANCE, SERIES, STUDY, BadQuery, Match
from .retrieve import MAX_INSTANCES, Decryptor
from .settings import KEY as MOVE_DESTINATIONS
from .settings import Undialable, dial_address, registered

log = structlog.get_logger("strongroom.dicom")

FIND_MODELS = (StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
GET_MODELS = (StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet)
MOVE_MODELS = (StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove)

# Statuses (PS3.4 C.4, PS3.7 C)
PENDING, SUCCESS, CANCELLED = 0xFF00, 0x0000, 0xFE00
NOT_AUTHORISED = 0x0124  # Refused: Not Authorised (a general status)
OUT_OF_RESOURCES = 0xA702  # Refused: Out of resources - unable to perform sub-operations
IDENTIFIER_DOES_NOT_MATCH = 0xA900

PATIENT = "patient"
LEVELS = {"PATIENT": PATIENT, "STUDY": STUDY, "SERIES": SERIES, "IMAGE": INSTANCE}
PATIENT_KEYS = ("PatientID", "PatientName")  # matched and returned at PATIENT level, with these counts:
PATIENT_COUNTS = {"NumberOfPatientRelatedStudies": ("00201200", 2), "NumberOfPatientRelatedSeries": ("00201202", 3),
                  "NumberOfPatientRelatedInstances": ("00201204", 4)}  # tag, position in query.patients' rows
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID",
              INSTANCE: "SOPInstanceUID"}
RETRIEVE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                 "IMAGE": "SOPInstanceUID"}
NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC",
            "QueryRetrieveView"}
PAGE = 500  # C-FIND results are read from the index a page at a time


def add_query_retrieve(ae: ApplicationEntity, ref: DestinationRef) -> list[Any]:
    """The Q/R presentation contexts on the destination's AE, and the handlers bound to its project."""
    for model in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS):
        ae.add_supported_context(model)
    # C-GET: the workstation proposes the storage classes in the SCP role (it receives); accept either role
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return [(evt.EVT_C_FIND, on_find, [ref]), (evt.EVT_C_GET, on_get, [ref]), (evt.EVT_C_MOVE, on_move, [ref])]


# -- identifiers ----------------------------------------------------------------------------------
@dataclass
class FindRequest:
    """A C-FIND identifier: the level, the index matches, the keys to return, and keys the index does not
    hold (returned zero-length, PS3.4 C.2.2.1.3)."""

    level: str
    matches: list[Match]
    fields: list[str]
    unsupported: list[DataElement]
    retrieve_ae: bool


def _text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _level(identifier: Dataset, allowed: dict[str, str]) -> str:
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if raw not in allowed:
        raise BadQuery(f"QueryRetrieveLevel {raw or '(missing)'!r}: use {', '.join(allowed)}")
    return raw


def parse_find(identifier: Dataset) -> FindRequest:
    """The C-FIND identifier as index matches (the QIDO matching of ``attributes.parse_match``)."""
    level = LEVELS[_level(identifier, LEVELS)]
    matches: list[Match] = []
    fields: list[str] = []
    unsupported: list[DataElement] = []
    for elem in identifier:
        keyword = elem.keyword
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private or keyword in NOT_KEYS:
            continue
        if level == PATIENT and keyword in PATIENT_COUNTS:
            fields.append(keyword)
            continue
        attribute = attrs.BY_KEYWORD.get(keyword)
        reachable = attribute is not None and (
            keyword in PATIENT_KEYS if level == PATIENT else attribute.level in attrs.REACHABLE[level])
        if attribute is None or not reachable:
            unsupported.append(elem)
            continue
        if keyword not in fields:
            fields.append(keyword)
        if keyword in attrs.NOT_MATCHABLE or elem.VR == "SQ":
            continue  # counts are return keys only
        text = _text(elem).strip()
        if text.strip("*") == "":  # zero length or "*": universal matching
            continue
        match = attrs.parse_match(attribute, text)
        if match is not None:
            matches.append(match)
    if UNIQUE_KEY[level] not in fields:  # always identify each result
        fields.append(UNIQUE_KEY[level])
    return FindRequest(level, matches, fields, unsupported, "RetrieveAETitle" in identifier)


def parse_retrieve(identifier: Dataset) -> list[Match]:
    """A C-GET/C-MOVE identifier: the unique keys down to its level (UID lists; PatientID at PATIENT
    level); the level's own key must be given (a retrieve never means "everything")."""
    level = _level(identifier, RETRIEVE_KEYS)
    matches = []
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        text = _text(identifier[keyword]).strip() if keyword in identifier else ""
        if text in ("", "*"):
            if keyword == RETRIEVE_KEYS[level]:
                raise BadQuery(f"a {level} retrieve names the {keyword}")
            continue
        if "*" in text or "?" in text:
            raise BadQuery(f"{keyword}: a retrieve names values, not patterns")
        match = attrs.parse_match(attrs.BY_KEYWORD[keyword], text)
        if match is not None:
            matches.append(match)
    return matches


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


@dataclass(frozen=True)
class Caller:
    ae_title: str
    address: str

    @property
    def actor(self) -> Actor:
        return Actor(id=None, label=f"dicom:{self.ae_title}@{self.address}"[:255], ip=self.address)

    def details(self) -> dict[str, str]:
        return {"calling_ae": self.ae_title, "address": self.address}


def _caller(event: evt.Event) -> Caller:
    requestor = event.assoc.requestor
    return Caller((requestor.ae_title or "").strip()[:16], str(requestor.address))


SENDERS = "dicom_senders"


def _not_a_workstation(ref: DestinationRef, caller: Caller, operation: str) -> Dataset | None:
    """Deny by default: only a sender the project named a workstation (``query_retrieve``) may query or
    retrieve; a scanner only sends. The refusal (0x0124) is audited."""
    import ipaddress

    with transaction(ref.hub.sessions) as session:
        senders = [DicomSender.model_validate(s) for s in projects.get_setting(session, ref.project_id, SENDERS)]
        try:
            address = ipaddress.ip_address(caller.address)
        except ValueError:
            address = None
        if address is not None and any(
                s.query_retrieve and s.ae_title.strip() == caller.ae_title
                and address in ipaddress.ip_network(s.address, strict=False) for s in senders):
            return None
        audit.record(session, caller.actor, "dicom.query.refused", outcome="denied", project_id=ref.project_id,
                     target=f"dicom:{ref.ae_title}", details=caller.details() | {
                         "operation": operation, "reason": "sender not allowed to query and retrieve"})
    log.warning("dicom.query_refused", project=ref.slug, operation=operation, **caller.details())
    return _status(NOT_AUTHORISED, "this sender may store, not query or retrieve")


# -- C-FIND ---------------------------------------------------------------------------------------
def on_find(event: evt.Event, ref: DestinationRef) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    caller = _caller(event)
    refusal = _not_a_workstation(ref, caller, "find")
    if refusal is not None:
        yield refusal, None
        return
    try:
        request = parse_find(event.identifier)
    except BadQuery as exc:
        yield _status(IDENTIFIER_DOES_NOT_MATCH, exc.detail), None
        return
    with transaction(ref.hub.sessions) as session:
        audit.record(session, caller.actor, "dicom.find", project_id=ref.project_id,
                     target=f"dicom:{ref.ae_title}",
                     details=caller.details() | {"level": request.level,
                                                 "keys": [m.attribute.keyword for m in request.matches]})
    level_name = str(event.identifier.QueryRetrieveLevel).strip().upper()
    for result in find(ref, request):
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, _response(result, request, level_name, ref)


def find(ref: DestinationRef, request: FindRequest) -> Iterator[dict[str, Any]]:
    """The matches of a C-FIND, as QIDO's DICOM JSON, read from the index a page at a time."""
    scope = query.Scope(ref.project_id, ref.slug, None)
    if request.level == PATIENT:
        yield from _patients(ref, scope, request)
        return
    search = {STUDY: query.studies, SERIES: query.series, INSTANCE: query.instances}[request.level]
    offset = 0
    while True:
        q = query.Query(tuple(request.matches), tuple(request.fields), PAGE, offset)
        with ref.hub.sessions() as session:
            page = search(session, scope, q, "")
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def _patients(ref: DestinationRef, scope: query.Scope, request: FindRequest) -> Iterator[dict[str, Any]]:
    pn: dict[str, Any] = {"vr": "PN"}
    lo: dict[str, Any] = {"vr": "LO"}
    is_: dict[str, Any] = {"vr": "IS"}
    offset = 0
    while True:
        with ref.hub.sessions() as session:
            page = query.patients(session, scope, request.matches, PAGE, offset)
        for row in page:
            values = {"PatientID": ("00100020", lo, row[0]), "PatientName": ("00100010", pn, row[1]),
                      **{k: (tag, is_, row[i]) for k, (tag, i) in PATIENT_COUNTS.items()}}
            out: dict[str, dict[str, Any]] = {}
            for keyword in request.fields:
                tag, empty, value = values[keyword]
                if value in ("", None):
                    out[tag] = dict(empty)
                else:
                    out[tag] = dict(empty) | {"Value": [{"Alphabetic": value} if empty is pn else value]}
            yield dict(sorted(out.items()))
        if len(page) < PAGE:
            return
        offset += PAGE


def _response(result: dict[str, Any], request: FindRequest, level: str, ref: DestinationRef) -> Dataset:
    result = {tag: value for tag, value in result.items() if tag != attrs.RETRIEVE_URL.tag}
    ds = Dataset.from_json(result)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    if request.retrieve_ae:
        ds.add_new(0x00080054, "AE", ref.ae_title)  # RetrieveAETitle: this destination
    for elem in request.unsupported:
        ds.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
    return ds


# -- C-GET and C-MOVE -----------------------------------------------------------------------------
@dataclass
class _Item:
    file: ArchiveFile
    sop_class: str
    transfer_syntax: str


def _prepare(ref: DestinationRef, identifier: Dataset, caller: Caller, operation: str,
             destination: str | None) -> tuple[list[_Item], Decryptor] | Dataset:
    """What a retrieve sends (and the audit events), or the failure status to answer with."""
    not_allowed = _not_a_workstation(ref, caller, operation) if operation != "move" else None  # (on_move: first)
    if not_allowed is not None:
        return not_allowed
    try:
        matches = parse_retrieve(identifier)
    except BadQuery as exc:
        return _status(IDENTIFIER_DOES_NOT_MATCH, exc.detail)
    scope = query.Scope(ref.project_id, ref.slug, None)
    where = caller.details() | {"operation": operation, **({"destination": destination} if destination else {})}
    with transaction(ref.hub.sessions) as session:
        rows = query.retrievable(session, scope, matches, MAX_INSTANCES + 1)
        if len(rows) > MAX_INSTANCES:
            return _status(OUT_OF_RESOURCES, f"more than {MAX_INSTANCES} instances: retrieve by series")
        items, studies = [], Counter[str]()
        for inst in rows:
            f = session.get(ArchiveFile, inst.file_id) if inst.file_id else None
            if f is None or f.hold is not None or f.state != READY:  # held or not ready: not there
                continue
            items.append(_Item(f, inst.sop_class_uid or "", inst.transfer_syntax_uid or ""))
            studies[inst.study_uid] += 1
        if not items:
            return [], Decryptor(ref.hub, ref.storage, [])
        try:  # the bytes leave the platform: the download rule, as for a member on WADO-RS
            require_download_allowed(session, ReadGrant("owner", ref.project_id))
        except Forbidden as exc:
            refusal: Dataset | None = _status(NOT_AUTHORISED, "downloads are locked for this project")
            audit.record(session, caller.actor, "dicom.retrieve.refused", outcome="denied",
                         project_id=ref.project_id, target=f"dicom:{ref.ae_title}",
                         details=where | {"reason": exc.detail, "instances": len(items)})
        else:
            refusal = None
            for study, count in studies.items():
                audit.record(session, caller.actor, "dicom.study.retrieved", project_id=ref.project_id,
                             target=f"study:{study}"[:255], details=where | {"instances": count})
            decryptor = Decryptor.open(ref.hub, session, ref.storage)
            for item in items:
                session.expunge(item.file)  # loaded; read after the transaction ends
    if refusal is not None:
        return refusal
    return items, decryptor


def _sent(items: list[_Item], decryptor: Decryptor, event: evt.Event
          ) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Each instance decrypted in memory, one at a time, as the C-STORE sub-operation's data set."""
    for item in items:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        plaintext = decryptor.read(item.file, 0, item.file.plaintext_size or 0)
        yield PENDING, pydicom.dcmread(io.BytesIO(plaintext))


def on_get(event: evt.Event, ref: DestinationRef) -> Iterator[Any]:
    plan = _prepare(ref, event.identifier, _caller(event), "get", None)
    if isinstance(plan, Dataset):
        yield 1
        yield plan, None
        return
    items, decryptor = plan
    yield len(items)
    yield from _sent(items, decryptor, event)


def move_contexts(items: list[_Item]) -> list[PresentationContext]:
    """The contexts proposed to the move destination: per SOP class and stored transfer syntax, that syntax
    (plus the native little-endian ones for native data, which need no transcoding); at most 128."""
    native = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    wanted: dict[tuple[str, str], list[str]] = {}
    for item in items:
        syntax = item.transfer_syntax or ExplicitVRLittleEndian
        syntaxes = [syntax, *(s for s in native if s != syntax)] if syntax in (*native, "1.2.840.10008.1.2.2") \
            else [syntax]
        wanted.setdefault((item.sop_class, syntax), syntaxes)
    return [build_context(sop_class, syntaxes) for (sop_class, _), syntaxes in list(wanted.items())[:128]]


def on_move(event: evt.Event, ref: DestinationRef) -> Iterator[Any]:
    caller = _caller(event)
    # first: a scanner learns nothing of the registered destinations (0xA801 against 0x0124) and opens no
    # association to one
    if _not_a_workstation(ref, caller, "move") is not None:
        yield None, None  # pynetdicom answers 0xA801: the same answer as for an unknown destination
        return
    target = (event.move_destination or "").strip()
    with ref.hub.sessions() as session:
        destinations = registered(projects.get_setting(session, ref.project_id, MOVE_DESTINATIONS))
    destination = next((d for d in destinations if d.ae_title == target), None)
    if destination is None:  # never an address the request supplies: only the project's registered ones
        with transaction(ref.hub.sessions) as session:
            audit.record(session, caller.actor, "dicom.retrieve.refused", outcome="denied",
                         project_id=ref.project_id, target=f"dicom:{ref.ae_title}",
                         details=caller.details() | {"operation": "move", "destination": target[:16],
                                                     "reason": "move destination not registered"})
        log.warning("dicom.move_destination_unknown", project=ref.slug, destination=target[:16], **caller.details())
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    try:  # before anything is read or audited as retrieved: a project's entry is dialled only outside the hub
        address = dial_address(destination, ref.hub.settings.workspaces.subnet)
    except Undialable as exc:
        with transaction(ref.hub.sessions) as session:
            audit.record(session, caller.actor, "dicom.retrieve.refused", outcome="denied",
                         project_id=ref.project_id, target=f"dicom:{ref.ae_title}",
                         details=caller.details() | {"operation": "move", "destination": destination.ae_title,
                                                     "reason": exc.reason})
        log.warning("dicom.move_destination_refused", project=ref.slug, destination=destination.ae_title,
                    host=destination.host, why=exc.why, **caller.details())
        yield None, None  # 0xA801, as for an unknown destination: no association is opened
        return
    plan = _prepare(ref, event.identifier, caller, "move", destination.ae_title)
    items = plan[0] if not isinstance(plan, Dataset) else []
    contexts = move_contexts(items) or [build_context(Verification)]  # a refusal sends nothing
    yield address, destination.port, {"contexts": contexts}  # the checked address, never the name again
    if isinstance(plan, Dataset):
        yield 1
        yield plan, None
        return
    items, decryptor = plan
    yield len(items)
    yield from _sent(items, decryptor, event)
