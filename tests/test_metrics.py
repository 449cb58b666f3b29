"""Data-sharing metrics (issue 11, Metrics): every figure against a seeded scenario with known counts
(``metrics_support.EXPECTED``), through the JSON API, the CSV and the /stats page; landing-page views
(COUNTER robots, double clicks, no address kept); the small-count rule and the private-data rule as class
tests over every output; the data owner's page; the profile country; and that the number of queries does
not grow with the number of datasets."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

import metrics_support as ms
from conftest import bearer, token_for, web_client
from helpers import form_post, wait_until
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.identity.models import User
from strongroom.stats import service
from strongroom.stats.figures import SUPPRESSED
from strongroom.stats.jobs import prune
from strongroom.stats.models import DaySalt, DayVisitor, LandingViews
from support.live import free_port, serving

BASE = "http://127.0.0.1:8000"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
OTHER_BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# every figure that counts people or their actions: never 1-4 in any output
PEOPLE_FIGURES = {"made", "approved", "rejected", "downloads", "downloaders", "external_sharing_events",
                  "applications"}


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setattr(service, "CACHE_SECONDS", 0.0)


@pytest.fixture
def scenario(hub):
    return ms.seed(hub)


@pytest.fixture
def anon(app) -> TestClient:
    return TestClient(app, base_url=BASE)


def _person(hub, username: str):
    from conftest import Person

    with hub.sessions() as s:
        return Person(user=s.scalar(select(User).where(User.subject == username)), username=username, seed=None)


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# -- every figure ------------------------------------------------------------------------------------
def test_every_public_figure_matches_the_seeded_scenario(anon, scenario):
    m = anon.get("/api/v1/metrics").json()
    for key, value in ms.EXPECTED.items():
        assert m[key] == value, key
    assert (m["views"], m["visitors"]) == (12 + 40, 9 + 30)  # the private dataset's 500 views are not there

    rows = {d["slug"]: d for d in m["per_dataset"]}
    assert set(rows) == {"chest", "slides", "brain"}
    chest, slides, brain = rows["chest"], rows["slides"], rows["brain"]
    assert _without(chest, "id", "published_at", "title", "countries", "applications") == {
        "slug": "chest", "url": f"{BASE}/catalog/chest", "subjects": "< 5", "studies": "< 5", "scans": 5,
        "instances": 20, "annotations": "< 5", "files": 23, "bytes": 1_000_000, "modalities": ["CT", "SEG"],
        "organs": ["CHEST"], "pathology": False, "radiology": True, "annotated": True, "views": 12, "visitors": 9,
        "downloads": "withheld", "download_bytes": None, "downloaders": "< 5", "countries_shared_with": 4,
        "external_sharing_events": "withheld"}  # 6 and 9: with the slides' "< 5" they would give it back
    # 11 approved (waits 1 2 3 4 5 6 10 2 2 3 3), 2 rejected (1 1): median = 7th of 13, p90 = 12th
    assert chest["applications"] == {"made": "withheld", "approved": "withheld", "rejected": "< 5",
                                     "decision_days": {"median": 3.0, "p90": 6.0}}
    assert chest["countries"] == [{"country": "DE", "name": "Germany", "approved": 7},
                                  *[c for c in ms.EXPECTED["countries"] if c["country"] != "DE"]]
    assert (slides["scans"], slides["annotations"], slides["pathology"], slides["radiology"]) == ("< 5", "< 5", True,
                                                                                         False)
    assert slides["applications"] == {"made": "< 5", "approved": "< 5", "rejected": 0,
                                      "decision_days": {"median": None, "p90": None}}  # one decision: no times
    assert (slides["downloads"], slides["download_bytes"], slides["external_sharing_events"]) == ("< 5", None, "< 5")
    assert slides["countries"] == [{"country": "DE", "name": "Germany", "approved": "< 5"}]
    assert (brain["scans"], brain["modalities"], brain["organs"], brain["annotated"]) == ("< 5", ["MR", "PT"],
                                                                                          ["BRAIN"], False)
    assert brain["applications"]["made"] == "< 5" and brain["downloads"] == 0

    months = {x["month"]: x for x in m["months"]}
    now = scenario.now
    this_month = f"{now.year:04d}-{now.month:02d}"
    assert months[this_month]["downloads"] == 8 and months[this_month]["download_bytes"] == 700_000
    published = (now - dt.timedelta(days=60)).strftime("%Y-%m")
    assert months[published]["datasets_published"] == 3 and m["months"][-1]["datasets_total"] == 3
    assert sum(x["views"] for x in m["months"]) == 52
    assert all(isinstance(x["applications"], int) or x["applications"] in (SUPPRESSED, "withheld") for x in m["months"])
    assert list(months) == sorted(months) and m["months"][-1]["month"] == this_month


def test_csv_has_the_same_figures_one_row_each(anon, scenario):
    r = anon.get("/api/v1/metrics.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    value = {(row["scope"], row["figure"]): row["value"] for row in rows}
    assert value[("all", "datasets")] == "3" and value[("all", "scans")] == "10"
    assert value[("all", "annotated.datasets")] == "2" and value[("all", "pathology.scans")] == "< 5"
    assert value[("all", "applications.decision_days.median")] == "3.0"
    assert value[("all", "downloaders")] == "< 5" and value[("all", "external_sharing_events")] == "10"
    assert value[("country:DE", "approved")] == "withheld" and value[("country:US", "approved")] == "< 5"
    assert value[("modality:CT", "scans")] == "5" and value[("organ:BRAIN", "scans")] == "< 5"
    chest = f"dataset:{scenario.datasets['chest']}"
    assert value[(chest, "modalities")] == "CT;SEG" and value[(chest, "countries.country:FR.approved")] == "< 5"
    assert value[(chest, "downloads")] == "withheld"


def test_the_page_shows_the_headline_figures_and_svg_charts(anon, scenario):
    r = anon.get("/stats")
    assert r.status_code == 200
    html = r.text
    tiles = dict(re.findall(r'data-figure="(\w+)">([^<]+)<', html))
    assert tiles["datasets"] == "3" and tiles["scans"] == "10"
    assert 'data-figure="annotations"><span class="small-count"' in html  # 3 annotations: "< 5"
    assert tiles["modalities"] == "5" and tiles["organs"] == "3" and tiles["countries_shared_with"] == "4"
    assert tiles["external_sharing_events"] == "10" and tiles["bytes"] == "8.0 MB"
    for chart in ("datasets", "applications", "downloads", "views", "modalities", "organs", "countries"):
        assert f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="chart-{chart}"' in html
    assert html.count('class="chart-bar"') > 10 and 'class="chart-suppressed"' in html and 'class="chart-line"' in html
    assert ">Germany <code>DE</code></span> <span class=\"count\" data-figure=\"country.approved\"><span " \
        "class=\"small-count withheld-count\"" in html
    # nothing the hub's CSP would block: no inline style, no script, nothing from another host
    assert "style=" not in html and "<script" not in html.replace('<script type="application/ld+json">', "")
    assert not re.search(r'(src|href)="(https?:)?//(?!127\.0\.0\.1:8000)', html)
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert anon.get("/static/stats.css").status_code == 200


def test_metrics_are_in_the_openapi_document(anon):
    paths = anon.get("/openapi.json").json()["paths"]
    assert {"/api/v1/metrics", "/api/v1/metrics.csv", "/api/v1/datasets/{dataset_id}/metrics",
            "/api/v1/datasets/{dataset_id}/metrics.csv"} <= set(paths)
    assert "text/csv" in paths["/api/v1/metrics.csv"]["get"]["responses"]["200"]["content"]


# -- class tests: small counts and private data, over every output -----------------------------------
def _outputs(app, hub, scenario) -> dict[str, str]:
    """Every place a figure is shown: public page, JSON, CSV; the owner's page, JSON and CSV."""
    anon = TestClient(app, base_url=BASE)
    olga = _person(hub, "olga")
    owner, token = web_client(app, hub, olga), token_for(hub, olga)
    out = {"page": anon.get("/stats").text, "json": anon.get("/api/v1/metrics").text,
           "csv": anon.get("/api/v1/metrics.csv").text}
    for name, ds in scenario.datasets.items():
        if name == "secret":
            continue
        out[f"owner-page-{name}"] = owner.get(f"/datasets/{ds}/metrics").text
        out[f"owner-json-{name}"] = anon.get(f"/api/v1/datasets/{ds}/metrics", headers=bearer(token)).text
        out[f"owner-csv-{name}"] = anon.get(f"/api/v1/datasets/{ds}/metrics.csv", headers=bearer(token)).text
    return out


