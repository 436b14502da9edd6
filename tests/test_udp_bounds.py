"""What one UDP peer can make the receiver spend, in memory, in the sans-I/O core.

Each test replays an attack of issue #11 (item 11 and the UDP half of 12) against
real ``UdpSession`` / ``Listener`` objects with an explicit clock, and measures what
it costs: Python heap (``tracemalloc``), buffered-bytes accounting, entries kept,
sessions admitted.  The same attacks through a real ``ftx receive`` process are in
test_udp_abuse.py.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest
import xxhash

from ftx.core.udp import packets as P
from ftx.core.udp.endpoint import Dialer, Listener, padded_initial
from ftx.core.udp.session import UdpConfig, UdpSession
from ftx.errors import ErrorCode
from ftx.limits import Admission, Limits

pytestmark = pytest.mark.timeout(60)
MIB = 1024 * 1024


def _receiver(cfg: UdpConfig | None = None, **kw) -> UdpSession:
    return UdpSession(2, 1, cfg or UdpConfig(), 0.0, chunk_receiver=True, **kw)


def _chunk(fid: int, index: int, clen: int, off: int, data: bytes, csum: int = 0) -> memoryview:
    return memoryview(P.CHUNK_HEADER.pack(P.F_CHUNK, fid, index, clen, off, csum, len(data)) + data)


def _acked(session: UdpSession, now: float) -> P.AckFrame | None:
    acks = [f for d in session.datagrams_to_send(now) for f in P.parse_frames(P.parse(d).payload)
            if isinstance(f, P.AckFrame)]
    return acks[-1] if acks else None


def _max_data(session: UdpSession, now: float) -> int:
    session._ack_now = True
    frames = [f for d in session.datagrams_to_send(now) for f in P.parse_frames(P.parse(d).payload)]
    return [f.value for f in frames if isinstance(f, P.MaxDataFrame)][-1]


class Heap:
    """Peak Python heap growth while the block runs (bytearrays included)."""

    def __enter__(self):
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        self.current, self.peak = (x - self.base for x in tracemalloc.get_traced_memory())
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# chunk reassembly: nothing allocated for data that has not arrived
# ---------------------------------------------------------------------------------------------
def test_announced_16_mib_chunks_allocate_only_what_arrives():
    """Issue #11: 20 sessions x 2 tiny CHUNK datagrams announcing 16 MiB chunks took 645 MB."""
    sessions = [_receiver() for _ in range(20)]
    with Heap() as heap:
        for s in sessions:
            s.receive_payload(0, _chunk(1, 0, 16 * MIB, 0, b"x" * 10), 0.1)
            s.receive_payload(1, _chunk(1, 1, 16 * MIB, 8 * MIB, b"y" * 10), 0.1)
    assert heap.peak < 4 * MIB, f"{heap.peak / MIB:.1f} MiB for 40 datagrams of 10 bytes"
    for s in sessions:
        ack = _acked(s, 0.2)
        assert 0 in ack.acked  # the piece at the start of its chunk is kept
        assert 1 not in ack.acked  # the lone piece 8 MiB into a chunk is not: it comes again later
        assert s.stats["dropped_no_buffer"] == 1


def test_chunk_buffer_grows_as_pieces_arrive_and_the_chunk_is_whole():
    s = _receiver()
    data = random.Random(1).randbytes(4 * MIB)
    csum = xxhash.xxh3_64_intdigest(data)
    piece, pn, arrived = 1400, 0, 0
    for off in range(0, len(data), piece):
        s.receive_payload(pn, _chunk(7, 3, len(data), off, data[off:off + piece], csum), 0.1)
        pn += 1
        arrived += len(data[off:off + piece])
        slot = s._cin.slots.get((7, 3))
        if slot is not None:
            assert len(slot.buf) <= 2 * arrived + 64 * 1024  # never more than twice what arrived
    (chunk,) = s.take_chunks()
    assert chunk[:3] == (7, 3, csum) and chunk[3] == data
    assert s.stats["dropped_no_buffer"] == 0 and s.held == 0


def test_chunk_pieces_in_any_order_complete_with_resends():
    """Pieces refused for being far ahead of what arrived are not acknowledged: a sender
    resends them, and the chunk completes."""
    rnd = random.Random(2)
    s = _receiver()
    data = rnd.randbytes(2 * MIB)
    csum = xxhash.xxh3_64_intdigest(data)
    offsets = list(range(0, len(data), 1400))
    rnd.shuffle(offsets)
    pn, now = 0, 0.1
    for _ in range(50):
        sent = {}
        for off in offsets:
            s.receive_payload(pn, _chunk(1, 0, len(data), off, data[off:off + 1400], csum), now)
            sent[pn] = off
            pn += 1
        now += 0.01
        ack = _acked(s, now)
        offsets = [off for p, off in sent.items() if ack is None or p not in ack.acked]
        if not offsets:
            break
    assert not offsets
    assert s.take_chunks()[0][3] == data


