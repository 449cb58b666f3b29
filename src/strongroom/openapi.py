"""The OpenAPI document, made to tell the truth about errors.

FastAPI documents only what a route declares. Every operation here can also answer errors that its
dependencies raise (a missing token, a missing scope, a path that names nothing of yours, a body
that is too large, a busy database), always as RFC 9457 problem documents. Those statuses are
derived here from each route's dependency tree, so a new route is documented correctly without
anyone remembering to list them; what only one route can answer (416, 409 on a specific state…)
is declared on the route with `errors(...)`.

The same goes for authentication: `securitySchemes` names the bearer token, the page session and its
CSRF header, and each operation's `security` (with the token scopes it needs) is derived from the principal
dependency it uses (`deps.TOKEN_SCOPES`: `DataRead` → `data:read`, …); an operation without one is public
(`security: []`). The GA4GH DRS operations answer errors in the DRS `Error` schema instead of problem
documents (app.error_for).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from .config import Settings

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "ProblemDetails",
    "description": "An RFC 9457 problem document; `code` is a stable machine-readable name.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "a URI naming the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"},
                   "description": "for invalid requests: which parameter or field, and why"},
    },
    "additionalProperties": True,
}
MEANINGS = {
    400: "Malformed request (e.g. a body that is not JSON)",
    401: "No valid API token",
    403: "The token lacks a scope, or the action needs a right or a recent second factor",
    404: "Nothing of yours by that name (outside your projects is the same as not existing)",
    409: "The resource is not in a state that allows this",
    413: "The request body is too large",
    416: "The requested range cannot be satisfied",
    422: "A parameter or field is invalid",
    429: "Too many attempts; see Retry-After",
    503: "A service it needs (the database, object storage) is busy or unreachable; see Retry-After",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DRS_PREFIX = "/ga4gh/drs/"
DRS_ERROR_REF = {"$ref": "#/components/schemas/DrsError"}
DRS_ERROR_SCHEMA: dict[str, Any] = {  # GA4GH DRS 1.5 components/schemas/Error.yaml
    "title": "DrsError",
    "description": "A GA4GH DRS error: `msg` says what went wrong, `status_code` repeats the HTTP status.",
    "type": "object",
    "properties": {"msg": {"type": "string"}, "status_code": {"type": "integer"}},
}
BEARER, SESSION, CSRF = "bearerAuth", "sessionCookie", "csrfHeader"


def security_schemes(settings: Settings) -> dict[str, Any]:
    """The document's security schemes; the session cookie under the name this hub gives it (``__Host-`` prefixed
    whenever its cookies are Secure: ``deps.cookie_name``)."""
    from .deps import SESSION_COOKIE, cookie_name
    from .identity.principal import SCOPES

    scopes = "\n".join(f"- `{name}`: {what}" for name, what in SCOPES.items())
    return {
        BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "sr_<prefix>_<secret>",
                 "description": "An API token from your account page (`strongroom login`), as "
                                "`Authorization: Bearer sr_…`. A token carries scopes; each operation's "
                                "`security` lists the one it needs:\n" + scopes},
        SESSION: {"type": "apiKey", "in": "cookie", "name": cookie_name(settings, SESSION_COOKIE),
                  "description": "The browser session of the hub's pages (log in at /login). The pages "
                                 "themselves are outside this document; the few API operations the pages "
                                 "call take it together with the page's CSRF token."},
        CSRF: {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
               "description": "The CSRF token of the page that calls the API with its session cookie."},
    }


def operation_security(route: RouteContext) -> list[dict[str, list[str]]]:
    """Who may call the operation, from its dependencies: a token with a scope, or (for the routes
    the pages call) the same scope by token or the page session with its CSRF header; [] is public."""
    from . import deps

    calls = [d.call for d in _calls(route.dependant)]
    for call in calls:
        if call in deps.TOKEN_OR_PAGE_SCOPES:
            return [{BEARER: [deps.TOKEN_OR_PAGE_SCOPES[call]]}, {SESSION: [], CSRF: []}]
    for call in calls:
        if call in deps.TOKEN_SCOPES:
            return [{BEARER: [deps.TOKEN_SCOPES[call]]}]
    return [{BEARER: []}] if deps._api_principal in calls else []


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that can answer these statuses beyond those derived here."""
    return {status: {"description": MEANINGS.get(status, "Error"),
                     "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}} for status in statuses}


def _calls(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _calls(sub)


def derived_statuses(route: RouteContext) -> set[int]:
    """The error statuses the route's dependencies and parameters can answer."""
    from . import deps

    calls = [d.call for d in _calls(route.dependant)]
    names = {getattr(c, "__qualname__", "") for c in calls}
    flat = [route.dependant, *_calls(route.dependant)]
    has = {kind: any(getattr(d, f"{kind}_params") for d in flat) for kind in ("path", "query", "header", "body")}
    statuses: set[int] = set()
    methods = route.methods or set()
    if deps._api_principal in calls:  # the identity of the bearer check is the point
        statuses.add(401)
    if "require_scope.<locals>.check" in names:
        statuses |= {403, 404}  # a missing scope; administration is invisible (404) to non-admins
    if "require_scope_or_page.<locals>.check" in names:
        statuses |= {401, 403}  # a token or the page's session: either may be missing or lack the scope
    if has["path"]:
        statuses.add(404)
    if any(has.values()):
        statuses.add(422)
    body = has["body"] or bool((route.openapi_extra or {}).get("requestBody"))
    if body or methods & WRITE_METHODS:
        statuses |= {400, 413, 422}
    if deps._db in calls:
        statuses.add(503)
        if methods & WRITE_METHODS:
            statuses.add(409)
    return statuses


def _exact_integers(node: Any) -> Any:
    """FastAPI's OpenAPI model holds bounds as floats: 2**63-1 would come out as 9.223372036854776e18,
    which is 2**63 and out of range. Integral bounds are written back as the integers they were."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum") and isinstance(value, float) \
                    and value.is_integer():
                node[key] = max(min(int(value), 2**63 - 1), -(2**63))
            else:
                _exact_integers(value)
    elif isinstance(node, list):
        for item in node:
            _exact_integers(item)
    return node


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with one that adds the derived error responses to every operation."""
    build_plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = _exact_integers(build_plain())
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["ProblemDetails"] = PROBLEM_SCHEMA
        schemas["DrsError"] = DRS_ERROR_SCHEMA
        doc["components"]["securitySchemes"] = security_schemes(app.state.hub.settings)
        for route in iter_route_contexts(app.routes):  # included routers' routes, with their prefixes
            if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = doc["paths"].get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    operation["security"] = operation_security(route)
                    _complete(operation, derived_statuses(route), drs=(route.path_format or "").startswith(DRS_PREFIX))
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(operation: dict[str, Any], statuses: set[int], *, drs: bool = False) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if drs:  # DRS names an invalid request 400 (app.error_for)
        responses.pop("422", None)
        statuses = {400 if s == 422 else s for s in statuses}
    error_content = {"application/json": {"schema": DRS_ERROR_REF}} if drs else {PROBLEM_JSON: {"schema": PROBLEM_REF}}
    for status in statuses:
        responses.setdefault(str(status), {"description": MEANINGS[status]})
    success_content = next((r["content"] for code, r in sorted(responses.items())
                            if code.startswith("2") and r.get("content")), None)
    for code, response in responses.items():
        if code >= "400" and (not response.get("content") or "HTTPValidationError" in str(response["content"])):
            # an error is a problem document unless the route says otherwise (FastAPI assumes its own 422)
            response["content"] = error_content
        elif code.startswith("2") and code != "204" and not response.get("content") and success_content:
            response["content"] = success_content  # e.g. 206: the same bytes as 200, in part