def _people_counts_in_json(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _people_counts_in_json(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            yield from _people_counts_in_json(v, path)
    elif path.rsplit(".", 1)[-1] in PEOPLE_FIGURES and not path.startswith(".months") or \
            path.startswith(".months") and path.rsplit(".", 1)[-1] in ("applications", "approved", "downloads"):
        yield path, value


def test_small_counts_are_never_shown_anywhere(app, hub, scenario):
    import json

    outputs = _outputs(app, hub, scenario)
    checked = 0
    for name, text in outputs.items():
        if "json" in name:
            for path, value in _people_counts_in_json(json.loads(text)):
                assert value not in (1, 2, 3, 4), (name, path)
                checked += 1
        elif "csv" in name:
            for row in csv.DictReader(io.StringIO(text)):
                last = row["figure"].rsplit(".", 1)[-1]
                if last in PEOPLE_FIGURES or (row["scope"].startswith("month:") and last in ("applications",)):
                    assert row["value"] not in ("1", "2", "3", "4"), (name, row)
                    checked += 1
        else:  # pages: every count of people is marked with its figure
            for figure, value in re.findall(r'data-figure="([\w.]+)">([^<]*)<', text):
                if figure in PEOPLE_FIGURES | {"country.approved"}:
                    assert value.strip() not in ("1", "2", "3", "4"), (name, figure)
                    checked += 1
            for value in re.findall(r"<td>(\d+)</td><td>(?:\d+|<span[^>]*>[^<]*</span>)</td></tr>", text):
                assert value not in ("1", "2", "3", "4"), name  # per-dataset approved column
            assert "“&lt; 5”" in text or "&lt; 5" in text
    assert checked > 100


def test_private_datasets_never_leak(app, hub, scenario):
    outputs = _outputs(app, hub, scenario)
    public = {k: v for k, v in outputs.items() if not k.startswith("owner")}
    for name, text in public.items():
        for marker in (*ms.PRIVATE_MARKERS, scenario.datasets["secret"]):
            assert marker not in text, (name, marker)
    # the hidden project's PI sees their own dataset, unpublished, on their page; nobody else does
    pete, olga = _person(hub, "pete"), _person(hub, "olga")
    secret = scenario.datasets["secret"]
    r = web_client(app, hub, pete).get(f"/datasets/{secret}/metrics")
    assert r.status_code == 200 and "Secret knee study" in r.text and "not published" in r.text
    assert web_client(app, hub, olga).get(f"/datasets/{secret}/metrics").status_code == 404
    c = TestClient(app, base_url=BASE)
    assert c.get(f"/api/v1/datasets/{secret}/metrics", headers=bearer(token_for(hub, olga))).status_code == 404
    assert c.get(f"/api/v1/datasets/{secret}/metrics").status_code == 401
    assert c.get(f"/datasets/{secret}/metrics", follow_redirects=False).status_code in (303, 401)
    # withdrawing an entry takes its dataset out of every public figure
    olga_token = token_for(hub, olga)
    r = c.post(f"/api/v1/datasets/{scenario.datasets['brain']}/catalog/unpublish", headers=bearer(olga_token))
    assert r.status_code == 200, r.text
    m = c.get("/api/v1/metrics").json()
    assert m["datasets"] == 2 and m["scans"] == 10 and "Brain MR and PET" not in c.get("/stats").text


def test_owner_page_shows_one_dataset_with_the_same_rules(app, hub, scenario):
    olga = _person(hub, "olga")
    chest = scenario.datasets["chest"]
    r = web_client(app, hub, olga).get(f"/datasets/{chest}/metrics")
    assert r.status_code == 200
    tiles = dict(re.findall(r'data-figure="(\w+)">([^<]+)<', r.text))
    assert tiles["scans"] == "5" and tiles["external_sharing_events"] == "9" and "datasets" not in tiles
    assert 'id="chart-applications"' in r.text and 'noindex' in r.text
    # an applicant is not the owner
    assert web_client(app, hub, _person(hub, "de1")).get(f"/datasets/{chest}/metrics").status_code == 404
    # the access page links to it
    assert f'href="/datasets/{chest}/metrics"' in web_client(app, hub, olga).get(f"/datasets/{chest}/access").text


# -- landing-page views ------------------------------------------------------------------------------
def test_landing_views_count_people_once_per_30_seconds_and_never_robots(app, hub, scenario):
    c = TestClient(app, base_url=BASE)
    for ua in (BROWSER, BROWSER, GOOGLEBOT, GOOGLEBOT, OTHER_BROWSER, "python-httpx/0.28.1", ""):
        assert c.get("/catalog/chest", headers={"User-Agent": ua}).status_code == 200
    today = dt.datetime.now(dt.UTC).date()
    with hub.sessions() as s:
        row = s.get(LandingViews, (today, scenario.datasets["chest"]))
        assert (row.views, row.visitors) == (2, 2)  # browser (double click = 1) + the other browser
        visitor_rows = list(s.scalars(select(DayVisitor)))
        assert len(visitor_rows) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", v.visitor) for v in visitor_rows)
        # the same visitor 31 s after their last click counts again, within 30 s not
        last = max(v.last_at for v in visitor_rows)
    with transaction(hub.sessions) as s:
        assert service.record_view(s, hub.secret, scenario.datasets["chest"], ip="testclient", user_agent=BROWSER,
                                   now=last + dt.timedelta(seconds=20)) is False
        assert service.record_view(s, hub.secret, scenario.datasets["chest"], ip="testclient", user_agent=BROWSER,
                                   now=last + dt.timedelta(seconds=51)) is True
    with hub.sessions() as s:
        assert s.get(LandingViews, (today, scenario.datasets["chest"])).views == 3
    m = c.get("/api/v1/metrics").json()
    assert m["views"] == 52 + 3 and m["visitors"] == 39 + 2
    # no address or browser string is kept anywhere, not even in the audit log
    with hub.sessions() as s:
        for table in (LandingViews, DayVisitor, DaySalt):
            for obj in s.scalars(select(table)):
                text = repr({k: v for k, v in vars(obj).items() if not k.startswith("_")})
                assert "testclient" not in text and "Mozilla" not in text
        assert not s.scalar(select(AuditEvent).where(AuditEvent.action.like("stats.%")))


def test_concurrent_views_are_each_counted_once_when_recorded_together(app, hub, scenario):
    """Views arriving while another response records are recorded by it, in one transaction: 40 different
    visitors at once through a real server are 40 views, none lost or counted twice."""
    today = dt.datetime.now(dt.UTC).date()
    with hub.sessions() as s:
        before = s.get(LandingViews, (today, scenario.datasets["chest"]))
        before_views = before.views if before else 0
    with serving(app, free_port()) as url, httpx.Client(base_url=url, timeout=60) as c:
        def view(i: int) -> int:
            return c.get("/catalog/chest", headers={"User-Agent": f"{BROWSER} visitor/{i}"}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(view, range(40))) == {200}
        c.get("/healthz")  # the last view's background task has run before the next response on its connection

        def counted() -> int:
            with hub.sessions() as s:
                row = s.get(LandingViews, (today, scenario.datasets["chest"]))
                return (row.views if row else 0) - before_views

        wait_until(lambda: counted() >= 40, 30, 0.05)
        assert counted() == 40


def test_yesterdays_visitors_and_salt_are_forgotten(app, hub, scenario):
    ds = scenario.datasets["chest"]
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with transaction(hub.sessions) as s:
        service.record_view(s, hub.secret, ds, ip="10.1.2.3", user_agent=BROWSER, now=yesterday)
    with hub.sessions() as s:
        assert s.scalar(select(DayVisitor.day)) == yesterday.date() and s.get(DaySalt, yesterday.date())

    class Ctx:
        def transaction(self, deferred=False):
            return transaction(hub.sessions, deferred=deferred)

    assert prune(Ctx(), {}) == {"forgotten": 1}
    with hub.sessions() as s:
        assert not s.scalars(select(DayVisitor)).all() and not s.scalars(select(DaySalt)).all()
        assert s.get(LandingViews, (yesterday.date(), ds)).views == 1  # the count stays


def test_visitor_hashes_change_with_the_day_and_need_the_hub_secret():
    day = dt.date(2026, 5, 1)
    a = service.visitor_key(b"s" * 32, b"salt", day, "10.0.0.1", BROWSER)
    assert a == service.visitor_key(b"s" * 32, b"salt", day, "10.0.0.1", BROWSER)
    assert a != service.visitor_key(b"s" * 32, b"salt", day + dt.timedelta(days=1), "10.0.0.1", BROWSER)
    assert a != service.visitor_key(b"t" * 32, b"salt", day, "10.0.0.1", BROWSER)
    assert a != service.visitor_key(b"s" * 32, b"salt", day, "10.0.0.1", OTHER_BROWSER)


# -- the profile country -----------------------------------------------------------------------------
def test_users_give_their_affiliation_country_on_the_account_page_and_api(app, hub, people):
    alice = people("alice")
    c = web_client(app, hub, alice)
    assert 'name="country"' in c.get("/account").text
    r = form_post(c, "/account/country", {"country": "no"})
    assert r.status_code == 303
    assert "Country saved: NO." in c.get(r.headers["location"]).text
    r = form_post(c, "/account/country", {"country": "Norway"})
    assert r.status_code == 422 and "ISO 3166-1" in r.text
    api = TestClient(app, base_url=BASE)
    h = bearer(token_for(hub, alice))
    assert api.get("/api/v1/me", headers=h).json()["country"] == "NO"
    assert api.patch("/api/v1/me", json={"country": "fi"}, headers=h).json()["country"] == "FI"
    assert api.patch("/api/v1/me", json={"country": "XX"}, headers=h).status_code == 422
    assert api.patch("/api/v1/me", json={"country": None}, headers=h).json()["country"] is None
    with hub.sessions() as s:
        changes = list(s.scalars(select(AuditEvent.details).where(AuditEvent.action == "user.country_changed")
                                 .order_by(AuditEvent.seq)))
    assert changes == [{"from": None, "to": "NO"}, {"from": "NO", "to": "FI"}, {"from": "FI", "to": None}]


# -- performance: a fixed number of queries, whatever the number of datasets -------------------------
def _queries(hub) -> int:
    engine = hub.sessions.kw["bind"]
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with hub.sessions() as s:
            service.compute(s, service._published())
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def test_the_number_of_queries_does_not_grow_with_the_datasets(hub, scenario):
    from strongroom.projects.models import Project

    before = _queries(hub)
    with transaction(hub.sessions) as s:
        lung = s.scalar(select(Project).where(Project.slug == "lung"))
        olga = s.get(User, scenario.users["olga"])
        for i in range(12):
            ms.dataset(s, "brain", lung, olga, scenario.now, published=True, slug=f"more-{i}")
    assert _queries(hub) == before
