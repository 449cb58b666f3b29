"""`strongroom retention`: verify a deletion, move the clock and send notices now, resume a deletion.

Run on the hub host (it reads the database, the storage and the hub's signing key)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Annotated

import typer
from joserfc.jwk import KeySet
from rich.console import Console
from sqlalchemy import select

from ..access import visas
from ..archive.backend import storage_for
from ..config import get_settings
from ..db import open_session, transaction
from ..hub import Hub
from . import clock, deletion, service
from .models import Deletion

app = typer.Typer(no_args_is_help=True, help="Retention: last-use clocks, reviews, verified deletion.")
console = Console()

# exit codes of `verify`
OBJECTS_REMAIN, BAD_SIGNATURE, NOT_FOUND = 1, 3, 4  # 0: proven
_VERSION = re.compile(r"^(?P<dataset>[A-Za-z0-9-]+)[:/@]v?(?P<number>\d+)$")


def _key(jwks_file: Path | None, settings_keys: KeySet) -> KeySet:
    if jwks_file is None:
        return settings_keys
    return KeySet.import_key_set(json.loads(jwks_file.read_text()))


@app.command()
def verify(
    what: Annotated[str, typer.Argument(help="A certificate file, or a dataset version as SRD-…:N")],
    jwks: Annotated[Path | None, typer.Option(
        help="Check the signature with this JWKS (e.g. a saved /.well-known/jwks.json) instead of the hub's "
             "key file.")] = None,
) -> None:
    """Prove a deletion: the certificate's signature verifies and no object of the version is left in storage
    (every key; on S3 every version and delete marker). Exit 0 proven, 1 objects remain, 3 the signature or
    certificate is refused, 4 no such certificate."""
    settings = get_settings()
    hub = Hub.from_settings(settings)
    path = Path(what)
    if path.is_file():
        text = path.read_text()
    else:
        m = _VERSION.match(what)
        if m is None:
            console.print(f"[red]no certificate file and not a dataset version (SRD-…:N): {what}[/]")
            raise typer.Exit(NOT_FOUND)
        with open_session(hub.sessions, deferred=True) as session:
            kept = session.scalar(select(Deletion.certificate).where(
                Deletion.dataset_id == m["dataset"], Deletion.number == int(m["number"])))
        if not kept:
            console.print(f"[red]no deletion certificate for {what}[/]")
            raise typer.Exit(NOT_FOUND)
        text = kept
    try:
        document = deletion.check_signature(text, _key(jwks, visas.verification_keys(settings)))
    except ValueError as e:
        console.print(f"[red]REFUSED[/]: {e}")
        raise typer.Exit(BAD_SIGNATURE) from None
    storage = storage_for(hub)
    # the files' bodies and the recipients' outbox copies of them (certificates before "derived": none)
    keys = [f["object"] for f in document.get("files", []) if f.get("object")] + [
        o["object"] for o in (document.get("derived") or {}).get("outbox", []) if o.get("object")]
    left = {key: found for key in keys if (found := deletion.remaining(storage, key))}
    ds = document["dataset"]
    if left:
        for key, versions in sorted(left.items()):
            console.print(f"[red]still stored[/]: {key} ({len(versions)} version(s))")
        console.print(f"[red]FAILED[/]: {len(left)} of {len(keys)} object(s) of {ds['id']} version {ds['version']} "
                      "remain")
        raise typer.Exit(OBJECTS_REMAIN)
    how = "every S3 version checked" if deletion.versioned(storage) else "local disk"
    console.print(f"[green]OK[/]: signature verified; none of the {len(keys)} object(s) of {ds['id']} version "
                  f"{ds['version']} remain in storage ({how})")


@app.command()
def review() -> None:
    """Move the last-use clocks to the audit log's head and send the notices due now (what the jobs do)."""
    settings = get_settings()
    hub = Hub.from_settings(settings)
    with transaction(hub.sessions) as session:
        events = clock.catch_up(session, settings.retention)
        sent = service.send_notices(session, settings.retention)
    console.print(f"{events} use event(s) read, {sent} notice(s) sent")


@app.command()
def resume(deletion_id: Annotated[str, typer.Argument(help="The deletion's id")]) -> None:
    """Carry an approved deletion on from the step it reached (what its job does on a retry)."""
    settings = get_settings()
    hub = Hub.from_settings(settings)
    try:
        state = deletion.run(hub, uuid.UUID(deletion_id))
    except ValueError:
        console.print("[red]not a deletion id[/]")
        raise typer.Exit(NOT_FOUND) from None
    console.print(f"deletion {deletion_id}: {state}")
