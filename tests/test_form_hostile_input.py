"""Hostile input in a web form or a JSON body gets a clear 4xx, never a 500: on SQLite and PostgreSQL alike.

PostgreSQL refuses what SQLite stores (U+0000 in text, a text longer than its VARCHAR, an integer beyond its
column), so the hub validates at the edge, and both answer the same:

- NUL anywhere in a form (a field's name, its value, an uploaded file's name) is refused centrally by the CSRF
  check every web form passes through, /login's included: 422 before any route reads the form;
- every JSON body is a ``schemas.Body``, which refuses NUL in any field;
- numbers are parsed by one helper (``schemas.whole_number``): ASCII digits within the column's range;
- a text field is no longer than the column that stores it.

The class test scrapes every form of every page the PI (pia, also an operator), a member (memo) and an anonymous
visitor reach in the walked world of ``test_web_messages`` (one of everything), and posts each field once with
each hostile value of its kind, with the page's own CSRF token and the form's own values for the other fields.
A form added later is scraped too.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select

import test_web_messages as walked
from conftest import bearer, browser_session, token_for
from helpers import csrf_for
from imaging_support import make_project
from strongroom import schemas
from strongroom.catalog.fields import EntryFields
from strongroom.db import Base, transaction
from strongroom.deps import SESSION_COOKIE, _check_csrf
from strongroom.errors import Invalid
from strongroom.federation import api as beacon_api
from strongroom.federation import peers_api
from strongroom.identity.models import LoginAttempt, User
from strongroom.notify import api as notify_api
from strongroom.projects.models import Membership, Project
from strongroom.schemas import INT32_MAX, INT64_MAX, Body
from test_outsiders import BOOKKEEPING, _walk
from test_outsiders import _values as world_values
from test_web_messages import World

settings, world = walked.settings, walked.world  # that test's fixtures: its hub settings and its world

NUL, LONG = "a\x00b", "A" * 10_000
NUMBERS = {"superscript": "\u00b2", "beyond 64 bits": str(2**64), "5000 digits": "9" * 5000}
API = ("/api/", "/ga4gh/", "/dicomweb/")
# Not posted: logging out ends the session the rest of the sweep uses; JupyterLab's own forms are served by the
# workspaces' origin, which the hub's origin refuses whole (workspaces/proxy.py).
NOT_POSTED = {"/logout", "/projects/{slug}/workspaces/{workspace_id}",
              "/projects/{slug}/workspaces/{workspace_id}/{path}"}
# Besides BOOKKEEPING, a refused login or second factor counts the attempt: that is the throttle's record.
REFUSALS_RECORD = BOOKKEEPING | {"login_attempts"}
# Values for a field the page leaves empty, so that the other fields pass and the hostile one is the question.
PLAUSIBLE = {
    "title": "Hostile input", "name": "Hostile input", "description": "d", "reason": "because", "note": "n",
    "comment": "c", "purpose": "p", "text": "remark", "username": "pat", "password": "wrong password",
    "current_password": "wrong password", "new_password": "another long passphrase 2026",
    "new_password_again": "another long passphrase 2026", "code": "000000", "user": "rita", "pi": "pia",
    "ethics_ref": "E9", "end_date": "2099-01-01", "until": "2099-01-01", "version": "1", "days": "30",
    "pseudonym": "P", "period": "2025", "project": "chest", "period_start": "2025-01-01", "valid_from": "2025-01-01",
    "valid_to": "2025-01-31", "percent": "10", "base_url": "https://peer.example.org",
    "selection": "every patient", "labels_csv": "case_id,label\nc1,1\n", "slug": "hostile-input",
    "dataset_class": "research", "action": "set", "ae_title": "CHEST", "host": "127.0.0.1", "port": "11112",
}


def _plausible(w: World, values: dict[str, str]) -> dict[str, str]:
    """PLAUSIBLE, with the walked world's own things for the fields that name one."""
    return {**PLAUSIBLE, "dataset": w.ids["demo"], "peer": "peer-s", "file_id": w.ids["ready_file"],
            "files": w.ids["ready_file"], "model_version": values["version_id"]}


# -- the forms of a page ---------------------------------------------------------------------------------
@dataclass
class Form:
    action: str
    page: str
    fields: dict[str, str] = field(default_factory=dict)
    numeric: set[str] = field(default_factory=set)  # type=number, inputmode=numeric, or a value ending in digits
    files: set[str] = field(default_factory=set)


