"""Who a GPU reservation names on the cluster (audit finding: a project's reservation named whoever's local
username or e-mail local part matched, so a local user of another project could run on its reserved GPUs and the
real member could not). Only the operator-set mapping (``workspaces.ClusterAccount``) names a member; members
without a usable account are left out and told (API, page, flash, CLI, audit); a name that is no POSIX user
name never reaches scontrol. The reservations are read back from a real Slurm (tests/support/slurm.py), whose
users must exist: the machine's system accounts (daemon, bin, sys) stand in for the cluster's."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid

import pytest
from sqlalchemy import select

from conftest import bearer, token_for, web_client
from helpers import form_post
from imaging_support import make_project
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.compute import service
from strongroom.compute.models import Booking
from strongroom.compute.scheduler import Reservation, SchedulerError, SlurmMachine, SlurmScheduler
from strongroom.config import ComputeSettings
from strongroom.db import transaction
from strongroom.identity import service as identity
from strongroom.identity.models import User
from strongroom.projects.models import Membership, Project
from strongroom.workspaces import service as workspaces
from strongroom.workspaces.models import ClusterAccount
from support.slurm import LICENSE, slurm  # noqa: F401  (the session fixture)

MACHINES = {"dgx2": {"gpus": 16, "slurm_license": LICENSE}}
NOTE = "no cluster account and cannot use this reservation"


@pytest.fixture
def settings(settings):
    """Slurm on (bookings get reservations); bookings over the (absent) budget allowed."""
    return settings.model_copy(update={"compute": ComputeSettings.model_validate(
        {"machines": MACHINES, "over_budget": "allow_and_notify", "slurm": {"enabled": True}})})


# -- helpers -------------------------------------------------------------------------------------
def _project(s, slug: str) -> uuid.UUID:
    return s.scalar(select(Project.id).where(Project.slug == slug))


def join(hub, slug: str, user_id: uuid.UUID) -> None:
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=_project(s, slug), user_id=user_id, role="member", delegated_rights=[]))


def oidc_user(hub, email: str, name: str) -> uuid.UUID:
    """A researcher of another university, signed in through its identity provider."""
    with transaction(hub.sessions) as s:
        user, _ = identity.upsert_federated_user(s, issuer="https://idp.uu.se", subject=email, display_name=name,
                                                 email=email, affiliation="UU")
        return user.id


def map_account(hub, user_id: uuid.UUID, account: str) -> None:
    """An operator sets (or with "" removes) the member's cluster account: the one mapping."""
    with transaction(hub.sessions) as s:
        workspaces.set_cluster_account(s, Actor.system("test"), s.get(User, user_id), account)


def store_account(hub, user_id: uuid.UUID, account: str) -> None:
    """A mapping row as the rule never lets an operator write it (set before the rule, or two racing writes)."""
    with transaction(hub.sessions) as s:
        s.add(ClusterAccount(user_id=user_id, account=account))


def real_slurm(hub, slurm) -> ComputeSettings:  # noqa: F811
    return ComputeSettings.model_validate({**hub.settings.compute.model_dump(),
                                           "slurm": {"enabled": True, "slurm_conf": slurm.conf}})


def book_over_api(client, hub, person, slug: str) -> dict:
    r = client.post(f"/api/v1/compute/projects/{slug}/bookings", json={"machine": "dgx2", "gpus": 2, "weeks": 1},
                    headers=bearer(token_for(hub, person)))
    assert r.status_code == 201, r.text
    return r.json()


def sync(hub, slurm, booking_id: int):  # noqa: F811
    """What the booking's compute.sync job does, against the real Slurm."""
    with transaction(hub.sessions) as s:
        return service.sync(s, service.scheduler_for(real_slurm(hub, slurm)), now=dt.datetime.now(dt.UTC),
                            booking_id=booking_id)


def slurm_users(slurm, name: str) -> set[str]:  # noqa: F811
    """The reservation's users as Slurm itself shows them (empty: no such reservation)."""
    try:
        line = slurm.scontrol("-o", "show", "reservation", name)
    except RuntimeError:
        return set()
    users = next(f for f in line.split() if f.startswith("Users=")).removeprefix("Users=")
    return set(users.split(",")) - {"(null)"}


def drop(slurm, name: str) -> None:  # noqa: F811
    """The session's Slurm is shared by every test: leave no reservation behind."""
    with contextlib.suppress(RuntimeError):
        slurm.scontrol("delete", f"ReservationName={name}")


def events(hub, action: str, booking_id: int) -> list[dict]:
    with hub.sessions() as s:
        return [e.details for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == action, AuditEvent.target == f"booking:{booking_id}").order_by(AuditEvent.seq))]