def test_many_tiny_pieces_of_one_chunk_are_bounded_in_runs():
    from ftx.core.udp.reassembly import SLOT_RANGES_LIMIT

    s = _receiver()
    clen = 8192
    data = random.Random(3).randbytes(clen)
    csum = xxhash.xxh3_64_intdigest(data)
    pn = 0
    for off in range(0, clen, 2):  # every other byte: 4096 separate runs
        s.receive_payload(pn, _chunk(1, 0, clen, off, data[off:off + 1], csum), 0.1)
        pn += 1
    assert len(s._cin.slots[(1, 0)].got) <= SLOT_RANGES_LIMIT
    assert s.stats["dropped_no_buffer"] == clen // 2 - SLOT_RANGES_LIMIT
    for off in range(0, clen, 1024):  # what a sender resends fills the gaps, and merges the runs
        s.receive_payload(pn, _chunk(1, 0, clen, off, data[off:off + 1024], csum), 0.2)
        pn += 1
    assert s.take_chunks()[0][3] == data


def test_bytes_and_entries_per_session_are_bounded():
    """Many chunks of many sizes: what one session holds stays under its limit."""
    from ftx.core.udp.session import SESSION_BUFFER_LIMIT

    s = _receiver()
    pn = 0
    with Heap() as heap:
        for index in range(20_000):  # each a different chunk: 3 bytes of a 5-byte one
            s.receive_payload(pn, _chunk(1, index, 5, 0, b"abc"), 0.1)
            pn += 1
        for index in range(800):  # and 64 KiB of each of many 1 MiB chunks
            s.receive_payload(pn, _chunk(2, index, MIB, 0, bytes(60_000)), 0.1)
            pn += 1
    assert s.held <= SESSION_BUFFER_LIMIT
    assert heap.peak < SESSION_BUFFER_LIMIT + 16 * MIB
    assert s.stats["dropped_no_buffer"] > 0


# ---------------------------------------------------------------------------------------------
# control stream: out-of-order entries, not only bytes
# ---------------------------------------------------------------------------------------------
def test_zero_length_stream_frames_are_a_protocol_error():
    """Issue #11: 20 000 zero-length STREAM frames at distinct offsets slipped past the
    out-of-order byte limit (4.6 M dict entries; every in-order byte then ran min() over them).
    ftx never sends an empty STREAM frame: the first one ends the session, and nothing is kept."""
    from ftx.errors import RemoteProtocolError

    s = _receiver()
    payload = b"".join(P.encode_stream(off, b"") for off in range(1, 101))
    with Heap() as heap:
        with pytest.raises(RemoteProtocolError, match="empty STREAM"):
            s.receive_payload(0, memoryview(payload), 0.1)
    assert heap.current < 64 * 1024
    assert P.parse_frames(P.encode_stream(0, b"x"))  # one byte is a frame


def test_tiny_out_of_order_stream_pieces_are_bounded_in_entries():
    from ftx.core.udp.reassembly import STREAM_OOO_ENTRIES

    s = _receiver()
    n = 50_000
    data = random.Random(4).randbytes(n + 1)
    with Heap() as heap:
        for off in range(1, n + 1):  # byte 0 is "lost": every piece waits behind it
            s.receive_payload(off, memoryview(P.encode_stream(off, data[off:off + 1])), 0.1)
    assert s._sin.entries <= STREAM_OOO_ENTRIES
    assert heap.current < 2 * MIB, f"{heap.current / MIB:.1f} MiB for {n} one-byte pieces"
    # the gap fills; what was not kept is resent (not acknowledged), and the stream is whole
    ack = _acked(s, 0.2)
    missing = [off for off in range(1, n + 1) if off not in ack.acked]
    assert len(missing) == n - s._sin.entries
    pn = n + 1
    s.receive_payload(pn, memoryview(P.encode_stream(0, data[:1])), 0.2)
    for off in missing:
        pn += 1
        s.receive_payload(pn, memoryview(P.encode_stream(off, data[off:off + 1])), 0.3)
    out = bytearray(n + 1)
    assert s.stream_read_into(memoryview(out)) == n + 1 and out == data
    assert s.held == 0


def test_tiny_in_order_stream_pieces_cost_no_object_each():
    """The in-order control stream keeps what arrives as pieces (no copy into one growing
    buffer); a peer's one-byte STREAM packets must not become one object each: 50 000 of
    them unread would be ~2.5 MB of object headers for 50 KB of data."""
    s = _receiver()
    n = 50_000
    data = random.Random(5).randbytes(n)
    with Heap() as heap:
        for off in range(n):
            s.receive_payload(off, memoryview(P.encode_stream(off, data[off:off + 1])), 0.1)
    assert s.stream_readable == n
    assert heap.peak < n + MIB, f"{heap.peak / MIB:.1f} MiB held for {n} one-byte pieces"
    out = bytearray(n)
    got = 0
    while got < n:  # read in odd sizes: pieces are split and resumed
        got += s.stream_read_into(memoryview(out)[got : got + 777])
    assert out == data and s.stream_readable == 0


