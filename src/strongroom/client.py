"""Commands that talk to a Strongroom hub over its HTTP API with an API token.

The token comes from `strongroom login` (saved with mode 0600) or STRONGROOM_TOKEN; the hub's
address from the same file or STRONGROOM_URL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer()
projects_app = typer.Typer(no_args_is_help=True, help="Your projects on the hub (over the API).")
app.add_typer(projects_app, name="projects")
console = Console()
err = Console(stderr=True)


def _config_path() -> Path:
    base = os.environ.get("STRONGROOM_CLI_CONFIG")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "strongroom" / "cli.json"


def _load() -> dict[str, str]:
    path = _config_path()
    data = json.loads(path.read_text()) if path.exists() else {}
    url = os.environ.get("STRONGROOM_URL") or data.get("url") or "http://127.0.0.1:8000"
    token = os.environ.get("STRONGROOM_TOKEN") or data.get("token")
    if not token:
        err.print("[red]not logged in:[/] run [bold]strongroom login --token …[/] with a token from your "
                  "account page")
        raise typer.Exit(2)
    return {"url": url.rstrip("/"), "token": token}


def api(method: str, path: str, **kwargs: Any) -> Any:
    cfg = _load()
    try:
        response = httpx.request(method, cfg["url"] + path, headers={"Authorization": f"Bearer {cfg['token']}"},
                                 timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {cfg['url']}:[/] {exc}")
        raise typer.Exit(3) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(f"[red]{response.status_code}:[/] {detail}")
        raise typer.Exit(1)
    return response.json() if response.content else None


@app.command()
def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="An API token from your account page.")],
    url: Annotated[str, typer.Option(help="The hub's address.")] = "http://127.0.0.1:8000",
) -> None:
    """Save a hub address and API token for the other commands (file mode 0600)."""
    path = _config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "token": token.strip()}, fh)
    me = api("GET", "/api/v1/me")
    console.print(f"logged in to {url} as [bold]{me['display_name']}[/] (scopes: {', '.join(me['scopes'])})")


@app.command()
def whoami() -> None:
    """Show who the saved token belongs to."""
    me = api("GET", "/api/v1/me")
    console.print(f"{me['display_name']} <{me['email'] or me['subject']}> via {me['via']}, "
                  f"scopes: {', '.join(me['scopes'])}")


@projects_app.command("list")
def projects_list() -> None:
    """Projects you are a member of."""
    found = api("GET", "/api/v1/projects")
    if not found:
        console.print("You are not a member of any project yet. A project's PI adds you; a hub administrator "
                      "creates projects (`strongroom admin create-project`).")
        return
    table = Table("id", "name", "class", "role", "ends")
    for p in found:
        table.add_row(p["slug"], p["name"], p["project_class"], p["role"], p["end_date"])
    console.print(table)


@projects_app.command("show")
def projects_show(slug: str) -> None:
    """One project: members, rights and security settings."""
    p = api("GET", f"/api/v1/projects/{slug}")
    console.print(f"[bold]{p['name']}[/] ({p['slug']}), PI {p['pi']['display_name']}, ethics {p['ethics_ref']}")
    members = Table("member", "role", "rights", title="members")
    for m in api("GET", f"/api/v1/projects/{slug}/members"):
        members.add_row(m["user"]["display_name"], m["role"], ", ".join(m["rights"]))
    console.print(members)
    settings = Table("setting", "state", "value", title="security settings")
    for s in api("GET", f"/api/v1/projects/{slug}/settings"):
        settings.add_row(s["key"], "locked" if s["locked"] else "[yellow]open[/]", json.dumps(s["value"]))
    console.print(settings)


@projects_app.command("add-member")
def projects_add_member(slug: str, user: str,
                        role: Annotated[str, typer.Option(help="member | steward")] = "member") -> None:
    """Add a user (username, e-mail or id) to a project."""
    m = api("POST", f"/api/v1/projects/{slug}/members", json={"user": user, "role": role})
    console.print(f"added {m['user']['display_name']} as {m['role']}")
