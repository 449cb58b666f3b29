"""What a steward edits in a catalogue entry, and every rule its values must meet: one pydantic
model for the API body, the web form and the service (``EntryFields.parse``). The rules that need
the database (no person's e-mail address anywhere, unique public addresses) are checked by
``entries.save_entry``; completeness is checked when publishing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from annotated_types import Ge, Le
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import Invalid
from ..schemas import Body, IsoDate
from .datacite import orcid_ok, ror_id
from .vocab import DUO, DUO_PERMISSIONS, MODALITIES

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,78}[a-z0-9]$")
# A DOI's suffix: the DOI Handbook's printable ASCII without the characters unsafe in a URL or an HTTP header
# (space and <>"{}|\^`). A DOI goes into links and the landing page's ``Link`` header (encoded there too).
DOI_RE = re.compile(r"10\.\d{4,9}/[!#-;=?-\[\]_a-z~]+")  # fullmatch
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_COUNT = 10**15

# What the messages call each field: the words of the editor's labels, never the internal names.
LABELS = {
    "slug": "public address (slug)", "title": "title", "description": "description", "why_apply": "why apply",
    "data_owner": "data owner", "data_owner_url": "data owner web address", "modalities": "modalities",
    "organs": "body parts/organs", "keywords": "keywords", "variables": "measured variables",
    "subjects": "subjects", "studies": "studies", "series": "series", "annotations": "annotations",
    "size_bytes": "size in bytes", "time_start": "time span start", "time_end": "time span end",
    "terms_title": "terms title", "terms_text": "terms", "access_conditions": "access conditions",
    "duo_codes": "DUO codes", "how_to_cite": "how to cite", "doi": "DOI", "contact_email": "contact address",
    "apply_mode": "apply mode", "external_url": "external application address", "creators": "creators",
    "publications": "publications",
}
# text fields: (max length, may span lines)
TEXTS = {"title": (300, False), "description": (5000, True), "why_apply": (3000, True),
         "data_owner": (200, False), "terms_title": (200, False), "terms_text": (50_000, True),
         "access_conditions": (5000, True), "how_to_cite": (2000, True)}
# free-text lists: (max items, max length of one)
LISTS = {"organs": (20, 60), "keywords": (30, 60), "variables": (30, 200)}
COUNTS = ("subjects", "studies", "series", "annotations", "size_bytes")
URLS = ("data_owner_url", "external_url")

Count = Annotated[int, Ge(0), Le(MAX_COUNT)]


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("entry", message)


def normalise_doi(value: str | None) -> str | None:
    value = (value or "").strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    if not value:
        return None
    if not DOI_RE.fullmatch(value):
        raise _fail("a DOI looks like 10.1234/abc (a doi.org link is fine too); after the / only printable ASCII "
                    "without spaces or any of < > \" { } | \\ ^ `")
    if value.startswith("10.5072/"):
        raise _fail("10.5072 is DataCite's retired test prefix; use your own prefix")
    return value


class CreatorField(Body):
    """A creator of the dataset as DataCite cites it: a person (family and given name, ORCID iD) or an
    organisation, with an affiliation and its ROR id. Names of creators are public: they are cited."""

    name: str = Field(default="", max_length=300, description="'Family, Given' (filled from the parts if empty)")
    kind: Literal["person", "organisation"] = "person"
    given_name: str | None = Field(default=None, max_length=150)
    family_name: str | None = Field(default=None, max_length=150)
    orcid: str | None = Field(default=None, max_length=60, description="ORCID iD, e.g. 0000-0002-1825-0097")
    affiliation: str | None = Field(default=None, max_length=300)
    ror: str | None = Field(default=None, max_length=60, description="ROR id of the affiliation, e.g. 03yrm5c26")

    @field_validator("name", "given_name", "family_name", "affiliation", mode="before")
    @classmethod
    def _plain(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = " ".join(value.split())
        if CONTROL.search(value) or "@" in value:
            raise _fail("a creator's name or affiliation is plain text (no e-mail addresses)")
        return value or None

    @field_validator("orcid", mode="before")
    @classmethod
    def _orcid(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().upper().removeprefix("HTTPS://ORCID.ORG/").removeprefix("HTTP://ORCID.ORG/")
        if value and not orcid_ok(value):
            raise _fail(f"{value!r} is not an ORCID iD (e.g. 0000-0002-1825-0097, with a valid check digit)")
        return value or None

    @field_validator("ror", mode="before")
    @classmethod
    def _ror(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return None if isinstance(value, str) else value
        found = ror_id(value)
        if found is None:
            raise _fail(f"{value.strip()!r} is not a ROR id (e.g. https://ror.org/03yrm5c26)")
        return found

    @model_validator(mode="after")
    def _named(self) -> CreatorField:
        if not self.name:
            parts = [p for p in (self.family_name, self.given_name) if p]
            if not parts:
                raise _fail("each creator needs a name (a person's family name, or an organisation's name)")
            self.name = ", ".join(parts)
        if self.kind == "organisation" and (self.orcid or self.given_name or self.family_name):
            raise _fail(f"creator {self.name!r} is an organisation: it has no ORCID iD or given/family name")
        return self


def _codes(values: object, known: Mapping[str, Any], unknown: str) -> object:
    """Upper-cased, known and without repeats; anything but a list of texts is left to the type check."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return values
    out: list[str] = []
    for raw in values:
        code = raw.strip().upper().replace("_", ":") if known is DUO else raw.strip().upper()
        if code and code not in known:
            raise _fail(unknown.format(code=repr(code)))
        if code and code not in out:
            out.append(code)
    return out


