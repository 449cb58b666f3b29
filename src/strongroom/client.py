"""Commands that talk to a Strongroom hub over its HTTP API with an API token (`login`, `whoami`,
`projects`); the client, its login file and its errors are ``hubclient``'s."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .hubclient import DEFAULT_URL, HubClient, HubError, NotLoggedIn, Unreachable, save_login
from .text import for_terminal as shown

app = typer.Typer()
projects_app = typer.Typer(no_args_is_help=True, help="Your projects on the hub (over the API).")
app.add_typer(projects_app, name="projects")
console = Console()
err = Console(stderr=True)


# Every value a hub sends (or one stored from what a member typed) reaches the terminal through `shown`: a hostile
# hub's names and problem details print as text, never as Rich markup or terminal escape sequences.
def print_error(exc: HubError) -> None:
    """A refusal or failure, ``head: detail`` in red; both parts may be the hub's words (a problem document)."""
    err.print(f"[red]{shown(exc.head)}:[/] {shown(exc.detail)}" if exc.detail else f"[red]{shown(exc.head)}[/]")


def connect(**options: Any) -> HubClient:
    """The client for the saved login; without one, say how to log in and exit (status 2)."""
    try:
        return HubClient.from_config(**options)
    except NotLoggedIn as exc:
        print_error(exc)
        raise typer.Exit(2) from None


def api(method: str, path: str, **kwargs: Any) -> Any:
    """One request, not retried (these commands change things); errors end the command:
    status 3 when the hub cannot be reached, 1 when it refuses."""
    try:
        return connect(attempts=1, timeout=30).json(method, path, **kwargs)
    except HubError as exc:
        print_error(exc)
        raise typer.Exit(3 if isinstance(exc, Unreachable) else 1) from None


@app.command()
def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="An API token from your account page.")],
    url: Annotated[str, typer.Option(help="The hub's address.")] = DEFAULT_URL,
) -> None:
    """Save a hub address and API token for the other commands (file mode 0600)."""
    try:
        save_login(url, token)
    except NotLoggedIn as exc:  # plain http to another machine: the token is not written down, nor sent
        print_error(exc)
        raise typer.Exit(2) from None
    me = api("GET", "/api/v1/me")
    console.print(f"logged in to {shown(url)} as [bold]{shown(me['display_name'])}[/] "
                  f"(scopes: {shown(', '.join(me['scopes']))})")


@app.command()
def whoami() -> None:
    """Show who the saved token belongs to."""
    me = api("GET", "/api/v1/me")
    console.print(f"{shown(me['display_name'])} <{shown(me['email'] or me['subject'])}> via {shown(me['via'])}, "
                  f"scopes: {shown(', '.join(me['scopes']))}")


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
        table.add_row(*map(shown, (p["slug"], p["name"], p["project_class"], p["role"], p["end_date"])))
    console.print(table)


@projects_app.command("show")
def projects_show(slug: str) -> None:
    """One project: members, rights and security settings."""
    p = api("GET", f"/api/v1/projects/{slug}")
    console.print(f"[bold]{shown(p['name'])}[/] ({shown(p['slug'])}), PI {shown(p['pi']['display_name'])}, "
                  f"ethics {shown(p['ethics_ref'])}")
    members = Table("member", "role", "rights", title="members")
    for m in api("GET", f"/api/v1/projects/{slug}/members"):
        members.add_row(*map(shown, (m["user"]["display_name"], m["role"], ", ".join(m["rights"]))))
    console.print(members)
    settings = Table("setting", "state", "value", title="security settings")
    for s in api("GET", f"/api/v1/projects/{slug}/settings"):
        settings.add_row(shown(s["key"]), "locked" if s["locked"] else "[yellow]open[/]", shown(json.dumps(s["value"])))
    console.print(settings)


@projects_app.command("add-member")
def projects_add_member(slug: str, user: str,
                        role: Annotated[str, typer.Option(help="member | steward")] = "member") -> None:
    """Add a user (username, e-mail or id) to a project."""
    m = api("POST", f"/api/v1/projects/{slug}/members", json={"user": user, "role": role})
    console.print(f"added {shown(m['user']['display_name'])} as {shown(m['role'])}")
