"""Structured JSON logs with secrets scrubbed before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|cookie|code_verifier|totp|otp|key",
                          re.IGNORECASE)
_BEARER = re.compile(r"sr_[A-Za-z0-9]{12}_[A-Za-z0-9_-]+")


def _scrub(_logger: Any, _name: str, event: EventDict) -> EventDict:
    for key in list(event):
        if key != "event" and _SECRET_KEYS.search(key):
            event[key] = "**********"
        elif isinstance(event[key], str):
            event[key] = _BEARER.sub("sr_**********", event[key])
    return event


def configure(level: str = "INFO", json: bool = True) -> None:
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Look sys.stderr up per logger, not once: it may be replaced (daemons, test capture).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
    for noisy in ("uvicorn.access", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
