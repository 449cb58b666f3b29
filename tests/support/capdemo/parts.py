"""The throwaway capability's router, pages, commands, job kind and hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from strongroom.jobs.context import JobContext
from strongroom.jobs.registry import job

api = APIRouter(prefix="/api/v1/capdemo", tags=["capdemo"])
pages = APIRouter()
cli = typer.Typer(no_args_is_help=True, help="The throwaway capability.")
admin_cli = typer.Typer()
GREETERS: list[Callable[[], str]] = []


@api.get("/ping")
def ping() -> dict[str, str]:
    return {"capdemo": "pong"}


@pages.get("/capdemo", response_class=PlainTextResponse)
def page() -> str:
    return "a capdemo page"


@cli.command("hello")
def hello() -> None:
    """Say hello."""
    typer.echo("hello from capdemo")


@admin_cli.command("capdemo-admin")
def admin_hello() -> None:
    """An admin command."""
    typer.echo("admin capdemo")


@job("capdemo.echo", max_attempts=1)
def echo(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def greet() -> str:
    return "hi"
