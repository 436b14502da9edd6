"""Batched datagram I/O on one non-blocking UDP socket (part of the UDP driver, ``udp.py``).

Throughput in Python is bounded by calls per datagram, so this socket batches:

* receive: on each readiness event it drains the socket (up to ``READ_BATCH``
  reads), and with ``UDP_GRO`` each read returns many datagrams coalesced by
  the kernel, split by the caller by the segment size in the control message;
  consecutive reads from one address with one segment size are laid end to end
  in one buffer (up to ``READ_BYTES``) and handed over as one burst, so that the
  per-burst work above the socket (opening, scanning, recording) is done once
  for many reads;
* send: datagrams go out in ``UDP_SEGMENT`` (GSO) batches -- one ``sendmsg``
  for up to 64 equal-sized datagrams -- where the kernel supports it, else one
  ``sendto`` each.  A full socket buffer queues, never drops.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import Callable

log = logging.getLogger("ftx.udp")
SOCKET_BUFFER = 16 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux values
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
READ_BATCH = 32  # reads (each up to 64 KiB with GRO) per readiness event
MAX_READ = 65536  # the most one read returns (a GRO read: at most 64 KiB)
READ_BYTES = 4 * MAX_READ  # reads joined into one burst for on_read, at most (16: the small-file set
# got slower, 3 700 -> 3 360 files/s, and the receiver 6 MB larger; 4 was no slower than 1 there)
TURN_BYTES = READ_BYTES  # bytes read per readiness event, about (then the loop's other callbacks
# get their turn): 32 full GRO reads took the loop ~1.5 ms, and a worker's "done" took three such
# turns to become a RESULT on the wire while the sender waited on its offer window


class DatagramSocket:
    """Batched datagram I/O on one non-blocking socket (GRO in, GSO out, with fallbacks)."""

    def __init__(self, sock: socket.socket, on_read: Callable[[memoryview, int, object], None],
                 on_drained: Callable[[], None] | None = None, gso: bool = True,
                 on_refused: Callable[[OSError], None] | None = None) -> None:
        self.sock = sock
        sock.setblocking(False)
        for force, opt in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:  # beyond net.core.rmem_max where we may (CAP_NET_ADMIN), else up to it
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    pass
        self.drops = 0  # datagrams the kernel dropped because our receive buffer was full
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        self.gro = self.gso = False
        if gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
            try:
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
                self.gso = True
            except OSError:
                pass
        self.on_read = on_read
        self.on_drained = on_drained
        self.on_refused = on_refused  # a connected socket's ICMP port unreachable (ECONNREFUSED)
        self._rbuf = bytearray(READ_BYTES)
        self._rview = memoryview(self._rbuf)
        self._loop = asyncio.get_running_loop()
        self._queue: list[tuple[list, object]] = []
        self._cmsg_space = 2 * socket.CMSG_SPACE(4)
        self._loop.add_reader(sock.fileno(), self._readable)
        self.closed = False

    def _readable(self) -> None:
        """Drain the socket (a bounded number of reads, so ACKs and timers get their turn)
        into one reused buffer.  Reads go to ``on_read(data, segment size, address)``:
        consecutive reads from the same address with the same segment size, each but the
        last whole segments, as one burst (what one larger GRO read would have been);
        ``data`` is valid only during the call."""
        sock, view, cmsg = self.sock, self._rview, self._cmsg_space
        size = len(view)
        start = pos = 0  # view[start:pos]: reads not yet handed over, all from addr0 in segments of seg0
        seg0, addr0 = 0, None
        error = None
        turn = 0  # bytes read in this turn
        try:
            for _ in range(READ_BATCH):
                if turn >= TURN_BYTES:
                    break
                if size - pos < MAX_READ:
                    if pos > start:
                        self._deliver(view[start:pos], seg0, addr0)
                    start = pos = 0
                n, anc, _flags, addr = sock.recvmsg_into([view[pos : pos + MAX_READ]], cmsg)
                seg = n
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = struct.unpack("=i", value[:4])[0] or n
                    elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                        self.drops = struct.unpack("=I", value[:4])[0]
                if pos > start and (seg != seg0 or addr != addr0):
                    self._deliver(view[start:pos], seg0, addr0)
                    start = pos
                seg0, addr0 = seg, addr
                pos += n
                turn += n
                if not n or n % seg:  # ends in a shorter datagram: nothing may follow it in a burst
                    self._deliver(view[start:pos], seg, addr)
                    start = pos
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # e.g. ICMP port unreachable reported on a connected socket
            log.debug("udp receive error: %s", exc)
            error = exc
        if pos > start:
            self._deliver(view[start:pos], seg0, addr0)
        if error is not None:
            self._refused(error)
        if self.on_drained is not None:
            self.on_drained()

    def _deliver(self, data: memoryview, seg: int, addr) -> None:
        try:
            self.on_read(data, seg, addr)
        except Exception:  # a bug in handling one read must not stall the socket
            log.exception("udp: error handling a datagram from %s", addr)

    def _refused(self, exc: OSError) -> None:
        if exc.errno == errno.ECONNREFUSED and self.on_refused is not None:
            self.on_refused(exc)

    def send(self, bursts: list[tuple[bytes, int]], addr=None) -> None:
        """Send ``(buffer, size)`` bursts: datagrams of ``size`` bytes laid end to end."""
        if not bursts:
            return
        if self._queue:
            self._queue.append((bursts, addr))
            return
        rest = self._send_now(bursts, addr)
        if rest:
            self._queue.append((rest, addr))
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def send_datagrams(self, datagrams: list[bytes], addr=None) -> None:
        """Send separate datagrams, joining runs of equal size into bursts where GSO works."""
        bursts, i, n = [], 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            j, total = i + 1, size
            if self.gso:
                while (j < n and j - i < GSO_MAX_SEGMENTS and len(datagrams[j]) <= size
                       and total + len(datagrams[j]) <= GSO_MAX_BYTES):
                    total += len(datagrams[j])
                    j += 1
                    if len(datagrams[j - 1]) < size:
                        break  # only the last segment may be shorter
            bursts.append((datagrams[i] if j == i + 1 else b"".join(datagrams[i:j]), size))
            i = j
        self.send(bursts, addr)

    def _send_now(self, bursts: list, addr) -> list:
        """Send what the socket takes; return what it would not take now."""
        sock, i = self.sock, 0
        try:
            while i < len(bursts):
                buf, seg = bursts[i]
                if len(buf) <= seg:
                    try:
                        if addr is None:
                            sock.send(buf)
                        else:
                            sock.sendto(buf, addr)
                    except OSError as exc:
                        if exc.errno != errno.EMSGSIZE:
                            raise
                        # larger than the local link allows (a path MTU probe, with DF set): it
                        # is lost, as on a path that drops it
                elif self.gso:
                    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
                    if addr is None:
                        sock.sendmsg([buf], anc)
                    else:
                        sock.sendmsg([buf], anc, 0, addr)
                else:
                    view = memoryview(buf)
                    for off in range(0, len(buf), seg):
                        try:
                            if addr is None:
                                sock.send(view[off : off + seg])
                            else:
                                sock.sendto(view[off : off + seg], addr)
                        except (BlockingIOError, InterruptedError):
                            bursts[i] = (bytes(view[off:]), seg)
                            raise
                i += 1
        except (BlockingIOError, InterruptedError):
            return bursts[i:]
        except OSError as exc:
            if exc.errno in (5, 22, 90, 95) and self.gso:  # EIO/EINVAL/EMSGSIZE/EOPNOTSUPP: no GSO here
                self.gso = False
                return self._send_now(bursts[i:], addr)
            log.debug("udp send error: %s", exc)  # the loss is repaired like any other
            self._refused(exc)
            return self._send_now(bursts[i + 1 :], addr) if i + 1 < len(bursts) else []
        return []

    def _writable(self) -> None:
        while self._queue:
            bursts, addr = self._queue[0]
            rest = self._send_now(bursts, addr)
            if rest:
                self._queue[0] = (rest, addr)
                return
            self._queue.pop(0)
        self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            if self._queue:
                self._loop.remove_writer(self.sock.fileno())
            self.sock.close()

