"""Fees and statements (issue 12): a seeded year with hand-computed totals, CSV and PDF read back, the
two-person rule on waivers, issuing with credit notes, and who sees which statement."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from decimal import Decimal
from fractions import Fraction

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from conftest import web_client
from helpers import csrf_for
from strongroom.archive.models import READY, ArchiveFile
from strongroom.audit.models import AuditEvent
from strongroom.audit.service import Actor
from strongroom.db import transaction, utcnow
from strongroom.errors import Conflict, Forbidden, Invalid, NotFound
from strongroom.fees import meters, pricing, service
from strongroom.fees.models import IssuedStatement, StorageDay
from strongroom.identity.models import User
from strongroom.identity.principal import SCOPES, Principal
from strongroom.projects import service as projects
from strongroom.projects.models import Membership

SYS = Actor.system("test")
TB = 1000**4
D = dt.date


def principal(session, person) -> Principal:
    return Principal(user=session.get(User, person.user.id), via="session", mfa_at=utcnow(),
                     scopes=frozenset(SCOPES), credential_id="test")


def seed_year(hub, people) -> dict[str, object]:
    """The year 2025 (365 days) of one customer with two projects.

    chest: membership all year; 3 TB backed-up storage from 1 July (mid-year); 1 GPU 1 Oct-31 Dec; archive
           1.5 TB from 1 Jan (inside the included 2 TB), 5 TB from 1 Mar, 2.5 TB from 1 Nov.
    brain: membership from 1 April (mid-year); 2 CPUs 1 Apr-30 Sep; archive 3 TB from 1 Feb (no membership
           before April: all 3 TB charged), then 1 TB over the included 2 TB.
    A data-sharing waiver: brain's membership at 50 % from 1 July. A discount: 5 000 SEK over the year on the
    customer's memberships (spread by day, the first project in order taking it on a day it has a membership).
    """
    ppl = {name: people(name, admin=name in ("olle", "otto")) for name in ("pia", "bo", "memo", "olle", "otto")}
    end = dt.date.today() + dt.timedelta(days=1000)
    with transaction(hub.sessions) as s:
        chest = projects.create_project(s, SYS, slug="chest", name="Chest CT", pi="pia", ethics_ref="E1",
                                        end_date=end)
        brain = projects.create_project(s, SYS, slug="brain", name="Brain MR", pi="bo", ethics_ref="E2",
                                        end_date=end)
        s.add(Membership(project_id=chest.id, user_id=ppl["memo"].user.id, role="member", delegated_rights=[]))
        service.create_customer(s, SYS, name="Region Uppsala", org_number="232100-0024", invoice_ref="FoU 4711")
        for slug in ("chest", "brain"):
            service.bill_project_to(s, SYS, slug=slug, customer="Region Uppsala")
        service.subscribe(s, SYS, slug="chest", item="membership", start=D(2025, 1, 1))
        service.subscribe(s, SYS, slug="chest", item="backup-storage", quantity="3", start=D(2025, 7, 1))
        service.subscribe(s, SYS, slug="chest", item="gpu", quantity="1", start=D(2025, 10, 1), end=D(2025, 12, 31))
        service.subscribe(s, SYS, slug="brain", item="membership", start=D(2025, 4, 1))
        service.subscribe(s, SYS, slug="brain", item="cpu", quantity="2", start=D(2025, 4, 1), end=D(2025, 9, 30))
        for project, day, size in ((chest, D(2025, 1, 1), 1.5 * TB), (chest, D(2025, 3, 1), 5 * TB),
                                   (chest, D(2025, 11, 1), 2.5 * TB), (brain, D(2025, 2, 1), 3 * TB)):
            s.add(StorageDay(day=day, project_id=project.id, storage_class="project", bytes=int(size)))
        olle, otto = principal(s, ppl["olle"]), principal(s, ppl["otto"])
        waiver = service.request_waiver(s, olle, kind="waiver", category="data-sharing", project="brain",
                                        item="membership", percent="50", reason="shares its cohort openly",
                                        valid_from=D(2025, 7, 1), valid_to=D(2025, 12, 31))
        service.decide_waiver(s, otto, waiver.id, approve=True)
        discount = service.request_waiver(s, otto, kind="discount", category="co-funding", customer="Region Uppsala",
                                          item="membership", amount="5000", reason="co-funds the GPU server",
                                          valid_from=D(2025, 1, 1), valid_to=D(2025, 12, 31))
        service.decide_waiver(s, olle, discount.id, approve=True)
        ids = {"chest": chest.id, "brain": brain.id, "customer": service.find_customer(s, "Region Uppsala").id}
    return {"people": ppl, "ids": ids}


# Hand-computed, 2025 has 365 days; each line rounded to öre (half up), totals are sums of lines.
CHEST_2025 = {
    ("charge", "membership"): Decimal("50000.00"),  # 365 days x 50 000 / 365
    ("charge", "backup-storage"): Decimal("3780.82"),  # 3 TB x 184 days (1 Jul-31 Dec) x 2 500 / 365 = 3780.8219
    ("charge", "gpu"): Decimal("20164.38"),  # 92 days (1 Oct-31 Dec) x 80 000 / 365 = 20164.3836
    # (5 - 2) TB x 245 days (1 Mar-31 Oct) + (2.5 - 2) TB x 61 days = 765.5 TB-days x 1 500 / 365 = 3145.8904
    ("charge", "project-storage"): Decimal("3145.89"),
    ("discount", "membership"): Decimal("-1232.88"),  # 5 000 x 90 days (1 Jan-31 Mar: brain has no membership) / 365
}
BRAIN_2025 = {
    ("charge", "membership"): Decimal("37671.23"),  # 275 days (1 Apr-31 Dec) x 50 000 / 365 = 37671.2329
    ("charge", "cpu"): Decimal("24065.75"),  # 2 CPUs x 183 days (1 Apr-30 Sep) x 24 000 / 365 = 24065.7534
    # 3 TB x 59 days (1 Feb-31 Mar) + 1 TB x 275 days = 452 TB-days x 1 500 / 365 = 1857.5342
    ("charge", "project-storage"): Decimal("1857.53"),
    ("waiver", "membership"): Decimal("-12602.74"),  # 50 % x 184 days x 50 000 / 365 = 12602.7397
    ("discount", "membership"): Decimal("-3767.12"),  # 5 000 x 275 days / 365 = 3767.1233
}
CHEST_TOTAL = Decimal("75858.21")  # 77 091.09 - 1 232.88
BRAIN_TOTAL = Decimal("47224.65")  # 63 594.51 - 12 602.74 - 3 767.12
CUSTOMER_TOTAL = Decimal("123082.86")


def by_item(st: pricing.Statement) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for x in st.lines:
        out[(x.kind, x.item)] = out.get((x.kind, x.item), Decimal(0)) + x.amount
    return out


def test_seeded_year_matches_hand_computed_totals(hub, people):
    seeded = seed_year(hub, people)
    start, end = pricing.period("2025")
    with transaction(hub.sessions) as s:
        olle = principal(s, seeded["people"]["olle"])
        chest = service.compute(s, service.project_subject(s, olle, "chest"), start, end)
        brain = service.compute(s, service.project_subject(s, olle, "brain"), start, end)
        customer = service.compute(s, service.customer_subject(s, olle, "Region Uppsala"), start, end)
        july = service.compute(s, service.project_subject(s, olle, "chest"), *pricing.period("2025-07"))
    assert by_item(chest) == CHEST_2025
    assert by_item(brain) == BRAIN_2025
    assert (chest.total, brain.total, customer.total) == (CHEST_TOTAL, BRAIN_TOTAL, CUSTOMER_TOTAL)
    assert chest.subtotal == Decimal("77091.09") and brain.subtotal == Decimal("63594.51")
    quantities = {x.item: (x.quantity, x.unit) for x in chest.lines if x.kind == "charge"}
    assert quantities["project-storage"] == (Decimal("765.5"), "TB-day")
    assert quantities["backup-storage"] == (Decimal("552"), "TB-day")  # 3 TB x 184 days
    # July, chest: membership 31 x 50 000 / 365 = 4246.58; backup 3 x 31 x 2 500 / 365 = 636.99;
    # storage 3 TB x 31 x 1 500 / 365 = 382.19; no discount (brain takes July's)
    assert by_item(july) == {("charge", "membership"): Decimal("4246.58"),
                             ("charge", "backup-storage"): Decimal("636.99"),
                             ("charge", "project-storage"): Decimal("382.19")}
    assert july.total == Decimal("5265.76")
    # the twelve months add up to the year within the öre of each month's rounding
    with transaction(hub.sessions) as s:
        olle = principal(s, seeded["people"]["olle"])
        months = sum((service.compute(s, service.project_subject(s, olle, "chest"), *pricing.period(f"2025-{m:02}"))
                      .total for m in range(1, 13)), Decimal(0))
    assert abs(months - CHEST_TOTAL) <= Decimal("0.12")


def test_csv_and_pdf_read_back(hub, app, people):
    seeded = seed_year(hub, people)
    pia = web_client(app, hub, seeded["people"]["pia"])
    r = pia.get("/projects/chest/fees/2025.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    lines, total = rows[:-1], rows[-1]
    assert total["kind"] == "total" and Decimal(total["amount_sek"]) == CHEST_TOTAL
    assert sum(Decimal(x["amount_sek"]) for x in lines) == CHEST_TOTAL
    assert {(x["kind"], x["item"]): Decimal(x["amount_sek"]) for x in lines} == CHEST_2025
    r = pia.get("/projects/chest/fees/2025.pdf")
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(r.content)).pages)
    assert "Total SEK (excluding VAT)" in text and "75 858,21" in text
    assert "Region Uppsala" in text and "77 091,09" in text and "-1 232,88" in text


def test_who_sees_which_statement(hub, app, people):
    seeded = seed_year(hub, people)
    ppl = seeded["people"]
    outsider = people("eve")
    pia, memo, eve, olle = (web_client(app, hub, p) for p in (ppl["pia"], ppl["memo"], outsider, ppl["olle"]))
    page = pia.get("/projects/chest/fees?period=2025")
    assert page.status_code == 200 and "75 858,21" in page.text and "Region Uppsala" in page.text
    for client in (memo, eve):  # a member who is not the PI, and someone outside the project
        assert client.get("/projects/chest/fees?period=2025").status_code == 404
        assert client.get("/projects/chest/fees/2025.csv").status_code == 404
    assert pia.get("/projects/brain/fees").status_code == 404  # not her project
    customer = seeded["ids"]["customer"]
    assert pia.get(f"/fees/customers/{customer}").status_code == 404
    assert pia.get("/fees").status_code == 404
    r = olle.get(f"/fees/customers/{customer}?period=2025")
    assert r.status_code == 200 and "123 082,86" in r.text
    assert olle.get("/projects/brain/fees?period=2025").status_code == 200
    assert olle.get("/fees").status_code == 200
    assert olle.get("/projects/chest/fees?period=2025x").status_code == 422


def test_waivers_need_a_second_operator(hub, people):
    seeded = seed_year(hub, people)
    ppl = seeded["people"]
    with transaction(hub.sessions) as s:
        olle, pia = principal(s, ppl["olle"]), principal(s, ppl["pia"])
        w = service.request_waiver(s, olle, kind="discount", category="other", project="chest", percent="10",
                                   reason="pilot", valid_from=D(2025, 1, 1), valid_to=D(2025, 1, 31))
        with pytest.raises(Forbidden, match="second operator"):
            service.decide_waiver(s, olle, w.id, approve=True)
        with pytest.raises(NotFound):  # a PI is no operator
            service.decide_waiver(s, pia, w.id, approve=True)
        with pytest.raises(Invalid, match="either a percentage or an amount"):
            service.request_waiver(s, olle, kind="waiver", category="other", project="chest", percent="10",
                                   amount="100", reason="x", valid_from=D(2025, 1, 1), valid_to=D(2025, 1, 2))
        wid = w.id
    with transaction(hub.sessions) as s:  # not yet approved: January is charged in full
        olle = principal(s, ppl["olle"])
        jan = service.compute(s, service.project_subject(s, olle, "chest"), *pricing.period("2025-01"))
        assert not [x for x in jan.lines if x.item == "membership" and x.kind == "discount" and "pilot" in
                    x.description]
    with transaction(hub.sessions) as s:
        service.decide_waiver(s, principal(s, ppl["otto"]), wid, approve=True, note="agreed")
        with pytest.raises(Conflict):
            service.decide_waiver(s, principal(s, ppl["otto"]), wid, approve=False)
    with transaction(hub.sessions) as s:
        olle = principal(s, ppl["olle"])
        jan2 = service.compute(s, service.project_subject(s, olle, "chest"), *pricing.period("2025-01"))
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.target == f"waiver:{wid}")
                                               .order_by(AuditEvent.seq))]
    # 10 % of January after the year's discount: membership 4 246.58 - 424.66 (of 31 x 136.99) ...
    pilot = sum(x.amount for x in jan2.lines if "pilot" in x.description)
    assert pilot < 0 and jan2.total == jan.total + pilot
    assert actions == ["fees.waiver.requested", "fees.waiver.approved"]


def test_issue_freezes_and_corrections_credit(hub, people):
    seeded = seed_year(hub, people)
    ppl = seeded["people"]
    start, end = pricing.period("2025")
    with transaction(hub.sessions) as s:
        olle = principal(s, ppl["olle"])
        subject = service.project_subject(s, olle, "chest")
        [v1] = service.issue(s, olle, subject, start, end)
        assert (v1.number, v1.total) == ("ST-chest-2025-v1", CHEST_TOTAL)
        with pytest.raises(Conflict, match="nothing changed"):
            service.issue(s, olle, subject, start, end)
        with pytest.raises(Invalid, match="ended"):
            service.issue(s, olle, subject, dt.date(utcnow().year, 1, 1), dt.date(utcnow().year, 12, 31))
    with transaction(hub.sessions) as s:  # a correction: the GPU ended on 30 November
        sub = next(x for x in service.subscriptions(s, [seeded["ids"]["chest"]]) if x.item == "gpu")
        service.end_subscription(s, SYS, sub.id, D(2025, 11, 30))
        olle = principal(s, ppl["olle"])
        credit, v2 = service.issue(s, olle, service.project_subject(s, olle, "chest"), start, end)
    # 61 days of GPU instead of 92: 80 000 x 61 / 365 = 13369.86 instead of 20164.38
    assert (credit.number, credit.kind, credit.total) == ("CN-chest-2025-v1", "credit-note", -CHEST_TOTAL)
    assert (v2.number, v2.total) == ("ST-chest-2025-v2", CHEST_TOTAL - Decimal("20164.38") + Decimal("13369.86"))
    with transaction(hub.sessions) as s:
        olle = principal(s, ppl["olle"])
        stored = service.issued_statement(s, olle, "ST-chest-2025-v1")
        assert service.frozen(stored).total == CHEST_TOTAL  # the first version stays as issued
        assert service.issued_statement(s, principal(s, ppl["pia"]), "ST-chest-2025-v2").total == v2.total
        with pytest.raises(NotFound):
            service.issued_statement(s, principal(s, ppl["memo"]), "ST-chest-2025-v2")
        row = s.scalar(select(IssuedStatement).where(IssuedStatement.number == "ST-chest-2025-v1"))
        row.lines = [{**row.lines[0], "amount": "1.00"}, *row.lines[1:]]  # tampering after issue
    with transaction(hub.sessions) as s, pytest.raises(Conflict, match="checksum"):
        service.issued_statement(s, principal(s, ppl["olle"]), "ST-chest-2025-v1")


def test_gpu_week_meter_hook_and_storage_snapshot(hub, people, monkeypatch):
    seeded = seed_year(hub, people)
    chest_id = seeded["ids"]["chest"]

    def gpu_weeks(session, project_id, start, end):  # what compute's gpu_weeks_booked returns
        day = D(2025, 5, 5)
        return [pricing.Usage(str(project_id), "gpu-week", day, Fraction(2))] \
            if project_id == chest_id and start <= day <= end else []

    monkeypatch.setattr(meters, "METERS", [*meters.METERS, gpu_weeks])
    with transaction(hub.sessions) as s:
        olle = principal(s, seeded["people"]["olle"])
        may = service.compute(s, service.project_subject(s, olle, "chest"), *pricing.period("2025-05"))
    [line] = [x for x in may.lines if x.item == "gpu-week"]
    assert (line.quantity, line.unit_price, line.amount) == (Decimal(2), Decimal("1538.46"), Decimal("3076.92"))
    # the daily snapshot sums the project's archived (ready) bytes
    with transaction(hub.sessions) as s:
        for n, (state, size) in enumerate(((READY, 3 * TB), (READY, TB // 2), ("failed", 7 * TB))):
            s.add(ArchiveFile(id=f"SRF-T{n}", project_id=chest_id, uploader_id=seeded["people"]["pia"].user.id,
                              path=f"f{n}", state=state, upload_size=size, body_size=size))
        s.flush()
        assert service.snapshot_storage(s, D(2026, 1, 5)) == 1
        day = s.get(StorageDay, (D(2026, 1, 5), chest_id, "project"))
        assert day.bytes == 3 * TB + TB // 2


def test_price_list_versions(hub, people):
    seed_year(hub, people)
    with transaction(hub.sessions) as s:
        with pytest.raises(Invalid, match="starts after"):
            service.publish_price_list(s, SYS, effective_from=D(2024, 1, 1), prices={"membership": "55000"})
        with pytest.raises(Invalid, match="no item"):
            service.publish_price_list(s, SYS, effective_from=D(2025, 7, 1), prices={"lunch": "1"})
        service.publish_price_list(s, SYS, effective_from=D(2025, 7, 1), prices={"membership": "60000"})
        subject = service.customer_subject(s, None, "Region Uppsala")
        h2 = service.compute(s, service.Subject(f"project:{uuid.uuid4()}", "chest", "Chest CT",
                                                subject.projects[1:], None), *pricing.period("2025"))
    # chest's membership: 181 days x 50 000 / 365 + 184 days x 60 000 / 365 = 24794.52 + 30246.58
    membership = [x for x in h2.lines if x.item == "membership" and x.kind == "charge"]
    assert [(x.price_version, x.amount) for x in membership] == [(1, Decimal("24794.52")), (2, Decimal("30246.58"))]


def test_statement_page_issue_form(hub, app, people):
    seeded = seed_year(hub, people)
    olle = web_client(app, hub, seeded["people"]["olle"])
    r = olle.post("/fees/statements", data={"csrf_token": csrf_for(olle), "project": "chest", "period": "2025"},
                  follow_redirects=True)
    assert r.status_code == 200 and "Issued ST-chest-2025-v1." in r.text
    r = olle.get("/fees/statements/ST-chest-2025-v1.csv")
    assert Decimal(list(csv.DictReader(io.StringIO(r.text)))[-1]["amount_sek"]) == CHEST_TOTAL


def test_cli_customer_subscription_statement(hub, settings, people, tmp_path):
    from test_cli_and_ops import run_cli

    people("pia")
    with transaction(hub.sessions) as s:
        projects.create_project(s, SYS, slug="chest", name="Chest CT", pi="pia", ethics_ref="E1",
                                end_date=dt.date.today() + dt.timedelta(days=1000))
    for args in (("customer-add", "Region Uppsala", "--org-number", "232100-0024"),
                 ("bill", "chest", "--customer", "Region Uppsala"),
                 ("subscribe", "chest", "membership", "--start", "2025-01-01"),
                 ("subscribe", "chest", "cpu", "--quantity", "2", "--start", "2025-07-01", "--end", "2025-12-31")):
        r = run_cli(settings, "fees", *args)
        assert r.returncode == 0, r.stderr
    bad = run_cli(settings, "fees", "subscribe", "chest", "gpu-week", "--start", "2025-01-01")
    assert bad.returncode == 2 and "not subscribed to" in bad.stderr
    r = run_cli(settings, "fees", "statement", "2025", "--project", "chest")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    # 50 000 + 2 CPUs x 184 days x 24 000 / 365 = 24197.26
    assert Decimal(rows[-1]["amount_sek"]) == Decimal("74197.26")
    r = run_cli(settings, "fees", "statement", "2025", "--customer", "Region Uppsala", "--format", "pdf",
                "--issue", "--out", str(tmp_path / "s.pdf"))
    assert r.returncode == 0, r.stderr
    text = PdfReader(tmp_path / "s.pdf").pages[0].extract_text()
    assert "74 197,26" in text and "Statement ST-C" in text


def test_api_statement(hub, client, people):
    from conftest import bearer, token_for

    seeded = seed_year(hub, people)
    ppl = seeded["people"]
    r = client.get("/api/v1/projects/chest/fees/statement", params={"period": "2025"},
                   headers=bearer(token_for(hub, ppl["pia"])))
    assert r.status_code == 200, r.text
    body = r.json()
    assert Decimal(str(body["total"])) == CHEST_TOTAL and body["currency"] == "SEK"
    assert {(x["kind"], x["item"]): Decimal(str(x["amount"])) for x in body["lines"]} == CHEST_2025
    for who in ("memo", "bo"):
        assert client.get("/api/v1/projects/chest/fees/statement", params={"period": "2025"},
                          headers=bearer(token_for(hub, ppl[who]))).status_code == 404
    customer = seeded["ids"]["customer"]
    r = client.get(f"/api/v1/fees/customers/{customer}/statement", params={"period": "2025"},
                   headers=bearer(token_for(hub, ppl["olle"])))
    assert r.status_code == 200 and Decimal(str(r.json()["total"])) == CUSTOMER_TOTAL
    assert client.get(f"/api/v1/fees/customers/{customer}/statement", params={"period": "2025"},
                      headers=bearer(token_for(hub, ppl["pia"]))).status_code in (403, 404)
    assert client.get("/api/v1/projects/chest/fees/statement", params={"period": "25"},
                      headers=bearer(token_for(hub, ppl["pia"]))).status_code == 422


def test_forecast_for_the_rest_of_the_year(hub, people, monkeypatch):
    seeded = seed_year(hub, people)
    chest_id = seeded["ids"]["chest"]

    def gpu_weeks(session, project_id, start, end):
        day = D(2025, 5, 5)
        return [pricing.Usage(str(project_id), "gpu-week", day, Fraction(2))] \
            if project_id == chest_id and start <= day <= end else []

    monkeypatch.setattr(meters, "METERS", [*meters.METERS, gpu_weeks])
    with transaction(hub.sessions) as s:
        olle = principal(s, seeded["people"]["olle"])
        f = service.forecast(s, service.project_subject(s, olle, "chest"), D(2025, 6, 30))
    # so far (1 Jan-30 Jun, 181 days): membership 24 794.52; storage 3 TB x 122 days (from 1 Mar) x 1 500 / 365
    # = 1 504.11; 2 GPU-weeks 3 076.92; the discount's 90 days (January-March) -1 232.88
    assert f["so_far"].total == Decimal("28142.67")
    # the rest (1 Jul-31 Dec, 184 days): membership 25 205.48, backup 3 780.82, GPU (stored, Oct-Dec) 20 164.38;
    # storage stays at 30 June's 5 TB: 3 TB x 184 x 1 500 / 365 = 2 268.49 (the November snapshot is not used);
    # GPU-weeks at the last 90 days' rate: 2 x 184 / 90 weeks x 1 538.46 = 6 290.59; no discount (brain takes it)
    assert by_item(f["rest"]) == {("charge", "membership"): Decimal("25205.48"),
                                  ("charge", "backup-storage"): Decimal("3780.82"),
                                  ("charge", "gpu"): Decimal("20164.38"),
                                  ("charge", "project-storage"): Decimal("2268.49"),
                                  ("charge", "gpu-week"): Decimal("6290.59")}
    assert f["year_total"] == Decimal("28142.67") + Decimal("57709.76")


def test_csv_cells_never_run_as_spreadsheet_formulas() -> None:
    """A statement's CSV is opened in a spreadsheet: a text cell that starts like a formula (a customer's name,
    a line's description typed by an operator) is shown as text, while amounts — negative ones included —
    stay numbers. The public metrics CSV (dataset titles typed by stewards) uses the same rule."""
    import csv
    import io

    from strongroom.fees import render
    from strongroom.fees.pricing import Line, Statement
    from strongroom.text import spreadsheet_safe

    st = Statement(start=dt.date(2025, 1, 1), end=dt.date(2025, 12, 31), lines=[
        Line(project="chest", kind="charge", item="storage", description='=HYPERLINK("https://evil.example","Pay")',
             start=dt.date(2025, 1, 1), end=dt.date(2025, 12, 31), quantity=Decimal("1"), unit="TB",
             unit_price=Decimal("1000.00"), basis="per unit", amount=Decimal("1000.00")),
        Line(project="chest", kind="waiver", item="waiver", description="-50 % for sharing its data",
             start=dt.date(2025, 1, 1), end=dt.date(2025, 12, 31), quantity=Decimal("1"), unit="",
             unit_price=Decimal("-500.00"), basis="per unit", amount=Decimal("-500.00"))])
    text = render.to_csv(st, {"label": "@SUM(A1:A9)", "period_start": "2025-01-01", "period_end": "2025-12-31"})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["description"] == '\'=HYPERLINK("https://evil.example","Pay")'
    assert rows[0]["subject"] == "'@SUM(A1:A9)"
    assert rows[1]["description"] == "'-50 % for sharing its data" and rows[1]["amount_sek"] == "-500.00"
    assert rows[-1]["amount_sek"] == "500.00"
    assert [spreadsheet_safe(v) for v in ("-3", "-1,5", "+46", "< 5", "\tcmd", "CT;SEG", 7, None)] == [
        "-3", "-1,5", "+46", "< 5", "'\tcmd", "CT;SEG", 7, None]
