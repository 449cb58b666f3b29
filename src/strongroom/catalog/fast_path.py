"""The cached public landing page, served without routing (``strongroom.app.PRE_ROUTING``).

Measured in-process (benchmarks/README.md, "Landing page"): once the page comes from the rendered-page cache with no
database read, most of a request's remaining cost was FastAPI finding the route (the landing route is registered
last, after every other route) and the worker-thread hops of a sync route and its session dependency. This handler
answers exactly the requests the route would answer from the cache — an anonymous ``GET /catalog/{slug}`` with no
query, whose page this process rendered for this very path and has checked under the current catalogue generation
(``generation``) — with the same response (``web._from_cache``: headers, 304, the view counted), inside the same
``observe`` middleware (security headers, metrics under the landing route's template, the log line). Anything
else — a miss, a stale or unknown generation, a cookie, ``?version`` — goes through the router as before.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from . import generation, page_cache

PREFIX = "/catalog/"


async def serve_cached_landing(scope: Scope, receive: Receive, send: Send) -> bool:
    path: str = scope["path"]
    if scope["method"] != "GET" or scope.get("query_string") or not path.startswith(PREFIX):
        return False
    slug = path[len(PREFIX):]
    if not slug or "/" in slug:
        return False
    from .web import _anonymous, _from_cache

    request = Request(scope, receive)
    if not _anonymous(request):
        return False
    sessions = scope["app"].state.hub.sessions
    page = page_cache.lookup((id(sessions), slug.lower(), None, request.headers.get("accept", "")))
    if page is None or page.path != path:
        return False  # only a page the landing route itself rendered for this exact path
    token = generation.token(sessions.kw["bind"])
    if token is None or page.token != token:
        return False  # changed, or unknown: the route checks the revision in the database
    scope["route"] = page.route
    await _from_cache(request, page)(scope, receive, send)
    return True
