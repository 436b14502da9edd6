"""Events the state machines hand to their drivers: frozen records (``record.record``), named as nouns.

The events of every file or chunk have a hand-written ``__init__`` that stores each field
straight into the instance's ``__dict__`` (about half the cost of a dataclass's generated one,
which calls ``object.__setattr__`` per field); the rest take ``record``'s shared one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .record import record

from ..errors import ErrorCode
from .manifest import FileEntry
from .messages import Decision, Result
from .ranges import RangeSet

if TYPE_CHECKING:  # (a send without a receipt does not load the receipt module)
    from .secure.receipt import Entry, ReceiptEnd


class Event:
    __slots__ = ()


@record
class HandshakeComplete(Event):
    version: int
    agent: str
    flags: int
    max_payload: int


# -- seen by the receiver ---------------------------------------------------
@record
class FileOffered(Event):
    """Answer with ``decide`` (regular files) or ``file_result`` (dirs, links)."""

    file_id: int
    entry: FileEntry

    def __init__(self, file_id: int, entry: FileEntry) -> None:
        d = self.__dict__
        d["file_id"] = file_id
        d["entry"] = entry


@record
class FileRefused(Event):
    """An item beyond what the sender announced (``announced.Announced``); answer with
    ``file_result`` (a refusal: nothing of it is looked at or written)."""

    file_id: int
    entry: FileEntry
    reason: str


@record
class SmallFileReceived(Event):
    """A whole file arrived in one frame; answer with ``file_result``."""

    file_id: int
    entry: FileEntry
    digest: bytes
    data: bytes | memoryview

    def __init__(self, file_id: int, entry: FileEntry, digest: bytes, data: bytes | memoryview) -> None:
        d = self.__dict__
        d["file_id"] = file_id
        d["entry"] = entry
        d["digest"] = digest
        d["data"] = data


@record
class SmallFilesReceived(Event):
    """Whole files, each in its SMALL_FILE frame, that arrived one after another: one event for
    the run (a receiver made with ``small_runs=True``).  The lists are aligned; answer each file
    with ``file_result``, or the OK ones together with ``files_ok``."""

    file_ids: list
    entries: list
    digests: list
    datas: list

    def __init__(self, file_ids: list, entries: list, digests: list, datas: list) -> None:
        d = self.__dict__
        d["file_ids"] = file_ids
        d["entries"] = entries
        d["digests"] = digests
        d["datas"] = datas


@record
class ChunkReceived(Event):
    """A verified chunk; ``data`` is valid until the next ``get_buffer`` call."""

    file_id: int
    index: int
    offset: int
    checksum: int
    data: bytes | memoryview

    def __init__(self, file_id: int, index: int, offset: int, checksum: int, data: bytes | memoryview) -> None:
        d = self.__dict__
        d["file_id"] = file_id
        d["index"] = index
        d["offset"] = offset
        d["checksum"] = checksum
        d["data"] = data


@record
class FileDataComplete(Event):
    """Every chunk is in; verify ``digest``, finalize, then ``file_result``."""

    file_id: int
    digest: bytes

    def __init__(self, file_id: int, digest: bytes) -> None:
        d = self.__dict__
        d["file_id"] = file_id
        d["digest"] = digest


@record
class FileRestarted(Event):
    """The sender found the partial stale: forget the held chunks of this file."""

    file_id: int


@record
class FileWithdrawn(Event):
    """The sender skipped or aborted the file; release it, then ``file_result``."""

    file_id: int
    code: ErrorCode | int
    message: str


@record
class ReceiptDue(Event):
    """Every item has its RESULT and the sender asked for a receipt: answer with
    ``send_receipt(time_ns)`` (the receiver's wall clock), which also sends DONE."""


@record
class DirCheckRequested(Event):
    """CHECK_DIR: compare the destination directory ``path`` (a wire path, unchecked) with
    ``count`` entries of listing digest ``digest``; answer with ``dir_state``."""

    dir_id: int
    path: bytes
    count: int
    digest: bytes


# -- seen by the sender -----------------------------------------------------
@record
class DirStateReceived(Event):
    """The receiver's answer to ``check_dir``: DIR_SAME, DIR_DIFFERENT or DIR_ABSENT."""

    dir_id: int
    state: int


@record
class DecisionReceived(Event):
    decision: Decision

    def __init__(self, decision: Decision) -> None:
        d = self.__dict__
        d["decision"] = decision

    @property
    def held(self) -> RangeSet:
        return self.decision.held


@record
class FileResolved(Event):
    result: Result

    def __init__(self, result: Result) -> None:
        d = self.__dict__
        d["result"] = result


@record
class RunResolved(Event):
    """Files ``first`` .. ``first + count - 1`` are all OK (a RESULT_RUN), each with the digest
    it was sent with (``digests``, in order): what that many ``FileResolved`` say, as one event.
    Only to a driver that asked for it (``SenderConnection.run_events``)."""

    first: int
    count: int
    digests: list


@record
class ReceiptEntries(Event):
    """Receipt entries, each already matched against what we sent (store them)."""

    entries: tuple[Entry, ...]


@record
class ReceiptVerified(Event):
    """The receipt's END: its signature verifies over every entry before it."""

    end: ReceiptEnd


# -- both ---------------------------------------------------------------------
@record
class SessionComplete(Event):
    """Both sides said DONE: every file has its result; close the connection."""


@record
class PeerFailed(Event):
    """The peer sent ERROR; the connection is finished."""

    code: ErrorCode | int
    message: str
