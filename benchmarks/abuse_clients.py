"""Hostile ftx peers on the wire, for bench_abuse.py: raw TCP connections and UDP sessions.

Frames and packets are built with ftx.core's own encoders, so what the receiver
gets is well-formed where the attack needs it to be (it must pass the framing
and checksum layers to reach the code under attack).  Everything here is
bounded: every connect, read and handshake has a deadline, and every socket
is closed by ``close()``.  Loopback only.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import struct
import threading
import time

from ftx.core.frames import HEADER, FrameType, encode_frame
from ftx.core.manifest import FileEntry
from ftx.core.messages import ROLE_SENDER, Hello, Offer, Result
from ftx.core.udp import packets as P
from ftx.core.udp.endpoint import padded_initial

HELLO = encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4 * 1024 * 1024 + 64 * 1024, 0, "bench-abuse").encode())


def offer_frame(file_id: int, path: bytes, size: int, mtime_ns: int = 1) -> bytes:
    return encode_frame(FrameType.OFFER, Offer(file_id, FileEntry(path, size=size, mtime_ns=mtime_ns)).encode())


def ping_frame(n: int) -> bytes:
    return encode_frame(FrameType.PING, struct.pack(">Q", n))


def attacker_hosts(count: int) -> list[str]:
    """Source addresses for attackers: 127.0.0.2 and up (the legitimate sender is 127.0.0.1)."""
    return [f"127.0.0.{2 + i % 253}" for i in range(max(1, count))]


class Pacer:
    """Keeps a flood at ``rate`` datagrams a second (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.t0, self.sent = rate, time.monotonic(), 0

    def tick(self, n: int = 1) -> None:
        self.sent += n
        if self.rate:
            ahead = self.t0 + self.sent / self.rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)


