"""No 5xx from input: out-of-range integers, awkward file names, wrong methods.

Every route (API and pages) is enumerated from the app itself, so a route added later with a bare
`int` parameter fails here without anyone listing it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
import typing
import uuid
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from conftest import bearer, token_for, web_client
from helpers import form_post
from strongroom.archive import c4gh
from strongroom.archive import service as archive
from strongroom.archive.backend import storage_for
from strongroom.archive.keys import ensure_key, hub_keys
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.projects.models import Project
from strongroom.schemas import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN
from strongroom.text import content_disposition
from support.live import free_port, serving

END = dt.date.today() + dt.timedelta(days=365)
OUT_OF_RANGE = [INT64_MAX + 1, 2**64, 10**30, INT64_MIN - 1]


@pytest.fixture
def world(app, hub, people):
    admin = people("root", admin=True)
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="root", ethics_ref="E1",
                                end_date=END)
    token = token_for(hub, admin)
    return {"admin": admin, "token": token}


def _is_int(annotation: Any) -> bool:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_int(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation is int


def _int_params(app) -> list[tuple[str, str, str, str, bool]]:
    """(method, path template, parameter name, where, in the API schema) for every int path/query
    parameter of every route."""
    found = []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        dependant = route.dependant
        for where, fields in (("path", dependant.path_params), ("query", dependant.query_params)):
            for field in fields:
                if _is_int(field.field_info.annotation):
                    method = sorted(route.methods)[0]
                    found.append((method, route.path_format, field.alias, where, route.include_in_schema))
    return found


def _fill(template: str, name: str, value: int) -> str:
    """The path with the parameter under test set to `value` and the others to plausible names."""
    plausible = {"slug": "lung", "user_id": str(uuid.uuid4())}
    parts = {}
    for piece in template.split("{")[1:]:
        key = piece.split("}")[0]
        parts[key] = str(value) if key == name else plausible.get(key, "x")
    return template.format(**parts)


def test_every_route_with_an_int_parameter_is_enumerated(app):
    """The sweep below is only as good as its list: it must see the parameters the issue named."""
    names = {(path, name) for _, path, name, _, _ in _int_params(app)}
    for expected in [("/api/v1/me/audit", "before"), ("/api/v1/admin/audit", "before"),
                     ("/api/v1/projects/{slug}/audit", "before"),
                     ("/api/v1/projects/{slug}/imaging/instances/{instance_id}/actions", "instance_id"),
                     ("/projects/{slug}/imaging/instances/{instance_id}", "instance_id"),
                     ("/api/v1/datasets/{dataset_id}/versions/{number}/release", "number"),
                     ("/api/v1/uploads/{file_id}/parts/{number}", "number"),
                     ("/api/v1/catalog", "page"), ("/catalog", "page"), ("/datasets/{dataset_id}", "version"),
                     ("/api/v1/datasets/{dataset_id}/catalog/images/{position}", "position")]:
        assert expected in names, expected


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_integers_beyond_64_bits_in_any_path_or_query_are_422(app, hub, client, world, value):
    api = client
    api.headers.update(bearer(world["token"]))
    page = web_client(app, hub, world["admin"])
    failures = []
    for method, template, name, where, in_api in _int_params(app):
        path = _fill(template, name, 1 if where == "query" else value)
        params = {name: str(value)} if where == "query" else {}
        if not in_api and method == "POST":  # a page's form: the browser sends its CSRF token
            r = form_post(page, path + (f"?{name}={value}" if params else ""))
        elif not in_api:
            r = page.request(method, path, params=params, follow_redirects=False)
        else:
            r = api.request(method, path, params=params, json={} if method in ("POST", "PUT", "PATCH") else None)
        if r.status_code != 422 or (in_api and r.headers["content-type"] != "application/problem+json"):
            failures.append(f"{method} {template} {where}:{name} -> {r.status_code}")
    assert not failures, failures


@pytest.mark.parametrize("value", [INT32_MAX + 1, INT64_MAX, INT32_MIN - 1])
def test_integers_within_64_bits_in_any_path_or_query_never_give_a_server_error(app, hub, client, world, value):
    """Some columns are 32-bit (version, part and image numbers): a value the schema allows must still
    be answered (404, 422), never reach the driver out of range."""
    client.headers.update(bearer(world["token"]))
    page = web_client(app, hub, world["admin"])
    failures = []
    for method, template, name, where, in_api in _int_params(app):
        path = _fill(template, name, 1 if where == "query" else value)
        params = {name: str(value)} if where == "query" else {}
        if not in_api and method == "POST":
            r = form_post(page, path + (f"?{name}={value}" if params else ""))
        else:
            r = (client if in_api else page).request(method, path, params=params, follow_redirects=False,
                                                     json={} if in_api and method in ("POST", "PUT") else None)
        if r.status_code >= 500:
            failures.append(f"{method} {template} {where}:{name} -> {r.status_code}")
    assert not failures, failures


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/projects/lu%00ng", None),
    ("GET", "/api/v1/datasets/SRD-%00/catalog", None),
    ("GET", "/api/v1/admin/audit?action=a%00b", None),
    ("GET", "/api/v1/catalog?q=%00", None),
    ("POST", "/api/v1/projects/lung/datasets", {"title": "a\u0000b"}),
    ("POST", "/api/v1/projects/lung/datasets", {"title": "t", "files": ["SRF-\u0000"]}),
    ("PUT", "/api/v1/projects/lung/settings/egress_destinations", {"value": [{"name": "\u0000", "url": "https://x"}]}),
])
def test_a_nul_character_anywhere_is_422(client, world, method, path, body):
    """PostgreSQL text cannot hold U+0000: it is refused as input, on SQLite too, before any query."""
    r = client.request(method, path, content=None if body is None else json.dumps(body),
                       headers={**bearer(world["token"]), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


def _integer_schemas(node: Any, where: str = "") -> typing.Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield where, node
        for key, value in node.items():
            yield from _integer_schemas(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _integer_schemas(value, f"{where}[{i}]")


def _body_models(app) -> set[type[BaseModel]]:
    models = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute):
            for field in route.dependant.body_params:
                annotation = field.field_info.annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    models.add(annotation)
    return models


def test_every_integer_a_request_body_carries_is_bounded_to_64_bits(app):
    models = _body_models(app)
    assert len(models) > 20
    unbounded = [f"{model.__name__}{where}" for model in models
                 for where, schema in _integer_schemas(model.model_json_schema())
                 if not (schema.get("minimum", schema.get("exclusiveMinimum", INT64_MIN - 1)) >= INT64_MIN
                         and schema.get("maximum", schema.get("exclusiveMaximum", INT64_MAX + 1)) <= INT64_MAX)]
    assert not unbounded, unbounded


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PATCH", "/api/v1/admin/projects/lung", {"quota_bytes": 2**64}),
    ("POST", "/api/v1/admin/projects", {"slug": "big", "name": "B", "pi": "root", "ethics_ref": "E",
                                         "end_date": str(END), "quota_bytes": 2**63}),
    ("POST", "/api/v1/projects/lung/uploads", {"path": "a.dcm", "size": 2**64}),
    ("POST", "/api/v1/projects/lung/imaging/quarantine/review", {"instance_ids": [2**64], "decision": "approve"}),
])
def test_integers_beyond_64_bits_in_a_body_are_422(client, world, method, path, body):
    r = client.request(method, path, json=body, headers=bearer(world["token"]))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("change", [
    {"end_date": 0},  # pydantic's lax mode reads a number as seconds since 1970
    {"quota_bytes": False}, {"quota_bytes": "5"}, {"quota_bytes": 5.5},
    {"name": 5}, {"status": 1},
])
def test_a_body_value_of_the_wrong_json_type_is_422_and_changes_nothing(client, world, change):
    """The document says integer, boolean, YYYY-MM-DD: the hub takes values as sent, never coerced."""
    before = client.get("/api/v1/admin/projects", headers=bearer(world["token"])).json()
    r = client.patch("/api/v1/admin/projects/lung", json=change, headers=bearer(world["token"]))
    assert r.status_code == 422, r.text
    assert client.get("/api/v1/admin/projects", headers=bearer(world["token"])).json() == before


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/admin/users", {"username": "eve1", "display_name": "Eve", "email": "eve@example.org",
                             "password": "correct horse battery staple", "is_admin": 0}),
    ("/api/v1/projects/lung/datasets", {"title": 5}),
])
def test_a_number_is_not_a_boolean_nor_a_text(client, world, path, body):
    r = client.post(path, json=body, headers=bearer(world["token"]))
    assert r.status_code == 422, r.text


# -- Content-Disposition -------------------------------------------------------------------------
AWKWARD_NAMES = ["漢字.dcm", 'say "cheese".dcm', "a;b=c.dcm", "cr\rlf\nname.dcm", "100%.dcm", "tab\there.dcm",
                 "ÅÄÖ åäö.dcm", "emoji-🩻.dcm", "back\\slash.dcm"]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_content_disposition_is_rfc_6266_for_any_name(name):
    value = content_disposition(name)
    value.encode("latin-1")  # a header must be encodable, or the server fails while sending it
    assert "\r" not in value and "\n" not in value
    disposition, fallback, star = (p.strip() for p in value.split("; filename"))
    assert disposition == "attachment"
    assert fallback.startswith('="') and fallback.endswith('"') and '"' not in fallback[2:-1]
    assert all(" " <= ch <= "~" for ch in fallback)
    assert star.startswith("*=UTF-8''")
    expected = "".join(ch for ch in name if ch.isprintable()).replace("\\", "_")
    assert unquote(star[len("*=UTF-8''"):]) == expected


@pytest.fixture
def live(app, hub, world, settings):
    """A hub on a loopback port with one archived file per awkward name, in a released dataset."""
    port = free_port()
    ensure_key(hub)
    storage = storage_for(hub)
    ids = {}
    with transaction(hub.sessions) as s:
        lung = s.query(Project).filter_by(slug="lung").one()
        keys = hub_keys(hub, s)
        for i, name in enumerate(AWKWARD_NAMES):
            source = settings.var_dir / f"plain-{i}"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(b"DICM" * 100 + bytes([i]))
            file_id = archive.new_accession("SRF")
            sealed = archive.seal_into_storage(keys, storage, lung.id, file_id, str(source))
            archive.add_sealed_file(s, lung.id, world["admin"].user.id, f"scans/{name}", sealed)
            ids[name] = file_id
    with serving(app, port) as url:
        c = httpx.Client(base_url=url, headers=bearer(world["token"]), timeout=30)
        assert c.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
        key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            key.public).decode()}).status_code == 201
        r = c.post("/api/v1/projects/lung/datasets", json={"title": "Names", "files": list(ids.values())})
        assert r.status_code == 201, r.text
        assert c.post(f"/api/v1/datasets/{r.json()['id']}/versions/1/release").status_code == 200
        yield c, ids


def test_a_download_of_a_file_with_any_name_succeeds_with_its_exact_name(live):
    c, ids = live
    for name, file_id in ids.items():
        r = c.get(f"/api/v1/files/{file_id}/content")
        assert r.status_code == 200, (name, r.status_code, r.text[:200])
        # RFC 6266: a client that understands filename* takes it over the ASCII fallback
        sent = unquote(re.search(r"filename\*=UTF-8''([^;\s]+)", r.headers["content-disposition"]).group(1))
        assert sent == "".join(ch for ch in name if ch.isprintable()).replace("\\", "_") + ".c4gh", (name, sent)


# -- 405 and the headers of HTTP errors ------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", "/api/v1/me", {"GET"}),
    ("PATCH", "/api/v1/uploads/SRF-x", {"GET", "DELETE"}),  # two routes share this path
    ("PUT", "/api/v1/projects/lung/members/00000000-0000-0000-0000-000000000000", {"PATCH", "DELETE"}),
    ("DELETE", "/healthz", {"GET"}),
    ("POST", "/catalog", {"GET"}),
])
def test_405_names_every_allowed_method(client, world, method, path, allowed):
    r = client.request(method, path, headers=bearer(world["token"]))
    assert r.status_code == 405
    assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}, r.headers.get("allow")
    assert method not in r.headers["allow"]


def test_401_names_the_bearer_scheme(client):
    r = client.get("/api/v1/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"


def test_a_browser_form_with_a_value_of_the_wrong_type_gets_a_page_naming_the_field(app, hub, people):
    """FastAPI's own checks of a form (a date that is no date) answer a browser with a page, not JSON."""
    admin = people("root", admin=True)
    web = web_client(app, hub, admin)
    r = form_post(web, "/projects", {"slug": "x-1", "name": "X", "pi": "root", "ethics_ref": "E",
                                     "end_date": "next spring", "quota_tb": "lots"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    alert = re.search(r'role="alert">([^<]+)<', r.text)
    assert alert, r.text[:2000]
    said = alert.group(1)
    assert "end date" in said and "quota tb" in said and "The form was not accepted" in said
    api = web.post("/api/v1/strategies/check", json={"text": 5}, headers={"Authorization": "Bearer x"})
    assert api.headers["content-type"].startswith("application/problem+json")  # the API still answers JSON
