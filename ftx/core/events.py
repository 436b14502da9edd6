"""Events the state machines hand to their drivers: frozen dataclasses, named as nouns."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ErrorCode
from .secure.receipt import Entry, ReceiptEnd
from .manifest import FileEntry
from .messages import Decision, Result
from .ranges import RangeSet


class Event:
    __slots__ = ()


@dataclass(frozen=True)
class HandshakeComplete(Event):
    version: int
    agent: str
    flags: int
    max_payload: int


# -- seen by the receiver ---------------------------------------------------
@dataclass(frozen=True)
class FileOffered(Event):
    """Answer with ``decide`` (regular files) or ``file_result`` (dirs, links)."""

    file_id: int
    entry: FileEntry


@dataclass(frozen=True)
class FileRefused(Event):
    """An item beyond what the sender announced (``announced.Announced``); answer with
    ``file_result`` (a refusal: nothing of it is looked at or written)."""

    file_id: int
    entry: FileEntry
    reason: str


@dataclass(frozen=True)
class SmallFileReceived(Event):
    """A whole file arrived in one frame; answer with ``file_result``."""

    file_id: int
    entry: FileEntry
    digest: bytes
    data: bytes | memoryview


@dataclass(frozen=True)
class ChunkReceived(Event):
    """A verified chunk; ``data`` is valid until the next ``get_buffer`` call."""

    file_id: int
    index: int
    offset: int
    checksum: int
    data: bytes | memoryview


@dataclass(frozen=True)
class FileDataComplete(Event):
    """Every chunk is in; verify ``digest``, finalize, then ``file_result``."""

    file_id: int
    digest: bytes


@dataclass(frozen=True)
class FileRestarted(Event):
    """The sender found the partial stale: forget the held chunks of this file."""

    file_id: int


@dataclass(frozen=True)
class FileWithdrawn(Event):
    """The sender skipped or aborted the file; release it, then ``file_result``."""

    file_id: int
    code: ErrorCode | int
    message: str


@dataclass(frozen=True)
class ReceiptDue(Event):
    """Every item has its RESULT and the sender asked for a receipt: answer with
    ``send_receipt(time_ns)`` (the receiver's wall clock), which also sends DONE."""


@dataclass(frozen=True)
class DirCheckRequested(Event):
    """CHECK_DIR: compare the destination directory ``path`` (a wire path, unchecked) with
    ``count`` entries of listing digest ``digest``; answer with ``dir_state``."""

    dir_id: int
    path: bytes
    count: int
    digest: bytes


# -- seen by the sender -----------------------------------------------------
@dataclass(frozen=True)
class DirStateReceived(Event):
    """The receiver's answer to ``check_dir``: DIR_SAME, DIR_DIFFERENT or DIR_ABSENT."""

    dir_id: int
    state: int


@dataclass(frozen=True)
class DecisionReceived(Event):
    decision: Decision

    @property
    def held(self) -> RangeSet:
        return self.decision.held


@dataclass(frozen=True)
class FileResolved(Event):
    result: Result


@dataclass(frozen=True)
class ReceiptEntries(Event):
    """Receipt entries, each already matched against what we sent (store them)."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class ReceiptVerified(Event):
    """The receipt's END: its signature verifies over every entry before it."""

    end: ReceiptEnd


# -- both ---------------------------------------------------------------------
@dataclass(frozen=True)
class SessionComplete(Event):
    """Both sides said DONE: every file has its result; close the connection."""


@dataclass(frozen=True)
class PeerFailed(Event):
    """The peer sent ERROR; the connection is finished."""

    code: ErrorCode | int
    message: str
