"""Outside your projects, things are 404: every route, asked by someone with no part in the project.

A class test over the whole hub. The world of ``test_web_messages`` is walked through every form once
(refusal, then success), so the project ``chest`` holds one of every kind of thing: datasets (one
published, one not), archive files, imaging batches and instances, an application, airlock and data
requests, strategy runs, evaluations and releases, GPU bookings, workspaces, a retention deletion, a
federation push. Then eve — another customer: the PI of her own project, signed in with MFA, holding a
token with every scope, no part in chest and no operator — asks for each of them with its real id:

- every GET route of the API and of the pages, enumerated from the app: 404 (a redirect may lead to it);
  only the published dataset's public pages answer, and they are listed here with the reason;
- every GET route without parameters (her own lists, the catalogue, the hub's public figures): whatever
  it answers, none of chest's identifiers appears in it;
- every API operation that changes something, and every web form, with chest's ids: refused (never 2xx,
  never a redirect to a success), and afterwards no table has a row more or less.

A route added later is enumerated too; an id it takes that this file cannot fill fails the test.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import func, select

import test_web_messages as walked
from conftest import bearer, token_for, web_client
from helpers import csrf_for
from imaging_support import make_project
from strongroom.db import Base, transaction
from strongroom.imaging import bulk
from test_web_messages import CASES, FLASH, World, form_routes

settings, world = walked.settings, walked.world  # that test's fixtures: its hub settings and its world

API = ("/api/", "/ga4gh/", "/dicomweb/")

# The published dataset's public face: its landing page (and a version's URL, which leads there), the
# pictures on it, and applying for it. Its catalogue entry as data, its figures, its files: for its project
# and its approved users only.
PUBLIC_FOR_A_PUBLISHED_DATASET = {
    "/datasets/{dataset_id}", "/datasets/{dataset_id}/versions/{number}",
    "/datasets/{dataset_id}/catalog/images/{position}.png",  # 404 once the steward deleted that picture
    "/apply/{dataset_id}",
}
ANYONE_MAY_APPLY = {("POST", "/apply/{dataset_id}"), ("POST", "/api/v1/datasets/{dataset_id}/applications")}
# Routes that take no id of a project's thing (a static asset, a sitemap page, the cluster's own names).
NOT_A_PROJECT_THING = {"/static/swagger-ui/{name}", "/sitemaps/{name}.xml"}
# GA4GH DRS: how to authorise, the same answer for every id (it does not say whether the object exists).
SAME_FOR_EVERY_ID = {("OPTIONS", "/ga4gh/drs/v1/objects/{object_id}")}
# Refused before any id is looked at: a peer hub's signature is missing (401), or a STOW-RS body is not
# multipart/related DICOM (415; test_dicomweb_stow sends outsiders real instances).
EXPECTED = {"/api/v1/federation/peer/sync/{sync_id}/files/{file_id}": 401,
            "/api/v1/federation/peer/sync/{sync_id}/files/{file_id}/fetch": 401,
            "/api/v1/federation/peer/sync/{sync_id}/publish": 401,
            "/dicomweb/projects/{slug}/studies": 415, "/dicomweb/projects/{slug}/studies/{study}": 415}
# Required query parameters, with values that would answer for a member.
QUERY = {"/api/v1/compute/projects/{slug}/proposal": {"machine": "dgx2", "gpus": "1"},
         "/api/v1/projects/{slug}/fees/statement": {"period": "2025"},
         "/api/v1/applications/{application_id}/attachments": {"filename": "ethics.pdf"},
         "/api/v1/datasets/{dataset_id}/catalog/images": {"alt": "Axial chest CT"}}


# What a member would send, so that a refusal is the access check's and not the body's validation.
FUTURE = "2099-01-01"
JSON_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/v1/projects/{slug}/members/{user_id}"): {"role": "steward"},
    ("POST", "/api/v1/applications/{application_id}/approve"): {"ends": FUTURE},
    ("POST", "/api/v1/applications/{application_id}/invite"): {"email": "eve@example.org"},
    ("POST", "/api/v1/applications/{application_id}/reject"): {"reason": "no"},
    ("POST", "/api/v1/applications/{application_id}/remark"): {"text": "hello"},
    ("POST", "/api/v1/applications/{application_id}/request"): {"users": ["eve"]},
    ("POST", "/api/v1/applications/{application_id}/revoke"): {"reason": "no"},
    ("POST", "/api/v1/applications/{application_id}/vote"): {"approve": True},
    ("POST", "/api/v1/compute/projects/{slug}/bookings"): {"machine": "dgx2", "gpus": 1},
    ("POST", "/api/v1/datasets/{dataset_id}/shares"): {"project": "second"},
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{number}/deletion"): {"reason": "unused"},
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{number}/retention/extend"): {"until": FUTURE, "reason": "study"},
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{number}/retention/hold/lift"): {"reason": "done"},
    ("POST", "/api/v1/external/datasets/{dataset_id}/decisions"): {"applicant": "eve", "approve": True},
    ("POST", "/api/v1/projects/{slug}/airlock/exports"): {"purpose": "out", "destination": "Second team", "files": []},
    ("POST", "/api/v1/projects/{slug}/airlock/imports"): {"files": ["{file_id}"], "purpose": "in"},
    ("POST", "/api/v1/projects/{slug}/airlock/requests/{request_id}/override"): {"reason": "checked"},
    ("POST", "/api/v1/projects/{slug}/airlock/requests/{request_id}/reviews"): {"decision": "approve"},
    ("POST", "/api/v1/projects/{slug}/airlock/staging"): {"path": "x.csv", "size": 3},
    ("POST", "/api/v1/projects/{slug}/datasets"): {"title": "Mine now"},
    ("POST", "/api/v1/projects/{slug}/imaging/quarantine/review"): {"instance_ids": [1], "decision": "approve",
                                                                     "note": "checked"},
    ("POST", "/api/v1/projects/{slug}/imaging/reidentify"): {"pseudonym": "P", "reason": "incidental finding"},
    ("POST", "/api/v1/projects/{slug}/members"): {"user": "eve"},
    ("POST", "/api/v1/projects/{slug}/requests/{request_id}/close"): {"reason": "done"},
    ("POST", "/api/v1/projects/{slug}/requests/{request_id}/runs"): {"file_id": "{file_id}"},
    ("POST", "/api/v1/projects/{slug}/strategy/runs"): {"file_id": "{file_id}"},
    ("POST", "/api/v1/projects/{slug}/uploads"): {"path": "x.csv", "size": 3},
    ("POST", "/api/v1/projects/{slug}/vai/evaluations"): {"model_version": "{version_id}", "title": "Mine",
                                                          "labels_csv": "case_id,label\nc1,1\n"},
    ("POST", "/api/v1/projects/{slug}/vai/releases/{release_id}/reviews"): {"decision": "approve"},
    ("POST", "/api/v1/vai/vendors/{vendor}/models"): {"name": "M", "version": "2", "mode": "results-only",
                                                      "intended_use": "x"},
    ("PUT", "/api/v1/applications/{application_id}/answers"): {"answers": {"study_name": "Mine"}},
    ("PUT", "/api/v1/datasets/{dataset_id}/retention/class"): {"dataset_class": "validation"},
    ("PUT", "/api/v1/datasets/{dataset_id}/versions/{number}/retention/hold"): {"reason": "litigation"},
    ("PUT", "/api/v1/projects/{slug}/airlock/reviewers"): {"users": ["eve"]},
    ("PUT", "/api/v1/projects/{slug}/members/{user_id}/rights"): {"rights": ["import"]},
    ("PUT", "/api/v1/projects/{slug}/settings/{key}"): {"value": True},
    ("PUT", "/api/v1/projects/{slug}/strategy"): {"text": 'name = "Mine"\n'},
}
MANIFEST = b'{"files": [{"path": "x.c4gh", "size": 8, "sha256": "' + b"0" * 64 + b'"}]}'
RAW_BODIES: dict[tuple[str, str], tuple[bytes, str]] = {
    ("POST", "/api/v1/applications/{application_id}/attachments"): (b"%PDF-1.4\n", "application/pdf"),
    ("POST", "/api/v1/datasets/{dataset_id}/catalog/images"): (b"\x89PNG\r\n\x1a\n", "image/png"),
    ("POST", "/api/v1/projects/{slug}/bundles"): (len(MANIFEST).to_bytes(4, "big") + MANIFEST + b"crypt4gh",
                                                  "application/octet-stream"),
}
FORMS: dict[str, dict[str, str]] = {
    "/datasets/{dataset_id}/retention/deletion": {"version": "1", "reason": "unused"},
    "/datasets/{dataset_id}/retention/extend": {"version": "1", "until": FUTURE, "reason": "study"},
    "/datasets/{dataset_id}/retention/hold": {"version": "1", "action": "set", "reason": "litigation"},
    "/fees/waivers/{waiver_id}/decide": {"decision": "approve"},
    "/projects/{slug}/airlock/{request_id}/review": {"decision": "approve"},
    "/projects/{slug}/members": {"user": "eve", "role": "member"},
    "/projects/{slug}/members/{user_id}/role": {"role": "steward"},
    "/projects/{slug}/strategy": {"text": 'name = "Mine"\n', "comment": "mine"},
    "/projects/{slug}/vai/releases/{release_id}/review": {"decision": "approve"},
}
FORM_FILES: dict[str, dict[str, tuple[str, bytes, str]]] = {
    "/datasets/{dataset_id}/catalog/images": {"image": ("ct.png", b"\x89PNG\r\n\x1a\n", "image/png")},
    "/projects/{slug}/data/upload": {"file": ("mine.txt", b"mine", "text/plain")},
}


def _filled(body: Any, values: dict[str, str]) -> Any:
    """``body`` with "{name}" strings replaced by the value of that parameter."""
    if isinstance(body, dict):
        return {k: _filled(v, values) for k, v in body.items()}
    if isinstance(body, list):
        return [_filled(v, values) for v in body]
    if isinstance(body, str) and re.fullmatch(r"\{[a-z_]+\}", body):
        return values[body[1:-1]]
    return body


def _walk(w: World) -> None:
    for case in CASES.values():
        case(w, False)
        case(w, True)


def _first(w: World, stmt: Any) -> Any:
    with w.hub.sessions() as s:
        return s.scalar(stmt.limit(1))


def _values(w: World) -> dict[str, str]:
    """A real value of chest's for every path parameter the hub's routes take."""
    from strongroom.access.models import Application
    from strongroom.airlock.models import AirlockRequest
    from strongroom.archive.models import ArchiveFile, Dataset
    from strongroom.compute.models import Booking
    from strongroom.federation.models import SyncRun
    from strongroom.fees.models import IssuedStatement
    from strongroom.imaging.models import ImportBatch, ImportedInstance
    from strongroom.retention.models import Deletion
    from strongroom.strategies.models import DataRequest, StrategyRun
    from strongroom.vai.models import Evaluation, ModelVersion, Release, Vendor
    from strongroom.workspaces.models import Workspace

    def first(stmt: Any) -> Any:
        found = _first(w, stmt)
        assert found is not None, f"the walk made no {stmt}"
        return found

    instance = first(select(ImportedInstance).where(ImportedInstance.state == "published"))
    file_id = first(select(ArchiveFile.id).where(ArchiveFile.state == "ready"))
    values = {
        "slug": "chest", "dataset_id": first(select(Dataset.id).where(Dataset.title == "Subset")),
        "application_id": first(select(Application.id)), "file_id": file_id, "object_id": file_id,
        "access_id": "plaintext", "airlock_request_id": first(select(AirlockRequest.id)),
        "request_id": first(select(DataRequest.id)), "batch_id": first(select(ImportBatch.id)),
        "study": instance.study_uid, "series": instance.series_uid, "sop": instance.sop_instance_uid,
        "instance_id": instance.id, "frames": 1, "frame": 1, "number": 1, "version": 1, "position": 1,
        "booking_id": first(select(Booking.id)), "sync_id": first(select(SyncRun.id)),
        "statement": first(select(IssuedStatement.number)), "period": "2025", "fmt": "csv", "extension": "bib",
        "deletion_id": first(select(Deletion.id)), "run_id": first(select(StrategyRun.id)),
        "evaluation_id": first(select(Evaluation.id)), "report_id": first(select(Release.id)),
        "release_id": first(select(Release.id)), "version_id": first(select(ModelVersion.id)),
        "vendor": first(select(Vendor.slug)), "workspace_id": first(select(Workspace.id)),
        "user_id": w.people["pia"].user.id, "project": "second", "key": "external_sharing",
        "name": "peer-s", "path": "lab", "command": "approve", "prefix": "x", "fingerprint": "x",
        # none made by the walk: a well-formed id that names nothing (still 404)
        "item_id": uuid.uuid4(), "customer_id": uuid.uuid4(), "key_id": uuid.uuid4(), "waiver_id": uuid.uuid4(),
    }
    return {k: str(v) for k, v in values.items()}


def _url(template: str, values: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "request_id" and "/airlock/" in template:
            name = "airlock_request_id"
        elif name == "number" and template.startswith("/fees/statements/"):
            name = "statement"
        assert name in values, f"{template}: no value for {{{name}}}; add one to _values"
        return values[name]

    return re.sub(r"\{([a-z_]+)\}", value, template)


def _canaries(w: World) -> set[str]:
    """Identifiers of chest's that no outsider may ever be shown (none of them is public)."""
    from strongroom.access.models import Application
    from strongroom.airlock.models import AirlockRequest
    from strongroom.archive.models import ArchiveFile, Dataset
    from strongroom.imaging.models import ImportBatch, ImportedInstance
    from strongroom.strategies.models import DataRequest, StrategyRun
    from strongroom.vai.models import Evaluation
    from strongroom.workspaces.models import Workspace

    with w.hub.sessions() as s:
        found = set(s.scalars(select(ArchiveFile.id)))
        found |= set(s.scalars(select(Dataset.id).where(Dataset.title == "Subset")))
        found |= set(s.scalars(select(Application.id)))
        found |= set(s.scalars(select(AirlockRequest.id))) | set(s.scalars(select(DataRequest.id)))
        found |= set(s.scalars(select(ImportBatch.id)))
        for row in s.execute(select(ImportedInstance.study_uid, ImportedInstance.series_uid,
                                    ImportedInstance.sop_instance_uid, ImportedInstance.patient_pseudonym)):
            found |= {v for v in row if v}
        found |= {str(v) for v in s.scalars(select(StrategyRun.id))}
        found |= {str(v) for v in s.scalars(select(Workspace.id))}
        found |= set(s.scalars(select(Evaluation.title)))
    return {c for c in found if c and len(c) >= 8}


