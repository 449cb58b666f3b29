"""Fees: who pays for what, measured and frozen.

Operators (platform admins) keep customers, subscriptions, price lists and waivers; a waiver or discount is in
force only once a second operator approved it (never the requester). A project's statements are for its PI
and the operators (NotFound for everyone else); a customer's statements are for the operators. Statements are
computed by the pure ``pricing`` engine from the stored subscriptions, the meters (``METERS``: archive storage
here, GPU-weeks from compute when installed) and the approved waivers; issuing one freezes its lines under a
checksum, and a correction is a credit note plus a new version, never an edit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from ..archive.models import READY, ArchiveFile
from ..audit import service as audit
from ..audit.service import Actor
from ..db import utcnow
from ..errors import Conflict, Forbidden, Invalid, MfaRequired, NotFound
from ..identity.principal import Principal
from ..projects import service as projects
from ..projects.models import Project
from . import pricing
from .models import Customer, IssuedStatement, PriceListVersion, ProjectCustomer, StorageDay, Subscription, Waiver
from .pricing import Usage

Meter = Callable[[Session, uuid.UUID, dt.date, dt.date], list[Usage]]
# Hook point (capabilities: add_hook("strongroom.fees.meters:METERS", ref)) lives in fees.meters; storage
# classes of the archive and the item their bytes are sold as (beyond what a membership includes).
STORAGE_CLASS_ITEMS = {"project": pricing.PROJECT_STORAGE}
WAIVER_CATEGORIES = ("co-funding", "data-sharing", "other")
RECENT_DAYS = 90  # the forecast's "recent rate" of metered use


def require_operator(principal: Principal) -> None:
    if not (principal.user.is_admin and principal.can("admin")):
        raise NotFound("not found")
    if not principal.has_mfa:
        raise MfaRequired("fees need a login with multi-factor authentication")


def _actor(who: Principal | Actor) -> Actor:
    if isinstance(who, Principal):
        require_operator(who)
        return who.actor
    return who


def is_operator(principal: Principal) -> bool:
    return principal.user.is_admin and principal.can("admin")


def _decimal(text: str | Decimal, what: str) -> Decimal:
    try:
        value = Decimal(str(text).strip().replace(" ", "").replace(",", "."))
    except InvalidOperation:
        raise Invalid(f"{what} must be a number, not {text!r}") from None
    if not value.is_finite():
        raise Invalid(f"{what} must be a number, not {text!r}")
    return value


# -- price lists -------------------------------------------------------------------------------------
def _item_dict(i: pricing.Item) -> dict[str, Any]:
    return {"code": i.code, "name": i.name, "unit": i.unit, "per": i.per, "price": str(i.price),
            "included_tb": str(i.included_tb), "metered": i.metered}


def _item(d: dict[str, Any]) -> pricing.Item:
    return pricing.Item(code=d["code"], name=d["name"], unit=d["unit"], per=d["per"], price=Decimal(d["price"]),
                        included_tb=Decimal(d.get("included_tb", "0")), metered=bool(d.get("metered")))


def price_lists(session: Session) -> list[pricing.PriceList]:
    """Every version, oldest first: the built-in seed (version 1) and those the operators published."""
    stored = [pricing.PriceList(p.version, p.effective_from, {d["code"]: _item(d) for d in p.items}, p.note)
              for p in session.scalars(select(PriceListVersion).order_by(PriceListVersion.version))]
    return [pricing.SEED, *[p for p in stored if p.version != pricing.SEED.version]]


def publish_price_list(session: Session, who: Principal | Actor, *, effective_from: dt.date,
                       prices: dict[str, str], note: str = "") -> pricing.PriceList:
    """A new version: the latest one with some prices changed, in force from a date after the latest's."""
    actor = _actor(who)
    lists = price_lists(session)
    latest = lists[-1]
    if effective_from <= latest.effective_from:
        raise Invalid(f"a new price list starts after {latest.effective_from} (version {latest.version})")
    items = dict(latest.items)
    for code, text in prices.items():
        if code not in items:
            raise Invalid(f"no item {code!r}: items are {', '.join(items)}")
        price = _decimal(text, f"the price of {code}")
        if price < 0 or price != price.quantize(pricing.ORE):
            raise Invalid(f"the price of {code} is SEK with at most two decimals, and not negative")
        items[code] = dataclasses.replace(items[code], price=price)
    version = latest.version + 1
    session.add(PriceListVersion(version=version, effective_from=effective_from, note=note.strip(),
                                 items=[_item_dict(i) for i in items.values()], created_by=actor.id))
    audit.record(session, actor, "fees.price_list.published", target=f"price-list:{version}",
                 details={"effective_from": effective_from.isoformat(), "prices": dict(prices)})
    return pricing.PriceList(version, effective_from, items, note.strip())


