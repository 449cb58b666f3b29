"""Beacon v2 responses validated against the GA4GH Beacon v2 framework JSON schemas.

`beacon-v2-framework/` beside this file is the framework's ``json`` folder (ga4gh-beacon/beacon-v2,
framework/json, examples left out), unchanged, under CC0 1.0 (see its LICENSE). Every schema is loaded into a
``referencing`` registry under its file URI, so relative ``$ref``s resolve locally and nothing is fetched.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).with_name("beacon-v2-framework")


@cache
def _registry() -> Registry:
    resources = []
    for path in ROOT.rglob("*.json"):
        resources.append((path.resolve().as_uri(), Resource.from_contents(json.loads(path.read_text()),
                                                                           default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


def validate(document: Any, schema: str) -> None:
    """Raise jsonschema.ValidationError unless ``document`` is valid against ``responses/<schema>.json``
    (or another path under the framework folder)."""
    path = (ROOT / (schema if schema.endswith(".json") else f"responses/{schema}.json")).resolve()
    validator = jsonschema.Draft202012Validator({"$ref": path.as_uri()}, registry=_registry(),
                                                format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        raise errors[0]
