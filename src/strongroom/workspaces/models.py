"""The workspace table: one row per notebook session, from start to stop (stopped rows stay as history)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow

STARTING, RUNNING, STOPPED, FAILED = "starting", "running", "stopped", "failed"
LIVE = (STARTING, RUNNING)
# the partial index's condition: a uid is leased while its workspace is live, released when it stops
_LIVE_SQL = text("state IN ('starting', 'running')")


class Workspace(IdMixin, CreatedMixin, Base):
    __tablename__ = "workspaces"
    __table_args__ = (Index("ix_workspaces_state", "state"),
                      # never two live workspaces on one uid: concurrent starts that picked the same one collide
                      # here (SQLite and PostgreSQL alike), and the loser leases another (service.lease)
                      Index("uq_workspaces_live_uid", "uid", unique=True, sqlite_where=_LIVE_SQL,
                            postgresql_where=_LIVE_SQL),
                      # nor on one network slot (namespace, addresses, rules): the same race, the same answer
                      Index("uq_workspaces_live_slot", "slot", unique=True, sqlite_where=_LIVE_SQL,
                            postgresql_where=_LIVE_SQL))

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(10), default=STARTING)
    launcher: Mapped[str] = mapped_column(String(10))  # local | slurm
    isolation: Mapped[str] = mapped_column(String(10))  # namespace | none
    slot: Mapped[int | None] = mapped_column(Integer)  # the /30 of the subnet (namespace isolation)
    host: Mapped[str] = mapped_column(String(255), default="")  # where Jupyter listens (the hub's proxy target)
    port: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)  # local launcher: the process group
    # local launcher, hub as root: the workspace's own uid (and gid), leased from [workspaces] uid_range at
    # start; kept after the stop as history (the partial unique index only covers live workspaces)
    uid: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(String(64), default="")  # Slurm
    booking_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                                   ForeignKey("compute_bookings.id"))
    ends_at: Mapped[dt.datetime | None]  # the booking's end: the workspace stops then
    warned_at: Mapped[dt.datetime | None]
    idle_warned_at: Mapped[dt.datetime | None]  # the owner was told it stops soon for idleness
    token_prefix: Mapped[str] = mapped_column(String(16), default="")  # STRONGROOM_TOKEN, revoked at stop
    scratch: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[dt.datetime | None]
    stopped_at: Mapped[dt.datetime | None]
    # user | operator | idle | booking-end | left-project | owner-deactivated | project-ended | …
    stop_reason: Mapped[str] = mapped_column(String(20), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class ClusterAccount(Base):
    """A hub user's POSIX account on the cluster: the Slurm launcher submits that member's workspaces as it
    (set by an operator, audited); without one a Slurm workspace does not start."""

    __tablename__ = "workspace_cluster_accounts"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    # one POSIX identity per person (two members on one account would read each other's files)
    account: Mapped[str] = mapped_column(String(64), unique=True)
    set_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Handoff(Base):
    """A workspace being opened: the hub's origin sends the browser to the workspaces' origin with a one-time code
    (``service.issue_handoff``), of which only an HMAC is stored. Good once (``used_at``, set by the one update that
    finds it unused: any web server sharing the database), for ``HANDOFF_SECONDS``; swept once expired. No foreign
    keys: a row lives seconds and must hold up neither a logout nor an account's erasure."""

    __tablename__ = "workspace_handoffs"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    session_hash: Mapped[str] = mapped_column(String(64))  # the hub session that opened it (its WebSession.id_hash)
    next_path: Mapped[str] = mapped_column(Text)  # where on the workspaces' origin the browser goes then
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]
