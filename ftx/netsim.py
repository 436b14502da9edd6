"""A seeded, deterministic UDP impairment relay: rehearse a bad link on loopback.

``LinkEmulator`` decides the fate of each datagram for one direction -- drop,
duplicate, reorder, corrupt, delay, rate-limit with a drop-tail queue, or a
blackout window of total loss -- from a seeded RNG, with counters of what it
did.  ``Relay`` is the asyncio driver: it listens on one port, forwards each
client's datagrams to the target from a socket of their own, and applies a
forward and a reverse emulator.  ``ftx relay`` is its command line.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import dataclass, field


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

    @classmethod
    def parse(cls, spec: str) -> "Impairment":
        """``loss=0.1,dup=0.01,reorder=0.05,corrupt=0.001,delay=15ms,jitter=1ms,rate=200Mbit,queue=50ms,
        blackout=2-4`` (several blackouts: ``blackout=2-4;10-11``)."""
        imp = cls()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key == "loss":
                imp.loss = _prob(value)
            elif key in ("dup", "duplicate"):
                imp.duplicate = _prob(value)
            elif key == "reorder":
                imp.reorder = _prob(value)
            elif key == "reorder_delay":
                imp.reorder_delay = _seconds(value)
            elif key == "corrupt":
                imp.corrupt = _prob(value)
            elif key == "delay":
                imp.delay = _seconds(value)
            elif key == "jitter":
                imp.jitter = _seconds(value)
            elif key == "rate":
                imp.rate = _rate(value)
            elif key == "queue":
                imp.queue = _seconds(value)
            elif key == "blackout":
                for window in value.split(";"):
                    a, _, b = window.partition("-")
                    imp.blackouts.append((float(a), float(b)))
            else:
                raise ValueError(f"unknown impairment {key!r}")
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
    """Bytes per second; ``Mbit``/``Gbit``/``kbit`` suffixes are bits per second."""
    t = text.strip().lower()
    for suffix, mult in (("gbit", 1e9 / 8), ("mbit", 1e6 / 8), ("kbit", 1e3 / 8), ("bit", 1 / 8),
                         ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t)


class LinkEmulator:
    """One direction of an impaired link, sans I/O: datagram in, (time, datagram) out."""

    def __init__(self, imp: Impairment, seed: int, start: float) -> None:
        self.imp = imp
        self.rng = random.Random(seed)
        self.start = start
        self._free_at = start  # when the bottleneck is next idle
        self.stats = {"in": 0, "out": 0, "dropped": 0, "blackout_dropped": 0, "queue_dropped": 0,
                      "duplicated": 0, "reordered": 0, "corrupted": 0, "bytes_in": 0, "bytes_out": 0}

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


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.on_datagram(data, addr)


class Relay:
    """Listens on ``listen``; each client gets its own upstream socket to ``target``."""

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
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._front, _ = await self._loop.create_datagram_endpoint(
            lambda: _Side(self._from_client), local_addr=(host, port), family=family)
        self.port = self._front.get_extra_info("sockname")[1]
        return self.port

    def _from_client(self, data: bytes, addr) -> None:
        up = self._uplinks.get(addr)
        if up is None:
            up = self._uplinks[addr] = _PendingUplink()
            self._loop.create_task(self._open_uplink(addr, up))
        for when, d in self.forward.process(data, time.monotonic()):
            self._loop.call_at(self._at(when), up.send, d)

    async def _open_uplink(self, addr, up: "_PendingUplink") -> None:
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Side(lambda data, _a: self._from_server(data, addr)), remote_addr=self.target, family=family)
        up.attach(transport)

    def _from_server(self, data: bytes, client) -> None:
        for when, d in self.reverse.process(data, time.monotonic()):
            self._loop.call_at(self._at(when), self._to_client, d, client)

    def _to_client(self, data: bytes, client) -> None:
        if self._front is not None:
            self._front.sendto(data, client)

    def _at(self, when: float) -> float:
        return self._loop.time() + (when - time.monotonic())

    @property
    def stats(self) -> dict:
        return {"forward": dict(self.forward.stats), "reverse": dict(self.reverse.stats)}

    def close(self) -> None:
        if self._front is not None:
            self._front.close()
        for up in self._uplinks.values():
            up.close()


class _PendingUplink:
    """Buffers datagrams until the upstream socket exists."""

    def __init__(self) -> None:
        self.transport = None
        self._pending: list[bytes] = []

    def attach(self, transport) -> None:
        self.transport = transport
        for d in self._pending:
            transport.sendto(d)
        self._pending.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self._pending.append(data)
        else:
            self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
