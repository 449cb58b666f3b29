"""The `strongroom` command: serve, work, migrate, administer, verify, and talk to a hub's API."""

from __future__ import annotations

import json
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console

from . import __version__
from .archive.cli import app as archive_client_app
from .archive.cli import archive_app
from .audit.cli import admin_app as audit_admin_app
from .audit.cli import app as audit_app
from .client import app as client_app
from .config import get_settings
from .identity.cli import app as admin_app
from .imaging.cli import dicom_app, import_app
from .jobs.cli import app as jobs_app
from .strategies.cli import app as strategy_app

console = Console()
err = Console(stderr=True)
app = typer.Typer(name="strongroom", no_args_is_help=True, rich_markup_mode="rich",
                  help="Strongroom: a sensitive-data hub for medical imaging AI research.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema migrations.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(admin_app, name="admin")
admin_app.registered_commands.extend(audit_admin_app.registered_commands)
app.add_typer(audit_app, name="audit")
app.add_typer(jobs_app, name="jobs")
app.add_typer(archive_app, name="archive")
app.add_typer(dicom_app, name="dicom")
app.add_typer(import_app, name="import")
app.add_typer(strategy_app, name="strategy")
app.registered_commands.extend(client_app.registered_commands)
app.registered_groups.extend(client_app.registered_groups)
app.registered_commands.extend(archive_client_app.registered_commands)
app.registered_groups.extend(archive_client_app.registered_groups)


def _version(value: bool) -> None:
    if value:
        console.print(f"strongroom {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    from .logs import configure

    settings = get_settings()
    configure(settings.log_level, settings.log_json)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default from settings: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings: 8000).")] = None,
    jobs: Annotated[bool | None, typer.Option("--jobs/--no-jobs",
                                              help="Run background jobs in this process.")] = None,
) -> None:
    """Serve the web app and API (runs pending migrations first)."""
    import uvicorn

    from .app import create_app
    from .migrate import upgrade

    settings = get_settings()
    upgrade(settings.effective_database_url)
    application = create_app(settings, run_jobs=jobs)
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, access_log=False,
                log_config=None, proxy_headers=False)


@app.command()
def worker(name: Annotated[str | None, typer.Option(help="Worker id shown in logs and job leases.")] = None,
           ) -> None:
    """Run background jobs until stopped. Start as many as you like, on any hosts sharing the database."""
    from .hub import Hub
    from .jobs.runner import Runner

    settings = get_settings()
    hub = Hub.from_settings(settings)
    runner = Runner(hub, lease_seconds=settings.jobs.lease_seconds,
                    poll_seconds=settings.jobs.poll_seconds, extra_modules=settings.jobs.extra_modules, name=name)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    err.print(f"[bold]worker[/] {runner.worker_id} running {len(runner.kinds)} job kinds")
    runner.run_forever()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "heads") -> None:
    """Apply schema migrations up to REVISION."""
    from .migrate import current, upgrade

    url = get_settings().effective_database_url
    upgrade(url, revision)
    console.print(f"database at revision [bold]{current(url)}[/]")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision."""
    from .migrate import current

    console.print(current(get_settings().effective_database_url) or "(empty database)")


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Print the effective settings, secrets masked."""
    data = get_settings().masked()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    import tomli_w

    def without_unset(value: object) -> object:  # TOML has no null: leave unset values out
        if isinstance(value, dict):
            return {k: without_unset(v) for k, v in value.items() if v is not None}
        return value

    console.print(tomli_w.dumps(without_unset(data)), markup=False)


@app.command()
def init(demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Create the demo users and project.")] = False,
         ) -> None:
    """Prepare ./var (database, secret key) and optionally the demo admin and project."""
    from .demo import seed_demo
    from .hub import Hub
    from .migrate import upgrade

    settings = get_settings()
    upgrade(settings.effective_database_url)
    hub = Hub.from_settings(settings)
    from .archive.keys import ensure_key

    ensure_key(hub)
    if demo:
        for line in seed_demo(hub):
            console.print(line)


if __name__ == "__main__":
    app()
