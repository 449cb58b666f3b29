"""`strongroom vai …`: vendors and their members (operators, on the hub host, audited), the synthetic demo
detector, and running an evaluation in the foreground (the job does the same)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config import get_settings
from ..db import transaction
from ..errors import DomainError
from ..hub import Hub
from ..identity.cli import _fail, _operator

app = typer.Typer(help="AI validation: vendors, the demo model, evaluations.", no_args_is_help=True)
console = Console()


def _hub() -> Hub:
    return Hub.from_settings(get_settings())


@app.command("vendor-add")
def vendor_add(slug: str, name: str) -> None:
    """Add a vendor organisation."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            v = service.add_vendor(session, _operator(), slug, name)
            console.print(f"vendor [bold]{v.slug}[/] ({v.name})")
    except DomainError as exc:
        _fail(exc)


@app.command("vendor-member")
def vendor_member(slug: str, user: str) -> None:
    """Add a user (username, e-mail or id) to a vendor: they register its models and read its released reports."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            service.add_member(session, _operator(), slug, user)
            console.print(f"{user} is a member of {slug}")
    except DomainError as exc:
        _fail(exc)


@app.command("demo-model")
def demo_model(out: Path, cases: Annotated[int, typer.Option(help="Training cases.")] = 300) -> None:
    """Write the synthetic lesion detector (ONNX, trained now on synthetic cases) and print its SHA-256 and the
    input contract and output to register it with."""
    from . import synthetic

    data = synthetic.train(cases)
    out.write_bytes(data)
    console.print(f"{out} sha256 {hashlib.sha256(data).hexdigest()}")
    console.print_json(json.dumps({"contract": synthetic.CONTRACT, "output": synthetic.OUTPUT}))


@app.command("run")
def run(evaluation_id: str) -> None:
    """Run or resume an evaluation in the foreground (what its job does)."""
    from . import service
    from .models import Evaluation

    hub = _hub()
    try:
        eid = uuid.UUID(evaluation_id)
    except ValueError:
        raise typer.BadParameter("an evaluation id is a UUID") from None
    service.run(hub, eid)
    with hub.sessions() as session:
        ev = session.get(Evaluation, eid)
        if ev is None:
            console.print("no such evaluation")
            raise typer.Exit(2)
        console.print(f"{ev.state}: {ev.done}/{ev.total} outputs {ev.outputs_sha256 or '-'}")


@app.command("demo")
def demo() -> None:
    """On the embedded demo: a vendor (the researcher), the synthetic detector, 200 synthetic screening cases in
    project 'demo', a finished evaluation and its released report."""
    from .demo import seed_vai_demo

    hub = _hub()
    try:
        path = seed_vai_demo(hub)
    except DomainError as exc:
        _fail(exc)
    console.print(f"report: {hub.settings.base_url.rstrip('/')}{path} (log in as researcher: the vendor's user)")
