"""The `strongroom` command: serve, work, migrate, administer, verify, and talk to a hub's API."""

from __future__ import annotations

import json
import signal
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .capabilities import registry
from .client import app as client_app
from .config import get_settings

console = Console()
err = Console(stderr=True)
# no locals in a traceback: they may hold a hub's answer (raw, escape sequences included) or a secret
app = typer.Typer(name="strongroom", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_show_locals=False,
                  help="Strongroom: a sensitive-data hub for medical imaging AI research.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema migrations.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
admin_app = typer.Typer(no_args_is_help=True, help="Administer users and projects on this hub (run on the hub host).")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(admin_app, name="admin")
# Every capability's commands (`capabilities.py`): first its groups (strongroom archive …), then the
# commands it merges into `strongroom` or `strongroom admin`, after the API client's own (login, whoami).
_groups = {"root": app, "admin": admin_app}
registry().install_cli_groups(_groups)
app.registered_commands.extend(client_app.registered_commands)
app.registered_groups.extend(client_app.registered_groups)
registry().merge_cli(_groups)


def _version(value: bool) -> None:
    if value:
        console.print(f"strongroom {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    from pydantic import ValidationError

    from .logs import configure

    try:
        settings = get_settings()
    except ValidationError as exc:  # every command reads the settings first: say what is wrong, not a traceback
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            err.print(f"[red]configuration error:[/] {where}: {error['msg']}")
        raise typer.Exit(2) from None
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
    # Behind the proxies named in trusted_proxies (none by default), X-Forwarded-For and X-Forwarded-Proto from them
    # name the client and the scheme (the right-most untrusted hop, as deps.client_ip reads it); from anyone else they
    # are ignored.
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, access_log=False,
                log_config=None, proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=list(settings.trusted_proxies))


@app.command()
def worker(name: Annotated[str | None, typer.Option(help="Worker id shown in logs and job leases.")] = None,
           ) -> None:
    """Run background jobs until stopped. Start as many as you like, on any hosts sharing the database."""
    from .audit import outbox
    from .hub import Hub
    from .jobs.runner import HUNG_EXIT_CODE, Runner, exit_now

    settings = get_settings()
    hub = Hub.from_settings(settings)
    outbox.resume(hub)  # audit events a process on this host could not write before it stopped
    runner = Runner(hub, lease_seconds=settings.jobs.lease_seconds,
                    poll_seconds=settings.jobs.poll_seconds, extra_modules=settings.jobs.extra_modules, name=name,
                    max_hung_attempts=settings.jobs.max_hung_attempts)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    if settings.jobs.metrics_port:  # a worker serves no HTTP: its job counters need a port of their own
        from prometheus_client import start_http_server

        start_http_server(settings.jobs.metrics_port, addr=settings.jobs.metrics_host)
    err.print(f"[bold]worker[/] {runner.worker_id} running {len(runner.kinds)} job kinds")
    runner.run_forever()
    if runner.restart_needed:  # threads hung past their time limit: only a new process frees them
        err.print(f"[red]error:[/] {len(runner.hung_attempts)} job attempts hung past their time limit: exiting "
                  "so that a fresh worker starts")
        exit_now(HUNG_EXIT_CODE)
    if runner.stale:  # exit non-zero: a supervisor restarts it, with the current secret
        err.print("[red]error:[/] the hub secret was rotated: restart this worker with the current secret")
        raise typer.Exit(3)


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
    data: dict[str, Any] = get_settings().masked()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    import tomli_w

    def without_unset(value: dict[str, Any]) -> dict[str, Any]:  # TOML has no null: leave unset values out
        return {k: without_unset(v) if isinstance(v, dict) else v for k, v in value.items() if v is not None}

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
        from .vai.demo import queue_vai_demo

        lines = seed_demo(hub)
        lines.insert(-1, queue_vai_demo(hub))  # a job: `strongroom serve` runs it once it is up
        for line in lines:
            console.print(line)


def run() -> None:
    """The `strongroom` command (console script): ``app`` with the refusals every command shares in one line."""
    from .client import print_error
    from .hubclient import HubError, Unreachable
    from .hubsecret import WeakSecret

    try:
        app()
    except WeakSecret as exc:  # raised by whichever command opens the hub first: say what to do, not a traceback
        err.print(f"[red]configuration error:[/] {exc.setting}: {exc}")
        raise SystemExit(2) from None
    except HubError as exc:  # a hub's refusal no command caught: one clean line (its words made safe), exit 1
        print_error(exc)
        raise SystemExit(3 if isinstance(exc, Unreachable) else 1) from None


if __name__ == "__main__":
    run()
