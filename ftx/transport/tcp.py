"""TCP driver: non-blocking sockets on the asyncio loop, one task per connection.

``TcpLink`` writes with ``sendmsg`` (header and chunk bytes in one call, no
copy in Python) and reads with ``recv_into`` straight into the frame decoder's
buffer.  ``connect`` opens a sender's link; ``serve`` accepts receivers' links
and runs any number of them side by side on one loop.

Sealed (after ``ftx.securing.run_handshake``): ``install_keys`` makes ``send``
seal its buffers into records (ftx/core/secure/records.py) in one reused
output buffer, written with one call per batch; ``handshake_done`` makes
``feed`` read records and open each straight into the frame decoder's buffer
(``open_into``), so chunk bytes are copied once from the kernel, then once by
the AEAD into their final place.
"""

from __future__ import annotations

import asyncio
import os
import errno
import logging
import socket
import time
from typing import Awaitable, Callable

from ..core.frames import HEADER_SIZE as FRAME_HEADER_SIZE
from ..core.frames import BufferLimit, FrameDecoder, FrameType, encode_frame
from ..core.messages import MAX_TEXT, ErrorMessage
from ..core.secure import AuthError, Established
from ..core.secure.handshake import unauthenticated_reason
from ..core.secure.keys import TAG_SIZE
from ..core.secure.records import RecordOpener, RecordSealer
from ..errors import ErrorCode, FtxError, LocalProtocolError, TransportError
from .quiet import IDLE_TRIM, give_back
from .sockets import bound_socket, host_of, resolve

