"""Runs a SenderConnection over a link: walks the sources, reads, hashes, streams.

Transport-neutral: give it any ``Link``.  Offers run ahead of the data (up to
``Config.offer_window`` files without a result), small files travel whole with
no round trip, and each large file streams only the chunks the receiver lacks
(``send_stream.LargeFileStreaming``, which ``SendSession`` takes its part from).
A directory's small files go as runs (``smallrun``): read and framed in one call,
queued as one buffer, kept as one ``SmallRun`` until their results, and counted
per RESULT_RUN (``RunResolved``); a file a run stops at goes by the per-file path.

The tree is walked one directory at a time (``source.walk_groups``).  With a
receiver that takes CHECK_DIR, each directory's listing digest goes ahead of
its items (up to ``CHECKS_AHEAD`` in flight, written ``CHECK_BATCH`` at a time): an unchanged
directory is reported identical and nothing more of it is sent; a differing one
sends its files by OFFER, which the receiver answers IDENTICAL by size and mtime
(the quick check) when it can.  ``--checksum`` (``Config.quick_check=False``)
compares digests instead.  The report keeps counters and a bounded list of
files: memory stays flat with the number of files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from itertools import repeat

from .core.checksum import file_digest
from .core.config import Config
from .core.events import (
    DecisionReceived,
    DirStateReceived,
    FileResolved,
    HandshakeComplete,
    PeerFailed,
    ReceiptEntries,
    ReceiptVerified,
    RunResolved,
    SessionComplete,
)
from .core.frames import DATA_HEADER_SIZE
from .core.manifest import MIN_CHUNK_SIZE, Kind
from .core.messages import DIR_DIFFERENT, DIR_SAME, Result
from .core.secure import Established
from .core.sender import SenderConnection
from .errors import ErrorCode, FtxError, PeerError, StorageError, TransportError
from .pacing import Pacer
from .progress import Progress, SoFar
from .send_stream import LargeFileStreaming
from .send_report import FILES_LISTED, FileSendReport, SendReport, Tally, settle  # noqa: F401 (ftx.sending's names)
from .smallrun import SmallRun, frames
from .source import (AHEAD_ITEMS, CHECK_BATCH, CHECKS_AHEAD, DirGroup, SmallReader, SourceFile, SourceItem,
                     nonfile_entry, walk_groups)
from .transport.link import Link, Watchdog

_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())

log = logging.getLogger("ftx.send")

RUN_BYTES = 480 * 1024  # a run of small files is framed up to this many bytes (one record of at most 512 KiB), then sent


class SendSession(LargeFileStreaming):
    def __init__(self, link: Link, config: Config | None = None,
                 progress: Progress | None = None, idle_timeout: float = 30.0,
                 max_rate: float | None = None, receipt=None, established: Established | None = None,
                 receipt_key: bytes | None = None, head=None) -> None:
        """``receipt``: a path; ask the receiver for a signed receipt, check it and write it
        there.  Its key must be the one ``established`` (the handshake) proved (a TLS
        handshake: its certificate's), or ``receipt_key`` (raw Ed25519); with neither (a plaintext link) the receipt's own
        key is taken, and the report names its fingerprint.  ``head``: where a head start left
        this send (head_start.HeadState: its connection, the checks it sent; no receipt)."""
        self.link = link
        self.config = config or Config()
        self.receipt_path = receipt
        self._receipt_file = None
        checker = None
        if receipt is not None:
            from .core.secure.receipt import ReceiptChecker, ReceiptError  # (only a send that asks for one)

            transcript = established.transcript if established is not None else b""
            certificate = None
            if receipt_key is None and established is not None:
                peer = established.peer
                if peer.kind == "tls" and peer.public:  # TLS: signed with the certificate the handshake proved
                    certificate = peer.public
                elif len(peer.public) == 32:
                    receipt_key = peer.public
                else:
                    raise ReceiptError(f"receipts need the receiver's Ed25519 identity or certificate; a {peer.kind} "
                                       "handshake proves none")
            checker = ReceiptChecker(receipt_key, transcript, certificate)
        self._head = head
        self.conn = head.conn if head is not None else SenderConnection(self.config, checker)
        self.conn.run_events = True  # a RESULT_RUN settles its files per run (_on_run)
        self.progress = progress or Progress()
        self.idle_timeout = idle_timeout
        loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future = loop.create_future()
        self._complete: asyncio.Future = loop.create_future()
        self._failure: asyncio.Future = loop.create_future()  # set with the first fatal error
        self._decisions: dict[int, asyncio.Future] = {}
        self._reports: dict[int, FileSendReport] = {}
        self._sources: dict[int, SourceFile] = {}
        self._outstanding = 0
        self._resolved = asyncio.Event()
        self._buf = memoryview(bytearray(self.config.chunk_size))
        self.tally = Tally()
        self._dir_states: dict[int, asyncio.Future] = {}
        self._main: asyncio.Task | None = None
        self._pacer = Pacer(max_rate) if max_rate else None
        self._counter = _counter(self.progress)

    # -- top level --------------------------------------------------------------
    async def run(self, source) -> SendReport:
        """Send ``source`` -- ``DirGroup``s (``source.walk_groups``, consumed as the window allows)
        or a list of ``SourceItem``s (``source.walk``) -- and wait for every result."""
        if isinstance(source, list) and (not source or isinstance(source[0], SourceItem)):
            source = [DirGroup(None, source, None)]
        t0 = time.monotonic()
        failure: FtxError | None = None
        self._main = asyncio.current_task()
        early = self._take_over(self._head) if self._head is not None else ()
        if self.receipt_path is not None:
            from .receipt_file import ReceiptWriter

            try:  # cannot write it: fail before sending
                self._receipt_file = ReceiptWriter(self.receipt_path)
            except OSError as exc:
                raise StorageError(f"cannot write the receipt {os.fsdecode(self.receipt_path)}: "
                                   f"{exc.strerror or exc}") from exc
        reader = asyncio.get_running_loop().create_task(self._read_loop())
        dog = Watchdog(self.link, self.idle_timeout)
        if not getattr(self.link, "own_liveness", False):
            dog.start(self._fail)
        try:
            try:
                await self._flush()
                hello = await self._wait(self._handshake)
                self._fit_to_peer(hello.max_payload)
                await self._send_all(source, early)
                self.conn.finish()
                await self._flush()
                await self._wait(self._complete)
            except asyncio.CancelledError:
                if not self._failure.done():
                    raise
                raise self._failure.exception() from None
        except FtxError as exc:
            failure = self._best_error(exc)
        except Exception as exc:  # a bug: still report every file and end cleanly
            log.debug("internal error", exc_info=True)
            failure = FtxError(f"internal error: {exc!r}")
        finally:
            dog.stop()
            reader.cancel()
            for src in self._sources.values():
                src.close()
            if self._receipt_file is not None:
                self._receipt_file.abort()  # unless finished: then it is in place already
        pending = [r.report(fid) if r.__class__ is SmallRun  # one of a run of small files
                   else self._small_report(r) if r.__class__ is tuple  # a small file's (wire path, size, digest)
                   else r for fid, r in self._reports.items()]
        self._reports.clear()
        report = self.tally.final(pending, getattr(self.link, "transport", "?"), round(time.monotonic() - t0, 6),
                                  failure)
        checker = self.conn.receipt
        if checker is not None and checker.end is not None:
            report.receipt = {"path": os.fspath(self.receipt_path), "fingerprint": checker.end.fingerprint,
                              "entries": checker.end.count, "key_proven": checker.public is not None}
        return report

    def _take_over(self, head) -> list:
        """The groups a head start walked, each with the future of its CHECK_DIR's answer (made
        before our read loop first runs: none of the answers is missed); its failure is ours."""
        loop = asyncio.get_running_loop()
        early = []
        for group, did in head.ahead:
            fut = None
            if did is not None:
                fut = self._dir_states[did] = loop.create_future()
            early.append((group, fut))
        if head.failure is not None:
            self._fail(head.failure)
        return early

    def _fit_to_peer(self, peer_max: int) -> None:
        """Chunks and whole small files must fit the receiver's largest frame."""
        cfg = self.config
        fit = (peer_max - DATA_HEADER_SIZE) // MIN_CHUNK_SIZE * MIN_CHUNK_SIZE
        if cfg.chunk_size > fit:
            log.warning("chunk size %d is larger than the receiver accepts; using %d", cfg.chunk_size, fit)
            cfg.chunk_size = fit
        cfg.small_file_limit = min(cfg.small_file_limit, peer_max - 8192)

    def _best_error(self, exc: FtxError) -> FtxError:
        # a transport error is often the echo of a reason the peer gave first
        if self._failure.done() and not self._failure.cancelled():
            first = self._failure.exception()
            if first is not None and first is not exc and isinstance(exc, TransportError):
                exc = first
        return exc

    def _fail(self, exc: Exception) -> None:
        """First fatal error wins; it interrupts the writer wherever it waits."""
        if not self._failure.done():
            self._failure.set_exception(exc)
            self._failure.exception()  # mark retrieved
            if self._main is not None and self._main is not asyncio.current_task():
                self._main.cancel()

    async def _wait(self, fut: asyncio.Future):
        """Await ``fut`` unless the session fails first."""
        if not fut.done():
            await asyncio.wait({fut, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        if not fut.done() and self._failure.done():
            raise self._failure.exception()
        return fut.result()

    async def _flush(self, pacer: Pacer | None = None) -> None:
        """Send what is queued (``pacer``: at its rate, in slices)."""
        if self._failure.done():
            raise self._failure.exception()
        out = self.conn.data_to_send()
        while out:
            await (self.link.send_paced(out, pacer) if pacer is not None else self.link.send(out))
            # what the read loop queued while a paced chunk held the link (a PONG) it left to us
            out, pacer = (self.conn.data_to_send() if pacer is not None else None), None

    # -- reading the receiver -----------------------------------------------------
    async def _read_loop(self) -> None:
        conn, link = self.conn, self.link
        try:
            for ev in self._head.events if self._head is not None else ():  # those the head start read
                self._on_event(ev)
            while True:  # (events first: a head start may have left some, the receiver's HELLO)
                while (ev := conn.next_event()) is not None:
                    self._on_event(ev)
                # a paced chunk holds the link (seconds at a low --max-rate): read on, and leave what
                # is queued to the flush that sends the chunk, which sends it next
                if conn.pending_output and not getattr(link, "pacing", False):
                    await self._flush()
                if conn.closed:
                    return
                await link.feed(conn)
        except FtxError as exc:
            try:  # tell the peer why (the core queued an ERROR frame)
                await asyncio.wait_for(self.link.send(conn.data_to_send()), 1.0)
            except Exception:
                pass
            self._fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: still end the session cleanly
            self._fail(FtxError(f"internal error: {exc!r}"))

    def _on_event(self, ev) -> None:
        if ev.__class__ is RunResolved:  # the common ones (results of many small files) first
            self._on_run(ev.first, ev.count, ev.digests)
        elif ev.__class__ is FileResolved:
            self._on_result(ev.result)
        elif isinstance(ev, DecisionReceived):
            fut = self._decisions.get(ev.decision.file_id)
            if fut is not None and not fut.done():
                fut.set_result(ev.decision)
        elif isinstance(ev, FileResolved):
            self._on_result(ev.result)
        elif isinstance(ev, DirStateReceived):
            fut = self._dir_states.pop(ev.dir_id, None)
            if fut is not None and not fut.done():
                fut.set_result(ev.state)
            self._resolved.set()
        elif isinstance(ev, HandshakeComplete):
            self._handshake.set_result(ev)
        elif isinstance(ev, (ReceiptEntries, ReceiptVerified)):
            self._on_receipt(ev)
        elif isinstance(ev, SessionComplete):
            if not self._complete.done():
                self._complete.set_result(None)
        elif isinstance(ev, PeerFailed):
            self._fail(PeerError.of_receiver(ev.message, ev.code))

    def _on_receipt(self, ev) -> None:
        try:
            if isinstance(ev, ReceiptEntries):
                self._receipt_file.add(ev.entries)
                return
            self._receipt_file.finish(ev.end)
        except OSError as exc:
            self._fail(StorageError(f"cannot write the receipt {os.fsdecode(self.receipt_path)}: "
                                    f"{exc.strerror or exc}"))
            return
        if self.conn.receipt.public is None:
            log.warning("receipt signed by %s, a key no handshake proved (plaintext link)", ev.end.fingerprint)

    def _on_run(self, first: int, count: int, digests: list) -> None:
        """Files ``first`` .. ``first + count - 1`` arrived OK: counted per run of small files
        sent (``SmallRun``) once nobody reads their reports; file by file otherwise."""
        reports, tally, counter = self._reports, self.tally, self._counter
        fid, end = first, first + count
        while fid < end:
            r = reports.get(fid)
            if r.__class__ is SmallRun and counter is not None and len(tally.listed) >= FILES_LISTED:
                stop = min(end, r.end)
                deque(map(reports.__delitem__, range(fid, stop)), 0)
                self._on_run_ok(r, fid, stop)
                fid = stop
            else:
                self._on_result(Result(fid, ErrorCode.OK, digests[fid - first], ""))
                fid += 1
        self._resolved.set()

    def _on_run_ok(self, run: SmallRun, start: int, stop: int) -> None:
        """Files ``start`` .. ``stop - 1`` of ``run`` arrived, their reports read by nobody: counted."""
        size, n = run.size(start, stop), stop - start
        tally = self.tally
        tally.count += n
        tally.bytes += size
        tally.bytes_sent += size
        self._counter(size, n)
        self._outstanding -= n

    def _on_result(self, result) -> None:
        fid = result.file_id
        report = self._reports.pop(fid)
        if report.__class__ is SmallRun:  # one of a run of small files (RESULT: a peer without RESULT_RUN)
            if result.code == ErrorCode.OK and self._counter is not None and len(self.tally.listed) >= FILES_LISTED:
                self._on_run_ok(report, fid, fid + 1)
                self._resolved.set()
                return
            report = report.report(fid)
        elif report.__class__ is tuple:  # a small file: (wire path, size, digest)
            if result.code == ErrorCode.OK and self._counter is not None and len(self.tally.listed) >= FILES_LISTED:
                size = report[1]  # nobody reads its report: only counted
                tally = self.tally
                tally.count += 1
                tally.bytes += size
                tally.bytes_sent += size
                self._counter(size)
                self._outstanding -= 1
                self._resolved.set()
                return
            report = self._small_report(report)
        else:
            src = self._sources.pop(fid, None)
            if src is not None:
                src.close()
            fut = self._decisions.get(fid)  # _stream removes it, whenever it gets there
            if fut is not None and not fut.done():
                fut.set_result(None)  # refused before any decision
        settle(report, result)
        self._done(report)
        self._outstanding -= 1
        self._resolved.set()

    @staticmethod
    def _small_report(r: tuple) -> FileSendReport:
        wire, size, digest = r
        return FileSendReport(wire.decode(*_FS), "file", size, digest=digest.hex(), bytes_sent=size)

    def _done(self, report: FileSendReport) -> None:
        self.tally.add(report)
        self.progress.end_file(report)

    # -- sending ----------------------------------------------------------------
    async def _send_all(self, groups, early=()) -> None:
        """``early``: (group, future of its DIR_STATE or None) walked and checked already (a head start's)."""
        conn = self.conn
        queue: deque[int] = deque()  # large files offered, in offer order
        ahead: deque[tuple[DirGroup, asyncio.Future | None]] = deque(early)  # groups walked, in order
        ahead_items = sum(group.count for group, _ in ahead)
        walk = iter(groups)
        limit = CHECKS_AHEAD if conn.quick_check else 1
        while True:
            # walk on and check directories ahead (bounded), so no round trip per directory waits;
            # refilled once half are used, written CHECK_BATCH at a time: the receiver starts on
            # them while we list on, and answers a batch per wake-up, not one per round trip
            if len(ahead) <= limit // 2:
                while len(ahead) < limit and (not ahead or ahead_items < AHEAD_ITEMS):
                    group = next(walk, None)
                    if group is None:
                        break
                    fut = None
                    if conn.quick_check and group.checkable:
                        await self._window(queue)
                        did = conn.check_dir(group.dir.wire, group.count, group.digest())
                        fut = self._dir_states[did] = asyncio.get_running_loop().create_future()
                        if conn.checks_in_flight % CHECK_BATCH == 0:
                            await self._flush()
                    ahead.append((group, fut))
                    ahead_items += group.count
            if not ahead:
                break
            if conn.pending_output:
                await self._flush()  # the checks just made go out now, not when one is awaited
            group, fut = ahead.popleft()
            ahead_items -= group.count
            if fut is not None:
                if not fut.done():
                    await self._flush()
                group.state = await self._wait(fut)
            await self._send_group(group, queue)
            group.items = []  # done: only the state stays (for its subdirectories' groups)
        while queue:
            await self._stream(queue.popleft())

    async def _window(self, queue: deque) -> None:
        """Wait until one more item (an offer or a directory check) fits the offer window."""
        while self._outstanding + self.conn.checks_in_flight >= self.config.offer_window:
            if queue:
                await self._stream(queue.popleft())
            else:
                self._resolved.clear()
                await self._flush()
                await self._wait(asyncio.ensure_future(self._resolved.wait()))

    async def _send_group(self, group: DirGroup, queue: deque) -> None:
        conn, cfg = self.conn, self.config
        state = group.state
        if state == DIR_SAME:  # every item as the receiver has it: nothing is sent
            if self.tally.unchanged(group, self._done):
                return
            # changed since it was listed ahead and checked: its items go by OFFER (each its own quick
            # check), and its subdirectories offer themselves in its items, not again in their groups
            group.state = state = DIR_DIFFERENT
        elif group.parent is not None and group.parent.state == DIR_SAME:
            # its parent was unchanged, so its own item was left to this group: offered now (before
            # its entries), so that its mode and mtime are set again
            await self._window(queue)
            self._offer(group.dir, False)
        items = group.items  # (listed again now if it was listed ahead: before its reader opens it)
        # small files by OFFER where the destination may hold them (the quick check answers at once)
        by_offer = state == DIR_DIFFERENT or (state is None and (conn.quick_check or not cfg.quick_check))
        window = cfg.offer_window
        # small files go whole, read by name under the directory's descriptor (SmallReader)
        # every file of a listed directory is opened under its descriptor (SmallReader), small
        # ones (unless offered) read whole at once
        reader = None
        if group.dir is not None:  # (a named argument's group: its parent has no dir)
            reader = SmallReader(group.dir, follow=group.parent is None or group.parent.dir is None,
                                 ident=getattr(group, "ident", None))
        limit, skip = cfg.small_file_limit, len(group.dir.wire) + 1 if reader is not None else 0
        FILE, prefix, send_small = Kind.FILE, reader.prefix if reader is not None else b"", self._send_small
        whole = not by_offer
        # a run of small files at a time (smallrun.frames), unless a progress bar draws each file
        # or a receipt lists each file's SHA-256; an item it stops at goes by the per-item path
        runs = whole and reader is not None and self._counter is not None and self.receipt_path is None
        i, n = 0, len(items)
        try:
            while i < n:
                if self._outstanding + conn.checks_in_flight >= window:  # (no coroutine per item otherwise)
                    await self._window(queue)
                if runs:
                    j = self._send_run(reader, items, i, i + window - self._outstanding - conn.checks_in_flight,
                                       skip, limit)
                    if conn.pending_output >= 256 * 1024:
                        await self._flush()
                    if j > i:  # (stopped by its byte budget, the window or an item it leaves to us)
                        i = j
                        continue
                item = items[i]
                i += 1
                at = None
                if reader is not None and item.kind == FILE:
                    name = item.wire[skip:]
                    if item.local == prefix + name:  # listed here (not an in-tree link followed elsewhere)
                        if whole and item.size <= limit and send_small(reader, item, name, limit):
                            if conn.pending_output >= 256 * 1024:
                                await self._flush()
                            continue
                        at = name
                fid = self._offer(item, by_offer, reader if at is not None else None, at)
                if fid is not None:
                    queue.append(fid)
                while queue and self._decisions[queue[0]].done():
                    await self._stream(queue.popleft())
                if conn.pending_output >= 256 * 1024:
                    await self._flush()
        finally:
            if reader is not None:
                reader.close()

    def _send_run(self, reader: SmallReader, items: list, start: int, stop: int, skip: int, limit: int) -> int:
        """Send the plain small files of ``items[start:stop]`` from ``start`` on as one run
        (``smallrun.frames``); the index of the first item not sent."""
        conn, out = self.conn, bytearray()
        run = frames(reader, items, start, stop, skip, limit, conn.next_file_id, self.config.chunk_size, out,
                     RUN_BYTES)
        if run.count:
            first = conn.send_small_run(out, run.digests)
            sent = SmallRun(first, items[start:run.next], run.digests)
            self._reports.update(zip(range(first, sent.end), repeat(sent)))
            self._outstanding += run.count
            self.progress.advance(run.total)
        return run.next

    def _send_small(self, reader: SmallReader, item: SourceItem, name: bytes, limit: int) -> bool:
        """A listed small file, whole in one SMALL_FILE frame (no round trip).  False: it grew
        beyond ``limit`` since the listing (send it as a large file)."""
        try:
            data, st = reader.read(item, name, limit)
        except FtxError as exc:
            log.warning("%s", exc)
            self._done(FileSendReport(item.wire.decode(*_FS), "file", 0, exc.code.name.lower(), message=str(exc)))
            return True
        if data is None:
            return False
        size = len(data)
        digest = file_digest(data)
        if st is None:
            fid = self.conn.send_small(item.wire, item.mode, item.mtime_ns, data, digest)
        else:  # changed since the listing: as it is now
            fid = self.conn.send_small(item.wire, st.st_mode, st.st_mtime_ns, data, digest)
        self._reports[fid] = (item.wire, size, digest)  # its FileSendReport only if one is read
        self._outstanding += 1
        progress = self.progress
        if self._counter is None:
            progress.start_file(item.wire.decode(*_FS), size, 0)
        progress.advance(size)
        return True

    def _offer(self, item: SourceItem, by_offer: bool = False, reader: SmallReader | None = None,
               name: bytes | None = None) -> int | None:
        """Send an item's first frame; return its id when it awaits a decision.  ``reader``: the
        file is its directory's entry ``name``, opened under its descriptor."""
        conn, cfg = self.conn, self.config
        if item.kind != Kind.FILE:
            entry = nonfile_entry(item, cfg.chunk_size)
            fid = conn.offer(entry)
            self._track(fid, FileSendReport(os.fsdecode(item.wire), item.kind.name.lower(), 0))
            return None
        try:
            src = SourceFile(item, cfg.chunk_size, reader, name or b"")
        except FtxError as exc:
            log.warning("%s", exc)
            self._done(FileSendReport(os.fsdecode(item.wire), "file", 0, exc.code.name.lower(), message=str(exc)))
            return None
        entry = src.entry
        report = FileSendReport(item.wire.decode(*_FS), "file", entry.size)  # os.fsdecode, minus its checks
        if entry.size <= cfg.small_file_limit and not by_offer:
            try:
                data = src.read_all()
            except FtxError as exc:
                src.close()
                report.status, report.message = exc.code.name.lower(), str(exc)
                self._done(report)
                return None
            finally:
                src.close()
            digest = file_digest(data)
            fid = conn.send_small_file(entry, data, digest)
            report.digest, report.bytes_sent = digest.hex(), entry.size
            self._track(fid, report)
            self.progress.start_file(report.path, entry.size, 0)
            self.progress.advance(entry.size)
            return None
        fid = conn.offer(entry)
        self._sources[fid] = src
        self._decisions[fid] = asyncio.get_running_loop().create_future()
        self._track(fid, report)
        return fid

    def _track(self, fid: int, report: FileSendReport) -> None:
        self._reports[fid] = report
        self._outstanding += 1


def _counter(progress: Progress):
    """How a small file that arrived is counted when ``progress`` reads no report (it draws
    nothing per file): a function of its size.  None: it gets each report (and start_file)."""
    def silent(p) -> bool:
        t = type(p)
        return (t.start_file, t.end_file) == (Progress.start_file, Progress.end_file)

    if silent(progress):
        return _uncounted
    if type(progress) is SoFar and silent(progress.inner):  # ftx send with no bars
        return progress.ended_ok
    return None


def _uncounted(size: int, files: int = 1) -> None:
    pass


async def send_paths(link: Link, paths: list, config: Config | None = None, links: bool = False,
                     **kwargs) -> SendReport:
    return await SendSession(link, config, **kwargs).run(walk_groups(paths, links))