class FormParser(HTMLParser):
    """The POST forms of a page as a browser would submit them untouched: each field's shown or first value."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.page, self.forms = page, []
        self.form: Form | None = None
        self.select: str | None = None
        self.option: str | None = None  # the select whose option's text is being read
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            if a.get("method", "get").lower() == "post":
                self.form = Form(urlsplit(a.get("action") or self.page).path, self.page)
                self.forms.append(self.form)
            return
        form, name = self.form, a.get("name", "")
        if form is None or not name and tag != "option":
            return
        if tag == "input":
            kind = a.get("type", "text").lower()
            if kind == "file":
                form.files.add(name)
            elif kind in ("checkbox", "radio"):
                if name not in form.fields or "checked" in a:
                    form.fields[name] = a.get("value", "on")
            elif kind != "submit" or name not in form.fields:
                form.fields[name] = a.get("value", "")
            if kind == "number" or a.get("inputmode") == "numeric":
                form.numeric.add(name)
        elif tag == "select":
            self.select = name
            form.fields.setdefault(name, "")
        elif tag == "option" and self.select and (not form.fields[self.select] or "selected" in a):
            if "value" in a:
                form.fields[self.select] = a["value"]
            else:  # <option>text</option>: the text is the value
                self.option = self.select
        elif tag == "textarea":
            self.textarea = name
            form.fields[name] = ""
        elif tag == "button" and "value" in a:
            form.fields.setdefault(name, a["value"])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.form = None
        elif tag == "select":
            self.select = self.option = None
        elif tag == "textarea":
            self.textarea = None

    def handle_data(self, data: str) -> None:
        if self.form is not None and self.textarea:
            self.form.fields[self.textarea] += data
        elif self.form is not None and self.option:
            self.form.fields[self.option] = data.strip()
            self.option = None


def _route_of(app: Any, path: str) -> str:
    """The route template a form's action is served by (its forms are deduplicated by it)."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and "POST" in route.methods \
                and route.original_route.path_regex.match(path):
            return route.path_format
    return path


def _pages(app: Any, values: dict[str, str]) -> Iterator[str]:
    """Every page of the hub (GET routes outside the API), with the walked world's ids in its path."""
    for route in iter_route_contexts(app.routes):
        template = route.path_format
        if not isinstance(route.original_route, APIRoute) or "GET" not in route.methods or template.startswith(API):
            continue
        names = re.findall(r"\{([a-z_]+)(?::path)?\}", template)
        key = {"request_id": "airlock_request_id" if "/airlock/" in template else "request_id",
               "number": "statement" if template.startswith("/fees/statements/") else "number"}
        wanted = [key.get(n, n) for n in names]
        if all(n in values for n in wanted):
            filled = template
            for name, value_key in zip(names, wanted, strict=True):
                filled = re.sub(r"\{" + name + r"(?::path)?\}", quote(values[value_key], safe=""), filled)
            yield filled


def _forms(app: Any, client: TestClient, values: dict[str, str]) -> dict[str, Form]:
    """The forms found on every page this client reaches, one per route (the one with the most fields)."""
    found: dict[str, Form] = {}
    for page in _pages(app, values):
        r = client.get(page, follow_redirects=True)
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith("text/html"):
            continue
        parser = FormParser(r.url.path)
        parser.feed(r.text)
        for form in parser.forms:
            route = _route_of(app, form.action)
            if route in NOT_POSTED or route.startswith(API):
                continue
            if route not in found or len(form.fields) > len(found[route].fields):
                found[route] = form
    return found


def _baseline(form: Form, plausible: dict[str, str]) -> dict[str, str]:
    data = {k: v or plausible.get(k, "") for k, v in form.fields.items()}
    for name, value in data.items():
        if re.fullmatch(r"(.*:)?[0-9]+", value):
            form.numeric.add(name)
    return data


def _hostile(form: Form, name: str, value: str) -> Iterator[tuple[str, str]]:
    """(label, value) for each hostile value the field is posted with after NUL."""
    yield "10,000 characters", LONG
    if name in form.numeric:
        prefix = re.sub(r"[0-9]*$", "", value)  # "SRD-…:3" (a dataset version) keeps its "SRD-…:"
        for label, number in NUMBERS.items():
            yield label, prefix + number


# -- what the database holds -------------------------------------------------------------------------------
def _tables() -> list[Any]:
    return [t for t in Base.metadata.sorted_tables if t.name not in REFUSALS_RECORD]


def _row_counts(w: World) -> tuple[int, ...]:
    with w.hub.sessions() as s:
        return tuple(s.execute(select(*(select(func.count()).select_from(t).scalar_subquery()
                                         for t in _tables()))).one())


def _contents(w: World) -> dict[str, list[str]]:
    with w.hub.sessions() as s:
        return {t.name: sorted(repr(tuple(row)) for row in s.execute(select(t))) for t in _tables()}


