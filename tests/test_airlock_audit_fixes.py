"""The airlock audit's findings, each through the real API, pages and jobs (one class per finding):

- F6: a project receives another project's exports only after its PI agreed (``airlock_sources``, a locked setting:
  fresh MFA, audited); an unknown project and one that did not agree get the same answer; consent withdrawn stops
  what waits.
- F7: an approval needs a fresh second factor (a rejection does not; the page sends the reviewer to confirm it's
  them); the PI never overrides the checks of their own request.
- F8: a notebook workspace's project-bound token is refused on every user-wide airlock route, so it neither lists
  nor spends the user's one-time outbox downloads.
- F9: where the hub connects for an external destination (SFTP host, port, account, host key) is the operator's
  credential, bound to the projects it serves; a destination's folder never climbs out; a network failure's reason
  names no address; a workspace's allow-list holds only the operator's addresses.
- F10: the "delivered" e-mail goes to the account the files went to, not to whoever holds the name now.
- F12: text written in UTF-16 after an ASCII beginning is read.
- F4: a table by another name (``lab.txt``) is verified as a table; table-like text that cannot be read says so.
- F5: a Parquet file's footer (key-value metadata, base64 blobs such as the Arrow schema) is scanned.
- F3: a strategy never turns an identifier kind off for the airlock.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import html
import io
import socket
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import func, select, update

from conftest import bearer, token_for, web_client
from helpers import csrf_for
from strongroom.archive import c4gh
from strongroom.archive.models import ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.identity.models import ApiToken, User, WebSession
from strongroom.jobs.models import Job
from strongroom.projects.models import Membership, Project, ProjectSetting
from test_airlock import (
    CLEAN_CSV,
    LEAKY_CSV,
    _drain,
    _export,
    _get,
    _mails,
    _put_file,
    _review,
    world,  # noqa: F401 - the fixture: projects lung/other/elsewhere, people, reviewers
)
from test_airlock_content_checks import _workbook

PNR = "19121212-1212"  # a valid personnummer (Luhn), as in test_airlock
EMAIL = "anna.svensson@example.se"
PARTNER_PEM = c4gh.public_key_file(c4gh.generate_keypair().public).decode()


def _page(app, hub, w, who: str):
    return web_client(app, hub, w["p"][who])


def _form(client, url: str, data: dict[str, Any]):
    return client.post(url, data={**data, "csrf_token": csrf_for(client)}, follow_redirects=False)


def _stale(hub, person) -> None:
    """Every credential of ``person`` had its second factor 30 days ago (tokens are as fresh as their minting)."""
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    with transaction(hub.sessions) as s:
        s.execute(update(ApiToken).where(ApiToken.user_id == person.user.id).values(created_at=then))
        s.execute(update(WebSession).where(WebSession.user_id == person.user.id).values(mfa_at=then))


def _files_in(hub, slug: str) -> int:
    with hub.sessions() as s:
        project_id = s.scalar(select(Project.id).where(Project.slug == slug))
        return s.scalar(select(func.count()).select_from(ArchiveFile).where(ArchiveFile.project_id == project_id))


def _checked(w, name: str, data: bytes) -> dict:
    """``data`` exported as ``name`` (sam, to the other team), checked by the job: the request's one file."""
    fid = _put_file(w["hub"], "lung", w["p"]["sam"], name, data)
    r = _export(w, "sam", [fid])
    assert r.status_code == 201, r.text
    _drain(w["hub"])
    [f] = _get(w, r.json()["id"])["files"]
    return f


def _not_passed(f: dict) -> list[dict]:
    return [c for c in f["checks"] if not c["passed"]]


