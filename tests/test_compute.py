"""GPU booking (issue 12): the rules on a frozen clock, budgets and their classes, past bookings not counted,
over budget refused vs allowed with the PI told, the double-booking race decided by the database, outsiders
get 404, and reservations on a real Slurm (created, changed, removed, drift repaired)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from conftest import bearer, token_for
from imaging_support import make_project
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.compute import rules, service
from strongroom.compute.models import ACTIVE, CANCELLED, Booking, GpuSlot
from strongroom.compute.scheduler import Reservation, SlurmMachine, SlurmScheduler
from strongroom.config import ComputeSettings
from strongroom.db import transaction
from strongroom.errors import Conflict, Invalid, NotFound
from strongroom.identity import service as identity_service
from strongroom.identity.models import User
from strongroom.identity.principal import SCOPES, Principal
from strongroom.jobs.models import Job
from strongroom.projects import service as projects
from strongroom.projects.models import Membership
from strongroom.workspaces.service import set_cluster_account
from support.slurm import LICENSE, slurm  # noqa: F401  (the session fixture)

STHLM = ZoneInfo("Europe/Stockholm")


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=STHLM).astimezone(dt.UTC)


# -- the rules, on a frozen clock --------------------------------------------------------------
@pytest.mark.parametrize(("now", "weeks", "start", "end"), [
    # Wednesday 10:30: starts now (this hour), ends the coming Monday 09:00
    (local(2026, 12, 2, 10, 30), 1, local(2026, 12, 2, 10), local(2026, 12, 7, 9)),
    (local(2026, 12, 2, 10, 30), 2, local(2026, 12, 2, 10), local(2026, 12, 14, 9)),
    # Wednesday 07:10: before the 09:00 handover → 09:00 today
    (local(2026, 12, 2, 7, 10), 1, local(2026, 12, 2, 9), local(2026, 12, 7, 9)),
    # Wednesday 12:00 and later: tomorrow 09:00
    (local(2026, 12, 2, 12, 0), 1, local(2026, 12, 3, 9), local(2026, 12, 7, 9)),
    (local(2026, 12, 2, 23, 59), 3, local(2026, 12, 3, 9), local(2026, 12, 21, 9)),
    # Monday 08:00: a whole week, Monday 09:00 to Monday 09:00
    (local(2026, 12, 7, 8, 0), 1, local(2026, 12, 7, 9), local(2026, 12, 14, 9)),
    # Sunday 11:00: one week ends not tomorrow, but the Monday after (at least a day)
    (local(2026, 12, 6, 11, 0), 1, local(2026, 12, 6, 11), local(2026, 12, 7, 9)),
    # across the change to summer time (29 March 2026): 09:00 local is 07:00 UTC on the Monday
    (local(2026, 3, 27, 11, 0), 1, local(2026, 3, 27, 11), dt.datetime(2026, 3, 30, 7, tzinfo=dt.UTC)),
])
def test_earliest_start_and_monday_end(now, weeks, start, end) -> None:
    s = rules.earliest_start(now, STHLM)
    assert s == start
    e = rules.monday_end(s, weeks, STHLM)
    assert e == end
    assert e.astimezone(STHLM).weekday() == 0 and e.astimezone(STHLM).time() == dt.time(9)


def test_budget_classes_and_dropin_window() -> None:
    assert [rules.class_budget(k) for k in ("project", "fellowship", "network_partner")] == [32, 16, 8]
    assert rules.class_budget("custom", 5.5) == 5.5
    with pytest.raises(ValueError, match="custom budget needs"):
        rules.class_budget("custom")
    with pytest.raises(ValueError, match="unknown budget class"):
        rules.class_budget("platinum")
    assert rules.dropin_window(local(2026, 12, 2, 15, 20), STHLM) == (local(2026, 12, 2, 15), local(2026, 12, 3, 9))
    # 4 GPUs for 3.5 days = 2 GPU-weeks; the part before `since` does not count
    assert rules.gpu_weeks(4, local(2026, 12, 3, 9), local(2026, 12, 7, 9)) == pytest.approx(16 / 7)
    assert rules.gpu_weeks(4, local(2026, 12, 3, 9), local(2026, 12, 7, 9), since=local(2026, 12, 8)) == 0


# -- the hub -----------------------------------------------------------------------------------
MACHINES = {"dgx2": {"gpus": 16, "slurm_license": LICENSE}, "node2": {"gpus": 4}}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"compute": ComputeSettings.model_validate({"machines": MACHINES})})


def principal_of(session, user_id: uuid.UUID) -> Principal:
    user = session.get(User, user_id)
    return Principal(user=user, via="token", mfa_at=dt.datetime.now(dt.UTC), scopes=frozenset(SCOPES),
                     credential_id="test")


@pytest.fixture
def lab(hub, people):
    """Project "lung" (PI alice, member bob) and "brain" (PI carol); dave is an operator."""
    ppl = {n: people(n, admin=n == "dave") for n in ("alice", "bob", "carol", "dave")}
    make_project(hub, "lung", "alice")
    make_project(hub, "brain", "carol")
    with transaction(hub.sessions) as s:
        lung = projects.open_project(s, principal_of(s, ppl["alice"].user.id), "lung").project.id
        s.add(Membership(project_id=lung, user_id=ppl["bob"].user.id, role="member"))
    return ppl


def act(hub, person, slug: str, fn, *args, **kwargs):
    """Call a service function as ``person`` in project ``slug``, in one transaction."""
    with transaction(hub.sessions) as s:
        p = principal_of(s, person.user.id)
        return fn(s, p, projects.open_project(s, p, slug), *args, **kwargs)


def book(hub, person, slug: str, cs: ComputeSettings, **kwargs) -> Booking:
    return act(hub, person, slug, lambda s, p, a: service.book(s, cs, p, a, **kwargs))


def set_budget(hub, operator, slug: str, klass: str, gpu_weeks: float | None = None) -> None:
    with transaction(hub.sessions) as s:
        service.set_budget(s, principal_of(s, operator.user.id), slug, klass=klass, gpu_weeks=gpu_weeks,
                           period_start=dt.date(2026, 1, 1))


NOW = local(2026, 12, 2, 10, 30)  # Wednesday morning


def test_budget_classes_past_bookings_never_count(hub, lab) -> None:
    cs = hub.settings.compute
    for klass, amount in (("network_partner", 8), ("fellowship", 16), ("custom", 12.5), ("project", 32)):
        set_budget(hub, lab["dave"], "lung", klass, 12.5 if klass == "custom" else None)
        with hub.sessions() as s:
            assert service.budget(s, _project(s, "lung"), NOW).view.budget == amount
    with hub.sessions() as s:  # audited with what it was before
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "compute.budget.set")
                       .order_by(AuditEvent.seq)).all()
        assert [e.details["class"] for e in ev] == ["network_partner", "fellowship", "custom", "project"]
        assert ev[-1].details["before"] == {"class": "custom", "gpu_weeks": 12.5}
    b = book(hub, lab["bob"], "lung", cs, machine="dgx2", gpus=4, weeks=2, now=NOW)
    assert (b.start_at, b.end_at) == (local(2026, 12, 2, 10), local(2026, 12, 14, 9))
    weeks = 4 * (b.end_at - NOW) / dt.timedelta(weeks=1)
    with hub.sessions() as s:
        lung = _project(s, "lung")
        v = service.budget(s, lung, NOW).view
        assert v.used == pytest.approx(weeks, abs=1e-3) and v.remaining == pytest.approx(32 - weeks, abs=1e-3)
        half = NOW + dt.timedelta(days=6)  # a week later only the rest counts
        assert service.budget(s, lung, half).view.used == pytest.approx(4 * (b.end_at - half) / dt.timedelta(weeks=1),
                                                                        abs=1e-3)
        after = b.end_at + dt.timedelta(hours=1)  # over: nothing counts, the whole booking shows as used
        later = service.budget(s, lung, after).view
        assert later.used == 0 and later.remaining == 32
        assert later.past == pytest.approx(4 * (b.end_at - b.start_at) / dt.timedelta(weeks=1), abs=1e-3)
        # the fees capability meters GPU-weeks from here
        assert service.gpu_weeks_booked(s, lung, local(2026, 12, 1), local(2027, 1, 1)) == pytest.approx(
            4 * (b.end_at - b.start_at) / dt.timedelta(weeks=1), abs=1e-3)
        assert service.gpu_weeks_booked(s, lung, local(2026, 12, 7, 9), local(2026, 12, 14, 9)) == 4
        # ... as the hooked meter, per day: the days add up to the booking, exactly (whole hours)
        from fractions import Fraction

        from strongroom.compute.metering import gpu_week_meter
        from strongroom.fees import meters

        assert gpu_week_meter in meters.METERS  # registered by compute's includeme
        days = gpu_week_meter(s, lung, dt.date(2026, 12, 1), dt.date(2026, 12, 31))
        assert {u.item for u in days} == {"gpu-week"} and days[0].day == dt.date(2026, 12, 2)
        assert sum(u.quantity for u in days) == Fraction(4 * int((b.end_at - b.start_at).total_seconds()) // 3600, 168)


def _project(s, slug: str) -> uuid.UUID:
    from strongroom.projects.models import Project

    return s.scalar(select(Project.id).where(Project.slug == slug))


def test_earliest_slot_skips_taken_gpus_and_cancel_frees_them(hub, lab) -> None:
    cs = hub.settings.compute
    set_budget(hub, lab["dave"], "lung", "custom", 1000)
    set_budget(hub, lab["dave"], "brain", "custom", 1000)
    a = book(hub, lab["bob"], "lung", cs, machine="dgx2", gpus=12, weeks=1, now=NOW)
    b = book(hub, lab["carol"], "brain", cs, machine="dgx2", gpus=4, weeks=1, now=NOW)
    assert a.gpu_indices == ",".join(map(str, range(12))) and b.gpu_indices == "12,13,14,15"
    # the machine is full this week: the next booking starts when the first one ends (Monday 09:00)
    c = book(hub, lab["alice"], "lung", cs, machine="dgx2", gpus=8, weeks=1, now=NOW)
    assert c.start_at == local(2026, 12, 7, 9) and c.end_at == local(2026, 12, 14, 9)
    with pytest.raises(Conflict, match="only 0 GPUs"):  # no free capacity to drop in on
        act(hub, lab["bob"], "lung", lambda s, p, acc: service.dropin(s, cs, p, acc, machine="dgx2", gpus=1, now=NOW))
    # carol cancels her coming booking before it started... she may not cancel lung's
    with pytest.raises(NotFound):
        act(hub, lab["carol"], "lung", lambda s, p, acc: service.cancel(s, cs, p, acc, a.id, now=NOW))
    before = NOW - dt.timedelta(hours=2)  # carol cancels at 08:30, before her booking starts
    cancelled = act(hub, lab["carol"], "brain", lambda s, p, acc: service.cancel(s, cs, p, acc, b.id, now=before))
    assert cancelled.state == CANCELLED
    d = act(hub, lab["bob"], "lung", lambda s, p, acc: service.dropin(s, cs, p, acc, machine="dgx2", gpus=4, now=NOW))
    assert d.gpu_indices == "12,13,14,15" and d.end_at == local(2026, 12, 3, 9)
    # a started booking cancelled is cut short to now; its remaining hours are free again
    cut = NOW + dt.timedelta(days=1, minutes=17)
    ended = act(hub, lab["alice"], "lung", lambda s, p, acc: service.cancel(s, cs, p, acc, a.id, now=cut))
    assert ended.state == ACTIVE and ended.end_at == cut
    with hub.sessions() as s:
        last = s.scalar(select(func.max(GpuSlot.hour)).where(GpuSlot.booking_id == a.id))
        assert last * 3600 < cut.timestamp()  # hours since the epoch
        assert service.gpu_weeks_booked(s, _project(s, "brain"), NOW, NOW + dt.timedelta(weeks=4)) == 0
    e = book(hub, lab["carol"], "brain", cs, machine="dgx2", gpus=12, weeks=1, now=cut + dt.timedelta(minutes=5))
    assert e.start_at == local(2026, 12, 4, 9)  # Thursday is still partly held: Friday 09:00
    # the calendar: lung sees its own names, brain's as "booked"; free GPUs counted per day
    with hub.sessions() as s:
        p = principal_of(s, lab["bob"].user.id)
        grid = {g.machine: g for g in service.calendar(s, cs, projects.open_project(s, p, "lung"),
                                                        week_of=dt.date(2026, 12, 2))}["dgx2"]
        wednesday = 2
        assert grid.rows[0][wednesday].label == "Bob" and grid.rows[0][wednesday].booking_id == a.id
        assert grid.rows[12][wednesday].label == "Bob"  # the drop-in
        assert grid.rows[0][4].label == "booked" and grid.rows[0][4].booking_id is None  # brain's, Friday
        assert grid.free[5] == 4  # Saturday: brain holds 12
        assert all(g.free == [4] * 7 for g in service.calendar(s, cs, None, week_of=dt.date(2026, 12, 2))
                   if g.machine == "node2")


def test_over_budget_refused_or_allowed_with_the_pi_told(hub, lab) -> None:
    refuse = hub.settings.compute
    allow = refuse.model_copy(update={"over_budget": "allow_and_notify"})
    set_budget(hub, lab["dave"], "lung", "network_partner")  # 8 GPU-weeks
    with pytest.raises(Conflict, match="over budget"):
        book(hub, lab["bob"], "lung", refuse, machine="dgx2", gpus=4, weeks=3, now=NOW)
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 0
    ok = book(hub, lab["bob"], "lung", refuse, machine="dgx2", gpus=4, weeks=1, now=NOW)  # ~2.8 GPU-weeks
    assert not ok.over_budget
    red = book(hub, lab["bob"], "lung", allow, machine="dgx2", gpus=4, weeks=3, now=NOW)
    assert red.over_budget
    with hub.sessions() as s:
        mails = [j.payload for j in s.scalars(select(Job).where(Job.kind == "notify.email"))]
        assert [(m["to"], m["template"]) for m in mails] == [("alice@example.org", "compute_over_budget")]
        assert mails[0]["context"]["booking_id"] == red.id and mails[0]["context"]["budget"] == 8
        assert service.budget(s, _project(s, "lung"), NOW).view.over
    # drop-ins never count, so they are never over budget
    d = act(hub, lab["bob"], "lung", lambda s, p, a: service.dropin(s, allow, p, a, machine="node2", gpus=4, now=NOW))
    assert not d.over_budget


def test_two_people_booking_the_same_gpus_exactly_one_wins(hub, lab, database_url) -> None:
    """Both see all 16 GPUs free (the proposals are made first), then both insert: the unique slot rows let
    exactly one commit; the other is refused, whatever it saw."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the race is run on PostgreSQL (SQLite serialises writers)")
    cs = hub.settings.compute
    set_budget(hub, lab["dave"], "lung", "project")
    set_budget(hub, lab["dave"], "brain", "project")
    barrier, results = threading.Barrier(2), {}

    def race(who: str, slug: str) -> None:
        try:
            with transaction(hub.sessions) as s:
                p = principal_of(s, lab[who].user.id)
                access = projects.open_project(s, p, slug)
                proposal = service.propose(s, cs, access.project.id, machine="dgx2", gpus=16, weeks=1, now=NOW)
                barrier.wait(timeout=30)
                b = service._create(s, cs, p, access, proposal, kind="booking", note="", counts=True)
                results[who] = b.id
        except Conflict as exc:
            results[who] = exc

    threads = [threading.Thread(target=race, args=a) for a in (("bob", "lung"), ("carol", "brain"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(type(r).__name__ for r in results.values()) == ["Conflict", "int"], results
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Booking)) == 1
        assert s.scalar(select(func.count()).select_from(GpuSlot)) == 16 * len(rules.hour_units(
            local(2026, 12, 2, 10), local(2026, 12, 7, 9)))


def test_bad_input_and_outsiders(hub, lab, client) -> None:
    cs = hub.settings.compute
    for kwargs, said in (({"machine": "cray", "gpus": 1, "weeks": 1}, "no machine 'cray'"),
                         ({"machine": "node2", "gpus": 5, "weeks": 1}, "node2 has 4 GPUs"),
                         ({"machine": "dgx2", "gpus": 1, "weeks": 13}, "1 to 12 weeks")):
        with pytest.raises(Invalid, match=said):
            book(hub, lab["bob"], "lung", cs, now=NOW, **kwargs)
    set_budget(hub, lab["dave"], "lung", "project")
    now = dt.datetime.now(dt.UTC)
    b = book(hub, lab["bob"], "lung", cs, machine="node2", gpus=2, weeks=1, now=now)
    bob, carol, dave = (bearer(token_for(hub, lab[n])) for n in ("bob", "carol", "dave"))
    assert client.get("/api/v1/compute/projects/lung/budget", headers=bob).json()["klass"] == "project"
    # carol (another project) and dave (an operator, no member) see no lung: 404, not 403
    for h in (carol, dave):
        for url in ("/api/v1/compute/projects/lung/budget", "/api/v1/compute/projects/lung/bookings",
                    "/api/v1/compute/projects/lung/calendar"):
            assert client.get(url, headers=h).status_code == 404, url
    assert client.delete(f"/api/v1/compute/projects/brain/bookings/{b.id}", headers=carol).status_code == 404
    assert client.delete(f"/api/v1/compute/projects/lung/bookings/{b.id}", headers=carol).status_code == 404
    # only an operator sets budgets; to others the route does not exist
    body = {"klass": "fellowship", "period_start": "2026-01-01"}
    assert client.put("/api/v1/compute/projects/lung/budget", json=body, headers=bob).status_code in (403, 404)
    r = client.put("/api/v1/compute/projects/lung/budget", json=body, headers=dave)
    assert r.status_code == 200 and r.json()["budget"] == 16
    assert client.put("/api/v1/compute/projects/lung/budget", json={**body, "klass": "custom"},
                      headers=dave).status_code == 422
    # the API books, lists and cancels; the calendar shows the booking
    r = client.post("/api/v1/compute/projects/lung/bookings", json={"machine": "node2", "gpus": 2, "weeks": 1},
                    headers=bob)
    assert r.status_code == 201 and r.json()["gpu_indices"] == "2,3" and r.json()["reservation_state"] == \
        "not configured"
    assert client.post("/api/v1/compute/projects/lung/bookings", json={"machine": "node2", "gpus": 5},
                       headers=bob).status_code == 422
    assert len(client.get("/api/v1/compute/projects/lung/bookings", headers=bob).json()) == 2
    r = client.delete(f"/api/v1/compute/projects/lung/bookings/{b.id}", headers=bob)
    assert r.status_code == 200
    assert client.get("/api/v1/compute/projects/lung/proposal", params={"machine": "node2", "gpus": 2},
                      headers=bob).json()["gpu_indices"] == [0, 1]
    grids = client.get("/api/v1/compute/projects/lung/calendar", headers=bob).json()
    assert {g["machine"] for g in grids} == {"dgx2", "node2"}
    assert "/api/v1/compute/projects/{slug}/bookings" in client.get("/openapi.json").json()["paths"]
    assert client.post("/api/v1/compute/drift", headers=dave).json()["configured"] is False


# -- the Slurm adapter ----------------------------------------------------------------------------
def test_reservation_commands() -> None:
    """Licence form (Slurm 22.05) and GRES form (Slurm ≥ 23.02) of the same reservation."""
    s = SlurmScheduler({"dgx2": SlurmMachine("dgx2", "dgx2", "dgx2_gpu"), "n": SlurmMachine("n", "gpu[01-02]", "")})
    r = Reservation("sr-7", dt.datetime(2026, 12, 2, 9, tzinfo=dt.UTC), dt.datetime(2026, 12, 7, 8, tzinfo=dt.UTC),
                    ("alice", "bob"), 4, "dgx2")
    args = s.create_args(r)
    assert args[:3] == ["create", "reservation", "ReservationName=sr-7"]
    assert args[-3:] == ["Users=alice,bob", "Licenses=dgx2_gpu:4", "Flags=LICENSE_ONLY"]
    assert s.create_args(Reservation(**{**r.__dict__, "machine": "n"}))[-2:] == ["Nodes=gpu[01-02]",
                                                                                 "TRES=gres/gpu=4"]
    assert "Flags=LICENSE_ONLY" not in s.update_args(r) and not any(
        a.startswith("StartTime=") for a in s.update_args(r, move_start=False))
    line = ("ReservationName=sr-7 StartTime=2026-12-02T10:00:00 EndTime=2026-12-07T09:00:00 Duration=4-23:00:00 "
            "Nodes=(null) NodeCnt=0 Flags=ANY_NODES TRES=(null) Users=alice,bob Licenses=dgx2_gpu:4 State=INACTIVE")
    parsed = s.parse(line)
    assert parsed is not None and (parsed.machine, parsed.gpus, parsed.users) == ("dgx2", 4, ("alice", "bob"))
    assert s.parse(line.replace("sr-7", "maintenance")) is None  # not ours: never touched


@pytest.mark.slow
def test_reservations_on_a_real_slurm(hub, people, slurm) -> None:  # noqa: F811
    """Bookings become reservations on slurmctld; cancel removes one, the drift check repairs the rest."""
    cs = ComputeSettings.model_validate({**hub.settings.compute.model_dump(),
                                         "slurm": {"enabled": True, "slurm_conf": slurm.conf}})
    pi, member = people("daemon"), people("bin")
    make_project(hub, "dgx", "daemon")
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=_project(s, "dgx"), user_id=member.user.id, role="member"))
        for person in (pi, member):  # the operator maps each to a cluster account that exists on this machine
            set_cluster_account(s, Actor.system("test"), s.get(User, person.user.id), person.username)
    admin = people("root", admin=True)
    with transaction(hub.sessions) as s:
        service.set_budget(s, principal_of(s, admin.user.id), "dgx", klass="custom", gpu_weeks=1000,
                           period_start=dt.date.today())
    now = dt.datetime.now(dt.UTC)
    a = book(hub, member, "dgx", cs, machine="dgx2", gpus=4, weeks=1, now=now)
    b = book(hub, pi, "dgx", cs, machine="dgx2", gpus=12, weeks=2, now=now)
    assert a.reservation_state == "pending"
    scheduler = service.scheduler_for(cs)
    with transaction(hub.sessions) as s:  # what the compute.sync jobs of the two bookings do
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == service.SYNC_JOB)) == 2
        for booking in (a, b):
            report = service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), booking_id=booking.id)
            assert report.created == [f"sr-{booking.id}"] and not report.failed, report
    shown = {r.name: r for r in scheduler.list()}
    assert shown[f"sr-{a.id}"].gpus == 4 and shown[f"sr-{b.id}"].gpus == 12
    assert shown[f"sr-{a.id}"].users == ("bin", "daemon") and shown[f"sr-{b.id}"].end == b.end_at
    raw = slurm.scontrol("-o", "show", "reservation", f"sr-{a.id}")
    assert f"Licenses={LICENSE}:4" in raw and "Users=bin,daemon" in raw
    # Slurm itself refuses a 17th GPU: the licence is the machine's GPU count
    t0 = max(a.start_at, dt.datetime.now(dt.UTC)) + dt.timedelta(minutes=10)  # while both hold their GPUs
    with pytest.raises(RuntimeError, match="license"):
        slurm.scontrol("create", "reservation", "ReservationName=sr-999999", f"StartTime={_stamp(t0)}",
                       f"EndTime={_stamp(t0 + dt.timedelta(hours=1))}", "Users=daemon", f"Licenses={LICENSE}:1",
                       "Flags=LICENSE_ONLY")
    # drift: someone deletes one, shortens another and adds a stray sr-* by hand; the check reports, then repairs
    slurm.scontrol("delete", f"ReservationName=sr-{a.id}")
    slurm.scontrol("update", f"ReservationName=sr-{b.id}", f"EndTime={_stamp(b.end_at - dt.timedelta(days=1))}")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    slurm.scontrol("create", "reservation", "ReservationName=sr-888888", f"StartTime={_stamp(future)}",
                   f"EndTime={_stamp(future + dt.timedelta(days=1))}", "Users=daemon", f"Licenses={LICENSE}:1",
                   "Flags=LICENSE_ONLY")
    with transaction(hub.sessions) as s:
        seen = service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), repair=False)
    assert (seen.created, seen.updated, seen.deleted) == ([f"sr-{a.id}"], [f"sr-{b.id}"], ["sr-888888"])
    with transaction(hub.sessions) as s:
        fixed = service.sync(s, scheduler, now=dt.datetime.now(dt.UTC))
    assert not fixed.failed, fixed
    shown = {r.name: r for r in scheduler.list()}
    assert set(shown) == {f"sr-{a.id}", f"sr-{b.id}"} and shown[f"sr-{b.id}"].end == b.end_at
    with transaction(hub.sessions) as s:
        assert service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), repair=False).as_dict() == {
            "created": [], "updated": [], "deleted": [], "failed": {}}
    # a member who leaves leaves the reservations at once: the removal queues each current booking's sync job
    # (before, only the drift check ten minutes later took them out); a cancel removes one
    with transaction(hub.sessions) as s:
        s.execute(Job.__table__.delete().where(Job.kind == service.SYNC_JOB))
        p = principal_of(s, pi.user.id)
        projects.remove_member(s, p, projects.open_project(s, p, "dgx"), member.user.id)
    with transaction(hub.sessions) as s:
        queued = s.scalars(select(Job).where(Job.kind == service.SYNC_JOB)).all()
        assert sorted(j.payload["booking_id"] for j in queued) == [a.id, b.id]
        for booking in (a, b):  # what those jobs do
            report = service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), booking_id=booking.id)
            assert report.updated == [f"sr-{booking.id}"], report
    assert {r.users for r in scheduler.list()} == {("daemon",)}
    # so does a deactivated account, from every project it is in (identity's CREDENTIAL_REVOKERS)
    with transaction(hub.sessions) as s:
        s.add(Membership(project_id=_project(s, "dgx"), user_id=member.user.id, role="member"))
    with transaction(hub.sessions) as s:
        s.execute(Job.__table__.delete().where(Job.kind == service.SYNC_JOB))
        identity_service.deactivate_user(s, Actor.system("test"), s.get(User, member.user.id))
    with transaction(hub.sessions) as s:
        queued = s.scalars(select(Job).where(Job.kind == service.SYNC_JOB)).all()
        assert sorted(j.payload["booking_id"] for j in queued) == [a.id, b.id]
        for booking in (a, b):
            assert service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), booking_id=booking.id).updated == []
    with transaction(hub.sessions) as s:
        p = principal_of(s, pi.user.id)
        service.cancel(s, cs, p, projects.open_project(s, p, "dgx"), b.id, now=dt.datetime.now(dt.UTC))
    with transaction(hub.sessions) as s:
        report = service.sync(s, scheduler, now=dt.datetime.now(dt.UTC), booking_id=b.id)
    assert report.deleted == [f"sr-{b.id}"]
    assert {r.name for r in scheduler.list()} == {f"sr-{a.id}"}
    with hub.sessions() as s:
        assert s.get(Booking, b.id).reservation_state == "removed"
        assert s.get(Booking, a.id).reservation_state == "reserved"
    slurm.scontrol("delete", f"ReservationName=sr-{a.id}")  # the session's Slurm is shared


