"""A local DataCite REST API for the tests (DataCite itself cannot be reached from the test machines),
served for real by uvicorn (``tests/support/live.serving``). Built from DataCite's published API
description (https://support.datacite.org/reference/post_dois, /put_dois-id, /get_dois-id,
/delete_dois-id and the "DOI states" guide, https://support.datacite.org/docs/doi-states):

- ``POST /dois``, ``PUT /dois/{id}`` (creates the DOI when it does not exist yet, as DataCite does),
  ``GET /dois/{id}``, ``DELETE /dois/{id}``; JSON:API bodies (``application/vnd.api+json``);
- HTTP basic auth with a repository id and password; the repository may use only its prefixes;
- states: a new DOI without ``event`` is a ``draft``; ``register`` makes draft → registered,
  ``publish`` makes draft or registered → findable, ``hide`` makes findable → registered; registered
  and findable DOIs never go back to draft and cannot be deleted; an event that does not apply to the
  current state is ignored (DataCite's state machine does not complain: ``whiny_transitions: false``);
- registering or publishing needs the mandatory metadata (creators, titles, publisher,
  publicationYear, types.resourceTypeGeneral) and a url;
- errors as DataCite words them: 401 "Bad credentials.", 403 "You are not authorized to access this
  resource.", 404 "The resource you are looking for doesn't exist.", 422 with ``source`` and
  ``title`` (e.g. "This DOI has already been taken"), 405 for deleting a registered DOI;
- anonymous ``GET`` sees findable DOIs only (drafts and registered DOIs are the repository's).
``calls`` records every request (method, path, event) so tests can check what the hub sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

JSON_API = "application/vnd.api+json"
MANDATORY = ("creators", "titles", "publisher", "publicationYear")
TRANSITIONS = {("draft", "register"): "registered", ("draft", "publish"): "findable",
               ("registered", "publish"): "findable", ("findable", "hide"): "registered"}


def _errors(status: int, *errors: dict[str, str]) -> JSONResponse:
    return JSONResponse({"errors": [{"status": str(status), **e} for e in errors]}, status_code=status,
                        media_type=JSON_API)


@dataclass
class FakeDataCite:
    repository_id: str = "STRONGROOM.TEST"
    password: str = "datacite-test-password"
    prefixes: tuple[str, ...] = ("10.80000",)
    dois: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer the next requests with (outages)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- helpers -------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool | None:
        """True: our repository; False: wrong credentials; None: no credentials sent."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.repository_id) and secrets.compare_digest(password, self.password)

    def _json(self, record: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse({"data": {"id": record["doi"], "type": "dois", "attributes": record,
                                      "relationships": {"client": {"data": {"id": self.repository_id.lower(),
                                                                            "type": "clients"}}}}},
                            status_code=status, media_type=JSON_API)

    def _apply(self, record: dict[str, Any], attrs: dict[str, Any]) -> JSONResponse | None:
        """Merge new attributes and run the event; an error response if DataCite would refuse."""
        event = attrs.pop("event", None)
        for key in ("doi", "prefix", "suffix", "state", "created", "updated", "registered", "published"):
            attrs.pop(key, None)
        merged = {**record, **attrs}
        if event is not None:
            if event not in ("register", "publish", "hide"):
                return _errors(422, {"source": "event", "title": f"Event '{event}' is not supported"})
            new = TRANSITIONS.get((record["state"], event), record["state"])
            if new != "draft":
                missing = [{"source": k, "title": "Can't be blank"} for k in MANDATORY if not merged.get(k)]
                if not (merged.get("types") or {}).get("resourceTypeGeneral"):
                    missing.append({"source": "types", "title": "Resource type general can't be blank"})
                if not merged.get("url"):
                    missing.append({"source": "url", "title": "Can't be blank"})
                if missing:
                    return _errors(422, *missing)
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            if new in ("registered", "findable") and not merged.get("registered"):
                merged["registered"] = now
            if new == "findable" and not merged.get("published"):
                merged["published"] = str(merged.get("publicationYear") or "")
            merged["state"] = new
        merged["updated"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record.clear()
        record.update(merged)
        return None

    def _body(self, raw: Any) -> dict[str, Any] | JSONResponse:
        data = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(data, dict) or data.get("type") != "dois" or not isinstance(data.get("attributes"), dict):
            return _errors(422, {"source": "data", "title": "Must be a JSON:API document with data.type 'dois'"})
        return data

    def _outage(self) -> JSONResponse | None:
        if self.fail_next:
            status = self.fail_next.pop(0)
            return _errors(status, {"title": "Service Unavailable"})
        return None

    async def _write_body(self, request: Request) -> dict | Response:
        """What every write answers first, in DataCite's order: an outage, then credentials, then the body."""
        if (down := self._outage()) is not None:
            return down
        if not self._authorised(request):
            return _errors(401, {"title": "Bad credentials."})
        try:
            return self._body(await request.json())
        except ValueError:
            return _errors(400, {"title": "You need to provide a payload following the JSONAPI spec"})

    # -- endpoints -----------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        self.calls.append(("POST", "/dois", None))
        data = await self._write_body(request)
        if isinstance(data, Response):
            return data
        attrs = dict(data["attributes"])
        doi = str(attrs.get("doi") or data.get("id") or "").lower()
        if not doi and attrs.get("prefix"):
            doi = f"{attrs['prefix']}/{secrets.token_hex(4)}"
        self.calls[-1] = ("POST", "/dois", attrs.get("event"))
        prefix = doi.partition("/")[0]
        if prefix not in self.prefixes:
            return _errors(403, {"title": "You are not authorized to access this resource."})
        with self.lock:
            if doi in self.dois:
                return _errors(422, {"source": "doi", "title": "This DOI has already been taken"})
            record = {"doi": doi, "prefix": prefix, "suffix": doi.partition("/")[2], "state": "draft",
                      "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
            refused = self._apply(record, attrs)
            if refused is not None:
                return refused
            self.dois[doi] = record
            return self._json(record, 201)

    async def update(self, request: Request) -> Response:
        doi = request.path_params["doi"].lower()
        self.calls.append(("PUT", f"/dois/{doi}", None))
        data = await self._write_body(request)
        if isinstance(data, Response):
            return data
        attrs = dict(data["attributes"])
        self.calls[-1] = ("PUT", f"/dois/{doi}", attrs.get("event"))
        prefix = doi.partition("/")[0]
        if prefix not in self.prefixes:
            return _errors(403, {"title": "You are not authorized to access this resource."})
        with self.lock:
            record = self.dois.get(doi)
            created = record is None
            if record is None:  # PUT of an unknown DOI creates it
                record = {"doi": doi, "prefix": prefix, "suffix": doi.partition("/")[2], "state": "draft",
                          "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
            refused = self._apply(record, attrs)
            if refused is not None:
                return refused
            self.dois[doi] = record
            return self._json(record, 201 if created else 200)

    async def read(self, request: Request) -> Response:
        doi = request.path_params["doi"].lower()
        self.calls.append(("GET", f"/dois/{doi}", None))
        if (down := self._outage()) is not None:
            return down
        auth = self._authorised(request)
        if auth is False:
            return _errors(401, {"title": "Bad credentials."})
        record = self.dois.get(doi)
        if record is None or (record["state"] != "findable" and not auth):
            return _errors(404, {"title": "The resource you are looking for doesn't exist."})
        return self._json(record)

    async def delete(self, request: Request) -> Response:
        doi = request.path_params["doi"].lower()
        self.calls.append(("DELETE", f"/dois/{doi}", None))
        if not self._authorised(request):
            return _errors(401, {"title": "Bad credentials."})
        with self.lock:
            record = self.dois.get(doi)
            if record is None:
                return _errors(404, {"title": "The resource you are looking for doesn't exist."})
            if record["state"] != "draft":
                return _errors(405, {"title": "Method not allowed"})
            del self.dois[doi]
        return Response(status_code=204)

    def app(self) -> Starlette:
        async def heartbeat(_: Request) -> Response:
            return PlainTextResponse("OK")

        return Starlette(routes=[
            Route("/healthz", heartbeat), Route("/heartbeat", heartbeat),
            Route("/dois", self.create, methods=["POST"]),
            Route("/dois/{doi:path}", self.update, methods=["PUT"]),
            Route("/dois/{doi:path}", self.read, methods=["GET"]),
            Route("/dois/{doi:path}", self.delete, methods=["DELETE"]),
        ])


def recorded_app(responses: dict[tuple[str, str], tuple[int, Any]]) -> Starlette:
    """Replays recorded DataCite answers over real HTTP: (method, path) → (status, JSON body)."""
    async def answer(request: Request) -> Response:
        key = (request.method, request.url.path)
        if request.url.path == "/healthz":
            return PlainTextResponse("OK")
        if key not in responses:
            return PlainTextResponse(f"nothing recorded for {key}", status_code=599)
        status, body = responses[key]
        return JSONResponse(body, status_code=status, media_type=JSON_API)

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST", "PUT", "DELETE"])])