# -- F6 ------------------------------------------------------------------------------------------------------------
class TestAProjectReceivesOnlyWhatItAgreedTo:
    """Any PI could add a destination naming any other project (an unknown slug answered differently: an oracle),
    and the transfer sealed the files straight into it, ready, on its quota. Now the receiving project's PI lists
    the projects it accepts exports from (``airlock_sources``); until then the answer is the one an unknown
    project gets, on the settings API and the page alike."""

    @pytest.mark.parametrize("way", ["api", "page"])
    def test_no_project_is_written_without_its_pis_consent(self, world, app, way) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        alice = _page(app, hub, w, "alice")

        def add(target: str) -> tuple[int, str]:
            entry = {"kind": "project", "name": f"To {target}", "project": target}
            if way == "api":
                r = c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": [entry]},
                          headers=bearer(w["t"]["alice"]))
                return r.status_code, r.json().get("detail", "")
            r = _form(alice, "/projects/lung/airlock/settings/destinations",
                      {"kind": "project", "name": entry["name"], "target": target})
            return r.status_code, html.unescape(r.text)

        unknown, unwilling = add("no-such-project"), add("elsewhere")  # eve, PI of 'elsewhere', never agreed
        assert unknown[0] == unwilling[0] == 422, (unknown, unwilling)
        assert "does not accept exports from 'lung'" in unwilling[1] and "no project" not in unknown[1]
        if way == "api":  # word for word the same answer
            assert unknown[1].replace("no-such-project", "X") == unwilling[1].replace("elsewhere", "X")
        # eve agrees (her locked setting): now the destination is taken and an export lands there
        assert c.put("/api/v1/projects/elsewhere/settings/airlock_sources", json={"value": ["lung"]},
                     headers=bearer(w["t"]["eve"])).status_code == 200
        assert add("elsewhere")[0] in (200, 303)
        before = _files_in(hub, "elsewhere")
        fid = _put_file(hub, "lung", w["p"]["sam"], "out/ages.csv", CLEAN_CSV)
        rid = _export(w, "sam", [fid], "To elsewhere").json()["id"]
        _drain(hub)
        assert _review(w, rid, "rita").status_code == 200
        assert _review(w, rid, "ron").json()["state"] == "approved"
        _drain(hub)
        assert _get(w, rid)["state"] == "done" and _files_in(hub, "elsewhere") == before + 1

    def test_consent_withdrawn_stops_what_waits(self, world) -> None:  # noqa: F811
        """'other' agreed (the fixture); its PI takes it back while one request waits for its second approval and
        another is approved and queued: the approval is refused, the transfer fails before sending, a new
        request is refused."""
        w, hub, c = world, world["hub"], world["c"]
        waiting = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "a.csv", CLEAN_CSV)]).json()["id"]
        queued = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "b.csv", CLEAN_CSV)]).json()["id"]
        _drain(hub)
        assert _review(w, waiting, "rita").status_code == 200
        for who in ("rita", "ron"):
            assert _review(w, queued, who).status_code == 200
        assert c.put("/api/v1/projects/other/settings/airlock_sources", json={"value": []},
                     headers=bearer(w["t"]["bob"])).status_code == 200
        before = _files_in(hub, "other")
        refused = _review(w, waiting, "ron")
        assert refused.status_code == 409 and "no longer one of this project's approved" in refused.text
        _drain(hub)
        failed = _get(w, queued)
        assert failed["state"] == "failed" and failed["receipt"]["files"] == [] and _files_in(hub, "other") == before
        fid = _put_file(hub, "lung", w["p"]["sam"], "c.csv", CLEAN_CSV)
        new = _export(w, "sam", [fid])
        assert new.status_code == 422 and "does not accept exports from 'lung'" in new.json()["detail"]

    def test_consent_is_the_receiving_pis_with_a_fresh_second_factor(self, world) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        url = "/api/v1/projects/elsewhere/settings/airlock_sources"
        with transaction(hub.sessions) as s:  # carl is a plain member of 'elsewhere'
            elsewhere = s.scalar(select(Project.id).where(Project.slug == "elsewhere"))
            s.add(Membership(project_id=elsewhere, user_id=w["p"]["carl"].user.id, role="member"))
        assert c.put(url, json={"value": ["lung"]}, headers=bearer(w["t"]["carl"])).status_code == 403
        assert c.put(url, json={"value": ["lung"]}, headers=bearer(w["t"]["alice"])).status_code == 404
        _stale(hub, w["p"]["eve"])
        stale = c.put(url, json={"value": ["lung"]}, headers=bearer(w["t"]["eve"]))
        assert stale.status_code == 403 and stale.json()["code"] == "mfa-required"
        assert c.put(url, json={"value": ["lung"]}, headers=bearer(token_for(hub, w["p"]["eve"]))).status_code == 200
        with hub.sessions() as s:
            changed = s.scalars(select(AuditEvent).where(AuditEvent.target == "setting:airlock_sources",
                                                         AuditEvent.project_id == elsewhere)).one()
            assert changed.actor_id == w["p"]["eve"].user.id and changed.details["after"] == ["lung"]


