"""A hand-driven UDP peer for attacking a real ``ftx receive``: it does the handshake
(INITIAL, RETRY, INITIAL) and then sends whatever DATA packets a test crafts.

Also ``rss(pid)``: a process's resident and peak resident memory, from /proc.
Used by test_udp_abuse.py and benchmarks/udp_attacks.py.
"""

from __future__ import annotations

import os
import random
import socket
import time

from ftx.core.sender import SenderConnection
from ftx.core.udp import packets as P
from ftx.core.udp.endpoint import padded_initial

MIB = 1024 * 1024


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes: resident now, and the peak so far."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value, _unit = line.split()
                values[key[:-1]] = int(value) * 1024
    return values["VmRSS"], values["VmHWM"]


def hello_bytes() -> bytes:
    """The control stream's first bytes of an ftx sender: its HELLO frame."""
    return b"".join(bytes(b) for b in SenderConnection().data_to_send())


class Refused(Exception):
    def __init__(self, frame: P.CloseFrame) -> None:
        super().__init__(f"refused ({frame.code}): {frame.reason}")
        self.frame = frame


class RawPeer:
    """One UDP socket; ``handshake()`` opens a session on the receiver (several may share the socket)."""

    def __init__(self, port: int, host: str = "127.0.0.1", bind: str | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind is not None:
            self.sock.bind((bind, 0))
        self.sock.connect((host, port))
        self.sock.settimeout(timeout)
        self.rng = random.Random(os.urandom(8))

    def handshake(self, wait: float = 0.5, attempts: int = 19) -> "RawSession":
        """A new session (raises Refused when the receiver answers with a CLOSE, TimeoutError
        when it does not answer ``attempts`` INITIALs within ``wait`` seconds each)."""
        scid = self.rng.getrandbits(64)
        token = b""
        for attempt in range(1, attempts + 1):
            self.sock.send(padded_initial(self.rng.getrandbits(64), attempt, scid, token))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    pkt = P.parse(self.sock.recv(65536))
                except socket.timeout:
                    break
                except Exception:
                    continue
                if pkt.dcid != scid:
                    continue
                if pkt.ptype == P.RETRY:
                    token = P.parse_initial(pkt.payload)[1]
                    break
                if pkt.ptype == P.INITIAL:
                    session = RawSession(self, scid, P.parse_initial(pkt.payload)[0])
                    close = session.wait_close(0.05)  # a refusal follows its INITIAL at once
                    if close is not None:
                        raise Refused(close)
                    return session
        raise TimeoutError("no answer to INITIAL")

    def close(self) -> None:
        self.sock.close()


class RawSession:
    def __init__(self, peer: RawPeer, scid: int, rcid: int) -> None:
        self.peer = peer
        self.scid = scid
        self.rcid = rcid
        self.pn = 0
        self.stream_off = 0
        self.acked: set[int] = set()
        self.closed_by: P.CloseFrame | None = None  # the receiver's CLOSE, once seen

    def send(self, payload: bytes) -> int:
        """One DATA packet with ``payload`` (frames); returns its packet number."""
        pn = self.pn
        self.pn += 1
        self.peer.sock.send(P.build(P.DATA, self.rcid, pn, payload))
        return pn

    def stream(self, data: bytes) -> None:
        for i in range(0, len(data), 1200):
            self.send(P.encode_stream(self.stream_off, data[i:i + 1200]))
            self.stream_off += len(data[i:i + 1200])

    def hello(self) -> None:
        self.stream(hello_bytes())

    def chunk(self, fid: int, index: int, clen: int, off: int, data: bytes, csum: int = 0) -> int:
        return self.send(P.CHUNK_HEADER.pack(P.F_CHUNK, fid, index, clen, off, csum, len(data)) + data)

    def close(self) -> None:
        self.send(P.encode_close(0, "bye"))

    def poll(self, timeout: float) -> list:
        """Frames of the DATA packets for this session that arrive within ``timeout``."""
        frames = []
        deadline = time.monotonic() + timeout
        sock = self.peer.sock
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return frames
            sock.settimeout(left)
            try:
                pkt = P.parse(sock.recv(65536))
            except (socket.timeout, BlockingIOError):
                return frames
            except Exception:
                continue
            if pkt.ptype != P.DATA or pkt.dcid != self.scid:
                continue
            try:
                got = P.parse_frames(pkt.payload)
            except Exception:
                continue
            for f in got:
                if isinstance(f, P.AckFrame):
                    self.acked.update(f.acked.values())
            frames.extend(got)
            for f in got:
                if isinstance(f, P.CloseFrame):
                    self.closed_by = f
                    return frames

    def wait_close(self, timeout: float) -> P.CloseFrame | None:
        for f in self.poll(timeout):
            if isinstance(f, P.CloseFrame):
                return f
        return None

    def wait_acked(self, pn: int, timeout: float = 5.0, or_closed: bool = False) -> bool:
        """Until the receiver acknowledges packet ``pn`` (True) or ``timeout`` passes (False);
        ``or_closed``: a CLOSE from the receiver also ends the wait (True)."""
        deadline = time.monotonic() + timeout
        while pn not in self.acked and time.monotonic() < deadline:
            if or_closed and self.closed_by is not None:
                return True
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        return pn in self.acked