class EntryFields(Body):
    """Everything a steward edits. Lists are plain lists of strings; dates are ``datetime.date``."""

    slug: str = Field(min_length=3, max_length=80, description="the public address: /catalog/{slug}")
    title: str = Field(max_length=300)
    description: str = Field(default="", max_length=5000, description="50-5000 characters to publish")
    why_apply: str = Field(default="", max_length=3000)
    data_owner: str = Field(default="", max_length=200, description="the organisation that owns the data")
    data_owner_url: str | None = Field(default=None, max_length=1000, description="e.g. its ROR id")
    modalities: list[str] = Field(default_factory=list, max_length=10, description="DICOM codes: CT, MR, …")
    organs: list[str] = Field(default_factory=list, max_length=20)
    keywords: list[str] = Field(default_factory=list, max_length=30)
    variables: list[str] = Field(default_factory=list, max_length=30, description="schema.org variableMeasured")
    subjects: Count | None = None
    studies: Count | None = None
    series: Count | None = None
    annotations: Count | None = None
    size_bytes: Count | None = Field(default=None, description="default: the released version's size")
    time_start: IsoDate | None = None
    time_end: IsoDate | None = None
    terms_title: str = Field(default="Terms of use", max_length=200)
    terms_text: str = Field(default="", max_length=50_000)
    access_conditions: str = Field(default="", max_length=5000)
    duo_codes: list[str] = Field(default_factory=list, max_length=20, description="e.g. DUO:0000006")
    how_to_cite: str = Field(default="", max_length=2000)
    doi: str | None = Field(default=None, max_length=200)
    contact_email: str | None = Field(default=None, max_length=254, description="a role address, never a person's")
    apply_mode: Literal["hub", "external"] = "hub"
    external_url: str | None = Field(default=None, max_length=1000)
    creators: list[CreatorField] = Field(default_factory=list, max_length=100,
                                         description="as cited (DataCite creators); default: the data owner")
    publications: list[str] = Field(default_factory=list, max_length=50, description="DOIs of papers about the data")

    # -- field rules (before the type check, so the messages are ours) ------------------------------
    @field_validator("slug", mode="before")
    @classmethod
    def _slug(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        slug = value.strip().lower()
        if not SLUG_RE.match(slug):
            raise _fail("the public address (slug) must be 3-80 characters: lower-case letters, digits and '-'")
        return slug

    @field_validator(*TEXTS, mode="before")
    @classmethod
    def _text(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        field = str(info.field_name)
        max_len, multiline = TEXTS[field]
        label = LABELS[field]
        value = value.replace("\r\n", "\n").strip()
        if CONTROL.search(value) or (not multiline and "\n" in value):
            raise _fail(f"{label} contains control characters")
        if len(value) > max_len:
            raise _fail(f"{label} may be at most {max_len} characters (it has {len(value)})")
        if info.field_name == "title" and not value:
            raise _fail("a catalogue entry needs a title")
        if info.field_name == "data_owner" and "@" in value:
            raise _fail("the data owner is an organisation's name, not an e-mail address")
        if info.field_name == "terms_title" and not value:
            return "Terms of use"
        return value

    @field_validator(*LISTS, mode="before")
    @classmethod
    def _list(cls, values: object, info: ValidationInfo) -> object:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return values
        field = str(info.field_name)
        max_items, max_len = LISTS[field]
        label = LABELS[field]
        out: list[str] = []
        for raw in values:
            v = " ".join(raw.split())
            if not v:
                continue
            if len(v) > max_len or CONTROL.search(v):
                raise _fail(f"each of {label} must be a plain value of at most {max_len} characters")
            if v.lower() not in (o.lower() for o in out):
                out.append(v)
        if len(out) > max_items:
            raise _fail(f"at most {max_items} {label}")
        return out

    @field_validator("modalities", mode="before")
    @classmethod
    def _modalities(cls, values: object) -> object:
        return _codes(values, MODALITIES,
                      "unknown modality {code}; use DICOM modality codes such as CT, MR, PT, CR, MG, SM")

    @field_validator("duo_codes", mode="before")
    @classmethod
    def _duo(cls, values: object) -> object:
        codes = _codes(values, DUO, "unknown DUO code {code} (expected e.g. DUO:0000006)")
        if isinstance(codes, list) and sum(c in DUO_PERMISSIONS for c in codes) > 1:
            raise _fail("choose one DUO permission (NRES, GRU, HMB, DS, POA or CC); the others are modifiers")
        return codes

    @field_validator(*URLS, mode="before")
    @classmethod
    def _url(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and not isinstance(value, str):
            return value
        value = (value or "").strip()
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc or len(value) > 1000 or CONTROL.search(value):
            raise _fail(f"{LABELS[str(info.field_name)]} must be an http(s) address")
        return value

    @field_validator("doi", mode="before")
    @classmethod
    def _doi(cls, value: object) -> object:
        return normalise_doi(value) if value is None or isinstance(value, str) else value

    @field_validator("publications", mode="before")
    @classmethod
    def _publications(cls, values: object) -> object:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return values
        out: list[str] = []
        for raw in values:
            try:
                doi = normalise_doi(raw)
            except PydanticCustomError:
                raise _fail(f"publications: {raw.strip()!r} is not a DOI (e.g. 10.1234/abc)") from None
            if doi and doi.lower() not in (o.lower() for o in out):
                out.append(doi)
        return out

    @field_validator("contact_email", mode="before")
    @classmethod
    def _contact(cls, value: object) -> object:
        from email_validator import EmailNotValidError, validate_email

        if value is not None and not isinstance(value, str):
            return value
        value = (value or "").strip()
        if not value:
            return None
        try:
            return validate_email(value, check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise _fail(f"contact address: {exc}") from None

    # -- rules between fields ----------------------------------------------------------------------
    @model_validator(mode="after")
    def _together(self) -> EntryFields:
        if self.time_end and not self.time_start:
            raise _fail("a time span needs a start (an end alone is not a span)")
        if self.time_start and self.time_end and self.time_end < self.time_start:
            raise _fail("the time span ends before it starts")
        if self.apply_mode == "external" and not self.external_url:
            raise _fail("external applications need the data owner's application address")
        return self

    # -- entry points ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> EntryFields:
        """Validated fields, or ``Invalid`` whose detail says what is wrong in the editor's words
        and whose ``errors`` name each field."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            errors: list[dict[str, Any]] = [{"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]}
                      for e in exc.errors(include_url=False, include_context=False, include_input=False)]
            raise Invalid("; ".join(dict.fromkeys(e["msg"] for e in errors)), errors=errors) from None

    @classmethod
    def of(cls, entry: object) -> EntryFields:
        """The fields of a stored entry (already valid), for showing in the editor."""
        values = {name: getattr(entry, name) for name in cls.model_fields}
        values["creators"] = [CreatorField.model_construct(**c) for c in values.get("creators") or []]
        return cls.model_construct(**values)

    def column(self, name: str) -> Any:
        """A field as its table column stores it (creators as plain dicts)."""
        if name == "creators":
            return [c.model_dump(exclude_none=True) for c in self.creators]
        return getattr(self, name)


def _message(error: Mapping[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    name = str(loc[0]) if loc else ""
    label = LABELS.get(name, name)
    if kind == "entry":
        return error["msg"]
    if kind == "extra_forbidden":
        return f"unknown field {name!r}"
    if kind == "missing":
        return f"{label} is required"
    if name in COUNTS and (kind.startswith("int_") or kind in ("greater_than_equal", "less_than_equal")):
        return f"{label} must be a whole number ≥ 0"
    if name in ("time_start", "time_end") and (kind.startswith("date_") or kind == "value_error"):
        return f"{label} must be a date (YYYY-MM-DD)"
    return f"{label}: {error['msg']}"
