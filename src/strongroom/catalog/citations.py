"""How to cite a published catalogue entry, in every format a reference manager or a harvester takes.

One function, ``csl_item``, turns the landing page's facts (texts already scrubbed of any person's
e-mail address) into a CSL-JSON item; BibTeX, RIS, CSL-JSON and the formatted APA and Vancouver
citations (citeproc-py with the CSL styles shipped in ``csl/``) are all written from that item, so
they never disagree. ``RENDERERS`` is the one map from a media type to its renderer: content
negotiation on the landing page, the download links, and the signposting ``describedby`` links are
all read from it, so a new format (e.g. DataCite JSON/XML) is one entry there.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ..config import Settings
from ..errors import NotFound
from . import dois
from .datacite import datacite_attributes, datacite_xml
from .landing import LandingView

CSL_DIR = Path(__file__).with_name("csl")
# style name (as in DOI content negotiation: text/x-bibliography; style=…) → shipped CSL file
STYLES = {"apa": "apa.csl", "vancouver": "nlm-citation-sequence.csl"}
DEFAULT_STYLE = "apa"
STYLE_NAMES = {"apa": "APA", "vancouver": "Vancouver"}
ORCID_RE = re.compile(r"^(?:https?://orcid\.org/)?(\d{4}-\d{4}-\d{4}-\d{3}[\dX])$", re.I)


@dataclass(frozen=True)
class Citable:
    """What a renderer gets: the database session (for renderers that need more facts, such as
    DataCite's), the landing page's view of the entry at one version, and its CSL-JSON item."""

    session: Session
    view: LandingView
    item: dict[str, Any]
    settings: Settings

    @property
    def file_stem(self) -> str:
        version = self.view.version
        return self.view.entry.slug + (f"-v{version.number}" if version is not None else "")


@dataclass(frozen=True)
class Renderer:
    media_type: str
    extension: str  # the download is /catalog/{slug}/cite.{extension}
    label: str  # the download link's text
    render: Callable[[Citable, str], str]  # (what, style) → the document; style is used by text/x-bibliography
    styles: tuple[str, ...] = ()  # only text/x-bibliography: one download and one offer per style
    needs_doi: bool = False  # DataCite's records exist only for a DOI: offered only when the entry has one

    def offered(self, view: LandingView) -> bool:
        return not self.needs_doi or doi_of(view) is not None


# -- the facts -----------------------------------------------------------------------------------
def doi_of(view: LandingView) -> str | None:
    """The DOI to cite: the one place that decides it. The shown version's own DOI when it has one (the exact
    bytes cited, as Zenodo does), else the entry's effective DOI (the steward's own, or the hub's concept DOI)."""
    if view.version is not None:
        for number, doi in view.version_dois:
            if number == view.version.number:
                return doi
    return view.doi or None


def _get(creator: object, *names: str) -> Any:
    for name in names:
        value = creator.get(name) if isinstance(creator, Mapping) else getattr(creator, name, None)
        if value:
            return value
    return None


def orcid_url(creator: object) -> str | None:
    """A creator's ORCID as its https URL, from ``orcid`` or a DataCite-style ``nameIdentifiers`` list."""
    candidates = [_get(creator, "orcid")]
    for ident in _get(creator, "name_identifiers", "nameIdentifiers") or []:
        scheme = str(_get(ident, "name_identifier_scheme", "nameIdentifierScheme", "scheme") or "")
        if scheme.upper() == "ORCID":
            candidates.append(_get(ident, "name_identifier", "nameIdentifier", "identifier"))
    for value in candidates:
        found = ORCID_RE.match(str(value or "").strip())
        if found:
            return f"https://orcid.org/{found.group(1).upper()}"
    return None


def creators_of(view: LandingView) -> list[object]:
    """The entry's creators when the catalogue has them (``entry.creators``), else none."""
    return list(getattr(view.entry, "creators", None) or [])


def _csl_name(creator: object) -> dict[str, str] | None:
    """A creator (a dict or an object, DataCite-style or snake_case names) as a CSL name."""
    kind = str(_get(creator, "name_type", "nameType", "kind") or "").lower()
    family = _get(creator, "family_name", "familyName", "family")
    given = _get(creator, "given_name", "givenName", "given")
    name = _get(creator, "name")
    if family and not kind.startswith("organi"):
        return {"family": str(family), **({"given": str(given)} if given else {})}
    if name:
        name = str(name)
        if "," in name and kind.startswith("person"):  # DataCite's "Family, Given"
            fam, giv = (p.strip() for p in name.split(",", 1))
            return {"family": fam, **({"given": giv} if giv else {})}
        return {"literal": name}
    return None