# -- F7 ------------------------------------------------------------------------------------------------------------
class TestApprovingTakesAFreshSecondFactor:
    """An approval sends data out: like the PI's override it needs a second factor within
    ``security.fresh_mfa_minutes``; a rejection stops data and needs none. And the PI who asked for an export
    never waves its failed checks through."""

    @pytest.mark.parametrize("way", ["api", "page"])
    def test_an_approval_needs_a_recent_second_factor_a_rejection_does_not(self, world, app, way) -> None:  # noqa: F811
        w, hub = world, world["hub"]
        approve, reject = (_export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], f"{n}.csv", CLEAN_CSV)])
                           .json()["id"] for n in ("a", "b"))
        _drain(hub)
        page = _page(app, hub, w, "rita")
        _stale(hub, w["p"]["rita"])

        def decide(rid: str, decision: str):
            if way == "api":
                return _review(w, rid, "rita", decision, "aggregate first" if decision == "reject" else "")
            return _form(page, f"/projects/lung/airlock/{rid}/review",
                         {"decision": decision, "reason": "aggregate first" if decision == "reject" else ""})

        refused = decide(approve, "approve")
        if way == "api":
            assert refused.status_code == 403 and refused.json()["code"] == "mfa-required", refused.text
        else:  # to the second factor, then back to the request's page (the form's own address answers POST only)
            assert refused.status_code == 303
            assert refused.headers["location"] == f"/login/reauth?next={quote(f'/projects/lung/airlock/{approve}')}"
        assert _get(w, approve)["reviews"] == [] and _get(w, approve)["approvals"] == 0
        assert decide(reject, "reject").status_code in (200, 303)
        assert _get(w, reject)["state"] == "rejected"
        # with a fresh second factor the same approval is taken
        if way == "api":
            w["t"]["rita"] = token_for(hub, w["p"]["rita"])
        else:
            page = _page(app, hub, w, "rita")
        assert decide(approve, "approve").status_code in (200, 303)
        assert _get(w, approve)["approvals"] == 1

    @pytest.mark.parametrize("way", ["api", "page"])
    def test_the_pi_never_overrides_the_checks_of_their_own_request(self, world, app, way) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        own = _export(w, "alice", [_put_file(hub, "lung", w["p"]["alice"], "lab.csv", LEAKY_CSV)]).json()["id"]
        theirs = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "lab.csv", LEAKY_CSV)]).json()["id"]
        _drain(hub)
        page = _page(app, hub, w, "alice")

        def override(rid: str):
            if way == "api":
                return c.post(f"/api/v1/projects/lung/airlock/requests/{rid}/override",
                              json={"reason": "synthetic person"}, headers=bearer(w["t"]["alice"]))
            return _form(page, f"/projects/lung/airlock/{rid}/override", {"reason": "synthetic person"})

        refused = override(own)
        assert refused.status_code == 403 and "own request" in html.unescape(refused.text)
        assert _get(w, own)["override_reason"] is None
        assert "/override" not in page.get(f"/projects/lung/airlock/{own}").text  # no form offered either
        assert override(theirs).status_code in (200, 303)
        assert _get(w, theirs)["override_reason"] == "synthetic person"


