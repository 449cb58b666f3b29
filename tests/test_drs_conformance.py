"""GA4GH DRS 1.5 to the letter (issue 18): a live hub, every answer validated against the official DRS 1.5
OpenAPI schemas (conftest.py does that for every DRS response of the suite; here each operation and its
error answers are exercised on purpose), and a DRS client library — the GA4GH ``ga4gh-drs-client``
(``drs get -d -v``) — resolving, downloading and verifying checksums against the server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import ssl
import subprocess
import sys
from pathlib import Path

import crypt4gh.lib
import httpx
import pytest

from conftest import bearer, token_for
from strongroom.access.models import Entitlement
from strongroom.archive import c4gh
from strongroom.audit.service import Actor
from strongroom.config import AccessSettings
from strongroom.db import transaction
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from support import drs_schema
from support.live import free_port, self_signed_cert, serving

END = dt.date.today() + dt.timedelta(days=365)
DRS = "/ga4gh/drs/v1"
DRS_CLIENT = Path(sys.executable).with_name("drs")  # ga4gh-drs-client's command


@pytest.fixture
def settings(settings, issuer, tmp_path):
    """Served over https (a self-signed certificate the clients trust): the DRS client accepts nothing else."""
    port = free_port()
    access = AccessSettings(trusted_visa_issuers=[{"issuer": issuer.url, "jku": issuer.jku}])
    s = settings.model_copy(update={"base_url": f"https://127.0.0.1:{port}", "access": access})
    s._port, s._tls = port, self_signed_cert(tmp_path)  # test plumbing
    return s


def _upload(c: httpx.Client, hub_public: bytes, path: str, data: bytes) -> str:
    blob = b"".join(c4gh.encrypt_stream([data], hub_public))
    up = c.post("/api/v1/projects/lung/uploads", json={"path": path, "size": len(blob)}).json()
    for n, start in enumerate(range(0, len(blob), up["part_size"]), start=1):
        assert c.put(f"/api/v1/uploads/{up['id']}/parts/{n}", content=blob[start:start + up["part_size"]]
                     ).status_code == 200
    assert c.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
    return up["id"]


def _key(c: httpx.Client) -> tuple[c4gh.KeyPair, str]:
    key = c4gh.generate_keypair()
    r = c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public).decode()})
    assert r.status_code == 201
    return key, r.json()["fingerprint"]


@pytest.fixture
def world(app, hub, people, settings):
    """alice (PI of 'lung', downloads open) holds a released dataset of two files, one in a folder with a
    non-ASCII name; bob is in another project; carol is in none and has a key."""
    alice, bob, carol = people("alice"), people("bob"), people("carol")
    with transaction(hub.sessions) as s:
        for slug, pi in (("lung", "alice"), ("other", "bob")):
            projects.create_project(s, Actor.system("t"), slug=slug, name=slug, pi=pi, ethics_ref="E", end_date=END)
    tokens = {p.username: token_for(hub, p) for p in (alice, bob, carol)}
    verify = ssl.create_default_context(cafile=str(settings._tls[0]))
    with serving(app, settings._port, tls=settings._tls) as url:
        clients = {who: httpx.Client(base_url=url, headers=bearer(t), timeout=60, verify=verify)
                   for who, t in tokens.items()}
        a = clients["alice"]
        assert a.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
        hub_public = c4gh.parse_public_key(a.get("/api/v1/archive/public-key").text)
        data = {"scans/Örebro lung 1.dcm": os.urandom(200_000), "notes.txt": b"plain notes\n"}
        ids = {path: _upload(a, hub_public, path, body) for path, body in data.items()}
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        ds = a.post("/api/v1/projects/lung/datasets", json={"title": "Chest CT (Örebro)", "description": "Two files",
                                                             "files": list(ids.values())}).json()
        assert a.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 200
        keys = {who: _key(clients[who]) for who in ("alice", "carol")}
        yield {"url": url, "c": clients, "tokens": tokens, "ids": ids, "data": data, "dataset": ds["id"],
               "keys": {who: k for who, (k, _) in keys.items()},
               "fingerprints": {who: fp for who, (_, fp) in keys.items()}, "hub": hub, "people": (alice, bob, carol),
               "verify": verify, "cert": settings._tls[0]}
        for client in clients.values():
            client.close()  # no idle TLS connection may hold the server's shutdown


def _decrypt(blob: bytes, secret: bytes) -> bytes:
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, secret, None)], io.BytesIO(blob), out)
    return out.getvalue()


def test_service_info_blobs_and_their_two_access_methods(world):
    a, path = world["c"]["alice"], "scans/Örebro lung 1.dcm"
    file_id, plain = world["ids"][path], world["data"][path]
    info = a.get(f"{DRS}/service-info").json()
    assert info["maxBulkRequestLength"] == info["drs"]["maxBulkRequestLength"] == 1000  # 1: at the root too
    obj = a.get(f"{DRS}/objects/{file_id}").json()
    # 5: the object's own size and checksums are the plaintext's, as the DRS text defines them for a blob
    assert obj["size"] == len(plain) and obj["name"] == "Orebro_lung_1.dcm" and obj["aliases"] == [path]
    assert {c["type"]: c["checksum"] for c in obj["checksums"]} == {
        "sha-256": hashlib.sha256(plain).hexdigest(), "md5": hashlib.md5(plain).hexdigest()}
    methods = {m["access_id"]: m for m in obj["access_methods"]}
    assert [m["access_id"] for m in obj["access_methods"]] == ["plaintext", "crypt4gh"]
    assert all(m["authorizations"]["supported_types"] == ["BearerAuth", "PassportAuth"] for m in methods.values())
    # the plaintext method serves exactly the bytes the checksums describe
    plain_url = a.get(f"{DRS}/objects/{file_id}/access/plaintext").json()
    assert plain_url == {"url": f"{world['url']}/api/v1/files/{file_id}/plaintext"}  # 4: no pretend headers
    assert a.get(plain_url["url"]).content == plain
    # the crypt4gh method declares its own bytes: exact size for this key, the body's sha-256
    declared = methods["crypt4gh"]["crypt4gh"]
    c4_url = a.get(f"{DRS}/objects/{file_id}/access/crypt4gh").json()
    assert set(c4_url) == {"url"} and c4_url["url"].endswith(f"?key={world['fingerprints']['alice']}")
    blob = a.get(c4_url["url"]).content
    assert len(blob) == declared["size"] and declared["recipient_key"] == world["fingerprints"]["alice"]
    body = blob[declared["header_size"]:]
    assert len(body) == declared["body_size"]
    assert hashlib.sha256(body).hexdigest() == declared["body_checksums"][0]["checksum"]
    decrypted = _decrypt(blob, world["keys"]["alice"].secret)
    assert decrypted == plain and hashlib.sha256(decrypted).hexdigest() == obj["checksums"][0]["checksum"]


def test_bundles_have_checksums_plain_names_and_the_title_in_the_description(world):
    a, ids, data = world["c"]["alice"], world["ids"], world["data"]
    bundle = a.get(f"{DRS}/objects/{world['dataset']}").json()
    assert bundle["name"] == world["dataset"] and bundle["description"].startswith("Chest CT (Örebro)")
    assert bundle["size"] == sum(len(d) for d in data.values()) and "access_methods" not in bundle
    names = {c["name"]: c["id"] for c in bundle["contents"]}
    assert names == {"scans__Orebro_lung_1.dcm": ids["scans/Örebro lung 1.dcm"], "notes.txt": ids["notes.txt"]}
    assert all(c["drs_uri"] == [f"drs://{world['url'].split('://')[1]}/{c['id']}"] for c in bundle["contents"])
    # DRS: the digest of the sorted, concatenated member checksums
    for kind, digest in (("sha-256", hashlib.sha256), ("md5", hashlib.md5)):
        members = "".join(sorted(digest(d).hexdigest() for d in data.values()))
        assert {"type": kind, "checksum": digest(members.encode()).hexdigest()} in bundle["checksums"]


def test_errors_are_drs_errors_on_drs_routes_and_problems_elsewhere(world):
    a, url, file_id = world["c"]["alice"], world["url"], world["ids"]["notes.txt"]
    cases = {
        "unknown object": (a.get(f"{DRS}/objects/SRF-NOPE"), 404),
        "unknown access method": (a.get(f"{DRS}/objects/{file_id}/access/s3"), 404),
        "no token": (httpx.get(f"{url}{DRS}/objects/{file_id}", verify=world["verify"]), 401),
        "malformed JSON": (a.post(f"{DRS}/objects", content=b"{", headers={"Content-Type": "application/json"}),
                           400),
        "invalid body": (a.post(f"{DRS}/objects", json={"bulk_object_ids": "x"}), 400),
        "too many": (a.post(f"{DRS}/objects", json={"bulk_object_ids": [f"SRF-{i}" for i in range(1001)]}), 413),
        "someone else's": (world["c"]["bob"].get(f"{DRS}/objects/{file_id}"), 404),
    }
    for what, (r, status) in cases.items():
        assert r.status_code == status, (what, r.text)
        assert r.headers["content-type"] == "application/json", what
        assert r.json()["status_code"] == status and r.json()["msg"], what
    assert "bulk_object_ids" in cases["invalid body"][0].json()["msg"]  # the message names the field
    # a held-back made-up id and someone else's file answer alike
    assert cases["unknown object"][0].json() == cases["someone else's"][0].json()
    rest = a.get("/api/v1/files/SRF-NOPE")
    assert rest.status_code == 404 and rest.headers["content-type"] == "application/problem+json"


def test_access_is_decided_at_once_for_locked_downloads(world):
    """7: downloads locked → neither method offered to a member's own token (plaintext leaves the hub only to a
    workspace's token from its workspace: test_archive.py) and /access answers 403 now, not a URL that fails."""
    a, file_id = world["c"]["alice"], world["ids"]["notes.txt"]
    assert a.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    obj = a.get(f"{DRS}/objects/{file_id}").json()
    assert [m["access_id"] for m in obj["access_methods"]] == ["crypt4gh"]  # listed so /access can say why
    plain = a.get(f"{DRS}/objects/{file_id}/access/plaintext")
    assert plain.status_code == 403 and "read it in a workspace" in plain.json()["msg"]
    refused = a.get(f"{DRS}/objects/{file_id}/access/crypt4gh")
    assert refused.status_code == 403 and "locked" in refused.json()["msg"]
    assert a.post(f"{DRS}/objects/{file_id}/access/crypt4gh", json={}).status_code == 403
    # someone outside: 404 for both methods, as for a made-up id
    bob = world["c"]["bob"]
    for access_id in ("plaintext", "crypt4gh"):
        assert bob.get(f"{DRS}/objects/{file_id}/access/{access_id}").status_code == 404
    # a visa holder without an access policy that allows downloads: in-platform only, so 403 at once
    carol = world["c"]["carol"]
    with transaction(world["hub"].sessions) as s:
        s.add(Entitlement(user_id=world["people"][2].user.id, dataset_id=world["dataset"], version=None,
                          starts_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
                          ends_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)))
    obj = carol.get(f"{DRS}/objects/{file_id}").json()
    [method] = obj["access_methods"]  # the one listed, so /access can say why; no bytes declared for it
    assert method["access_id"] == "crypt4gh" and "crypt4gh" not in method
    r = carol.get(f"{DRS}/objects/{file_id}/access/crypt4gh")
    assert r.status_code == 403 and "in-platform use only" in r.json()["msg"]
    assert carol.get(f"{DRS}/objects/{file_id}/access/plaintext").status_code == 404


