"""`strongroom federation …`: this hub's identity for a partner and its signing key's rotation, the peer registry
(pinning a partner's new identity too), a signed greeting and a harvest now — on the hub host as the operator
(audited)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..audit import service as audit
from ..config import get_settings
from ..db import open_session, transaction
from ..errors import DomainError
from ..hub import Hub
from ..identity.cli import _fail, _operator
from ..text import for_terminal as shown

app = typer.Typer(help="Federation: peer hubs, signed exchanges, catalogue harvesting.", no_args_is_help=True)
console = Console()


def _hub() -> Hub:
    return Hub.from_settings(get_settings())


@app.command()
def identity() -> None:
    """Print this hub's identity (JSON) for a partner's operator to register: its address, signing key, archive
    key, visa issuer and JWKS. Send it out of band; compare the key id by phone."""
    from . import service

    hub = _hub()
    with open_session(hub.sessions, deferred=True) as session:
        print(json.dumps(service.identity(hub, session), indent=2))


IdentityFile = Annotated[Path, typer.Option(
    "--identity", help="The partner's identity JSON (its `strongroom federation identity` or "
                       "GET /api/v1/federation/hub).", exists=True, dir_okay=False)]


def _identity(path: Path) -> dict[str, str]:
    """The pinned fields of a partner's identity JSON."""
    from . import service

    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(f"not a JSON identity: {exc}") from None
    return {k: data.get(k, "") for k in service.PeerIdentity.model_fields}


@app.command()
def add(
    name: str,
    identity_file: IdentityFile,
    outbound: Annotated[bool, typer.Option(help="We query and harvest it.")] = True,
    inbound: Annotated[bool, typer.Option(help="It may query and harvest us.")] = True,
) -> None:
    """Register a peer hub with its pinned keys."""
    from . import service

    fields = _identity(identity_file)
    try:
        with transaction(_hub().sessions) as session:
            peer = service.register_peer(session, get_settings(), _operator(),
                                         {**fields, "name": name, "outbound": outbound, "inbound": inbound})
            console.print(f"peer [bold]{shown(peer.name)}[/] {shown(peer.base_url)} key {shown(peer.key_id)}")
    except DomainError as exc:
        _fail(exc)


@app.command()
def repin(
    name: str,
    identity_file: IdentityFile,
) -> None:
    """Pin a registered peer's new identity — after it rotated its archive key, changed its signing key or
    moved — keeping its name, directions, harvested entries and mirrors. Compare the keys out of band first."""
    from . import service

    fields = _identity(identity_file)
    try:
        with transaction(_hub().sessions) as session:
            peer = service.repin_peer(session, get_settings(), _operator(), name, fields)
            console.print(f"peer [bold]{shown(peer.name)}[/] {shown(peer.base_url)} now pinned to key "
                          f"{shown(peer.key_id)}")
    except DomainError as exc:
        _fail(exc)


@app.command("rotate-key")
def rotate_key() -> None:
    """Sign with a new hub signing key from now on (every process at its next signature, no restart). Partners
    pin the key: until each pins this hub's new identity (`strongroom federation repin`), it refuses this hub's
    requests. Audited."""
    from . import service

    hub = _hub()
    old, new = service.rotate_hub_key(hub.settings)
    with transaction(hub.sessions) as session:
        audit.record(session, _operator(), "federation.key.rotated", target=f"key:{new}",
                     details={"previous": old, "current": new})
    console.print(f"[green]rotated[/]: signing with key {new} (was {old}). Send `strongroom federation identity` "
                  "to every partner; each runs `strongroom federation repin <this hub> --identity <file>`.")


@app.command("list")
def list_peers() -> None:
    """The registered peers."""
    from . import service

    with open_session(_hub().sessions, deferred=True) as session:
        for p in service.peers(session):
            directions = "/".join(d for d, on in (("outbound", p.outbound), ("inbound", p.inbound)) if on) or "none"
            state = "active" if p.active else "suspended"
            console.print(f"{shown(p.name)}\t{shown(p.base_url)}\t{directions}\t{state}\tkey {shown(p.key_id)}")


@app.command()
def remove(name: str) -> None:
    """Forget a peer and its harvested entries."""
    from . import service

    try:
        with transaction(_hub().sessions) as session:
            service.remove_peer(session, get_settings(), _operator(), name)
        console.print(f"peer {shown(name)} removed")
    except DomainError as exc:
        _fail(exc)


@app.command()
def hello(name: str) -> None:
    """Send a signed greeting to a peer: exit 0 when it verified this hub's signature (audited)."""
    from . import service

    try:
        ok, said = service.hello(_hub(), name, _operator())
    except DomainError as exc:
        _fail(exc)
    if not ok:
        console.print(f"[red]{shown(name)}: {shown(said)}[/]")  # the peer's words: text, never markup
        raise typer.Exit(1)
    console.print(f"{shown(name)} verified this hub's signature")


@app.command()
def harvest() -> None:
    """Harvest the peers' public catalogues now."""
    from . import service

    hub = _hub()
    print(json.dumps(service.harvest(hub, lambda: transaction(hub.sessions)), indent=2))


def _run_when_free(hub: Hub, run_id: uuid.UUID, progress: Callable[[int, int, int, int], None]) -> dict[str, Any]:
    """Run the push; while another worker holds its lease (a killed one's lapses), wait for it."""
    from . import sync

    deadline = time.monotonic() + 2 * hub.settings.federation.sync_lease_seconds + 10
    told = False
    while True:
        try:
            return sync.run_sync(hub, run_id, progress)
        except sync.SyncBusy:
            if time.monotonic() > deadline:
                raise
            if not told:
                console.print("another worker is running this push; waiting for it (or for its lease to lapse)")
                told = True
            time.sleep(1)


@app.command("sync")
def sync_dataset(
    dataset: str,
    peer: Annotated[str, typer.Option("--peer", help="The peer hub to push to (its registered name).")],
    version: Annotated[int | None, typer.Option("--version", help="One released version (default: all).")] = None,
) -> None:
    """Push a released dataset (one version, or all) to a peer now, with progress. An unfinished push of the
    same dataset to the same peer is resumed: bodies the peer already acknowledged are not sent again."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

    from . import sync

    hub = _hub()
    try:
        with transaction(hub.sessions) as session:
            run = sync.start_sync(session, hub.settings, _operator(), dataset, peer, version)
            run_id = run.id
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                      TextColumn("{task.fields[files]}"), console=console, transient=False) as bar:
            task = bar.add_task(f"{shown(dataset)} → {shown(peer)}", total=None, files="")

            def progress(files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
                bar.update(task, completed=bytes_done, total=bytes_total, files=f"{files_done}/{files_total} files")

            result = _run_when_free(hub, run_id, progress)
    except sync.SyncRefused as exc:
        # by the peer (its words: text, never markup), or here (no longer published)
        console.print(f"[red]push to {shown(peer)} refused: {shown(exc)}[/]")
        raise typer.Exit(1) from None
    except sync.SyncBusy as exc:
        console.print(f"[red]{shown(exc)}[/] (run the same command again later)")
        raise typer.Exit(1) from None
    except DomainError as exc:
        _fail(exc)
    except RuntimeError as exc:
        console.print(f"[red]{shown(exc)}[/] (run the same command again to resume)")
        raise typer.Exit(1) from None
    console.print(f"pushed {shown(result['files'])} files; mirror {shown(result.get('dataset'))} at "
                  f"{shown(result.get('url'))}")
