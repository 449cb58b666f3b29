"""OAI-PMH 2.0 (pure: a ``Repository`` in, XML out; no web or database imports).

All six verbs, every protocol error, selective harvesting by set and by datestamp (UTC, seconds
granularity), deleted records (``transient``: a withdrawn dataset is reported as deleted for as long
as its entry exists), and stateless resumption tokens: the list's arguments and the last key seen,
signed with an HMAC so a harvester cannot forge or edit one, expiring after ``TOKEN_LIFETIME``.
Lists page by key (the entry's id), not by offset, and freeze ``until`` at the first page, so a
record changed during a harvest is neither skipped nor sent twice (the next incremental harvest
picks it up).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lxml import etree

from ..identity.secrets import equal_secrets
from .dcat import FORMATS, DatasetFacts

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
OAI_DC_NS = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC_NS = "http://purl.org/dc/elements/1.1/"
DATACITE_NS = "http://datacite.org/schema/kernel-4"
OAI_DATACITE_NS = "http://schema.datacite.org/oai/oai-1.1/"
IDENTIFIER_NS = "http://www.openarchives.org/OAI/2.0/oai-identifier"

# prefix → (schema, namespace)
FORMATS_OFFERED: dict[str, tuple[str, str]] = {
    "oai_dc": ("http://www.openarchives.org/OAI/2.0/oai_dc.xsd", OAI_DC_NS),
    "oai_datacite": ("http://schema.datacite.org/oai/oai-1.1/oai.xsd", OAI_DATACITE_NS),
    "datacite": ("http://schema.datacite.org/meta/kernel-4.6/metadata.xsd", DATACITE_NS),
}
DATACITE_PREFIXES = ("oai_datacite", "datacite")  # only records with a DOI: DataCite needs one

PAGE_SIZE = 100  # records or headers per list response (tests lower it)
TOKEN_LIFETIME = dt.timedelta(hours=24)
VERBS = {
    "Identify": (set(), set()),
    "ListMetadataFormats": (set(), {"identifier"}),
    "ListSets": (set(), set()),
    "GetRecord": ({"identifier", "metadataPrefix"}, set()),
    "ListIdentifiers": ({"metadataPrefix"}, {"from", "until", "set"}),
    "ListRecords": ({"metadataPrefix"}, {"from", "until", "set"}),
}
SET_SPEC = re.compile(r"[A-Za-z0-9\-_.!~*'()]+(:[A-Za-z0-9\-_.!~*'()]+)*")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
DOMAIN = re.compile(r"[a-zA-Z][a-zA-Z0-9\-]*(\.[a-zA-Z][a-zA-Z0-9\-]*)+")


class OaiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Header:
    identifier: str
    datestamp: dt.datetime
    sets: tuple[str, ...] = ()
    deleted: bool = False


@dataclass(frozen=True)
class Record:
    key: int  # the order of lists (ascending, unique)
    header: Header
    facts: DatasetFacts | None  # None for a deleted record
    has_doi: bool = False


@dataclass(frozen=True)
class Query:
    since: dt.datetime | None  # inclusive
    before: dt.datetime  # exclusive: the frozen `until` + one second
    set_spec: str | None
    doi_only: bool


class Repository(Protocol):
    name: str
    base_url: str  # the OAI endpoint
    admin_email: str
    namespace: str  # oai:<namespace>:<local id>

    def earliest(self) -> dt.datetime: ...
    def sets(self) -> list[tuple[str, str]]: ...
    def count(self, q: Query) -> int: ...
    def page(self, q: Query, after: int, limit: int) -> list[Record]: ...
    def get(self, identifier: str) -> Record | None: ...
    def datacite(self, record: Record) -> etree._Element: ...


# -- dates and tokens ------------------------------------------------------------------------------
def stamp(value: dt.datetime) -> str:
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_date(value: str, name: str) -> tuple[dt.datetime, str]:
    try:
        if DAY.fullmatch(value):
            return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC), "day"
        if SECOND.fullmatch(value):
            return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC), "second"
    except ValueError:
        pass
    raise OaiError("badArgument", f"{name} must be a UTC date (YYYY-MM-DD) or time (YYYY-MM-DDThh:mm:ssZ)")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Resumption tokens: base64url(JSON state) "." base64url(HMAC-SHA256 truncated to 128 bits)."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"strongroom oai-pmh resumption token", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])

    def make(self, state: dict[str, Any]) -> str:
        body = _b64(json.dumps(state, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}"

    def read(self, token: str, verb: str, now: dt.datetime) -> dict[str, Any]:
        body, _, mac = token.partition(".")
        if not body or not mac or not equal_secrets(mac, self._mac(body)):
            raise OaiError("badResumptionToken", "the resumption token is not one this repository issued")
        try:
            state = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            raise OaiError("badResumptionToken", "the resumption token is damaged") from None
        if state.get("verb") != verb:
            raise OaiError("badResumptionToken", f"the resumption token belongs to {state.get('verb')}, not {verb}")
        if now.timestamp() > state["exp"]:
            raise OaiError("badResumptionToken", "the resumption token has expired; start the list again")
        return dict(state)


# -- the protocol --------------------------------------------------------------------------------
def _e(parent: etree._Element, tag: str, text: str | None = None, ns: str = OAI_NS, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _envelope(repo: Repository, now: dt.datetime, args: dict[str, str] | None) -> etree._Element:
    root = etree.Element(f"{{{OAI_NS}}}OAI-PMH", nsmap={None: OAI_NS, "xsi": XSI})
    root.set(f"{{{XSI}}}schemaLocation", f"{OAI_NS} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd")
    _e(root, "responseDate", stamp(now))
    _e(root, "request", repo.base_url, **(args or {}))
    return root


def _xml(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def handle(repo: Repository, tokens: Tokens, pairs: Sequence[tuple[str, str]], *,
           now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> bytes:
    """One OAI-PMH request (its arguments as given, repeats included) → the response document."""
    at = now().replace(microsecond=0)
    verbs = [v for k, v in pairs if k == "verb"]
    if len(verbs) != 1 or verbs[0] not in VERBS:
        root = _envelope(repo, at, None)
        message = "the verb argument is repeated" if len(verbs) > 1 else (
            f"{verbs[0]!r} is not an OAI-PMH verb" if verbs else "the verb argument is missing")
        _e(root, "error", message, code="badVerb")
        return _xml(root)
    verb = verbs[0]
    args: dict[str, str] = {}
    try:
        for key, value in pairs:
            if key == "verb":
                continue
            if key in args:
                raise OaiError("badArgument", f"the argument {key} is repeated")
            args[key] = value
        _check_arguments(verb, args)
    except OaiError as exc:
        root = _envelope(repo, at, None)
        _e(root, "error", exc.message, code=exc.code)
        return _xml(root)
    root = _envelope(repo, at, {"verb": verb, **args})
    try:
        body = _e(root, verb)
        if verb == "Identify":
            _identify(repo, body)
        elif verb == "ListMetadataFormats":
            _list_formats(repo, body, args.get("identifier"))
        elif verb == "ListSets":
            if "resumptionToken" in args:  # every set fits in one response: no token was ever issued
                raise OaiError("badResumptionToken", "this repository issues no resumption tokens for ListSets")
            _list_sets(repo, body)
        elif verb == "GetRecord":
            _get_record(repo, body, args["identifier"], args["metadataPrefix"])
        else:
            _list(repo, tokens, body, verb, args, at)
    except OaiError as exc:
        root.remove(body)
        _e(root, "error", exc.message, code=exc.code)
    return _xml(root)


def _check_arguments(verb: str, args: dict[str, str]) -> None:
    required, optional = VERBS[verb]
    if "resumptionToken" in args:
        if verb not in ("ListIdentifiers", "ListRecords", "ListSets"):
            raise OaiError("badArgument", f"{verb} takes no resumptionToken")
        if len(args) > 1:
            raise OaiError("badArgument", "resumptionToken is an exclusive argument")
        return
    unknown = sorted(set(args) - required - optional)
    if unknown:
        raise OaiError("badArgument", f"{verb} does not take {', '.join(unknown)}")
    missing = sorted(required - set(args))
    if missing:
        raise OaiError("badArgument", f"{verb} needs {', '.join(missing)}")
    if "set" in args and not SET_SPEC.fullmatch(args["set"]):
        raise OaiError("badArgument", "set is not a valid setSpec")
    grains = {}
    for name in ("from", "until"):
        if name in args:
            grains[name] = _parse_date(args[name], name)
    if len({g for _, g in grains.values()}) > 1:
        raise OaiError("badArgument", "from and until must have the same granularity")
    if len(grains) == 2 and grains["from"][0] > grains["until"][0]:
        raise OaiError("badArgument", "from is later than until")


def _identify(repo: Repository, body: etree._Element) -> None:
    _e(body, "repositoryName", repo.name)
    _e(body, "baseURL", repo.base_url)
    _e(body, "protocolVersion", "2.0")
    _e(body, "adminEmail", repo.admin_email)
    _e(body, "earliestDatestamp", stamp(repo.earliest()))
    _e(body, "deletedRecord", "transient")
    _e(body, "granularity", "YYYY-MM-DDThh:mm:ssZ")
    if not DOMAIN.fullmatch(repo.namespace):  # the oai-identifier scheme needs a domain name
        return
    desc = _e(body, "description")
    ident = etree.SubElement(desc, f"{{{IDENTIFIER_NS}}}oai-identifier", nsmap={None: IDENTIFIER_NS})
    ident.set(f"{{{XSI}}}schemaLocation", f"{IDENTIFIER_NS} http://www.openarchives.org/OAI/2.0/oai-identifier.xsd")
    for tag, text in (("scheme", "oai"), ("repositoryIdentifier", repo.namespace), ("delimiter", ":"),
                      ("sampleIdentifier", f"oai:{repo.namespace}:SRD-EXAMPLE")):
        _e(ident, tag, text, ns=IDENTIFIER_NS)


def _list_formats(repo: Repository, body: etree._Element, identifier: str | None) -> None:
    prefixes = list(FORMATS_OFFERED)
    if identifier is not None:
        record = repo.get(identifier)
        if record is None:
            raise OaiError("idDoesNotExist", "no such record in this repository")
        if not record.has_doi and not record.header.deleted:
            prefixes = [p for p in prefixes if p not in DATACITE_PREFIXES]
    for prefix in prefixes:
        schema, namespace = FORMATS_OFFERED[prefix]
        fmt = _e(body, "metadataFormat")
        _e(fmt, "metadataPrefix", prefix)
        _e(fmt, "schema", schema)
        _e(fmt, "metadataNamespace", namespace)


def _list_sets(repo: Repository, body: etree._Element) -> None:
    sets = repo.sets()
    if not sets:
        raise OaiError("noSetHierarchy", "there are no sets yet: nothing is published")
    for spec, name in sets:
        s = _e(body, "set")
        _e(s, "setSpec", spec)
        _e(s, "setName", name)


def _format(prefix: str) -> None:
    if prefix not in FORMATS_OFFERED:
        raise OaiError("cannotDisseminateFormat", f"{prefix!r} is not a metadata format of this repository "
                                                  f"({', '.join(FORMATS_OFFERED)})")


def _get_record(repo: Repository, body: etree._Element, identifier: str, prefix: str) -> None:
    _format(prefix)
    record = repo.get(identifier)
    if record is None:
        raise OaiError("idDoesNotExist", "no such record in this repository")
    if prefix in DATACITE_PREFIXES and not record.has_doi and not record.header.deleted:
        raise OaiError("cannotDisseminateFormat", "this dataset has no DOI, so there is no DataCite record")
    _record(repo, body, record, prefix)


def _header(parent: etree._Element, header: Header) -> None:
    h = _e(parent, "header", **({"status": "deleted"} if header.deleted else {}))
    _e(h, "identifier", header.identifier)
    _e(h, "datestamp", stamp(header.datestamp))
    for spec in header.sets:
        _e(h, "setSpec", spec)


def _record(repo: Repository, parent: etree._Element, record: Record, prefix: str) -> None:
    r = _e(parent, "record")
    _header(r, record.header)
    if record.facts is None:
        return
    metadata = _e(r, "metadata")
    if prefix == "oai_dc":
        metadata.append(dublin_core(record.facts, repo.name))
    elif prefix == "datacite":
        metadata.append(repo.datacite(record))
    else:
        wrap = etree.SubElement(metadata, f"{{{OAI_DATACITE_NS}}}oai_datacite", nsmap={None: OAI_DATACITE_NS})
        wrap.set(f"{{{XSI}}}schemaLocation", f"{OAI_DATACITE_NS} {FORMATS_OFFERED['oai_datacite'][0]}")
        _e(wrap, "schemaVersion", "4.6", ns=OAI_DATACITE_NS)
        _e(wrap, "datacentreSymbol", repo.namespace, ns=OAI_DATACITE_NS)
        _e(wrap, "payload", ns=OAI_DATACITE_NS).append(repo.datacite(record))


def _list(repo: Repository, tokens: Tokens, body: etree._Element, verb: str, args: dict[str, str],
          at: dt.datetime) -> None:
    if "resumptionToken" in args:
        state = tokens.read(args["resumptionToken"], verb, at)
    else:
        _format(args["metadataPrefix"])
        since = _parse_date(args["from"], "from")[0] if "from" in args else None
        until = _parse_date(args["until"], "until") if "until" in args else (at, "second")
        before = until[0] + (dt.timedelta(days=1) if until[1] == "day" else dt.timedelta(seconds=1))
        state = {"verb": verb, "prefix": args["metadataPrefix"], "since": since.timestamp() if since else None,
                 "before": before.timestamp(), "set": args.get("set"), "after": 0, "cursor": 0}
    prefix = str(state["prefix"])
    q = Query(since=dt.datetime.fromtimestamp(state["since"], dt.UTC) if state["since"] is not None else None,
              before=dt.datetime.fromtimestamp(state["before"], dt.UTC), set_spec=state["set"],
              doi_only=prefix in DATACITE_PREFIXES)
    records = repo.page(q, int(state["after"]), PAGE_SIZE + 1)
    if not records:
        if "resumptionToken" in args:
            raise OaiError("badResumptionToken", "the list this token continues has changed; start it again")
        raise OaiError("noRecordsMatch", "no records match these arguments")
    more, records = len(records) > PAGE_SIZE, records[:PAGE_SIZE]
    for record in records:
        if verb == "ListIdentifiers":
            _header(body, record.header)
        else:
            _record(repo, body, record, prefix)
    cursor = int(state["cursor"])
    if more or cursor:
        total = repo.count(q)
        next_token = ""
        attrs = {"completeListSize": str(max(total, cursor + len(records))), "cursor": str(cursor)}
        if more:
            expires = at + TOKEN_LIFETIME
            next_token = tokens.make({**state, "after": records[-1].key, "cursor": cursor + len(records),
                                      "exp": int(expires.timestamp())})
            attrs["expirationDate"] = stamp(expires)
        _e(body, "resumptionToken", next_token, **attrs)


# -- metadata formats ------------------------------------------------------------------------------
def dublin_core(d: DatasetFacts, publisher: str) -> etree._Element:
    root = etree.Element(f"{{{OAI_DC_NS}}}dc", nsmap={"oai_dc": OAI_DC_NS, "dc": DC_NS, "xsi": XSI})
    root.set(f"{{{XSI}}}schemaLocation", f"{OAI_DC_NS} http://www.openarchives.org/OAI/2.0/oai_dc.xsd")

    def dc(tag: str, text: str) -> None:
        _e(root, tag, text, ns=DC_NS)

    dc("title", d.title)
    dc("creator", d.owner)
    for word in dict.fromkeys([name for _, name in d.modalities] + list(d.organs) + list(d.keywords)):
        dc("subject", word)
    dc("description", d.description)
    dc("publisher", publisher)
    if d.issued is not None:
        dc("date", d.issued.date().isoformat())
    dc("type", "Dataset")
    for suffix in dict.fromkeys(s for v in d.versions for s in v.suffixes if s in FORMATS):
        dc("format", FORMATS[suffix][0])
    if d.doi:
        dc("identifier", f"https://doi.org/{d.doi}")
    dc("identifier", d.landing)
    dc("rights", "info:eu-repo/semantics/restrictedAccess")  # OpenAIRE's access-level term
    dc("rights", d.terms_url)
    if d.time_start is not None:
        dc("coverage", f"{d.time_start.isoformat()}/{d.time_end.isoformat() if d.time_end else '..'}")
    return root