def test_post_forms_with_passports_in_the_body(world, issuer, settings):
    """6: POST /objects/{id}, POST /objects/{id}/access/{access_id} and POST /objects/access with
    ``passports`` in the body: a trusted issuer's visa resolves the object for its subject."""
    a, carol, ds = world["c"]["alice"], world["c"]["carol"], world["dataset"]
    assert a.put(f"/api/v1/datasets/{ds}/access-policy", json={"applicant_download": True}).status_code == 204
    file_id, plain = world["ids"]["notes.txt"], world["data"]["notes.txt"]
    visa = issuer.visa("carol", f"{settings.base_url}/datasets/{ds}")
    assert carol.post(f"{DRS}/objects/{file_id}", json={}).status_code == 404  # no visa, no object
    assert carol.post(f"{DRS}/objects/{file_id}", json={"passports": [issuer.visa("mallory", ds)]}).status_code == 404
    obj = carol.post(f"{DRS}/objects/{file_id}", json={"passports": [visa], "expand": False})
    assert obj.status_code == 200 and obj.json()["id"] == file_id
    assert [m["access_id"] for m in obj.json()["access_methods"]] == ["crypt4gh"]
    bundle = carol.post(f"{DRS}/objects/{ds}", json={"passports": [visa]})
    assert bundle.status_code == 200 and len(bundle.json()["contents"]) == 2
    got = carol.post(f"{DRS}/objects/{file_id}/access/crypt4gh", json={"passports": [visa]}).json()
    # the one header the URL needs for body passports is the passport itself, never a placeholder
    assert got["headers"] == [f"X-GA4GH-Passport: {visa}"]
    name, _, value = got["headers"][0].partition(": ")
    blob = carol.get(got["url"], headers={name: value})
    assert blob.status_code == 200 and _decrypt(blob.content, world["keys"]["carol"].secret) == plain
    # the URL alone grants nothing (and the body's visas do not outlive their request on this connection)
    assert carol.get(got["url"]).status_code == 404
    # bulk: objects and access URLs
    bulk = carol.post(f"{DRS}/objects", json={"bulk_object_ids": [file_id, "SRF-NOPE"], "passports": [visa]}).json()
    assert bulk["summary"] == {"requested": 2, "resolved": 1, "unresolved": 1}
    urls = carol.post(f"{DRS}/objects/access", json={"passports": [visa], "bulk_object_access_ids": [
        {"bulk_object_id": file_id, "bulk_access_ids": ["crypt4gh", "plaintext"]}]}).json()
    assert [(u["drs_object_id"], u["drs_access_id"]) for u in urls["resolved_drs_object_access_urls"]] == [
        (file_id, "crypt4gh")]
    assert urls["unresolved_drs_objects"] == [{"error_code": 404, "object_ids": [file_id]}]  # no in-platform read
    assert carol.post(f"{DRS}/objects/access", json={"bulk_object_access_ids": [
        {"bulk_object_id": file_id, "bulk_access_ids": ["crypt4gh"]}]}).json()["summary"]["resolved"] == 0
    # the OPTIONS form says how to authorise, for any id alike
    opts = httpx.options(f"{world['url']}{DRS}/objects/{file_id}", verify=world["verify"]).json()
    assert opts["supported_types"] == ["BearerAuth", "PassportAuth"] and issuer.url in opts["passport_auth_issuers"]
    # and the suite-wide hook (conftest.py) validated each of these against the DRS 1.5 schemas
    assert {(m, t) for m, t, _ in drs_schema.SEEN} >= {
        ("POST", "/objects/{object_id}"), ("POST", "/objects"), ("POST", "/objects/{object_id}/access/{access_id}"),
        ("POST", "/objects/access"), ("OPTIONS", "/objects/{object_id}")}


