"""Reading on a TCP link: ``SealedFeed``, the half of ``TcpLink`` (and of a send's head start,
head_start.BlockingLink) that opens the peer's records straight into the frame decoder's buffer
(and reads plaintext there before a handshake is done, ``_feed_plain``).

After ``handshake_done`` only sealed records are accepted (ftx/core/secure/records.py).
``feed`` opens them into the connection's buffer (``open_into``): a complete record
where the decoder offers room, a large one read straight into its final place and
opened there (``_read_direct``), so chunk bytes are copied once from the kernel and
once by the AEAD.  Before the first record a plaintext ERROR frame is the peer's
refusal of our last handshake message (``_plain_error``).

A mixin (with ``install_keys``, which seals what its host sends from then on): its host
(``TcpLink``) gives ``sock``, ``_keys``, ``_sealer``, ``_opener``, ``_rest``, ``last_recv``,
``bytes_in``, ``send``, ``_wake_at``, ``_readable`` and ``_established``.
"""

from __future__ import annotations

import time

from ..core.frames import HEADER_SIZE as FRAME_HEADER_SIZE
from ..core.frames import BufferLimit, BufferWait, FrameDecoder, FrameType, encode_frame
from ..core.messages import MAX_TEXT, ErrorMessage
from ..core.secure import AuthError
from ..core.secure.handshake import unauthenticated_reason
from ..core.secure.keys import TAG_SIZE
from ..core.secure.records import RecordOpener, RecordSealer
from ..errors import FtxError, LocalProtocolError, TransportError
from ..securing import within

PLAIN_ERROR_MAX = 16 + 4096  # a plaintext ERROR frame (a refusal) before the first record, at most
PILE_RECORDS = 4  # records of small files' events handed to the driver as one batch, at most (while
# more are waiting in the socket): ~2 MiB of their bytes at most, one part, one syncfs, one thread hop