# -- customers and subscriptions ----------------------------------------------------------------------
def find_project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug.strip().lower()))
    if project is None:
        raise NotFound(f"no project {slug!r}")
    return project


def create_customer(session: Session, who: Principal | Actor, *, name: str, org_number: str = "",
                    invoice_ref: str = "") -> Customer:
    actor = _actor(who)
    if not name.strip():
        raise Invalid("a customer needs a name")
    if session.scalar(select(Customer).where(Customer.name == name.strip())):
        raise Conflict(f"customer {name.strip()!r} exists")
    customer = Customer(name=name.strip(), org_number=org_number.strip(), invoice_ref=invoice_ref.strip())
    session.add(customer)
    session.flush()
    audit.record(session, actor, "fees.customer.created", target=f"customer:{customer.id}",
                 details={"name": customer.name})
    return customer


def find_customer(session: Session, ref: str) -> Customer:
    try:
        found = session.get(Customer, uuid.UUID(ref))
    except ValueError:
        found = session.scalar(select(Customer).where(Customer.name == ref.strip()))
    if found is None:
        raise NotFound(f"no customer {ref!r}")
    return found


def bill_project_to(session: Session, who: Principal | Actor, *, slug: str, customer: str) -> None:
    actor = _actor(who)
    project, c = find_project(session, slug), find_customer(session, customer)
    row = session.get(ProjectCustomer, project.id)
    if row is None:
        session.add(ProjectCustomer(project_id=project.id, customer_id=c.id))
    else:
        row.customer_id = c.id
    audit.record(session, actor, "fees.project.customer", project_id=project.id, target=f"customer:{c.id}")


def customer_of(session: Session, project_id: uuid.UUID) -> Customer | None:
    row = session.get(ProjectCustomer, project_id)
    return session.get(Customer, row.customer_id) if row else None


def customers(session: Session) -> list[Customer]:
    return list(session.scalars(select(Customer).order_by(Customer.name)))


def customer_projects(session: Session, customer_id: uuid.UUID) -> list[Project]:
    return list(session.scalars(select(Project).join(ProjectCustomer, ProjectCustomer.project_id == Project.id)
                                .where(ProjectCustomer.customer_id == customer_id).order_by(Project.slug)))


def subscribe(session: Session, who: Principal | Actor, *, slug: str, item: str, quantity: str | Decimal = "1",
              start: dt.date, end: dt.date | None = None) -> Subscription:
    actor = _actor(who)
    project = find_project(session, slug)
    known = price_lists(session)[-1].items
    if item not in known or known[item].metered:
        subscribable = ", ".join(c for c, i in known.items() if not i.metered)
        raise Invalid(f"{item!r} is not subscribed to: subscribe to one of {subscribable}")
    qty = _decimal(quantity, "the quantity")
    if qty <= 0:
        raise Invalid("the quantity must be more than zero")
    if end is not None and end < start:
        raise Invalid("a subscription ends on or after its start")
    sub = Subscription(project_id=project.id, item=item, quantity=qty, start=start, end=end, created_by=actor.id)
    session.add(sub)
    session.flush()
    audit.record(session, actor, "fees.subscription.added", project_id=project.id, target=f"subscription:{sub.id}",
                 details={"item": item, "quantity": str(qty), "start": start.isoformat(),
                          "end": end.isoformat() if end else None})
    return sub


