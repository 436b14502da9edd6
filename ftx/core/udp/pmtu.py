"""Datagram packetization layer path MTU discovery (RFC 8899), sans I/O.

Every peer starts at its initial size (``--mtu``, 1452-byte datagrams by
default, right for any 1500-byte path) without knowing that the path carries
it.  Below that lies the base size, ``BASE_PLPMTU`` = 1200 bytes (QUIC's
minimum, RFC 9000 14; it fits the 1280-byte IPv6 minimum MTU), which every
path ftx supports carries: the handshake's INITIALs are padded to it.

* black hole detection (RFC 8899 4.3, driven by the session): when datagrams
  above the base size do not get through, the size falls back to the base,
  the lost content goes again in base-sized packets, and a search starts at
  once for the largest size the path does carry;
* the search probes with padded PING packets that carry no data: one probe
  outstanding at a time; an acknowledged probe raises the size at once, a
  probe lost ``MAX_PROBES`` times (RFC 8899 5.1.2: MAX_PROBES = 3) ends the
  search at the last size that worked;
* candidates go up through common link MTUs less 48 bytes (IPv6 and UDP
  headers), as the initial size is, up to the ceiling: the initial size, or
  with ``--pmtud`` the largest datagram there is, so that ``--pmtud`` also
  searches above the initial size from the start;
* a probe's loss is not a congestion signal (RFC 8899 3, item 7) and its
  content is never sent again.

Probes above the initial size need the IP "don't fragment" bit (Linux:
IP_PMTUDISC_PROBE, set by the driver when it searches), or a probe larger than
the path would simply be fragmented and "succeed".  With it every datagram has
the bit, so on a path below 1500 bytes a 1452-byte datagram is dropped rather
than fragmented: the black hole fallback above finds the size that fits.  A
receiver never searches above its initial size.

``ftx send --udp`` (and ``ftx.send``) search above the initial size by default
(``--no-pmtud`` turns it off; ``UdpConfig.pmtud``, the core's mechanism, stays
off unless a driver asks).  Why, measured 2026-12-04 on 2 shared cores:
- Loopback (64 KiB datagrams), ``bench_udp.py --skip-relay --size 1G --runs 5
  --pmtud-ab --scp``: both sides spend less CPU per GB in every run, sealed or
  not (sealed send+receive 1.50-1.74 against 2.19-2.41 s/GB; plain 1.45-1.65
  against 1.57-1.78).  In the pairs where neither run waited 10 % of its time
  for a CPU, sealed with/without 1.47, 1.29, 1.39x (1078 against 775 MB/s
  medians, scp 446), plaintext 1.02, 0.98, 1.08x.  Sealed 64 KiB datagrams are
  cheap since the C loops seal them with cryptography's AES-GCM (datagrams.py
  BULK_AEAD_FROM).  Runs that look bimodal (about 470 or 850-1200 MB/s) are
  the machine's other tenants, not the rate model: traced run by run (bandwidth
  estimate, pacing rate, cwnd, in flight, each process's CPU time and its wait
  for a CPU from /proc/thread-self/schedstat), a send ran at 1200 MB/s and fell
  to 470 the moment both processes began to wait 30-50 % for a CPU, at 1452
  bytes as at 64 KiB, with no datagram lost and no socket buffer overflow;
  ``--pmtud-ab`` prints each run's wait (/proc/pressure/cpu) for that reason.
- Through ``ftx impair`` (100 Mbit/s, 80 ms, 0/1/3 % loss, ``--relay-mtus``) a
  1500-byte path (the internet's, and the relay's default) costs the search
  three 2000-byte probes and about nothing (86.9/86.8/83.7 against
  87.6/87.1/84.8 Mbit/s), and a 9000-byte LAN path gains every run
  (92.6/93.0/92.6 against 87.8/87.2/85.4 Mbit/s).
- With the search every datagram carries the don't-fragment bit, so a path
  below 1500 bytes drops 1452-byte datagrams until the black hole fallback
  finds what fits (tests: test_udp_small_mtu.py, IPv4 and IPv6, sealed and
  plain), as QUIC stacks do.  A kernel that refuses the socket option gets no
  search, with a warning, instead of a failed send.
"""

from __future__ import annotations

from .packets import MAX_MAX_DATAGRAM, MIN_MAX_DATAGRAM

HEADERS = 48  # IPv6 (40) + UDP (8): the initial size of 1452 is 1500 - 48
BASE_PLPMTU = MIN_MAX_DATAGRAM  # 1200: every supported path carries it (RFC 8899 5.1.4, RFC 9000 14)
# 1280: the IPv6 minimum; 1420: WireGuard; 1492: PPPoE; then Ethernet and jumbo frames
CANDIDATE_MTUS = (1280, 1420, 1492, 1500, 2048, 4096, 8192, 9000, 16384, 32768, 65535)
MAX_PROBES = 3


class PmtuSearch:
    def __init__(self, initial: int, now: float, ceiling: int | None = None, base: int = BASE_PLPMTU) -> None:
        self.initial = initial
        self.base = min(base, initial)
        self.current = initial
        self.ceiling = max(initial, min(ceiling if ceiling is not None else initial, MAX_MAX_DATAGRAM))
        self._candidates = self._above(initial)
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
        """Datagrams of the current size do not get through: back to the base size, and
        search again at once for the largest size that does.  Returns whether the size
        changed."""
        if self.current <= self.base:
            return False
        self.black_holes += 1
        self.current = self.base
        self._candidates = self._above(self.base)
        self._failures = 0
        self._outstanding = None
        self._next_probe = now
        return True
