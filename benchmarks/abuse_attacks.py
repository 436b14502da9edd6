"""The attacks of bench_abuse.py (issue #11, "Resource bounds"), one class each.

An attack is used as: ``start()`` (put it in place, within a deadline; may leave
threads running), the legitimate sender runs, ``hold_until(t)`` (attacks with a
minimum duration keep going), ``finish()`` (stop, close every socket, return notes).
Attackers use 127.0.0.2 and up as source addresses, except where the attack is
"from the same host" as the legitimate sender (127.0.0.1).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

from abuse_clients import (
    HELLO,
    Pacer,
    TcpConns,
    UdpSessions,
    attacker_hosts,
    describe_reply,
    mutate,
    offer_frame,
    ping_frame,
    random_frames,
)
from ftx.core.frames import FrameType
from ftx.core.udp import packets as P
from ftx.core.udp.endpoint import padded_initial

MiB = 1 << 20


@dataclass
class Context:
    port: int
    dir: str
    args: object  # bench_abuse's parsed options
    legit_name: str

    def n(self, full: int, quick: int) -> int:
        return quick if self.args.quick else full

    @property
    def hosts(self) -> list[str]:
        return attacker_hosts(self.args.attacker_hosts)


class Attack:
    name = ""
    needs_private_fs = False  # it may fill the filesystem --dir is on
    min_seconds = 0.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.notes: list[str] = []
        self.tcp: TcpConns | None = None
        self.udp: UdpSessions | None = None
        self._finished = False

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def report(self) -> list[str]:
        return []

    def before_send(self, label: str) -> None:
        """The legitimate sender is about to send (``label``: tcp or udp)."""

    def background(self, fn, *args) -> None:
        def guarded():
            try:
                fn(*args)
            except Exception as exc:  # a broken attack thread is reported, not fatal
                self.notes.append(f"attack thread: {type(exc).__name__}: {exc}"[:120])

        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        self.threads.append(t)

    def hold_until(self, t: float) -> None:
        while time.monotonic() < t:
            time.sleep(min(0.1, max(0.0, t - time.monotonic())))

    def finish(self) -> list[str]:
        if self._finished:
            return []
        self._finished = True
        self.stopping.set()
        for t in self.threads:
            t.join(10)
        notes = self.notes
        try:
            notes = self.report() + notes
        except Exception as exc:  # counting what happened must not lose the row
            notes.append(f"attack report: {type(exc).__name__}: {exc}"[:120])
        finally:
            if self.tcp is not None:
                self.tcp.close()
            if self.udp is not None:
                self.udp.close()
        return notes

    # -- shared pieces ------------------------------------------------------------
    def deadline(self, full: float, quick: float) -> float:
        return time.monotonic() + self.ctx.n(full, quick)

    def wait(self, predicate, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def tcp_closed_note(self, what: str) -> str:
        note = f"receiver closed {self.tcp.check_closed()} of {len(self.tcp.socks)} {what}"
        return note + (f" (first ERROR: {self.tcp.first_error[:80]})" if self.tcp.first_error else "")

    def udp_keepalive(self, interval: float = 1.0) -> None:
        """UDP PING packets on every attacker session, so none of them idles out."""
        while not self.stopping.wait(interval):
            for sess in list(self.udp.sessions):
                self.udp.send(sess, bytes([P.F_PING]))
            self.udp.drain()


# == TCP ===========================================================================
class HelloIdle(Attack):
    """200 TCP connections (--quick: 20) each send one HELLO, then idle (issue item 7)."""

    name = "hello-idle"

    def start(self) -> None:
        self.tcp = TcpConns(self.ctx.port)
        n = self.ctx.n(200, 20)
        for idx in self.tcp.connect(n, self.ctx.hosts, self.deadline(30, 10)):
            self.tcp.send(idx, HELLO)
        self.n = n

    def report(self) -> list[str]:
        return [f"{len(self.tcp.socks)} of {self.n} connected ({self.tcp.failed} failed); "
                + self.tcp_closed_note("before they left")]


class Offers(Attack):
    """One TCP connection sends 100 000 OFFERs (--quick: 2 000) of 1-byte files and never any data (item 8)."""

    name = "offers"

    def start(self) -> None:
        self.n = n = self.ctx.n(100_000, 2_000)
        self.tcp = TcpConns(self.ctx.port, keep=2)
        (idx,) = self.tcp.connect(1, self.ctx.hosts, self.deadline(10, 10)) or (None,)
        if idx is None:
            raise RuntimeError("could not connect")
        deadline = self.deadline(90, 20)
        t0 = time.monotonic()
        self.sent = 0
        if not self.tcp.send(idx, HELLO):
            raise RuntimeError("HELLO not sent")
        batch = 500
        while self.sent < n and time.monotonic() < deadline:
            k = min(batch, n - self.sent)
            data = b"".join(offer_frame(i, b"offer-%06d.bin" % i, 1) for i in range(self.sent, self.sent + k))
            if not self.tcp.send(idx, data, timeout=max(0.1, deadline - time.monotonic())):
                break
            self.sent += k
        self.send_s = time.monotonic() - t0
        self.wait(lambda: self.tcp.replies(idx) >= self.sent or idx in self.tcp.closed_by_peer, deadline)
        self.idx = idx

    def report(self) -> list[str]:
        counts = self.tcp.frame_counts[self.idx]
        return [f"sent {self.sent} of {self.n} OFFERs in {self.send_s:.1f} s; answers: "
                f"{counts.get(FrameType.DECISION, 0)} DECISION, {counts.get(FrameType.RESULT, 0)} RESULT, "
                f"{counts.get(FrameType.ERROR, 0)} ERROR; " + self.tcp_closed_note("connection(s)")]


class Claim10T(Attack):
    """One OFFER claiming 10 TiB, connection kept open (item 9)."""

    name = "claim-10t"
    needs_private_fs = True

    def start(self) -> None:
        self.tcp = TcpConns(self.ctx.port)
        (idx,) = self.tcp.connect(1, self.ctx.hosts, self.deadline(10, 10)) or (None,)
        if idx is None:
            raise RuntimeError("could not connect")
        self.tcp.send(idx, HELLO + offer_frame(0, b"huge.bin", 10 << 40))
        self.wait(lambda: self.tcp.replies(idx) >= 1 or idx in self.tcp.closed_by_peer, self.deadline(60, 20))
        self.idx = idx

    def report(self) -> list[str]:
        return [f"10 TiB OFFER: {describe_reply(self.tcp.frames[self.idx])}"]


class Claims40M(Attack):
    """16 connections (--quick: 2) each OFFER a 40 MiB file, get the answer, then disconnect (item 9)."""

    name = "claims-40m"

    def start(self) -> None:
        self.tcp = TcpConns(self.ctx.port)
        n = self.ctx.n(16, 2)
        idxs = self.tcp.connect(n, self.ctx.hosts, self.deadline(20, 10))
        for i in idxs:
            self.tcp.send(i, HELLO + offer_frame(0, b"claim-%02d.bin" % i, 40 * MiB))
        self.wait(lambda: all(self.tcp.replies(i) >= 1 or i in self.tcp.closed_by_peer for i in idxs),
                  self.deadline(60, 20))
        self.answers = [describe_reply(self.tcp.frames[i]) for i in idxs]
        self.tcp.close()  # disconnect: what stays behind is the finding
        self.tcp = None

    def report(self) -> list[str]:
        accepted = sum(a.startswith("accepted") for a in self.answers)
        return [f"{len(self.answers)} claims of 40 MiB, {accepted} accepted, then all disconnected"]


class PingOnly(Attack):
    """50 TCP connections and 50 UDP sessions (--quick: 5 + 5) that only PING, once a second (item 12)."""

    name = "ping-only"

    def start(self) -> None:
        n = self.ctx.n(50, 5)
        self.tcp = TcpConns(self.ctx.port)
        idxs = self.tcp.connect(n, self.ctx.hosts, self.deadline(20, 10))
        for i in idxs:
            self.tcp.send(i, HELLO)
        self.udp = UdpSessions(self.ctx.port)
        deadline = self.deadline(30, 10)
        for i in range(n):
            self.udp.handshake_many(self.udp.socket(self.ctx.hosts[i % len(self.ctx.hosts)]), 1, deadline)
        self.background(self._ping, idxs)

    def _ping(self, idxs) -> None:
        k = 0
        while not self.stopping.wait(1.0):
            k += 1
            for i in idxs:
                if i not in self.tcp.closed_by_peer:
                    self.tcp.send(i, ping_frame(k), timeout=0.5)
            for sess in list(self.udp.sessions):
                self.udp.send(sess, bytes([P.F_PING]))
            self.udp.drain()

    def report(self) -> list[str]:
        return [f"{len(self.udp.sessions)} UDP sessions; " + self.tcp_closed_note("TCP connections")]


class SlowHandshake(Attack):
    """100 TCP connections (--quick: 10) dribble their HELLO, one byte a second (item 12)."""

    name = "slow-handshake"

    def start(self) -> None:
        self.tcp = TcpConns(self.ctx.port)
        self.idxs = self.tcp.connect(self.ctx.n(100, 10), self.ctx.hosts, self.deadline(20, 10))
        self.background(self._dribble)

    def _dribble(self) -> None:
        k = 0
        while k < len(HELLO) and not self.stopping.wait(1.0):
            for i in self.idxs:
                if i not in self.tcp.closed_by_peer:
                    self.tcp.send(i, HELLO[k : k + 1], timeout=0.2)
            k += 1

    def report(self) -> list[str]:
        return [self.tcp_closed_note("dribbling connections")]


class FramesOneHost(Attack):
    """16 TCP connections from one host (127.0.0.2) each send all but 16 bytes of a 4 MiB DATA
    frame, then hold it: one host's share of the frame buffers (review of issue #11)."""

    name = "frames-one-host"

    def start(self) -> None:
        from ftx.core.frames import encode_data_header

        self.tcp = TcpConns(self.ctx.port)
        self.idxs = self.tcp.connect(16, ["127.0.0.2"], self.deadline(20, 10))
        body = os.urandom(4 * MiB - 16)
        for i in self.idxs:
            self.tcp.send(i, HELLO + encode_data_header(1, 0, 0, 4 * MiB) + body, timeout=5)

    def report(self) -> list[str]:
        return [self.tcp_closed_note("connections holding most of a 4 MiB frame")]


