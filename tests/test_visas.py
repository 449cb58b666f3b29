"""GA4GH visas and entitlements as bases for download.

The hub issues ControlledAccessGrants visas that verify against the JWKS it serves over HTTP; an
entitlement opens a file for a user outside the owning project until it ends or is revoked; a visa
from a configured trusted issuer (a second live server with its own key) opens it too, and the
allowlist, signature, expiry, subject and ``conditions`` are enforced — with no key fetched from a
jku that is not on the issuer's allowlist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid

import crypt4gh.lib
import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from strongroom.access import visas
from strongroom.access.models import Entitlement, VisaRevocation
from strongroom.archive import c4gh
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.config import AccessSettings, TrustedVisaIssuer
from strongroom.db import transaction
from strongroom.jobs.runner import Runner
from strongroom.projects import service as projects
from support.live import free_port, serving

END = dt.date.today() + dt.timedelta(days=365)
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def settings(settings, issuer):
    port = free_port()
    access = AccessSettings(trusted_visa_issuers=[{"issuer": issuer.url, "jku": issuer.jku}])
    s = settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}", "access": access})
    s._port = port  # test plumbing
    return s


@pytest.fixture
def world(app, hub, people, settings):
    """alice's project 'lung' holds a released dataset with one file; carol is in no project."""
    alice, carol, root = people("alice"), people("carol"), people("root", admin=True)
    with transaction(hub.sessions) as s:
        projects.create_project(s, Actor.system("t"), slug="lung", name="Lung", pi="alice", ethics_ref="E1",
                                end_date=END)
    tokens = {p.username: token_for(hub, p) for p in (alice, carol, root)}
    with serving(app, settings._port) as url:
        a = httpx.Client(base_url=url, headers=bearer(tokens["alice"]), timeout=60)
        c = httpx.Client(base_url=url, headers=bearer(tokens["carol"]), timeout=60)
        admin = httpx.Client(base_url=url, headers=bearer(tokens["root"]), timeout=60)
        hub_public = c4gh.parse_public_key(a.get("/api/v1/archive/public-key").text)
        data = os.urandom(70_000)
        blob = b"".join(c4gh.encrypt_stream([data], hub_public))
        up = a.post("/api/v1/projects/lung/uploads", json={"path": "scan.dcm", "size": len(blob)}).json()
        for n, start in enumerate(range(0, len(blob), up["part_size"]), start=1):
            assert a.put(f"/api/v1/uploads/{up['id']}/parts/{n}",
                         content=blob[start:start + up["part_size"]]).status_code == 200
        assert a.post(f"/api/v1/uploads/{up['id']}/complete").status_code == 200
        Runner(hub, lease_seconds=10, name="test").run_until_idle()
        ds = a.post("/api/v1/projects/lung/datasets", json={"title": "Chest CT", "files": [up["id"]]}).json()
        assert a.post(f"/api/v1/datasets/{ds['id']}/versions/1/release").status_code == 200
        # approved applicants may download this one (the locked default, in-platform only, is tested below)
        assert a.put(f"/api/v1/datasets/{ds['id']}/access-policy",
                     json={"applicant_download": True}).status_code == 204
        carol_key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(
            carol_key.public).decode()}).status_code == 201
        yield {"url": url, "alice": a, "carol": c, "admin": admin, "people": (alice, carol, root), "hub": hub,
               "file": up["id"], "dataset": ds["id"], "data": data, "carol_key": carol_key}


def _entitle(hub, person, dataset: str, *, starts: dt.timedelta = dt.timedelta(days=-1),
             ends: dt.timedelta = dt.timedelta(days=30), version: int | None = None) -> uuid.UUID:
    with transaction(hub.sessions) as s:
        e = Entitlement(user_id=person.user.id, dataset_id=dataset, version=version, starts_at=NOW + starts,
                        ends_at=NOW + ends)
        s.add(e)
        s.flush()
        return e.id


def _update(hub, ent_id: uuid.UUID, **values) -> None:
    with transaction(hub.sessions) as s:
        e = s.get(Entitlement, ent_id)
        for k, v in values.items():
            setattr(e, k, v)


def _decrypt(data: bytes, secret: bytes) -> bytes:
    out = io.BytesIO()
    crypt4gh.lib.decrypt([(0, secret, None)], io.BytesIO(data), out)
    return out.getvalue()


def _download(world, **headers) -> httpx.Response:
    return world["carol"].get(f"/api/v1/files/{world['file']}/content", headers=headers)