# -- F8 ------------------------------------------------------------------------------------------------------------
class TestAWorkspaceTokenStaysInItsProject:
    """A notebook's project-bound token reached the user-wide outbox (and took the one download of a file exported
    from another project) and the reviews across projects. Every airlock route that is not a project's refuses it."""

    def test_it_neither_lists_nor_spends_the_users_outbox(self, world, app) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        key = c4gh.generate_keypair()
        assert c.post("/api/v1/me/keys", json={"name": "laptop", "public_key": c4gh.public_key_file(key.public)
                                               .decode()}, headers=bearer(w["t"]["carl"])).status_code == 201
        rid = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "stats.txt", b"counts\n")],
                      "Carl at the registry").json()["id"]
        _drain(hub)
        _review(w, rid, "rita"), _review(w, rid, "ron")
        _drain(hub)
        [item] = c.get("/api/v1/airlock/outbox", headers=bearer(w["t"]["carl"])).json()
        with transaction(hub.sessions) as s:  # carl works in a notebook of 'elsewhere'; rita in one of 'lung'
            tokens = {}
            for who, slug in (("carl", "elsewhere"), ("rita", "lung")):
                project_id = s.scalar(select(Project.id).where(Project.slug == slug))
                if who == "carl":
                    s.add(Membership(project_id=project_id, user_id=w["p"]["carl"].user.id, role="member"))
                    s.flush()
                _, tokens[who] = identity.create_project_token(
                    s, Actor.system("t"), s.get(User, w["p"][who].user.id), project_id=project_id,
                    name="workspace", scopes=["data:read", "data:write", "projects:read"], minutes=60)
        user_wide = {(m, r.path_format) for r in iter_route_contexts(app.routes)
                     if isinstance(r.original_route, APIRoute) and r.path_format.startswith("/api/v1/airlock")
                     for m in r.methods if m != "HEAD"}
        assert user_wide == {("GET", "/api/v1/airlock/outbox"), ("GET", "/api/v1/airlock/outbox/{item_id}/content"),
                             ("GET", "/api/v1/airlock/reviews")}, "a new user-wide airlock route: list it here"
        for _, path in sorted(user_wide):
            for who in ("carl", "rita"):
                r = c.get(path.format(item_id=item["id"]), headers=bearer(tokens[who]))
                assert r.status_code == 403, (who, path, r.text)
                assert r.json()["detail"].startswith("a workspace's token acts only inside its project")
        # the project's own routes still answer a workspace of that project
        assert c.get("/api/v1/projects/lung/airlock/requests", headers=bearer(tokens["rita"])).status_code == 200
        got = c.get(f"/api/v1/airlock/outbox/{item['id']}/content", headers=bearer(w["t"]["carl"]))
        assert got.status_code == 200  # the one download is still carl's