class SamePath(Attack):
    """A second sender from the same host offers the legitimate sender's destination path
    while it is being received, once per legitimate send (item 13)."""

    name = "same-path"

    def start(self) -> None:
        self.tcp = TcpConns(self.ctx.port)
        self.contests: list[tuple[str, int | None]] = []  # (legit send, attacker connection)
        self.wire = os.fsencode(self.ctx.legit_name)
        self.armed: tuple | None = None  # the partial as it was before this send, or None: done
        self.background(self._watch)

    def _state(self):
        from ftx.journal import partial_paths

        try:
            st = os.stat(partial_paths(self.ctx.dir, self.wire)[1] or "")
            return st.st_ino, st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def before_send(self, label: str) -> None:
        self.label = label
        self.armed = (self._state(),)  # contest once the partial differs from this (the send writes it)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            armed = self.armed
            state = self._state()
            if armed is None or state is None or state == armed[0]:
                time.sleep(0.001)
                continue
            self.armed = None
            label = self.label
            (idx,) = self.tcp.connect(1, ["127.0.0.1"], time.monotonic() + 5) or (None,)
            if idx is None:
                self.contests.append((label, None))
                continue
            size = self.ctx.args.legit_size + 1  # a different file for the same path
            self.tcp.send(idx, HELLO + offer_frame(0, self.ctx.legit_name.encode(), size, mtime_ns=12345))
            self.contests.append((label, idx))  # its answer is read when the attack ends

    def report(self) -> list[str]:
        return [f"2nd sender's OFFER of the same path during the {label} send: "
                + (describe_reply(self.tcp.frames[idx]) if idx is not None else "could not connect")
                for label, idx in self.contests] or ["no partial seen to contest"]