# -- issuing -----------------------------------------------------------------------------------
def test_hub_visas_verify_with_the_served_jwks_and_permissions_are_private(world, settings):
    hub, (alice, carol, _) = world["hub"], world["people"]
    ent = _entitle(hub, carol, world["dataset"])
    _entitle(hub, carol, world["dataset"], starts=dt.timedelta(days=-60), ends=dt.timedelta(days=-1))  # ended
    mine = world["carol"].get("/api/v1/me/passport")
    assert mine.status_code == 200
    [token] = mine.json()["ga4gh_passport_v1"]  # the ended entitlement yields no visa

    served = httpx.get(f"{world['url']}/.well-known/jwks.json")  # over HTTP, from the live hub
    assert served.status_code == 200 and "public" in served.headers["cache-control"]
    assert all("d" not in k for k in served.json()["keys"])  # no private material
    verified = jwt.decode(token, KeySet.import_key_set(served.json()), algorithms=["ES256"])
    header, claims = verified.header, verified.claims
    key_file = settings.var_dir / "keys" / "visa-signing.jwk"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert header["kid"] == ECKey.import_key(served.json()["keys"][0]).thumbprint()
    assert header["jku"] == f"{settings.base_url}/.well-known/jwks.json"
    assert header["typ"] == "vnd.ga4gh.visa+jwt"
    with hub.sessions() as s:
        e = s.get(Entitlement, ent)
    visa = claims["ga4gh_visa_v1"]
    assert claims["iss"] == settings.base_url and claims["sub"] == "carol"
    assert claims["exp"] == int(e.ends_at.timestamp()) and visa["asserted"] == int(e.starts_at.timestamp())
    assert visa == {"type": "ControlledAccessGrants", "by": "dac", "asserted": visa["asserted"],
                    "value": f"{settings.base_url}/datasets/{world['dataset']}", "source": settings.base_url}

    # the REMS-style permissions API: yourself or a platform admin; anyone else sees nothing
    own = world["carol"].get(f"/api/v1/permissions/{carol.user.id}")
    assert own.status_code == 200 and len(own.json()["ga4gh_passport_v1"]) == 1
    assert world["admin"].get(f"/api/v1/permissions/{carol.user.id}").json()["ga4gh_passport_v1"]
    assert world["alice"].get(f"/api/v1/permissions/{carol.user.id}").status_code == 404
    assert world["carol"].get(f"/api/v1/permissions/{alice.user.id}").status_code == 404
    assert world["carol"].get("/api/v1/permissions/not-a-uuid").status_code == 404
    assert world["admin"].get(f"/api/v1/permissions/{uuid.uuid4()}").status_code == 404
    assert httpx.get(f"{world['url']}/api/v1/permissions/{carol.user.id}").status_code == 401
    alices = world["alice"].get("/api/v1/me/passport").json()
    assert alices["ga4gh_passport_v1"] == []
    assert jwt.decode(alices["passport"], KeySet.import_key_set(served.json())).claims["ga4gh_passport_v1"] == []

    # Passport 1.2: the same visas inside a passport JWT signed by the hub, ending no later than they do
    passport_jwt = jwt.decode(mine.json()["passport"], KeySet.import_key_set(served.json()), algorithms=["ES256"])
    assert passport_jwt.header["typ"] == "vnd.ga4gh.passport+jwt" and passport_jwt.header["jku"] == header["jku"]
    p_claims = passport_jwt.claims
    assert p_claims["ga4gh_passport_v1"] == [token] and p_claims["iss"] == settings.base_url
    assert p_claims["sub"] == "carol" and p_claims["iat"] < p_claims["exp"] <= min(claims["exp"], time.time() + 3600)
    assert "ga4gh_visa_v1" not in p_claims and isinstance(p_claims["jti"], str)

    # the hub's own visa is accepted wherever the hub is trusted: verify as a clearinghouse would
    hub_as_issuer = settings.model_copy(update={"access": AccessSettings(
        trusted_visa_issuers=[{"issuer": settings.base_url, "jku": header["jku"]}])})
    passport = asyncio.run(visas.PassportVerifier(hub_as_issuer).verify(token))
    assert not passport.rejected and passport.visas[0].value.endswith(world["dataset"])


