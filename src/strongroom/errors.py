"""Domain errors raised by services; the API turns them into RFC 9457 problem documents and the
web layer into pages. Services never import FastAPI."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad-request"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Invalid(DomainError):
    status, code = 422, "invalid"


class NotFound(DomainError):
    """Also used for things that exist but are outside the caller's projects (deny by default)."""

    status, code = 404, "not-found"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class Unauthenticated(DomainError):
    status, code = 401, "unauthenticated"


class MfaRequired(DomainError):
    """The caller must (re-)authenticate with a second factor before this action."""

    status, code = 403, "mfa-required"


class Conflict(DomainError):
    status, code = 409, "conflict"


class TooManyRequests(DomainError):
    status, code = 429, "too-many-requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A service we depend on (identity provider, object storage) cannot be reached right now."""

    status, code = 503, "unavailable"
