"""A client of the DataCite REST API's DOI endpoints (https://support.datacite.org/reference/post_dois):
create a draft, update metadata, register/publish/hide by ``event``, read, delete a draft. JSON:API
bodies, basic auth with the repository id and password. DataCite's errors become ``DataCiteError``s
whose message says what to do. An adapter: no web or database imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from .. import bounded_http

JSON_API = "application/vnd.api+json"
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a DOI's record, or an error
EVENTS = ("register", "publish", "hide")


class DataCiteError(Exception):
    """DataCite refused or could not be reached. ``retry``: worth trying again later."""

    def __init__(self, message: str, *, status: int | None = None, retry: bool = False,
                 titles: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.retry, self.titles = status, retry, titles


class DoiTaken(DataCiteError):
    """Creating a DOI that already exists (DataCite answers 422 "This DOI has already been taken")."""


@dataclass(frozen=True)
class DoiRecord:
    doi: str
    state: str  # draft | registered | findable
    url: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


def _titles(response: httpx.Response) -> tuple[str, ...]:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return ()
    out = []
    for e in errors if isinstance(errors, list) else []:
        if isinstance(e, dict):
            title = str(e.get("title") or e.get("detail") or "").strip()
            source = e.get("source")
            out.append(f"{source}: {title}" if source and isinstance(source, str) and source not in title else title)
    return tuple(t for t in out if t)


def _error(response: httpx.Response, doi: str | None) -> DataCiteError:
    status, titles = response.status_code, _titles(response)
    said = "; ".join(titles) or response.reason_phrase
    what = f"DOI {doi}" if doi else "the DOI"
    if status == 401:
        return DataCiteError(f"DataCite refused the repository's credentials ({said}): check [doi] repository_id "
                             "and password", status=status, titles=titles)
    if status == 403:
        return DataCiteError(f"DataCite does not let this repository change {what} ({said}): is the prefix "
                             "assigned to the repository?", status=status, titles=titles)
    if status == 404:
        return DataCiteError(f"DataCite does not know {what} ({said})", status=status, titles=titles)
    if status in (409, 422) and any("taken" in t.lower() for t in titles):
        return DoiTaken(f"{what} already exists at DataCite", status=status, titles=titles)
    if status == 405:
        return DataCiteError(f"DataCite refused: {what} is registered or findable, and only drafts can be deleted "
                             f"({said})", status=status, titles=titles)
    if status == 422:
        return DataCiteError(f"DataCite rejected the metadata of {what}: {said}", status=status, titles=titles)
    if status == 429 or status >= 500:
        return DataCiteError(f"DataCite is unavailable ({status} {said}); will try again", status=status,
                             retry=True, titles=titles)
    return DataCiteError(f"DataCite answered {status} for {what}: {said}", status=status, titles=titles)


def _record(response: httpx.Response) -> DoiRecord:
    try:
        data = response.json()["data"]
        attrs = data["attributes"]
        return DoiRecord(doi=str(attrs.get("doi") or data["id"]).lower(), state=str(attrs["state"]),
                         url=attrs.get("url"), attributes=attrs)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataCiteError(f"DataCite sent an answer this client cannot read ({exc!r})",
                            status=response.status_code, retry=True) from None


class DataCiteClient:
    """One repository's view of DataCite. ``endpoint``: https://api.test.datacite.org (test) or
    https://api.datacite.org (production)."""

    def __init__(self, endpoint: str, repository_id: str, password: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        # DataCite's answers are read as any remote partner's: bounded in size and time, never decompressed
        bounded = bounded_http.BoundedTransport(bounded_http.Bounds(MAX_ANSWER_BYTES, 2 * timeout, timeout))
        self.http = httpx.Client(base_url=endpoint.rstrip("/"), auth=(repository_id, password), timeout=timeout,
                                 headers={"Accept": JSON_API, "User-Agent": "Strongroom DOI client"},
                                 transport=transport or bounded)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DataCiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, doi: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = self.http.request(method, path, json=body,
                                         headers={"Content-Type": JSON_API} if body is not None else None)
        except httpx.TransportError as exc:
            raise DataCiteError(f"DataCite cannot be reached ({exc.__class__.__name__}: {exc}); will try again",
                                retry=True) from None
        if response.status_code >= 400:
            raise _error(response, doi)
        return response

    @staticmethod
    def _body(doi: str, attributes: dict[str, Any], event: str | None) -> dict[str, Any]:
        if event is not None and event not in EVENTS:
            raise ValueError(f"unknown DataCite event {event!r}")
        attrs = {**attributes, "doi": doi, **({"event": event} if event else {})}
        return {"data": {"id": doi, "type": "dois", "attributes": attrs}}

    def create(self, doi: str, attributes: dict[str, Any], *, event: str | None = None) -> DoiRecord:
        """POST /dois: a draft (no event), or registered/findable at once. ``DoiTaken`` if it exists."""
        return _record(self._send("POST", "/dois", doi, self._body(doi, attributes, event)))

    def update(self, doi: str, attributes: dict[str, Any], *, event: str | None = None) -> DoiRecord:
        """PUT /dois/{doi}: new metadata and/or a state change (register, publish, hide)."""
        return _record(self._send("PUT", f"/dois/{doi}", doi, self._body(doi, attributes, event)))

    def register(self, doi: str) -> DoiRecord:
        return self.update(doi, {}, event="register")

    def publish(self, doi: str) -> DoiRecord:
        return self.update(doi, {}, event="publish")

    def hide(self, doi: str) -> DoiRecord:
        """Findable → registered: the DOI still resolves, but leaves DataCite's search."""
        return self.update(doi, {}, event="hide")

    def get(self, doi: str) -> DoiRecord | None:
        """GET /dois/{doi}; None when DataCite does not know it (or will not show it to this repository)."""
        try:
            return _record(self._send("GET", f"/dois/{doi}", doi))
        except DataCiteError as exc:
            if exc.status == 404:
                return None
            raise

    def delete_draft(self, doi: str) -> None:
        """DELETE /dois/{doi}: only a draft can be deleted."""
        self._send("DELETE", f"/dois/{doi}", doi)