def end_subscription(session: Session, who: Principal | Actor, subscription_id: uuid.UUID, end: dt.date) -> None:
    actor = _actor(who)
    sub = session.get(Subscription, subscription_id)
    if sub is None:
        raise NotFound(f"no subscription {subscription_id}")
    if end < sub.start:
        raise Invalid("a subscription ends on or after its start")
    sub.end = end
    audit.record(session, actor, "fees.subscription.ended", project_id=sub.project_id,
                 target=f"subscription:{sub.id}", details={"end": end.isoformat()})


def subscriptions(session: Session, project_ids: Sequence[uuid.UUID]) -> list[Subscription]:
    return list(session.scalars(select(Subscription).where(Subscription.project_id.in_(project_ids))
                                .order_by(Subscription.start, Subscription.item)))


# -- metering ---------------------------------------------------------------------------------------
def snapshot_storage(session: Session, day: dt.date) -> int:
    """Record each project's archived bytes for a day (ready files, by storage class); returns rows written.
    Run daily (``fees.snapshot``): a day's row is replaced if the job runs again that day."""
    rows = session.execute(select(ArchiveFile.project_id, func.coalesce(func.sum(ArchiveFile.body_size), 0))
                           .where(ArchiveFile.state == READY).group_by(ArchiveFile.project_id)).all()
    session.execute(delete(StorageDay).where(StorageDay.day == day))
    for project_id, size in rows:
        session.add(StorageDay(day=day, project_id=project_id, storage_class="project", bytes=int(size or 0)))
    return len(rows)


def storage_meter(session: Session, project_id: uuid.UUID, start: dt.date, end: dt.date) -> list[Usage]:
    """TB held per day from the daily snapshots. A day without a snapshot carries the last one before it
    forward (the job did not run, or the day is still to come); before the first snapshot nothing is held."""
    out: list[Usage] = []
    for storage_class, item in STORAGE_CLASS_ITEMS.items():
        before = session.scalar(select(StorageDay.bytes).where(
            StorageDay.project_id == project_id, StorageDay.storage_class == storage_class, StorageDay.day < start)
            .order_by(StorageDay.day.desc()).limit(1))
        known = dict(session.execute(select(StorageDay.day, StorageDay.bytes).where(
            StorageDay.project_id == project_id, StorageDay.storage_class == storage_class,
            StorageDay.day >= start, StorageDay.day <= end)).tuples().all())
        held = before or 0
        for day in pricing.days(start, end):
            held = known.get(day, held)
            if held:
                out.append(Usage(str(project_id), item, day, Fraction(held, pricing.TB), f"{storage_class} storage"))
    return out


def _usage(session: Session, projects_: Sequence[Project], start: dt.date, end: dt.date) -> list[Usage]:
    from .meters import METERS

    out: list[Usage] = []
    for p in projects_:
        for meter in METERS:
            out.extend(dataclasses.replace(u, project=p.slug) for u in meter(session, p.id, start, end))
    return out


