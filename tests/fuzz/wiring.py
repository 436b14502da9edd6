"""Both sides of a session wired in memory, over TCP-like bytes or UDP datagrams.

Used to record real traffic (the fuzzers' seed corpora) and by the state-machine
tests.  Everything is deterministic: fixed connection IDs, secret, address and clock.

``UdpEnd`` stacks a connection on a ``UdpSession`` the way ``ftx.transport.udp.UdpLink``
does: chunks the session reassembled go to ``receive_chunk``, control-stream bytes to
the frame decoder, and the connection's output back into the stream.
"""

from __future__ import annotations

import itertools

from ftx.core.checksum import chunk_checksum
from ftx.core.config import Config
from ftx.core.manifest import MIN_CHUNK_SIZE, FileEntry, Kind
from ftx.core.receiver import ReceiverConnection
from ftx.core.sender import SenderConnection
from ftx.core.udp.endpoint import Dialer, Listener, padded_initial
from ftx.core.udp.session import UdpConfig, UdpSession
from ftx.errors import FtxError, LocalProtocolError

from .drivers import ReceiverDriver, SenderDriver

CS = MIN_CHUNK_SIZE  # 4 KiB chunks keep sessions small
MAX_PAYLOAD = 128 * 1024
SECRET = b"fuzz" * 8
SENDER_CID = 0x5E5E5E5E5E5E5E5E
RECEIVER_CID = 0x7E7E7E7E7E7E7E7E
INITIAL_DCID = 0x1111111111111111
ADDR = ("198.51.100.7", 40000)
OTHER_ADDR = ("203.0.113.9", 50000)
T0 = 1000.0


def config(**kw) -> Config:
    kw.setdefault("chunk_size", CS)
    kw.setdefault("max_payload", MAX_PAYLOAD)
    return Config(**kw)


def udp_config(**kw) -> UdpConfig:
    kw.setdefault("flow_window", 256 * 1024)
    return UdpConfig(**kw)