# -- the sweep ------------------------------------------------------------------------------------------
def _client(w: World, who: str | None) -> TestClient:
    c = TestClient(w.app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    if who is not None:
        c.cookies.set(SESSION_COOKIE, browser_session(w.hub, w.people[who]))
    return c


@dataclass
class Sweep:
    w: World
    who: str
    client: TestClient
    forms: dict[str, Form]
    plausible: dict[str, str]
    failures: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def post(self, route: str, form: Form, data: dict[str, str], label: str, name: str,
             filename: str = "notes.txt") -> Any:
        files = {f: (filename, b"hello", "text/plain") for f in form.files} or None
        r = self.client.post(form.action, data={**data, "csrf_token": self.token(form)}, files=files,
                             follow_redirects=False)
        if r.status_code >= 500:
            self.failures.append(f"{self.who}: POST {route} {name}={label} → {r.status_code}")
        return r

    def token(self, form: Form) -> str:
        """The CSRF token the form's page carries (bound to the session: read again for a new one)."""
        if form.page not in self.tokens:
            page = self.client.get(form.page, follow_redirects=True)
            found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            self.tokens[form.page] = found.group(1) if found else ""
        return self.tokens[form.page]

    def new_session(self) -> None:
        self.client, self.tokens = _client(self.w, self.who), {}

    def fields(self) -> Iterator[tuple[str, Form, dict[str, str], str]]:
        for route, form in sorted(self.forms.items()):
            baseline = _baseline(form, self.plausible)
            for name in form.fields:
                if name != "csrf_token":
                    yield route, form, baseline, name


def _sweeps(w: World, values: dict[str, str]) -> list[Sweep]:
    sweeps = []
    for who in ("pia", "memo", None):
        client = _client(w, who)
        sweeps.append(Sweep(w, who or "anonymous", client, _forms(w.app, client, values), _plausible(w, values)))
    return sweeps


@pytest.fixture
def walked_world(world: World) -> World:
    _walk(world)
    return world


def test_every_form_field_refuses_hostile_input_without_a_server_error(walked_world: World) -> None:
    """NUL in any field of any form: 422, and the hub's data is unchanged. Then a 10,000-character text in each
    field, and "²", 2^64 and a 5000-digit number in each number-like one: never a 5xx, and a refusal (4xx)
    changes no row."""
    w = walked_world
    values = {**world_values(w), "dataset_id": w.ids["demo"]}
    sweeps = _sweeps(w, values)
    pia, memo, anonymous = sweeps
    assert len(pia.forms) >= 50 and len(memo.forms) >= 15, (sorted(pia.forms), sorted(memo.forms))
    assert "/login" in anonymous.forms and "/projects/{slug}/data/datasets" in memo.forms
    assert {"/federation/syncs", "/projects/{slug}/requests", "/projects/{slug}/vai/evaluations"} <= set(pia.forms)

    before = _contents(w)
    wrong: list[str] = []
    for sweep in sweeps:
        for route, form, baseline, name in sweep.fields():
            r = sweep.post(route, form, {**baseline, name: NUL}, "NUL", name)
            if r.status_code != 422 or "NUL" not in r.text:
                wrong.append(f"{sweep.who}: POST {route} {name}=NUL → {r.status_code} {r.text[:200]!r}")
    changed = [t for t, rows in _contents(w).items() if rows != before[t]]
    assert not wrong, "\n".join(wrong)
    assert not changed, f"refused forms changed {changed}"

    for sweep in sweeps:
        for route, form in sorted(sweep.forms.items()):
            baseline = _baseline(form, sweep.plausible)
            posts = [(name, label, {**baseline, name: value}, "notes.txt")
                     for name in form.fields if name != "csrf_token"
                     for label, value in _hostile(form, name, baseline[name])]
            if form.files:  # a file's name is kept as its path (VARCHAR 1024) in the archive and the airlock
                posts.append(("file name", "2,000 characters", baseline, "A" * 2000 + ".txt"))
            for name, label, data, filename in posts:
                counts = _row_counts(w)
                r = sweep.post(route, form, data, label, name, filename)
                if 400 <= r.status_code < 500 and _row_counts(w) != counts:
                    wrong.append(f"{sweep.who}: POST {route} {name}={label} → {r.status_code} but changed rows")
            if sweep.who != "anonymous" and sweep.client.get("/account").status_code != 200:
                sweep.new_session()  # (a form that changed the password or ended the session)
    failures = [f for sweep in sweeps for f in sweep.failures]
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures)
    assert not wrong, "\n".join(wrong)