# == TCP ===========================================================================
class TcpConns:
    """Attacker TCP connections.  A thread reads and discards what the receiver sends,
    splits it into frames (kept per connection: ``frames[i]``, up to ``keep``) and notes
    connections the receiver closed."""

    def __init__(self, port: int, keep: int = 8) -> None:
        self.port = port
        self.socks: list[socket.socket] = []
        self.failed = 0  # connects refused or timed out
        self.closed_by_peer: set[int] = set()
        self.first_error = ""  # the text of the first ERROR frame the receiver sent on any of them
        self.frame_counts: list[dict[int, int]] = []
        self.frames: list[list[tuple[int, bytes]]] = []
        self._bufs: list[bytearray] = []
        self._keep = keep
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def connect(self, n: int, hosts: list[str], deadline: float) -> list[int]:
        """Open up to ``n`` connections (source addresses round-robin over ``hosts``); their indexes."""
        new = []
        for i in range(n):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=min(left, 5.0),
                                             source_address=(hosts[i % len(hosts)], 0))
            except OSError:
                self.failed += 1
                continue
            s.settimeout(5.0)
            with self._lock:
                idx = len(self.socks)
                self.socks.append(s)
                self.frame_counts.append({})
                self.frames.append([])
                self._bufs.append(bytearray())
                self._sel.register(s, selectors.EVENT_READ, idx)
            new.append(idx)
        return new

    def send(self, idx: int, data: bytes, timeout: float = 5.0) -> bool:
        """Send all of ``data`` within ``timeout``; False if the receiver closed or stopped reading."""
        if idx in self.closed_by_peer:
            return False
        s = self.socks[idx]
        try:
            s.settimeout(timeout)
            s.sendall(data)
            return True
        except OSError:
            return False

    def replies(self, idx: int) -> int:
        """Frames the receiver sent on connection ``idx`` other than its HELLO and PONGs: answers."""
        counts = self.frame_counts[idx]
        return sum(counts.values()) - counts.get(FrameType.HELLO, 0) - counts.get(FrameType.PONG, 0)

    def _reader(self) -> None:
        while not self._stop.is_set():
            if not self.socks:
                time.sleep(0.05)
                continue
            try:  # epoll: registering from another thread meanwhile is fine
                ready = self._sel.select(0.05)
            except (OSError, ValueError):
                continue
            for key, _ in ready:
                idx = key.data
                try:
                    data = key.fileobj.recv(1 << 16)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed_by_peer.add(idx)
                    with self._lock:
                        self._sel.unregister(key.fileobj)
                    continue
                self._split(idx, data)

    def _split(self, idx: int, data: bytes) -> None:
        buf = self._bufs[idx]
        buf += data
        while len(buf) >= HEADER.size:
            ftype, _flags, _r, length, _c = HEADER.unpack_from(buf, 0)
            if len(buf) < HEADER.size + length:
                if length > 1 << 20:  # not ftx, or a huge frame: stop splitting, keep counting bytes
                    buf.clear()
                break
            counts = self.frame_counts[idx]
            counts[ftype] = counts.get(ftype, 0) + 1
            if ftype == FrameType.ERROR and not self.first_error:
                self.first_error = bytes(buf[HEADER.size + 4 : HEADER.size + length]).decode("utf-8", "replace")
            if len(self.frames[idx]) < self._keep:
                self.frames[idx].append((ftype, bytes(buf[HEADER.size : HEADER.size + length])))
            del buf[: HEADER.size + length]

    def check_closed(self) -> int:
        """Connections the receiver has closed so far (a last look at each socket first)."""
        time.sleep(0)  # let the reader run
        for idx, s in enumerate(self.socks):
            if idx in self.closed_by_peer:
                continue
            try:
                s.setblocking(False)
                if s.recv(1 << 16, socket.MSG_PEEK) == b"":
                    self.closed_by_peer.add(idx)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.closed_by_peer.add(idx)
        return len(self.closed_by_peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self._sel.close()


def describe_reply(frames: list[tuple[int, bytes]]) -> str:
    """What the receiver answered an OFFER with, in a few words."""
    for ftype, payload in frames:
        if ftype == FrameType.DECISION:
            return "accepted (DECISION)"
        if ftype == FrameType.RESULT:
            try:
                r = Result.decode(payload)
                return f"refused: {getattr(r.code, 'name', r.code)} {r.message}"[:90]
            except Exception:  # a reply we cannot read is itself worth reporting
                return "RESULT (unreadable)"
        if ftype == FrameType.ERROR:
            return f"ERROR {payload[4:90].decode('utf-8', 'replace')}"
    return "no answer"


# == UDP ===========================================================================
def _cid() -> int:
    return int.from_bytes(os.urandom(8), "big")


class UdpSessions:
    """Attacker UDP sessions: sockets, completed handshakes, crafted DATA packets.

    ``sessions`` holds [socket, receiver's connection ID, next packet number, our connection ID].
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.addr = ("127.0.0.1", port)
        self.socks: list[socket.socket] = []
        self.sessions: list[list] = []
        self._by_cid: dict[int, list] = {}  # our connection ID -> session
        self.closed: set[int] = set()  # our connection IDs of sessions the receiver has closed
        self._lock = threading.Lock()

    def socket(self, host: str = "127.0.0.1") -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.setblocking(False)
        self.socks.append(s)
        return s

    def handshake_many(self, sock: socket.socket, count: int, deadline: float, pacer: Pacer | None = None,
                       hello: bool = True) -> int:
        """Complete up to ``count`` handshakes from ``sock`` (INITIAL, RETRY, INITIAL with the
        token, the receiver's INITIAL); each session then gets HELLO on its control stream.
        Returns how many completed."""
        waiting = {}  # our cid -> state: 0 sent first INITIAL, 1 sent token INITIAL
        done = 0
        todo = count
        batch_end = 0.0
        while time.monotonic() < deadline and (todo or waiting):
            while todo and len(waiting) < 256:
                scid = _cid()
                self._sendto(sock, padded_initial(_cid(), 1, scid, b""))
                waiting[scid] = 0
                todo -= 1
                if pacer:
                    pacer.tick()
                batch_end = time.monotonic() + 2.0
            got = self._read(sock, min(deadline, batch_end) - time.monotonic())
            for data in got:
                try:
                    pkt = P.parse(data)
                except Exception:
                    continue
                if pkt.dcid not in waiting:
                    continue
                if pkt.ptype == P.RETRY and waiting[pkt.dcid] == 0:
                    _, token, _ = P.parse_initial(pkt.payload)
                    self._sendto(sock, padded_initial(_cid(), 2, pkt.dcid, token))
                    waiting[pkt.dcid] = 1
                    if pacer:
                        pacer.tick()
                elif pkt.ptype == P.INITIAL:
                    peer_cid, _, _ = P.parse_initial(pkt.payload)
                    del waiting[pkt.dcid]
                    sess = [sock, peer_cid, 0, pkt.dcid]
                    with self._lock:
                        self.sessions.append(sess)
                        self._by_cid[pkt.dcid] = sess
                    if hello:
                        self.send(sess, P.encode_stream(0, HELLO))
                    done += 1
            if not got and time.monotonic() >= batch_end:
                waiting.clear()  # the receiver did not answer these in time: give up on them
        return done

    def _read(self, sock: socket.socket, timeout: float) -> list[bytes]:
        out = []
        end = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                out.append(sock.recv(65536))
                if len(out) >= 512:
                    return out
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # ICMP port unreachable: the receiver is gone
                pass
            if out or time.monotonic() >= end:
                return out
            time.sleep(0.001)

    def _sendto(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendto(data, self.addr)
        except OSError:
            pass  # a full socket buffer: lost, as on a real network

    def send(self, sess: list, payload: bytes, pn: int | None = None) -> None:
        """One DATA packet to the receiver in session ``sess`` (packet numbers count up by default)."""
        if pn is None:
            pn = sess[2]
            sess[2] += 1
        try:
            sess[0].sendto(P.build(P.DATA, sess[1], pn, payload), self.addr)
        except OSError:
            pass  # a full socket buffer: the datagram is lost, as on a real network

    def drain(self) -> None:
        """Read what the receiver sent us, so our buffers do not fill; note sessions it CLOSEd."""
        for s in self.socks:
            try:
                while data := s.recv(65536):
                    if data[0] == P.DATA and P.F_CLOSE in data:  # cheap test first; most are ACKs
                        self._note_close(data)
            except OSError:
                pass

    def _note_close(self, data: bytes) -> None:
        try:
            pkt = P.parse(data)
            if any(isinstance(f, P.CloseFrame) for f in P.parse_frames(pkt.payload)):
                self.closed.add(pkt.dcid)
        except Exception:  # not ours to judge: the receiver's packets are only inspected
            pass

    def live(self) -> list[list]:
        """Sessions the receiver has not closed (as far as we have read)."""
        return [sess for sess in self.sessions if sess[3] not in self.closed]

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()
        self.sessions.clear()


# == mutation ======================================================================
def random_frames(rng: random.Random) -> bytes:
    """One to four frames of the UDP payload grammar, with hostile values."""
    out = bytearray()
    for _ in range(rng.randint(1, 4)):
        k = rng.random()
        if k < 0.35:
            clen = rng.choice([1, 4096, 1 << 20, 16 << 20, rng.randint(1, 17 << 20)])
            coff = rng.randint(0, max(0, clen - 1))
            data = os.urandom(rng.randint(0, 64))
            out += P.CHUNK_HEADER.pack(P.F_CHUNK, rng.randint(0, 8), rng.randint(0, 4096), clen, coff,
                                       rng.getrandbits(64), len(data)) + data
        elif k < 0.65:
            off = rng.choice([rng.randint(0, 1 << 16), rng.randint(0, 1 << 30), rng.getrandbits(62)])
            out += P.encode_stream(off, os.urandom(rng.randint(0, 200)))
        elif k < 0.75:
            out += bytes([P.F_ACK]) + os.urandom(rng.randint(1, 24))
        elif k < 0.85:
            out += P.encode_varint_frame(P.F_MAX_DATA, rng.getrandbits(62))
        elif k < 0.95:
            out += bytes([P.F_PING]) + bytes(rng.randint(0, 32))
        else:
            out += os.urandom(rng.randint(1, 64))
    return bytes(out)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(0, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    r = rng.random()
    if r < 0.1 and b:
        del b[rng.randrange(len(b)) :]
    elif r < 0.2:
        b += os.urandom(rng.randint(1, 100))
    return bytes(b)