# -- waivers and discounts -----------------------------------------------------------------------------
def request_waiver(session: Session, principal: Principal, *, kind: str, category: str, reason: str,
                   valid_from: dt.date, valid_to: dt.date, percent: str = "", amount: str = "",
                   project: str = "", customer: str = "", item: str = "") -> Waiver:
    """A waiver (co-funding community, data-sharing party) or discount, waiting for a second operator."""
    require_operator(principal)
    if kind not in ("waiver", "discount"):
        raise Invalid("kind is waiver or discount")
    if category not in WAIVER_CATEGORIES:
        raise Invalid(f"category is one of {', '.join(WAIVER_CATEGORIES)}")
    if not reason.strip():
        raise Invalid("a waiver or discount needs a reason")
    if valid_to < valid_from:
        raise Invalid("the validity ends on or after its start")
    if bool(percent.strip()) == bool(amount.strip()):
        raise Invalid("give either a percentage or an amount in SEK")
    pct = _decimal(percent, "the percentage") if percent.strip() else None
    amt = _decimal(amount, "the amount") if amount.strip() else None
    if pct is not None and not 0 < pct <= 100:
        raise Invalid("the percentage is more than 0 and at most 100")
    if amt is not None and (amt <= 0 or amt != amt.quantize(pricing.ORE)):
        raise Invalid("the amount is SEK, more than zero, with at most two decimals")
    if bool(project.strip()) == bool(customer.strip()):
        raise Invalid("a waiver is for one project or one customer")
    if item.strip() and item.strip() not in price_lists(session)[-1].items:
        raise Invalid(f"no item {item.strip()!r}")
    project_id = find_project(session, project).id if project.strip() else None
    customer_id = find_customer(session, customer).id if customer.strip() else None
    w = Waiver(kind=kind, category=category, reason=reason.strip(), percent=pct, amount=amt, project_id=project_id,
               customer_id=customer_id, item=item.strip() or None, valid_from=valid_from, valid_to=valid_to,
               requested_by=principal.user.id)
    session.add(w)
    session.flush()
    audit.record(session, principal.actor, "fees.waiver.requested", project_id=project_id, target=f"waiver:{w.id}",
                 details={"kind": kind, "category": category, "reason": w.reason, "percent": percent or None,
                          "amount": amount or None, "customer": str(customer_id) if customer_id else None,
                          "item": w.item, "valid_from": valid_from.isoformat(), "valid_to": valid_to.isoformat()})
    return w


def decide_waiver(session: Session, principal: Principal, waiver_id: uuid.UUID, *, approve: bool,
                  note: str = "") -> Waiver:
    """The second operator's decision (two-person rule: never the requester's own)."""
    require_operator(principal)
    w = session.get(Waiver, waiver_id)
    if w is None:
        raise NotFound(f"no waiver {waiver_id}")
    if w.state != "requested":
        raise Conflict(f"this {w.kind} was already {w.state}")
    if w.requested_by == principal.user.id:
        raise Forbidden(f"a second operator decides on a {w.kind}: not the one who requested it")
    w.state = "approved" if approve else "rejected"
    w.decided_by, w.decided_at, w.decision_note = principal.user.id, utcnow(), note.strip()
    audit.record(session, principal.actor, f"fees.waiver.{w.state}", project_id=w.project_id,
                 target=f"waiver:{w.id}", details={"note": w.decision_note})
    return w


def waivers(session: Session, *, state: str | None = None) -> list[Waiver]:
    q = select(Waiver).order_by(Waiver.created_at)
    return list(session.scalars(q.where(Waiver.state == state) if state else q))


def _waivers_for(session: Session, projects_: Sequence[Project]) -> list[pricing.Waiver]:
    ids = [p.id for p in projects_]
    slugs = {p.id: p.slug for p in projects_}
    by_customer: dict[uuid.UUID, set[str]] = {}
    for p in projects_:
        c = customer_of(session, p.id)
        if c is not None:
            by_customer.setdefault(c.id, set()).add(p.slug)
    rows = session.scalars(select(Waiver).where(
        Waiver.state == "approved",
        or_(Waiver.project_id.in_(ids), Waiver.customer_id.in_(list(by_customer))))
        .order_by(Waiver.decided_at, Waiver.id))
    return [pricing.Waiver(id=str(w.id), kind=w.kind, reason=w.reason, valid_from=w.valid_from,
                           valid_to=w.valid_to, percent=w.percent, amount=w.amount, item=w.item,
                           projects=frozenset({slugs[w.project_id]}) if w.project_id else
                           frozenset(by_customer[w.customer_id]) if w.customer_id else None)
            for w in rows]


# -- statements --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Subject:
    """Whose statement: one project, or a customer and its projects."""

    key: str  # project:<uuid> | customer:<uuid>
    label: str  # the project's slug, or the customer's name
    name: str
    projects: list[Project]
    customer: Customer | None


def project_subject(session: Session, principal: Principal, slug: str) -> Subject:
    """A project's statements: its PI and the operators; NotFound for everyone else."""
    if is_operator(principal):
        require_operator(principal)
        project = find_project(session, slug)
    else:
        access = projects.open_project(session, principal, slug, managing=True)  # statements outlive a close
        if access.membership.role != "pi":
            raise NotFound(f"no project {slug!r}")
        project = access.project
    return Subject(f"project:{project.id}", project.slug, project.name, [project],
                   customer_of(session, project.id))


