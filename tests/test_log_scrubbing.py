"""Log lines never carry secrets: not in an exception's text, not nested in a value, not through the standard
library's loggers (uvicorn's errors); token-shaped text is redacted wherever it appears."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from strongroom import logs

TOKEN = "sr_ABCDEFGHIJKL_secretsecretsecret"
PEM = ("-----BEGIN CRYPT4GH ENCRYPTED PRIVATE KEY-----\nYzRnaC12MQAGYmNyeXB0ABQAAABkAAAAAAAAAAAAAAAAAAAA\n"
       "-----END CRYPT4GH ENCRYPTED PRIVATE KEY-----\n")
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"


@pytest.fixture
def lines(capsys):
    """Configure JSON logs as `strongroom serve` does; returns a reader of the lines written since."""
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    logs.configure("INFO", json=True)
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def test_an_exceptions_text_is_scrubbed(lines):
    try:
        raise ValueError(f"upstream refused Authorization: Bearer {TOKEN} for postgresql://hub:pg-pw-123@db/hub")
    except ValueError:
        structlog.get_logger("t").exception("call.failed")
    [line] = lines()
    assert "ValueError: upstream refused" in line["exception"] and "postgresql://hub:" in line["exception"]
    assert TOKEN not in json.dumps(line) and "pg-pw-123" not in json.dumps(line)


def test_nested_values_are_scrubbed(lines):
    structlog.get_logger("t").info("request", request={"headers": {"authorization": f"Bearer {TOKEN}",
                                                                   "accept": "application/json"},
                                                       "password": "hunter2hunter2", "items": [("a", TOKEN)]},
                                   job_id=7, ok=True)
    [line] = lines()
    text = json.dumps(line)
    assert TOKEN not in text and "hunter2hunter2" not in text
    assert line["request"]["headers"]["accept"] == "application/json" and line["job_id"] == 7 and line["ok"] is True
    assert line["request"]["headers"]["authorization"] == logs.MASK and line["request"]["password"] == logs.MASK


@pytest.mark.parametrize("text, secret, kept", [
    (f"token {TOKEN} used", TOKEN, "used"),
    (f"Authorization: Bearer {JWT}", JWT, "Authorization"),
    (f"a visa {JWT} from the issuer", JWT, "from the issuer"),
    (PEM, "YzRnaC12MQAGYmNyeXB0", "BEGIN CRYPT4GH ENCRYPTED PRIVATE KEY"),
    (PEM[:70], "YzRnaC12MQAGYmNy", "BEGIN CRYPT4GH"),  # cut short
    (repr(PEM.encode()), "YzRnaC12MQAGYmNyeXB0", "BEGIN"),  # escaped newlines
    ("postgresql://strongroom:change-me-now@postgresql:5432/strongroom", "change-me-now", "postgresql:5432/strongroom"),
    ("GET /callback?code=abc&client_secret=s3cr3t-value&state=1", "s3cr3t-value", "state=1"),
    ("{'password': 's3cr3t-value', 'user': 'alice'}", "s3cr3t-value", "alice"),
    # a second audit's cases: passwords holding "/" or "@", presigned URLs, an OAuth code, the environment,
    # quoted values with blanks
    ("Could not parse SQLAlchemy URL from string 'postgresql://sr:ab/cd+ef@db:5432/sr'", "ab/cd+ef", "db:5432/sr"),
    ("postgresql://sr:p@ss#w0rd@db/sr", "ss#w0rd", "db/sr"),
    ("GET 'https://b.s3.example/k?X-Amz-Credential=AKIAXX%2F&X-Amz-Signature=deadbeefcafe' 403", "deadbeefcafe",
     "b.s3.example/k"),
    ("GET /auth/callback?state=x&code=SplxlOBeZQQYbYS6WxSbIA", "SplxlOBeZQQYbYS6WxSbIA", "state=x"),
    ("PGPASSWORD=hunter2secret psql -h db", "hunter2secret", "psql -h db"),
    ('password: "quoted pass phrase" user: alice', "pass phrase", "alice"),
])
def test_token_shaped_text_is_redacted_anywhere(lines, text, secret, kept):
    assert secret in text
    structlog.get_logger("t").warning("oops", detail=text, more=[{"note": text}])
    [line] = lines()
    assert secret not in json.dumps(line)
    assert kept in line["detail"] and kept in line["more"][0]["note"]


def test_the_standard_librarys_loggers_are_scrubbed_too(lines):
    """uvicorn logs an application's unhandled exception to "uvicorn.error" with the traceback."""
    try:
        raise RuntimeError(f"token {TOKEN} rejected; password=hunter2hunter2")
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    logging.getLogger("some.library").warning("connecting to %s", "https://user:pw-in-url@example.org/x")
    first, second = lines()
    assert first["event"] == "Exception in ASGI application" and first["logger"] == "uvicorn.error"
    assert "RuntimeError: token sr_" in first["exception"] and first["level"] == "error"
    assert second["event"].startswith("connecting to https://user:") and second["level"] == "warning"
    text = json.dumps([first, second])
    assert TOKEN not in text and "hunter2hunter2" not in text and "pw-in-url" not in text


def test_reconfiguring_keeps_one_handler(lines):
    logs.configure("INFO", json=True)
    logging.getLogger("x").warning("once")
    assert [line["event"] for line in lines()] == ["once"]
