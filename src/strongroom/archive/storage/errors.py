"""Storage errors: every failure is a :class:`StorageError` saying what, on which key, and why."""

from __future__ import annotations


class StorageError(Exception):
    """Any storage failure. ``str()`` says what was being done, on which key, and why."""


class InvalidKey(StorageError, ValueError):
    """The key is not a safe relative object name (traversal, absolute, NUL, ...)."""


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class UploadNotFound(StorageError):
    """The multipart upload id is unknown: never begun, already completed, or aborted."""


class StorageUnavailable(StorageError):
    """The storage server could not be reached or kept failing after the retries; try again later."""
