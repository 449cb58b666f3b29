"""Only a dataset its catalogue publishes now leaves for a peer hub, and only with its public texts: two real hubs
on loopback (tests/test_federation_sync.py's pair). A withdrawn dataset is refused by every way to start a push
(API, both pages, CLI, the job) and by a push started before the withdrawal when it runs, resumes or publishes;
a pushed mirror carries the catalogue entry's title and description, scrubbed like the landing page, never the
archive's internal ones; the receiving hub refuses a manifest that does not say it is published."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from strongroom.archive.models import Dataset
from strongroom.audit.service import Actor
from strongroom.catalog.models import CatalogEntry
from strongroom.catalog.privacy import WITHHELD
from strongroom.db import transaction
from strongroom.errors import Invalid
from strongroom.federation import manifest, service, sync
from strongroom.federation.models import Incoming, Mirror, SyncRun
from strongroom.jobs.runner import Runner
from support.seaweed import seaweedfs  # noqa: F401 - session fixture
from test_federation_sync import _cli, _events, _person, database_url, hubs, settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
INTERNAL_TITLE, INTERNAL_TEXT = "Ward 5 patients, Dr Berg (internal)", "Export of PACS list 2024-03, MRNs in sidecar"
NOT_PUBLISHED = "not published in the catalogue"


def _internal_texts(h) -> None:
    with transaction(h.a.sessions) as s:
        s.execute(update(Dataset).where(Dataset.id == h.dataset).values(title=INTERNAL_TITLE,
                                                                         description=INTERNAL_TEXT))


def _withdraw(h) -> None:
    r = h.alice.post(f"/api/v1/datasets/{h.dataset}/catalog/unpublish", json={"reason": "consent withdrawn"})
    assert r.status_code == 200, r.text


def _republish(h) -> None:
    with transaction(h.a.sessions) as s:  # as catalog.entries.publish does (its completeness rules aside)
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == h.dataset))
        entry.published, entry.withdrawn_at, entry.withdrawn_reason = True, None, ""


def _nothing_at_b(h) -> None:
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Mirror)) == 0
        assert not s.scalar(select(func.count()).select_from(CatalogEntry).where(CatalogEntry.published))
    assert INTERNAL_TITLE not in str([e.details for e in _events(h.b, "")])


def test_a_withdrawn_dataset_is_refused_by_every_way_to_start_a_push(hubs, app, people):  # noqa: F811 - the fixture
    h = hubs
    _internal_texts(h)
    _withdraw(h)
    ops = people("ops", admin=True)
    # the API (an operator with a fresh second factor, and the dataset's PI)
    for headers in (bearer(token_for(h.a, ops)), {}):  # {}: the client's own token, alice's
        r = h.alice.post("/api/v1/federation/syncs", json={"dataset": h.dataset, "peer": "hub-b"}, headers=headers)
        assert r.status_code == 422 and NOT_PUBLISHED in r.text, r.text
    # both pages: the operators' form and the dataset's page (which says why instead of offering the button)
    page = web_client(app, h.a, ops)
    r = page.post("/federation/syncs", data={"dataset": h.dataset, "peer": "hub-b", "csrf_token": csrf_for(page)})
    assert r.status_code == 422 and NOT_PUBLISHED in r.text, r.text
    r = page.post(f"/datasets/{h.dataset}/federation/push", data={"peer": "hub-b", "version": "",
                                                                   "csrf_token": csrf_for(page)})
    assert r.status_code == 422 and NOT_PUBLISHED in r.text, r.text
    shown = page.get(f"/datasets/{h.dataset}/federation")
    assert shown.status_code == 200 and "is not published in the catalogue" in shown.text
    assert 'action="/datasets/' not in shown.text  # no push button
    # the CLI (the operator's system actor) and the service itself
    cli = _cli(h.a.settings, "sync", h.dataset, "--peer", "hub-b")
    out, err = cli.communicate(timeout=120)
    assert cli.returncode != 0 and NOT_PUBLISHED in " ".join((out + err).split()), out + err
    with transaction(h.a.sessions) as s, pytest.raises(Invalid, match=NOT_PUBLISHED):
        sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b")
    with h.a.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SyncRun)) == 0
    _nothing_at_b(h)
    # a draft (never published) entry is no better
    with transaction(h.a.sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == h.dataset))
        entry.withdrawn_at = None
    with transaction(h.a.sessions) as s, pytest.raises(Invalid, match=NOT_PUBLISHED):
        sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b")


def test_a_push_started_before_the_withdrawal_is_refused_when_it_runs_resumes_or_publishes(hubs):  # noqa: F811 - the fixture
    h = hubs
    # queued (the job), then withdrawn before a worker runs it: refused for good, nothing sent
    from strongroom.jobs import service as jobs
    from strongroom.jobs.models import Job

    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b")
        job_id = jobs.enqueue(s, "federation.sync", {"sync_id": str(run.id)}, max_attempts=3).id
        queued = run.id
    _withdraw(h)
    Runner(h.a, lease_seconds=10, name="test").run_until_idle()
    with h.a.sessions() as s:
        job = s.get(Job, job_id)
        assert job.status == "done" and job.result["state"] == "refused", (job.status, job.result, job.error)
        run = s.get(SyncRun, queued)
        assert run.state == "refused" and "no longer published" in run.error and run.active_key is None
    assert sync.run_sync(h.a, queued)["state"] == "refused"  # resumed by hand: stays refused, nothing sent
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incoming)) == 0  # not even the manifest went
    assert [e.action for e in _events(h.a, "federation.sync.")][-1] == "federation.sync.refused"

    # republished and pushed again; withdrawn while the bodies travel: B holds them but never publishes
    _republish(h)
    with transaction(h.a.sessions) as s:
        second = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b").id

    def withdrawn_meanwhile(files_done: int, *_: int) -> None:  # after the first body reached B
        if files_done == 1:
            _withdraw(h)

    with pytest.raises(sync.SyncRefused, match="no longer published"):
        sync.run_sync(h.a, second, withdrawn_meanwhile)
    with h.b.sessions() as s:
        assert s.scalar(select(Incoming.state)) == "receiving"  # B holds bodies, publishes nothing
    _nothing_at_b(h)
    with h.a.sessions() as s:
        assert s.get(SyncRun, second).state == "refused"


def test_a_mirror_carries_the_catalogue_texts_scrubbed_never_the_archive_ones(hubs):  # noqa: F811 - the fixture
    h = hubs
    _internal_texts(h)
    _person(h.a, "bert")  # a person of hub A, named in the entry's text: withheld as on A's landing page
    with transaction(h.a.sessions) as s:
        entry = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == h.dataset))
        entry.title, entry.data_owner = "Chest CT screening cohort", "Example University Hospital"
        entry.description = "Low-dose chest CT. Questions: bert@example.org or data-access@hospital.example.net"
    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("cli:operator"), h.dataset, "hub-b")
        doc, _ = sync.build_manifest(h.a, s, run, service.peer_by_name(s, "hub-b"))
    assert doc["dataset"]["title"] == "Chest CT screening cohort" and doc["dataset"]["published"] is True
    assert doc["dataset"]["description"] == (f"Low-dose chest CT. Questions: {WITHHELD} or "
                                             "data-access@hospital.example.net")
    assert INTERNAL_TITLE not in manifest.canonical(doc).decode() and INTERNAL_TEXT not in str(doc)
    result = sync.run_sync(h.a, run.id)
    assert result["state"] == "done"
    with h.b.sessions() as s:
        mirror = s.scalar(select(Mirror))
        ds = s.get(Dataset, mirror.dataset_id)
        entry_b = s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == mirror.dataset_id))
        held = str(s.scalar(select(Incoming.manifest)))
    assert (ds.title, entry_b.title, entry_b.data_owner) == ("Chest CT screening cohort",) * 2 + (
        "Example University Hospital",)
    assert entry_b.description == doc["dataset"]["description"] and entry_b.published
    assert INTERNAL_TITLE not in held and INTERNAL_TEXT not in held and "bert@example.org" not in held
    import httpx

    page = httpx.get(result["url"])
    assert page.status_code == 200 and "Chest CT screening cohort" in page.text
    assert INTERNAL_TITLE not in page.text and "bert@example.org" not in page.text


def test_the_receiving_hub_refuses_a_manifest_that_is_not_of_a_published_entry(hubs):  # noqa: F811 - the fixture
    """An origin from before this rule (or one that lies by omission) sends no ``published: true``: B refuses the
    manifest, audits why, and publishes nothing."""
    h = hubs
    with transaction(h.a.sessions) as s:
        run = sync.start_sync(s, h.a.settings, Actor.system("t"), h.dataset, "hub-b")
        doc, _ = sync.build_manifest(h.a, s, run, service.peer_by_name(s, "hub-b"))
    del doc["dataset"]["published"]
    signature = sync.signing.sign_document(service.hub_key(h.a.settings).private, manifest.canonical(doc))
    r = sync._post(h.a, h.url_b, f"{sync.SYNC_PATH}/manifest", {"manifest": doc, "signature": signature})
    assert r.status_code == 422 and "not published in the origin's catalogue" in r.json()["detail"], r.text
    with h.b.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Incoming)) == 0
    assert [e.details["what"] for e in _events(h.b, "federation.sync.refused")] == ["manifest"]
    _nothing_at_b(h)
