"""The receiving side of a session, as a sans-I/O state machine.

Frames become events; the driver answers with calls:

* ``FileOffered``       -> ``decide(file_id, held=..., ...)`` for a regular file,
                           or ``file_result(...)`` to refuse it / for dirs and links
* ``SmallFileReceived`` -> ``file_result``
* ``SmallFilesReceived`` -> ``file_result`` for each, or ``files_ok`` for those stored OK
                           (a run of SMALL_FILE frames; with ``small_runs=True``)
* ``FileRefused``       -> ``file_result`` refusing it (beyond the sender's OFFER_SUMMARY)
* ``ChunkReceived``     -> write the (already verified) bytes
* ``FileDataComplete``  -> verify the digest, finalize, ``file_result``
* ``FileRestarted``     -> forget held chunks
* ``FileWithdrawn``     -> release the file, ``file_result``
* ``DirCheckRequested`` -> list the destination directory, ``dir_state``

When the sender has said DONE and every file has its result, the receiver
answers DONE and emits ``SessionComplete``.
"""

from __future__ import annotations

from ..errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .config import Config
from .connection import Connection
from .events import (
    ChunkReceived,
    DirCheckRequested,
    FileDataComplete,
    FileOffered,
    FileRefused,
    FileRestarted,
    FileWithdrawn,
    ReceiptDue,
    SessionComplete,
    SmallFileReceived,
    SmallFilesReceived,
)
from .announced import Announced
from .frames import DATA_HEADER_SIZE, ITEM_COST, BufferLimit, Frame, FrameType, PauseInput, parse_data_payload
from .checksum import DIGEST_SIZE
from .manifest import ENTRY, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, FileEntry, Kind
from .messages import (
    DECISION_EXISTS,
    HELLO_NO_RESUME,
    HELLO_OVERWRITE,
    HELLO_QUICK_CHECK,
    HELLO_RECEIPT,
    ROLE_RECEIVER,
    ZERO_DIGEST,
    CheckDir,
    Decision,
    DirState,
    FileEnd,
    FileNotice,
    Offer,
    RESULT_RUN,
    OfferSummary,
    Result,
    SmallFile,
)
from .ranges import RangeSet
from .secure import receipt
from .tree import MAX_CHECK_ENTRIES
from .states import RECEIVER_TRANSITIONS, RESOLVED, FileState, In


FILE_STATE_COST = ITEM_COST  # bytes a receiver keeps per unsettled item besides its path (measured 1.5-2 KB)


_ENTRY_SIZE = ENTRY.size
_unpack_entry = ENTRY.unpack_from
_new_entry = object.__new__
_FILE = Kind.FILE


def unpack_small(p: bytes) -> tuple[int, FileEntry, bytes, bytes]:
    """``SmallFile.unpack`` in one struct call for the common frame (a regular file, no target,
    every field in range, the length exact); anything else goes to ``SmallFile.unpack``, which
    decodes it or raises its RemoteProtocolError.  The same result either way (tested)."""
    n = len(p)
    if n >= _ENTRY_SIZE and type(p) is bytes:  # (a view would give views, and the event owns its bytes)
        file_id, kind, _flags, _res, mode, mtime_ns, size, chunk_size, plen, tlen = _unpack_entry(p)
        off = _ENTRY_SIZE + plen
        if kind == 1 and not tlen and not mode & ~0o7777 and MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE \
                and n == off + DIGEST_SIZE + size:  # (so size is below the frame limit)
            entry = _new_entry(FileEntry)  # as manifest.built, the fields in decode_entry's order
            entry.__dict__.update(path=p[_ENTRY_SIZE:off], kind=_FILE, size=size, mode=mode, mtime_ns=mtime_ns,
                                  chunk_size=chunk_size, target=b"")
            return file_id, entry, p[off : off + DIGEST_SIZE], p[off + DIGEST_SIZE :]
    return SmallFile.unpack(p)


