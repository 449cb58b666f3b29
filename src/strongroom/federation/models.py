"""Federation tables: the peer hubs an operator registered (their pinned keys and what each may do), and the
public catalogue entries harvested from them (metadata only, marked remote, never counted as ours).

A peer carries what a later dataset sync needs too: its archive's crypt4gh public key (headers are
re-encrypted to it), its visa issuer and JWKS (its researchers' visas) and the directions allowed.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin, utcnow

Big = BigInteger().with_variant(Integer, "sqlite")


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


class SyncRun(IdMixin, CreatedMixin, Base):
    """Origin side: one push of a dataset (one released version, or all of them) to a peer, with progress."""

    __tablename__ = "federation_syncs"

    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int | None]  # None: every released version
    state: Mapped[str] = mapped_column(String(12), default="queued")  # queued | running | done | failed
    # "<peer id>:<dataset id>" while the push is unfinished (queued, running, failed), NULL once done or refused:
    # the database keeps one unfinished push of a dataset to a peer, however many callers start one at once
    active_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    # the worker running it now (any host) and until when; renewed while it runs, so a killed one's lapses
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None]
    files_total: Mapped[int] = mapped_column(Big, default=0)
    files_done: Mapped[int] = mapped_column(Big, default=0)
    bytes_total: Mapped[int] = mapped_column(Big, default=0)
    bytes_done: Mapped[int] = mapped_column(Big, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    finished_at: Mapped[dt.datetime | None]


class SyncFile(Base):
    """Origin side checkpoint: a file body the peer acknowledged (verified) in this push; never sent again."""

    __tablename__ = "federation_sync_files"

    sync_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_syncs.id", ondelete="CASCADE"),
                                               primary_key=True)
    file_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Incoming(IdMixin, CreatedMixin, Base):
    """Peer side: a push from an origin peer being received (its signed manifest), then published or refused."""

    __tablename__ = "federation_incoming"
    __table_args__ = (UniqueConstraint("peer_id", "sync_id", name="uq_federation_incoming_peer_sync"),)

    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), index=True)
    sync_id: Mapped[str] = mapped_column(String(64))  # the origin's push id
    origin_dataset_id: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(Text)  # the origin's Ed25519 signature over the manifest
    state: Mapped[str] = mapped_column(String(12), default="receiving")  # receiving | published | refused
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IncomingFile(Base):
    """Peer side: a body received and verified (body and plaintext SHA-256 against the manifest) for a push."""

    __tablename__ = "federation_incoming_files"

    incoming_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_incoming.id", ondelete="CASCADE"),
                                                   primary_key=True)
    origin_file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_key: Mapped[str] = mapped_column(String(300))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Mirror(Base):
    """Peer side: a read-only dataset mirrored from an origin peer, whose owner decides access (its visas)."""

    __tablename__ = "federation_mirrors"
    __table_args__ = (UniqueConstraint("peer_id", "origin_dataset_id", name="uq_federation_mirrors_origin"),)

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), index=True)
    origin_dataset_id: Mapped[str] = mapped_column(String(64))
    origin_url: Mapped[str] = mapped_column(String(1000))  # the dataset's page at the origin
    synced_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[dt.datetime | None]  # the origin withdrew the dataset (its signed notice)
    withdrawn_reason: Mapped[str] = mapped_column(Text, default="")


class SeenNonce(Base):
    """A signed hub-to-hub request's nonce, kept until its signature would be too old anyway: a request whose
    nonce is here is a replay. Shared by every web server (the database), swept by ``federation.nonces``."""

    __tablename__ = "federation_nonces"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class Notice(Base):
    """Origin side: a withdrawal (``withdrawn``, version 0: the dataset) or deprecation (``deprecated`` of a
    version) that a peer holding a mirror must learn of; sent signed by ``federation.notices`` until acknowledged."""

    __tablename__ = "federation_notices"
    __table_args__ = (UniqueConstraint("peer_id", "dataset_id", "kind", "version",
                                       name="uq_federation_notices_what"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64))  # this hub's (the origin's) dataset id
    kind: Mapped[str] = mapped_column(String(12))  # withdrawn | deprecated
    version: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    acked_at: Mapped[dt.datetime | None]


class MirrorFile(Base):
    """Peer side: which local archive file holds an origin file (so a re-push sends nothing twice)."""

    __tablename__ = "federation_mirror_files"

    peer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("federation_peers.id", ondelete="CASCADE"),
                                               primary_key=True)
    origin_file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id", ondelete="CASCADE"), index=True)
    body_sha256: Mapped[str] = mapped_column(String(64))


__all__ = ["Incoming", "IncomingFile", "Mirror", "MirrorFile", "Notice", "Peer", "RemoteEntry", "SeenNonce", "SyncFile",
           "SyncRun"]