# == UDP ===========================================================================
class UdpChunk16M(Attack):
    """20 UDP sessions (--quick: 2) each send 2 tiny CHUNK datagrams announcing 16 MiB chunks (item 11)."""

    name = "udp-chunk-16m"

    def start(self) -> None:
        self.udp = UdpSessions(self.ctx.port)
        n = self.ctx.n(20, 2)
        deadline = self.deadline(30, 10)
        for i in range(n):
            self.udp.handshake_many(self.udp.socket(self.ctx.hosts[i % len(self.ctx.hosts)]), 1, deadline)
        for sess in self.udp.sessions:
            for index in (0, 1):
                data = os.urandom(16)
                self.udp.send(sess, P.CHUNK_HEADER.pack(P.F_CHUNK, 0, index, 16 * MiB, 0, 0, len(data)) + data)
        self.n = n
        self.background(self.udp_keepalive)

    def report(self) -> list[str]:
        return [f"{len(self.udp.sessions)} of {self.n} sessions set up, 2 CHUNK datagrams each"]


class UdpStreamOoo(Attack):
    """20 000 datagrams (--quick: 200) of 230 zero-length STREAM frames each, at distinct offsets, then in-order
    control bytes one per datagram (each must be merged past every stored offset) (item 11)."""

    name = "udp-stream-ooo"

    def start(self) -> None:
        self.udp = UdpSessions(self.ctx.port)
        if not self.udp.handshake_many(self.udp.socket(self.ctx.hosts[0]), 1, self.deadline(20, 10)):
            raise RuntimeError("no handshake")
        sess = self.udp.sessions[0]
        n = self.ctx.n(20_000, 200)
        pacer = Pacer(self.ctx.args.flood_rate)
        off = 1 << 21  # far beyond the stream's end; up to 2^28 every offset is a 4-byte varint
        self.frames = 0
        deadline = self.deadline(60, 15)
        for _ in range(n):
            self.udp.send(sess, zero_length_streams(off, 230))  # 1380 bytes of frames
            off += 230
            self.frames += 230
            pacer.tick()
            if time.monotonic() > deadline:
                break
        self.udp.drain()
        self.dribbled = 0
        self.background(self._dribble, sess)

    def _dribble(self, sess) -> None:
        stream = bytearray()
        off = len(HELLO)
        k = 0
        while not self.stopping.wait(0.01):
            if not stream:
                k += 1
                stream += ping_frame(k)
            self.udp.send(sess, P.encode_stream(off, stream[:1]))
            del stream[:1]
            off += 1
            self.dribbled += 1
            if self.dribbled % 50 == 0:
                self.udp.drain()

    def report(self) -> list[str]:
        return [f"{self.frames} zero-length STREAM frames sent; then {self.dribbled} in-order bytes, one a datagram"]


