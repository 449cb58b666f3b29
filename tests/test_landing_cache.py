"""The public landing page's validators and rendered-page cache (``catalog.page_cache``): a strong ETag and
``Cache-Control: public`` for anonymous visitors, 304 on If-None-Match, and never a stale page after the entry
changes — whether the change went through this process or straight into the database (another worker)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from conftest import bearer, web_client
from strongroom.catalog import page_cache
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction, utcnow
from test_catalog import BASE, anon, entry_body, publish_entry, world  # noqa: F401  (world is a fixture)


def test_anonymous_page_has_strong_etag_public_cache_control_and_no_cookie(world):  # noqa: F811
    publish_entry(world, world["ds"], "chest-ct")
    page_cache.clear()
    c = anon(world)
    first = c.get("/catalog/chest-ct")
    assert first.status_code == 200 and "text/html" in first.headers["content-type"]
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["cache-control"] == page_cache.CACHE_CONTROL
    assert "public" in first.headers["cache-control"] and "must-revalidate" in first.headers["cache-control"]
    assert {v.strip() for v in first.headers["vary"].split(",")} >= {"Accept", "Cookie"}
    assert "set-cookie" not in first.headers
    assert first.headers["link"]  # signposting stays

    again = c.get("/catalog/chest-ct")  # from the rendered-page cache: the same bytes and headers
    assert again.content == first.content and again.headers["etag"] == etag
    assert again.headers["link"] == first.headers["link"] and "set-cookie" not in again.headers

    not_modified = c.get("/catalog/chest-ct", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert not_modified.headers["cache-control"] == page_cache.CACHE_CONTROL
    assert c.get("/catalog/chest-ct", headers={"If-None-Match": '"other"'}).status_code == 200

    page_cache.clear()  # another worker (empty cache) answers the same validator the same way
    assert c.get("/catalog/chest-ct", headers={"If-None-Match": etag}).status_code == 304


def test_no_stale_page_after_an_edit_through_the_api(world):  # noqa: F811
    publish_entry(world, world["ds"], "chest-ct")
    c = anon(world)
    before = c.get("/catalog/chest-ct")
    assert "Chest CT cohort chest-ct" in before.text
    r = world["client"].put(f"/api/v1/datasets/{world['ds']}/catalog",
                            json=entry_body("chest-ct", title="Renamed cohort"),
                            headers=bearer(world["tokens"]["alice"]))
    assert r.status_code == 200, r.text
    after = c.get("/catalog/chest-ct", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and "Renamed cohort" in after.text
    assert after.headers["etag"] != before.headers["etag"]


def test_no_stale_page_after_a_change_made_by_another_process(world, hub):  # noqa: F811
    """A change written straight to the database (as another worker or the CLI would) is seen at once: the
    cache is keyed by the revision read from the database on every request."""
    publish_entry(world, world["ds"], "chest-ct")
    c = anon(world)
    before = c.get("/catalog/chest-ct")
    assert c.get("/catalog/chest-ct").content == before.content  # cached now
    with transaction(hub.sessions) as s:
        s.execute(update(CatalogEntry).where(CatalogEntry.slug == "chest-ct")
                  .values(title="Edited elsewhere", updated_at=utcnow() + dt.timedelta(microseconds=1)))
    after = c.get("/catalog/chest-ct")
    assert "Edited elsewhere" in after.text and after.headers["etag"] != before.headers["etag"]

    with transaction(hub.sessions) as s:  # unpublished elsewhere: gone at once
        s.execute(update(CatalogEntry).where(CatalogEntry.slug == "chest-ct")
                  .values(published=False, updated_at=utcnow()))
    assert c.get("/catalog/chest-ct").status_code == 404


def test_logged_in_visitors_get_their_own_page_never_a_shared_one(world, hub):  # noqa: F811
    publish_entry(world, world["ds"], "chest-ct")
    anon(world).get("/catalog/chest-ct")  # the public page is cached
    c = web_client(world["app"], hub, world["bob"])
    r = c.get("/catalog/chest-ct")
    assert r.status_code == 200 and "Log out" in r.text  # their menu, rendered for them
    assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
    assert "Log out" not in anon(world).get("/catalog/chest-ct").text


def test_citation_formats_by_accept_are_not_mixed_up_with_the_page(world):  # noqa: F811
    publish_entry(world, world["ds"], "chest-ct")
    c = anon(world)
    page = c.get("/catalog/chest-ct")
    bib = c.get("/catalog/chest-ct", headers={"Accept": "application/x-bibtex"})
    assert bib.status_code == 200 and "bibtex" in bib.headers["content-type"]
    assert c.get("/catalog/chest-ct").content == page.content
    assert BASE
