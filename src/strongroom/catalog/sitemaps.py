"""What crawlers read first: the sitemap index (the catalogue page, the landing pages and image
sitemaps of the sample images, in children of at most ``SITEMAP_MAX_URLS`` URLs) and robots.txt."""

from __future__ import annotations

import datetime as dt
import math
import re
from xml.sax.saxutils import escape

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ..errors import NotFound
from .models import CatalogEntry, CatalogImage

# A sitemap holds at most this many URLs; the index lists as many children as it takes.
# (The protocol allows 50,000; smaller files are rebuilt faster. Tests lower it.)
SITEMAP_MAX_URLS = 5000
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
IMAGE_NS = "http://www.google.com/schemas/sitemap-image/1.1"  # Google's image sitemap extension
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def _published_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(CatalogEntry).where(CatalogEntry.published.is_(True))) or 0


def _with_images(session: Session) -> Select[int]:
    """Published entries that have sample images, by id."""
    return (select(CatalogEntry.id).where(CatalogEntry.published.is_(True),
                                          CatalogEntry.id.in_(select(CatalogImage.entry_id)))
            .order_by(CatalogEntry.id))


def _pages(count: int) -> int:
    return math.ceil(count / SITEMAP_MAX_URLS)


def _lastmod(value: dt.datetime | None) -> str:
    return f"<lastmod>{value.date().isoformat()}</lastmod>" if value else ""


def sitemap(session: Session, base_url: str) -> str:
    """The sitemap index: the catalogue page, the landing pages and the image sitemaps of the sample
    images, each split into children of at most ``SITEMAP_MAX_URLS`` URLs."""
    base = escape(base_url.rstrip("/"))
    latest = session.scalar(select(func.max(CatalogEntry.updated_at)).where(CatalogEntry.published.is_(True)))
    children = [f"{base}/sitemaps/site.xml"]
    children += [f"{base}/sitemaps/catalog-{n}.xml" for n in range(1, _pages(_published_count(session)) + 1)]
    images = session.scalar(select(func.count()).select_from(_with_images(session).subquery())) or 0
    children += [f"{base}/sitemaps/images-{n}.xml" for n in range(1, _pages(images) + 1)]
    lines = [XML_HEAD, f'<sitemapindex xmlns="{SITEMAP_NS}">']
    lines += [f"<sitemap><loc>{loc}</loc>{_lastmod(latest)}</sitemap>" for loc in children]
    lines.append("</sitemapindex>")
    return "\n".join(lines) + "\n"


def _landing_pages(session: Session, base: str, n: int) -> list[str]:
    rows = session.execute(select(CatalogEntry.slug, CatalogEntry.updated_at)
                           .where(CatalogEntry.published.is_(True)).order_by(CatalogEntry.id)
                           .offset((n - 1) * SITEMAP_MAX_URLS).limit(SITEMAP_MAX_URLS))
    return [f"<url><loc>{escape(base)}/catalog/{escape(slug)}</loc>{_lastmod(updated)}</url>" for slug, updated in rows]


def _image_pages(session: Session, base: str, n: int) -> list[str]:
    ids = list(session.scalars(_with_images(session).offset((n - 1) * SITEMAP_MAX_URLS).limit(SITEMAP_MAX_URLS)))
    slugs = {i: slug for i, slug in session.execute(select(CatalogEntry.id, CatalogEntry.slug)
                                                        .where(CatalogEntry.id.in_(ids)))}
    images: dict[int, list[int]] = {}
    for entry_id, position in session.execute(select(CatalogImage.entry_id, CatalogImage.position)
                                              .where(CatalogImage.entry_id.in_(ids)).order_by(CatalogImage.position)):
        images.setdefault(entry_id, []).append(position)
    urls = []
    for entry_id in ids:
        loc = escape(f"{base}/catalog/{slugs[entry_id]}")
        pics = "".join(f"<image:image><image:loc>{loc}/images/{p}.png</image:loc></image:image>"
                       for p in images[entry_id])
        urls.append(f"<url><loc>{loc}</loc>{pics}</url>")
    return urls


def child_sitemap(session: Session, base_url: str, name: str) -> str:
    base = base_url.rstrip("/")
    if name == "site":
        urls = [f"<url><loc>{escape(base)}/catalog</loc></url>"]
    else:
        match = re.fullmatch(r"(catalog|images)-(\d{1,6})", name)
        if not match:
            raise NotFound("no such sitemap")
        kind, n = match.group(1), int(match.group(2))
        urls = (_landing_pages if kind == "catalog" else _image_pages)(session, base, n) if n >= 1 else []
        if not urls:
            raise NotFound("no such sitemap")
    images = ' xmlns:image="' + IMAGE_NS + '"' if name.startswith("images-") else ""
    return "\n".join([XML_HEAD, f'<urlset xmlns="{SITEMAP_NS}"{images}>', *urls, "</urlset>"]) + "\n"


def robots_txt(base_url: str) -> str:
    base = base_url.rstrip("/")
    return "\n".join([
        "# The dataset catalogue is public and meant to be found; everything else needs a login.",
        "User-agent: *",
        "Allow: /catalog",
        "Disallow: /api/",
        "Disallow: /projects",
        "Disallow: /account",
        "Disallow: /datasets",
        "Disallow: /admin",
        "Disallow: /apply",
        "Disallow: /login",
        "",
        f"Sitemap: {base}/sitemap.xml",
        "",
    ])