# -- entitlements ------------------------------------------------------------------------------
def test_entitlement_opens_download_until_it_ends_or_is_revoked(world):
    hub, (_, carol, _) = world["hub"], world["people"]
    assert _download(world).status_code == 404  # not a member, no grant
    ent = _entitle(hub, carol, world["dataset"])
    got = _download(world)
    assert got.status_code == 200, got.text
    assert _decrypt(got.content, world["carol_key"].secret) == world["data"]
    assert world["carol"].get(f"/api/v1/files/{world['file']}").status_code == 200  # metadata too
    assert world["carol"].get(f"/api/v1/datasets/{world['dataset']}/versions/1/files").status_code == 200
    with hub.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.download.started")
                          .order_by(AuditEvent.seq.desc())).first()
    assert event.details["basis"] == "entitlement" and event.details["grant"] == str(ent)

    _update(hub, ent, revoked_at=dt.datetime.now(dt.UTC))  # revocation: the very next request
    assert _download(world).status_code == 404
    _update(hub, ent, revoked_at=None, ends_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))  # expired
    assert _download(world).status_code == 404
    _update(hub, ent, ends_at=NOW + dt.timedelta(days=3), starts_at=NOW + dt.timedelta(days=1))  # not yet
    assert _download(world).status_code == 404
    _update(hub, ent, starts_at=NOW - dt.timedelta(days=1), version=2)  # another version only
    assert _download(world).status_code == 404
    _update(hub, ent, version=1)
    assert _download(world).status_code == 200
    # a deprecated version stays readable to the entitled; a file only in a draft does not
    assert world["alice"].post(f"/api/v1/datasets/{world['dataset']}/versions/1/deprecate").status_code == 200
    assert _download(world).status_code == 200


# -- visas from a trusted issuer ---------------------------------------------------------------
def test_trusted_issuer_visa_grants_download_and_keys_are_cached(world, issuer, settings):
    value = f"{settings.base_url}/datasets/{world['dataset']}"
    visa = issuer.visa("carol", value)
    got = _download(world, **{"X-GA4GH-Passport": visa})
    assert got.status_code == 200, got.text
    assert _decrypt(got.content, world["carol_key"].secret) == world["data"]
    # the next request on the same keep-alive connection, after a streamed body, has no visa of its own:
    # it must not inherit this one (it did: the server starts it from inside the previous request's context)
    assert _download(world).status_code == 404
    # a passport JWT wrapping the visas (token-exchange form), a version-specific value, the bare accession
    passport = jwt.encode({"alg": "ES256", "typ": "vnd.ga4gh.passport+jwt"},
                          {"iss": "https://broker.example", "sub": "carol", "iat": int(time.time()),
                           "exp": int(time.time()) + 600, "ga4gh_passport_v1": [visa]}, issuer.key)
    assert _download(world, **{"X-GA4GH-Passport": passport}).status_code == 200
    for named in (f"{value}/versions/1", world["dataset"]):
        assert _download(world, **{"X-GA4GH-Passport": issuer.visa("carol", named)}).status_code == 200, named
    v2 = issuer.visa("carol", f"{value}/versions/2")  # a version that does not hold the file
    assert _download(world, **{"X-GA4GH-Passport": v2}).status_code == 404
    assert issuer.hits["jwks"] == 1  # fetched once, then cached
    # a version that is no whole number names nothing (isdigit() took "²" and "١", then int() raised: a 500)
    for odd in ("²", "١", "0", "9" * 40, "-1", ""):
        refused = _download(world, **{"X-GA4GH-Passport": issuer.visa("carol", f"{value}/versions/{odd}")})
        assert refused.status_code == 404, (odd, refused.text)
    with world["hub"].sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.download.started")
                          .order_by(AuditEvent.seq.desc())).first()
    assert event.details["basis"] == "visa" and event.details["grant"].startswith(issuer.url)
    # without the header the same user has nothing
    assert _download(world).status_code == 404


