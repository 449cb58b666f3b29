"""SFTP tables: users' SSH public keys, and uploads received over SFTP (resumable, keyed by path)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, CreatedMixin, IdMixin

Big = BigInteger().with_variant(Integer, "sqlite")


class SshKey(IdMixin, CreatedMixin, Base):
    """A user's SSH public key: logs them in to the SFTP server (public-key authentication only).
    A key belongs to one account: the key, not the SSH user name, says who is connecting."""

    __tablename__ = "sftp_ssh_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(100), unique=True)  # SHA256:… as ssh-keygen -l shows
    algorithm: Mapped[str] = mapped_column(String(60))
    public_key: Mapped[str] = mapped_column(Text)  # the OpenSSH one-line form, without the comment
    comment: Mapped[str] = mapped_column(String(200), default="")
    last_used_at: Mapped[dt.datetime | None]


class SftpUpload(CreatedMixin, Base):
    """An archive upload that arrives over SFTP. While ``completed_at`` is empty it is a resumable session:
    ``received`` plaintext bytes are stored, encrypted, as ``parts`` multipart parts under the archive file's
    inbox key; opening the same path again (append / ``reput``) continues at ``received``."""

    __tablename__ = "sftp_uploads"
    __table_args__ = (Index("ix_sftp_uploads_project_path", "project_id", "path"),)

    file_id: Mapped[str] = mapped_column(ForeignKey("archive_files.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    header: Mapped[bytes] = mapped_column(LargeBinary)  # crypt4gh header (to the archive key): the session key
    received: Mapped[int] = mapped_column(Big, default=0)
    parts: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[dt.datetime | None]
