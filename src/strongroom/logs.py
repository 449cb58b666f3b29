"""Structured JSON logs with secrets scrubbed before anything is written.

Every line goes through `scrub` as the last step before rendering, after exceptions are formatted: values
under secret-looking keys (at any depth of dicts, lists and tuples) are masked, and token-shaped text in
any string (the event, values, the formatted traceback) is redacted. The standard library's loggers
(uvicorn's errors, libraries) are rendered by the same processors, so they are scrubbed too.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

MASK = "**********"
# (the hub's cookies by name, under any prefix: ``sr_session``, ``__Host-sr_csrf``, ``sr_workspace``…)
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|cookie|csrf|code_verifier|totp|otp|key|"
                          r"^(__host-|__secure-)?sr_[a-z_]+$", re.IGNORECASE)
# token-shaped text, wherever it appears: (pattern, replacement)
_SECRET_TEXT: list[tuple[re.Pattern[str], str]] = [
    # a PEM-style private key block (Crypt4GH's, SSH, PKCS#8), also cut short or with escaped newlines
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----"
                r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)", re.DOTALL),
     r"-----BEGIN \1PRIVATE KEY-----" + MASK),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 " + MASK),
    (re.compile(r"sr_[A-Za-z0-9]{12}_[A-Za-z0-9_-]+"), "sr_" + MASK),  # the hub's API tokens
    # the hub's cookies, under any prefix (a Cookie header in an error's text): the name stays, the value goes
    (re.compile(r"\b((?:__Host-|__Secure-)?sr_[a-z][a-z_]*=)[^;\s'\"&,]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),  # a JWT (visas, ID tokens)
    # the password in a URL: postgresql://user:password@host, https://user:password@host — up to the last "@"
    # before a blank, as a password may hold "/", "#" or "@" itself (SQLAlchemy quotes the URL it cannot parse)
    (re.compile(r"\b([a-z][a-z0-9+.-]{0,30}://[^\s:/@]{0,256}:)[^\s'\"]{1,256}@", re.IGNORECASE),
     r"\1" + MASK + "@"),
    # query parameters that are credentials: an OAuth code, presigned-URL signatures and credentials
    (re.compile(r"([?&](?:code|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
                r"x-goog-signature|token|access_token|api_key|key)=)[^&\s'\"#]+", re.IGNORECASE), r"\1" + MASK),
    # a quoted value of a secret-looking name, blanks included: password: "two words", 'secret': 'a b'
    (re.compile(r"\b(\w*(?:password|passwd|secret|passphrase)[\"']?\s*[:=]\s*)([\"'])(?:(?!\2)[^\n]){0,512}\2",
                re.IGNORECASE), r"\1\2" + MASK + r"\2"),
    # secret-looking names given a value in free text: key=value (query strings, keyword arguments, the
    # environment: PGPASSWORD=…) and 'key': value (a dict's repr, JSON)
    (re.compile(r"\b(\w*(?:password|passwd|secret|passphrase|client_secret|access_token|refresh_token|id_token|"
                r"api_key|token)(?:\s*=\s*[\"']?|[\"']\s*:\s*[\"']?))[^\s\"'&,;]+", re.IGNORECASE), r"\1" + MASK),
]
_PLAIN = (int, float, bool, type(None))


def scrub_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, _PLAIN):
        return value
    if depth > 20:  # deeper than any log line should be: say nothing rather than walk it
        return MASK
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) else _scrub_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, depth + 1) for v in value]
    # anything else is rendered by its repr (as the JSON renderer would): scrub that text
    return scrub_text(repr(value))


def _scrub(_logger: Any, _name: str, event: EventDict) -> EventDict:
    for key in list(event):
        if key != "event" and _SECRET_KEYS.search(key):
            event[key] = MASK
        else:
            event[key] = _scrub_value(event[key])
    return event


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to ``sys.stderr`` as it is at each record, not as it was at start (daemons, test capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str = "INFO", json: bool = True) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Processor] = [structlog.processors.add_log_level,
                               structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            _scrub,  # after the traceback became text: an exception's message is scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Look sys.stderr up per logger, not once: it may be replaced (daemons, test capture).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # The standard library's records (uvicorn's "Exception in ASGI application" with its traceback, libraries'
    # warnings) through the same processors: one handler on the root logger, replaced on reconfiguration.
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _scrub, renderer]))
    handler._strongroom = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_strongroom", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