def test_untrusted_unlisted_expired_forged_and_foreign_visas_are_refused(world, issuer, settings):
    value = f"{settings.base_url}/datasets/{world['dataset']}"
    now = int(time.time())
    refused = {
        # an issuer nobody configured (its keys would verify: they are served at /rogue-jwks.json)
        "untrusted issuer": issuer.visa("carol", value, iss="https://rogue.example.org",
                                        jku=f"{issuer.url}/rogue-jwks.json", key=issuer.rogue_key),
        # the trusted issuer's name with a jku that is not on its allowlist
        "jku not allowed": issuer.visa("carol", value, jku=f"{issuer.url}/other-jwks.json"),
        "expired": issuer.visa("carol", value, iat=now - 7200, exp=now - 3600),
        "forged": issuer.visa("carol", value, key=issuer.rogue_key),
        "someone else's": issuer.visa("mallory", value),
        "another dataset": issuer.visa("carol", f"{settings.base_url}/datasets/SRD-0000000000"),
        "another hub": issuer.visa("carol", f"https://elsewhere.example/datasets/{world['dataset']}"),
        "no by": issuer.visa("carol", value, by=None),
        "not a grant": issuer.visa("carol", value, type_="ResearcherStatus"),
        "garbage": "not.a.jwt",
    }
    for reason, visa in refused.items():
        assert _download(world, **{"X-GA4GH-Passport": visa}).status_code == 404, reason
    assert issuer.hits["rogue"] == 0 and issuer.hits["other"] == 0  # never asked: allowlist first
    # and each for the right reason
    verifier = visas.PassportVerifier(settings)
    why = {k: asyncio.run(verifier.verify(v)).rejected for k, v in refused.items()}
    assert "untrusted issuer" in why["untrusted issuer"][0]
    assert "not allowed for issuer" in why["jku not allowed"][0]
    assert why["expired"] == ["expired"] and "bad signature" in why["forged"][0]
    assert "must say who granted it" in why["no by"][0] and "compact JWS" in why["garbage"][0]
    for verified_but_not_granting in ("someone else's", "another dataset", "another hub", "not a grant"):
        assert why[verified_but_not_granting] == []
    assert issuer.hits["rogue"] == 0 and issuer.hits["other"] == 0
    assert _download(world, **{"X-GA4GH-Passport": issuer.visa("carol", value)}).status_code == 200


def test_visa_conditions_are_honoured(world, issuer, settings):
    value = f"{settings.base_url}/datasets/{world['dataset']}"
    bona_fide = "https://doi.org/10.1038/s41431-018-0219-y"
    conditions = [
        [{"type": "ResearcherStatus", "value": f"const:{bona_fide}", "by": "const:so"},
         {"type": "AffiliationAndRole", "value": "pattern:faculty@*.se"}],  # AND
        [{"type": "AcceptedTermsAndPolicies", "value": "const:https://strongroom.example/terms/v2",
          "by": "pattern:s?lf"}],  # OR
    ]
    grant = issuer.visa("carol", value, conditions=conditions)
    status = issuer.visa("carol", bona_fide, type_="ResearcherStatus", by="so")
    faculty = issuer.visa("carol", "faculty@ki.se", type_="AffiliationAndRole", by="system")
    student = issuer.visa("carol", "student@ki.se", type_="AffiliationAndRole", by="system")
    terms_url = "https://strongroom.example/terms/v2"
    terms = issuer.visa("carol", terms_url, type_="AcceptedTermsAndPolicies", by="self")
    status_by_peer = issuer.visa("carol", bona_fide, type_="ResearcherStatus", by="peer")

    def download(*tokens: str) -> int:
        return _download(world, **{"X-GA4GH-Passport": ",".join(tokens)}).status_code

    assert download(grant) == 404  # conditions unmet
    assert download(grant, status) == 404  # half of the AND
    assert download(grant, status, student) == 404  # pattern does not match
    assert download(grant, status_by_peer, faculty) == 404  # by must be so
    assert download(grant, status, faculty) == 200
    assert download(grant, terms) == 200  # the other OR branch
    # a visa satisfying a condition must itself be valid: the same claims from an untrusted signer fail
    forged_terms = issuer.visa("carol", terms_url, type_="AcceptedTermsAndPolicies", by="self",
                               key=issuer.rogue_key)
    assert download(grant, forged_terms) == 404
    # a clause with an unknown prefix never matches
    odd = issuer.visa("carol", value,
                      conditions=[[{"type": "AcceptedTermsAndPolicies", "value": "regex:.*"}]])
    assert download(odd, terms) == 404


