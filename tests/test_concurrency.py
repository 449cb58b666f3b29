"""One user's concurrent writes must not freeze the hub (issue 9, point 10).

SQLite has one write lock for the whole database; these tests are about it, so they run on SQLite,
against a live uvicorn server (the event loop and its worker threads are part of the story). The
last test checks that PostgreSQL lock waits are bounded the same way.

- While another connection holds the write lock, ``/healthz`` and pure reads answer, and every write
  gets 503 with ``Retry-After`` after a bounded wait (never a 500, never a 30 s hang).
- 16 concurrent clients of mixed kinds (attachment uploads over the API and in a web form, answer
  saves, notification settings, upload parts, reads) get no 5xx but 503-with-Retry-After, ``/healthz``
  answers throughout, and every accepted write is in the database afterwards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import shutil
import socket
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from conftest import bearer, browser_session, token_for
from strongroom.access.models import ApplicationEvent, Attachment
from strongroom.archive.models import Dataset, DatasetVersion, UploadPart
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.deps import SESSION_COOKIE, _db, csrf_token_for
from strongroom.hub import Hub
from strongroom.notify.service import preference
from strongroom.projects import service as projects
from support.live import serving

CLIENTS = 16
REQUESTS_PER_CLIENT = 3
KIB = 1024
END = dt.date.today() + dt.timedelta(days=365)


@pytest.fixture
def database_url(sqlite_template: str, tmp_path) -> str:  # SQLite only (see the docstring)
    target = tmp_path / "strongroom.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


def _dataset(hub, slug: str) -> str:
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug=slug, name=slug.title(), pi="owner",
                                          ethics_ref="E", end_date=END)
        ds = Dataset(id=f"SRD-{slug.upper()[:10]}", project_id=project.id, title=slug.title(),
                     created_by=project.pi_id)
        s.add(ds)
        s.flush()
        s.add(DatasetVersion(dataset_id=ds.id, number=1, state="released"))
        s.add(CatalogEntry(dataset_id=ds.id, slug=f"{slug}-entry", title=slug.title(), created_by=project.pi_id,
                           published=True, published_at=dt.datetime.now(dt.UTC)))  # outsiders may apply
        return ds.id


@pytest.fixture
def hub_served(app, hub, people):
    """One user, rita, with an API token, a browser session, three draft applications and a project
    of her own to upload into; the app served by uvicorn."""
    people("owner")
    rita = people("rita")
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="ritas", name="Rita's", pi="rita", ethics_ref="E",
                                end_date=END)
    datasets = [_dataset(hub, f"data{i}") for i in range(3)]
    token = token_for(hub, rita)
    cookie = browser_session(hub, rita)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with serving(app, sock=sock) as url, httpx.Client(base_url=url, headers=bearer(token), timeout=120) as api:
        apps = {}
        for name, ds in zip(("api", "answers", "web"), datasets, strict=True):
            r = api.post(f"/api/v1/datasets/{ds}/applications")
            assert r.status_code == 201, r.text
            apps[name] = r.json()["id"]
        yield {"url": url, "token": token, "cookie": cookie, "apps": apps, "hub": hub}


def _web(url: str, cookie: str, hub: Hub) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=120, follow_redirects=False)
    client.cookies.set(SESSION_COOKIE, cookie)
    client.csrf = csrf_token_for(hub.secret, session_cookie=cookie)  # the token its pages carry
    return client


def _web_save(web: httpx.Client, app_id: str, filename: str, data: bytes) -> httpx.Response:
    return web.post(f"/applications/{app_id}/save",
                    data={"csrf_token": web.csrf, "study_name": "Nodule AI", "ethics.number": "Dnr 2026-1"},
                    files={"ethics.file": (filename, data, "application/pdf")})


def _busy(r: httpx.Response) -> bool:
    return r.status_code == 503 and r.headers.get("retry-after", "").isdigit()


def test_a_held_write_lock_gives_503_to_writers_and_never_stalls_reads_or_healthz(hub_served):
    w, apps = hub_served, hub_served["apps"]
    db_path = w["hub"].settings.effective_database_url.removeprefix("sqlite:///")
    api = httpx.Client(base_url=w["url"], headers=bearer(w["token"]), timeout=120)
    web = _web(w["url"], w["cookie"], w["hub"])
    assert web.get(f"/applications/{apps['web']}").status_code == 200  # the session's last-seen is fresh now
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # someone else's long write transaction
    try:
        with ThreadPoolExecutor(4) as pool:
            attach = pool.submit(api.post, f"/api/v1/applications/{apps['api']}/attachments",
                                 params={"filename": "ethics.pdf"}, content=b"%PDF" + b"x" * (512 * KIB))
            notify = pool.submit(api.put, "/api/v1/me/notifications", json={"mode": "daily"})
            form = pool.submit(_web_save, _web(w["url"], w["cookie"], w["hub"]), apps["web"], "held.pdf", b"%PDF-held")
            # While those wait for the lock: the event loop is free, and reads need no write lock.
            assert httpx.get(f"{w['url']}/healthz", timeout=120).status_code == 200
            assert web.get(f"/applications/{apps['web']}").status_code == 200
            for r in (attach.result(), notify.result(), form.result()):
                assert _busy(r), (r.status_code, r.headers, r.text[:300])
            assert attach.result().headers["content-type"] == "application/problem+json"
            assert attach.result().json()["code"] == "database-busy"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Nothing of the refused writes landed; once the lock is free the same requests succeed.
    with transaction(w["hub"].sessions) as s:
        assert s.scalar(select(func.count()).select_from(Attachment)) == 0
    r = api.post(f"/api/v1/applications/{apps['api']}/attachments", params={"filename": "ethics.pdf"},
                 content=b"%PDF" + b"x" * (512 * KIB))
    assert r.status_code == 201, r.text
    assert api.put("/api/v1/me/notifications", json={"mode": "daily"}).status_code == 200
    assert _web_save(web, apps["web"], "later.pdf", b"%PDF-later").status_code == 303


def test_sixteen_concurrent_writers_get_no_5xx_and_every_accepted_write_lands(hub_served):
    w, apps = hub_served, hub_served["apps"]
    hub = w["hub"]
    with httpx.Client(base_url=w["url"], headers=bearer(w["token"]), timeout=120) as api:
        parts_upload = api.post("/api/v1/projects/ritas/uploads",
                                json={"path": "big.c4gh", "size": CLIENTS * REQUESTS_PER_CLIENT * 64 * KIB})
        assert parts_upload.status_code == 201, parts_upload.text
    upload_id = parts_upload.json()["id"]

    accepted: dict[str, list] = {"attach": [], "web": [], "answers": [], "notify": [], "parts": [], "read": []}
    statuses: Counter[str] = Counter()
    bad: list[str] = []
    lock = threading.Lock()
    writers_done = threading.Event()

    def note(kind: str, r: httpx.Response, ok: int, value: object) -> None:
        with lock:
            statuses[f"{r.status_code // 100}xx"] += 1
            if r.status_code == ok:
                accepted[kind].append(value)
            elif r.status_code >= 500 and not _busy(r):
                bad.append(f"{kind}: {r.status_code} {r.headers.get('retry-after')} {r.text[:200]}")

    def client(n: int) -> None:
        kind = ("attach", "web", "answers", "notify", "parts", "read")[n % 6]
        api = httpx.Client(base_url=w["url"], headers=bearer(w["token"]), timeout=120)
        web = _web(w["url"], w["cookie"], w["hub"])
        for i in range(REQUESTS_PER_CLIENT):
            tag = f"c{n}r{i}"
            if kind == "attach":
                body = tag.encode() + bytes(256 * KIB * (1 + n % 4))
                r = api.post(f"/api/v1/applications/{apps['api']}/attachments",
                             params={"filename": f"{tag}.pdf"}, content=body)
                note(kind, r, 201, (r.json().get("id") if r.status_code == 201 else None, len(body)))
            elif kind == "web":
                r = _web_save(web, apps["web"], f"{tag}.pdf", tag.encode() + bytes(128 * KIB))
                note(kind, r, 303, f"{tag}.pdf")
            elif kind == "answers":
                r = api.put(f"/api/v1/applications/{apps['answers']}/answers",
                            json={"answers": {"study_name": tag}})
                note(kind, r, 200, tag)
            elif kind == "notify":
                mode = ("daily", "immediate")[(n + i) % 2]
                note(kind, api.put("/api/v1/me/notifications", json={"mode": mode}), 200, mode)
            elif kind == "parts":
                number = n * REQUESTS_PER_CLIENT + i + 1
                data = tag.encode().ljust(64 * KIB, b".")
                r = api.put(f"/api/v1/uploads/{upload_id}/parts/{number}", content=data)
                note(kind, r, 200, (number, hashlib.sha256(data).hexdigest()))
            else:
                r = api.get(f"/api/v1/applications/{apps['answers']}")
                note(kind, r, 200, None)
        api.close()
        web.close()

    health: Counter[int] = Counter()

    def watch_health() -> None:
        while not writers_done.is_set():
            health[httpx.get(f"{w['url']}/healthz", timeout=120).status_code] += 1

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    writers_done.set()
    watcher.join()

    assert not bad, bad
    assert set(health) == {200}, health
    assert all(accepted[k] for k in ("attach", "web", "answers", "notify", "parts")), accepted
    with transaction(hub.sessions) as s:
        sizes = dict(s.execute(select(Attachment.id, func.length(Attachment.data))
                               .where(Attachment.application_id == apps["api"])).all())
        assert sizes == dict(accepted["attach"])
        web_files = set(s.scalars(select(Attachment.filename).where(Attachment.application_id == apps["web"])))
        assert set(accepted["web"]) <= web_files
        saved = s.scalar(select(func.count()).select_from(ApplicationEvent).where(
            ApplicationEvent.application_id == apps["answers"], ApplicationEvent.type == "saved"))
        assert saved == len(accepted["answers"])
        parts = dict(s.execute(select(UploadPart.number, UploadPart.sha256)
                               .where(UploadPart.file_id == upload_id)).all())
        assert parts == dict(accepted["parts"])
        assert preference(s, s.scalar(select(Attachment.uploaded_by).limit(1))) in set(accepted["notify"])


def test_no_async_route_queries_the_database(app):
    """An ``async def`` route runs on the event loop: one query there that waits for a lock stalls every
    request of the process, /healthz included. Routes that need the body read it in a dependency
    (``RawBody``, ``posted_form``) and are plain ``def``, which FastAPI runs in worker threads."""

    def uses_db(dependant) -> bool:
        return any(d.call is _db or uses_db(d) for d in dependant.dependencies)

    def routes(container) -> list[APIRoute]:  # included routers nest (FastAPI ≥ 0.16x)
        found = []
        for route in container.routes:
            if isinstance(route, APIRoute):
                found.append(route)
            elif hasattr(route, "original_router"):
                found += routes(route.original_router)
        return found

    all_routes = routes(app)
    assert len(all_routes) > 100
    offenders = sorted(f"{sorted(r.methods)} {r.path}" for r in all_routes
                       if inspect.iscoroutinefunction(r.endpoint) and uses_db(r.dependant))
    assert offenders == []


def test_postgresql_lock_timeout_gives_503_with_retry_after(request, tmp_path):
    """The same promise on PostgreSQL: a request waits for a lock at most the web lock timeout, then
    gets 503 with Retry-After instead of hanging."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine, text

    from conftest import PASSWORD, PG_OK, _truncate_pg
    from strongroom.app import create_app
    from strongroom.config import Settings
    from strongroom.identity import service as identity

    if not PG_OK:
        pytest.skip("PostgreSQL not reachable")
    url = request.getfixturevalue("pg_schema_ready")
    _truncate_pg(url)
    settings = Settings(var_dir=tmp_path / "var", database_url=url, secret_key="test-secret-" + "x" * 32,
                        jobs={"embedded": False}, security={"cookie_secure": False})
    app = create_app(settings, run_jobs=False)
    hub = app.state.hub
    with transaction(hub.sessions) as s:
        user = identity.create_local_user(s, Actor.system("t"), username="rita", password=PASSWORD,
                                          display_name="Rita", email="rita@example.org")
    token = token_for(hub, SimpleNamespace(user=user))
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    blocker = engine.connect()
    try:
        # PostgreSQL ends the blocker after 20 s: without a lock timeout the request would then pass.
        blocker.execute(text("SET idle_in_transaction_session_timeout = '20s'"))
        blocker.execute(text("LOCK TABLE notify_preferences IN ACCESS EXCLUSIVE MODE"))
        with TestClient(app, base_url="http://127.0.0.1:8000") as c:
            r = c.put("/api/v1/me/notifications", json={"mode": "daily"}, headers=bearer(token))
        assert _busy(r), (r.status_code, r.text[:300])
        assert r.json()["code"] == "database-busy"
    finally:
        blocker.close()
        engine.dispose()
