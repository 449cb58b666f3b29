"""Federation tables: the peer hubs an operator registered (their pinned keys and what each may do), and the
public catalogue entries harvested from them (metadata only, marked remote, never counted as ours).

A peer carries what a later dataset sync needs too: its archive's crypt4gh public key (headers are
re-encrypted to it), its visa issuer and JWKS (its researchers' visas) and the directions allowed.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow


class Peer(IdMixin, CreatedMixin, Base):
    __tablename__ = "federation_peers"

    name: Mapped[str] = mapped_column(String(40), unique=True)  # a short slug: "karolinska", "hub-b"
    base_url: Mapped[str] = mapped_column(String(500), unique=True)
    signing_key: Mapped[str] = mapped_column(Text)  # its hub signing key (Ed25519, PEM), pinned
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    archive_key: Mapped[str] = mapped_column(Text)  # its archive's crypt4gh public key (for dataset sync)
    visa_issuer: Mapped[str] = mapped_column(String(500), default="")
    jwks_url: Mapped[str] = mapped_column(String(500), default="")
    # directions: outbound = we query, harvest and (later) push to it; inbound = it may do so to us
    outbound: Mapped[bool] = mapped_column(default=True)
    inbound: Mapped[bool] = mapped_column(default=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_harvest_at: Mapped[dt.datetime | None]
    last_harvest_error: Mapped[str | None] = mapped_column(Text)


class RemoteEntry(Base):
    """A published catalogue entry of a peer, as its DCAT feed described it at the last harvest."""

    __tablename__ = "federation_remote_entries"
    __table_args__ = (UniqueConstraint("peer_id", "remote_id", name="uq_federation_remote_entries_peer_remote"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), index=True)
    remote_id: Mapped[str] = mapped_column(String(1000))  # the dcat:Dataset IRI
    landing_url: Mapped[str] = mapped_column(String(1000))
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    publisher: Mapped[str] = mapped_column(String(300), default="")
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    search_text: Mapped[str] = mapped_column(Text, default="")
    harvested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


__all__ = ["Peer", "RemoteEntry"]
