"""``strongroom access …`` on the hub host: the hub's signing key (GA4GH visas and passports, deletion
certificates)."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer
from rich.console import Console

console = Console()
app = typer.Typer(no_args_is_help=True, help="Controlled access on the hub host: the hub's signing key.")


@app.command("rotate-signing-key")
def rotate_signing_key(
    compromised: Annotated[bool, typer.Option(
        "--compromised", help="The old key may be known to someone else: drop it altogether, so that nothing it "
                              "signed verifies any more (visas, passports and deletion certificates alike).")] = False,
) -> None:
    """Sign with a new key from now on (every process picks it up at its next signature, no restart). The old
    key's public half stays in the JWKS, so its visas verify until they expire and its deletion certificates
    for good; its private half is gone. Run it on a host with the keys directory; audited."""
    from ..audit.service import Actor
    from ..audit.service import record as audit
    from ..config import get_settings
    from ..db import transaction
    from ..hub import Hub
    from . import visas

    settings = get_settings()
    hub = Hub.from_settings(settings)
    old, new = visas.rotate_signing_key(settings, compromised=compromised)
    actor = Actor(id=None, label=f"cli:{getpass.getuser()}@{os.uname().nodename}")
    with transaction(hub.sessions) as session:
        audit(session, actor, "access.signing_key.rotated", target=f"jwk:{new}",
              details={"previous": old, "current": new, "previous_kept": not compromised})
    console.print(f"[green]rotated[/]: signing with {new}")
    if compromised:
        console.print(f"{old} is gone: nothing it signed verifies any more. Users fetch new passports "
                      "(/api/v1/me/passport); relying parties refetch the JWKS (cached up to 5 minutes).")
    else:
        console.print(f"{old} stays in /.well-known/jwks.json (public half only) for what it signed.")
