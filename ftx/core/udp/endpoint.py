"""Connection set-up over UDP, sans I/O: the receiver's Listener, the sender's Dialer.

Handshake (protocol.md, "UDP handshake")::

    sender                                   receiver
    INITIAL(dcid=R0, scid=S, token="")  -->              (padded to 1200 bytes)
                                        <--  RETRY(dcid=S, token=T)   (no state kept)
    INITIAL(dcid=R0, scid=S, token=T)   -->              token checked: address valid
                                        <--  INITIAL(dcid=S, scid=R)  session created
    DATA(dcid=R, ...)                   <->  DATA(dcid=S, ...)

The token is ``u32 milliseconds || HMAC-SHA256(secret, milliseconds || address || port || S)[:16]``
and is valid for 10 s: the receiver keeps no state for an address until it has
proved it receives there, and a RETRY is smaller than the INITIAL that caused
it, so a spoofed source can neither exhaust memory nor be flooded through us.
DATA packets are routed by connection ID, so a sender whose address or port
changes keeps its session.

What a Listener lets its senders cost (all optional; the receiver CLI sets them
from ``Limits``): ``admission`` counts sessions in total and per host (refused:
an INITIAL reply and a CLOSE with code BUSY and the reason, still stateless);
``budget`` is the memory all sessions may buffer together (reassembly.py); the
config's ``handshake_timeout`` closes a session whose HELLO does not arrive;
and INITIALs are answered at most ``initial_rate`` a second (with a burst of
``INITIAL_BURST``), and at most ``HOST_INITIAL_RATE`` a second from one host
(``host_of``: an IPv4 address or an IPv6 /64), so that a flood of them -- each costs an HMAC and a reply -- takes
little time from the sessions already served.  Half of the total is kept for
addresses that still have most of their own budget, so that a sender on
another address than the flood's still gets its answer.  Sessions are created at
most ``SESSION_RATE`` a second (after ``SESSION_BURST``), half of that kept for those
light addresses in the same way, and a light address's session still waiting for its
HELLO is not evicted for a busy address's newcomer (``Admission``, ``protected``).
DATA for a known session is never subject to these budgets.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import xxhash

from ...errors import ErrorCode, RemoteProtocolError
from ..hosts import host_key
from .packets import (
    DATA,
    HEADER,
    HEADER_SIZE,
    OVERHEAD,
    VERSION,
    INITIAL,
    MIN_INITIAL_SIZE,
    RETRY,
    TRAILER_SIZE,
    build,
    encode_close,
    initial_payload,
    parse,
    parse_initial,
    segments,
)
from .reassembly import MemoryBudget
from ..secure.datagrams import SEALED_OVERHEAD, SEALED_TYPES
from .session import UdpConfig, UdpSession

TOKEN_LIFETIME = 10
INITIAL_RATE = 5000.0  # INITIALs answered per second (RETRY or session), beyond the burst:
INITIAL_BURST = 256  # half of each for addresses that have asked little lately, half for the rest
HOST_INITIAL_RATE = 16.0  # the same from one host (an IPv4 address or an IPv6 /64)
HOST_INITIAL_BURST = 32
# An address is "light" (served from the reserved half of the total) while it has asked for
# no more than this many INITIALs lately: a new sender asks once or twice, an address that
# keeps asking -- even within its own rate, as many flooding addresses each do -- is not.
LIGHT_RATE = 0.5
LIGHT_BURST = 8.0  # a sender's handshake asks 2 to 4 times: a few transfers in a row stay "light"
# Sessions created a second (beyond the burst), half of each for light addresses as above:
# creating (and soon evicting) a session costs the receiver about a millisecond, so a flood
# of completed handshakes at the INITIAL budget's pace took its whole CPU, its socket queue
# filled, and a new sender's packets waited seconds behind the flood.
SESSION_RATE = 200.0
SESSION_BURST = 64
HOSTS_TRACKED = 4096  # per-host budgets kept; beyond, they start afresh (the total still holds)
_xxh64 = xxhash.xxh3_64_intdigest
_unpack_q = struct.Struct(">Q").unpack_from


def _addr_bytes(addr) -> bytes:
    return f"{addr[0]}|{addr[1]}".encode()


def _mac(secret: bytes, ts: bytes, addr, scid: int) -> bytes:
    return hmac.new(secret, ts + _addr_bytes(addr) + scid.to_bytes(8, "big"), hashlib.sha256).digest()[:16]


def make_token(secret: bytes, addr, scid: int, now: float) -> bytes:
    ts = struct.pack(">I", int(now * 1000) & 0xFFFFFFFF)  # milliseconds, modulo 2^32
    return ts + _mac(secret, ts, addr, scid)


def check_token(secret: bytes, token: bytes, addr, scid: int, now: float) -> bool:
    if len(token) != 20:
        return False
    (ts,) = struct.unpack(">I", token[:4])
    if (int(now * 1000) - ts) & 0xFFFFFFFF > TOKEN_LIFETIME * 1000:
        return False
    return hmac.compare_digest(token[4:], _mac(secret, token[:4], addr, scid))


def host_of(addr) -> str:
    """The host a socket address counts as in every per-host limit: ``host_key`` (an IPv4
    address, IPv4-mapped IPv6 as plain IPv4, or an IPv6 /64)."""
    return host_key(addr[0])


def padded_initial(dcid: int, pn: int, scid: int, token: bytes) -> bytes:
    payload = initial_payload(scid, token)
    pad = MIN_INITIAL_SIZE - (18 + len(payload) + TRAILER_SIZE)
    return build(INITIAL, dcid, pn, payload + bytes(max(0, pad)))


class Listener:
    """Receiver side: validates addresses statelessly, routes packets to sessions."""

    def __init__(self, secret: bytes, config: UdpConfig, new_cid, admission=None,
                 budget: MemoryBudget | None = None, initial_rate: float = INITIAL_RATE) -> None:
        self.secret = secret
        self.config = config
        self._new_cid = new_cid  # callable returning a fresh random 64-bit ID
        self.admission = admission  # admit(host) -> reason or None, release(host); None: no limit
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.initial_rate = initial_rate
        self._buckets = {True: [INITIAL_BURST / 2, None], False: [INITIAL_BURST / 2, None]}  # light, heavy
        self._session_buckets = {True: [SESSION_BURST / 2, None], False: [SESSION_BURST / 2, None]}
        self._host_credit: dict[str, tuple[float, float, float]] = {}  # host -> (credit, as of, lightness)
        # Hosts of which the driver lets only 1 in ``sample_weight`` token-less INITIALs reach
        # us (a socket filter against busy hosts): each of those counts that many times.
        self.sampled_hosts: frozenset[str] = frozenset()
        self.sample_weight = 1
        self.sessions: dict[int, UdpSession] = {}
        self.addresses: dict[int, tuple] = {}
        self._hosts: dict[int, str] = {}  # our cid -> host admitted (released on forget)
        self._evicts: dict[int, object] = {}  # our cid -> its eviction callback (Admission's key)
        self.evicted: list[UdpSession] = []  # closed for a newcomer: the driver wakes their links
        self._by_initial: dict[tuple, int] = {}  # (address, sender cid) -> our cid
        self.stats = {"garbage": 0, "foreign": 0, "retries": 0, "short_initials": 0, "bad_tokens": 0,
                      "refused": 0, "initials": 0, "initials_unanswered": 0}

    def receive_burst(self, data, seg: int, addr, now: float) -> list[tuple[UdpSession | None, bool, list[bytes]]]:
        """Datagrams of ``seg`` bytes laid end to end, all from ``addr`` (a UDP GRO read;
        the last may be shorter).  Returns ``receive_datagram``'s answer for each, except
        that a run of CHUNK packets for one session is taken in one pass and answered once."""
        n = len(data)
        if n <= seg:
            return [self.receive_datagram(data, addr, now)]
        view = memoryview(data)
        results = []
        full = n - n % seg
        sealed = data[0] in SEALED_TYPES
        session = self.sessions.get(HEADER.unpack_from(data, 0)[2]) \
            if (data[0] == DATA and seg >= OVERHEAD) or (sealed and seg >= SEALED_OVERHEAD) else None
        if session is not None and sealed:  # (protection.py)
            self._deliver(session, addr, None, session.receive_sealed_burst, view[:full], seg, now)
            results.append((session, False, []))
            others = ()
        elif session is not None and session.chunk_receiver:
            others, garbage = self._deliver(session, addr, None, session.receive_chunk_burst, view[:full], seg, now) \
                or ([], 0)
            self.stats["garbage"] += garbage
            results.append((session, False, []))
        else:
            others = range(0, full, seg)
        for off in others:
            results.append(self.receive_datagram(view[off : off + seg], addr, now))
        if full < n:
            results.append(self.receive_datagram(view[full:], addr, now))
        return results

    def receive_datagram(self, data, addr, now: float) -> tuple[UdpSession | None, bool, list[bytes]]:
        """Returns (session the datagram was for, whether it is new, replies to send to ``addr``)."""
        n = len(data)
        if n >= OVERHEAD and data[0] == DATA:  # fast path: the header checks of ``parse``, inline
            ptype, version, dcid, pn = HEADER.unpack_from(data, 0)
            session = self.sessions.get(dcid)
            if session is not None and version == VERSION:
                view = memoryview(data)
                if _xxh64(view[: n - TRAILER_SIZE]) != _unpack_q(view, n - TRAILER_SIZE)[0]:
                    self.stats["garbage"] += 1
                    return None, False, []
                # (with keys, only what the session records may move it: protection.py)
                self._deliver(session, addr, pn if session.protection is None else None, session.receive_payload, pn,
                              view[HEADER_SIZE : n - TRAILER_SIZE], now)
                return session, False, []
        if n >= SEALED_OVERHEAD and data[0] in SEALED_TYPES:  # authenticated: only then may it move us
            session = self.sessions.get(HEADER.unpack_from(data, 0)[2])
            if session is None or data[1] != VERSION:
                self.stats["foreign"] += 1
                return None, False, []
            self._deliver(session, addr, None, session.receive_sealed, data, now)
            return session, False, []
        try:
            pkt = parse(data)
        except RemoteProtocolError:
            self.stats["garbage"] += 1
            return None, False, []
        if pkt.ptype == DATA:
            session = self.sessions.get(pkt.dcid)
            if session is None:
                self.stats["foreign"] += 1
                return None, False, []
            self._deliver(session, addr, pkt.pn if session.protection is None else None, session.receive_payload,
                          pkt.pn, pkt.payload, now)
            return session, False, []
        if pkt.ptype != INITIAL:
            self.stats["foreign"] += 1
            return None, False, []
        if len(data) < MIN_INITIAL_SIZE:
            self.stats["short_initials"] += 1
            return None, False, []
        try:
            scid, token, _ = parse_initial(pkt.payload)
        except RemoteProtocolError:
            self.stats["garbage"] += 1
            return None, False, []
        known = self._by_initial.get((addr, scid))
        if known is not None and known in self.sessions:  # our INITIAL reply was lost: repeat it
            return self.sessions[known], False, [self._reply(known, scid)]
        self.stats["initials"] += 1  # INITIALs that would cost an HMAC (drivers watch for floods)
        host = host_of(addr)
        light = self._spend_initial(host, now, self.sample_weight if not token and host in self.sampled_hosts else 1)
        if light is None:
            self.stats["initials_unanswered"] += 1  # a flood: the sender will try again
            return None, False, []
        if not token or not check_token(self.secret, token, addr, scid, now):
            # no token, or an old or foreign one: a fresh RETRY (still smaller than the INITIAL)
            self.stats["retries" if not token else "bad_tokens"] += 1
            return None, False, [build(RETRY, scid, 0, initial_payload(0, make_token(self.secret, addr, scid, now)))]
        if not _take(self._session_buckets[light], SESSION_BURST / 2, SESSION_RATE / 2, now, spend=False):
            self.stats["initials_unanswered"] += 1  # too many new sessions: the sender will try again
            return None, False, []
        made: list[UdpSession] = []

        def evict() -> None:  # its handshake was not finished when a newcomer needed the place
            for old in made:
                old.close(ErrorCode.BUSY, "handshake not finished; the place went to a newer connection")
                self.evicted.append(old)
                self.forget(old)  # its places went to the newcomer (Admission knows: release is a no-op)

        # A light address's pending session is not evicted for a busy address's newcomer.
        reason = self.admission.admit(host, evict, protected=light) if self.admission is not None else None
        if reason is not None:  # refused: tell the sender why, and keep nothing
            self.stats["refused"] += 1
            return None, False, [self._reply(self._new_cid(), scid),
                                 build(DATA, scid, 0, encode_close(ErrorCode.BUSY, reason))]
        _take(self._session_buckets[light], SESSION_BURST / 2, SESSION_RATE / 2, now)
        cid = self._new_cid()
        session = UdpSession(cid, scid, self.config, now, chunk_receiver=True, budget=self.budget)
        made.append(session)
        if self.admission is not None:
            admission = self.admission
            session.on_established = lambda: admission.settled(evict)
            self._evicts[cid] = evict
        self.budget.sessions += 1
        self.sessions[cid] = session
        self.addresses[cid] = addr
        self._hosts[cid] = host
        self._by_initial[(addr, scid)] = cid
        return session, True, [self._reply(cid, scid)]

    def _spend_initial(self, host: str, now: float, weight: int = 1) -> bool | None:
        """Whether the INITIAL budgets (token buckets: the host's, then the total) allow
        answering one more INITIAL from ``host``: None if not, else whether ``host`` is
        light (has asked little lately).  Every INITIAL counts against its host (``weight``
        times), answered or not, so a flooding address soon gets nothing and costs the
        total nothing."""
        credit, at, light = self._host_credit.get(host, (float(HOST_INITIAL_BURST), now, LIGHT_BURST))
        elapsed = max(0.0, now - at)
        credit = max(-float(HOST_INITIAL_BURST),
                     min(float(HOST_INITIAL_BURST), credit + elapsed * HOST_INITIAL_RATE) - weight)
        light = min(LIGHT_BURST, light + elapsed * LIGHT_RATE) - weight
        if len(self._host_credit) >= HOSTS_TRACKED and host not in self._host_credit:
            self._host_credit.clear()
        self._host_credit[host] = (credit, now, max(-LIGHT_BURST, light))
        if credit < 0.0:
            return None
        light = light >= 0.0
        return light if _take(self._buckets[light], INITIAL_BURST / 2, self.initial_rate / 2, now) else None

    def busy_hosts(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` hosts whose INITIALs are being refused now (their own budget is
        spent), most overdrawn first: what a driver may drop before it reads them."""
        busy = []
        for host, (credit, at, _light) in self._host_credit.items():
            credit = min(float(HOST_INITIAL_BURST), credit + max(0.0, now - at) * HOST_INITIAL_RATE)
            if credit < 0.0:
                busy.append((credit, host))
        busy.sort()
        return [host for _, host in busy[:limit]]

    def _deliver(self, session: UdpSession, addr, pn: int | None, feed, *args):
        """``feed(*args)`` (DATA for ``session``, checksum already fine) and its result. Content
        that breaks the protocol ends that session only. A packet newer than any before it
        (``pn``; None: whatever ``feed`` recorded) from a new address or port means the
        sender moved: its packets go there from now on."""
        before = session._largest_recv
        try:
            result = feed(*args)
        except RemoteProtocolError as exc:
            session.close(exc.code, str(exc))
            result = None
        newest = session._largest_recv if pn is None else pn
        if newest > before and self.addresses.get(session.local_cid) != addr:
            self.addresses[session.local_cid] = addr
        return result

    def _reply(self, cid: int, scid: int) -> bytes:
        return build(INITIAL, scid, 0, initial_payload(cid, b""))

    def forget(self, session: UdpSession) -> None:
        """The session is over: free what it holds, and its place in the limits."""
        if self.sessions.pop(session.local_cid, None) is None:
            return
        self.addresses.pop(session.local_cid, None)
        session.release_buffers()
        self.budget.sessions -= 1
        host = self._hosts.pop(session.local_cid, None)
        evict = self._evicts.pop(session.local_cid, None)
        if host is not None and self.admission is not None:
            self.admission.release(host, evict)
        for k, v in list(self._by_initial.items()):
            if v == session.local_cid:
                del self._by_initial[k]


def _take(bucket: list, burst: float, rate: float, now: float, spend: bool = True) -> bool:
    """Token bucket ``[credit, as of]`` (refilled at ``rate`` up to ``burst``): whether one is
    left, and, with ``spend``, take it."""
    if bucket[1] is not None:
        bucket[0] = min(burst, bucket[0] + max(0.0, now - bucket[1]) * rate)
    bucket[1] = now
    if bucket[0] < 1.0:
        return False
    if spend:
        bucket[0] -= 1.0
    return True


class Dialer:
    """Sender side: INITIAL, follow a RETRY, create the session on the receiver's INITIAL."""

    def __init__(self, config: UdpConfig, local_cid: int, initial_dcid: int, now: float) -> None:
        self.config = config
        self.local_cid = local_cid
        self.initial_dcid = initial_dcid
        self.token = b""
        self.session: UdpSession | None = None
        self._tries = 0
        self._next_try = now
        self._start = now
        self._sent_at = now  # when the INITIAL with the current token went out
        self._sent_with_token = 0  # INITIALs sent with the current token (one: its answer times the path)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if self.session is not None or now < self._next_try:
            return []
        self._tries += 1
        # Unanswered: again soon and twice over.  A receiver under an INITIAL flood drops most
        # token-less INITIALs in its socket filter (1 in 8 passes, transport/udp_server.py): backing
        # off to 2 s with one copy left a new sender waiting 5-10 s; two copies every second
        # at most get one through to it in about 3 s on average (both copies are sent at once,
        # so an answer still times the path).  INITIALs with a token pass the filter: one copy.
        self._next_try = now + min(0.25 * 1.5 ** (self._tries - 1), 1.0)
        self._sent_at = now
        self._sent_with_token += 1
        initial = padded_initial(self.initial_dcid, self._tries, self.local_cid, self.token)
        return [initial] if self._tries == 1 or self.token else [initial, initial]  # a token passes the filter

    def next_timer(self) -> float | None:
        return None if self.session is not None else self._next_try

    def timed_out(self, now: float) -> bool:
        return self.session is None and now - self._start > self.config.idle_timeout

    def receive_burst(self, data, seg: int, now: float) -> UdpSession | None:
        """Datagrams of ``seg`` bytes laid end to end (a UDP GRO read), fed one by one."""
        for datagram in segments(data, seg):
            self.receive_datagram(datagram, now)
        return self.session

    def receive_datagram(self, data, now: float) -> UdpSession | None:
        """Feed any datagram; returns the session once it exists (and feeds it DATA)."""
        session = self.session
        if session is not None and len(data) >= SEALED_OVERHEAD and data[0] in SEALED_TYPES:
            if data[1] == VERSION and HEADER.unpack_from(data, 0)[2] == self.local_cid:
                try:
                    session.receive_sealed(data, now)
                except RemoteProtocolError as exc:
                    session.close(exc.code, str(exc))
            return session
        try:
            pkt = parse(data)
        except RemoteProtocolError:
            return self.session
        if pkt.dcid != self.local_cid:
            return self.session
        if pkt.ptype == RETRY and self.session is None:
            try:
                _, token, _ = parse_initial(pkt.payload)
            except RemoteProtocolError:
                return None
            if token and token != self.token:
                self.token = token
                self._sent_with_token = 0
                self._next_try = now  # answer at once
        elif pkt.ptype == INITIAL and self.session is None:
            try:
                peer_cid, _, _ = parse_initial(pkt.payload)
            except RemoteProtocolError:
                return None
            self.session = UdpSession(self.local_cid, peer_cid, self.config, now, chunk_receiver=False)
            if self._sent_with_token == 1:  # an unambiguous round trip: the first RTT sample
                self.session.recovery.rtt.update(now - self._sent_at, 0.0)
        elif pkt.ptype == DATA and self.session is not None:
            try:
                self.session.receive_payload(pkt.pn, pkt.payload, now)
            except RemoteProtocolError as exc:
                self.session.close(exc.code, str(exc))
        return self.session
