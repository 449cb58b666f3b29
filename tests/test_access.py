"""Applications → decisions → entitlements, over the API: the REMS-class workflow."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import bearer, token_for
from strongroom.access.events import replay
from strongroom.access.models import ApplicationEvent, Entitlement
from strongroom.archive.models import Dataset, DatasetVersion
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from strongroom.projects import service as projects
from strongroom.projects.models import Project

END = dt.date.today() + dt.timedelta(days=365)
GOOD = {"study_name": "Nodule AI", "ethics": {"number": "Dnr 2026-01234-01"},
        "description": "Chest CT, 1 mm slices", "selection": "Adults 50-64, 2015-2018",
        "pseudonymization": "Keyed pseudonyms, dates shifted per patient", "purposes": ["AI model training"],
        "sharing_plan": "Only the named team", "contact": "lab@uni.example", "start": "2027-01-10",
        "team": [{"name": "Rita", "affiliation": "Uni", "role": "analyst"}]}


def _dataset(hub, slug: str, pi: str, title: str, *, published: bool = True) -> str:
    """A released dataset, published in the catalogue unless ``published`` is False."""
    with transaction(hub.sessions) as s:
        project = projects.create_project(s, Actor.system("t"), slug=slug, name=title, pi=pi, ethics_ref="E",
                                          end_date=END)
        ds = Dataset(id=f"SRD-{slug.upper()[:10]}", project_id=project.id, title=title,
                     created_by=project.pi_id)
        s.add(ds)
        s.flush()
        s.add(DatasetVersion(dataset_id=ds.id, number=1, state="released"))
        s.add(CatalogEntry(dataset_id=ds.id, slug=f"{slug}-entry", title=title, created_by=project.pi_id,
                           published=published, published_at=dt.datetime.now(dt.UTC) if published else None))
        return ds.id


@pytest.fixture
def world(app, hub, people):
    owner, other_owner, rita, sam = people("owner"), people("otherowner"), people("rita"), people("sam")
    x = _dataset(hub, "scapis", "owner", "SCAPIS CT")
    y = _dataset(hub, "elsewhere", "otherowner", "Elsewhere MR")
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    tokens = {p.username: token_for(hub, p) for p in (owner, other_owner, rita, sam)}
    return {"c": c, "t": tokens, "x": x, "y": y, "hub": hub, "rita": rita}


def _as(world, who: str) -> dict[str, str]:
    return bearer(world["t"][who])


def _submitted(world, who: str = "rita", dataset: str | None = None) -> str:
    c, ds = world["c"], dataset or world["x"]
    app = c.post(f"/api/v1/datasets/{ds}/applications", headers=_as(world, who)).json()
    assert c.put(f"/api/v1/applications/{app['id']}/answers", json={"answers": GOOD},
                 headers=_as(world, who)).status_code == 200
    c.post(f"/api/v1/applications/{app['id']}/accept-terms", headers=_as(world, who))
    r = c.post(f"/api/v1/applications/{app['id']}/submit", headers=_as(world, who))
    assert r.status_code == 200 and r.json()["state"] == "submitted", r.text
    return app["id"]


def test_handler_approves_and_an_entitlement_is_granted(world):
    c, hub = world["c"], world["hub"]
    app_id = _submitted(world)
    queue = c.get("/api/v1/applications/queue", headers=_as(world, "owner")).json()
    assert [a["id"] for a in queue] == [app_id]
    c.post(f"/api/v1/applications/{app_id}/assign", headers=_as(world, "owner"))
    c.post(f"/api/v1/applications/{app_id}/remark", json={"text": "check ethics", "public": False},
           headers=_as(world, "owner"))
    ends = (dt.date.today() + dt.timedelta(days=90)).isoformat()
    r = c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": ends}, headers=_as(world, "owner"))
    assert r.status_code == 200 and r.json()["state"] == "approved"
    ents = c.get("/api/v1/me/entitlements", headers=_as(world, "rita")).json()
    assert len(ents) == 1 and ents[0]["dataset_id"] == world["x"] and ents[0]["ends_at"].startswith(ends)
    # the applicant sees the decision but not internal remarks or who handles it
    mine = c.get(f"/api/v1/applications/{app_id}", headers=_as(world, "rita")).json()
    assert mine["remarks"] == [] and mine["assignee"] is None and mine["decision"]["approved"] is True
    # state is the fold of the stored events
    with hub.sessions() as s:
        events = list(s.scalars(select(ApplicationEvent).where(ApplicationEvent.application_id == app_id)
                                .order_by(ApplicationEvent.seq)))
        assert [e.type for e in events] == ["created", "saved", "terms_accepted", "submitted", "assigned",
                                            "remarked", "approved"]
        assert replay(events).state == "approved"
    # the owner's report counts it
    report = c.get(f"/api/v1/datasets/{world['x']}/access-report", headers=_as(world, "owner")).json()
    assert report["applications"]["by_state"] == {"approved": 1} and report["active_entitlements"] == 1


def test_revocation_and_close_end_entitlements(world):
    c, hub = world["c"], world["hub"]
    app_id = _submitted(world)
    c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)}, headers=_as(world, "owner"))
    assert c.post(f"/api/v1/applications/{app_id}/revoke", json={"reason": ""},
                  headers=_as(world, "owner")).status_code == 422
    r = c.post(f"/api/v1/applications/{app_id}/revoke", json={"reason": "breach of terms"},
               headers=_as(world, "owner"))
    assert r.json()["state"] == "revoked"
    with hub.sessions() as s:
        ent = s.scalar(select(Entitlement).where(Entitlement.application_id == app_id))
        assert ent.revoked_at is not None and not ent.active(dt.datetime.now(dt.UTC))


def test_mandatory_reason_required_fields_and_roles(world):
    c = world["c"]
    app = c.post(f"/api/v1/datasets/{world['x']}/applications", headers=_as(world, "rita")).json()
    # submit with missing fields and no accepted terms: a clear 422 naming the fields
    c.put(f"/api/v1/applications/{app['id']}/answers", json={"answers": {"study_name": "x"}},
          headers=_as(world, "rita"))
    r = c.post(f"/api/v1/applications/{app['id']}/submit", headers=_as(world, "rita"))
    assert r.status_code == 422 and "ethics" in r.json()["fields"] and "contact" in r.json()["fields"]
    bad = c.put(f"/api/v1/applications/{app['id']}/answers",
                json={"answers": {"contact": "not-an-email", "start": "soon", "pseudonymization": "whatever",
                                  "nope": 1}}, headers=_as(world, "rita"))
    assert bad.status_code == 422 and set(bad.json()["fields"]) == {"contact", "start", "pseudonymization", "nope"}
    c.put(f"/api/v1/applications/{app['id']}/answers", json={"answers": GOOD}, headers=_as(world, "rita"))
    r = c.post(f"/api/v1/applications/{app['id']}/submit", headers=_as(world, "rita"))
    assert r.status_code == 422 and "terms" in r.json()["detail"]
    c.post(f"/api/v1/applications/{app['id']}/accept-terms", headers=_as(world, "rita"))
    assert c.post(f"/api/v1/applications/{app['id']}/submit", headers=_as(world, "rita")).status_code == 200
    # reject without a reason; approve by a non-handler (the applicant, another dataset's owner)
    assert c.post(f"/api/v1/applications/{app['id']}/reject", json={},
                  headers=_as(world, "owner")).status_code == 422
    assert c.post(f"/api/v1/applications/{app['id']}/reject", json={"reason": "  "},
                  headers=_as(world, "owner")).status_code == 422
    assert c.post(f"/api/v1/applications/{app['id']}/approve", json={"ends": str(END)},
                  headers=_as(world, "rita")).status_code == 403
    assert c.post(f"/api/v1/applications/{app['id']}/approve", json={"ends": str(END)},
                  headers=_as(world, "otherowner")).status_code == 404
    assert c.post(f"/api/v1/applications/{app['id']}/approve", json={"ends": "2000-01-01"},
                  headers=_as(world, "owner")).status_code == 422
    r = c.post(f"/api/v1/applications/{app['id']}/reject", json={"reason": "no ethics for this cohort"},
               headers=_as(world, "owner"))
    assert r.json()["state"] == "rejected" and r.json()["decision"]["reason"] == "no ethics for this cohort"


def test_duplicates_refused_and_renewal_links_history(world):
    c = world["c"]
    first = c.post(f"/api/v1/datasets/{world['x']}/applications", headers=_as(world, "rita")).json()
    dup = c.post(f"/api/v1/datasets/{world['x']}/applications", headers=_as(world, "rita"))
    assert dup.status_code == 409 and dup.json()["application"] == first["id"]
    c.post(f"/api/v1/applications/{first['id']}/close", headers=_as(world, "rita"))
    app_id = _submitted(world)
    c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)}, headers=_as(world, "owner"))
    assert c.post(f"/api/v1/datasets/{world['x']}/applications", headers=_as(world, "rita")).status_code == 409
    renewal = c.post(f"/api/v1/datasets/{world['x']}/applications", json={"renewal_of": app_id},
                     headers=_as(world, "rita")).json()
    assert renewal["renewal_of"] == app_id and renewal["answers"]["study_name"] == "Nodule AI"


def test_handler_of_x_cannot_see_applications_for_y(world):
    c = world["c"]
    app_y = _submitted(world, "sam", world["y"])
    assert c.get(f"/api/v1/applications/{app_y}", headers=_as(world, "owner")).status_code == 404
    assert c.get("/api/v1/applications/queue", headers=_as(world, "owner")).json() == []
    assert c.get(f"/api/v1/datasets/{world['y']}/access-report", headers=_as(world, "owner")).status_code == 404
    assert c.get(f"/api/v1/applications/{app_y}", headers=_as(world, "rita")).status_code == 404


def test_quorum_of_deciders(world, people):
    c = world["c"]
    d1, d2, d3 = people("d1"), people("d2"), people("d3")
    for p in (d1, d2, d3):
        world["t"][p.username] = token_for(world["hub"], p)
    r = c.put(f"/api/v1/datasets/{world['x']}/access-policy",
              json={"workflow": "quorum", "quorum": 2, "roles": {"decider": ["d1", "d2", "d3"], "handler": ["owner"]}},
              headers=_as(world, "owner"))
    assert r.status_code == 204
    assert c.put(f"/api/v1/datasets/{world['x']}/access-policy", json={"workflow": "quorum", "quorum": 2},
                 headers=_as(world, "rita")).status_code == 404
    app_id = _submitted(world)
    assert c.post(f"/api/v1/applications/{app_id}/approve", json={"ends": str(END)},
                  headers=_as(world, "owner")).status_code == 409  # the quorum decides, not one handler
    assert c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True},
                  headers=_as(world, "d1")).json()["state"] == "submitted"
    assert c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True},
                  headers=_as(world, "rita")).status_code == 403
    assert c.post(f"/api/v1/applications/{app_id}/vote", json={"approve": True},
                  headers=_as(world, "d2")).json()["state"] == "approved"
    # a second application: two rejections make the quorum unreachable
    c.post(f"/api/v1/applications/{app_id}/close", headers=_as(world, "rita"))
    app2 = _submitted(world)
    c.post(f"/api/v1/applications/{app2}/vote", json={"approve": False}, headers=_as(world, "d1"))
    r = c.post(f"/api/v1/applications/{app2}/vote", json={"approve": False}, headers=_as(world, "d3"))
    assert r.json()["state"] == "rejected"


def test_external_owner_approves_through_the_api(world, people):
    """SCAPIS decides in its own process; its system tells the hub with a scoped token."""
    c, hub = world["c"], world["hub"]
    robot = people("scapis-system")
    c.put(f"/api/v1/datasets/{world['x']}/access-policy",
          json={"external_owner": "SCAPIS", "roles": {"handler": ["scapis-system"]}}, headers=_as(world, "owner"))
    read_only = token_for(hub, robot, scopes=["projects:read"])
    body = {"applicant": "rita@example.org", "approve": True, "ends": str(END)}
    assert c.post(f"/api/v1/external/datasets/{world['x']}/decisions", json=body,
                  headers=bearer(read_only)).status_code == 403  # needs the `access` scope
    token = token_for(hub, robot, scopes=["access"])
    assert c.post(f"/api/v1/external/datasets/{world['y']}/decisions", json=body,
                  headers=bearer(token)).status_code == 404  # not their dataset
    r = c.post(f"/api/v1/external/datasets/{world['x']}/decisions", json=body, headers=bearer(token))
    assert r.status_code == 200 and r.json()["state"] == "approved"
    ents = c.get("/api/v1/me/entitlements", headers=_as(world, "rita")).json()
    assert ents and ents[0]["dataset_id"] == world["x"] and ents[0]["revoked_at"] is None
    r = c.post(f"/api/v1/external/datasets/{world['x']}/decisions",
               json={"applicant": "rita", "approve": False, "reason": "consent withdrawn"}, headers=bearer(token))
    assert r.json()["state"] == "revoked"
    assert c.get("/api/v1/me/entitlements", headers=_as(world, "rita")).json()[0]["revoked_at"]


def test_project_model_is_untouched_by_access(world):
    with world["hub"].sessions() as s:
        assert s.scalar(select(Project).where(Project.slug == "scapis")).used_bytes == 0