# -- the finding: a hub identity that looks like a cluster account is not one -------------------------
@pytest.mark.slow
@pytest.mark.parametrize("intruder", ["oidc-mapped", "oidc-unmapped", "local-unmapped"])
def test_a_reservation_names_only_the_mapped_accounts(hub, people, client, slurm, intruder) -> None:  # noqa: F811
    """``daemon`` is the cluster account of someone in lung only. A member of heart who merely looks like
    ``daemon`` to the hub — an OIDC researcher whose e-mail is daemon@uu.se (mapped to her own account ``bin``,
    or not mapped at all), or a local user called daemon the operator never mapped — does not put ``daemon`` on
    heart's reservation: Slurm shows heart's mapped accounts only, and an unmapped member is left out and told."""
    if intruder == "local-unmapped":
        holder = oidc_user(hub, "dana@ki.se", "Dana")  # lung's daemon, signed in through her university
        intruder_id = people("daemon").user.id  # a local user whose username is daemon
    else:
        holder = people("daemon").user.id  # lung's daemon: a local user
        intruder_id = oidc_user(hub, "daemon@uu.se", "A. Lind")
    pi = people("sys")
    people("alice")
    make_project(hub, "lung", "alice")
    make_project(hub, "heart", "sys")
    join(hub, "lung", holder)
    join(hub, "heart", intruder_id)
    map_account(hub, holder, "daemon")
    map_account(hub, pi.user.id, "sys")
    if intruder == "oidc-mapped":
        map_account(hub, intruder_id, "bin")
    booking = book_over_api(client, hub, pi, "heart")
    name = booking["reservation_name"]
    try:
        report = sync(hub, slurm, booking["id"])
        assert report.created == [name] and not report.failed, report
        expected = {"bin", "sys"} if intruder == "oidc-mapped" else {"sys"}
        assert slurm_users(slurm, name) == expected  # daemon is not on heart's GPUs
        left_out = [] if intruder == "oidc-mapped" else [{"user_id": str(intruder_id), "why": "none"}]
        (created,) = events(hub, "compute.reservation.created", booking["id"])
        assert (created["cluster_users"], created["left_out"]) == (sorted(expected), left_out)
        if left_out:
            assert created["note"].startswith("1 member has " + NOTE)
            assert booking["without_cluster_account"] == [
                "Daemon" if intruder == "local-unmapped" else "A. Lind"]
        else:
            assert "note" not in created and booking["without_cluster_account"] == []
        assert booking["cluster_users"] == len(expected)
    finally:
        drop(slurm, name)


# -- left out, and told ------------------------------------------------------------------------
def test_members_without_a_cluster_account_are_left_out_and_told(hub, people, client, app) -> None:
    """Two members of heart have no cluster account: the API answer, the booking list, the page, the flash after
    booking on the page and the audit event of the booking all say so, by name or by id."""
    pi = people("sys")
    make_project(hub, "heart", "sys")
    ulla = people("ulla")
    join(hub, "heart", ulla.user.id)
    lind = oidc_user(hub, "alice@uu.se", "A. Lind")
    join(hub, "heart", lind)
    map_account(hub, pi.user.id, "sys")
    booking = book_over_api(client, hub, pi, "heart")
    assert booking["cluster_users"] == 1 and booking["without_cluster_account"] == ["A. Lind", "Ulla"]
    assert booking["cluster_note"].startswith("2 members have " + NOTE)
    listed = client.get("/api/v1/compute/projects/heart/bookings", headers=bearer(token_for(hub, ulla))).json()
    assert [(b["id"], b["cluster_users"], b["without_cluster_account"]) for b in listed] == [
        (booking["id"], 1, ["A. Lind", "Ulla"])]
    (created,) = events(hub, "compute.booking.created", booking["id"])
    assert created["cluster_users"] == ["sys"] and created["note"].startswith("2 members have " + NOTE)
    assert sorted(m["user_id"] for m in created["left_out"]) == sorted([str(ulla.user.id), str(lind)])
    # the page: who is left out, and per booking how many accounts its reservation names
    web = web_client(app, hub, ulla)
    page = web.get("/projects/heart/compute").text
    assert 'id="left-out"' in page and "A. Lind, Ulla" in page and "1 cluster account, 2 left out" in page
    # booking on the page: the flash says it too
    shown = form_post(web, "/projects/heart/compute/bookings", {"machine": "dgx2", "gpus": "1", "kind": "dropin"})
    assert shown.status_code == 303
    assert "2 members have " + NOTE in web.get(shown.headers["location"]).text
    # once mapped, nobody is left out, and nothing is said
    map_account(hub, ulla.user.id, "ulla")
    map_account(hub, lind, "alind")
    booking = book_over_api(client, hub, pi, "heart")
    assert (booking["cluster_users"], booking["without_cluster_account"], booking["cluster_note"]) == (3, [], "")
    assert 'id="left-out"' not in web.get("/projects/heart/compute").text