log = logging.getLogger("ftx.tcp")
IOV_MAX = 512
SOCKET_BUFFER = 4 * 1024 * 1024
RCVLOWAT_MAX = 1024 * 1024
PLAIN_ERROR_MAX = 16 + 4096  # a plaintext ERROR frame (a refusal) before the first record, at most
PILE_RECORDS = 4  # records of small files' events handed to the driver as one batch, at most (while
# more are waiting in the socket): ~2 MiB of their bytes at most, one part, one syncfs, one thread hop


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpLink:
    transport = "tcp"

    def __init__(self, sock: socket.socket) -> None:
        _tune(sock)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.last_recv = self.last_send = time.monotonic()
        self.busy = 0
        self.bytes_in = self.bytes_out = 0  # bytes that crossed the socket, records and handshake included
        self._lowat = 1
        self.on_established = None  # called once when the peer's HELLO has arrived (Admission)
        self._keys: Established | None = None
        self._sealer: RecordSealer | None = None  # set by install_keys: what we send is sealed
        self._opener: RecordOpener | None = None  # set by handshake_done: what we read is sealed
        try:
            self.peer = sock.getpeername()
        except OSError:
            self.peer = None

    @property
    def sending(self) -> bool:
        return self._send_lock.locked()

    @property
    def stats(self) -> dict:
        """Bytes on the wire both ways (the --json reports' ``transport_stats``)."""
        return {"bytes_out": self.bytes_out, "bytes_in": self.bytes_in}

    # -- the handshake (ftx/securing.py) ------------------------------------------
    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    async def recv_raw(self) -> bytes:
        """The next bytes of the stream before ``handshake_done`` (b"" at end of stream)."""
        if self._opener is not None:
            raise LocalProtocolError("recv_raw after handshake_done")
        try:
            data = await self._loop.sock_recv(self.sock, 65536)
        except OSError as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        self.bytes_in += len(data)
        return data

    def install_keys(self, est: Established) -> None:
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

    # -- sending ---------------------------------------------------------------------
    async def send(self, bufs: list) -> None:
        """Write ``bufs`` in order; sealed once ``install_keys`` was called."""
        if not bufs:
            return
        async with self._send_lock:
            await self._write(bufs)

    async def send_paced(self, bufs: list, pacer) -> None:
        """``send`` at ``pacer``'s rate (``--max-rate``): slice after slice, each paced, all under
        one hold of the send lock (no other frame, such as a PING, lands inside a DATA frame)."""
        async with self._send_lock:
            for part, size in pacer.slices(bufs):
                await self._write(part)
                await pacer.pace(size)

    async def _write(self, bufs: list) -> None:
        if self._sealer is not None:
            for view in self._sealer.seal_buffers(bufs):
                await self._send_all(view)
            return
        await self._sendmsg(bufs)

    async def send_plain(self, bufs: list) -> None:
        """Write ``bufs`` unsealed even after ``install_keys``: a handshake refusal (protocol.md)."""
        async with self._send_lock:
            await self._sendmsg(bufs)

    async def _sendmsg(self, bufs: list) -> None:
        views = [memoryview(b).cast("B") for b in bufs if len(b)]
        i = 0
        sock = self.sock
        while i < len(views):
            try:
                n = sock.sendmsg(views[i : i + IOV_MAX])
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise TransportError(f"connection lost while sending: {exc.strerror or exc}") from exc
            self.last_send = time.monotonic()
            self.bytes_out += n
            while n:
                size = len(views[i])
                if n >= size:
                    n -= size
                    i += 1
                else:
                    views[i] = views[i][n:]
                    n = 0

    async def _send_all(self, view: memoryview) -> None:
        sock = self.sock
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                raise TransportError(f"connection lost while sending: {exc.strerror or exc}") from exc
            self.last_send = time.monotonic()
            self.bytes_out += n
            view = view[n:]

    async def _writable(self) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self._loop.remove_writer(fd)

    async def recv_into(self, buf: memoryview) -> int:
        try:
            n = await self._loop.sock_recv_into(self.sock, buf)
        except OSError as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from exc
        self.last_recv = time.monotonic()
        self.bytes_in += n
        return n

    # -- what the transport-neutral layers call -----------------------------------
    own_liveness = False  # the Watchdog pings and times out for us
    file_bytes_in = 0  # chunks travel in frames: conn.file_data_moved counts them (UDP: chunks apart)

    async def feed(self, conn) -> None:
        """Move whatever arrives next into ``conn`` (zero-copy into its frame buffer).

        While a large frame is being filled, SO_RCVLOWAT keeps the loop from
        waking for every 64 KiB segment: fewer wake-ups, larger reads.  While
        nothing arrives no buffer region is held, and after ``IDLE_TRIM``
        seconds the connection gives its buffer memory back.
        """
        if self._opener is not None:
            return await self._feed_sealed(conn)
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
        if self.on_established is not None and conn.peer is not None:
            callback, self.on_established = self.on_established, None
            callback()

    def _wake_at(self, wanted: int, room: int) -> None:
        """SO_RCVLOWAT for a read into ``room`` bytes that wants ``wanted``: when more than 64 KiB
        are wanted, wake only once ``room`` (at most 1 MiB) has come; else for any byte.  Set
        only when the one set is above that or more than 1/8 below (never waits for more than
        ``wanted``; saves a system call per read when sizes differ a little)."""
        lowat = min(wanted, room, RCVLOWAT_MAX) if wanted > 65536 else 1
        if not lowat - (lowat >> 3) <= self._lowat <= lowat:  # within 1/8 below is as good: no call
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._lowat = lowat
            except OSError:
                pass

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
                        if conn.views_pending or conn.closed:
                            break  # for the driver: a chunk (its payload is a view of conn's buffer)
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
        except (AuthError, BufferLimit) as exc:
            # tell the peer why (sealed: it has our keys), before the session learns of it;
            # the connection object is left as it is, so the error the session reports is this one
            try:
                await asyncio.wait_for(self.send([encode_frame(FrameType.ERROR, ErrorMessage(
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
                        _copy_into(conn, opener.open_in_place())
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

    def _eof(self, conn) -> None:
        self._opener.receive_eof()  # a cut record: AuthError
        conn.receive_eof()
        conn.buffer_updated(0)

    def _established(self, conn) -> None:
        if self.on_established is not None and conn.peer is not None:
            callback, self.on_established = self.on_established, None
            callback()

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
        _copy_into(conn, _mark_unauthenticated(frame))
        return True

    async def _readable(self, conn, trim: bool = True) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        timer = self._loop.call_later(IDLE_TRIM, self._trim, conn) if trim else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._loop.remove_reader(fd)

    def _trim(self, conn) -> None:
        if self._opener is not None:
            self._opener.trim()
        if self._sealer is not None and not self._send_lock.locked():  # not under a send in progress
            self._sealer.trim()
        give_back(conn, self._loop)

    def read_buffer(self, shared: memoryview) -> memoryview:
        """Where the sender reads its next chunk: framed and sent at once, so one buffer serves."""
        return shared

    async def send_chunk(self, conn, file_id: int, index: int, data) -> None:
        conn.send_chunk(file_id, index, data)  # a DATA frame, flushed with the others

    async def file_sent(self, file_id: int) -> None:
        """On TCP, FILE_END simply follows the DATA frames in the stream."""

    async def control_delivered(self) -> None:
        """On TCP, later DATA frames cannot overtake earlier control frames."""

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self._opener is not None:
            self._opener.release()  # its share of --max-memory
        try:  # closing with input unread resets the connection, which can destroy our last
            self.sock.recv(65536)  # frame (an ERROR) before the peer reads it: drop what is there
        except OSError:
            pass
        self.sock.close()

    async def aclose(self) -> None:
        self.close()


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


def _copy_into(conn, data) -> None:
    """Copy ``data`` into ``conn`` through its buffer (a record larger than the region the
    decoder offers, or a plaintext ERROR)."""
    view = memoryview(data)
    while view:
        buf = conn.get_buffer()
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        del buf
        view = view[n:]
        conn.buffer_updated(n)


async def connect(host: str, port: int, timeout: float = 15.0) -> TcpLink:
    loop = asyncio.get_running_loop()
    try:
        infos = await resolve(host, port, socket.SOCK_STREAM)  # a numeric address without a thread
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    last: Exception | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            return TcpLink(sock)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            last = exc
    errno_ = getattr(last, "errno", None)  # asyncio's strerror reads "Connect call failed ('127.0.0.1', 9)"
    reason = os.strerror(errno_).lower() if errno_ else getattr(last, "strerror", None) or "timed out"
    raise TransportError(f"cannot connect to {host} port {port}: {reason}", ErrorCode.ABORTED)


def listen(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets: ``None``/``::`` means every address, IPv6 and IPv4."""
    sock = bound_socket(host, port, socket.SOCK_STREAM, reuse_addr=True)
    sock.listen(128)
    sock.setblocking(False)
    return [sock]


def refuse(sock: socket.socket, reason: str) -> None:
    """Turn a connection away at once: one ERROR BUSY frame, then close.  Costs no task."""
    try:
        sock.setblocking(False)
        sock.send(encode_frame(FrameType.ERROR, ErrorMessage(ErrorCode.BUSY, reason).encode()))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # the peer's HELLO, if in: closing with unread bytes would reset the ERROR away
    except OSError:
        pass
    finally:
        sock.close()


async def serve(socks: list[socket.socket], handle: Callable[[TcpLink], Awaitable[None]], admission=None) -> None:
    """Accept forever, running ``handle(link)`` for each connection concurrently.

    With an ``Admission`` (ftx/limits.py), a connection over its limits is
    refused with ERROR BUSY before any per-connection state exists.
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    async def run(link: TcpLink, host: str, evict) -> None:
        try:
            await handle(link)
        finally:
            admission.release(host, evict)

    async def accept_loop(lsock: socket.socket) -> None:
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed: %s; retrying", exc.strerror)
                    await asyncio.sleep(0.1)
                    continue
                raise
            if admission is None:
                coro = handle(TcpLink(sock))
            else:
                host = host_of(addr)
                holder: list[asyncio.Task] = []

                def evict(holder=holder) -> None:  # no HELLO yet, and a newcomer needs the place
                    for t in holder:
                        t.cancel()

                reason = admission.admit(host, evict)
                if reason is not None:
                    log.info("refused %s: %s", host, reason)
                    refuse(sock, reason)
                    continue
                try:
                    link = TcpLink(sock)
                    link.on_established = lambda evict=evict: admission.settled(evict)
                    coro = run(link, host, evict)
                except BaseException:
                    admission.release(host, evict)
                    raise
            task = loop.create_task(coro)
            if admission is not None:
                holder.append(task)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    try:
        await asyncio.gather(*(accept_loop(s) for s in socks))
    finally:
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