def zero_length_streams(first: int, count: int) -> bytes:
    """STREAM frames of no data at offsets ``first`` .. ``first + count - 1`` (2^21 <= offsets < 2^28):
    P.encode_stream's bytes, built 20 times faster."""
    return b"".join(bytes((P.F_STREAM, (o & 0x7F) | 0x80, ((o >> 7) & 0x7F) | 0x80, ((o >> 14) & 0x7F) | 0x80,
                           o >> 21, 0)) for o in range(first, first + count))


class UdpHandshakes(Attack):
    """2 000 UDP handshakes (--quick: 100) from one socket, then silence (item 11)."""

    name = "udp-handshakes"

    def start(self) -> None:
        self.udp = UdpSessions(self.ctx.port)
        self.n = self.ctx.n(2000, 100)
        t0 = time.monotonic()
        self.done = self.udp.handshake_many(self.udp.socket(self.ctx.hosts[0]), self.n, self.deadline(60, 15),
                                            Pacer(self.ctx.args.flood_rate), hello=False)
        self.took = time.monotonic() - t0

    def report(self) -> list[str]:
        return [f"{self.done} of {self.n} handshakes completed in {self.took:.1f} s"]


class UdpMutate(Attack):
    """Mutated datagrams (--fuzz-seconds, default 10; issue: 35 s) at --flood-rate: hostile
    CHUNK/STREAM/ACK/MAX_DATA frames with flipped bytes, sealed with valid checksums, to 8
    live sessions (each replaced once the receiver CLOSEs it), plus mutated INITIALs and garbage (item 11)."""

    name = "udp-mutate"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.min_seconds = ctx.args.fuzz_seconds

    def start(self) -> None:
        self.udp = UdpSessions(self.ctx.port)
        self.socks = [self.udp.socket(h) for h in self.ctx.hosts[:4]]
        deadline = self.deadline(20, 10)
        for s in self.socks:
            self.udp.handshake_many(s, 1, deadline)
        self.sent = self.new_sessions = 0
        self.background(self._flood)

    def _flood(self) -> None:
        rng = random.Random(11)
        pacer = Pacer(self.ctx.args.flood_rate)
        live = self.udp.live()
        while not self.stopping.is_set():
            self.sent += 1
            pacer.tick()
            if self.sent % 100 == 0:  # keep 8 sessions alive: replace those the receiver closed
                self.udp.drain()
                live = self.udp.live()
                if len(live) < 8 and self.udp.handshake_many(rng.choice(self.socks), 1, time.monotonic() + 0.5):
                    self.new_sessions += 1
                    live = self.udp.live()
            r = rng.random()
            sock = rng.choice(self.socks)
            if r < 0.85 and live:
                sess = rng.choice(live)
                pn = sess[2] if rng.random() < 0.95 else rng.getrandbits(rng.choice([8, 32, 63]))
                sess[2] = max(sess[2], pn) + 1
                self.udp.send(sess, mutate(rng, random_frames(rng)), pn=pn)
                continue
            if r < 0.90:
                data = mutate(rng, padded_initial(rng.getrandbits(64), 1, rng.getrandbits(64), os.urandom(20)))
                if len(data) > P.OVERHEAD:  # sealed again, so the receiver parses it
                    data = P.build(data[0], rng.getrandbits(64), 1, data[P.HEADER_SIZE : -P.TRAILER_SIZE])
            elif r < 0.95:
                data = P.build(P.DATA, rng.getrandbits(64), rng.getrandbits(32), random_frames(rng))
            else:
                data = os.urandom(rng.randint(1, 1400))
            try:
                sock.sendto(data, self.udp.addr)
            except OSError:
                pass

    def report(self) -> list[str]:
        return [f"{self.sent} datagrams in {self.min_seconds:g}+ s; {self.new_sessions} sessions set up as the "
                f"receiver closed others ({len(self.udp.closed)} CLOSEs seen)"]