def customer_subject(session: Session, principal: Principal | None, ref: str) -> Subject:
    if principal is not None:
        require_operator(principal)
    c = find_customer(session, ref)
    return Subject(f"customer:{c.id}", c.name, c.name, customer_projects(session, c.id), c)


def _scope(session: Session, subject: Subject) -> list[Project]:
    """The projects a statement is computed over: a project of a customer is computed with the customer's
    other projects and its lines kept, so a customer-wide fixed-sum discount is shared out the same way in
    the project's statement as in the customer's (the project statements add up to the customer's)."""
    if subject.key.startswith("project:") and subject.customer is not None:
        return customer_projects(session, subject.customer.id)
    return subject.projects


def compute(session: Session, subject: Subject, start: dt.date, end: dt.date) -> pricing.Statement:
    scope = _scope(session, subject)
    subs = [pricing.Subscription(p.slug, s.item, s.quantity, s.start, s.end)
            for p in scope for s in subscriptions(session, [p.id])]
    try:
        st = pricing.statement(price_lists(session), subs, _usage(session, scope, start, end),
                               _waivers_for(session, scope), start, end)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    mine = {p.slug for p in subject.projects}
    st.lines = [x for x in st.lines if x.project in mine]
    return st


def meta(subject: Subject, start: dt.date, end: dt.date) -> dict[str, str]:
    c = subject.customer
    return {"subject": subject.key, "label": subject.label, "name": subject.name,
            "customer": c.name if c else "", "org_number": c.org_number if c else "",
            "invoice_ref": c.invoice_ref if c else "", "period_start": start.isoformat(),
            "period_end": end.isoformat(), "currency": "SEK"}


def forecast(session: Session, subject: Subject, as_of: dt.date) -> dict[str, Any]:
    """The year of ``as_of``: charged so far, and the rest of the year if subscriptions continue as they are
    stored, storage stays at its last measured level and other metered use keeps its recent rate
    (the last RECENT_DAYS days' quantity, spread over the days left)."""
    year_end = dt.date(as_of.year, 12, 31)
    so_far = compute(session, subject, dt.date(as_of.year, 1, 1), as_of)
    rest = dt.date.fromordinal(as_of.toordinal() + 1)
    if rest > year_end:
        return {"so_far": so_far, "rest": None, "year_total": so_far.total}
    recent_start = as_of - dt.timedelta(days=RECENT_DAYS - 1)
    scope = _scope(session, subject)
    recent = _usage(session, scope, recent_start, as_of)
    lists = price_lists(session)
    extrapolated: list[Usage] = []
    left_days = (year_end - as_of).days
    by_key: dict[tuple[str, str], Fraction] = {}
    for u in recent:
        item = pricing.price_list_on(lists, u.day).items.get(u.item)
        if item is not None and item.per == pricing.PER_UNIT:
            by_key[(u.project, u.item)] = by_key.get((u.project, u.item), Fraction(0)) + Fraction(u.quantity)
    for (project, code), qty in by_key.items():
        extrapolated.append(Usage(project, code, rest, qty * left_days / RECENT_DAYS, "recent rate"))
    # storage held on as_of, every day to the end of the year (later snapshots, if any, are not the forecast's)
    storage = [dataclasses.replace(u, project=p.slug, day=day, note="last measured level")
               for p in scope for u in storage_meter(session, p.id, as_of, as_of)
               for day in pricing.days(rest, year_end)]
    subs = [pricing.Subscription(p.slug, s.item, s.quantity, s.start, s.end)
            for p in scope for s in subscriptions(session, [p.id])]
    rest_statement = pricing.statement(lists, subs, storage + extrapolated, _waivers_for(session, scope),
                                       rest, year_end)
    mine = {p.slug for p in subject.projects}
    rest_statement.lines = [x for x in rest_statement.lines if x.project in mine]
    return {"so_far": so_far, "rest": rest_statement, "year_total": so_far.total + rest_statement.total}