# -- revocation (issue 18, point 8) ---------------------------------------------------------------
def test_revocation_refuses_the_same_visa_on_the_next_request(world, settings, people, app):
    """approve → visa → revoke → the same visa refused on the very next request. The hub's own visas are
    checked against the entitlement their ``jti`` names on every use; single visas can be revoked by
    ``jti``. To use the visa and nothing else, dave presents carol's visa to the hub served in the
    broker-bound mode (``visa_subject_must_match = false``: whoever presents a passport is its subject),
    where dave has no grant of his own."""
    from strongroom.app import create_app
    from test_access import GOOD

    hub, a, carol, ds = world["hub"], world["alice"], world["carol"], world["dataset"]
    dave = people("dave")
    broker_bound = create_app(settings.model_copy(update={"access": settings.access.model_copy(
        update={"visa_subject_must_match": False})}), run_jobs=False)
    with serving(broker_bound, free_port()) as other_url:
        d = httpx.Client(base_url=other_url, headers=bearer(token_for(hub, dave)), timeout=60)
        dave_key = c4gh.generate_keypair()
        assert d.post("/api/v1/me/keys", json={"name": "d", "public_key": c4gh.public_key_file(
            dave_key.public).decode()}).status_code == 201

        def dave_downloads(visa: str | None) -> int:
            headers = {"X-GA4GH-Passport": visa} if visa else {}
            return d.get(f"/api/v1/files/{world['file']}/content", headers=headers).status_code

        # approve: carol applies (to a dataset in the public catalogue), alice (the PI, its handler) approves
        with transaction(hub.sessions) as s:
            s.add(CatalogEntry(dataset_id=ds, slug="chest-ct", title="Chest CT", created_by=world["people"][0].user.id,
                               published=True, published_at=NOW))
        application = carol.post(f"/api/v1/datasets/{ds}/applications").json()["id"]
        assert carol.put(f"/api/v1/applications/{application}/answers", json={"answers": GOOD}).status_code == 200
        carol.post(f"/api/v1/applications/{application}/accept-terms")
        assert carol.post(f"/api/v1/applications/{application}/submit").json()["state"] == "submitted"
        approved = a.post(f"/api/v1/applications/{application}/approve", json={"ends": str(END)})
        assert approved.json()["state"] == "approved", approved.text
        # → visa
        [visa] = carol.get("/api/v1/me/passport").json()["ga4gh_passport_v1"]
        assert dave_downloads(None) == 404 and dave_downloads(visa) == 200
        with hub.sessions() as s:
            event = s.scalars(select(AuditEvent).where(AuditEvent.action == "archive.download.started")
                              .order_by(AuditEvent.seq.desc())).first()
        assert event.details["basis"] == "visa" and event.actor_id == dave.user.id
        # → revoke: the very next request with the same visa is refused, here and for carol herself
        assert a.post(f"/api/v1/applications/{application}/revoke",
                      json={"reason": "breach of terms"}).json()["state"] == "revoked"
        assert dave_downloads(visa) == 404
        assert _download(world, **{"X-GA4GH-Passport": visa}).status_code == 404

        # a single visa, revoked by its jti while the entitlement stays
        _entitle(hub, people_by_name(world, "carol"), ds)
        [second] = carol.get("/api/v1/me/passport").json()["ga4gh_passport_v1"]
        assert dave_downloads(second) == 200
        assert d.post("/api/v1/visas/revocations", json={"visa": second}).status_code == 404  # not his
        assert carol.post("/api/v1/visas/revocations", json={"visa": "x" * 40}).status_code == 422
        foreign = issuer_visa_for(world, settings)
        assert carol.post("/api/v1/visas/revocations", json={"visa": foreign}).status_code == 422
        with transaction(hub.sessions) as s:  # an entry whose visa has expired anyway: dropped on the next revocation
            s.add(VisaRevocation(jti="old", expires_at=NOW - dt.timedelta(days=1)))
        r = carol.post("/api/v1/visas/revocations", json={"visa": second, "reason": "shared by mistake"})
        assert r.status_code == 201, r.text
        assert dave_downloads(second) == 404  # the next request
        assert _download(world).status_code == 200  # carol's entitlement itself stands
        with hub.sessions() as s:
            assert [x.jti for x in s.scalars(select(VisaRevocation))] == [r.json()["jti"]]
            assert s.scalars(select(AuditEvent).where(AuditEvent.action == "access.visa.revoked")).one()
        d.close()


def people_by_name(world, name: str):
    return next(p for p in world["people"] if p.username == name)


def issuer_visa_for(world, settings) -> str:
    """A visa signed by a key that is not the hub's (revocation accepts only the hub's own)."""
    key = ECKey.generate_key("P-256", private=True)
    return jwt.encode({"alg": "ES256", "typ": "vnd.ga4gh.visa+jwt"},
                      {"iss": settings.base_url, "sub": "carol", "iat": int(time.time()), "exp": int(time.time()) + 60,
                       "jti": "x", "ga4gh_visa_v1": {}}, key, algorithms=["ES256"])


def _kid(token: str) -> str:
    return jws.extract_compact(token.encode()).headers()["kid"]


