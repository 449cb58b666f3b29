"""DRS responses checked against the official GA4GH DRS 1.5.0 OpenAPI description.

`drs-1.5.0/` beside this file is the specification's ``openapi/`` folder unchanged (ga4gh/data-repository-
service-schemas, tag drs-1.5.0, Apache-2.0, see its LICENSE), plus the GA4GH service-info 1.0.0 schema that
its service-info response references by URL (ga4gh-discovery/ga4gh-service-info, tag v1.0.0, Apache-2.0),
so nothing is fetched. The split YAML files are read as published; each relative ``$ref`` becomes a local
definition, and every response is validated with jsonschema-rs against the schema the specification
declares for its operation and status.

`check` is installed for the whole suite by conftest.py: every DRS response an ``httpx`` client receives in
any test is validated, and `SEEN` records which (operation, status) pairs were.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import yaml

SPEC = Path(__file__).with_name("drs-1.5.0")
OPENAPI = SPEC / "openapi"
SERVICE_INFO_URL = ("https://raw.githubusercontent.com/ga4gh-discovery/ga4gh-service-info/v1.0.0/"
                    "service-info.yaml#/components/schemas/Service")
BASE_PATH = "/ga4gh/drs/v1"
SEEN: Counter[tuple[str, str, int]] = Counter()  # (METHOD, path template, status) validated this session


def _key(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", path)


class _Bundler:
    """Every schema the specification reaches, as ``$defs`` of one document with local references."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def load(self, rel: str) -> Any:
        return yaml.safe_load((OPENAPI / rel).read_text())

    def ref(self, rel: str, pointer: str = "") -> dict[str, str]:
        """A reference to the schema at OPENAPI/rel (+ JSON pointer), bundled on first use."""
        name = _key(rel + pointer)
        if name not in self.defs:
            self.defs[name] = {}  # placeholder first: ContentsObject refers to itself
            node = self.load(rel)
            for part in [p for p in pointer.split("/") if p]:
                node = node[part]
            self.defs[name] = self.rewrite(node, rel)
        return {"$ref": f"#/$defs/{name}"}

    def rewrite(self, node: Any, rel: str) -> Any:
        if isinstance(node, dict):
            target = node.get("$ref")
            if isinstance(target, str):
                if target == SERVICE_INFO_URL:
                    return self.service_info()
                file, _, pointer = target.partition("#")
                here = posixpath.normpath(posixpath.join(posixpath.dirname(rel), file)) if file else rel
                return self.ref(here, pointer)
            return {k: self.rewrite(v, rel) for k, v in node.items() if k not in ("example", "x-in")}
        if isinstance(node, list):
            return [self.rewrite(v, rel) for v in node]
        return node

    def service_info(self) -> dict[str, str]:
        name = "service_info_Service"
        if name not in self.defs:
            doc = yaml.safe_load((SPEC / "service-info-1.0.0" / "service-info.yaml").read_text())
            schemas = doc["components"]["schemas"]
            text = json.dumps(schemas).replace('"#/components/schemas/', '"#/$defs/service_info_')
            for schema_name, schema in json.loads(text).items():
                self.defs[f"service_info_{schema_name}"] = schema
        return {"$ref": f"#/$defs/{name}"}


@cache
def operations() -> dict[tuple[str, str], dict[int, dict[str, Any] | None]]:
    """(METHOD, path template) → status → the JSON schema of the body (None: no body declared)."""
    bundler = _Bundler()
    main = bundler.load("data_repository_service.openapi.yaml")
    raw: dict[tuple[str, str], dict[int, Any]] = {}
    for template, item in main["paths"].items():
        rel = posixpath.normpath(item["$ref"])
        for method, op in bundler.load(rel).items():
            statuses: dict[int, Any] = {}
            for status, response in op["responses"].items():
                response_rel = posixpath.normpath(posixpath.join(posixpath.dirname(rel), response["$ref"]))
                doc = bundler.load(response_rel)
                schema = (doc.get("content") or {}).get("application/json", {}).get("schema")
                statuses[int(status)] = bundler.rewrite(schema, response_rel) if schema else None
            raw[(method.upper(), template)] = statuses
    error = bundler.ref("components/schemas/Error.yaml")
    out: dict[tuple[str, str], dict[int, dict[str, Any] | None]] = {}
    for op_key, statuses in raw.items():
        out[op_key] = {s: ({**schema, "$defs": bundler.defs} if schema else None) for s, schema in statuses.items()}
        out[op_key][0] = {**error, "$defs": bundler.defs}  # 0: any other error status
    return out


def template_of(method: str, path: str) -> str | None:
    rest = path[len(BASE_PATH):]
    candidates = [t for (m, t) in operations() if m == method]
    # literal paths win over templated ones (/objects/access before /objects/{object_id})
    for template in sorted(candidates, key=lambda t: t.count("{")):
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, rest):
            return template
    return None


def validate(method: str, path: str, status: int, body: Any) -> None:
    """Raises AssertionError when the response is not what DRS 1.5 declares for it."""
    template = template_of(method, path)
    assert template is not None, f"{method} {path}: not a DRS 1.5 operation"
    declared = operations()[(method, template)]
    if status in declared:
        schema = declared[status]
    else:
        assert status >= 400, f"{method} {template}: status {status} is not in DRS 1.5"
        schema = declared[0]  # every DRS error body is an Error
    if schema is None:
        return
    errors = [f"{e.instance_path}: {e.message}" for e in jsonschema_rs.Draft4Validator(schema).iter_errors(body)]
    assert not errors, f"{method} {template} {status} breaks DRS 1.5: {errors[:5]} in {json.dumps(body)[:500]}"
    SEEN[(method, template, status)] += 1


def check(response: httpx.Response) -> None:
    """Validate a response if it came from a DRS route (the suite-wide hook calls this)."""
    path = response.request.url.path
    if not path.startswith(BASE_PATH + "/") or response.request.method == "HEAD":
        return
    if "json" not in response.headers.get("content-type", ""):
        assert response.status_code in (204, 405) and not response.content, \
            f"{response.request.method} {path}: a DRS answer that is not JSON"
        return
    validate(response.request.method, path, response.status_code, response.json())