# -- F9 ------------------------------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestExternalTargetsAreTheOperatorsAndServeTheirProjects:
    """A PI could point the hub's SFTP key at any address (127.0.0.1:5432, 169.254.169.254:80, [::1]:6379), write
    into '../../../etc', use any bucket or server configured for another project, and read an internal port scan
    in the failure reasons. Now the credential pins where the hub connects and lists the projects it serves."""

    @pytest.fixture
    def settings(self, settings, tmp_path: Path):
        import asyncssh

        from strongroom.config import AirlockSettings

        key = tmp_path / "hub-sftp-key"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
        key.chmod(0o600)
        host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        bucket = {"bucket": "incoming", "endpoint_url": "http://127.0.0.1:9", "max_attempts": 1}  # never reached
        return settings.model_copy(update={"airlock": AirlockSettings.model_validate({
            "s3": {"lung-bucket": {**bucket, "projects": ["lung"]}, "other-bucket": {**bucket, "projects": ["other"]},
                   "nobodys-bucket": bucket},
            "sftp": {"lung-sftp": {"host": "127.0.0.1", "port": _closed_port(), "username": "hub",
                                   "host_key": host_key, "private_key_file": str(key), "connect_timeout": 2,
                                   "projects": ["lung"]}}})})

    @pytest.mark.parametrize("entry", [
        {"host": "127.0.0.1", "port": 5432}, {"host": "169.254.169.254", "port": 80}, {"host": "::1", "port": 6379},
        {"username": "root"}, {"host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk2bm90YXJlYWxrZXk="},
        {"directory": "../../../etc"}, {"directory": "/etc"}, {"directory": "inbox/../../etc"},
        {"directory": "./inbox"}, {"directory": ".ssh"}, {"directory": "inbox\\..\\.."},
    ], ids=lambda e: repr(e)[:40])
    def test_an_sftp_destination_never_says_where_the_hub_connects(self, world, app, entry) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        dest = {"kind": "sftp", "name": "Partner", "credential": "lung-sftp", "public_key": PARTNER_PEM, **entry}
        r = c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": [dest]},
                  headers=bearer(w["t"]["alice"]))
        assert r.status_code == 422, r.text
        if set(entry) == {"directory"}:  # the page's form has the folder field only
            page = _form(_page(app, hub, w, "alice"), "/projects/lung/airlock/settings/destinations/external",
                         {k: v for k, v in dest.items() if k != "kind"} | {"kind": "sftp"})
            assert page.status_code == 422, page.text

    @pytest.mark.parametrize("prefix", ["../", "a/../../", "/abs/", "./", ".hidden/"])
    def test_an_s3_folder_never_climbs_out(self, world, prefix) -> None:  # noqa: F811
        w, c = world, world["c"]
        dest = {"kind": "s3", "name": "Bucket", "credential": "lung-bucket", "public_key": PARTNER_PEM,
                "prefix": prefix}
        assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": [dest]},
                     headers=bearer(w["t"]["alice"])).status_code == 422

    def test_only_the_targets_serving_the_project_are_offered_or_used(self, world, app) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        alice = _page(app, hub, w, "alice")
        shown = alice.get("/projects/lung/airlock/settings").text
        assert "lung-bucket" in shown and "lung-sftp" in shown
        assert "other-bucket" not in shown and "nobodys-bucket" not in shown
        assert "other-bucket" in _page(app, hub, w, "bob").get("/projects/other/airlock/settings").text

        def add(credential: str):
            return _form(alice, "/projects/lung/airlock/settings/destinations/external",
                         {"kind": "s3", "name": "Bucket", "credential": credential, "public_key": PARTNER_PEM})

        others, never = add("other-bucket"), add("never-configured")
        assert others.status_code == never.status_code == 422
        assert "the hub has no S3 target 'other-bucket' for this project" in html.unescape(others.text)
        assert "the hub has no S3 target 'never-configured' for this project" in html.unescape(never.text)
        # named through the settings API (which cannot see the hub's configuration), it is refused at the transfer
        dest = {"kind": "s3", "name": "Their bucket", "credential": "other-bucket", "public_key": PARTNER_PEM}
        assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": [dest]},
                     headers=bearer(w["t"]["alice"])).status_code == 200
        fid = _put_file(hub, "lung", w["p"]["sam"], "a.csv", CLEAN_CSV)
        rid = _export(w, "sam", [fid], "Their bucket").json()["id"]
        _drain(hub)
        _review(w, rid, "rita"), _review(w, rid, "ron")
        _drain(hub)
        failed = _get(w, rid)
        assert failed["state"] == "failed" and failed["receipt"]["files"] == []
        assert "no S3 credential 'other-bucket' in the hub's configuration serves this project" in failed["reason"]

    def test_a_network_failure_names_no_address_to_members(self, world) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        port = hub.settings.airlock.sftp["lung-sftp"].port
        dest = {"kind": "sftp", "name": "Partner SFTP", "credential": "lung-sftp", "public_key": PARTNER_PEM,
                "directory": "lung"}
        assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": [dest]},
                     headers=bearer(w["t"]["alice"])).status_code == 200
        rid = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "a.csv", CLEAN_CSV)],
                      "Partner SFTP").json()["id"]
        _drain(hub)
        _review(w, rid, "rita"), _review(w, rid, "ron")
        with transaction(hub.sessions) as s:  # the transfer's last attempt (the earlier ones met the same refusal)
            s.execute(update(Job).where(Job.kind == "airlock.transfer").values(attempts=Job.max_attempts - 1))
        _drain(hub)
        failed = _get(w, rid)
        assert failed["state"] == "failed" and "the hub's log has the details" in failed["reason"], failed
        for leak in ("127.0.0.1", str(port), "Errno", "refused", "Error"):
            assert leak not in failed["reason"] and leak not in str(failed["receipt"]), leak

    def test_a_workspace_reaches_only_the_operators_addresses(self, world) -> None:  # noqa: F811
        """The notebook workspaces' allow-list comes from the same destinations: a stored destination naming its
        own host (saved before the rule) or a credential of another project opens nothing."""
        from strongroom.workspaces import service as workspaces

        hub = world["hub"]
        sftp = hub.settings.airlock.sftp["lung-sftp"]
        with transaction(hub.sessions) as s:
            lung = s.scalar(select(Project.id).where(Project.slug == "lung"))
            row = s.get(ProjectSetting, (lung, "egress_destinations"))
            row.value = [
                {"kind": "sftp", "name": "Metadata", "credential": "nobody", "public_key": PARTNER_PEM,
                 "host": "169.254.169.254", "port": 80, "username": "u", "host_key": "ssh-ed25519 AAAA"},
                {"kind": "sftp", "name": "Old", "credential": "lung-sftp", "public_key": PARTNER_PEM,
                 "host": "10.9.9.9", "port": 5432, "username": "u", "host_key": "ssh-ed25519 AAAA"},
                {"kind": "s3", "name": "Theirs", "credential": "other-bucket", "public_key": PARTNER_PEM}]
        with hub.sessions() as s:
            assert workspaces.allowed_destinations(s, hub.settings, lung) == [("127.0.0.1", sftp.port)]