def test_the_signing_key_rotates_without_a_restart_and_what_it_signed_still_verifies(world, settings):
    """`strongroom access rotate-signing-key`, in a process of its own: the live hub signs with the new key from
    its next passport on, without a restart. A scheduled rotation keeps the old key's public half in the
    JWKS, so the visa and the deletion certificate it signed still verify; ``--compromised`` drops the key
    in use, and nothing it signed verifies any more. Private halves are never published or kept."""
    from strongroom.audit.models import AuditEvent
    from strongroom.retention import deletion
    from test_cli_and_ops import run_cli

    hub, carol = world["hub"], world["people"][1]
    _entitle(hub, carol, world["dataset"])
    hub_as_issuer = settings.model_copy(update={"access": AccessSettings(
        trusted_visa_issuers=[{"issuer": settings.base_url, "jku": visas.jwks_url(settings)}])})

    def accepted(token: str) -> bool:
        passport = asyncio.run(visas.PassportVerifier(hub_as_issuer).verify(token))
        return not passport.rejected and len(passport.visas) == 1

    def visa() -> str:
        [token] = world["carol"].get("/api/v1/me/passport").json()["ga4gh_passport_v1"]
        return token

    def served() -> KeySet:
        jwks = httpx.get(f"{world['url']}/.well-known/jwks.json").json()
        assert all("d" not in k for k in jwks["keys"])  # public halves only
        return KeySet.import_key_set(jwks)

    def certificate() -> str:
        return deletion.sign(settings, {"type": deletion.CERT_TYPE, "dataset": world["dataset"], "version": 1})

    first_visa, first_certificate = visa(), certificate()
    first = _kid(first_visa)
    rotated = run_cli(settings, "access", "rotate-signing-key")
    assert rotated.returncode == 0, rotated.stderr
    second_visa, second_certificate = visa(), certificate()
    second = _kid(second_visa)
    assert second != first and [k.kid for k in served().keys] == [second, first]
    for token in (first_visa, second_visa):
        assert accepted(token)
        jwt.decode(token, served(), algorithms=["ES256"])
    for text in (first_certificate, second_certificate):
        deletion.check_signature(text, served())
    retired = visas.retired_dir(settings) / f"{first}.jwk"
    assert "d" not in json.loads(retired.read_text()) and oct(retired.stat().st_mode & 0o777) == "0o600"

    compromised = run_cli(settings, "access", "rotate-signing-key", "--compromised")
    assert compromised.returncode == 0, compromised.stderr
    third = _kid(visa())
    assert [k.kid for k in served().keys] == [third, first]  # the second key is gone, the first stays retired
    assert not accepted(second_visa) and accepted(first_visa)
    with pytest.raises(ValueError, match="does not verify"):
        deletion.check_signature(second_certificate, served())
    deletion.check_signature(first_certificate, served())
    with hub.sessions() as s:
        events = [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "access.signing_key.rotated").order_by(AuditEvent.seq))]
    assert events == [{"previous": first, "current": second, "previous_kept": True},
                      {"previous": second, "current": third, "previous_kept": False}]