def _stamp(value: dt.datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def test_cli_books_lists_shows_and_cancels(app, hub, lab, tmp_path) -> None:
    """`strongroom compute …` over the API of a served hub, with a member's token."""
    from typer.testing import CliRunner

    from strongroom.compute.cli import app as compute_cli
    from support.live import free_port, serving

    set_budget(hub, lab["dave"], "lung", "fellowship")
    env = {"STRONGROOM_TOKEN": token_for(hub, lab["bob"]), "STRONGROOM_CLI_CONFIG": str(tmp_path / "cli.json"),
           "COLUMNS": "200"}
    runner = CliRunner()
    with serving(app, free_port()) as url:
        env["STRONGROOM_URL"] = url

        def cli(*args: str):
            return runner.invoke(compute_cli, list(args), env=env)

        r = cli("book", "-p", "lung", "--machine", "node2", "--gpus", "2", "--weeks", "1")
        assert r.exit_code == 0 and "2 GPUs on node2 (0,1)" in r.output and "not configured" in r.output, r.output
        booking = re.search(r"booking (\d+):", r.output).group(1)
        r = cli("list", "-p", "lung")
        assert r.exit_code == 0 and "node2" in r.output and f"sr-{booking}" in r.output, r.output
        r = cli("calendar", "-p", "lung")
        assert r.exit_code == 0 and "node2 (4 GPUs)" in r.output and "Bob" in r.output, r.output
        r = cli("budget", "-p", "lung")
        assert r.exit_code == 0 and "fellowship, 16 GPU-weeks" in r.output, r.output
        r = cli("book", "-p", "lung", "--machine", "node2", "--gpus", "9")
        assert r.exit_code == 1 and "node2 has 4 GPUs" in r.output, r.output
        r = cli("cancel", "-p", "lung", booking)
        assert r.exit_code == 0 and f"booking {booking}" in r.output, r.output
        assert cli("budget", "-p", "brain").exit_code == 1  # not bob's project: 404
