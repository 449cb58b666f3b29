"""FAIR Signposting (https://signposting.org/FAIR/) for a published landing page: the typed links a
machine follows from the page to its persistent identifier, metadata, content, licence and authors.
The same links go out as an HTTP ``Link`` header (RFC 8288) and as ``<link>`` elements in the page."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from . import citations
from .landing import LandingView

SCHEMA_TYPES = ("https://schema.org/Dataset", "https://schema.org/AboutPage")

# Metadata documents about the entry besides the citation formats (which come from
# ``citations.RENDERERS``): (path under the hub, media type). Each is linked only when the hub has a
# route for it, so a capability that adds the route (e.g. DCAT-AP Turtle) is linked without an edit here.
DESCRIBEDBY: list[tuple[str, str]] = [
    ("/catalog/{slug}.ttl", "text/turtle"),  # DCAT-AP (catalog.dcat); its JSON-LD twin shares schema.org's type
    ("/catalog/{slug}.rdf", "application/rdf+xml"),
]


@dataclass(frozen=True)
class Link:
    href: str
    rel: str
    type: str | None = None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Characters an href keeps as they are in the header: RFC 3986's unreserved and delimiters, except the ``,`` and
# ``;`` that separate links and their parameters (naive parsers split on them even inside ``<…>``).
_URI_SAFE = frozenset(string.ascii_letters + string.digits + "-._~" + ":/?#[]@" + "!$&'()*+=")
_HEX = frozenset(string.hexdigits)


def uri_reference(href: str) -> str:
    """``href`` with every character that is not a safe URI character percent-encoded (as UTF-8; an existing
    ``%XX`` is kept): nothing from a stored value (a steward's DOI) can end the ``<…>``, add a link or a
    parameter, or put a byte outside ASCII into the header."""
    out: list[str] = []
    for i, ch in enumerate(href):
        if ch in _URI_SAFE or (ch == "%" and len(href) > i + 2 and _HEX.issuperset(href[i + 1:i + 3])):
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
    return "".join(out)


def link_header(links: list[Link]) -> str:
    """The links as one RFC 8288 ``Link`` header value (each target percent-encoded: ``uri_reference``)."""
    return ", ".join(f"<{uri_reference(link.href)}>; rel={_quoted(link.rel)}"
                     + (f"; type={_quoted(link.type)}" if link.type else "") for link in links)


def landing_links(view: LandingView, base_url: str, served: Callable[[str], bool]) -> list[Link]:
    """The landing page's signposts; ``served(path)`` says whether the hub answers a GET on a path."""
    base = base_url.rstrip("/")
    doi = citations.doi_of(view)
    links = [Link(f"https://doi.org/{doi}" if doi else view.canonical, "cite-as")]
    for c in citations.creators_of(view):
        orcid = citations.orcid_url(c)
        if orcid:
            links.append(Link(orcid, "author"))
    links += [Link(t, "type") for t in SCHEMA_TYPES]
    seen: set[str] = set()
    for d in citations.downloads(view):
        if d.media_type not in seen:  # one describedby per media type; a formatted citation is not metadata
            seen.add(d.media_type)
            if d.media_type != "text/x-bibliography":
                links.append(Link(base + d.url, "describedby", d.media_type))
    for template, media_type in DESCRIBEDBY:
        path = template.format(slug=view.entry.slug)
        if served(path):
            links.append(Link(base + path, "describedby", media_type))
    if view.version is not None:
        # The content is the dataset's DRS bundle: its files are listed there for those with access.
        links.append(Link(f"{base}/ga4gh/drs/v1/objects/{view.entry.dataset_id}", "item", "application/json"))
    links.append(Link(view.terms_url, "license", "text/html"))
    return links
