"""A seeded, deterministic UDP impairment relay: rehearse a bad link on loopback.

``LinkEmulator`` decides the fate of each datagram for one direction -- drop,
duplicate, reorder, corrupt, delay, rate-limit with a drop-tail queue, or a
blackout window of total loss -- from a seeded RNG, with counters of what it
did.  ``Relay`` is the asyncio driver: it listens on one port, forwards each
client's datagrams to the target from a socket of their own, and applies a
forward and a reverse emulator.  ``ftx impair`` is its command line (``ftx relay``, its first name, is a hidden alias).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import socket
import time
from dataclasses import dataclass, field

from .core.udp.packets import segments


@dataclass
class Impairment:
    loss: float = 0.0  # probability a datagram is dropped
    duplicate: float = 0.0  # probability it is sent twice
    reorder: float = 0.0  # probability it is held back ``reorder_delay`` seconds
    reorder_delay: float = 0.005
    corrupt: float = 0.0  # probability one random byte is flipped
    delay: float = 0.0  # one-way delay, seconds
    jitter: float = 0.0  # uniform extra delay in [0, jitter)
    rate: float = 0.0  # bottleneck, bytes per second (0 = none)
    queue: float = 0.05  # bottleneck queue, seconds of data at ``rate``; beyond it: drop-tail
    blackouts: list[tuple[float, float]] = field(default_factory=list)  # (start, end) s since start
    replay: float = 0.0  # probability an earlier datagram (of the last 1000) is sent again, late
    rebind: list[float] = field(default_factory=list)  # forward only: new source port at these times
    # largest datagram (UDP payload, bytes) that gets through: by default a 1500-byte IPv4 path, the
    # internet's usual MTU (loopback itself carries 64 KiB, which no WAN path does); 0 = any size
    mtu: int = 1472

    @classmethod
    def parse(cls, spec: str) -> "Impairment":
        """``loss=0.1,dup=0.01,reorder=0.05,corrupt=0.001,delay=15ms,jitter=1ms,rate=200Mbit,queue=50ms,
        blackout=2-4`` (several blackouts: ``blackout=2-4;10-11``)."""
        imp = cls()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key in _SCALARS:
                attr, convert = _SCALARS[key]
                setattr(imp, attr, convert(value))
            elif key == "blackout":
                for window in value.split(";"):
                    a, _, b = window.partition("-")
                    imp.blackouts.append((float(a), float(b)))
            elif key == "rebind":
                imp.rebind.extend(float(t) for t in value.split(";"))
            else:
                raise ValueError(f"unknown impairment {key!r}")
        for name in ("delay", "jitter", "rate", "queue", "reorder_delay", "mtu"):
            if getattr(imp, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if any(b <= a or a < 0 for a, b in imp.blackouts) or any(t < 0 for t in imp.rebind):
            raise ValueError("blackout windows must be START-END with 0 <= START < END")
        return imp


def _prob(text: str) -> float:
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"probability {text} out of range")
    return value


def _seconds(text: str) -> float:
    text = text.strip().lower()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


def _rate(text: str) -> float:
    """Bytes per second, as ``ftx send --max-rate`` reads it (ftx/units.py): 20M, 20MB, 200Mbit."""
    from .units import parse_rate

    return float(parse_rate(text))


_SCALARS = {  # spec key -> (Impairment field, parser)
    "loss": ("loss", _prob),
    "dup": ("duplicate", _prob),
    "duplicate": ("duplicate", _prob),
    "reorder": ("reorder", _prob),
    "reorder_delay": ("reorder_delay", _seconds),
    "corrupt": ("corrupt", _prob),
    "delay": ("delay", _seconds),
    "jitter": ("jitter", _seconds),
    "rate": ("rate", _rate),
    "queue": ("queue", _seconds),
    "replay": ("replay", _prob),
    "mtu": ("mtu", int),
}


class LinkEmulator:
    """One direction of an impaired link, sans I/O: datagram in, (time, datagram) out."""

    def __init__(self, imp: Impairment, seed: int, start: float) -> None:
        self.imp = imp
        self.rng = random.Random(seed)
        self.start = start
        self._free_at = start  # when the bottleneck is next idle
        self._history: list[bytes] = []  # recent datagrams, for replays
        self._replay_rng = random.Random(seed ^ 0x5EED)  # own stream: replay on/off shifts nothing else
        self.stats = {"in": 0, "out": 0, "dropped": 0, "blackout_dropped": 0, "queue_dropped": 0,
                      "duplicated": 0, "reordered": 0, "corrupted": 0, "replayed": 0, "too_big": 0, "bytes_in": 0,
                      "bytes_out": 0}

    def process(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        imp, rng, st = self.imp, self.rng, self.stats
        st["in"] += 1
        st["bytes_in"] += len(data)
        # draw every random number every time, so one setting does not shift the others' sequence
        r_loss, r_dup, r_reo, r_cor, r_jit, r_pos = (rng.random() for _ in range(6))
        t = now - self.start
        if any(a <= t < b for a, b in imp.blackouts):
            st["blackout_dropped"] += 1
            return []
        if r_loss < imp.loss:
            st["dropped"] += 1
            return []
        if imp.mtu and len(data) > imp.mtu:
            st["too_big"] += 1
            return []
        if r_cor < imp.corrupt and data:
            buf = bytearray(data)
            pos = int(r_pos * len(buf))
            buf[pos] ^= 1 << (int(r_jit * 8) % 8) or 1
            data = bytes(buf)
            st["corrupted"] += 1
        copies = 2 if r_dup < imp.duplicate else 1
        if copies == 2:
            st["duplicated"] += 1
        out = []
        if imp.replay:
            if self._history and self._replay_rng.random() < imp.replay:
                old = self._history[int(self._replay_rng.random() * len(self._history))]
                out.append((now + imp.delay + 0.05, old))  # a stale copy, 50 ms late
                st["replayed"] += 1
                st["out"] += 1
                st["bytes_out"] += len(old)
            self._history.append(data)
            if len(self._history) > 1000:
                del self._history[:100]
        for i in range(copies):
            depart = now
            if imp.rate:
                queued = max(0.0, self._free_at - now)
                if queued > imp.queue:
                    st["queue_dropped"] += 1
                    continue
                self._free_at = max(self._free_at, now) + len(data) / imp.rate
                depart = self._free_at
            when = depart + imp.delay + r_jit * imp.jitter + i * 0.0001
            if r_reo < imp.reorder:
                when += imp.reorder_delay
                st["reordered"] += 1
            out.append((when, data))
            st["out"] += 1
            st["bytes_out"] += len(data)
        return out


class Relay:
    """Listens on ``listen``; each client gets its own upstream socket to ``target``.

    Sockets are read in batches with large buffers, and datagrams wait in one
    heap for their release time, so the relay itself drops nothing it could carry.
    """

    def __init__(self, target: tuple[str, int], forward: Impairment, reverse: Impairment, seed: int = 1) -> None:
        self.target = target
        self.forward_imp, self.reverse_imp = forward, reverse
        self.seed = seed
        self._loop = asyncio.get_running_loop()
        now = time.monotonic()
        self.forward = LinkEmulator(forward, seed, now)
        self.reverse = LinkEmulator(reverse, seed + 1000003, now)
        self._front = None
        self._uplinks: dict = {}
        self._heap: list = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._rebinds = 0
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        from .transport.udp import DatagramSocket

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
        self._front = DatagramSocket(sock, self._from_client)
        self.port = sock.getsockname()[1]
        return self.port

    def _uplink(self, client):
        from .transport.udp import DatagramSocket

        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.connect(self.target)
        return DatagramSocket(sock, lambda data, seg, _addr: self._from_server(data, seg, client))

    def _from_client(self, data, seg: int, addr) -> None:
        now = time.monotonic()
        due = [t for t in self.forward_imp.rebind if now - self.forward.start >= t]
        if len(due) > self._rebinds:  # NAT rebinding: every client's traffic leaves from a new port
            self._rebinds = len(due)
            for client, old in list(self._uplinks.items()):
                self._uplinks[client] = self._uplink(client)
                self._loop.call_later(0.2, old.close)  # late replies to the old port are lost
            self.forward.stats["rebinds"] = self._rebinds
        up = self._uplinks.get(addr)
        if up is None:
            up = self._uplinks[addr] = self._uplink(addr)
        for datagram in segments(data, seg):
            for when, d in self.forward.process(bytes(datagram), now):
                self._schedule(when, d, up, None)

    def _from_server(self, data, seg: int, client) -> None:
        now = time.monotonic()
        for datagram in segments(data, seg):
            for when, d in self.reverse.process(bytes(datagram), now):
                self._schedule(when, d, self._front, client)

    def _schedule(self, when: float, data: bytes, dsock, addr) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, data, dsock, addr))
        if self._timer is None or when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = when
            self._timer = self._loop.call_at(self._loop.time() + (when - time.monotonic()), self._release)

    def _release(self) -> None:
        self._timer = None
        now = time.monotonic()
        heap = self._heap
        out: dict = {}
        while heap and heap[0][0] <= now + 0.0002:
            _, _, data, dsock, addr = heapq.heappop(heap)
            out.setdefault((id(dsock), addr), (dsock, addr, []))[2].append(data)
        for dsock, addr, datagrams in out.values():
            if not dsock.closed:
                dsock.send_datagrams(datagrams, addr)
        if heap:
            self._timer_when = heap[0][0]
            self._timer = self._loop.call_at(self._loop.time() + (heap[0][0] - now), self._release)

    @property
    def stats(self) -> dict:
        return {"forward": dict(self.forward.stats), "reverse": dict(self.reverse.stats)}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._front is not None:
            self._front.close()
        for up in self._uplinks.values():
            up.close()