def issued(session: Session, subject: Subject) -> list[IssuedStatement]:
    return list(session.scalars(select(IssuedStatement).where(IssuedStatement.subject == subject.key)
                                .order_by(IssuedStatement.period_start, IssuedStatement.version,
                                          IssuedStatement.kind)))


def _number(prefix: str, subject: Subject, start: dt.date, end: dt.date, version: int) -> str:
    label = subject.projects[0].slug if subject.key.startswith("project:") else f"C{subject.key[9:17]}"
    span = f"{start.year}" if (start.month, start.day, end.month, end.day) == (1, 1, 12, 31) and \
        start.year == end.year else f"{start:%Y%m%d}-{end:%Y%m%d}"
    return f"{prefix}-{label}-{span}-v{version}"


def issue(session: Session, principal: Principal | Actor, subject: Subject, start: dt.date,
          end: dt.date) -> list[IssuedStatement]:
    """Freeze the statement for a period. If that period was issued before and its lines changed since (a
    correction), the last version is credited in full and a new version issued; unchanged → Conflict."""
    actor = _actor(principal)
    if end >= utcnow().date():
        raise Invalid("a statement is issued for a period that has ended")
    st = compute(session, subject, start, end)
    lines = [x.as_dict() for x in st.lines]
    heading = meta(subject, start, end)
    last = session.scalar(select(IssuedStatement).where(
        IssuedStatement.subject == subject.key, IssuedStatement.period_start == start,
        IssuedStatement.period_end == end, IssuedStatement.kind == "statement")
        .order_by(IssuedStatement.version.desc()).limit(1))
    out: list[IssuedStatement] = []
    if last is not None:
        if pricing.checksum(lines, {**heading, "number": last.number, "version": str(last.version)}) == last.checksum:
            raise Conflict(f"statement {last.number} is issued and nothing changed since")
        credit_lines = [{**x, "kind": f"credit {x['kind']}", "amount": str(-Decimal(str(x["amount"]))),
                         "description": f"Credit of {last.number}: {x['description']}"} for x in last.lines]
        credit_meta = {**last.meta, "credits": last.number}
        out.append(IssuedStatement(
            number=_number("CN", subject, start, end, last.version), kind="credit-note", subject=subject.key,
            period_start=start, period_end=end, version=last.version, credits_id=last.id, lines=credit_lines,
            meta=credit_meta, total=-last.total, checksum=pricing.checksum(credit_lines, credit_meta),
            issued_by=actor.id))
    version = last.version + 1 if last else 1
    heading = {**heading, "number": _number("ST", subject, start, end, version), "version": str(version)}
    out.append(IssuedStatement(number=heading["number"], kind="statement", subject=subject.key,
                               period_start=start, period_end=end, version=version, lines=lines, meta=heading,
                               total=st.total, checksum=pricing.checksum(lines, heading), issued_by=actor.id))
    for s in out:
        session.add(s)
        session.flush()
        audit.record(session, actor, f"fees.{s.kind}.issued", target=f"statement:{s.number}",
                     project_id=subject.projects[0].id if subject.key.startswith("project:") else None,
                     details={"subject": subject.key, "total": str(s.total), "checksum": s.checksum})
    return out


def issued_statement(session: Session, principal: Principal, number: str) -> IssuedStatement:
    """An issued statement for its project's PI and the operators; its checksum verified on every read."""
    s = session.scalar(select(IssuedStatement).where(IssuedStatement.number == number))
    if s is None:
        raise NotFound(f"no statement {number!r}")
    if not is_operator(principal):
        kind, _, ref = s.subject.partition(":")
        project = session.get(Project, uuid.UUID(ref)) if kind == "project" else None
        if project is None:
            raise NotFound(f"no statement {number!r}")
        project_subject(session, principal, project.slug)
    else:
        require_operator(principal)
    if pricing.checksum(s.lines, s.meta) != s.checksum:
        raise Conflict(f"statement {number} does not match its checksum: it was altered after issue")
    return s


def frozen(s: IssuedStatement) -> pricing.Statement:
    out = pricing.Statement(s.period_start, s.period_end, [pricing.Line.from_dict(x) for x in s.lines])
    return out
