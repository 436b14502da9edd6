"""The ftx exception tree and the error codes that travel on the wire.

    FtxError
    ├── ProtocolError                 (code PROTOCOL)
    │   ├── LocalProtocolError        our own API misuse: a bug in the caller
    │   └── RemoteProtocolError       the peer sent bytes we cannot accept
    │       ├── FrameTooLarge         (code TOO_LARGE)
    │       ├── ChecksumMismatch      (code CHECKSUM)
    │       └── VersionMismatch       (code VERSION)
    ├── PeerError                     the peer told us it failed (carries its code)
    ├── TransportError                connection refused, reset, timed out, vanished
    ├── StorageError                  disk full, permission denied, unreadable source
    ├── UnsafePath                    a hostile or invalid path (code BAD_PATH)
    ├── ArgumentError                 a bad argument to the Python API (also a ValueError)
    └── AuthError (ftx.core.secure)   the peer did not prove itself; a record did not open (code AUTH)

Every class carries ``code``, the ``ErrorCode`` put in an ERROR or RESULT frame.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Codes carried by ERROR and RESULT frames (protocol.md, "Error codes")."""

    OK = 0  # RESULT only: file written and verified
    IDENTICAL = 1  # RESULT only: destination already held identical content
    PROTOCOL = 16
    CHECKSUM = 17
    VERSION = 18
    TOO_LARGE = 19
    BAD_PATH = 20
    EXISTS = 21
    STORAGE = 22
    DIGEST_MISMATCH = 23
    SOURCE_CHANGED = 24
    BUSY = 25
    ABORTED = 26
    UNSUPPORTED = 27
    INTERNAL = 28
    TIMEOUT = 29
    AUTH = 30  # authentication failed: wrong code, unknown key, bad certificate, forged record


class FtxError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str = "", code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ProtocolError(FtxError):
    code = ErrorCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """The caller used a state machine wrongly (e.g. sent data before a decision)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that violates protocol.md."""


class FrameTooLarge(RemoteProtocolError):
    code = ErrorCode.TOO_LARGE


class ChecksumMismatch(RemoteProtocolError):
    code = ErrorCode.CHECKSUM


class VersionMismatch(RemoteProtocolError):
    code = ErrorCode.VERSION


class PeerError(FtxError):
    """The peer reported a fatal error in an ERROR frame."""

    @classmethod
    def of_receiver(cls, message: str, code) -> "PeerError":
        """The receiver's ERROR (``message``, its ``code``), as a sender fails with it."""
        return cls(f"receiver error: {message}", code if isinstance(code, ErrorCode) else None)


class TransportError(FtxError):
    code = ErrorCode.ABORTED

    @classmethod
    def silent(cls, timeout: float) -> "TransportError":
        """The peer sent nothing (not even a PING) for ``timeout`` seconds."""
        return cls(f"peer silent for {timeout:g} s: connection lost", ErrorCode.TIMEOUT)


class StorageError(FtxError):
    code = ErrorCode.STORAGE


class UnsafePath(FtxError):
    code = ErrorCode.BAD_PATH


class ArgumentError(FtxError, ValueError):
    """A bad argument to the Python API (ftx/api.py): what a usage error is to the CLI."""
