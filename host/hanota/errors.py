"""Domain errors of the host library. Only cli.py turns them into messages and exit codes."""
from __future__ import annotations


class HanotaError(Exception):
    """Base of every error the host library raises on purpose (not a bug).

    `reason` is a short stable name for reports and tests; str(err) is the message.
    """

    reason = "error"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class KeyFileError(HanotaError):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""

    reason = "key"


class ImageFormatError(HanotaError):
    """A file is not a well-formed OTA upgrade file (the reason names what is wrong)."""

    reason = "format"