class UdpInitialFlood(Attack):
    """A flood of INITIALs from 127.0.0.2..254 (--quick: ..21) (--flood-seconds, --flood-rate), every RETRY
    answered, so each address validates and gets sessions (item 11)."""

    name = "udp-initial-flood"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.min_seconds = ctx.args.flood_seconds

    def start(self) -> None:
        self.udp = UdpSessions(self.ctx.port)
        self.socks = [self.udp.socket(h) for h in attacker_hosts(self.ctx.n(253, 20))]
        self.initials = self.retries = self.sessions = 0
        self.background(self._flood)

    def _flood(self) -> None:
        pacer = Pacer(self.ctx.args.flood_rate)
        while not self.stopping.is_set():
            for s in self.socks:
                if self.stopping.is_set():
                    break
                scid = int.from_bytes(os.urandom(8), "big")
                try:
                    s.sendto(padded_initial(scid, 1, scid, b""), self.udp.addr)
                except OSError:
                    pass
                self.initials += 1
                pacer.tick()
                for _ in range(8):
                    try:
                        data = s.recv(65536)
                    except OSError:
                        break
                    try:
                        pkt = P.parse(data)
                    except Exception:
                        continue
                    if pkt.ptype == P.RETRY:
                        self.retries += 1
                        _, token, _ = P.parse_initial(pkt.payload)
                        try:
                            s.sendto(padded_initial(pkt.dcid, 2, pkt.dcid, token), self.udp.addr)
                        except OSError:
                            pass
                        pacer.tick()
                    elif pkt.ptype == P.INITIAL:
                        self.sessions += 1

    def report(self) -> list[str]:
        return [f"{self.initials} INITIALs from {len(self.socks)} addresses; {self.retries} RETRYs answered; "
                f"{self.sessions} sessions granted"]


ATTACKS = [HelloIdle, Offers, Claim10T, Claims40M, UdpChunk16M, UdpStreamOoo, UdpHandshakes, UdpMutate,
           UdpInitialFlood, PingOnly, SlowHandshake, FramesOneHost, SamePath]