def csl_item(view: LandingView) -> dict[str, Any]:
    """The entry at the view's version as one CSL-JSON item: the single source of every citation."""
    e = view.entry
    authors = [n for n in (_csl_name(c) for c in creators_of(view)) if n] or [{"literal": view.data_owner}]
    doi = doi_of(view)
    item: dict[str, Any] = {
        "id": e.dataset_id + (f"-v{view.version.number}" if view.version is not None else ""),
        "type": "dataset",
        "title": view.title,
        "author": authors,
        "publisher": view.data_owner,
        "URL": f"https://doi.org/{doi}" if doi else view.canonical,
        "abstract": view.description,
        "keyword": ", ".join(view.keywords),
    }
    if doi:
        item["DOI"] = doi
    first = e.published_at or (view.version.released_at if view.version is not None else None)
    if first is not None:
        item["issued"] = {"date-parts": [[first.year]]}
    if view.version is not None:
        item["version"] = str(view.version.number)
    return {k: v for k, v in item.items() if v not in ("", None, [])}


# -- formatted citations (citeproc-py) -------------------------------------------------------------
_CITEPROC = threading.Lock()  # the parsed styles are shared; citeproc-py is not documented thread-safe


@lru_cache(maxsize=len(STYLES))
def _style(name: str) -> Any:
    from citeproc import CitationStylesStyle

    return CitationStylesStyle(str(CSL_DIR / STYLES[name]), validate=False)


def formatted(item: Mapping[str, Any], style: str = DEFAULT_STYLE) -> str:
    """One reference in a shipped CSL style, as plain text, formatted by citeproc-py."""
    if style not in STYLES:
        raise KeyError(style)
    # citeproc-py takes ~40 ms for one APA reference: a landing page's item is formatted once until it changes
    return _formatted(json.dumps(item, sort_keys=True), style)


@lru_cache(maxsize=512)
def _formatted(item_json: str, style: str) -> str:
    from citeproc import Citation, CitationItem, CitationStylesBibliography, formatter
    from citeproc.source.json import CiteProcJSON

    data = json.loads(item_json)
    if style == "vancouver" and "version" in data:
        # Citing Medicine puts a dataset's version where a book's edition goes; the NLM style reads
        # only `edition` there, so it is given the version under that name.
        data["edition"] = f"Version {data['version']}"
    with _CITEPROC:
        bibliography = CitationStylesBibliography(_style(style), CiteProcJSON([data]), formatter.plain)
        bibliography.register(Citation([CitationItem(data["id"])]))
        text = str(bibliography.bibliography()[0])
    # A numeric style numbers its reference list; one reference alone needs no "1."
    return re.sub(r"^\d+\.\s*", "", text) if style == "vancouver" else text


# -- BibTeX and RIS ----------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def tex(text: str) -> str:
    """Text as a BibTeX field value: LaTeX's special characters escaped, one line, UTF-8 kept."""
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], " ".join(text.split()))


_VERBATIM_UNSAFE = {"{": "%7B", "}": "%7D", "%": "%25", "\\": "%5C", " ": "%20"}


def verbatim(value: str) -> str:
    """A ``doi`` or ``url`` value: biblatex reads these verbatim (no LaTeX escapes), so the few
    characters that would break the entry are percent-encoded, which keeps the link the same."""
    return "".join(_VERBATIM_UNSAFE.get(ch, ch) for ch in value)


def _bib_name(name: Mapping[str, str]) -> str:
    if "literal" in name:
        return "{" + tex(name["literal"]) + "}"  # an organisation: braces keep it one name, not split
    return tex(name["family"]) + (", " + tex(name["given"]) if name.get("given") else "")


def bibtex(item: Mapping[str, Any]) -> str:
    """A BibTeX ``@misc`` entry (every BibTeX style knows it; biblatex reads ``version`` and ``doi``)."""
    key = re.sub(r"[^A-Za-z0-9_:-]", "", str(item["id"]))
    fields: list[tuple[str, str]] = [
        ("author", " and ".join(_bib_name(n) for n in item["author"])),
        ("title", "{" + tex(item["title"]) + "}"),  # inner braces: styles keep the title's capitals
        ("publisher", tex(item.get("publisher", ""))),
        ("year", str(item["issued"]["date-parts"][0][0]) if "issued" in item else ""),
        ("version", tex(item.get("version", ""))),
        ("doi", verbatim(item.get("DOI", ""))),
        ("url", verbatim(item["URL"])),
        ("keywords", tex(item.get("keyword", ""))),
        ("abstract", tex(item.get("abstract", ""))),
    ]
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields if value)
    return f"@misc{{{key},\n{body}\n}}\n"


