"""``strongroom admin rotate-secret``: the hub secret's rotation, on the hub host (see ops/rotation.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer()  # merged into `strongroom admin` (ops' includeme)
console = Console()


@app.command("rotate-secret")
def rotate_secret(
    new_secret_file: Annotated[Path | None, typer.Option(
        "--new-secret-file", exists=True, dir_okay=False, readable=True,
        help="A file holding the new secret (at least 32 characters, e.g. from `openssl rand -hex 32`). Required "
             "when the secret is configured (STRONGROOM_SECRET_KEY); without it a hub keeping its secret in "
             "var/secret.key gets a random one.")] = None,
) -> None:
    """Rotate the hub secret. [bold]Stop every other Strongroom process first[/] (web, worker, dicom serve) and
    the running workspaces; start them again with the new secret afterwards.

    The audit chain moves to the new key at an audited event (earlier events keep verifying under the old
    secret's retained key, later ones only under the new), TOTP seeds are re-encrypted, unused recovery codes are
    deleted (their users are e-mailed to generate new ones), archive key files with a derived passphrase are
    rewritten. Interrupted anywhere, it completes when run again with the same new secret."""
    from ..errors import DomainError
    from ..hub import Hub
    from ..identity.cli import _fail, _operator
    from . import rotation

    hub = Hub.from_settings(allow_weak_secrets=True)  # replacing a weak secret is what this command is for
    try:
        new = rotation.new_secret(hub, new_secret_file.read_text() if new_secret_file else None)
        done = rotation.rotate(hub, new, _operator())
    except DomainError as exc:
        _fail(exc)
    console.print(f"[green]rotated[/]: hub secret {done.from_id} → {done.to_id}"
                  + (" (an interrupted rotation, completed)" if done.resumed else ""))
    console.print(f"  archive key files rewritten: {done.key_files}; TOTP seeds re-encrypted: {done.totp_seeds}; "
                  f"unused recovery codes deleted: {done.recovery_codes} ({done.users_told} users e-mailed)")
    if done.secret_file:
        console.print(f"  the new secret is in {done.secret_file}: back it up, then start Strongroom again")
    else:
        console.print("  now set STRONGROOM_SECRET_KEY to the new secret wherever Strongroom runs (your secret "
                      "manager), start Strongroom again, and destroy the file you passed")
    console.print("  a process still holding the old secret writes nothing and reports /readyz 503 (stale-secret)")
