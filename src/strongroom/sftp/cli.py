"""`strongroom sftp`: run the SFTP server, show its host key. Run on the hub host (it reads the database,
the storage and the archive keys)."""

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
    from .server import host_key
    from .server import serve as run

    hub = Hub.from_settings(get_settings())
    key = host_key(hub)
    typer.echo(f"strongroom sftp on {host}:{port}, host key {key.get_fingerprint('sha256')}")
    run(hub, host, port)


@app.command("host-key")
def show_host_key() -> None:
    """The server's host key (made on first use): its fingerprint and the public key line for known_hosts."""
    from .server import host_key

    hub = Hub.from_settings(get_settings())
    key = host_key(hub)
    typer.echo(key.get_fingerprint("sha256"))
    typer.echo(key.export_public_key().decode().strip())