def _ris_line(tag: str, value: str) -> str:
    return f"{tag}  - {' '.join(value.split())}"


def ris(item: Mapping[str, Any]) -> str:
    """An RIS record of type DATA (the version goes in ET, as reference managers read it)."""
    lines = [_ris_line("TY", "DATA"), _ris_line("TI", item["title"])]
    for name in item["author"]:
        lines.append(_ris_line("AU", name["literal"] if "literal" in name
                               else name["family"] + (", " + name["given"] if name.get("given") else "")))
    for tag, key in (("PB", "publisher"), ("ET", "version"), ("DO", "DOI"), ("UR", "URL"), ("AB", "abstract")):
        if item.get(key):
            lines.append(_ris_line(tag, str(item[key])))
    if "issued" in item:
        lines.append(_ris_line("PY", str(item["issued"]["date-parts"][0][0])))
    lines += [_ris_line("KW", k.strip()) for k in str(item.get("keyword", "")).split(",") if k.strip()]
    lines += [_ris_line("ID", str(item["id"])), "ER  - "]
    return "\r\n".join(lines) + "\r\n"  # RIS is specified with CRLF line ends


# -- the one map of formats ----------------------------------------------------------------------
RENDERERS: dict[str, Renderer] = {r.media_type: r for r in (
    Renderer("application/x-bibtex", "bib", "BibTeX", lambda c, _: bibtex(c.item)),
    Renderer("application/x-research-info-systems", "ris", "RIS", lambda c, _: ris(c.item)),
    Renderer("application/vnd.citationstyles.csl+json", "csl.json", "CSL-JSON",
             lambda c, _: json.dumps([c.item], ensure_ascii=False, indent=2) + "\n"),
    Renderer("text/x-bibliography", "txt", "Formatted", lambda c, style: formatted(c.item, style) + "\n",
             styles=tuple(STYLES)),
    Renderer("application/ld+json", "jsonld", "schema.org JSON-LD",
             lambda c, _: json.dumps(c.view.jsonld, ensure_ascii=False, indent=2) + "\n"),
    Renderer("application/vnd.datacite.datacite+json", "datacite.json", "DataCite JSON",
             lambda c, _: json.dumps(datacite_attributes(_datacite_facts(c)), ensure_ascii=False, indent=2) + "\n",
             needs_doi=True),
    Renderer("application/vnd.datacite.datacite+xml", "datacite.xml", "DataCite XML",
             lambda c, _: datacite_xml(_datacite_facts(c)).decode(), needs_doi=True),
)}


def _datacite_facts(c: Citable) -> dois.DoiFacts:
    """The DataCite record of the DOI this page cites (the version's own, else the concept's): the same
    record the DOI capability sends to DataCite."""
    version = c.view.version.number if c.view.version is not None else None
    own = version is not None and any(number == version for number, _ in c.view.version_dois)
    found = dois.record_facts(c.session, c.settings, c.view.entry, version if own else None)
    if found is None:
        raise NotFound("this entry has no DOI: a DataCite record exists only for a DOI")
    return found


def by_extension(extension: str) -> Renderer | None:
    return next((r for r in RENDERERS.values() if r.extension == extension), None)


@dataclass(frozen=True)
class Download:
    url: str  # relative to the hub
    label: str
    media_type: str
    key: str  # the extension, or the style of a formatted citation: names the link in the page


def downloads(view: LandingView) -> list[Download]:
    """Every citation download of the landing page: one per renderer, one per style for the formatted."""
    base = f"/catalog/{view.entry.slug}/cite"
    out: list[Download] = []
    for r in RENDERERS.values():
        if not r.offered(view):
            continue
        if r.styles:
            out += [Download(f"{base}.{r.extension}?style={s}", STYLE_NAMES.get(s, s), r.media_type, s)
                    for s in r.styles]
        else:
            out.append(Download(f"{base}.{r.extension}", r.label, r.media_type, r.extension))
    return out


def media_type_header(renderer: Renderer) -> str:
    """The Content-Type: texts say UTF-8; JSON types are UTF-8 by definition."""
    if renderer.media_type.endswith("json"):
        return renderer.media_type
    return f"{renderer.media_type}; charset=utf-8"


def file_name(citable: Citable, renderer: Renderer, style: str) -> str:
    return f"{citable.file_stem}{'-' + style if renderer.styles else ''}.{renderer.extension}"