def test_dataset_urls_resolve_to_the_public_landing_page(world, settings, app):
    """9: a visa's ``value`` (the dataset's URL, or a version's) leads anyone to the dataset's public page,
    never to the login form; without a published catalogue entry it says so (404), still without a login."""
    ds, anon = world["dataset"], httpx.Client(base_url=world["url"], timeout=30)
    for url in (f"/datasets/{ds}", f"/datasets/{ds}/versions/1"):
        r = anon.get(url, follow_redirects=True)
        assert r.status_code == 404 and "/login" not in str(r.url) and "no public page" in r.text
    with transaction(world["hub"].sessions) as s:
        s.add(CatalogEntry(dataset_id=ds, slug="chest-ct", title="Chest CT", created_by=world["people"][0].user.id,
                           published=True, published_at=NOW))
    value = visa_value(world, settings)
    r = anon.get(value, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/catalog/chest-ct"
    landing = anon.get(value, follow_redirects=True)
    assert landing.status_code == 200 and str(landing.url).endswith("/catalog/chest-ct") and "Chest CT" in landing.text
    # a logged-in member still gets the dataset page itself; a logged-in stranger the public page
    member = web_client(app, world["hub"], world["people"][0]).get(f"/datasets/{ds}", follow_redirects=False)
    assert member.status_code == 200 and "Release" in member.text or "Version 1" in member.text
    stranger = web_client(app, world["hub"], people_by_name(world, "root")).get(f"/datasets/{ds}",
                                                                                 follow_redirects=False)
    assert stranger.status_code == 303 and stranger.headers["location"] == "/catalog/chest-ct"


def visa_value(world, settings) -> str:
    """The ``value`` the hub puts in a visa for this dataset."""
    hub, carol = world["hub"], people_by_name(world, "carol")
    _entitle(hub, carol, world["dataset"])
    [token] = world["carol"].get("/api/v1/me/passport").json()["ga4gh_passport_v1"]
    claims = json.loads(jws.extract_compact(token.encode()).payload)
    value = claims["ga4gh_visa_v1"]["value"]
    assert value == f"{settings.base_url}/datasets/{world['dataset']}"
    return value


# -- the matching rules themselves -------------------------------------------------------------
@pytest.mark.parametrize(("spec", "actual", "expected"), [
    ("const:abc", "abc", True), ("const:abc", "abcd", False), ("const:a*", "abc", False),
    ("pattern:a*", "abc", True), ("pattern:a*", "", False), ("pattern:*", "", True),
    ("pattern:a?c", "abc", True),
    ("pattern:a?c", "ac", False), ("pattern:A*", "abc", False), ("pattern:a.c", "abc", False),
    ("split_pattern:123,https:%2F%2Fexample?.org", "001,x;123,https:%2F%2Fexample2.org;456,y", True),
    ("split_pattern:9*", "001,x;123,y", False), ("regex:.*", "abc", False), ("abc", "abc", False),
])
def test_condition_field_matching(spec: str, actual: str, expected: bool) -> None:
    assert visas._matches(spec, actual) is expected


def test_visa_with_conditions_never_satisfies_another() -> None:
    v = dict(iss="i", sub="s", exp=0, jti=None, source="src", by="so", asserted=0)
    cond = ((({"type": "ResearcherStatus", "value": "const:x"},),))
    grant = visas.Visa(type="ControlledAccessGrants", value="d", conditions=cond, **v)
    nested = visas.Visa(type="ResearcherStatus", value="x", conditions=cond, **v)
    plain = visas.Visa(type="ResearcherStatus", value="x", **v)
    assert not visas.conditions_met(grant, [grant, nested])
    assert visas.conditions_met(grant, [grant, plain])


# -- the dataset's download policy (issue 9, point 7) ------------------------------------------
def test_access_policy_decides_downloads_for_applicants_and_visa_holders(world, issuer, settings,
                                                                         tmp_path, app):
    """The dataset's access policy, not the project's setting, says whether approved applicants may
    download to their own machines; in-platform only is the default. Fails on the old code: the
    entitled and visa holders downloaded whatever the policy said."""
    hub, (_, carol, _) = world["hub"], world["people"]
    a, ds = world["alice"], world["dataset"]
    _entitle(hub, carol, ds)
    visa = issuer.visa("carol", f"{settings.base_url}/datasets/{ds}")
    # the PI puts the dataset back to the default: PUT without the field is in-platform only
    assert a.put(f"/api/v1/datasets/{ds}/access-policy", json={}).status_code == 204
    for headers in ({}, {"X-GA4GH-Passport": visa}):
        r = _download(world, **headers)
        assert r.status_code == 403, r.text
        assert "in-platform use only" in r.json()["detail"]
        # metadata and listing (in-platform work) stay open
        assert world["carol"].get(f"/api/v1/files/{world['file']}", headers=headers).status_code == 200
    # the dataset page offers no download link, and says why
    page = web_client(app, hub, carol).get(f"/datasets/{ds}")
    assert page.status_code == 200 and "In-platform use only" in page.text
    assert f"/files/{world['file']}/download" not in page.text
    # the CLI says so too, and exits non-zero
    env = {**os.environ, "STRONGROOM_CLI_CONFIG": str(tmp_path / "none.json"), "STRONGROOM_URL": world["url"],
           "STRONGROOM_TOKEN": world["carol"].headers["Authorization"].removeprefix("Bearer "), "COLUMNS": "300"}
    cli = subprocess.run([sys.executable, "-m", "strongroom.cli", "download", world["file"], "-o",
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "403" in cli.stderr and "in-platform use only" in cli.stderr, cli.stderr
    # the project's own download setting does not open it for applicants …
    assert a.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}).status_code == 200
    assert _download(world).status_code == 403
    # … and the dataset's policy does not open it for the project's members
    assert a.put("/api/v1/projects/lung/settings/download_allowed", json={"value": False}).status_code == 200
    assert a.put(f"/api/v1/datasets/{ds}/access-policy", json={"applicant_download": True}).status_code == 204
    assert _download(world).status_code == 200
    assert _download(world, **{"X-GA4GH-Passport": visa}).status_code == 200
    assert f"/files/{world['file']}/download" in web_client(app, hub, carol).get(f"/datasets/{ds}").text
    a_key = c4gh.generate_keypair()
    assert a.post("/api/v1/me/keys", json={"name": "pi", "public_key": c4gh.public_key_file(
        a_key.public).decode()}).status_code == 201
    r = a.get(f"/api/v1/files/{world['file']}/content")
    assert r.status_code == 403 and "locked for this project" in r.json()["detail"]
    # only the owning project's PI sets the policy; for anyone else the dataset does not exist
    assert world["carol"].put(f"/api/v1/datasets/{ds}/access-policy",
                              json={"applicant_download": True}).status_code == 404
    with hub.sessions() as s:
        changes = [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "access.policy.changed").order_by(AuditEvent.seq))]
    assert [c["applicant_download"] for c in changes] == [True, False, True]