def test_without_slurm_nothing_is_said(hub, people, client) -> None:
    """No scheduler, no reservation: the booking says nothing about cluster accounts."""
    hub.settings = hub.settings.model_copy(update={"compute": ComputeSettings.model_validate(
        {"machines": MACHINES, "over_budget": "allow_and_notify"})})
    pi = people("sys")
    make_project(hub, "heart", "sys")
    booking = book_over_api(client, hub, pi, "heart")
    assert booking["reservation_state"] == "not configured"
    assert (booking["cluster_users"], booking["without_cluster_account"], booking["cluster_note"]) == (None, [], "")
    (created,) = events(hub, "compute.booking.created", booking["id"])
    assert "cluster_users" not in created and "left_out" not in created


# -- names: POSIX user names only ------------------------------------------------------------------
BAD_NAMES = ["alice,root", "-x", "-alice", "Alice", "a b", "alice\n", "alice=", "al:ice", "", "a" * 33, "1alice",
             "alice$(id)", "ålice", "a.lind"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_scheduler_refuses_a_name_that_is_no_posix_user(name) -> None:
    """Whatever reaches the Slurm adapter, ``Users=`` carries POSIX user names only: "alice,root" would add root,
    "-alice" means everyone but alice; neither the create nor the update command is built."""
    s = SlurmScheduler({"dgx2": SlurmMachine("dgx2", "dgx2", "dgx2_gpu")})
    r = Reservation("sr-7", dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC), dt.datetime(2026, 12, 7, 8, tzinfo=dt.UTC),
                    ("bob", name), 4, "dgx2")
    for build in (s.create_args, s.update_args):
        with pytest.raises(SchedulerError, match="not a cluster account|at least one user"):
            build(r)


@pytest.mark.parametrize("name", [*BAD_NAMES, "root"])
def test_the_rule_refuses_a_name_that_is_no_posix_user(name) -> None:
    """The one rule, where the mapping is set and where it is read, says why."""
    from strongroom.compute import accounts

    assert accounts.account_problem(name)


@pytest.mark.parametrize("name", [n for n in (*BAD_NAMES, "root") if n.strip() == n and n])
def test_the_mapping_refuses_a_name_that_is_no_posix_user(hub, app, people, name) -> None:
    """The operator's API refuses such a name when it is set (422, nothing stored). (Surrounding blanks are
    trimmed, "" removes the mapping.)"""
    from fastapi.testclient import TestClient

    carol, olga = people("carol"), people("olga", admin=True)
    r = TestClient(app).put(f"/api/v1/workspaces/cluster-accounts/{carol.user.id}", json={"account": name},
                            headers=bearer(token_for(hub, olga, ["admin"])))
    assert r.status_code == 422, r.text
    with hub.sessions() as s:
        assert s.get(ClusterAccount, carol.user.id) is None


@pytest.mark.parametrize("name", ["alice", "a_lind", "_svc", "x-1", "a" * 32])
def test_posix_user_names_pass(name) -> None:
    from strongroom.compute import accounts

    assert accounts.account_problem(name) == ""
    s = SlurmScheduler({"dgx2": SlurmMachine("dgx2", "dgx2", "dgx2_gpu")})
    r = Reservation("sr-7", dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC), dt.datetime(2026, 12, 7, 8, tzinfo=dt.UTC),
                    (name,), 4, "dgx2")
    assert f"Users={name}" in s.create_args(r)


@pytest.mark.slow
def test_an_injected_user_list_never_reaches_slurm(slurm) -> None:  # noqa: F811
    """Against the real scontrol: ``Users=daemon,root`` would be a reservation root may use; the adapter runs
    nothing and Slurm has no such reservation."""
    s = SlurmScheduler({"dgx2": SlurmMachine("dgx2", "localhost", LICENSE)}, slurm_conf=slurm.conf)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=90)
    r = Reservation("sr-990001", start, start + dt.timedelta(hours=1), ("daemon,root",), 1, "dgx2")
    try:
        with pytest.raises(SchedulerError, match="not a cluster account"):
            s.create(r)
        assert slurm_users(slurm, r.name) == set()
    finally:
        drop(slurm, r.name)


