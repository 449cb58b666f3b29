"""What crawlers read first: sitemaps of the published entries (an index of child sitemaps once
there are many) and robots.txt."""

from __future__ import annotations

import math
import re
from xml.sax.saxutils import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import NotFound
from .models import CatalogEntry, CatalogImage

# A sitemap holds at most this many URLs; above it /sitemap.xml becomes an index of child sitemaps.
# (The protocol allows 50,000; smaller files are rebuilt faster. Tests lower it.)
SITEMAP_MAX_URLS = 5000
SITEMAP_NS = ('xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
              'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1"')


def _published_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(CatalogEntry).where(CatalogEntry.published.is_(True))) or 0


def _urlset(session: Session, base: str, *, offset: int, limit: int, with_catalog: bool) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<urlset {SITEMAP_NS}>"]
    if with_catalog:
        lines.append(f"<url><loc>{escape(base)}/catalog</loc></url>")
    rows = list(session.execute(select(CatalogEntry.id, CatalogEntry.slug, CatalogEntry.updated_at)
                                .where(CatalogEntry.published.is_(True)).order_by(CatalogEntry.id)
                                .offset(offset).limit(limit)))
    images: dict[int, list[int]] = {}
    if rows:
        for entry_id, position in session.execute(
                select(CatalogImage.entry_id, CatalogImage.position)
                .where(CatalogImage.entry_id.in_([r[0] for r in rows])).order_by(CatalogImage.position)):
            images.setdefault(entry_id, []).append(position)
    for entry_id, slug, updated in rows:
        loc = f"{base}/catalog/{slug}"
        pics = "".join(f"<image:image><image:loc>{escape(loc)}/images/{n}.png</image:loc></image:image>"
                       for n in images.get(entry_id, []))
        lastmod = f"<lastmod>{updated.date().isoformat()}</lastmod>" if updated else ""
        lines.append(f"<url><loc>{escape(loc)}</loc>{lastmod}{pics}</url>")
    lines.append("</urlset>")
    return "\n".join(lines) + "\n"


def sitemap(session: Session, base_url: str) -> str:
    """One sitemap while everything fits; an index of child sitemaps beyond ``SITEMAP_MAX_URLS``."""
    base = base_url.rstrip("/")
    count = _published_count(session)
    if count + 1 <= SITEMAP_MAX_URLS:
        return _urlset(session, base, offset=0, limit=SITEMAP_MAX_URLS, with_catalog=True)
    children = math.ceil(count / SITEMAP_MAX_URLS)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">',
             f"<sitemap><loc>{escape(base)}/sitemaps/site.xml</loc></sitemap>"]
    lines += [f"<sitemap><loc>{escape(base)}/sitemaps/catalog-{n}.xml</loc></sitemap>" for n in range(1, children + 1)]
    lines.append("</sitemapindex>")
    return "\n".join(lines) + "\n"


def child_sitemap(session: Session, base_url: str, name: str) -> str:
    base = base_url.rstrip("/")
    if name == "site":
        return _urlset(session, base, offset=0, limit=0, with_catalog=True)
    match = re.fullmatch(r"catalog-(\d{1,6})", name)
    if not match:
        raise NotFound("no such sitemap")
    n = int(match.group(1))
    if not 1 <= n <= max(1, math.ceil(_published_count(session) / SITEMAP_MAX_URLS)):
        raise NotFound("no such sitemap")
    return _urlset(session, base, offset=(n - 1) * SITEMAP_MAX_URLS, limit=SITEMAP_MAX_URLS, with_catalog=False)


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
