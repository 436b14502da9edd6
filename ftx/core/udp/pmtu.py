"""Datagram packetization layer path MTU discovery (RFC 8899), sans I/O.

The sender starts at its base size (``--mtu``, 1452-byte datagrams by default,
safe on any 1500-byte path) and, when asked to (``--pmtud``), probes larger
sizes with padded PING packets that carry no data:

* one probe is outstanding at a time; an acknowledged probe raises the size
  at once, a probe lost ``MAX_PROBES`` times (RFC 8899 5.1.2: MAX_PROBES = 3)
  ends the search at the last size that worked;
* candidates go up through common link MTUs; every datagram size is the MTU
  less 48 bytes (IPv6 and UDP headers), as the base is;
* a probe's loss is not a congestion signal (RFC 8899 3, item 7) and its
  content is never sent again;
* black hole detection (RFC 8899 4.3): if packets keep going unanswered after
  the size was raised (two probe timeouts in a row), the size falls back to
  the base and the search starts again after ``RESEARCH_AFTER`` seconds.

The driver must send with the IP "don't fragment" bit (Linux:
IP_PMTUDISC_PROBE), or a probe larger than the path would simply be
fragmented and "succeed".
"""

from __future__ import annotations

from .packets import MAX_MAX_DATAGRAM

HEADERS = 48  # IPv6 (40) + UDP (8): the base of 1452 is 1500 - 48
CANDIDATE_MTUS = (1500, 2048, 4096, 8192, 9000, 16384, 32768, 65535)
MAX_PROBES = 3
RESEARCH_AFTER = 60.0  # RFC 8899 5.1.1 suggests 600 s; a transfer is shorter than that


class PmtuSearch:
    def __init__(self, base: int, now: float, ceiling: int = MAX_MAX_DATAGRAM) -> None:
        self.base = base
        self.current = base
        self.ceiling = ceiling
        self._candidates = self._above(base)
        self._failures = 0
        self._outstanding: int | None = None  # size of the probe in flight
        self._next_probe = now  # the handshake is done: the first probe may go at once
        self.black_holes = 0

    def _above(self, size: int) -> list[int]:
        return sorted({min(m - HEADERS, self.ceiling) for m in CANDIDATE_MTUS} - set(range(size + 1)))

    @property
    def searching(self) -> bool:
        return bool(self._candidates)

    def probe_due(self, now: float) -> int | None:
        """The size to probe now, if any (the caller sends one padded PING of it)."""
        if self._outstanding is not None or not self._candidates or now < self._next_probe:
            return None
        self._outstanding = self._candidates[0]
        return self._outstanding

    def next_timer(self) -> float | None:
        return self._next_probe if self._candidates and self._outstanding is None else None

    def on_probe_acked(self, size: int) -> None:
        self._outstanding = None
        if size > self.current:
            self.current = size
        self._candidates = [c for c in self._candidates if c > size]
        self._failures = 0
        self._next_probe = float("-inf")  # the next size at once

    def on_probe_lost(self, size: int) -> None:
        """(Loss detection already waited a round trip or more: the next try may go at once.)"""
        self._outstanding = None
        if not self._candidates or self._candidates[0] != size:
            return
        self._failures += 1
        if self._failures >= MAX_PROBES:  # this size does not get through: the search is over
            self._candidates = []
        self._next_probe = float("-inf")

    def on_black_hole(self, now: float) -> bool:
        """Packets of the current size stopped getting through: back to the base size.
        Returns whether the size changed."""
        if self.current == self.base:
            return False
        self.black_holes += 1
        self.current = self.base
        self._candidates = self._above(self.base)
        self._failures = 0
        self._outstanding = None
        self._next_probe = now + RESEARCH_AFTER
        return True
