"""`strongroom fees …`: customers, subscriptions, price lists, storage snapshots and statements, on the hub host
as the operator (audited). Waivers are requested and approved by two named operators on the fees page."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config import get_settings
from ..db import transaction
from ..errors import DomainError
from ..hub import Hub
from ..identity.cli import _fail, _operator

app = typer.Typer(help="Fees: customers, subscriptions, price lists, statements.", no_args_is_help=True)
console = Console()


def _hub() -> Hub:
    return Hub.from_settings(get_settings())


def _day(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"a date is YYYY-MM-DD, not {text!r}") from None


@app.command("customer-add")
def customer_add(
    name: str,
    org_number: Annotated[str, typer.Option("--org-number", help="Organisation number.")] = "",
    invoice_ref: Annotated[str, typer.Option("--reference", help="The buyer's reference on invoices.")] = "",
) -> None:
    """Add a customer organisation."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            c = service.create_customer(session, _operator(), name=name, org_number=org_number,
                                        invoice_ref=invoice_ref)
            console.print(f"customer [bold]{c.name}[/] ({c.id})")
    except DomainError as exc:
        _fail(exc)


@app.command("bill")
def bill(slug: str, customer: Annotated[str, typer.Option(help="Customer name or id.")]) -> None:
    """Bill a project to a customer organisation."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            service.bill_project_to(session, _operator(), slug=slug, customer=customer)
    except DomainError as exc:
        _fail(exc)
    console.print(f"{slug} is billed to {customer}")


@app.command("subscribe")
def subscribe(
    slug: str,
    item: Annotated[str, typer.Argument(help="membership | backup-storage | cpu | gpu")],
    start: Annotated[str, typer.Option(help="First day charged (YYYY-MM-DD).")],
    quantity: Annotated[str, typer.Option(help="TB, CPUs or GPUs (1 for membership).")] = "1",
    end: Annotated[str | None, typer.Option(help="Last day charged (YYYY-MM-DD); open if omitted.")] = None,
) -> None:
    """Subscribe a project to the membership or an add-on, pro-rated by day."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            sub = service.subscribe(session, _operator(), slug=slug, item=item, quantity=quantity,
                                    start=_day(start) or dt.date.today(), end=_day(end))
            console.print(f"subscription {sub.id}: {item} × {sub.quantity} from {sub.start}")
    except DomainError as exc:
        _fail(exc)


@app.command("unsubscribe")
def unsubscribe(
    subscription: Annotated[str, typer.Argument(help="The subscription's id.")],
    end: Annotated[str, typer.Option(help="Last day charged (YYYY-MM-DD).")],
) -> None:
    """End a subscription (statements already issued stay as issued; re-issue to credit and correct)."""
    import uuid

    from . import service

    try:
        sub_id = uuid.UUID(subscription)
    except ValueError:
        raise typer.BadParameter(f"not a subscription id: {subscription!r}") from None
    try:
        with transaction(_hub().sessions) as session:
            service.end_subscription(session, _operator(), sub_id, _day(end) or dt.date.today())
    except DomainError as exc:
        _fail(exc)
    console.print(f"subscription {subscription} ends {end}")


@app.command("price-list")
def price_list(
    effective_from: Annotated[str | None, typer.Option("--from", help="Publish a new version from this date.")] = None,
    price: Annotated[list[str] | None, typer.Option(help="code=SEK, e.g. membership=55000 (repeat).")] = None,
    note: Annotated[str, typer.Option(help="What changed.")] = "",
) -> None:
    """Show the price list versions; with --from and --price, publish a new version."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            if effective_from:
                prices = dict(p.split("=", 1) for p in price or [] if "=" in p)
                service.publish_price_list(session, _operator(), prices=prices, note=note,
                                           effective_from=_day(effective_from) or dt.date.today())
            for pl in service.price_lists(session):
                console.print(f"[bold]version {pl.version}[/] from {pl.effective_from} {pl.note}")
                for i in pl.items.values():
                    per = f"{i.unit} and year" if i.per == "year" else i.unit
                    console.print(f"  {i.code:16} {i.price:>12} SEK per {per}")
    except DomainError as exc:
        _fail(exc)


@app.command("snapshot")
def snapshot(day: Annotated[str | None, typer.Option(help="The day measured (default today).")] = None) -> None:
    """Measure each project's archived bytes now (the fees.snapshot job does this every day)."""
    from . import service

    with transaction(_hub().sessions) as session:
        n = service.snapshot_storage(session, _day(day) or dt.date.today())
    console.print(f"{n} projects measured")


@app.command("statement")
def statement(
    period: Annotated[str, typer.Argument(help="2025 (a year) or 2025-03 (a month).")],
    project: Annotated[str | None, typer.Option(help="A project's statement.")] = None,
    customer: Annotated[str | None, typer.Option(help="A customer's statement (name or id).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | pdf")] = "csv",
    out: Annotated[Path | None, typer.Option(help="Write here (default: CSV to stdout).")] = None,
    issue: Annotated[bool, typer.Option("--issue", help="Freeze it (a credit note + new version if changed).")] = False,
) -> None:
    """A statement as CSV or PDF; --issue freezes it first."""
    from . import pricing, render, service

    if bool(project) == bool(customer):
        raise typer.BadParameter("give --project or --customer")
    if fmt not in ("csv", "pdf"):
        raise typer.BadParameter("--format is csv or pdf")
    try:
        start, end = pricing.period(period)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    hub = _hub()
    try:
        with transaction(hub.sessions) as session:
            if project:
                p = service.find_project(session, project)
                subject = service.Subject(f"project:{p.id}", p.slug, p.name, [p], service.customer_of(session, p.id))
            else:
                subject = service.customer_subject(session, None, customer or "")
            meta = service.meta(subject, start, end)
            if issue:
                made = service.issue(session, _operator(), subject, start, end)
                st, meta = service.frozen(made[-1]), {**made[-1].meta, "checksum": made[-1].checksum}
                Console(stderr=True).print("issued " + ", ".join(s.number for s in made))
            else:
                st = service.compute(session, subject, start, end)
    except DomainError as exc:
        _fail(exc)
    data = render.to_csv(st, meta).encode() if fmt == "csv" else render.to_pdf(st, meta, site=hub.settings.site_name)
    if out:
        out.write_bytes(data)
        Console(stderr=True).print(f"wrote {out} (total {st.total} SEK)")
    elif fmt == "csv":
        sys.stdout.write(data.decode())
    else:
        raise typer.BadParameter("a PDF needs --out")