@pytest.fixture
def chest(app, hub, people) -> TestClient:
    """The PI of a project chest, logged in (no walk: these tests need one form each)."""
    pia = people("pia", admin=True)
    make_project(hub, "chest", "pia")
    c = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    c.cookies.set(SESSION_COOKIE, browser_session(hub, pia))
    return c


def _alert(r: Any) -> str:
    found = re.search(r'role="alert"[^>]*>\s*([^<]+)', r.text)
    assert found, r.text[-2000:]
    return html.unescape(found.group(1))


def test_a_nul_in_a_field_name_or_an_uploaded_file_name_is_refused(chest: TestClient) -> None:
    r = chest.post("/projects/chest/data/datasets", data={"csrf_token": csrf_for(chest), "title": "T", "x\x00y": "1"})
    assert r.status_code == 422 and "a field's name contains a NUL character" in _alert(r)
    # (httpx writes a control character in a file name as %00, as browsers do: this is what a script may send)
    body = (f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf_for(chest)}\r\n'
            '--b\r\nContent-Disposition: form-data; name="file"; filename="scan\x00.txt"\r\n'
            'Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n').encode()
    r = chest.post("/projects/chest/data/upload", content=body,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422 and "the name of the file sent as file may not contain a NUL" in _alert(r)


def test_login_with_nul_is_a_clear_422_for_an_anonymous_visitor(app, hub, people) -> None:
    people("pat")
    c = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"csrf_token": token, "username": NUL, "password": "x"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert "username may not contain a NUL character" in _alert(r)
    with hub.sessions() as s:  # refused before the login was tried: no attempt counted
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == 0


@pytest.mark.parametrize("sent", ["\u00b2" * 64, "é", "x\x00"])
def test_a_csrf_token_with_any_characters_is_refused_as_a_stale_form(chest: TestClient, sent: str) -> None:
    """compare_digest refuses str with non-ASCII characters: that was a TypeError, so a 500, before any login."""
    anonymous = TestClient(chest.app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    anonymous.get("/login")
    for c, path in ((anonymous, "/login"), (chest, "/account/tokens")):
        r = c.post(path, data={"csrf_token": sent, "username": "pat", "password": "x", "name": "n"})
        assert r.status_code == 403, (path, r.status_code, r.text[:300])


def test_every_web_form_route_passes_the_csrf_check(app) -> None:
    """The NUL check lives in the CSRF check: every POST route of the pages must depend on it."""
    missing = []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or "POST" not in route.methods \
                or route.path_format.startswith(API) or route.path_format in NOT_POSTED - {"/logout"}:
            continue
        if _check_csrf not in {d.call for d in route.dependant.dependencies}:
            missing.append(route.path_format)
    assert not missing, missing


# -- JSON bodies -------------------------------------------------------------------------------------------
def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for f in annotation.model_fields.values():
            yield from _models(f.annotation)
    for arg in getattr(annotation, "__args__", ()):
        yield from _models(arg)


# JSON bodies read as a plain object and validated by a Body in the service, so that a broken rule is answered in
# the words the web editor shows (catalog/api.py).
CHECKED_IN_THE_SERVICE = {("/api/v1/datasets/{dataset_id}/catalog", "body")}


def test_every_json_request_body_is_a_schemas_body(app) -> None:
    """A Body refuses NUL in every field (and every unknown field it allows): each model a route reads a JSON
    body into, nested ones included, must be one. A form's fields are checked by the CSRF check instead."""
    seen, wrong = set(), []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        stack = [route.dependant]
        while stack:
            dependant = stack.pop()
            stack.extend(dependant.dependencies)
            for param in dependant.body_params:
                if type(param.field_info).__name__ in ("Form", "File"):
                    continue
                models = list(_models(param.field_info.annotation))
                if (route.path_format, param.alias) in CHECKED_IN_THE_SERVICE:
                    continue
                if not models:
                    wrong.append(f"{route.path_format} {param.alias}: {param.field_info.annotation} is no model")
                for model in models:
                    seen.add(model)
                    if not issubclass(model, Body):
                        wrong.append(f"{route.path_format} {param.alias}: {model.__module__}.{model.__name__}")
    assert len(seen) > 40
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_catalogue_entry_body_is_read_by_a_body_too(chest: TestClient, hub, people) -> None:
    """The one JSON body that is no model (``CHECKED_IN_THE_SERVICE``) is read by ``EntryFields``, a Body."""
    assert issubclass(EntryFields, Body)
    headers = bearer(token_for(hub, people("otto")))
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=s.scalar(select(Project.id).where(Project.slug == "chest")),
                         user_id=s.scalar(select(User.id).where(User.display_name == "Otto")), role="steward",
                         delegated_rights=[]))
    r = chest.post("/api/v1/projects/chest/datasets", json={"title": "T"}, headers=headers)
    assert r.status_code == 201, r.text
    r = chest.put(f"/api/v1/datasets/{r.json()['id']}/catalog", json={"slug": "nul-entry", "title": NUL},
                  headers=headers)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text