# -- F10 -----------------------------------------------------------------------------------------------------------
class TestTheDeliveredMailGoesToTheRecipient:
    def test_the_mail_goes_to_the_pinned_account_not_to_the_names_holder_now(self, world) -> None:  # noqa: F811
        w, hub, c = world, world["hub"], world["c"]
        public = c4gh.public_key_file(c4gh.generate_keypair().public).decode()
        assert c.post("/api/v1/me/keys", json={"name": "k", "public_key": public},
                      headers=bearer(w["t"]["carl"])).status_code == 201
        dests = [{"kind": "recipient", "name": "Registry inbox", "user": "carl@example.org"}]
        assert c.put("/api/v1/projects/lung/settings/egress_destinations", json={"value": dests},
                     headers=bearer(w["t"]["alice"])).status_code == 200
        rid = _export(w, "sam", [_put_file(hub, "lung", w["p"]["sam"], "stats.txt", b"counts\n")],
                      "Registry inbox").json()["id"]
        with transaction(hub.sessions) as s:  # the address changes hands while the request waits
            s.get(User, w["p"]["carl"].user.id).email = "carl@elsewhere.example.org"
            s.flush()
            s.get(User, w["p"]["eve"].user.id).email = "carl@example.org"
        _drain(hub)
        _review(w, rid, "rita"), _review(w, rid, "ron")
        _drain(hub)
        told = [m["to"] for m in _mails(hub) if m["template"] == "airlock_delivered"]
        assert told == ["carl@elsewhere.example.org"], told


# -- F12 -----------------------------------------------------------------------------------------------------------
PREFIX = b"notes, counts only " * 300  # more than the 4 KiB the type sniffing reads, all ASCII


def _zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