class ReceiverConnection(Connection):
    role = ROLE_RECEIVER
    transitions = RECEIVER_TRANSITIONS
    _runs = False  # (class defaults: Connection.__init__ sends our HELLO before ours run)
    _run_count = 0
    #: files in one SmallFilesReceived at most: a run's RESULTs leave once it is handled, so a run is
    #: kept to a part of what the sender may have in flight (the driver sets its part size)
    small_run_max = 256

    def __init__(self, config: Config | None = None, budget=None,
                 signer: receipt.ReceiptSigner | None = None, small_runs: bool = False) -> None:
        """``signer`` (our identity key) signs a receipt for a sender that asks for one;
        without it such a sender is told the receipt is declined.  ``small_runs``: consecutive
        SMALL_FILE frames come as one ``SmallFilesReceived`` per run (else a ``SmallFileReceived``
        per file)."""
        config = config or Config()
        super().__init__(config, (HELLO_OVERWRITE if config.overwrite else 0) | HELLO_QUICK_CHECK, budget)
        self._entries: dict[int, FileEntry] = {}
        self._have: dict[int, RangeSet] = {}
        self._sender_done = False
        self._unsettled = 0  # items offered with no RESULT yet (bounded by config.max_files_in_flight)
        self._checks: dict[int, int] = {}  # CHECK_DIR id -> bytes charged, until its DIR_STATE (count as unsettled)
        self._costs: dict[int, int] = {}  # file id -> bytes of bookkeeping charged to the budget
        self._signer = signer
        self._existing: dict[int, tuple[bytes, bytes]] = {}  # receipt: digests of an identical destination
        self._receipt_due = False
        self._announced: Announced | None = None  # from the peer's HELLO, at its first item
        self._runs = False  # the sender takes RESULT_RUN (its HELLO said so; no receipt): set at its HELLO
        self._run_first = 0  # a run of OK results not yet sent: ids first .. first + count - 1
        self._small_runs = small_runs

    @property
    def receipt_requested(self) -> bool:
        return self.peer is not None and bool(self.peer.flags & HELLO_RECEIPT)

    @property
    def quick_check(self) -> bool:
        """The sender allows the quick check: answer an OFFER whose destination has its size and
        mtime_ns with RESULT IDENTICAL at once (no content, no hashing)."""
        return self.peer is not None and bool(self.peer.flags & HELLO_QUICK_CHECK)

    @property
    def resume_allowed(self) -> bool:
        return self.peer is not None and not self.peer.flags & HELLO_NO_RESUME

    # -- calls from the driver ---------------------------------------------
    def decide(
        self,
        file_id: int,
        held: RangeSet | None = None,
        held_digest: int = 0,
        flags: int = 0,
        existing_digest: bytes = ZERO_DIGEST,
        message: str = "",
        existing_sha256: bytes | None = None,
    ) -> None:
        """Accept an offered file, saying which chunks are already held and verified.
        ``existing_sha256``: the destination's SHA-256, for the receipt of a SKIP IDENTICAL."""
        entry = self._entries.get(file_id)
        if entry is None or entry.kind != Kind.FILE:
            raise LocalProtocolError(f"file {file_id} was not offered as a regular file")
        held = held if held is not None else RangeSet()
        self._step(file_id, In.DECISION, remote=False)
        self._have[file_id] = held
        if flags & DECISION_EXISTS and self.receipt_requested:
            self._existing[file_id] = (existing_digest, existing_sha256 or receipt.ZERO_SHA256)  # a SKIP IDENTICAL
        self._send_frame(FrameType.DECISION, Decision(file_id, flags, existing_digest, held_digest, held, message).encode())

    def file_result(self, file_id: int, code: ErrorCode, digest: bytes = ZERO_DIGEST, message: str = "",
                    sha256: bytes | None = None) -> None:
        """Report a file's outcome; also how a file is refused or failed early.  ``sha256``: the
        landed file's SHA-256, which the receipt lists when the sender asked for one."""
        new = self._step(file_id, In.RESULT, remote=False)
        self._unsettled -= 1
        entry = self._receipt_entry(file_id, code, digest, sha256) if self._signer is not None else None
        if new is FileState.DONE:
            self._forget(file_id)
        else:  # FAILED: only its state stays, until the sender's frames for it stop
            self._drop_bookkeeping(file_id)
        if self._runs and code is ErrorCode.OK and new is FileState.DONE and digest != ZERO_DIGEST \
                and not message:  # a file whose digest is the one the sender sent: it joins the run
            if self._run_count and file_id == self._run_first + self._run_count:
                self._run_count += 1
            else:
                if self._run_count:
                    self._flush_run()
                self._run_first, self._run_count = file_id, 1
        else:
            self._send_frame(FrameType.RESULT, Result.pack(file_id, code, digest, message))
        if entry is not None and (batch := self._signer.add(entry)) is not None:
            self._send_frame(FrameType.RECEIPT, batch)
        if self._sender_done:  # before DONE nothing can complete the session
            self._maybe_complete()

    def files_ok(self, file_ids: list, digests: list) -> None:
        """``file_result(id, OK, digest)`` for each of a run of small files (``SmallFilesReceived``)
        stored with the sender's digests, in order: the same states, frames and budget, with the
        per-file work a few operations (RESULT_RUN extended, or a RESULT each to a sender without it).
        A receipt (a signer, and a sender that asked) means no runs (``_runs``): one by one."""
        files, ended = self._files, FileState.ENDED
        if not self._runs or self._existing or ZERO_DIGEST in digests \
                or list(map(files.get, file_ids)).count(ended) != len(file_ids):  # anything unusual: one by one
            for file_id, digest in zip(file_ids, digests):
                self.file_result(file_id, ErrorCode.OK, digest)
            return
        entries, costs = self._entries, self._costs
        first, count = self._run_first, self._run_count
        given = 0
        for file_id in file_ids:
            del files[file_id]  # DONE, and forgotten (_forget)
            del entries[file_id]
            if costs:
                given += costs.pop(file_id, 0)
            if count and file_id == first + count:
                count += 1
            else:
                if count:
                    Connection._send_frame(self, FrameType.RESULT_RUN, RESULT_RUN.pack(first, count))
                first, count = file_id, 1
        self._run_first, self._run_count = first, count
        self._unsettled -= len(file_ids)
        if given:  # small files' charges (negative: settling)
            self._decoder.budget.give(-given, settling=True)
        if self._sender_done:
            self._maybe_complete()

    # -- RESULT_RUN: consecutive OK results leave as one frame ------------------------------
    def _on_hello(self, hello) -> None:
        super()._on_hello(hello)
        self._runs = self.config.result_run and hello.result_run and not hello.flags & HELLO_RECEIPT

    def _flush_run(self) -> None:
        first, count = self._run_first, self._run_count
        self._run_count = 0
        Connection._send_frame(self, FrameType.RESULT_RUN, RESULT_RUN.pack(first, count))

    def _send_frame(self, ftype: FrameType, payload: bytes = b"") -> None:
        if self._run_count:  # results stay in order with every other frame
            self._flush_run()
        Connection._send_frame(self, ftype, payload)

    def data_to_send(self) -> list:
        if self._run_count:
            self._flush_run()
        return Connection.data_to_send(self)

    @property
    def pending_output(self) -> int:
        return self._out_bytes + (24 if self._run_count else 0)

    def _receipt_entry(self, file_id: int, code, digest: bytes, sha256: bytes | None) -> receipt.Entry | None:
        if self._signer is None or not self.receipt_requested:
            return None
        e = self._entries[file_id]
        ok = code in (ErrorCode.OK, ErrorCode.IDENTICAL) and e.kind == Kind.FILE
        if ok and digest == ZERO_DIGEST:
            digest, sha256 = self._existing.get(file_id, (ZERO_DIGEST, None))
        if not ok or sha256 is None:
            sha256 = receipt.ZERO_SHA256
        return receipt.Entry(e.path, e.kind, e.size, code, digest if ok else ZERO_DIGEST, sha256)

    def dir_state(self, dir_id: int, state: int) -> None:
        """Answer a ``DirCheckRequested``: DIR_SAME, DIR_DIFFERENT or DIR_ABSENT.  Nothing once the
        session is over (the check came in the same read as the peer's ERROR: as send_receipt)."""
        if self.closed:
            return
        self._require_open()
        cost = self._checks.pop(dir_id, None)
        if cost is None:
            raise LocalProtocolError(f"no directory check {dir_id} awaits an answer")
        self._unsettled -= 1
        if cost:
            self._decoder.budget.give(cost)
        self._send_frame(FrameType.DIR_STATE, DirState(dir_id, state).encode())
        self._maybe_complete()

    def send_receipt(self, time_ns: int) -> None:
        """Answer ``ReceiptDue``: the last entries, the signed END, then DONE."""
        if not self._receipt_due or self.closed:
            raise LocalProtocolError("no receipt is due")
        for payload in self._signer.finish(time_ns):
            self._send_frame(FrameType.RECEIPT, payload)
        self._complete()

    def receive_chunk(self, file_id: int, index: int, checksum: int, data) -> None:
        """Deliver a chunk verified outside the frame layer (e.g. by the UDP transport).

        Its checks are those of a DATA frame, and so is a failure: an ERROR frame
        for the peer, then the exception."""
        self._check_usable()
        self._guard(self._on_chunk, file_id, index, checksum, data)

    def entry(self, file_id: int) -> FileEntry:
        return self._entries[file_id]

    # -- frames from the sender --------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        t, p = frame.type, frame.payload
        if t is FrameType.SMALL_FILE and self._small_runs:  # many small files: the run in one go
            self._on_small_run(p)
            return
        if t is FrameType.SMALL_FILE:  # many small files: first, and no transition lookups
            budget = self._decoder.budget
            if budget is not None and FILE_STATE_COST + len(p) > budget.room and not self._small_fits(p):
                return
            file_id, entry, digest, data = unpack_small(p)
            if entry.kind != Kind.FILE:
                raise RemoteProtocolError("SMALL_FILE must carry a regular file")
            # a whole file in one frame: offered, sent and ended at once ((SENDING, END) -> ENDED);
            # its bytes are charged with its state, until its RESULT
            self._new_file(file_id, entry, FileState.ENDED, chunked=False, cost=FILE_STATE_COST + len(p))
            if (why := self._beyond_announced(entry)) is not None:
                self._events.append(FileRefused(file_id, entry, why))
            else:
                ev = _new_entry(SmallFileReceived)  # manifest.built, inline (per small file)
                ev.__dict__.update(file_id=file_id, entry=entry, digest=digest, data=data)
                self._events.append(ev)
            return  # (no _maybe_complete: the file awaits its RESULT, and none comes after DONE)
        if t == FrameType.DATA:
            file_id, index, checksum, data = parse_data_payload(p)
            self._on_chunk(file_id, index, checksum, data)
        elif t == FrameType.OFFER:
            o = Offer.decode(p)
            if o.entry.kind == Kind.FILE and o.entry.chunk_size + DATA_HEADER_SIZE > self.config.max_payload:
                raise RemoteProtocolError(
                    f"chunk size {o.entry.chunk_size} + 24 exceeds our max_payload {self.config.max_payload}")
            self._new_file(o.file_id, o.entry, FileState.OFFERED)
            if (why := self._beyond_announced(o.entry)) is not None:
                self._events.append(FileRefused(o.file_id, o.entry, why))
            else:
                self._events.append(FileOffered(o.file_id, o.entry))
        elif t == FrameType.FILE_END:
            e = FileEnd.decode(p)
            if self._step(e.file_id, In.END, remote=True) == FileState.ENDED:
                entry = self._entries[e.file_id]
                if not self._have[e.file_id].covers(0, entry.chunks):
                    raise RemoteProtocolError(f"FILE_END for file {e.file_id} before all its chunks")
                self._events.append(FileDataComplete(e.file_id, e.digest))
            else:
                self._forget(e.file_id)
        elif t in (FrameType.SKIP, FrameType.ABORT_FILE, FrameType.RESTART):
            n = FileNotice.decode(p)
            inp = {FrameType.SKIP: In.SKIP, FrameType.ABORT_FILE: In.ABORT, FrameType.RESTART: In.RESTART}[t]
            new = self._step(n.file_id, inp, remote=True)
            if new == FileState.FAILED:
                pass  # we already gave our result; nothing to do
            elif new == FileState.DONE:
                self._forget(n.file_id)
            elif t == FrameType.RESTART:
                self._have[n.file_id] = RangeSet()
                self._events.append(FileRestarted(n.file_id))
            else:
                self._events.append(FileWithdrawn(n.file_id, n.code, n.message))
        elif t == FrameType.CHECK_DIR:
            c = CheckDir.decode(p)
            self._new_check(c)
            self._events.append(DirCheckRequested(c.dir_id, c.path, c.count, c.digest))
        elif t == FrameType.DONE:
            if self._sender_done:
                raise RemoteProtocolError("second DONE")
            self._sender_done = True
        else:
            raise RemoteProtocolError(f"{t.name} is not sent by a sender")
        self._maybe_complete()

    def _on_small_run(self, p: bytes) -> None:
        """SMALL_FILE ``p`` and those right behind it in the input buffer (``FrameDecoder.small_run``):
        every check of the per-file path (unpack_small, _new_file, _beyond_announced) made in one
        loop, and one ``SmallFilesReceived`` for the run (a refused file splits it).  A failure
        raises after the files before it have their event, as file by file.  The run ends where the
        budget does (``small_run``'s room); a first file that does not fit pauses the connection."""
        budget = self._decoder.budget
        if budget is not None and FILE_STATE_COST + len(p) > budget.room and not self._small_fits(p):
            return
        payloads = [p]
        room = min(self.config.max_files_in_flight - self._unsettled, self.small_run_max)  # (beyond: fails below)
        if room > 1:
            payloads += self._decoder.small_run(
                room - 1, budget.room - FILE_STATE_COST - len(p) if budget is not None else -1)
        ids: list = []
        entries: list = []
        digests: list = []
        datas: list = []
        files, known, costs, events = self._files, self._entries, self._costs, self._events
        limit, ended, size_entry, new = self.config.max_files_in_flight, FileState.ENDED, _ENTRY_SIZE, _new_entry
        if self._announced is None:
            self._beyond_announced(None)  # (made at the first item; counts nothing)
        admit = self._announced.admit if self._announced.summary is not None else None
        taken = 0  # file-state bytes of this run's files, taken from the budget at the end
        room_left = budget.room if budget is not None else 0
        try:
            for p in payloads:
                n = len(p)
                if n >= size_entry and type(p) is bytes:  # unpack_small, inline
                    file_id, kind, _flags, _res, mode, mtime_ns, size, chunk_size, plen, tlen = _unpack_entry(p)
                    off = size_entry + plen
                    if kind == 1 and not tlen and not mode & ~0o7777 and MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE \
                            and n == off + DIGEST_SIZE + size:
                        entry = new(FileEntry)
                        entry.__dict__.update(path=p[size_entry:off], kind=_FILE, size=size, mode=mode,
                                              mtime_ns=mtime_ns, chunk_size=chunk_size, target=b"")
                        digest = p[off : off + DIGEST_SIZE]
                        # the bytes: a view of the payload (its own bytes) where a copy would cost more
                        data = p[off + DIGEST_SIZE :] if size < 4096 else memoryview(p)[off + DIGEST_SIZE :]
                    else:
                        file_id, entry, digest, data = SmallFile.unpack(p)
                else:
                    file_id, entry, digest, data = SmallFile.unpack(p)
                if entry.kind != Kind.FILE:
                    raise RemoteProtocolError("SMALL_FILE must carry a regular file")
                # _new_file, inline
                if self._sender_done:
                    raise RemoteProtocolError("file offered after DONE")
                if file_id in files:
                    raise RemoteProtocolError(f"file id {file_id} reused while in use")
                if self._unsettled >= limit:
                    raise RemoteProtocolError(
                        f"more than {limit} files offered and not yet settled (the receiver's --max-files-in-flight)")
                if budget is not None:  # budget.take, for the run at once (below)
                    cost = FILE_STATE_COST + n  # its state, and its bytes until its RESULT
                    if room_left < cost:
                        budget.take(taken, settling=True)
                        taken = 0
                        self._fail_local(BufferLimit(str(budget.refusal("memory for file state"))))  # (never a wait)
                    room_left -= cost
                    taken += cost
                    costs[file_id] = -cost  # (negative: a small file's, settling)
                self._unsettled += 1
                files[file_id] = ended
                known[file_id] = entry
                if admit is not None and (why := admit(entry)) is not None:  # (_beyond_announced)
                    if ids:
                        events.append(SmallFilesReceived(ids, entries, digests, datas))
                        ids, entries, digests, datas = [], [], [], []
                    events.append(FileRefused(file_id, entry, why))
                    continue
                ids.append(file_id)
                entries.append(entry)
                digests.append(digest)
                datas.append(data)
        finally:
            if taken:
                budget.take(taken, settling=True)  # (fits: room_left said so; only this thread takes)
            if ids:
                events.append(SmallFilesReceived(ids, entries, digests, datas))

    def _new_file(self, file_id: int, entry: FileEntry, state: FileState, chunked: bool = True,
                  cost: int = 0) -> None:
        """``chunked``: its chunks arrive one by one (an OFFER), so a chunk map is kept for it.
        ``cost``: what it costs the budget (0: its state, FILE_STATE_COST and its names)."""
        if self._sender_done:
            raise RemoteProtocolError("file offered after DONE")
        if file_id in self._files:
            raise RemoteProtocolError(f"file id {file_id} reused while in use")
        if self._unsettled >= self.config.max_files_in_flight:
            raise RemoteProtocolError(
                f"more than {self.config.max_files_in_flight} files offered and not yet settled "
                "(the receiver's --max-files-in-flight)")
        budget = self._decoder.budget
        if budget is not None:  # the receiver's memory bound covers what it keeps per item, too
            small = bool(cost)  # a small file's state and bytes: given back as soon as it is stored
            cost = cost or FILE_STATE_COST + len(entry.path) + len(entry.target)
            if not budget.take(cost, settling=small):
                self._no_room(budget)
            self._costs[file_id] = -cost if small else cost
        self._unsettled += 1
        self._files[file_id] = state
        self._entries[file_id] = entry
        if chunked:
            self._have[file_id] = RangeSet()

    # -- a budget that cannot take a small file now: reading waits ------------------------
    def resume(self) -> None:
        """Decode again after a pause (it may pause again at once)."""
        if self._paused:
            self._paused = False
            self._drain_frames()

    def _small_fits(self, p: bytes) -> bool:
        """The SMALL_FILE ``p`` just decoded does not fit in the budget with its state: give back what
        our input buffer holds beyond its pending bytes; if it fits then, True (the frame is taken
        again), else put it back and pause (False).  When no
        item anywhere holds budget bytes (nothing will give any back), BufferLimit as before."""
        budget = self._decoder.budget
        self._decoder.unread(Frame(FrameType.SMALL_FILE, 0, p))
        self._own_queued_views()
        self._decoder.trim()
        if FILE_STATE_COST + len(p) <= budget.room:  # the buffer's spare room was enough: take it again
            self._decoder.next_frame()
            return True
        if not budget.settling:
            self._fail_local(budget.refusal("memory for small files"))
        self._paused = True
        return False

    def _no_room(self, budget) -> None:
        """The budget cannot take an item's state: pause (PauseInput, before anything changed) while
        small files being stored will give bytes back, else fail with BufferLimit as ever."""
        if budget.settling:
            raise PauseInput()
        self._fail_local(budget.refusal("memory for file state"))

    def _new_check(self, c: CheckDir) -> None:
        """A CHECK_DIR counts as an unsettled item (--max-files-in-flight) and in --max-memory."""
        if not self.quick_check:
            raise RemoteProtocolError("CHECK_DIR from a sender whose HELLO has no QUICK_CHECK")
        if self._sender_done:
            raise RemoteProtocolError("CHECK_DIR after DONE")
        if c.dir_id in self._checks:
            raise RemoteProtocolError(f"directory check id {c.dir_id} reused while in use")
        if c.count > MAX_CHECK_ENTRIES:
            raise RemoteProtocolError(f"CHECK_DIR of {c.count} entries (at most {MAX_CHECK_ENTRIES})")
        if self._unsettled >= self.config.max_files_in_flight:
            raise RemoteProtocolError(
                f"more than {self.config.max_files_in_flight} items offered and not yet settled "
                "(the receiver's --max-files-in-flight)")
        cost = 0
        budget = self._decoder.budget
        if budget is not None:
            cost = FILE_STATE_COST + len(c.path)
            if not budget.take(cost):
                self._no_room(budget)
        self._unsettled += 1
        self._checks[c.dir_id] = cost

    def _beyond_announced(self, entry: FileEntry | None) -> str | None:
        """Why ``entry`` is beyond the sender's OFFER_SUMMARY (None: admitted and counted;
        no entry: only the announcement is read)."""
        if self._announced is None:
            summary = self.peer.summary if self.peer is not None else b""
            self._announced = Announced(OfferSummary.decode(summary) if summary else None)
        return self._announced.admit(entry) if entry is not None else None

    def _on_chunk(self, file_id: int, index: int, checksum: int, data) -> None:
        if self._step(file_id, In.CHUNK, remote=True) == FileState.FAILED:
            return
        entry = self._entries[file_id]
        if not 0 <= index < entry.chunks:
            raise RemoteProtocolError(f"chunk {index} is beyond the end of file {file_id}")
        if len(data) != entry.chunk_length(index):
            raise RemoteProtocolError(f"chunk {index} of file {file_id} has the wrong length")
        self._have[file_id].add(index)
        self._events.append(ChunkReceived(file_id, index, index * entry.chunk_size, checksum, data))

    def _forget(self, file_id: int) -> None:
        self._files.pop(file_id, None)
        self._drop_bookkeeping(file_id)

    def _drop_bookkeeping(self, file_id: int) -> None:
        """Everything kept for an item but its state, and its charge against the budget."""
        self._entries.pop(file_id, None)
        self._have.pop(file_id, None)
        if self._existing:
            self._existing.pop(file_id, None)
        cost = self._costs.pop(file_id, 0)
        if cost:  # (negative: a small file's, settling)
            self._decoder.budget.give(abs(cost), settling=cost < 0)

    def release_buffers(self) -> None:
        """The connection is over: its input buffer and its items' bookkeeping leave the budget."""
        super().release_buffers()
        if self._costs:
            small = -sum(c for c in self._costs.values() if c < 0)
            self._decoder.budget.give(sum(c for c in self._costs.values() if c > 0))
            self._decoder.budget.give(small, settling=True)
            self._costs.clear()
        if self._checks and self._decoder.budget is not None:
            self._decoder.budget.give(sum(self._checks.values()))
        self._checks.clear()

    def _maybe_complete(self) -> None:
        if self._sender_done and not self.closed and not self._checks and all(s in RESOLVED for s in self._files.values()):
            if self.receipt_requested:
                if self._signer is not None:
                    if not self._receipt_due:  # the driver signs with its clock's time
                        self._receipt_due = True
                        self._events.append(ReceiptDue())
                    return
                self._send_frame(FrameType.RECEIPT, receipt.declined(
                    "this receiver has no identity key to sign receipts with"))
            self._complete()

    def _complete(self) -> None:
        self._files.clear()
        self.closed = True
        self._send_frame(FrameType.DONE)
        self._events.append(SessionComplete())
