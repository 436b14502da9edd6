"""In-memory drivers for the sans-I/O connections, shared by the fuzz targets and the
state-machine tests.

They answer a connection's events the way ``ftx.receiving`` / ``ftx.sending`` do, with
files held in memory instead of on disk: path checks, refusals whose messages name the
file (``os.fsdecode``, as the real driver), resumes, early failures, withdrawals.  Which
answer they give is a *policy*, a small integer the fuzzer or the state machine picks,
so every legal reply gets exercised.

A driver only makes calls that are legal in the file's current state: when the core
then raises ``LocalProtocolError``, the core accepted peer input it should have refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ftx.core import events as ev
from ftx.core.checksum import HeldDigest, chunk_checksum, file_digest
from ftx.core.manifest import FileEntry, Kind, check_link_target, check_wire_path
from ftx.core.messages import DECISION_EXISTS, DIR_ABSENT, DIR_DIFFERENT
from ftx.core.ranges import RangeSet
from ftx.core.states import FileState
from ftx.errors import ErrorCode, UnsafePath

#: a file the driver will hold in memory at most (larger ones are only counted)
KEEP_LIMIT = 1 << 20


def _own(data) -> bytes:
    return bytes(data)


# -- receiver ------------------------------------------------------------------------------
# policy bits of ReceiverDriver
ACCEPT_ALL = 0
REFUSE_EXISTS = 1  # refuse regular files as "exists and differs" (message names the file)
RESUME_FIRST = 2  # claim the first chunk as held (resume)
FAIL_EARLY = 4  # fail a file with STORAGE at its first chunk
BAD_DIGEST = 8  # report DIGEST_MISMATCH at the end whatever arrived


STALE_AFTER_RESULT = (ev.ChunkReceived, ev.FileDataComplete, ev.FileRestarted, ev.FileWithdrawn)


@dataclass
class ReceivedFile:
    entry: FileEntry
    chunks: dict[int, bytes] = field(default_factory=dict)
    held: RangeSet = field(default_factory=RangeSet)


class ReceiverDriver:
    """Answers a ``ReceiverConnection``'s events; keeps what arrived in ``files``.

    ``results`` maps file id to (code, path) for every RESULT given; ``completed``
    holds the content of regular files that were written and verified (code OK).
    """

    def __init__(self, conn, policy: int = ACCEPT_ALL, held_content=None) -> None:
        self.conn = conn
        self.policy = policy
        # path -> bytes the "disk" holds from an earlier run (for resume): its first chunk is offered as held
        self.held_content = held_content or {}
        self.files: dict[int, ReceivedFile] = {}
        self.results: list[tuple[int, int, bytes]] = []
        self.completed: list[tuple[bytes, bytes]] = []  # (path, content)
        self.events: list = []
        self.complete = False
        self.peer_failed = False

    def _result(self, fid: int, entry: FileEntry, code: ErrorCode, message: str = "",
                digest: bytes = bytes(16)) -> None:
        self.files.pop(fid, None)
        self.results.append((fid, int(code), entry.path))
        self.conn.file_result(fid, code, digest, message)

    def _small(self, fid: int, entry: FileEntry, digest: bytes, data, flush=None) -> bool:
        """Whether a small file is stored OK (then the caller settles it); else its RESULT is given,
        after ``flush`` (OK ids and digests not settled yet: they go first, with files_ok)."""
        why = None
        try:
            check_wire_path(entry.path)
        except UnsafePath as exc:
            why = (exc.code, str(exc))
        data = _own(data)
        if why is None and file_digest(data) != digest:
            why = (ErrorCode.DIGEST_MISMATCH, f"{os.fsdecode(entry.path)}: digest mismatch")
        if why is None and self.policy & REFUSE_EXISTS:
            why = (ErrorCode.EXISTS, f"{os.fsdecode(entry.path)} exists and differs")
        if why is None:
            self.completed.append((entry.path, data))
            return True
        if flush is not None and flush[0]:
            self.conn.files_ok(flush[0], flush[1])
            flush[0].clear()
            flush[1].clear()
        self._result(fid, entry, *why)
        return False

    def drain(self) -> None:
        while (e := self.conn.next_event()) is not None:
            self.handle(e)

    def handle(self, e) -> None:
        self.events.append(type(e).__name__)
        conn = self.conn
        if isinstance(e, STALE_AFTER_RESULT) and conn.file_state(e.file_id) in (None, FileState.DONE, FileState.FAILED):
            return  # queued before we failed the file early (as ReceiveSession.handle)
        if isinstance(e, ev.FileOffered):
            entry = e.entry
            try:
                check_wire_path(entry.path)
                if entry.kind == Kind.SYMLINK:
                    check_link_target(entry.path, entry.target)
            except UnsafePath as exc:
                self._result(e.file_id, entry, exc.code, str(exc))
                return
            if entry.kind != Kind.FILE:
                self._result(e.file_id, entry, ErrorCode.OK)
                return
            if self.policy & REFUSE_EXISTS:
                name = os.fsdecode(entry.path)
                message = f"{name} exists and differs (receiver has no --overwrite)"
                self._result(e.file_id, entry, ErrorCode.EXISTS, message)
                return
            f = self.files[e.file_id] = ReceivedFile(entry)
            held, held_digest = RangeSet(), 0
            old = self.held_content.get(entry.path)
            if self.policy & RESUME_FIRST and entry.chunks and old is not None:
                first = old[: entry.chunk_length(0)]
                if len(first) == entry.chunk_length(0):
                    held.add(0)
                    f.chunks[0] = first
                    h = HeldDigest()
                    h.add(chunk_checksum(first))
                    held_digest = h.value()
            f.held = held
            conn.decide(e.file_id, held, held_digest)
        elif isinstance(e, ev.ChunkReceived):
            f = self.files.get(e.file_id)
            if f is None:
                raise AssertionError("ChunkReceived for a file that was not accepted")
            if self.policy & FAIL_EARLY:
                self._result(e.file_id, f.entry, ErrorCode.STORAGE, f"{os.fsdecode(f.entry.path)}: disk full")
                return
            if chunk_checksum(e.data) != e.checksum:
                raise AssertionError("ChunkReceived with data that does not match its checksum")
            if f.entry.size <= KEEP_LIMIT:
                f.chunks[e.index] = _own(e.data)
        elif isinstance(e, ev.FileDataComplete):
            f = self.files.get(e.file_id)
            if f is None:
                return  # already failed: the core must not complete it (checked by the state table)
            data = b"".join(f.chunks.get(i, b"") for i in range(f.entry.chunks))
            if f.entry.size > KEEP_LIMIT or len(data) != f.entry.size:
                self._result(e.file_id, f.entry, ErrorCode.DIGEST_MISMATCH, "not kept")
                return
            digest = file_digest(data)
            if digest != e.digest or self.policy & BAD_DIGEST:
                message = f"{os.fsdecode(f.entry.path)}: digest mismatch"
                self._result(e.file_id, f.entry, ErrorCode.DIGEST_MISMATCH, message)
                return
            self.completed.append((f.entry.path, data))
            self._result(e.file_id, f.entry, ErrorCode.OK, digest=digest)
        elif isinstance(e, ev.DirCheckRequested):  # a "disk" with no such directory, or another one
            conn.dir_state(e.dir_id, DIR_ABSENT if e.digest[0] & 1 else DIR_DIFFERENT)
        elif isinstance(e, ev.FileRefused):  # beyond the sender's OFFER_SUMMARY (as ReceiveSession)
            self._result(e.file_id, e.entry, ErrorCode.ABORTED, e.reason)
        elif isinstance(e, ev.SmallFileReceived):
            if self._small(e.file_id, e.entry, e.digest, e.data):
                self._result(e.file_id, e.entry, ErrorCode.OK, digest=e.digest)
        elif isinstance(e, ev.SmallFilesReceived):  # a run: its OK files settle together (files_ok), in order
            ids, digests = [], []
            for fid, entry, digest, data in zip(e.file_ids, e.entries, e.digests, e.datas):
                if self._small(fid, entry, digest, data, flush=(ids, digests)):
                    ids.append(fid)
                    digests.append(digest)
                    self.results.append((fid, int(ErrorCode.OK), entry.path))
            if ids:
                conn.files_ok(ids, digests)
        elif isinstance(e, ev.FileRestarted):
            f = self.files.get(e.file_id)
            if f is not None:
                f.chunks.clear()
        elif isinstance(e, ev.FileWithdrawn):
            entry = conn.entry(e.file_id)
            # as ReceiveSession._on_withdrawn: unknown codes and OK become ABORTED
            code = e.code if isinstance(e.code, ErrorCode) and e.code != ErrorCode.OK else ErrorCode.ABORTED
            self._result(e.file_id, entry, code, e.message)
        elif isinstance(e, ev.SessionComplete):
            self.complete = True
        elif isinstance(e, ev.PeerFailed):
            self.peer_failed = True


# -- sender -------------------------------------------------------------------------------
# policy bits of SenderDriver
SEND_ALL = 0
SKIP_EXISTING = 1  # answer a DECISION with EXISTS by skipping (as the real sender does)
ABORT_MIDWAY = 2  # abort a multi-chunk file after its first chunk
RESTART_HELD = 4  # treat held chunks as stale: RESTART and send everything


class SenderDriver:
    """Offers files (``offer``) and answers a ``SenderConnection``'s events.

    ``send_chunk(fid, index, data)`` is how chunk bytes leave: by default a DATA frame
    (TCP); a UDP harness passes its own, plus ``file_sent(fid)`` and ``control_delivered()``:
    as ``ftx.sending`` over UDP, FILE_END and ABORT_FILE wait until the file's chunks are
    acknowledged, and chunks after a RESTART until the RESTART is.  Steps that must wait
    sit in ``pending``; ``poll()`` runs those whose condition holds.
    ``resolved`` maps file id to RESULT code.
    """

    def __init__(self, conn, policy: int = SEND_ALL, send_chunk=None, file_sent=None, control_delivered=None) -> None:
        self.conn = conn
        self.policy = policy
        self.content: dict[int, bytes] = {}
        self.resolved: dict[int, int] = {}
        self.events: list = []
        self.complete = False
        self.peer_failed = False
        self._send_chunk = send_chunk or (lambda fid, i, data: conn.send_chunk(fid, i, data))
        self._file_sent = file_sent or (lambda fid: True)
        self._control_delivered = control_delivered or (lambda: True)
        self.pending: list[tuple] = []  # (condition, action), run in order

    def offer(self, entry: FileEntry, data: bytes = b"", small: bool = False) -> int:
        if small:
            fid = self.conn.send_small_file(entry, data, file_digest(data))
        else:
            fid = self.conn.offer(entry)
        self.content[fid] = data
        return fid

    def drain(self) -> None:
        while (e := self.conn.next_event()) is not None:
            self.handle(e)
        self.poll()

    def _then(self, cond, action) -> None:
        self.pending.append((cond, action))
        self.poll()

    def poll(self) -> None:
        while self.pending and self.pending[0][0]():
            self.pending.pop(0)[1]()

    def _sending(self, fid: int) -> bool:
        return self.conn.file_state(fid) == FileState.SENDING

    def handle(self, e) -> None:
        self.events.append(type(e).__name__)
        conn = self.conn
        if isinstance(e, ev.DecisionReceived):
            d = e.decision
            fid = d.file_id
            if not self._sending(fid):
                return
            data = self.content[fid]
            entry = conn.entry(fid)
            if d.flags & DECISION_EXISTS and self.policy & SKIP_EXISTING:
                same = d.existing_digest == file_digest(data)
                conn.skip_file(fid, ErrorCode.IDENTICAL if same else ErrorCode.EXISTS, "destination exists")
                return
            held = d.held
            ready = lambda: True  # noqa: E731
            if held and self.policy & RESTART_HELD:
                conn.restart_file(fid, "held chunks differ from the source")
                held = RangeSet()
                ready = self._control_delivered
            self._then(ready, lambda: self._stream(fid, entry, data, held))
        elif isinstance(e, ev.FileResolved):
            self.resolved[e.result.file_id] = int(e.result.code)
        elif isinstance(e, ev.SessionComplete):
            self.complete = True
        elif isinstance(e, ev.PeerFailed):
            self.peer_failed = True

    def _stream(self, fid: int, entry: FileEntry, data: bytes, held: RangeSet) -> None:
        conn = self.conn
        sent = lambda: self._file_sent(fid)  # noqa: E731
        for i in held.complement(0, entry.chunks).values():
            if not self._sending(fid):
                return
            self._send_chunk(fid, i, data[i * entry.chunk_size : i * entry.chunk_size + entry.chunk_length(i)])
            if self.policy & ABORT_MIDWAY and entry.chunks > 1:
                self._then(sent, lambda: self._sending(fid) and conn.abort_file(
                    fid, ErrorCode.SOURCE_CHANGED, "source changed while being sent"))
                return
        self._then(sent, lambda: self._sending(fid) and conn.end_file(fid, file_digest(data)))