@pytest.mark.slow
def test_the_reservation_follows_the_mapping_on_a_real_slurm(hub, people, client, slurm) -> None:  # noqa: F811
    """Stored accounts that break the rule (``alice,root``, ``-x``, root) are left out, never passed to scontrol;
    mapping a member adds their account at the next sync (audited); when no member is left with an account the
    reservation is deleted (fail closed) and the booking says why."""
    pi = people("sys")
    make_project(hub, "heart", "sys")
    map_account(hub, pi.user.id, "sys")
    members = {n: people(n).user.id for n in ("ulla", "eve", "mallory", "rick")}
    for user_id in members.values():
        join(hub, "heart", user_id)
    store_account(hub, members["eve"], "alice,root")
    store_account(hub, members["mallory"], "-x")
    store_account(hub, members["rick"], "root")
    booking = book_over_api(client, hub, pi, "heart")
    name = booking["reservation_name"]
    try:
        report = sync(hub, slurm, booking["id"])
        assert report.created == [name] and not report.failed, report
        assert slurm_users(slurm, name) == {"sys"}
        (created,) = events(hub, "compute.reservation.created", booking["id"])
        assert created["cluster_users"] == ["sys"] and created["note"].startswith("4 members have " + NOTE)
        why = {m["user_id"]: m["why"] for m in created["left_out"]}
        assert why == {str(members["ulla"]): "none", str(members["eve"]): "invalid",
                       str(members["mallory"]): "invalid", str(members["rick"]): "invalid"}
        # an operator maps ulla: her account joins at the next sync (the drift check, or her project's sync job)
        map_account(hub, members["ulla"], "bin")
        report = sync(hub, slurm, booking["id"])
        assert report.updated == [name] and not report.failed, report
        assert slurm_users(slurm, name) == {"bin", "sys"}
        (updated,) = events(hub, "compute.reservation.updated", booking["id"])
        assert updated["cluster_users"] == ["bin", "sys"] and len(updated["left_out"]) == 3
        # nobody left with an account: the reservation goes, the booking says why
        map_account(hub, members["ulla"], "")
        map_account(hub, pi.user.id, "")
        report = sync(hub, slurm, booking["id"])
        assert report.deleted == [name] and "no member of the project has a cluster account" in report.failed[name]
        assert slurm_users(slurm, name) == set()
        with hub.sessions() as s:
            b = s.get(Booking, booking["id"])
            assert b.reservation_state == "failed" and "cluster account" in b.reservation_detail
    finally:
        drop(slurm, name)


# -- one account, one person: the database holds it ---------------------------------------------------------
def test_the_database_refuses_one_account_for_two_people(hub, people) -> None:
    """Whatever writes the table (the service, an older hub's code, a hand-run script), an account is one
    member's: the second row fails, the first stays."""
    from sqlalchemy.exc import IntegrityError

    carol, dave = people("carol"), people("dave")
    store_account(hub, carol.user.id, "cjones")
    with pytest.raises(IntegrityError):
        store_account(hub, dave.user.id, "cjones")
    with hub.sessions() as s:
        assert s.scalars(select(ClusterAccount.user_id).where(ClusterAccount.account == "cjones")).all() == [
            carol.user.id]


def test_two_operators_mapping_one_account_at_once_give_it_to_one_member(hub, people) -> None:
    """Two operators map the same account to two members at the same moment: both pass the service's check
    (neither sees the other's uncommitted row); the second waits on the first's row in the unique index and is
    refused (409) once the first commits. PostgreSQL only: SQLite has one writer at a time."""
    import threading

    from sqlalchemy import text

    from helpers import wait_until
    from strongroom.errors import Conflict

    if hub.settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite lets one transaction write at a time")
    carol, dave = people("carol"), people("dave")
    second: dict[str, object] = {}

    def map_dave() -> None:
        try:
            with transaction(hub.sessions) as s2:
                second["pid"] = s2.scalar(text("SELECT pg_backend_pid()"))
                second["outcome"] = workspaces.set_cluster_account(s2, Actor.system("operator-2"),
                                                                   s2.get(User, dave.user.id), "cjones")
        except Conflict as e:
            second["outcome"] = e

    def dave_waits_on_a_lock() -> bool:
        pid = second.get("pid")
        with hub.sessions() as watcher:  # a new transaction each look: pg_stat_activity is read once per transaction
            return pid is not None and bool(watcher.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'"), {"pid": pid}))

    with transaction(hub.sessions) as s:
        workspaces.set_cluster_account(s, Actor.system("operator-1"), s.get(User, carol.user.id), "cjones")
        thread = threading.Thread(target=map_dave)
        thread.start()
        # the code before the index: dave's mapping finishes without waiting
        wait_until(lambda: not thread.is_alive() or dave_waits_on_a_lock())
    thread.join(timeout=60)
    assert isinstance(second["outcome"], Conflict) and "already another member's" in str(second["outcome"])
    with hub.sessions() as s:
        assert s.scalars(select(ClusterAccount.user_id).where(ClusterAccount.account == "cjones")).all() == [
            carol.user.id]