def _row_counts(w: World) -> dict[str, int]:
    with w.hub.sessions() as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


# Tables a refused request may still write to: the audit trail (refusals are audited) and the user's own
# session; and the public landing page's view counter (viewing the published dataset's page is public).
BOOKKEEPING = {"audit_events", "audit_head", "web_sessions", "stats_day_salts", "stats_day_visitors",
               "stats_landing_views"}


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route of the API and the pages."""
    return sorted({(method, r.path_format) for r in iter_route_contexts(app.routes)
                   if isinstance(r.original_route, APIRoute) for method in r.methods if method != "HEAD"})


# A user's own history — what they did (their audit trail) and the tokens they held — names what they touched
# while they were a member; it is theirs to see, and shows nothing they were not shown then.
OWN_RECORDS = frozenset({"/account", "/account/password", "/mfa/enrol", "/api/v1/me/audit", "/api/v1/tokens"})


def _refusals(app: Any, web: Any, headers: dict[str, str], values: dict[str, str], demo: dict[str, str],
              canaries: set[str], own_records: frozenset[str] = frozenset()) -> list[str]:
    """What goes wrong when ``web`` (pages) and ``headers`` (the API's bearer token) ask for chest's things on
    every route: each line one route that answered, or showed something of chest's."""
    routes = _routes(app)

    def get(template: str, with_values: dict[str, str]) -> Any:
        url = _url(template, with_values)
        return url, web.get(url, params=QUERY.get(template), headers=headers if template.startswith(API) else {})

    def shown(r: Any) -> set[str]:  # (an id she sent may be repeated back to her: that tells her nothing)
        return {c for c in canaries if c in r.text and c not in str(r.request.url)}

    wrong: list[str] = []
    for method, template in routes:
        if method != "GET" or template in NOT_A_PROJECT_THING:
            continue
        if "{" not in template:  # her own lists and the public pages: nothing of chest's in them
            url, r = get(template, values)
            if shown(r) and template not in own_records:
                wrong.append(f"GET {url} → {r.status_code} shows {sorted(shown(r))[:3]}")
            continue
        url, r = get(template, values)
        if r.status_code != 404 or shown(r):
            wrong.append(f"GET {url} → {r.status_code} (want 404) {sorted(shown(r))[:3]}")
        if "{dataset_id}" in template:  # the published dataset: its public face answers, nothing else
            url, r = get(template, demo)
            public = template in PUBLIC_FOR_A_PUBLISHED_DATASET
            if r.status_code != 404 and not (public and r.status_code == 200) or shown(r):
                wrong.append(f"GET {url} → {r.status_code} (public: {public}) {sorted(shown(r))[:3]}")

    forms = form_routes(app)
    for method, template in routes:
        if method == "GET" or "{" not in template or template in NOT_A_PROJECT_THING \
                or (method, template) in SAME_FOR_EVERY_ID:
            continue
        for with_values in (values, demo) if "{dataset_id}" in template else (values,):
            if with_values is demo and (method, template) in ANYONE_MAY_APPLY:
                continue
            url = _url(template, with_values)
            if (method, template) in RAW_BODIES:
                content, kind = RAW_BODIES[method, template]
                r = web.request(method, url, params=QUERY.get(template), headers=headers | {"Content-Type": kind},
                                content=content)
            elif template.startswith(API):
                r = web.request(method, url, headers=headers,
                                json=_filled(JSON_BODIES.get((method, template), {}), with_values))
            elif template in forms:
                r = web.post(url, data={**FORMS.get(template, {}), "csrf_token": csrf_for(web)},
                             files=FORM_FILES.get(template), follow_redirects=True)
            else:
                continue
            flash = FLASH.search(r.text)
            if r.status_code < 400 and not (flash and flash.group(1) == "error") or r.status_code >= 500:
                wrong.append(f"{method} {url} → {r.status_code} {r.text[:200]!r}")
            elif r.status_code != EXPECTED.get(template, 404) or shown(r):  # (a 422: the check never ran)
                wrong.append(f"{method} {url} → {r.status_code} {sorted(shown(r))[:3]} {r.text[:200]!r}")
    return wrong


def test_an_outsider_finds_nothing_and_changes_nothing(app, hub, world: World, people) -> None:
    _walk(world)
    values, canaries = _values(world), _canaries(world)
    # (the canaries are what chest's own people are shown)
    member = world.c("pia").get("/projects/chest/data").text + world.c("pia").get("/projects/chest/imaging").text
    assert len({c for c in canaries if c in member}) >= 5
    demo = {**values, "dataset_id": world.ids["demo"]}
    assert world.fresh().get(f"/datasets/{demo['dataset_id']}").status_code == 200  # (its public face is there)

    eve = people("eve")  # a PI of her own project on the same hub: another customer, not an anonymous user
    make_project(hub, "eves", "eve")
    web, headers = web_client(app, hub, eve), bearer(token_for(hub, eve))
    before = _row_counts(world)
    wrong = _refusals(app, web, headers, values, demo, canaries)
    after = _row_counts(world)
    changed = {t: (before[t], after[t]) for t in before if before[t] != after[t] and t not in BOOKKEEPING}
    assert not wrong, "\n".join(wrong)
    assert not changed, f"an outsider's refused requests changed rows: {changed}"


def test_a_removed_member_keeps_nothing(app, hub, world: World) -> None:
    """memo worked in chest (imports, an airlock request of his own, workspaces) and is removed by the PI:
    his session and the token he made while a member reach nothing of chest's any more, his own requests
    included."""
    _walk(world)
    memo = world.people["memo"]
    token = token_for(hub, memo)  # made while he was a member
    values, canaries = _values(world), _canaries(world)
    demo = {**values, "dataset_id": world.ids["demo"]}
    before_removal = world.c("memo").get("/projects/chest/airlock")
    assert before_removal.status_code == 200
    r = world.c("pia").post(f"/projects/chest/members/{memo.user.id}/remove",
                            data={"csrf_token": csrf_for(world.c("pia"))}, follow_redirects=True)
    assert FLASH.search(r.text).group(1) == "ok", r.text[:2000]
    before = _row_counts(world)
    wrong = _refusals(app, world.c("memo"), bearer(token), values, demo, canaries, OWN_RECORDS)
    after = _row_counts(world)
    changed = {t: (before[t], after[t]) for t in before if before[t] != after[t] and t not in BOOKKEEPING}
    assert not wrong, "\n".join(wrong)
    assert not changed, f"a removed member's refused requests changed rows: {changed}"



# What a researcher (``member``: read-data, write-data) is refused in her own project, and the right it takes.
# What a dataset shows the public and its approved users — its released versions and its catalogue entry (the
# landing page, the DOI) — is released by the ``publish`` right (PI, steward, or a delegate). The project's
# security settings are ``manage-settings``'s, refused before the value is even looked at (the reviewers named
# here are no members: a 422 would tell her so).
PUBLISHER_ONLY = {
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{number}/release"),
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{number}/deprecate"),
    ("PUT", "/api/v1/datasets/{dataset_id}/catalog"), ("GET", "/api/v1/datasets/{dataset_id}/catalog"),
    ("POST", "/api/v1/datasets/{dataset_id}/catalog/publish"),
    ("POST", "/api/v1/datasets/{dataset_id}/catalog/unpublish"),
    ("POST", "/api/v1/datasets/{dataset_id}/catalog/images"),
    ("DELETE", "/api/v1/datasets/{dataset_id}/catalog/images/{position}"),
    ("POST", "/datasets/{dataset_id}/versions/{number}/release"), ("GET", "/datasets/{dataset_id}/catalog"),
    ("POST", "/datasets/{dataset_id}/catalog"), ("POST", "/datasets/{dataset_id}/catalog/publish"),
    ("POST", "/datasets/{dataset_id}/catalog/unpublish"), ("POST", "/datasets/{dataset_id}/catalog/images"),
    ("POST", "/datasets/{dataset_id}/catalog/images/{position}/delete"),
}
SETTINGS_ONLY = {
    ("PUT", "/api/v1/projects/{slug}/airlock/reviewers"), ("PUT", "/api/v1/projects/{slug}/settings/{key}"),
    ("POST", "/projects/{slug}/airlock/settings/reviewers"), ("POST", "/projects/{slug}/airlock/settings/destinations"),
    ("POST", "/projects/{slug}/airlock/settings/sources"),
    ("POST", "/projects/{slug}/imaging/destination"), ("POST", "/projects/{slug}/imaging/profile"),
    ("POST", "/projects/{slug}/settings/{key}"),
}
RESEARCHER_FORMS = {
    "/projects/{slug}/airlock/settings/reviewers": {"reviewers": "nobody", "approvals": "1", "expiry_days": "14"},
    "/projects/{slug}/airlock/settings/destinations": {"kind": "project", "name": "Out", "target": "nowhere"},
    "/projects/{slug}/airlock/settings/sources": {"sources": "elsewhere"},
    "/projects/{slug}/imaging/destination": {"ae_title": "CHEST", "port": "11112"},
    "/projects/{slug}/imaging/profile": {"reset": "1"}, "/projects/{slug}/settings/{key}": {"value": "on"},
}


def test_a_researcher_assembles_datasets_but_does_not_publish_or_open_settings(app, hub, world: World,
                                                                              people) -> None:
    """mel, a plain member of chest (read-data, write-data), may upload and assemble a draft; releasing a
    version, deprecating one, everything about the catalogue entry, and every security setting are refused
    (403 naming the right: she is a member) on the API and the pages, and nothing changes. Each route is
    found in the app, so a renamed one fails here."""
    from strongroom.projects.models import Membership

    _walk(world)
    mel = people("mel")
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=bulk.project_by_slug(hub, "chest"), user_id=mel.user.id, role="member",
                         delegated_rights=[]))
    web, headers = web_client(app, hub, mel), bearer(token_for(hub, mel))
    routes = set(_routes(app))
    assert routes >= PUBLISHER_ONLY | SETTINGS_ONLY
    values = _values(world)
    before = _row_counts(world)
    wrong = []
    cases = [(m, t, "publish", d) for d in (values["dataset_id"], world.ids["demo"]) for m, t in sorted(PUBLISHER_ONLY)]
    cases += [(m, t, "manage-settings", values["dataset_id"]) for m, t in sorted(SETTINGS_ONLY)]
    for method, template, right, dataset in cases:
        url = _url(template, {**values, "dataset_id": dataset})
        if (method, template) in RAW_BODIES:
            content, kind = RAW_BODIES[method, template]
            r = web.request(method, url, params=QUERY.get(template), headers=headers | {"Content-Type": kind},
                            content=content)
        elif template.startswith(API):
            r = web.request(method, url, headers=headers, json=JSON_BODIES.get((method, template), {}))
        elif method == "GET":
            r = web.get(url)
        else:
            r = web.post(url, data={**RESEARCHER_FORMS.get(template, FORMS.get(template, {})),
                                    "csrf_token": csrf_for(web)}, files=FORM_FILES.get(template), follow_redirects=True)
        if r.status_code != 403 or right not in r.text:
            wrong.append(f"{method} {url} → {r.status_code} (want 403 naming {right}) {r.text[:200]!r}")
    changed = {t: (before[t], n) for t, n in _row_counts(world).items() if before[t] != n and t not in BOOKKEEPING}
    assert not wrong, "\n".join(wrong)
    assert not changed, changed
    # what she may do: start a draft from the released version, upload, create a dataset
    r = web.post(f"/datasets/{values['dataset_id']}/draft", data={"csrf_token": csrf_for(web)}, follow_redirects=True)
    assert FLASH.search(r.text).group(1) == "ok", r.text[:2000]
