"""A sender's large files: the receiver's decision awaited, then only the chunks it lacks streamed.

``LargeFileStreaming`` is ``SendSession``'s part for a file that goes by OFFER: an existing
destination compared by digest (skipped when identical; refused without --overwrite), chunks the
receiver already holds checked against the source (a mismatch restarts the file), the rest read,
hashed and sent chunk by chunk (paced by --max-rate), then FILE_END with the whole-file digest.
A source that changes or cannot be read aborts that file only.
"""

from __future__ import annotations

import logging
import os

from .core.checksum import FileHasher
from .core.messages import DECISION_EXISTS, DECISION_OVERWRITE, Decision
from .core.ranges import RangeSet
from .core.secure.handshake import printable
from .core.states import FileState
from .errors import ErrorCode
from .send_report import FileSendReport
from .source import SourceChanged, SourceFile

log = logging.getLogger("ftx.send")


class LargeFileStreaming:
    """(A mixin of ``sending.SendSession``: its ``conn``, ``link``, ``config``, ``progress``,
    ``_decisions``, ``_sources``, ``_reports``, ``_buf``, ``_pacer``, ``_wait`` and ``_flush``.)"""

    async def _stream(self, fid: int) -> None:
        """Wait for the decision on a large file, then send what the receiver lacks."""
        await self._flush()
        decision: Decision | None = await self._wait(self._decisions[fid])
        del self._decisions[fid]
        if decision is None or self.conn.file_state(fid) != FileState.SENDING:
            return  # refused: its result is already in
        src, report = self._sources[fid], self._reports[fid]
        try:
            await self._stream_file(fid, src, report, decision)
        except (SourceChanged, OSError) as exc:
            if isinstance(exc, SourceChanged):
                code, report.message = ErrorCode.SOURCE_CHANGED, str(exc)
            else:
                code, report.message = ErrorCode.STORAGE, f"read error: {exc.strerror or exc}"
            await self.link.file_sent(fid)  # chunks already handed over must land before the abort
            if self.conn.file_state(fid) == FileState.SENDING:
                self.conn.abort_file(fid, code, report.message)
        await self._flush()

    async def _stream_file(self, fid: int, src: SourceFile, report: FileSendReport, d: Decision) -> None:
        conn, entry, view = self.conn, src.entry, self._buf
        if d.flags & DECISION_EXISTS:
            hasher = self._hasher()
            digest = src.digest(view, hasher)
            if digest == d.existing_digest:
                report.digest = digest.hex()
                conn.skip_file(fid, ErrorCode.IDENTICAL, "destination already identical", digest, _sha256(hasher))
                return
            if not d.flags & DECISION_OVERWRITE:
                report.message = f"{report.path} exists on the receiver and differs (receiver has no --overwrite)"
                conn.skip_file(fid, ErrorCode.EXISTS, report.message)
                return
        hasher = self._hasher()
        held, hashed = (d.held if self.config.resume else RangeSet()), 0
        if d.message:
            log.warning("%s: %s", report.path, printable(d.message))
        if held:
            matches, hashed = src.check_held(held, d.held_digest, view, hasher)
            if not matches:
                log.warning("%s: source content changed since the partial was made; starting over", report.path)
                conn.restart_file(fid, "held chunks differ from the source")
                await self._flush()
                await self.link.control_delivered()  # RESTART must arrive before new chunks
                held, hashed, hasher = RangeSet(), 0, self._hasher()
        resumed = sum(entry.chunk_length(i) for i in held.values())
        report.bytes_resumed = resumed
        self.progress.start_file(report.path, entry.size, resumed)
        for index in range(hashed, entry.chunks):
            data = src.read_chunk(index, self.link.read_buffer(view))
            hasher.update(data)
            if index in held:
                continue
            if conn.file_state(fid) != FileState.SENDING:
                return  # the receiver failed the file; its result says why
            await self.link.send_chunk(conn, fid, index, data)
            await self._flush(self._pacer)
            report.bytes_sent += len(data)
            self.progress.advance(len(data))
        if not src.unchanged():
            raise SourceChanged(f"{os.fsdecode(src.item.local)} changed while being sent")
        digest = hasher.digest()
        report.digest = digest.hex()
        await self.link.file_sent(fid)
        if conn.file_state(fid) == FileState.SENDING:
            conn.end_file(fid, digest, _sha256(hasher))

    def _hasher(self):
        """XXH3-128, and SHA-256 in the same pass when a receipt was asked for (its entries list it)."""
        if self.receipt_path is None:
            return FileHasher()
        from .core.secure.receipt import ContentHasher  # (a send without a receipt never loads it)

        return ContentHasher()


def _sha256(hasher) -> bytes | None:
    return None if type(hasher) is FileHasher else hasher.sha256()  # (a ContentHasher: a receipt)
