"""Members' cluster accounts: the one mapping from hub users to POSIX accounts on the cluster, set by an operator
per user (``workspaces.ClusterAccount``: ``strongroom admin cluster-account``, audited), its rule, and which of
a project's members a Slurm reservation names.

Only what an operator mapped counts: a hub username or an e-mail's local part never stands in for a cluster
account (``alice@uu.se`` and the local user ``alice`` are different people). A member without a usable account
is left out of the project's reservations, and told; so is an account that breaks the rule (stored before it
was enforced). Each account is one person's: the database holds that (a unique index, migration 0041).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..identity.models import User
from ..projects.models import Membership
from ..workspaces.models import ClusterAccount
from .scheduler import is_account

NONE, INVALID = "none", "invalid"  # why a member is left out


def account_problem(account: str) -> str:
    """Why ``account`` cannot be a member's cluster account, or "": the rule wherever the mapping is set (a POSIX
    user name, not root) and wherever it is read."""
    if not is_account(account):
        return (f"{account!r} is not a cluster account: a POSIX user name is 1 to 32 lower-case letters, digits, "
                "_ or -, starting with a letter or _")
    if account == "root":
        return "root is never a member's cluster account"
    return ""


@dataclass(frozen=True)
class LeftOut:
    user_id: uuid.UUID
    name: str  # display name
    why: str  # none | invalid


@dataclass(frozen=True)
class ClusterUsers:
    """A project's active members as the cluster knows them: the accounts its reservations name, and who is
    left out."""

    accounts: tuple[str, ...]  # sorted: Users=
    left_out: tuple[LeftOut, ...]

    @property
    def note(self) -> str:
        """What the booking page, the API and the audit say about the members left out ("" when none is)."""
        n = len(self.left_out)
        if not n:
            return ""
        return (f"{n} member{' has' if n == 1 else 's have'} no cluster account and cannot use this reservation "
                "(an operator sets one: strongroom admin cluster-account)")

    def audit(self) -> dict[str, object]:
        """For an audit event's details: the accounts named, who is left out and why, and the note."""
        return {"cluster_users": list(self.accounts),
                "left_out": [{"user_id": str(m.user_id), "why": m.why} for m in self.left_out],
                **({"note": self.note} if self.note else {})}


def of_project(session: Session, project_id: uuid.UUID) -> ClusterUsers:
    """The project's active members: each one's mapped account if it keeps the rule."""
    rows = session.execute(select(User.id, User.display_name, ClusterAccount.account)
                           .join(Membership, Membership.user_id == User.id)
                           .outerjoin(ClusterAccount, ClusterAccount.user_id == User.id)
                           .where(Membership.project_id == project_id, User.is_active.is_(True))
                           .order_by(User.display_name, User.id)).all()
    accounts, left_out = set(), []
    for user_id, name, account in rows:
        why = NONE if not account else INVALID if account_problem(account) else ""
        if why:
            left_out.append(LeftOut(user_id, name, why))
        else:
            accounts.add(account)
    return ClusterUsers(tuple(sorted(accounts)), tuple(left_out))