def test_a_drs_client_library_downloads_and_verifies(world, tmp_path):
    """The GA4GH ``ga4gh-drs-client`` (``drs get URL ID -d -v``, over verified TLS): resolve → /access →
    download → checksum verification, for a blob and for the dataset bundle (each member resolved
    through its id). It takes the first access method that answers, ``plaintext`` here, whose bytes the
    object's checksums describe."""
    token, ids, data = world["tokens"]["alice"], world["ids"], world["data"]
    members = {ids[path]: (name, data[path]) for path, name in (("notes.txt", "notes.txt"),
                                                                ("scans/Örebro lung 1.dcm", "Orebro_lung_1.dcm"))}
    for object_id, expected in ((ids["notes.txt"], [ids["notes.txt"]]), (world["dataset"], list(members))):
        out = tmp_path / object_id
        out.mkdir()
        run = subprocess.run([str(DRS_CLIENT), "get", world["url"], object_id, "-t", token, "-d", "-v", "-o", str(out),
                              "-m", str(tmp_path / f"{object_id}.json"), "-S"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env={**os.environ, "REQUESTS_CA_BUNDLE": str(world["cert"])})  # verified TLS
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        for member in expected:
            name, body = members[member]
            assert (out / member / name).read_bytes() == body, name
        report = [line.split("\t") for line in (out / "drs_download_report.txt").read_text().splitlines()
                  if line and not line.startswith(("#", "ID\t"))]
        assert sorted(row[0] for row in report) == sorted(expected)
        for row in report:  # ID, Name, Output File, Download Status, Checksum Status, Hash Algorithm, …
            assert row[3:6] == ["COMPLETED", "PASSED", "md5"], row