# -- a ``sub`` names a person only within one login issuer ---------------------------------------------------
def _federated_carol(hub, issuer_url: str):
    """An account from another login issuer whose subject string is also ``carol``."""
    from conftest import Person
    from strongroom.identity import service as identity

    with transaction(hub.sessions) as s:
        user, _ = identity.upsert_federated_user(s, issuer=issuer_url, subject="carol", display_name="Other Carol",
                                                 email="other-carol@idp.example", affiliation=None)
    return Person(user=user, username="carol", seed=None)


def test_a_visa_binds_to_its_login_issuers_account_not_to_a_namesake(world, issuer, settings, app):
    """Users are keyed by (issuer, subject): ``carol`` at an identity provider is not local ``carol``. A visa
    this hub issued opens files only for its entitlement's own account, and a trusted issuer configured with
    ``subject_issuers`` only for accounts of those login issuers."""
    hub, (_, carol, _) = world["hub"], world["people"]
    ent = _entitle(hub, carol, world["dataset"])
    [own_visa] = world["carol"].get("/api/v1/me/passport").json()["ga4gh_passport_v1"]
    namesake = _federated_carol(hub, "https://idp.example")
    other = httpx.Client(base_url=world["url"], headers=bearer(token_for(hub, namesake)), timeout=60)
    url = f"/api/v1/files/{world['file']}"
    assert other.get(url, headers={"X-GA4GH-Passport": own_visa}).status_code == 404  # not theirs
    assert world["carol"].get(url, headers={"X-GA4GH-Passport": own_visa}).status_code == 200
    # nor may the namesake revoke it
    assert other.post("/api/v1/visas/revocations", json={"visa": own_visa, "reason": "x"}).status_code == 404

    # a trusted issuer whose visas speak of the identity provider's subjects: local carol is not that carol
    _update(hub, ent, revoked_at=dt.datetime.now(dt.UTC))  # (her entitlement would open the file anyway)
    value = f"{settings.base_url}/datasets/{world['dataset']}"
    foreign = issuer.visa("carol", value)
    trusted = app.state.hub.settings.access.trusted_visa_issuers  # the running hub's list, read per request
    trusted[:] = [TrustedVisaIssuer(issuer=issuer.url, jku=issuer.jku, subject_issuers=["https://idp.example"])]
    assert world["carol"].get(url, headers={"X-GA4GH-Passport": foreign}).status_code == 404
    assert other.get(url, headers={"X-GA4GH-Passport": foreign}).status_code == 200


def test_patterns_mean_what_the_glob_means_and_never_backtrack() -> None:
    """The piece-by-piece matcher agrees with the glob read as a regular expression over random patterns and
    values; and a pattern that makes that regular expression backtrack (``*a*a…*b`` against ``aaa…``, which
    ``re`` takes minutes over) is answered at once."""
    rnd = random.Random(20261205)
    for _ in range(5000):
        pattern = "".join(rnd.choice("ab?*") for _ in range(rnd.randint(0, 8)))
        text = "".join(rnd.choice("ab") for _ in range(rnd.randint(0, 10)))
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        assert visas._pattern(pattern, text) == (re.fullmatch(regex, text, re.S) is not None), (pattern, text)
    assert not visas._pattern("*a" * 40 + "*b", "a" * 4000)
    assert visas._pattern("*a" * 40 + "*b", "a" * 4000 + "b")
