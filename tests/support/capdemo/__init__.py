"""A throwaway capability for tests/test_capabilities.py: one folder, one includeme, and it shows up
in the app, the command line, the job kinds and the schema."""

from __future__ import annotations

from pathlib import Path

from strongroom.capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("support.capdemo.models")
    config.add_api_router("support.capdemo.parts:api")
    config.add_web_router("support.capdemo.parts:pages")
    config.add_cli("support.capdemo.parts:cli", name="capdemo")
    config.add_cli("support.capdemo.parts:admin_cli", into="admin")
    config.add_jobs("support.capdemo.parts")
    config.add_hook("support.capdemo.parts:GREETERS", "support.capdemo.parts:greet")
    config.add_templates(Path(__file__).parent / "templates")
