"""Answers a ReceiverConnection's events with storage operations.

Transport-neutral: the TCP driver (and later the UDP one) feeds bytes to the
connection, then passes each event to ``ReceiveSession.handle``.  Every per-file
failure becomes a RESULT for that file; the session carries on with the next.
``receive_over`` serves one link: its watchdogs and limits here, the loop that
reads and hands events to storage work in ``recv_pipeline``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import stat
import sys
import time
from typing import Callable

from .core.config import Config
from .core.events import (
    ChunkReceived,
    DirCheckRequested,
    Event,
    FileDataComplete,
    FileOffered,
    FileRefused,
    FileRestarted,
    FileWithdrawn,
    HandshakeComplete,
    PeerFailed,
    ReceiptDue,
    SessionComplete,
    SmallFileReceived,
    SmallFilesReceived,
)
from .core.frames import BufferBudget
from .core.manifest import FileEntry, Kind
from .core.messages import DECISION_DISCARDED, DECISION_EXISTS, DECISION_OVERWRITE, ZERO_DIGEST
from .core.receiver import ReceiverConnection
from .core.secure.handshake import printable
from .core.states import FileState
from .errors import ErrorCode, FtxError, TransportError
from .limits import Limits
from .progress import Progress
from .recv_report import FileReport, RunReport
from .storage import Busy, Destination, PartialFile, claim
from .transport.link import Watchdog
from .tree_state import check_directories, check_directory
from .recv_pipeline import BATCH, _serve_loop, _worker_done

log = logging.getLogger("ftx.receive")
# events about one file, and the states in which the file already has its RESULT (an event
# handled in the same batch failed it early: the core may even have forgotten it)
_FILE_EVENTS = (ChunkReceived, FileDataComplete, FileRestarted, FileWithdrawn)
_RESOLVED = (None, FileState.FAILED, FileState.DONE)
_OK = ErrorCode.OK
_STATUS = {code: code.name.lower() for code in ErrorCode}  # a report's status, per file
_KIND = {kind: kind.name.lower() for kind in Kind}


class ReceiveSession:
    #: events whose handling may block on disk for long (hashing, fsync): drivers
    #: may run them off the event loop
    SLOW_EVENTS = (FileOffered, FileDataComplete, SmallFileReceived, SmallFilesReceived, DirCheckRequested)
    #: per-file reports kept in ``reports`` (the first ones); ``files`` and ``failed`` count them all
    REPORTS_KEPT = 1000

    def __init__(
        self,
        conn: ReceiverConnection,
        dest: Destination,
        on_file: Callable[[FileReport], None] | None = None,
        progress: Progress | None = None,
        keep_reports: bool = True,
        on_files: Callable[[RunReport], None] | None = None,
    ) -> None:
        """``keep_reports=False``: ``reports`` stays empty (memory flat with the number of
        files; ``on_file`` sees each report, ``files`` and ``failed`` count them).  ``on_files``:
        small files stored OK together come to it as one RunReport (else to ``on_file`` one by one)."""
        self.conn = conn
        self.dest = dest
        self.on_file = on_file or (lambda report: None)
        self.on_files = on_files
        self.progress = progress or Progress()
        # no display reads a small file's start and bytes (its end_file still comes, with its report)
        self._quiet = type(self.progress) is Progress or getattr(self.progress, "quiet", False) is True
        self._partials: dict[int, PartialFile] = {}
        self._received: dict[int, int] = {}
        self._resumed: dict[int, int] = {}
        self._found: dict[int, os.stat_result] = {}  # files found at an offer's path, their digests sent
        self._dirs: list[tuple[bytes, FileEntry]] = []
        self.reports: list[FileReport] = []  # the first REPORTS_KEPT (memory stays flat with the file count)
        self.keep_reports = keep_reports
        self.files = 0  # items settled
        self.failed = 0  # ... of which not ok
        self.complete = False
        self.receipt_sent = False
        self.error = ""
        self.abandon = lambda: None  # set by the driver: end this connection from another thread
        self.established = None  # the handshake's outcome (None: --insecure): who may take over (_claim_partial)
        self.worker: asyncio.Future | None = None  # the batch a worker thread is handling, if any
        self.last_progress = time.monotonic()  # file data moved or a file settled (--stall-timeout)

    # -- dispatch -------------------------------------------------------------
    def handle_all(self, events: list[Event]) -> None:
        on_small = self._on_small
        checks: list[DirCheckRequested] = []  # CHECK_DIRs in a row: listed side by side (_on_checks)
        try:
            for ev in events:
                if type(ev) is DirCheckRequested:
                    checks.append(ev)
                    continue
                if checks:
                    self._on_checks(checks)
                    checks = []
                if type(ev) is SmallFilesReceived:  # the many-files path: a run at once
                    self._on_small_run(ev)
                elif type(ev) is SmallFileReceived:  # no dispatch, no _guarded call
                    try:
                        on_small(ev)
                    except (FtxError, OSError) as exc:
                        self._failed_with(ev.file_id, ev.entry, exc)
                else:
                    self.handle(ev)
            if checks:
                self._on_checks(checks)
        finally:
            try:
                self.dest.sync()  # the batch's small files are on disk before their RESULTs go out
            except FtxError as exc:
                # Not known to be on disk: the RESULTs (or RESULT_RUN) this batch queued must never
                # leave -- the error path sends what is queued.  The sender hears STORAGE instead.
                self.conn.data_to_send()  # dropped
                self.conn.send_error(exc.code, str(exc))
                raise

    #: events that show the session is getting somewhere (PINGs never reach here)
    PROGRESS_EVENTS = (ChunkReceived, SmallFileReceived, SmallFilesReceived, FileDataComplete, HandshakeComplete)

    @property
    def identity(self) -> bytes:
        """The sender's transfer identity from its HELLO (empty: anonymous, an older sender)."""
        peer = self.conn.peer
        return peer.sender_id if peer is not None else b""

    def handle(self, ev: Event) -> None:
        if type(ev) is SmallFileReceived:  # the many-files path first, with no isinstance chain
            self._guarded(ev.file_id, ev.entry, self._on_small, ev)  # (_finish marks the progress)
            return
        if type(ev) is SmallFilesReceived:
            self._on_small_run(ev)
            return
        if isinstance(ev, self.PROGRESS_EVENTS):
            self.last_progress = time.monotonic()
        if isinstance(ev, _FILE_EVENTS) and self.conn.file_state(ev.file_id) in _RESOLVED:
            return  # queued before we failed the file early: it has its RESULT already
        if isinstance(ev, ChunkReceived):
            self._on_chunk(ev)
        elif isinstance(ev, FileOffered):
            self._guarded(ev.file_id, ev.entry, self._on_offer, ev)
        elif isinstance(ev, FileRefused):  # beyond what the sender announced: nothing of it is written
            self._fail(ev.file_id, ev.entry, ErrorCode.ABORTED, ev.reason)
        elif isinstance(ev, SmallFileReceived):
            self._guarded(ev.file_id, ev.entry, self._on_small, ev)
        elif isinstance(ev, FileDataComplete):
            self._guarded(ev.file_id, self.conn.entry(ev.file_id), self._on_complete, ev)
        elif isinstance(ev, FileRestarted):
            part = self._partials.get(ev.file_id)
            if part is not None:
                log.warning("%s: %s; starting over", _name(part.entry), "source content changed")
                self._guarded(ev.file_id, part.entry, lambda e: part.restart(), ev)
                self._resumed[ev.file_id] = 0
        elif isinstance(ev, FileWithdrawn):
            self._on_withdrawn(ev)
        elif isinstance(ev, DirCheckRequested):
            self.conn.dir_state(ev.dir_id, self._dir_state(ev))
        elif isinstance(ev, ReceiptDue):
            self.conn.send_receipt(time.time_ns())
            self.receipt_sent = True
        elif isinstance(ev, SessionComplete):
            Destination.finish_dirs(self._dirs)
            self.complete = True
        elif isinstance(ev, HandshakeComplete):
            log.debug("handshake with %s (protocol %d)", ev.agent, ev.version)
        elif isinstance(ev, PeerFailed):  # (its message escaped by the core)
            log.warning("sender gave up: %s (code %s)", ev.message, ev.code)
            self.error = self.error or f"sender error: {ev.message}"  # the session's outcome names it

    def _guarded(self, file_id: int, entry: FileEntry, fn, ev) -> None:
        try:
            fn(ev)
        except (FtxError, OSError) as exc:
            self._failed_with(file_id, entry, exc)

    def _failed_with(self, file_id: int, entry: FileEntry, exc: Exception) -> None:
        if isinstance(exc, FtxError):
            self._fail(file_id, entry, exc.code, str(exc))
        else:
            self._fail(file_id, entry, ErrorCode.STORAGE, f"{os.fsdecode(entry.path)}: {exc.strerror or exc}")

    def _fail(self, file_id: int, entry: FileEntry, code: ErrorCode, message: str) -> None:
        part = self._partials.pop(file_id, None)
        if part is not None:
            part.close()  # keep what was verified, for a later resume
        log.warning("%s: %s", _name(entry), message)
        self._finish(file_id, entry, code, ZERO_DIGEST, message)

    def _finish(self, file_id: int, entry: FileEntry, code: ErrorCode, digest: bytes, message: str = "",
                sha256: bytes | None = None, name: str | None = None, received: int | None = None) -> None:
        """``received``: its bytes that arrived (else what ``_received`` counted)."""
        self.last_progress = time.monotonic()
        self.conn.file_result(file_id, code, digest, message, sha256)
        status = _STATUS[code] if type(code) is ErrorCode else str(code)
        report = FileReport.__new__(FileReport)  # frozen: its __init__ would set each field through
        report.__dict__.update(  # object.__setattr__, a microsecond per file; the fields in order
            path=name if name is not None else _name(entry),
            kind=_KIND[entry.kind],
            size=entry.size,
            status=status,
            digest=digest.hex() if digest != ZERO_DIGEST else "",
            message=message,
            bytes_received=received if received is not None else self._received.pop(file_id, 0),
            bytes_resumed=self._resumed.pop(file_id, 0) if self._resumed else 0,
        )
        if self._found:
            self._found.pop(file_id, None)
        self.files += 1
        self.failed += not report.ok
        if self.keep_reports and len(self.reports) < self.REPORTS_KEPT:
            self.reports.append(report)
        self.progress.end_file(report)
        self.on_file(report)

    # -- handlers --------------------------------------------------------------
    def _on_offer(self, ev: FileOffered) -> None:
        entry = ev.entry
        if entry.kind == Kind.DIR:
            self._dirs.append((self.dest.make_dir(entry), entry))
            self._finish(ev.file_id, entry, ErrorCode.OK, ZERO_DIGEST)
            return
        if entry.kind == Kind.SYMLINK:
            self._finish(ev.file_id, entry, self.dest.make_symlink(entry), ZERO_DIGEST)
            return
        path = self.dest.resolve(entry.path)
        st = self.dest.existing(path)
        flags, existing, existing_sha = 0, ZERO_DIGEST, None
        if st is not None and self.conn.quick_check and stat.S_ISREG(st.st_mode) \
                and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
            if self.dest.overwrite and (st.st_mode ^ entry.mode) & 0o777:  # its mode changed alone
                self.dest.adopt(path, entry, st)
            self._finish(ev.file_id, entry, ErrorCode.IDENTICAL, ZERO_DIGEST)  # rsync's quick check
            return
        if st is not None:
            same_size = stat.S_ISREG(st.st_mode) and st.st_size == entry.size
            if same_size:
                flags |= DECISION_EXISTS
                if self.dest.overwrite:  # should the digests match: _on_withdrawn gives it our mtime
                    self._found[ev.file_id] = st
                if self.conn.receipt_requested:  # the receipt lists its SHA-256 too: one read for both
                    from .receipt_digest import hash_file_both

                    existing, existing_sha = hash_file_both(self.dest, path)
                else:
                    existing = self.dest.hash_file(path)
            if self.dest.overwrite:
                flags |= DECISION_OVERWRITE
            elif not same_size:
                raise FtxError(f"{_name(entry)} exists and differs (receiver has no --overwrite)", ErrorCode.EXISTS)
            else:  # the sender compares digests and skips; nothing to store
                self.conn.decide(ev.file_id, flags=flags, existing_digest=existing, existing_sha256=existing_sha)
                return
        part = self._claim_partial(entry, path)
        held, held_digest = part.open(resume=self.conn.resume_allowed)
        self._partials[ev.file_id] = part
        if part.discarded:
            flags |= DECISION_DISCARDED
            log.warning("%s: %s; starting over", _name(entry), part.discarded)
        resumed = sum(entry.chunk_length(i) for i in held.values())
        self.dest.check_space(path, entry.size - resumed, entry.size)  # refused: the verified chunks stay
        if held:
            self._resumed[ev.file_id] = resumed
            log.info("%s: resuming, %d of %d bytes already verified", _name(entry), resumed, entry.size)
        self.progress.start_file(_name(entry), entry.size, resumed)
        self.conn.decide(ev.file_id, held, held_digest, flags, existing, part.discarded, existing_sha)

    def _dir_state(self, ev: DirCheckRequested) -> int:
        """List the destination directory and compare (nothing is created)."""
        return check_directory(self.dest, ev.path, ev.count, ev.digest)

    def _on_checks(self, checks: list[DirCheckRequested]) -> None:
        """CHECK_DIRs that came in a row, answered in order: listed by two threads at once
        (tree_state.check_directories); a check changes nothing, so their order among themselves
        does not matter, and the events before and after them are handled before and after."""
        if len(checks) == 1:
            self.conn.dir_state(checks[0].dir_id, self._dir_state(checks[0]))
            return
        states = check_directories(self.dest, [(ev.path, ev.count, ev.digest) for ev in checks])
        for ev, state in zip(checks, states):
            self.conn.dir_state(ev.dir_id, state)

    def _claim_partial(self, entry: FileEntry, path: bytes) -> PartialFile:
        """Open the partial; take it over from an earlier connection of the same sender.

        A sender that was killed, or whose network vanished, leaves its old
        connection waiting for the idle timeout; the user's re-run carries the
        same transfer identity (HELLO's sender id) and credential, and must not be
        told "busy" for that long.  Anyone else gets BUSY and the transfer in
        progress goes on (security_setup.takeover_refusal, protocol.md 6.1).
        """
        kind = PartialFile
        if self.conn.receipt_requested:  # hashes SHA-256 alongside XXH3, for the receipt
            from .receipt_digest import ReceiptPartial as kind
        try:
            return kind(self.dest, entry, path, owner=self)
        except Busy as exc:
            from .security_setup import takeover_refusal

            old = exc.holder
            if (why := takeover_refusal(self, old)) is not None:
                raise Busy(why, old) from None
            log.warning("%s: taking over from an earlier connection of the same sender", _name(entry))
            old.abandon()
            deadline = time.monotonic() + 5.0
            while not claim.is_free(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return kind(self.dest, entry, path, owner=self)

    def _on_small(self, ev: SmallFileReceived) -> None:
        entry = ev.entry
        self._small_settled(ev.file_id, entry, self.dest.write_small(entry, ev.data, ev.digest), ev.data, ev.digest)

    def _small_settled(self, file_id: int, entry: FileEntry, code: ErrorCode, data, digest: bytes) -> None:
        """The result of a small file that ``write_small`` stored (OK) or found there (IDENTICAL)."""
        name = _name(entry)
        received = 0
        if code is ErrorCode.OK:
            received = entry.size
            if not self._quiet:
                self.progress.start_file(name, received, 0)
                self.progress.advance(received)
        sha = hashlib.sha256(data).digest() if self.conn.receipt_requested else None  # its bytes are here
        self._finish(file_id, entry, code, digest, sha256=sha, name=name, received=received)

    def _on_small_run(self, ev: SmallFilesReceived) -> None:
        """A run of small files: stored by one ``write_small_run``; those stored OK settle together
        (``_settle_ok``: one files_ok, one RunReport), in order with the others, which settle one by
        one as ``_on_small`` settles them."""
        ids, entries, digests, datas = ev.file_ids, ev.entries, ev.digests, ev.datas
        try:
            outcomes = self.dest.write_small_run(entries, datas, digests)
        except (FtxError, OSError) as exc:
            outcomes = [exc] * len(ids)
        one_by_one = self.conn.receipt_requested or not self._quiet
        if not one_by_one and outcomes.count(_OK) == len(ids):  # the common case: every file stored
            self._settle_ok(ids, entries, digests)
            return
        start = 0  # OK files from here not settled yet
        for k, code in enumerate(outcomes):
            if code is _OK and not one_by_one:
                continue
            if start < k:
                self._settle_ok(ids[start:k], entries[start:k], digests[start:k])
            start = k + 1
            file_id, entry = ids[k], entries[k]
            if isinstance(code, ErrorCode):
                self._small_settled(file_id, entry, code, datas[k], digests[k])
            else:
                self._failed_with(file_id, entry, code)
        if start < len(ids):
            self._settle_ok(ids[start:], entries[start:], digests[start:])

    def _settle_ok(self, ids: list, entries: list, digests: list) -> None:
        """``_finish(OK)`` for each of a run of small files stored with the sender's digests (no
        receipt, no progress display), with the per-file work done in bulk."""
        self.last_progress = time.monotonic()
        self.conn.files_ok(ids, digests)
        fs = _FS
        run = RunReport([e.path.decode(*fs) for e in entries], [e.size for e in entries],
                        [d.hex() for d in digests])
        self.files += len(ids)
        if self.keep_reports and len(self.reports) < self.REPORTS_KEPT:
            self.reports.extend(itertools.islice(run, self.REPORTS_KEPT - len(self.reports)))
        if type(self.progress) is not Progress:
            self.progress.end_files(run)
        if self.on_files is not None:
            self.on_files(run)
        else:
            for report in run:
                self.on_file(report)

    def _on_chunk(self, ev: ChunkReceived) -> None:
        part = self._partials.get(ev.file_id)
        if part is None:
            entry = self.conn.entry(ev.file_id)
            self._fail(ev.file_id, entry, ErrorCode.PROTOCOL, "chunk for a file that was not accepted for writing")
            return
        try:
            part.write_chunk(ev.index, ev.checksum, ev.data)
        except FtxError as exc:
            self._fail(ev.file_id, part.entry, exc.code, str(exc))
            return
        self._received[ev.file_id] = self._received.get(ev.file_id, 0) + len(ev.data)
        self.progress.advance(len(ev.data))

    def _on_complete(self, ev: FileDataComplete) -> None:
        part = self._partials.pop(ev.file_id, None)
        if part is None:
            raise FtxError("file completed without a partial", ErrorCode.PROTOCOL)
        try:
            digest = part.finalize(ev.digest)
        except FtxError:
            part.close()
            raise
        sha = part.sha256() if hasattr(part, "sha256") else None  # a ReceiptPartial: for the receipt
        self._finish(ev.file_id, part.entry, ErrorCode.OK, digest, sha256=sha)

    def _on_withdrawn(self, ev: FileWithdrawn) -> None:
        entry = self.conn.entry(ev.file_id)
        part = self._partials.pop(ev.file_id, None)
        code = ev.code if isinstance(ev.code, ErrorCode) else ErrorCode.ABORTED
        if code == ErrorCode.IDENTICAL:
            if part is not None:
                part.discard()
            else:
                self.dest.remove_stale_partial(self.dest.resolve(entry.path, make_parents=False))
            found = self._found.pop(ev.file_id, None)
            if found is not None:  # the sender's digest matched: the file takes the sender's mode and mtime
                self.dest.adopt(self.dest.resolve(entry.path, make_parents=False), entry, found)
            self._finish(ev.file_id, entry, ErrorCode.IDENTICAL, ZERO_DIGEST, "destination already identical")
            return
        if part is not None:
            part.close()
        if code == ErrorCode.OK:
            code = ErrorCode.ABORTED
        why = printable(ev.message)  # the sender's words, for terminals and logs: escaped, capped
        log.warning("%s: sender withdrew it: %s", _name(entry), why)
        self._finish(ev.file_id, entry, code, ZERO_DIGEST, why)

    def close(self) -> None:
        """Connection over (finished or not): release every partial; keep its verified data (if 1 MiB or more)."""
        for part in self._partials.values():
            part.close()
        self._partials.clear()


def _name(entry: FileEntry) -> str:
    return entry.path.decode(*_FS)  # os.fsdecode for bytes, without its type checks (per file)


_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


async def receive_over(link, dest: Destination, config=None, on_file=None, idle_timeout: float = 30.0,
                       progress: Progress | None = None, limits: Limits | None = None,
                       budget: BufferBudget | None = None, confirm=None, identity=None,
                       established=None, keep_reports: bool = True, on_files=None) -> ReceiveSession:
    """Serve one sender on ``link`` until the session ends; return it for its reports.

    Per-file problems become RESULTs; a broken or silent peer ends only this
    connection.  Slow storage work runs in a worker thread so that the other
    connections on the loop keep moving.  ``limits`` bounds the time to the
    handshake and a session that moves no data; ``budget`` is shared by all
    connections' frame buffers (``--max-memory``).  ``confirm(hello)``, if given, is awaited
    when the sender's HELLO arrives, before any offer is handled: None accepts, a text declines
    the session and is the sender's reason (ftx/confirm.py).
    ``identity`` (our Ed25519 private key, or in TLS mode (certificate's private key, DER
    chain)) signs receipts for senders that ask, bound to ``established.transcript``.  ``keep_reports=False`` and ``on_files``: see ``ReceiveSession``.
    """
    limits = limits or Limits()
    signer = None
    if identity is not None:
        from .core.secure.receipt import ReceiptSigner

        key, chain = identity if isinstance(identity, tuple) else (identity, ())
        signer = ReceiptSigner(key, established.transcript if established is not None else b"", chain)
    conn = ReceiverConnection(config or Config(overwrite=dest.overwrite,
                                               max_files_in_flight=limits.max_files_in_flight), budget, signer,
                              small_runs=True)
    conn.small_run_max = BATCH  # a run is at most a part
    session = ReceiveSession(conn, dest, on_file, progress, keep_reports, on_files)
    session.established = established
    task = asyncio.current_task()
    dead: list[tuple[Exception, bool]] = []
    loop = asyncio.get_running_loop()

    def abandon() -> None:
        dead.append((TransportError("superseded by a newer connection of the same sender (same transfer "
                                    "identity) for the same file"), True))
        loop.call_soon_threadsafe(task.cancel)

    session.abandon = abandon

    def on_dead(exc: Exception, tell_peer: bool = False) -> None:
        dead.append((exc, tell_peer))
        task.cancel()

    dog = Watchdog(link, idle_timeout)
    if not getattr(link, "own_liveness", False):
        dog.start(on_dead)
    guard = loop.create_task(_enforce_limits(link, session, limits, on_dead))
    try:
        try:
            await _serve_loop(link, conn, session, confirm)
        except asyncio.CancelledError:
            if not dead:
                raise
            # a worker thread may still be in its batch (writing, syncfs): the connection is its
            # until it is done, and what it queued may leave only once its files are on disk
            await _worker_done(session)
            exc, tell_peer = dead[0]
            if tell_peer:  # the peer is alive and deserves the reason
                conn.send_error(getattr(exc, "code", ErrorCode.ABORTED), str(exc))
            raise exc from None
    except FtxError as exc:
        session.error = str(exc)
        try:
            await asyncio.wait_for(link.send(conn.data_to_send()), 1.0)
        except Exception:
            pass
        log.warning("connection from %s ended: %s", getattr(link, "peer", "?"), exc)
    except Exception as exc:  # a bug of ours: end this connection only, say why, keep serving
        session.error = f"internal error: {exc!r}"
        conn.send_error(ErrorCode.INTERNAL, session.error)
        try:
            await asyncio.wait_for(link.send(conn.data_to_send()), 1.0)
        except Exception:
            pass
        log.error("connection from %s ended by an %s", getattr(link, "peer", "?"), session.error,
                  exc_info=log.isEnabledFor(logging.DEBUG))
    finally:
        dog.stop()
        guard.cancel()
        await _worker_done(session)  # its batch finishes before the session closes
        session.close()
        conn.release_buffers()
        await link.aclose()
    return session


async def _enforce_limits(link, session: ReceiveSession, limits: Limits, on_dead) -> None:
    """Drop a connection that does not finish its handshake in time, or that moves
    no file data and settles no file for ``stall_timeout`` (PINGs do not count; bytes of a
    chunk not yet whole do: a sender slower than a chunk per ``stall_timeout`` is no stall)."""
    conn = session.conn
    start = time.monotonic()
    moved = _moved(link, conn)  # file bytes, whole or in part: a slow chunk is progress as it comes
    period = max(0.05, min(1.0, limits.handshake_timeout / 5, limits.stall_timeout / 5))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        if conn.peer is None:
            if now - start > limits.handshake_timeout:
                on_dead(TransportError(f"no HELLO within {limits.handshake_timeout:g} s (receiver's "
                                       f"--handshake-timeout)", ErrorCode.TIMEOUT), True)
                return
        elif link.busy:  # our own slow work (hashing, fsync) is not the sender's stall
            session.last_progress = now
        elif _moved(link, conn) != moved:
            moved = _moved(link, conn)
            session.last_progress = now
        elif now - session.last_progress > limits.stall_timeout:
            on_dead(TransportError(f"no file data moved for {limits.stall_timeout:g} s (receiver's "
                                   f"--stall-timeout)", ErrorCode.TIMEOUT), True)
            return


def _moved(link, conn) -> int:
    """Grows whenever file bytes arrive: in ``conn``'s frames, or (UDP) in chunks apart from them."""
    return conn.file_data_moved + getattr(link, "file_bytes_in", 0)