class TestUtf16TextIsRead:
    """After an ASCII beginning, text in UTF-16 had a NUL between its characters, and no pattern matched."""

    @pytest.mark.parametrize(("name", "data", "kind"), [
        ("notes.txt", PREFIX + f"\npatient {PNR}\n".encode("utf-16-le"), "personnummer"),
        ("notes.txt", PREFIX + f"\npatient {PNR}\n".encode("utf-16-be"), "personnummer"),
        ("notes.md", PREFIX + f"\nmail {EMAIL}\n".encode("utf-16-le"), "e-mail"),
        ("notes.dat", PREFIX + f"\nmail {EMAIL}\n".encode("utf-16"), "e-mail"),
        ("bundle.zip", _zipped("notes.txt", PREFIX + f"\n{PNR}\n".encode("utf-16-le")), "personnummer"),
        ("notes.txt.gz", gzip.compress(PREFIX + f"\n{PNR}\n".encode("utf-16-le")), "personnummer"),
    ], ids=["utf-16-le", "utf-16-be", "md", "bom-dat", "zip-member", "gzip"])
    def test_identifiers_in_utf16_parts_are_found(self, world, name, data, kind) -> None:  # noqa: F811
        f = _checked(world, name, data)
        assert f["check_state"] == "failed"
        assert any(kind in c["detail"] for c in _not_passed(f)), f["checks"]
        assert PNR not in str(f) and EMAIL not in str(f)

    def test_a_table_with_utf16_parts_is_scanned_and_not_passed_as_a_table(self, world) -> None:  # noqa: F811
        data = b"id,n\n" + b"P1,1\n" * 900 + f"P2,{PNR}\n".encode("utf-16-le")
        f = _checked(world, "lab.csv", data)
        names = {c["name"]: c for c in _not_passed(f)}
        assert "personnummer" in names["identifiers in text"]["detail"]
        assert names["table"].get("not_checked") and "NUL bytes" in names["table"]["detail"]

    def test_clean_utf16_text_passes(self, world) -> None:  # noqa: F811
        f = _checked(world, "notes.txt", PREFIX + "\nno identifiers here\n".encode("utf-16-le"))
        assert f["check_state"] == "passed", f["checks"]


# -- F4 ------------------------------------------------------------------------------------------------------------
STRATEGY = '''name = "Lab"
person = "pin"
[columns.pin]
action = "pseudonymize"
[columns.age]
action = "stratify"
width = 10
[columns.diagnosis]
action = "keep"
[k_anonymity]
quasi_identifiers = ["age", "diagnosis"]
k = 5
'''
RAW = ("pin,birth_date,postcode,age,diagnosis\n" + "".join(
    f"P{i:03d},1985-03-{i % 28 + 1:02d},1145{i % 10},{30 + i},C50.{i % 10}\n" for i in range(40))).encode()


class TestATableByAnotherNameIsVerifiedAsATable:
    """``lab.txt`` with a CSV's bytes skipped the strategy verification (k-anonymity, dates, unruled columns): only
    the suffixes of a table were verified. Now text whose lines split into one number of fields is read as the
    table it is; table-like text that cannot be read as a table is "not checked" and says why."""

    @pytest.fixture
    def strategy(self, world) -> None:  # noqa: F811
        r = world["c"].put("/api/v1/projects/lung/strategy", json={"text": STRATEGY},
                           headers=bearer(world["t"]["alice"]))
        assert r.status_code == 201, r.text

    @pytest.mark.parametrize(("name", "data"), [
        ("lab.txt", RAW), ("lab.dat", RAW), ("lab.log", RAW.replace(b",", b";")), ("lab.md", RAW.replace(b",", b"\t")),
        ("export", RAW), ("lab.txt.gz", gzip.compress(RAW)), ("bundle.zip", _zipped("out/lab.txt", RAW)),
    ], ids=["txt", "dat", "semicolon", "tab", "no-suffix", "gzip", "zip-member"])
    def test_the_strategy_verification_runs(self, world, strategy, name, data) -> None:  # noqa: F811
        f = _checked(world, name, data)
        assert f["check_state"] == "failed"
        assert any("strategy verification" in c["name"] or "strategy verification" in c["detail"]
                   for c in _not_passed(f)), f["checks"]

    def test_a_renamed_table_without_a_strategy_has_its_cells_scanned(self, world) -> None:  # noqa: F811
        f = _checked(world, "lab.txt", b"n,code\n" + b"1,A\n" * 30 + LEAKY_CSV.splitlines()[1] + b"\n")
        assert any(c["name"] == "identifiers in cells" for c in _not_passed(f)), f["checks"]
        assert _checked(world, "ages.txt", CLEAN_CSV)["check_state"] == "passed"

    @pytest.mark.parametrize("data", [
        RAW.replace(b",", b"|"),  # a pipe-separated extract: not a table the checks read
        RAW + b"P999,1985-01-01,11450,31,C50.1,extra\n",  # a ragged line: the table reader refuses it
    ], ids=["pipe", "ragged"])
    def test_table_like_text_that_cannot_be_read_is_not_checked(self, world, strategy, data) -> None:  # noqa: F811
        f = _checked(world, "lab.txt", data)
        [table] = [c for c in _not_passed(f) if c["name"] == "table"]
        assert table.get("not_checked") and "table-like text" in table["detail"]
        assert "strategy was not applied" in table["detail"]

    def test_prose_stays_text(self, world, strategy) -> None:  # noqa: F811
        prose = (b"Cohort summary, as agreed.\nWe counted, grouped and rounded everything.\n"
                 b"No identifiers remain.\nQuestions: ask the steward, please, by phone.\n")
        f = _checked(world, "README.txt", prose)
        assert f["check_state"] == "passed", f["checks"]


