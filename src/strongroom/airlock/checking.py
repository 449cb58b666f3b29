"""The automatic checks of a request (a job): every file decrypted on the hub and checked before any
reviewer sees the request."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..audit.service import Actor
from ..db import open_session, transaction
from ..errors import Invalid
from ..hub import Hub
from . import checks
from .models import (
    CHECKING,
    FAILED,
    IN_REVIEW,
    SUBMITTED,
    AirlockRequest,
)
from .plaintext import plaintext_copy, refs
from .service import MAX_FILE_BYTES, _everyone, _notify, _set_state, request_files, reviewer_ids


# -- checks (job) ------------------------------------------------------------------------------
def _strategy_for(session: Session, r: AirlockRequest) -> tuple[Any | None, str | None]:
    """(the project's newest strategy or None when it has none, why it cannot be used). Read as the hub, not
    as the requester: a requester who may not read the strategy (or who left the project since) must not get
    the weaker scan instead of the strategy's verification."""
    from ..strategies import service as strategies

    row = strategies.newest(session, r.project_id)
    if row is None:
        return None, None
    try:
        return strategies.parse(row.text), None
    except Invalid as exc:  # saved when it parsed; a rule tightened since: fail the check, do not weaken it
        return None, f"the project's strategy (version {row.version}) no longer parses: {exc.detail}"


def run_checks(hub: Hub, request_id: str) -> str:
    """Check every file of a submitted request, then hand it to the reviewers. Safe to run again."""
    actor = Actor.system("airlock")
    with transaction(hub.sessions) as session:
        r = session.get(AirlockRequest, request_id)
        if r is None or r.state not in (SUBMITTED, CHECKING):
            return r.state if r else "missing"
        if r.state == SUBMITTED:
            _set_state(session, actor, r, CHECKING)
    with open_session(hub.sessions, deferred=True) as session:
        r = session.get(AirlockRequest, request_id)
        assert r is not None
        strategy, strategy_problem = _strategy_for(session, r)
        file_ids = [af.file_id for af in request_files(session, r)]
    all_passed = True
    results: dict[str, tuple[str, list[dict[str, Any]], bool]] = {}
    for file_id, ref in refs(hub, file_ids).items():
        if ref is None:
            results[file_id] = ("missing", [{"name": "file", "passed": False,
                                             "detail": "the file is no longer ready in the archive"}], False)
            all_passed = False
            continue
        with plaintext_copy(hub, ref) as path:
            report = checks.check_file(path, ref.path, max_bytes=MAX_FILE_BYTES, strategy=strategy)
        found, passed = report.as_json(), report.passed
        if strategy_problem:
            found, passed = [*found, {"name": "strategy", "passed": False, "detail": strategy_problem}], False
        results[file_id] = (report.content_type, found, passed)
        all_passed = all_passed and passed
    with transaction(hub.sessions) as session:
        r = session.get(AirlockRequest, request_id)
        assert r is not None
        if r.state != CHECKING:
            return r.state
        for af in request_files(session, r):
            kind, found, passed = results[af.file_id]
            af.content_type, af.checks, af.check_state = kind, found, "passed" if passed else "failed"
        r.checks_passed = all_passed
        failed = [af.path for af in request_files(session, r) if af.check_state == "failed"]
        _set_state(session, actor, r, IN_REVIEW, checks_passed=all_passed, failed_files=failed[:50])
        _notify(session, r, "airlock_review", reviewer_ids(session, r.project_id),
                checks="all passed" if all_passed else f"{len(failed)} file(s) failed a check")
        return r.state




def give_up(session: Session, payload: dict[str, Any], error: str) -> None:
    """`airlock.check`'s ``on_given_up``: the checks' job failed for good (they raised, or the worker died, hung
    or ran past its time limit on the last attempt), so no reviewer would ever see the request: it fails with
    the reason, and the requester and reviewers are told (an import's staged bodies are then the sweep's).
    Idempotent: a request past its checks is left."""
    r = session.get(AirlockRequest, payload["request_id"], with_for_update=True)
    if r is None or r.state not in (SUBMITTED, CHECKING):
        return
    _set_state(session, Actor.system("airlock"), r, FAILED, reason=f"gave up: {error}"[:500])
    _notify(session, r, "airlock_decided", _everyone(session, r))