PEER_KEY = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA" + "A" * 43 + "=\n-----END PUBLIC KEY-----"


@pytest.mark.parametrize(("module", "name", "body"), [
    (peers_api, "SyncIn", {"dataset": NUL, "peer": "peer-s"}),
    (peers_api, "PeerChange", {"outbound": True, "inbound": True, "active": True, "extra": NUL}),
    (peers_api, "PeerIn", {"name": "peer-n", "base_url": "https://a.example.org/\x00", "signing_key": NUL,
                           "archive_key": NUL}),
    (peers_api, "PeerIdentityIn", {"base_url": "https://a.example.org", "signing_key": NUL, "archive_key": NUL,
                                   "visa_issuer": "https://a.example.org/\x00"}),
    (notify_api, "NotifyPreferenceIn", {"mode": NUL}),
    (beacon_api, "FilterIn", {"id": NUL}),
    (beacon_api, "QueryIn", {"filters": [NUL]}),
    (beacon_api, "RequestIn", {"query": {"filters": [{"id": "x", "note": NUL}]}}),
    (beacon_api, "RequestIn", {"meta": {"apiVersion": NUL}}),
    (beacon_api, "RequestIn", {"query": {}, "other": {"deep": [NUL]}}),
])
def test_each_json_model_refuses_nul(module: Any, name: str, body: dict[str, Any]) -> None:
    """Each request model that was no Body (the federation's, the notification mode's, Beacon's) now is one."""
    model: type[BaseModel] = getattr(module, name)
    assert issubclass(model, Body)
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_beacon_bodies_still_allow_fields_they_do_not_read() -> None:
    body = beacon_api.RequestIn.model_validate({"meta": {"apiVersion": "v2.0"}, "query": {
        "filters": ["NCIT:C1", {"id": "SNOMED:1", "scope": "imagingStudy"}], "requestedGranularity": "boolean"},
        "other": 1})
    assert [f if isinstance(f, str) else f.id for f in body.query.filters] == ["NCIT:C1", "SNOMED:1"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/federation/syncs", {"dataset": NUL, "peer": "peer-s"}),
    ("POST", "/api/v1/federation/syncs", {"dataset": "SRD-X", "peer": "peer-s", "version": "1"}),  # types as sent
    ("PUT", "/api/v1/me/notifications", {"mode": NUL}),
    ("POST", "/ga4gh/beacon/v2/datasets", {"query": {"filters": [NUL]}}),
    ("POST", "/ga4gh/beacon/v2/imaging_studies", {"meta": {"x": NUL}}),
])
def test_json_bodies_with_nul_are_422(app, hub, people, method: str, path: str, body: dict[str, Any]) -> None:
    pia = people("pia", admin=True)
    c = TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    r = c.request(method, path, json=body, headers=bearer(token_for(hub, pia)))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


# -- numbers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1\u00b2", "", " ", "+1", "1.0", "1e3", "0x10", "9" * 5000,
                                  str(INT32_MAX + 1), str(2**64), "\x001"])
def test_whole_number_refuses_all_but_ascii_digits_in_the_columns_range(text: str) -> None:
    with pytest.raises(Invalid, match="^version: should be a whole number"):
        schemas.whole_number(text, "version")


def test_whole_number_takes_ascii_digits_within_the_range() -> None:
    whole_number = schemas.whole_number
    assert whole_number(" 12 ", "version") == 12
    assert whole_number(b"42", "Content-Length", minimum=0) == 42
    assert whole_number(str(INT64_MAX), "sequence", maximum=INT64_MAX) == INT64_MAX
    assert whole_number("-5", "offset") == -5
    with pytest.raises(Invalid, match="from 1 to"):
        whole_number("0", "version", minimum=1)


@pytest.mark.parametrize("declared", [b"9" * 5000, "\u00b2".encode(), b"-1", b"1 2", str(2**64).encode()])
def test_a_content_length_of_any_shape_is_refused_without_a_server_error(app, declared: bytes) -> None:
    """BodyLimitMiddleware reads the header before anything else: thousands of digits made int() fail."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/v1/me/notifications", "raw_path": b"/api/v1/me/notifications", "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", declared)]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413, sent[0]