class SealedFeed:
    """The record half of a TCP link (``TcpLink``; the send's head start's ``BlockingLink``):
    its keys, reading records into a connection, closing; its host has ``sock``, the byte
    counts and the reads."""

    @property
    def stats(self) -> dict:
        """Bytes on the wire both ways (the --json reports' ``transport_stats``)."""
        return {"bytes_out": self.bytes_out, "bytes_in": self.bytes_in}

    def close(self) -> None:
        if self._opener is not None:
            self._opener.release()  # its share of --max-memory
        try:  # closing with input unread resets the connection, which can destroy our last
            self.sock.setblocking(False)
            self.sock.recv(65536)  # frame (an ERROR) before the peer reads it: drop what is there
        except OSError:
            pass
        self.sock.close()

    def install_keys(self, est) -> None:
        """Our handshake bytes are all sent: everything sent from now on is sealed."""
        if self._sealer is not None:
            raise LocalProtocolError("keys installed twice")
        self._keys = est
        self._sealer = RecordSealer(est)

    def handshake_done(self, leftover: bytes) -> None:
        """The peer's handshake is consumed: from now on only sealed records are accepted.
        ``leftover`` are the bytes read past it (the first records)."""
        if self._keys is None:
            raise LocalProtocolError("handshake_done before install_keys")
        if self._opener is not None:
            raise LocalProtocolError("handshake_done twice")
        opener = self._opener = RecordOpener(self._keys)
        view = memoryview(leftover)
        while view:
            buf = opener.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            opener.buffer_updated(n)
            view = view[n:]

    async def _feed_plain(self, conn) -> None:
        """Before ``handshake_done`` (or without a handshake, --insecure): what arrives next, read
        straight into ``conn``'s buffer."""
        sock = self.sock
        while True:
            buf = conn.get_buffer()
            self._wake_at(len(buf), len(buf))
            try:
                n = sock.recv_into(buf)
                break
            except (BlockingIOError, InterruptedError):
                del buf  # hold no region of the buffer while we wait
                await self._readable(conn)
            except OSError as exc:
                raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        self.bytes_in += n
        if n == 0:
            conn.receive_eof()
        conn.buffer_updated(n)

    async def _feed_sealed(self, conn) -> None:
        """Open the next record(s) into ``conn``; read from the socket only when none is complete.

        Records go into one region of the frame decoder's buffer after another, and
        the decoder hears of them once (``_fill``): a 1 MiB chunk is one
        ``buffer_updated`` for its header's record and one for its payload's three,
        not one per record.  This returns once an event or output is pending (the driver drains
        events before the next call, so chunk payloads are consumed before the buffer
        is asked for again and nothing is copied); events that own their bytes (many
        small files) pile up while records already read remain: the driver handles them
        as one batch.
        A large record whose plaintext fits the decoder's buffer with its tag
        behind it is read straight there and opened in place (``_read_direct``).
        A record that does not open ends the session: the peer is told (sealed
        ERROR AUTH) and ``AuthError`` is raised.  Further input is not read.
        """
        opener, sock = self._opener, self.sock
        try:
            if opener.budget is None and (budget := getattr(conn, "buffer_budget", None)) is not None:
                opener.use_budget(budget)  # a record is held whole before it opens: count it in --max-memory
            if opener.number == 0:
                conn.input_sealed()  # the AEAD proves each chunk: no second hash of it (protocol.md 20.2)
            if self._rest is not None:  # what conn could not take last time goes first
                rest, self._rest = self._rest, None
                self._put(conn, rest)
                if self._rest is not None or conn.events_pending:
                    return
            piled = 0  # records opened in this call while events wait (small files: at most PILE_RECORDS)
            while True:
                refusal = self._plain_error(conn) if opener.number == 0 else False
                if refusal:
                    return
                if refusal is False and opener.next_record():
                    filled = await self._fill(conn)
                    if filled < 0:
                        return
                    if filled:
                        if conn.views_pending or conn.closed or conn.paused:
                            break  # for the driver: a chunk (its payload is a view of conn's buffer), or
                            # a small file waits for room in --max-memory (read no more until it fits)
                        if conn.events_pending or conn.pending_output:
                            piled += 1
                            if piled >= PILE_RECORDS and opener.next_record() <= 0:
                                break  # the records read so far are in: a batch for the driver
                        continue  # more records already here (small files: one batch), or nothing
                        # for the driver yet (a chunk's header alone, or a PING's rest): read on
                buf = opener.get_buffer()
                self._wake_at(opener.missing(), len(buf))
                try:
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    del buf
                    if piled:  # nothing more waiting: the batch goes to the driver now
                        break
                    await self._readable(conn)
                    continue
                except OSError as exc:
                    raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
                del buf
                self.last_recv = time.monotonic()
                self.bytes_in += n
                opener.buffer_updated(n)
                conn.bytes_arriving(n)  # a record of a chunk on its way: the stall timeout sees it move
                if n == 0:
                    self._eof(conn)
                    return
        except BufferWait:
            raise  # not now: nothing was read; the driver waits for small files to settle, then reads again
        except (AuthError, BufferLimit) as exc:
            # tell the peer why (sealed: it has our keys), before the session learns of it;
            # the connection object is left as it is, so the error the session reports is this one
            try:
                await within(self, self.send([encode_frame(FrameType.ERROR, ErrorMessage(
                    exc.code, str(exc)).encode())]), 1.0)
            except Exception:
                pass
            raise
        self._established(conn)

    async def _fill(self, conn) -> int:
        """Open records into one region of ``conn``'s buffer and tell ``conn`` once: a record
        complete in the opener's buffer, or large records read straight into their place
        (``_read_direct``) one after another, and the small records after them while they fit
        (a large frame's rest: a chunk's records after its header's).  The bytes placed (0: none
        fits, read more into the opener's buffer; -1: the stream ended)."""
        opener = self._opener
        region = conn.get_buffer(opener.next_record())  # a complete record (size > 0): room for it whole
        room, filled, large = len(region), 0, False
        try:
            while True:
                size = opener.next_record()
                if size > 0:  # arrived whole
                    if filled + size <= room:
                        opener.open_into(region[filled : filled + size])
                        filled += size
                        if large:  # the rest of a large frame (its tail record): the region ends with it
                            continue
                        break  # small frames: the decoder sees each record, so that a chunk stops the feed
                    if not filled:  # a record larger than the region the decoder offers (small
                        region = None  # frames: the decoder offers READAHEAD): opened where it is, copied
                        self._put(conn, opener.open_in_place())
                        return size
                    break
                size = -size  # large, on its way: read it into its place, if it fits there with its tag
                if not size or filled + size + TAG_SIZE > room:
                    break
                if not await self._read_direct(conn, region[filled : filled + size + TAG_SIZE]):
                    return -1
                filled += size
                large = True  # (a region with room for a large record: a large frame's rest, no other frame)
        finally:
            region = None  # hold no view of conn's buffer
        if filled:
            conn.buffer_updated(filled)
        return filled

    async def _read_direct(self, conn, target: memoryview) -> bool:
        """Read the opener's current (large) record into ``target`` (its ciphertext and tag, where
        its plaintext goes in the decoder's buffer) and open it there.  Reads stop at the record's
        end.  False: the stream ended (inside the record: ``AuthError``)."""
        opener, sock = self._opener, self.sock
        got = opener.begin_direct(target)
        need = len(target)
        after = opener.direct_room()  # what follows the record (the next header): the same room each
        try:  # read, as bytes land there only once the record's are all in
            while got < need:
                try:
                    n = sock.recvmsg_into([target[got:], after])[0]
                except (BlockingIOError, InterruptedError):
                    self._wake_at(need - got, need - got)
                    await self._readable(conn, trim=False)  # target is a region of conn's buffer: keep it
                    continue
                except OSError as exc:
                    raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
                self.last_recv = time.monotonic()
                self.bytes_in += n
                if n == 0:
                    self._eof(conn)
                    return False
                got += n
                conn.bytes_arriving(n)
        finally:
            after.release()
        if got > need:
            opener.buffer_updated(got - need)
        opener.finish_direct(target)
        return True

    def _put(self, conn, data) -> None:
        """Copy ``data`` (a record opened in place, or a peer's plaintext refusal) into ``conn``
        through its buffer.  What ``conn`` cannot take now -- it paused (an item waits for room in
        --max-memory) or has no room for a buffer yet (BufferWait, re-raised) -- stays in ``_rest``
        and goes first next time."""
        view = memoryview(data)
        while view:
            if conn.paused:
                self._rest = view
                return
            try:
                buf = conn.get_buffer()
            except BufferWait:
                self._rest = view
                raise
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            del buf
            view = view[n:]
            conn.buffer_updated(n)

    def _eof(self, conn) -> None:
        self._opener.receive_eof()  # a cut record: AuthError
        conn.receive_eof()
        conn.buffer_updated(0)

    def _plain_error(self, conn) -> bool | None:
        """Before the first record: a plaintext ERROR frame is the peer refusing our last
        handshake message (it could not seal it: the handshake failed on its side).  A record
        header starts with 0x00 or 0x80, never 0x0C.  The frame goes to ``conn`` as is.
        True: delivered; None: one is arriving; False: these are records."""
        opener = self._opener
        head = opener.peek(FRAME_HEADER_SIZE)
        if not head or head[0] != FrameType.ERROR:
            return False
        if len(head) < FRAME_HEADER_SIZE:
            return None
        size = FRAME_HEADER_SIZE + int.from_bytes(head[4:8], "big")
        if size > PLAIN_ERROR_MAX:
            return False  # not a refusal: the record layer rejects it
        frame = opener.peek(size)
        if len(frame) < size:
            return None
        opener.skip(size)
        self._put(conn, _mark_unauthenticated(frame))
        return True


def _mark_unauthenticated(frame: bytes) -> bytes:
    """A plaintext ERROR frame with ``NOT_AUTHENTICATED`` after its reason (re-encoded; the text
    shortened to fit).  A frame that does not decode goes on as is: the session rejects it."""
    decoder = FrameDecoder()
    try:
        decoder.feed(frame)
        msg = ErrorMessage.decode(decoder.next_frame().payload)
    except FtxError:
        return frame
    reason = unauthenticated_reason(msg.message, MAX_TEXT // 4)  # one line, no escape sequences for a terminal
    return encode_frame(FrameType.ERROR, ErrorMessage(msg.code, reason).encode())
