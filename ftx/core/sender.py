"""The sending side of a session, as a sans-I/O state machine.

The driver reads source files; this class only turns its calls into frames and
the receiver's frames into events.  A typical file::

    fid = conn.offer(entry)                # -> OFFER
    ... DecisionReceived(decision)         # which chunks the receiver holds
    conn.send_chunk(fid, i, data)          # -> DATA, for each missing chunk
    conn.end_file(fid, digest)             # -> FILE_END
    ... FileResolved(result)               # RESULT: written, identical or failed

``send_small_file`` replaces all of that for small files: no round trip.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING
from itertools import repeat
from operator import is_

from ..errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .checksum import chunk_checksum
from .config import Config
from .connection import Connection
from .events import (
    DecisionReceived,
    DirStateReceived,
    FileResolved,
    ReceiptEntries,
    ReceiptVerified,
    RunResolved,
    SessionComplete,
)
from .checksum import frame_checksum
from .frames import DATA_HEADER_SIZE, HEADER, HEADER_SIZE, Frame, FrameType, encode_data_header
from .manifest import ENTRY, FileEntry, Kind, built
from .messages import (
    HELLO_NO_RESUME,
    HELLO_QUICK_CHECK,
    HELLO_RECEIPT,
    ZERO_DIGEST,
    ROLE_SENDER,
    CheckDir,
    Decision,
    DirState,
    FileEnd,
    FileNotice,
    Offer,
    Result,
    decode_result_run,
)
from .tree import MAX_CHECK_ENTRIES
from .states import RESOLVED, SENDER_TRANSITIONS, FileState, In

if TYPE_CHECKING:
    from .secure.receipt import ReceiptChecker


def _receipt():
    """The receipt module, imported by a send that asked for a receipt (others never load it)."""
    from .secure import receipt

    return receipt


_SMALL_FILE = int(FrameType.SMALL_FILE)
_SMALL_FILE_H8 = _SMALL_FILE << 56  # the frame checksum's seed: type, flags 0, then the length


class SenderConnection(Connection):
    role = ROLE_SENDER
    transitions = SENDER_TRANSITIONS

    def __init__(self, config: Config | None = None, receipt: ReceiptChecker | None = None) -> None:
        """With ``receipt`` we ask the receiver for a signed receipt, and check it."""
        config = config or Config()
        # a receipt lists digests: a quick check (size + mtime) vouches for none, so it is off then
        quick = config.quick_check and receipt is None
        super().__init__(config, (0 if config.resume else HELLO_NO_RESUME) | (HELLO_RECEIPT if receipt else 0)
                         | (HELLO_QUICK_CHECK if quick else 0))
        self._quick = quick
        self._next_dir = 0
        self._checks: set[int] = set()  # CHECK_DIRs sent, no DIR_STATE yet
        self._next_id = 0
        self._entries: dict[int, FileEntry | None] = {}  # until the RESULT (None: a small file)
        self._finished = False
        self.receipt = receipt
        self._digests: dict[int, bytes] = {}  # receipt: the digest we computed, until the file's RESULT
        self._batch: bytearray | None = None  # SMALL_FILE frames of a run, the last item of _out
        # RESULT_RUN: the digest each file was sent with (SMALL_FILE, FILE_END), until its result;
        # a run settles only these, each OK with this digest (bounded by the offer window)
        self._sent: dict[int, bytes] | None = {} if config.result_run else None
        # a RESULT_RUN is one RunResolved event, not one FileResolved per file (set by a driver
        # that settles its files per run)
        self.run_events = False

    # -- calls from the driver ---------------------------------------------
    def _new_id(self, entry: FileEntry) -> int:
        self._require_open()
        if self._finished:
            raise LocalProtocolError("offer after finish()")
        if entry.kind == Kind.FILE and entry.chunk_size + DATA_HEADER_SIZE > self.peer.max_payload:
            raise LocalProtocolError("chunk size exceeds the receiver's frame limit")
        fid = self._next_id
        self._next_id += 1
        self._entries[fid] = entry
        return fid

    @property
    def quick_check(self) -> bool:
        """Both peers do the quick check: OFFERs may be answered IDENTICAL by size and mtime."""
        return self._quick and self.peer is not None and bool(self.peer.flags & HELLO_QUICK_CHECK)

    def check_dir(self, path: bytes, count: int, digest: bytes) -> int:
        """Ask whether the destination directory ``path`` holds ``count`` entries of listing
        digest ``digest`` (``core.tree.dir_digest``); the answer is a ``DirStateReceived``."""
        self._require_open()
        if self._finished:
            raise LocalProtocolError("CHECK_DIR after finish()")
        if not self.quick_check:
            raise LocalProtocolError("the receiver does not take CHECK_DIR (or the quick check is off)")
        if not 0 <= count <= MAX_CHECK_ENTRIES:
            raise LocalProtocolError(f"CHECK_DIR of {count} entries (at most {MAX_CHECK_ENTRIES})")
        did = self._next_dir
        self._next_dir = (did + 1) & 0xFFFFFFFF
        if did in self._checks:
            raise LocalProtocolError("too many directory checks in flight")
        self._checks.add(did)
        self._send_frame(FrameType.CHECK_DIR, CheckDir(did, count, digest, path).encode())
        return did

    @property
    def checks_in_flight(self) -> int:
        return len(self._checks)

    def offer(self, entry: FileEntry) -> int:
        fid = self._new_id(entry)
        self._files[fid] = FileState.OFFERED
        self._send_frame(FrameType.OFFER, Offer(fid, entry).encode())
        return fid

    def send_small_file(self, entry: FileEntry, data, digest: bytes) -> int:
        """A whole small file in one SMALL_FILE frame (no round trip); its id."""
        if len(data) != entry.size or entry.kind != Kind.FILE or entry.target:
            raise LocalProtocolError("small file data does not match its entry")
        return self.send_small(entry.path, entry.mode, entry.mtime_ns, data, digest, entry.chunk_size)

    def send_small(self, path: bytes, mode: int, mtime_ns: int, data, digest: bytes,
                   chunk_size: int | None = None) -> int:
        """``send_small_file`` of a regular file's wire ``path``, permission bits ``mode``, ``mtime_ns``
        and bytes ``data`` (``digest``: their XXH3-128), with no FileEntry to make per file.
        The frames of a run of small files are built into one buffer (one item of
        ``data_to_send``, sealed whole)."""
        peer = self.peer
        size = len(data)
        if chunk_size is None:
            chunk_size = self.config.chunk_size
        if self._error is not None or self.closed or peer is None or self._finished:
            self._new_id(built(FileEntry, path=path, kind=Kind.FILE, size=size, mode=mode, mtime_ns=mtime_ns,
                               chunk_size=chunk_size, target=b""))  # raises the reason
        if size + 256 + len(path) > peer.max_payload:
            raise LocalProtocolError("file too large for SMALL_FILE")
        if chunk_size + DATA_HEADER_SIZE > peer.max_payload:
            raise LocalProtocolError("chunk size exceeds the receiver's frame limit")
        fid = self._next_id
        self._next_id = fid + 1
        self._files[fid] = FileState.ENDED
        if self.receipt is None:
            self._entries[fid] = None  # (its RESULT needs no entry: nothing made per file)
        else:  # (hashlib only here: a send without a receipt does not load its OpenSSL, ~1 ms)
            import hashlib

            self._entries[fid] = built(FileEntry, path=path, kind=Kind.FILE, size=size, mode=mode & 0o7777,
                                       mtime_ns=mtime_ns, chunk_size=chunk_size, target=b"")
            self._remember(fid, digest, hashlib.sha256(data).digest())
        if self._sent is not None:
            self._sent[fid] = digest
        # SmallFile.pack and encode_frame, inline: ENTRY, path, (no target), digest, data
        payload = b"".join((ENTRY.pack(fid, Kind.FILE, 0, 0, mode & 0o7777, mtime_ns, size, chunk_size, len(path), 0),
                            path, digest, data))
        n = len(payload)
        out = self._out
        batch = self._batch
        if not out or out[-1] is not batch:  # anything queued since goes first: a new run
            batch = self._batch = bytearray()
            out.append(batch)
        batch += HEADER.pack(_SMALL_FILE, 0, 0, n, frame_checksum(_SMALL_FILE_H8 | n, payload))
        batch += payload
        self._out_bytes += HEADER_SIZE + n
        return fid

    @property
    def next_file_id(self) -> int:
        """The id the next file sent will get (``send_small_run``'s frames are built with it)."""
        return self._next_id

    def send_small_run(self, frames: bytearray, digests: list) -> int:
        """A run of small files already framed: ``frames`` holds ``len(digests)`` SMALL_FILE
        frames (``ftx.smallrun``), with ids ``next_file_id`` on, each file's XXH3-128 in
        ``digests``.  Queued as one item of ``data_to_send`` (not copied: keep it intact until
        sent); the files' bookkeeping is done per run.  Returns the first id.  Not with a
        receipt (its entries need each file's SHA-256: ``send_small``)."""
        self._require_open()
        if self._finished:
            raise LocalProtocolError("offer after finish()")
        if self.receipt is not None:
            raise LocalProtocolError("send_small_run with a receipt (use send_small)")
        if self.config.chunk_size + DATA_HEADER_SIZE > self.peer.max_payload:
            raise LocalProtocolError("chunk size exceeds the receiver's frame limit")
        first = self._next_id
        count = len(digests)
        if not count:
            return first
        ids = range(first, first + count)
        self._next_id = first + count
        self._files.update(dict.fromkeys(ids, FileState.ENDED))
        self._entries.update(dict.fromkeys(ids))  # (a RESULT needs no entry: nothing made per file)
        if self._sent is not None:
            self._sent.update(zip(ids, digests))
        self._batch = None  # the next send_small starts a buffer of its own, after these
        self._out.append(frames)
        self._out_bytes += len(frames)
        return first

    def send_chunk(self, file_id: int, index: int, data, checksum: int | None = None, framed: bool = True) -> None:
        """Queue one DATA frame.  ``data`` is not copied: keep it intact until sent.

        ``framed=False`` records the chunk as sent without a frame, for
        transports that carry chunk bytes themselves (UDP CHUNK frames).
        """
        entry = self._entries.get(file_id)
        if entry is None or not 0 <= index < entry.chunks:
            raise LocalProtocolError(f"chunk {index} of file {file_id} does not exist")
        if len(data) != entry.chunk_length(index):
            raise LocalProtocolError("chunk has the wrong length")
        self._step(file_id, In.CHUNK, remote=False)
        if framed:
            if checksum is None:
                checksum = chunk_checksum(data)
            self._send_buffers(encode_data_header(file_id, index, checksum, len(data)), data)

    def end_file(self, file_id: int, digest: bytes, sha256: bytes | None = None) -> None:
        """The file's data is all sent; ``digest`` its XXH3-128, ``sha256`` its SHA-256 (needed
        when a receipt was asked for: the receiver's signed entry must match it)."""
        self._step(file_id, In.END, remote=False)
        self._remember(file_id, digest, sha256)
        if self._sent is not None:
            self._sent[file_id] = bytes(digest)
        self._send_frame(FrameType.FILE_END, FileEnd(file_id, digest).encode())

    def _remember(self, file_id: int, digest: bytes, sha256: bytes | None) -> None:
        if self.receipt is not None:
            self._digests[file_id] = (bytes(digest), bytes(sha256) if sha256 is not None else _receipt().ZERO_SHA256)

    def skip_file(self, file_id: int, code: ErrorCode, message: str = "", digest: bytes = ZERO_DIGEST,
                  sha256: bytes | None = None) -> None:
        """Do not send the file after all (e.g. the destination is identical: ``digest`` and
        ``sha256`` are the source's, which a receipt will list)."""
        self._step(file_id, In.SKIP, remote=False)
        self._remember(file_id, digest, sha256)
        self._send_frame(FrameType.SKIP, FileNotice(file_id, code, message).encode())

    def restart_file(self, file_id: int, message: str = "") -> None:
        """The receiver's partial does not match the source: it must start over."""
        self._step(file_id, In.RESTART, remote=False)
        self._send_frame(FrameType.RESTART, FileNotice(file_id, ErrorCode.SOURCE_CHANGED, message).encode())

    def abort_file(self, file_id: int, code: ErrorCode, message: str) -> None:
        """Stop sending a file midway (source vanished, changed or unreadable)."""
        self._step(file_id, In.ABORT, remote=False)
        self._send_frame(FrameType.ABORT_FILE, FileNotice(file_id, code, message).encode())

    def finish(self) -> None:
        """No more offers; the receiver answers DONE once every file has its result."""
        self._require_open()
        if not self._finished:
            self._finished = True
            self._send_frame(FrameType.DONE)

    def entry(self, file_id: int) -> FileEntry | None:
        """The entry of a file awaiting its RESULT (None: a small file, sent with no receipt asked)."""
        return self._entries[file_id]

    # -- frames from the receiver ------------------------------------------
    def _chunks_awaiting_decision(self, file_id: int) -> int:
        entry = self._entries.get(file_id)
        if entry is None and file_id in self._entries:
            return 0  # a small file (no entry kept): the state table refuses the DECISION
        if entry is None or entry.kind != Kind.FILE:
            raise RemoteProtocolError(f"DECISION for file {file_id}, which awaits none")
        return entry.chunks

    def _on_frame(self, frame: Frame) -> None:
        t = frame.type
        if t == FrameType.DECISION:
            d = Decision.decode(frame.payload, self._chunks_awaiting_decision)
            self._step(d.file_id, In.DECISION, remote=True)
            self._events.append(DecisionReceived(d))
        elif t == FrameType.RESULT:
            r = Result.decode(frame.payload)
            self._step(r.file_id, In.RESULT, remote=True)
            del self._files[r.file_id]
            entry = self._entries.pop(r.file_id)
            if self._sent:
                self._sent.pop(r.file_id, None)
            if self.receipt is not None:
                rc = _receipt()
                digest, sha = self._digests.pop(r.file_id, (ZERO_DIGEST, rc.ZERO_SHA256))
                ok = r.ok and entry.kind == Kind.FILE
                self._checked(self.receipt.expect, rc.Entry(entry.path, entry.kind, entry.size, r.code,
                                                            digest if ok else ZERO_DIGEST,
                                                            sha if ok else rc.ZERO_SHA256))
            self._events.append(built(FileResolved, result=r))
        elif t == FrameType.RESULT_RUN:
            self._on_result_run(frame.payload)
        elif t == FrameType.DIR_STATE:
            d = DirState.decode(frame.payload)
            if d.dir_id not in self._checks:
                raise RemoteProtocolError(f"DIR_STATE for directory check {d.dir_id}, which awaits none")
            self._checks.discard(d.dir_id)
            self._events.append(DirStateReceived(d.dir_id, d.state))
        elif t == FrameType.RECEIPT:
            self._on_receipt(frame.payload)
        elif t == FrameType.DONE:
            if not self._finished or self._checks or any(s not in RESOLVED for s in self._files.values()):
                raise RemoteProtocolError("DONE before every file has its result")
            self.closed = True
            if self.receipt is not None and self.receipt.end is None:
                why = (f"the receiver declined: {self.receipt.declined}" if self.receipt.declined
                       else "the receiver sent none (an ftx without receipts?)")
                self._error = _receipt().ReceiptError(f"no receipt: {why}")
                raise self._error
            self._events.append(SessionComplete())
        else:
            raise RemoteProtocolError(f"{t.name} is not sent by a receiver")

    def _on_result_run(self, p) -> None:
        """Files first .. first + count - 1 are OK, each with the digest we sent it with: the
        same FileResolved events, in the same order, as that many RESULT frames."""
        first, count = decode_result_run(p)
        sent = self._sent
        if sent is None or self.receipt is not None:
            raise RemoteProtocolError("RESULT_RUN to a sender that did not ask for it (or asked for a receipt)")
        if count > len(sent):  # checked before any loop: a run of 2^32 files costs nothing
            raise RemoteProtocolError(f"RESULT_RUN of {count} files, but only {len(sent)} await a result")
        files = self._files
        ids = range(first, first + count)
        # all checked before any is settled (in C loops: map over the run, no Python per file)
        if not (all(map(sent.__contains__, ids)) and all(map(is_, map(files.get, ids), repeat(FileState.ENDED)))):
            bad = next(f for f in ids if f not in sent or files.get(f) is not FileState.ENDED)
            raise RemoteProtocolError(f"RESULT_RUN for file {bad}, which awaits no result of a digest we sent")
        deque(map(files.__delitem__, ids), 0)
        deque(map(self._entries.__delitem__, ids), 0)
        digests = list(map(sent.pop, ids))
        if self.run_events:
            self._events.append(RunResolved(first, count, digests))
            return
        for fid, digest in zip(ids, digests):
            self._events.append(built(FileResolved, result=built(
                Result, file_id=fid, code=ErrorCode.OK, digest=digest, message="")))

    def _on_receipt(self, p) -> None:
        if self.receipt is None:
            raise RemoteProtocolError("RECEIPT that was not asked for")
        rc = _receipt()
        part = p[0] if len(p) else 0
        if part == rc.PART_ENTRIES:  # version 1: XXH3 only, which binds no content
            self._checked(self.receipt.legacy, None)
        elif part == rc.PART_ENTRIES_SHA256:
            entries = []
            for e in rc.iter_entries(p):  # checked one by one: at most a batch is decoded
                self._checked(self.receipt.entries, (e,))
                entries.append(e)
            if not entries:
                raise RemoteProtocolError("RECEIPT ENTRIES without an entry")
            self._events.append(ReceiptEntries(tuple(entries)))
        elif part in (rc.PART_END, rc.PART_END_X509):
            end = rc.ReceiptEnd.decode(p)
            self._checked(self.receipt.finish, end)
            self._events.append(ReceiptVerified(end))
        elif part == rc.PART_DECLINED:
            self._checked(self.receipt.decline, rc.decode_declined(p))
        else:
            raise RemoteProtocolError(f"RECEIPT of unknown part {part}")

    def _checked(self, fn, arg) -> None:
        """A receipt that does not match: the receiver is told (ERROR AUTH) and we stop."""
        try:
            fn(arg)
        except _receipt().ReceiptError as exc:  # (evaluated only when fn raised)
            self._fail_local(exc)