# ---------------------------------------------------------------------------------------------
# memory shared by all sessions
# ---------------------------------------------------------------------------------------------
def test_total_buffered_memory_is_bounded_over_sessions_and_windows_shrink():
    from ftx.core.udp.reassembly import MemoryBudget

    budget = MemoryBudget(32 * MIB)
    sessions = []
    for k in range(16):
        budget.sessions += 1
        sessions.append(_receiver(budget=budget))
    piece = 60_000
    for s in sessions:  # each fills 32 unfinished 1 MiB chunks, in order, as far as allowed
        pn = 0
        for index in range(32):
            for off in range(0, 512 * 1024, piece):
                s.receive_payload(pn, _chunk(1, index, MIB, off, bytes(piece)), 0.1)
                pn += 1
    assert budget.used <= 2 * budget.total  # within the total, or a session's fair share of it
    assert sum(s.held for s in sessions) == budget.used
    assert all(s.held >= budget.share() // 2 for s in sessions)  # nobody starved
    assert any(s.stats["dropped_no_buffer"] for s in sessions)
    # a tight budget shows in MAX_DATA: 16 sessions share 32 MiB, so each is offered ~2 MiB
    fresh = _receiver(budget=budget)
    budget.sessions += 1
    assert _max_data(fresh, 0.2) == 16 * MIB  # the initial credit; it grows by less than a full window
    fresh._delivered = 16 * MIB
    assert _max_data(fresh, 0.3) <= 16 * MIB + 2 * MIB
    for s in sessions:
        s.release_buffers()
    assert budget.used == 0


# ---------------------------------------------------------------------------------------------
# handshakes and sessions (Listener)
# ---------------------------------------------------------------------------------------------
def _open(lst: Listener, addr, scid: int, now: float):
    """Handshake as a sender would: INITIAL, RETRY, INITIAL with the token; the final replies."""
    _, _, replies = lst.receive_datagram(padded_initial(7, 1, scid, b""), addr, now)
    token = P.parse_initial(P.parse(replies[0]).payload)[1]
    return lst.receive_datagram(padded_initial(7, 2, scid, token), addr, now)


def test_sessions_per_host_and_in_total_are_limited_and_refused_with_a_reason():
    """Issue #11: 2 000 handshakes from one socket took 577 MB."""
    limits = Limits(max_per_host=16, max_connections=40)
    admission = Admission(limits)
    cids = iter(range(1, 1 << 20))
    lst = Listener(b"s" * 32, UdpConfig(handshake_timeout=10.0), lambda: next(cids), admission=admission)
    addr = ("198.51.100.1", 5555)
    now = 10.0
    with Heap() as heap:
        for scid in range(1000, 3000):
            now += 0.2  # within what one address may ask (HOST_INITIAL_RATE)
            session, new, _ = _open(lst, addr, scid, now)
            if new and scid < 1016:
                session.established()  # these 16 finish their handshake (their HELLO arrived)
    assert len(lst.sessions) == 16 and admission.total == 16
    assert lst.stats["refused"] == 2000 - 16 and not lst.stats["initials_unanswered"]
    assert heap.current < 4 * MIB
    # the sender of a refused session learns why
    dialer = Dialer(UdpConfig(), 5000, 7, now)
    _, _, replies = _open(lst, addr, 5000, now + 0.01)
    for r in replies:
        dialer.receive_datagram(r, now + 0.01)
    s = dialer.session
    assert s.closed and s.close_code == ErrorCode.BUSY and "--max-per-host 16" in s.close_reason
    # other hosts get their own 16, up to the total
    for k in range(5):
        for scid in range(16):
            now += 0.01
            session, new, _ = _open(lst, (f"203.0.113.{k}", 4000), 10_000 * (k + 1) + scid, now)
            if new:
                session.established()
    assert len(lst.sessions) == 40
    # forgetting a session frees its place
    lst.forget(next(iter(lst.sessions.values())))
    assert admission.total == 39
    session, new, _ = _open(lst, ("192.0.2.9", 1), 99, now + 0.01)
    assert new and len(lst.sessions) == 40


def test_handshake_timeout_closes_a_session_without_hello_and_frees_it():
    budget_cfg = UdpConfig(handshake_timeout=2.0)
    lst = Listener(b"s" * 32, budget_cfg, iter(range(1, 100)).__next__, admission=Admission(Limits()))
    s, new, _ = _open(lst, ("198.51.100.1", 1), 42, 10.0)
    s.receive_payload(0, memoryview(P.encode_stream(5, b"x" * 1000)), 10.1)  # bytes, but no HELLO
    assert s.next_timer() <= 12.0
    s.handle_timer(11.9)
    assert not s.closed
    s.handle_timer(12.0)
    assert s.closed and s.close_code == ErrorCode.TIMEOUT and "handshake" in s.close_reason
    close = [P.parse_frames(P.parse(d).payload)[0] for d in s.datagrams_to_send(12.0)]
    assert close and all(isinstance(f, P.CloseFrame) and f.code == ErrorCode.TIMEOUT for f in close)
    lst.forget(s)
    assert lst.budget.used == 0 and lst.admission.total == 0 and not lst.sessions
    # a session whose application has the HELLO is not closed by it
    s2, _, _ = _open(lst, ("198.51.100.1", 2), 43, 20.0)
    s2.established()
    s2.handle_timer(23.0)
    assert not s2.closed


def test_before_the_handshake_a_session_buffers_little():
    from ftx.core.udp.session import PENDING_BUFFER_LIMIT

    lst = Listener(b"s" * 32, UdpConfig(handshake_timeout=10.0), iter(range(1, 100)).__next__)
    s, _, _ = _open(lst, ("198.51.100.1", 1), 42, 10.0)
    for k in range(1, 400):  # 24 MiB of out-of-order stream bytes, then chunk data
        s.receive_payload(k, memoryview(P.encode_stream(k * 60_000, bytes(60_000))), 10.1)
    for k in range(400, 800):
        s.receive_payload(k, _chunk(1, k, MIB, 0, bytes(60_000)), 10.1)
    assert s.held <= PENDING_BUFFER_LIMIT


def test_initial_flood_is_answered_within_a_budget_and_served_sessions_keep_going():
    cids = iter(range(1, 1 << 20))
    lst = Listener(b"s" * 32, UdpConfig(), lambda: next(cids))
    s, new, _ = _open(lst, ("192.0.2.1", 9), 42, 10.0)
    assert new
    now = 10.0
    replies = 0
    for k in range(20_000):  # 20 000 INITIALs from 20 000 addresses in 0.2 s
        now += 0.00001
        replies += len(lst.receive_datagram(padded_initial(7, 1, k, b""), (f"10.{k >> 8 & 255}.{k & 255}.1", 1), now)[2])
        if k % 100 == 0:  # the served sender's DATA still gets through, every one
            pkt = P.build(P.DATA, s.local_cid, k // 100, P.encode_stream(k // 100, b"z"))
            lst.receive_datagram(pkt, ("192.0.2.1", 9), now)
    from ftx.core.udp.endpoint import INITIAL_BURST, INITIAL_RATE

    assert replies <= INITIAL_BURST + INITIAL_RATE * 0.2 + 1
    assert lst.stats["initials_unanswered"] == 20_000 - replies
    assert s.stream_readable == 200
    assert len(lst.sessions) == 1 and not lst._by_initial.keys() - {(("192.0.2.1", 9), 42)}


def test_initial_flood_from_some_addresses_leaves_other_senders_answered():
    """256 addresses flood; each is answered at most HOST_INITIAL_RATE a second, and half the
    total budget is kept for addresses that asked little, so once the flood's first burst is
    spent a sender on another address gets in at its first attempt."""
    from ftx.core.udp.endpoint import HOST_INITIAL_BURST, HOST_INITIAL_RATE

    cids = iter(range(1, 1 << 20))
    lst = Listener(b"s" * 32, UdpConfig(), lambda: next(cids))
    now, answered = 10.0, 0
    opened = []
    for k in range(100_000):  # 100 000 INITIALs in 2 s from 256 addresses
        now += 0.00002
        answered += len(lst.receive_datagram(padded_initial(7, 1, k, b""), (f"10.0.0.{k & 255}", 1), now)[2])
        if k % 10_000 == 5_000 and k > 20_000:  # from 0.5 s on, now and then a new sender elsewhere
            s, new, _ = _open(lst, (f"192.0.2.{k // 10_000}", 9), 10**6 + k, now)
            opened.append(new)
    assert answered <= 256 * (HOST_INITIAL_BURST + HOST_INITIAL_RATE * 2.0)
    assert all(opened) and len(opened) == 8


def test_stall_timeout_closes_a_session_that_only_pings():
    """Item 12: a session kept alive by PINGs alone, moving no data, is closed after the stall
    timeout; stream bytes or chunks the application takes keep it open."""
    s = _receiver(UdpConfig(stall_timeout=5.0, idle_timeout=15.0))
    now, pn = 0.0, 0
    while now < 4.5:  # data now and then: alive
        now += 0.5
        s.receive_payload(pn, memoryview(P.encode_stream(pn, b"x")), now)
        s.stream_read_into(memoryview(bytearray(10)))
        pn += 1
        s.handle_timer(now)
    assert not s.closed
    while not s.closed and now < 20:  # PINGs only: the idle timeout never fires, the stall timeout does
        now += 0.5
        s.receive_payload(pn, memoryview(bytes([P.F_PING])), now)
        pn += 1
        if now >= s.next_timer():
            s.handle_timer(now)
    assert s.closed and s.close_code == ErrorCode.TIMEOUT and "no data for 5 s" in s.close_reason
    assert 9.0 <= now <= 10.0


def test_stall_timeout_spares_the_receivers_own_slow_work():
    """Review finding: while the receiving application hashes or fsyncs in a worker it reads
    nothing, and the stall timer used to count that against the sender.  The driver tells
    the session (``application_busy``, from link_busy) and the session stays open."""
    s = _receiver(UdpConfig(stall_timeout=5.0, idle_timeout=15.0))
    now, pn = 0.0, 0
    while now < 20:  # the peer keeps the session alive; the application is busy throughout
        now += 0.5
        s.receive_payload(pn, memoryview(bytes([P.F_PING])), now)
        pn += 1
        s.application_busy(now)
        if now >= s.next_timer():
            s.handle_timer(now)
    assert not s.closed


def test_handshakes_that_never_finish_make_room_for_ones_that_do():
    """bench_abuse's INITIAL flood from 253 addresses that answer RETRYs filled
    --max-connections with sessions that never sent a HELLO: TCP and UDP senders alike got
    BUSY.  Now a newcomer evicts the oldest session still without a HELLO."""
    admission = Admission(Limits(max_per_host=16, max_connections=8))
    cids = iter(range(1, 1 << 20))
    lst = Listener(b"s" * 32, UdpConfig(handshake_timeout=10.0), lambda: next(cids), admission=admission)
    now = 10.0
    flood = []
    for k in range(40):  # 40 addresses, one pending handshake each, never a HELLO
        now += 0.01
        session, new, _ = _open(lst, (f"198.51.100.{k}", 4000), 100 + k, now)
        assert new
        flood.append(session)
    assert len(lst.sessions) == 8 and admission.total == 8 and lst.stats["refused"] == 0
    assert all(s.closed and s.close_code == ErrorCode.BUSY for s in flood[:32])
    real, new, _ = _open(lst, ("203.0.113.9", 4000), 9999, now + 0.01)
    assert new and not real.closed
    real.established()
    for k in range(40, 80):  # the flood goes on: the real sender keeps its place
        now += 0.01
        _open(lst, (f"198.51.100.{k}", 4000), 100 + k, now)
    assert not real.closed and real.local_cid in lst.sessions and admission.total == 8


def test_many_addresses_each_within_its_rate_do_not_take_the_reserve_of_quiet_ones():
    """bench_abuse's flood: 253 addresses, each under its own INITIAL rate (the socket filter
    passes 1 in 8), all counted as 'asked little lately', so they emptied the half of the
    total budget kept for new senders, and a new sender got no answer for 15 s."""
    lst = Listener(b"s" * 32, UdpConfig(), lambda: 1)
    answered, new_sender = 0, []
    now = 100.0
    for step in range(30):  # 600 addresses x 10 INITIALs a second for 3 s: 6 000 a second
        for k in range(600):
            now += 0.1 / 600
            _, _, replies = lst.receive_datagram(padded_initial(7, 1, 1000 + k, b""),
                                                 (f"10.{k // 250}.{k % 250}.1", 4000), now)
            answered += bool(replies)
            if step in (10, 20, 29) and k == 300:  # a new sender tries, in the thick of it
                _, _, replies = lst.receive_datagram(padded_initial(7, 1, 5, b""), ("192.0.2.7", 4000), now)
                new_sender.append(bool(replies) and P.parse(replies[0]).ptype == P.RETRY)
    assert answered < 30 * 600  # the total budget held
    assert new_sender == [True, True, True]


def test_completed_handshakes_from_busy_addresses_are_a_budget_and_leave_a_new_sender_its_place():
    """bench_abuse's INITIAL flood: 253 addresses answer every RETRY, so the receiver created
    (and evicted, --max-connections 256) about 1 300 sessions a second -- its whole CPU --
    and a new sender's session was evicted before its HELLO arrived.  Now busy addresses get
    at most half of SESSION_RATE new sessions a second, and the session of an address that
    asked little lately is not evicted for theirs."""
    from ftx.core.udp.endpoint import SESSION_BURST, SESSION_RATE

    admission = Admission(Limits())
    cids = iter(range(1, 1 << 30))
    lst = Listener(b"s" * 32, UdpConfig(handshake_timeout=10.0), lambda: next(cids), admission=admission)
    now, created, new_sender = 100.0, 0, None
    scid = 1 << 20
    for step in range(5000):  # 4 s: 253 addresses, each within its own rate (as the socket filter
        now += 0.0008  # leaves the bench's flood), an INITIAL and, on a RETRY, its token INITIAL
        addr = (f"10.0.{step % 253}.1", 4000)
        scid += 1
        _, _, replies = lst.receive_datagram(padded_initial(7, 1, scid, b""), addr, now)
        if replies and P.parse(replies[0]).ptype == P.RETRY:
            token = P.parse_initial(P.parse(replies[0]).payload)[1]
            created += lst.receive_datagram(padded_initial(7, 2, scid, token), addr, now)[1]
        if step == 1250:  # a new sender, from another address, in the thick of it
            new_sender, new, _ = _open(lst, ("192.0.2.7", 9), 5, now)
            assert new
    assert 256 < created <= SESSION_BURST + SESSION_RATE * 4.0
    assert not new_sender.closed and new_sender.local_cid in lst.sessions  # 3 s later, still no HELLO
    new_sender.established()


def test_a_busy_address_sampled_by_the_socket_filter_stays_busy_while_it_floods():
    """The driver drops all but 1 in 8 token-less INITIALs of the addresses busy_hosts names
    (transport/udp_server.py); the Listener counts each that arrives 8 times, so an address that
    goes on flooding stays busy, and one that stops is soon not."""
    lst = Listener(b"s" * 32, UdpConfig(), lambda: 1)
    now = 100.0
    for k in range(200):  # 200 INITIALs in 1 s from one address: over its 16 a second
        now += 0.005
        lst.receive_datagram(padded_initial(7, 1, k, b""), ("10.0.0.1", 1), now)
    lst.receive_datagram(padded_initial(7, 1, 9999, b""), ("10.0.0.2", 1), now)
    assert lst.busy_hosts(now, 10) == ["10.0.0.1"]
    lst.sampled_hosts, lst.sample_weight = frozenset(["10.0.0.1"]), 8
    for k in range(250):  # it floods on at 200 a second: 1 in 8 arrive, for 10 s
        now += 0.04
        lst.receive_datagram(padded_initial(7, 1, 1000 + k, b""), ("10.0.0.1", 1), now)
        assert lst.busy_hosts(now, 10) == ["10.0.0.1"]
    assert lst.busy_hosts(now + 3.0, 10) == []  # it stopped: 16 a second refill its budget


# ---------------------------------------------------------------------------------------------
# the sender's own memory: control bytes written ahead
# ---------------------------------------------------------------------------------------------
def test_the_link_writer_waits_when_the_peer_acknowledges_nothing():
    """UdpLink.send() waits (as TCP's drain) once a congestion window of control bytes, at
    least SEND_BUFFER, is queued or unacknowledged: a sender reading a tree of small files no
    longer holds all it has read.  When the session ends, the waiting writer gets the error."""
    import asyncio

    from ftx.errors import TransportError
    from ftx.transport.udp_link import SEND_BUFFER, UdpLink
    import time

    sent: list = []

    async def main() -> None:
        session = UdpSession(1, 2, UdpConfig(), time.monotonic(), chunk_receiver=False)
        link = UdpLink(session, sent.extend, ("127.0.0.1", 9))  # a path that loses everything
        piece = [bytes(64 * 1024)]

        async def writer() -> int:
            written = 0
            while written < 64 * MIB:
                await link.send(piece)
                written += len(piece[0])
            return written

        task = asyncio.ensure_future(writer())
        deadline = asyncio.get_running_loop().time() + 10
        while session.stream_buffered < SEND_BUFFER and not task.done():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the writer is given time; it stays put
        assert not task.done()
        assert session.stream_buffered <= max(SEND_BUFFER, session.cc.cwnd) + 64 * 1024
        link.close()
        with pytest.raises(TransportError):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_a_waiting_link_writer_gets_an_error_when_the_pump_dies():
    """The link's pump ends without the session being closed (a bug of ours in a timer or in
    transmit): nothing will ever acknowledge or send the queued bytes, so a writer waiting for
    room must get an error, not wait forever."""
    import asyncio

    from ftx.errors import TransportError
    from ftx.transport.udp_link import SEND_BUFFER, UdpLink
    import time

    sent: list = []

    async def main() -> None:
        session = UdpSession(1, 2, UdpConfig(), time.monotonic(), chunk_receiver=False)
        link = UdpLink(session, sent.extend, ("127.0.0.1", 9))
        piece = [bytes(64 * 1024)]

        async def writer() -> None:
            while True:
                await link.send(piece)

        task = asyncio.ensure_future(writer())
        deadline = asyncio.get_running_loop().time() + 10
        while session.stream_buffered < SEND_BUFFER and not task.done():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done()

        def broken(*args, **kwargs):
            raise RuntimeError("a bug in the pump")

        session.transmit = broken
        link.wake()
        await asyncio.wait({link._pump_task}, timeout=5)
        assert link._pump_task.done()
        link._pump_task.exception()  # (retrieved)
        with pytest.raises(TransportError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_the_link_writer_waits_at_a_fixed_bound_whatever_the_congestion_window():
    """The control bytes a sender may hold unacknowledged follow the congestion window, but
    only up to SEND_BUFFER_MAX: a window estimated from a fast, long path (2.9 GB here: 10 GB/s
    x 100 ms) made the sender read and hold a whole tree of small files ahead of the peer."""
    import asyncio
    import time

    from ftx.transport.udp_link import SEND_BUFFER_MAX, UdpLink

    async def main() -> None:
        session = UdpSession(1, 2, UdpConfig(), time.monotonic(), chunk_receiver=False)
        session.cc.btl_bw, session.cc.min_rtt = 10e9, 0.1  # the model of a fast, long path
        assert session.cc.cwnd > 64 * MIB
        link = UdpLink(session, lambda bursts: None, ("127.0.0.1", 9))  # nothing ever acknowledged
        piece = [bytes(512 * 1024)]

        async def writer() -> None:
            for _ in range(128):  # 64 MiB
                await link.send(piece)

        task = asyncio.ensure_future(writer())
        deadline = time.monotonic() + 10
        while session.stream_buffered < SEND_BUFFER_MAX and not task.done():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the writer is given time; it stays put
        done = task.done()
        link.close()
        await asyncio.wait({task}, timeout=10)
        assert not done and session.stream_buffered <= SEND_BUFFER_MAX + len(piece[0])

    asyncio.run(main())


def test_the_send_buffer_holds_at_most_twice_what_is_unacknowledged():
    """A sender streaming a tree of small files: runs of ~500 KB written while ACKs free the
    front.  The buffer grew by doubling, so ~5 MB unacknowledged took a 16 MB buffer (and the
    UDP sender's peak RSS was ~30 MB above TCP's on 2 000 files of 1-64 KiB); now it grows by
    what it needs, and acknowledged bytes still leave it in batches: at most the bytes
    unacknowledged, as many acknowledged ones not yet dropped, and one write."""
    s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    rng = random.Random(5)
    piece = 512 * 1024
    largest = most_live = 0
    for _ in range(200):
        s.stream_write(bytes(rng.randint(piece // 2, piece)))
        largest = max(largest, len(s._sout))
        most_live = max(most_live, s.stream_buffered)
        s._sout_next = s._sout_end  # sent
        live_cap = rng.choice((3, 4, 5)) * MIB  # ACKs free the front unevenly
        if s.stream_buffered > live_cap:
            s._sout_acked.add(s._sout_base, s._sout_end - live_cap)
            s._trim_stream()
    assert most_live > 5 * MIB
    assert largest <= 2 * most_live + piece, (largest, most_live)


def test_chunk_buffers_kept_for_reuse_make_way_for_new_chunks_and_stream_bytes():
    """A receiver keeps the buffers of chunks it handed over for reuse (spares), and they count
    in its memory.  With a small --max-memory (24M: 3 MiB for UDP) two such 1 MiB spares and one
    chunk in progress filled it: every packet of a new chunk and every STREAM packet (the
    sender's FILE_END and DONE) was dropped as 'no buffer', and the transfer hung with its last
    file never settled.  Spares are memory the receiver may drop at any time: they give way."""
    from ftx.core.udp.reassembly import MemoryBudget

    budget = MemoryBudget(3 * MIB)
    budget.sessions += 1
    s = _receiver(budget=budget)
    rnd = random.Random(2)
    pn = 0

    def send(fid: int, index: int, data: bytes, upto: int) -> None:
        nonlocal pn
        csum = xxhash.xxh3_64_intdigest(data)
        for off in range(0, upto, 1400):
            s.receive_payload(pn, _chunk(fid, index, len(data), off, data[off:min(off + 1400, upto)], csum), 0.1)
            pn += 1

    for index in (0, 1):  # two chunks arrive, are handed over and come back as spares
        data = rnd.randbytes(MIB)
        send(1, index, data, len(data))
    for chunk in s.take_chunks():
        s.recycle(chunk[3])
    assert s._cin.spares.bytes == 2 * MIB
    send(2, 0, rnd.randbytes(MIB), MIB // 2)  # a chunk in progress (a spare's buffer)
    send(2, 1, rnd.randbytes(MIB), 1400)  # the next chunk begins
    s.receive_payload(pn, memoryview(P.encode_stream(0, b"the sender's FILE_END and DONE")), 0.1)
    assert s.stats["dropped_no_buffer"] == 0
    assert (2, 1) in s._cin.slots and s.stream_readable == 30
    assert s.held <= budget.total
    s.release_buffers()
    assert budget.used == 0


def test_a_packet_that_does_not_fit_still_completes_the_chunks_in_progress_it_carries():
    """A datagram is taken or dropped whole (only what is acknowledged is never sent again).  The
    sender packs a chunk's tail with the next chunk's head: when memory is full (four senders at
    --max-memory 24M), that packet was dropped -- and so was every resend of it -- because the new
    chunk found no room, while only the old chunk's completion, which the same packet carried,
    could make room.  Three sessions waited for a few bytes each, for ever.  The pieces of chunks
    in progress are kept (a resend repeats them harmlessly); the packet is still not acknowledged,
    and its resend, which now fits, is taken."""
    from ftx.core.udp.reassembly import MemoryBudget

    budget = MemoryBudget(MIB + 64 * 1024)
    budget.sessions += 1
    s = _receiver(budget=budget)
    rnd = random.Random(3)
    a, b = rnd.randbytes(MIB), rnd.randbytes(MIB)
    ca, cb = xxhash.xxh3_64_intdigest(a), xxhash.xxh3_64_intdigest(b)
    pn = 0
    for off in range(0, MIB - 100, 1400):  # all of chunk a but its last 100 bytes
        s.receive_payload(pn, _chunk(1, 0, MIB, off, a[off:min(off + 1400, MIB - 100)], ca), 0.1)
        pn += 1
    packet = bytes(_chunk(1, 0, MIB, MIB - 100, a[-100:], ca)) + bytes(_chunk(1, 1, MIB, 0, b[:1200], cb))
    s.receive_payload(pn, memoryview(packet), 0.2)
    assert pn not in s._recv  # not acknowledged: its new chunk found no room
    assert [c[:3] for c in s.take_chunks()] == [(1, 0, ca)]  # but the chunk in progress is whole
    s.receive_payload(pn + 1, memoryview(packet), 0.3)  # sent again: now it fits
    assert pn + 1 in s._recv and (1, 1) in s._cin.slots
    s.release_buffers()
    assert budget.used == 0


def test_stream_bytes_that_fill_the_gap_are_taken_when_out_of_order_ones_fill_the_memory():
    """Small files travel in the control stream.  When STREAM packets arrive out of order, the
    bytes after a gap are kept -- and count in the memory all sessions share.  Four senders of
    small files at --max-memory 24M each held their share in such bytes, so the resent packet
    that filled a gap found no room and was dropped, again and again: every session waited for
    the one packet that would have let its kept bytes go.  Bytes that extend the in-order stream
    (read at once, and releasing what waited behind them) may go past the budget as a new chunk
    may (up to twice it)."""
    from ftx.core.udp.reassembly import MemoryBudget

    budget = MemoryBudget(256 * 1024)
    budget.sessions += 1
    s = _receiver(budget=budget)
    data = random.Random(4).randbytes(400 * 1024)
    piece, pn = 1200, 0
    for off in range(piece, len(data), piece):  # all but the first packet: kept out of order
        s.receive_payload(pn, memoryview(P.encode_stream(off, data[off:off + piece])), 0.1)
        pn += 1
    assert s.stats["dropped_no_buffer"] and s.held > 200 * 1024  # the memory is full of them
    s.receive_payload(pn, memoryview(P.encode_stream(0, data[:piece])), 0.2)  # the gap's resend
    assert s.stream_readable >= 200 * 1024  # taken: what waited behind it is in order now
    assert budget.used <= 2 * budget.total
    s.release_buffers()
    assert budget.used == 0



def test_a_chunk_whose_start_found_no_memory_is_probed_from_its_start_and_finishes():
    """Four senders at --max-memory 24M: a chunk's first packets came while the other sessions
    held the memory and were dropped unacknowledged; its later packets were dropped too, being
    far into a chunk none of which had arrived.  With nothing acknowledged no loss is ever
    declared, and the probe timeouts sent new data -- further into the chunk, dropped in turn --
    so the chunk's start was never sent again, although the memory was free a moment later:
    'nothing sent was acknowledged for 15 s'.  A probe carries the oldest unacknowledged data."""
    import heapq

    from ftx.core.udp.reassembly import MemoryBudget

    budget = MemoryBudget(4 * MIB)
    other = _receiver(budget=budget)  # another sender's session
    r = _receiver(budget=budget)
    budget.sessions += 8  # (and more: a small share each)
    s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    rnd = random.Random(5)
    wire: list = []  # (arrival, seq, destination, datagram): 10 ms each way
    chunks: list = []
    clock = [0.0]

    def run(until, limit: float) -> None:
        now = clock[0]
        while not until() and now < limit and not s.closed:
            for x in (s, r):
                t = x.next_timer()
                if t is not None and now >= t:
                    x.handle_timer(now)
            while wire and wire[0][0] <= now:
                _, _, dest, d = heapq.heappop(wire)
                p = P.parse(d)
                dest.receive_payload(p.pn, p.payload, now)
            chunks.extend(r.take_chunks())
            for a, b in ((s, r), (r, s)):
                for d in a.datagrams_to_send(now):
                    heapq.heappush(wire, (now + 0.01, len(chunks) + rnd.random(), b, d))
            times = [x.next_timer() for x in (s, r)] + [wire[0][0] if wire else None]
            now = max(min(t for t in times if t is not None), now + 1e-4)
            clock[0] = now

    warm = [rnd.randbytes(MIB) for _ in range(4)]  # a first transfer: the window grows
    for i, data in enumerate(warm):
        s.send_chunk(1, i, xxhash.xxh3_64_intdigest(data), data)
    run(lambda: len(chunks) == 4, 10.0)
    assert [bytes(c[3]) for c in chunks] == warm and s.cc.cwnd > 100 * 1452
    big = rnd.randbytes(7 * MIB)  # the other session starts a big chunk: the memory is taken
    other.receive_payload(0, _chunk(9, 0, len(big), 0, big[:1400], xxhash.xxh3_64_intdigest(big)), clock[0])
    assert (9, 0) in other._cin.slots
    more = [rnd.randbytes(MIB) for _ in range(12)]  # more than the window holds: new data waits
    for i, data in enumerate(more):
        s.send_chunk(1, 4 + i, xxhash.xxh3_64_intdigest(data), data)
    t0 = clock[0]
    run(lambda: False, t0 + 0.1)
    assert r.stats["dropped_no_buffer"] > 50 and not r._cin.slots
    other.release_buffers()  # that session ends: the memory is free
    run(lambda: len(chunks) == 16, t0 + 30.0)
    assert not s.closed, s.close_reason
    assert sorted((c[0], c[1], bytes(c[3])) for c in chunks[4:]) == [(1, 4 + i, d) for i, d in enumerate(more)]
    assert clock[0] < t0 + 5.0  # a few probe timeouts, not the 15 s idle timeout


def test_probes_carry_the_oldest_unacknowledged_stream_and_chunk_bytes():
    """What a probe timeout sends when nothing was acknowledged: the first unacknowledged
    control-stream bytes, then the first unacknowledged bytes of the oldest chunk -- what a
    receiver that dropped everything for want of memory takes first -- not new data."""
    s = UdpSession(1, 2, UdpConfig(), 0.0, chunk_receiver=False)
    s.stream_write(random.Random(7).randbytes(20_000))
    for i in range(3):
        data = random.Random(i).randbytes(MIB)
        s.send_chunk(1, i, xxhash.xxh3_64_intdigest(data), data)
    now = 0.0
    while s._cout[(1, 0)].next_off < 10_000 and now < 1.0:  # all the stream and some chunk data in flight (paced)
        s.datagrams_to_send(now)
        now += 0.001
    assert s._sout_next == 20_000 and not s.stats["probes"]
    t = max(s.recovery.timer(), now)  # the probe timeout
    s.handle_timer(t)
    probes = [P.parse_frames(P.parse(d).payload) for d in s.datagrams_to_send(t)][:2]  # (new data may follow)
    assert s.stats["probes"] == 2
    (stream,), (chunk,) = probes
    assert isinstance(stream, P.StreamFrame) and stream.offset == 0 and len(stream.data) > 1000
    assert isinstance(chunk, P.ChunkFrame) and (chunk.file_id, chunk.index, chunk.offset) == (1, 0, 0)
