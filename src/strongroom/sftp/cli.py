"""`strongroom sftp`: run the SFTP server, show and rotate its host key. Run on the hub host (it reads the
database, the storage and the archive keys)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import get_settings
from ..hub import Hub

app = typer.Typer(no_args_is_help=True, help="The SFTP front door to project storage.")


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port to listen on")] = 2222) -> None:
    """Run the SFTP server (public-key logins with keys registered on the Account page)."""
    from .hostkeys import fingerprint, host_key
    from .server import serve as run

    hub = Hub.from_settings(get_settings())
    typer.echo(f"strongroom sftp on {host}:{port}, host key {fingerprint(host_key(hub))}")
    if run(hub, host, port):  # exit non-zero: a supervisor restarts it, with the current secret
        typer.echo("error: the hub secret was rotated: restart `strongroom sftp serve` with the current secret",
                   err=True)
        raise typer.Exit(3)


@app.command("host-key")
def show_host_key() -> None:
    """The server's host key: its fingerprint and the public key line for known_hosts.

    Made on first use. During a rotation the next key is shown too; then the retired keys' fingerprints."""
    from .hostkeys import fingerprint, host_key, next_key, retired_fingerprints

    hub = Hub.from_settings(get_settings())
    key = host_key(hub)
    typer.echo(fingerprint(key))
    typer.echo(key.export_public_key().decode().strip())
    if (upcoming := next_key(hub)) is not None:
        typer.echo(f"next (announced, not yet in use): {fingerprint(upcoming)}")
        typer.echo(upcoming.export_public_key().decode().strip())
    for old in retired_fingerprints(hub):
        typer.echo(f"retired: {old}")


@app.command("rotate-host-key")
def rotate_host_key(finish: Annotated[bool, typer.Option(
        "--finish", help="Step two: start proving the announced key; the old one is retired.")] = False) -> None:
    """Rotate the host key in two steps, without a restart.

    Step one makes the next key, which the running server announces to every client after login (OpenSSH
    clients add it to known_hosts: UpdateHostKeys). Publish its fingerprint, leave the clients time to connect
    (days), then run with --finish: the server proves the new key from its next connection. A client that did
    not connect in between sees a changed host key and must check the published fingerprint."""
    from ..errors import DomainError
    from ..identity.cli import _fail, _operator
    from . import hostkeys

    hub = Hub.from_settings(get_settings())
    try:
        if finish:
            old, new = hostkeys.finish_rotation(hub, _operator())
            typer.echo(f"rotated: the server proves {new} from its next connection (within seconds); {old} retired")
        else:
            new = hostkeys.begin_rotation(hub, _operator())
            typer.echo(f"announced: {new} (publish it; clients learn it when they connect), then run "
                       "`strongroom sftp rotate-host-key --finish`")
    except DomainError as exc:
        _fail(exc)