# -- F5 ------------------------------------------------------------------------------------------------------------
def _parquet(metadata: dict[str, str] | None) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"group": ["A", "B"], "n": [12, 7]}).write_parquet(buf, metadata=metadata)
    return buf.getvalue()


class TestAParquetFooterIsRead:
    """Key-value metadata (and the base64 Arrow schema stored there) were never read: only frames and names."""

    @pytest.mark.parametrize(("metadata", "kind"), [
        ({"source_patient": PNR}, "personnummer"),
        ({"contact": EMAIL}, "e-mail"),
        ({PNR: "the key is the identifier"}, "personnummer"),
        ({"note": base64.b64encode(f"patient {PNR} of the cohort".encode()).decode()}, "personnummer"),
    ], ids=["value", "e-mail", "key", "base64"])
    def test_identifiers_in_the_footer_fail(self, world, metadata, kind) -> None:  # noqa: F811
        f = _checked(world, "out/counts.parquet", _parquet(metadata))
        [footer] = [c for c in _not_passed(f) if c["name"] == "Parquet metadata"]
        assert kind in footer["detail"] and not footer.get("not_checked")
        assert PNR not in str(f) and EMAIL not in str(f)

    def test_a_clean_parquet_passes(self, world) -> None:  # noqa: F811
        f = _checked(world, "out/counts.parquet", _parquet({"made_by": "the steward's script"}))
        assert f["check_state"] == "passed", f["checks"]
        assert any(c["name"] == "Parquet metadata" and c["passed"] for c in f["checks"])


# -- F3 ------------------------------------------------------------------------------------------------------------
LAX = ('name = "lax"\n[columns.group]\naction = "keep"\n[columns.n]\naction = "keep"\n'
       "[identifier_scan]\npersonnummer = false\nemail = false\nphone = false\n")


class TestAStrategyNeverTurnsAKindOff:
    """A strategy's ``[identifier_scan]`` switches turned the airlock's scan of a workbook's comments and
    properties off. Whatever a saved strategy says, the airlock looks for every kind."""

    @pytest.mark.parametrize(("identifier", "kind"), [(PNR, "personnummer"), (EMAIL, "e-mail"),
                                                      ("+46 70 123 45 67", "telephone")])
    def test_a_workbook_comment_with_an_identifier_fails(self, world, identifier, kind) -> None:  # noqa: F811
        w, hub = world, world["hub"]
        saved = w["c"].put("/api/v1/projects/lung/strategy", json={"text": LAX}, headers=bearer(w["t"]["alice"]))
        if saved.status_code != 201:  # the strategy rules refuse the switches now: one saved before them
            import hashlib

            from strongroom.strategies.models import StrategyVersion

            with transaction(hub.sessions) as s:
                s.add(StrategyVersion(project_id=s.scalar(select(Project.id).where(Project.slug == "lung")),
                                      version=1, name="lax", text=LAX, sha256=hashlib.sha256(LAX.encode()).hexdigest(),
                                      created_by=w["p"]["alice"].user.id))
        f = _checked(w, "out/cohort.xlsx", _workbook([["group", "n"], ["B", 7]], comment=f"ask {identifier}"))
        assert f["check_state"] == "failed"
        assert any(kind in c["detail"] for c in _not_passed(f)), f["checks"]