def sample_files() -> list[tuple[FileEntry, bytes, bool]]:
    """(entry, content, as SMALL_FILE) of a small but varied transfer."""
    big = bytes((i * 7 + 3) % 251 for i in range(2 * CS + 100))
    small = b"hello, fuzz\n" * 9
    return [
        (FileEntry(b"dir", Kind.DIR, mode=0o755), b"", False),
        (FileEntry(b"dir/big.bin", size=len(big), chunk_size=CS, mtime_ns=1), big, False),
        (FileEntry(b"dir/small.txt", size=len(small), chunk_size=CS), small, True),
        (FileEntry(b"empty", size=0, chunk_size=CS), b"", False),
        (FileEntry(b"dir/link", Kind.SYMLINK, target=b"small.txt"), b"", False),
        (FileEntry(b"one.bin", size=CS, chunk_size=CS), bytes(range(256)) * (CS // 256), False),
    ]


def offer_all(sdrv: SenderDriver, files=None) -> None:
    if sdrv.conn.quick_check:  # a directory check ahead of the items (CHECK_DIR / DIR_STATE in the seeds)
        sdrv.conn.check_dir(b"dir", 2, bytes(16))
    for entry, data, small in files if files is not None else sample_files():
        sdrv.offer(entry, data, small)


# -- TCP -------------------------------------------------------------------------------------
class TcpPair:
    """A sender and a receiver connection; ``pump`` moves all bytes both ways.

    ``log`` records (direction, bytes) of everything moved: 's' sender -> receiver."""

    def __init__(self, rpolicy: int = 0, spolicy: int = 0, held_content=None, **cfg) -> None:
        self.s = SenderConnection(config(**cfg))
        self.r = ReceiverConnection(config(**cfg))
        self.sd = SenderDriver(self.s, spolicy)
        self.rd = ReceiverDriver(self.r, rpolicy, held_content)
        self.log: list[tuple[str, bytes]] = []

    def move(self, src, dst, drv, tag: str) -> bool:
        blob = b"".join(bytes(b) for b in src.data_to_send())
        if not blob:
            return False
        self.log.append((tag, blob))
        dst.receive_data(blob)
        drv.drain()
        return True

    def pump(self, limit: int = 1000) -> None:
        for _ in range(limit):
            moved = self.move(self.s, self.r, self.rd, "s")
            moved = self.move(self.r, self.s, self.sd, "r") or moved
            if not moved:
                return
        raise AssertionError("pump did not settle")


# -- UDP -------------------------------------------------------------------------------------
class UdpEnd:
    """A connection and its driver over a UdpSession, as UdpLink.feed runs them."""

    def __init__(self, conn, drv) -> None:
        self.conn = conn
        self.drv = drv
        self.session: UdpSession | None = None
        self.error: FtxError | None = None
        self._lent: list = []

    def attach(self, session: UdpSession) -> None:
        self.session = session
        self.flush()

    def flush(self) -> None:
        if self.session is not None and self.conn.pending_output:
            for b in self.conn.data_to_send():
                self.session.stream_write(b)

    def step(self) -> None:
        """Hand what the session holds to the connection; raise FtxError as a driver sees it."""
        s = self.session
        if s is None or self.error is not None or self.conn.closed:
            # as ftx.receiving/ftx.sending: the serve loop ends once the DONE exchange is
            # over (chunks of a file failed early may still arrive; nobody reads them)
            return
        for buf in self._lent:
            s.recycle(buf)
        self._lent.clear()
        try:
            chunks = s.take_chunks()
            self._lent.extend(c[3] for c in chunks)
            # exactly as UdpLink.feed, then ftx.recv_pipeline._serve_loop: chunks, then all the
            # stream bytes, and only then the events
            for fid, index, checksum, data in chunks:
                self.conn.receive_chunk(fid, index, checksum, data)
            while s.stream_readable:
                buf = self.conn.get_buffer()
                self.conn.buffer_updated(s.stream_read_into(buf))
            self.drv.drain()
            if isinstance(self.drv, SenderDriver):
                self.drv.poll()
        except LocalProtocolError:
            raise
        except FtxError as exc:
            self.error = exc
            self.flush()  # the ERROR frame
            s.close(int(exc.code), str(exc)[:200])
            raise
        self.flush()


class UdpPair:
    """Dialer (sender) and Listener (receiver) with their connections; the test moves
    the datagrams: ``to_receiver`` / ``to_sender`` hold what was sent and not yet delivered."""

    def __init__(self, rpolicy: int = 0, spolicy: int = 0, ucfg: UdpConfig | None = None, **cfg) -> None:
        self.now = T0
        self.ucfg = ucfg or udp_config()
        cids = itertools.count(RECEIVER_CID)
        self.listener = Listener(SECRET, self.ucfg, lambda: next(cids))
        self.dialer = Dialer(self.ucfg, SENDER_CID, INITIAL_DCID, self.now)
        s = SenderConnection(config(**cfg))
        self._cfg, self._rpolicy = cfg, rpolicy
        r = ReceiverConnection(config(**cfg))
        self.sender = UdpEnd(s, SenderDriver(s, spolicy, self._send_chunk, self._file_sent, self._control_delivered))
        self.receiver = UdpEnd(r, ReceiverDriver(r, rpolicy))
        self.orphans: list[UdpEnd] = []  # earlier receiver sessions (see deliver_to_receiver)
        self.to_receiver: list[tuple[bytes, tuple]] = []
        self.to_sender: list[bytes] = []
        self.log: list[tuple[str, float, bytes]] = []  # ('r' to receiver / 's' to sender, time, datagram)

    def _send_chunk(self, fid: int, index: int, data: bytes) -> None:
        checksum = chunk_checksum(data)
        self.sender.conn.send_chunk(fid, index, data, checksum, framed=False)
        self.sender.session.send_chunk(fid, index, checksum, data)

    def _file_sent(self, fid: int) -> bool:
        return self.sender.session.file_acked(fid)

    def _control_delivered(self) -> bool:
        return self.sender.session.stream_all_acked

    @property
    def sessions(self):
        return [s for s in (self.dialer.session, self.receiver.session) if s is not None]

    def deliver_to_receiver(self, datagram: bytes, addr=ADDR) -> None:
        self.log.append(("r", self.now, datagram))
        session, new, replies = self.listener.receive_datagram(datagram, addr, self.now)
        if new:
            if self.receiver.session is not None:
                # A second session for this sender (its address changed between its INITIALs,
                # and the reply to the first was lost): a new connection, as UdpServer makes;
                # the old one is left to time out.
                self.orphans.append(self.receiver)
                r = ReceiverConnection(config(**self._cfg))
                self.receiver = UdpEnd(r, ReceiverDriver(r, self.receiver.drv.policy))
            self.receiver.attach(session)
        self.to_sender.extend(replies)

    def deliver_to_sender(self, datagram: bytes) -> None:
        self.log.append(("s", self.now, datagram))
        had = self.dialer.session
        session = self.dialer.receive_datagram(datagram, self.now)
        if session is not None and had is None:
            self.sender.attach(session)

    def transmit(self) -> None:
        """Timers, applications, then whatever both sides have to send."""
        for end in (self.sender, self.receiver):
            s = end.session
            if s is not None:
                t = s.next_timer()
                if t is not None and self.now >= t:
                    s.handle_timer(self.now)
                end.step()
        self.to_receiver += [(d, ADDR) for d in self.dialer.datagrams_to_send(self.now)]
        if self.dialer.session is not None:
            self.to_receiver += [(d, ADDR) for d in self.dialer.session.datagrams_to_send(self.now)]
        if self.receiver.session is not None:
            self.to_sender += self.receiver.session.datagrams_to_send(self.now)

    def next_time(self) -> float:
        times = [t for t in (s.next_timer() for s in self.sessions) if t is not None]
        if self.dialer.session is None:
            times.append(self.dialer.next_timer())
        return max(min(times), self.now + 1e-4) if times else self.now + 0.001

    def run_lossless(self, until, max_steps: int = 20000) -> None:
        """Deliver everything in order, advancing the clock, until ``until(self)``."""
        for _ in range(max_steps):
            self.transmit()
            if until(self):
                return
            if not self.to_receiver and not self.to_sender:
                self.now = self.next_time()
                continue
            self.now += 0.0005
            out, self.to_receiver = self.to_receiver, []
            for d, addr in out:
                self.deliver_to_receiver(d, addr)
            back, self.to_sender = self.to_sender, []
            for d in back:
                self.deliver_to_sender(d)
        raise AssertionError("UDP pair did not settle")


def initial(token: bytes = b"", pn: int = 1) -> bytes:
    return padded_initial(INITIAL_DCID, pn, SENDER_CID, token)
