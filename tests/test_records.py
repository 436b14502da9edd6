"""Sealed TCP records (ftx/core/secure/records.py): bytes in, bytes out, no sockets.

Whatever happens to the record stream on the way (a flipped bit, a dropped,
duplicated, reordered or replayed record, a cut), the opener returns only a
prefix of what was sealed and then raises AuthError: never different plaintext.
"""

import bisect
import random
from pathlib import Path

import pytest

from ftx.core.secure import AuthError
from ftx.core.secure.keys import AES_256_GCM, CHACHA20_POLY1305, TAG_SIZE, Direction
from ftx.core.secure.records import (
    DIRECT_MIN,
    HEADER_SIZE,
    IN_CAP,
    MAX_RECORD,
    MIN_READ,
    OUT_CAP,
    OVERHEAD,
    TAIL,
    RecordOpener,
    RecordSealer,
)

SECRET = bytes(range(32))


def pair(cipher=AES_256_GCM, budget=None, **kw):
    return RecordSealer(Direction(cipher, SECRET), **kw), RecordOpener(Direction(cipher, SECRET), budget=budget)


def split_records(wire: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(wire):
        size = int.from_bytes(wire[i : i + 4], "big") & 0x7FFFFFFF
        out.append(wire[i : i + size + OVERHEAD])
        i += size + OVERHEAD
    return out


def open_all(opener: RecordOpener, wire: bytes, step: int | None = None) -> bytes:
    if step is None:
        return opener.feed(wire)
    return b"".join(opener.feed(wire[i : i + step]) for i in range(0, len(wire), step))


@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
@pytest.mark.parametrize("size", [1, 15, 16, MAX_RECORD - 1, MAX_RECORD, MAX_RECORD + 1, 3 * MAX_RECORD + 7])
def test_roundtrip_sizes(cipher, size):
    sealer, opener = pair(cipher)
    data = random.Random(size).randbytes(size)
    wire = sealer.seal(data)
    records = split_records(wire)
    assert len(wire) == sealer.sealed_size(size) == size + OVERHEAD * len(records)
    assert [len(r) - OVERHEAD for r in records] == [j - i for i, j in sealer.pieces(size)]
    assert data not in wire
    assert open_all(opener, wire) == data
    opener.receive_eof()


@pytest.mark.parametrize("step", [1, 3, 4, 5, 17, 4096, 70000])
def test_any_split_of_the_input(step):
    sealer, opener = pair(max_record=1000)
    data = random.Random(step).randbytes(5000)
    wire = sealer.seal(data) + sealer.seal(b"tail")
    assert open_all(opener, wire, step) == data + b"tail"


def test_buffers_small_are_coalesced_large_have_records_of_their_own():
    sealer, opener = pair()
    small = [b"a" * 40, b"b" * 100, b"c" * 3]
    big = b"d" * (MAX_RECORD + 10)
    wire = b"".join(bytes(v) for v in sealer.seal_buffers(small + [big] + small))
    sizes = [len(r) - OVERHEAD for r in split_records(wire)]
    assert sizes == [143, MAX_RECORD, 10, 143]
    assert opener.feed(wire) == b"".join(small) + big + b"".join(small)


def test_a_default_chunk_is_one_record_and_comes_out_in_one_write():
    """The hot path: a DATA frame of a default 1 MiB chunk (its 40 header bytes, then the chunk)
    costs four AEAD calls and one write: the chunk ends in a TAIL record, so that the receiver
    has room behind the large record before it for its tag (it opens that one in place)."""
    from ftx.core.manifest import DEFAULT_CHUNK_SIZE

    sealer, opener = pair()
    chunk = random.Random(4).randbytes(DEFAULT_CHUNK_SIZE)
    views = [bytes(v) for v in sealer.seal_buffers([b"h" * 40, chunk])]
    assert len(views) == 1
    assert [len(r) - OVERHEAD for r in split_records(views[0])] == [40, MAX_RECORD,
                                                                    DEFAULT_CHUNK_SIZE - MAX_RECORD - TAIL, TAIL]
    assert MAX_RECORD == DEFAULT_CHUNK_SIZE // 2
    assert opener.feed(views[0]) == b"h" * 40 + chunk


def test_a_batch_larger_than_the_output_buffer_comes_out_in_pieces():
    sealer, opener = pair()
    data = random.Random(1).randbytes(3 * OUT_CAP)
    views = []
    for v in sealer.seal_buffers([data[: OUT_CAP], b"x", data[OUT_CAP:]]):
        assert len(v) <= OUT_CAP
        views.append(bytes(v))  # the buffer is reused once the generator resumes
    assert len(views) >= 3
    assert opener.feed(b"".join(views)) == data[:OUT_CAP] + b"x" + data[OUT_CAP:]
    assert len(sealer._out) <= OUT_CAP


def test_key_update_flips_the_phase_and_the_opener_follows():
    sealer, opener = pair(update_after=3)
    chunks = [bytes([i]) * 100 for i in range(20)]
    wire = b"".join(sealer.seal(c) for c in chunks)
    phases = [r[0] >> 7 for r in split_records(wire)]
    assert phases == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    assert sealer.phase == 6
    assert open_all(opener, wire, 50) == b"".join(chunks)
    assert opener.phase == 6


def test_key_update_before_the_usage_limit():
    """Direction.should_update (half of the confidentiality limit) triggers the update unasked."""
    d = Direction(AES_256_GCM, SECRET)
    d.sealed = 2**22  # half of AES-GCM's 2^23 records: as if that many had gone
    sealer = RecordSealer(d)
    wire = sealer.seal(b"x")
    assert sealer.phase == 1 and wire[0] >> 7 == 1
    assert RecordOpener(Direction(AES_256_GCM, SECRET)).feed(wire) == b"x"


def test_records_sealed_after_an_update_do_not_open_under_the_old_key():
    sealer, opener = pair(update_after=1)
    r0, r1 = split_records(sealer.seal(b"a") + sealer.seal(b"b"))
    # r1 is under phase 1; put phase 0 in its header: wrong AAD and wrong key
    forged = bytes([r1[0] & 0x7F]) + r1[1:]
    assert opener.feed(r0) == b"a"
    with pytest.raises(AuthError):
        opener.feed(forged)


def _attacked(wire: bytes, records: list[bytes], attack: str, rng: random.Random) -> bytes:
    if attack == "flip":
        pos = rng.randrange(len(wire))
        return wire[:pos] + bytes([wire[pos] ^ (1 << rng.randrange(8))]) + wire[pos + 1 :]
    i = rng.randrange(1, len(records) - 1)
    r = list(records)
    if attack == "drop":
        del r[i]
    elif attack == "duplicate":
        r.insert(i, r[i])
    elif attack == "reorder":
        r[i], r[i + 1] = r[i + 1], r[i]
    elif attack == "replay":
        r.insert(i + 1, r[rng.randrange(i)])
    elif attack == "truncate":
        cut = rng.randrange(1, len(r[i]))
        r = r[:i] + [r[i][:cut]]
    return b"".join(r)


@pytest.mark.parametrize("attack", ["flip", "drop", "duplicate", "reorder", "replay", "truncate"])
@pytest.mark.parametrize("update_after", [None, 2])
def test_tampering_never_yields_different_plaintext(attack, update_after):
    rng = random.Random(f"{attack}-{update_after}")
    for trial in range(40):
        sealer, opener = pair(max_record=64, update_after=update_after)
        data = rng.randbytes(rng.randrange(200, 800))
        wire = sealer.seal(data)
        bad = _attacked(wire, split_records(wire), attack, rng)
        got = bytearray()
        with pytest.raises(AuthError):
            for i in range(0, len(bad), 37):
                got += opener.feed(bad[i : i + 37])
            opener.receive_eof()
        assert data.startswith(bytes(got)), (attack, trial)
        with pytest.raises(AuthError):  # dead from now on
            opener.feed(b"")


def test_a_cut_at_a_record_boundary_is_left_to_the_session():
    sealer, opener = pair()
    assert opener.feed(sealer.seal(b"abc")) == b"abc"
    opener.receive_eof()  # no error: the ftx session (no DONE yet) reports it


@pytest.mark.parametrize("length", [0, MAX_RECORD + 1, 0x7FFFFFFF])
def test_bad_lengths_are_refused_before_anything_is_allocated_for_them(length):
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    with pytest.raises(AuthError, match="record"):
        opener.feed(length.to_bytes(4, "big") + b"\0" * 100)
    assert opener.capacity < DIRECT_MIN  # before, every record passed through it: MAX_RECORD + OVERHEAD at least


def test_a_claimed_max_record_costs_at_most_one_record_of_buffer():
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    assert opener.feed(MAX_RECORD.to_bytes(4, "big") + b"\0" * 10) == b""
    opener.get_buffer()
    assert opener.capacity <= MAX_RECORD + OVERHEAD
    assert opener.missing() == MAX_RECORD + OVERHEAD - 14


def test_buffer_grows_only_with_what_arrives_and_trims():
    sealer, opener = pair()
    wire = sealer.seal(random.Random(2).randbytes(8 * MAX_RECORD))
    pos = 0
    while pos < len(wire):  # a reader that always gets as much as it is offered
        while opener.next_size() is not None:
            opener.open()
        buf = opener.get_buffer()
        n = min(len(buf), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        opener.buffer_updated(n)
        pos += n
        assert opener.capacity <= IN_CAP
    while opener.next_size() is not None:
        opener.open()
    assert opener.capacity > MAX_RECORD  # it did grow to read ahead
    opener.trim()
    assert opener.capacity == 0


def test_directions_do_not_open_each_other():
    a = Direction(AES_256_GCM, SECRET)
    b = Direction(AES_256_GCM, bytes(32))
    with pytest.raises(AuthError):
        RecordOpener(b).feed(RecordSealer(a).seal(b"hello"))


def test_open_into_a_caller_buffer():
    sealer, opener = pair()
    wire = sealer.seal(b"0123456789")
    buf = opener.get_buffer()
    buf[: len(wire)] = wire
    opener.buffer_updated(len(wire))
    assert opener.next_size() == 10
    target = bytearray(32)
    opener.open_into(memoryview(target)[5:15])
    assert target[5:15] == b"0123456789"
    assert opener.next_size() is None


def test_vector():
    """protocol.md, "Sealed TCP records": the first two records of a direction, the second
    after a forced key update."""
    d = Direction(AES_256_GCM, SECRET)
    assert d.key.hex() == "1600993184391656a3a2b4b714ee420c3c95b79c39b76dd5b92c137698a9ac09"
    assert d.iv.hex() == "86905d6463beb4cdbf8e9b66"
    n = d.next()
    assert n.secret.hex() == "bb697b67df2e7ab005c045948a29e1fa064d66e10afe8d4c64d13bcd87f8d352"
    assert n.key.hex() == "84eaa44481a8d9b99a73e4e22957307e64b196aa037f96ea005b6016b7becc5f"
    assert n.nonce(1).hex() == "72ad50167a3c2703a5e8d34e"
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), update_after=1)
    first, second = sealer.seal(b"ftx"), sealer.seal(b"ftx")
    assert first.hex() == VECTOR_FIRST
    assert second.hex() == VECTOR_SECOND
    assert RecordOpener(Direction(AES_256_GCM, SECRET)).feed(first + second) == b"ftxftx"
    assert HEADER_SIZE == 4
    spec = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
    section = spec[spec.index("### 20.4") :]
    for record in (first, second):
        assert f"{record[:4].hex()} {record[4:].hex()}" in section
    for value in (d.key, d.iv, n.secret, n.key, n.iv, n.nonce(1)):
        assert value.hex() in section


VECTOR_FIRST = "000000032aa0b242d6d7a0ae3eb15b5c0c68e3ae1ead52"
VECTOR_SECOND = "800000033862bae4284da439917983079f1ed70dd978f8"


# -- property: any input opens to a prefix of what was sealed, or raises AuthError ----------
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("xidt")), max_size=3),
    step=st.integers(1, 400),
    update_after=st.sampled_from([None, 1, 2]),
)
def test_mutated_streams_never_open_to_other_plaintext(pieces, edits, step, update_after):
    sealer, opener = pair(max_record=128, update_after=update_after)
    data = b"".join(pieces)
    wire = bytearray(b"".join(sealer.seal(p) for p in pieces))
    for pos, byte, op in edits:  # x: xor a byte, i: insert one, d: delete one, t: truncate
        pos %= len(wire) + 1
        if op == "x" and pos < len(wire):
            wire[pos] ^= byte or 1
        elif op == "i":
            wire[pos:pos] = bytes([byte])
        elif op == "d" and pos < len(wire):
            del wire[pos]
        elif op == "t":
            del wire[pos:]
    got = bytearray()
    try:
        for i in range(0, len(wire), step):
            got += opener.feed(bytes(wire[i : i + step]))
            assert opener.capacity <= (MAX_RECORD + OVERHEAD if edits else MIN_READ)  # a forged length: one record
        opener.receive_eof()
    except AuthError:
        pass
    assert data.startswith(bytes(got))
    if not edits:
        assert bytes(got) == data


@settings(max_examples=300, deadline=None, derandomize=True)
@given(junk=st.binary(max_size=2000))
def test_junk_is_an_auth_error_or_needs_more(junk):
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    try:
        assert opener.feed(junk) == b""  # nothing opens without the key
        opener.receive_eof()
        assert not junk
    except AuthError:
        pass
    assert opener.capacity <= MAX_RECORD + OVERHEAD


def test_a_batch_abandoned_half_way_leaves_nothing_for_the_next():
    """A send cancelled between two writes (the generator dropped) must not resurface the small
    buffers it had gathered, unsent, in the next batch."""
    sealer, opener = pair()
    big = b"b" * (OUT_CAP - 3 * OVERHEAD)  # three records (2 x MAX_RECORD and the rest) fill the output buffer exactly
    gen = sealer.seal_buffers([big, b"a" * 100])  # "a" waits in the stage when the buffer is handed out
    first = bytes(next(gen))
    gen.close()
    assert opener.feed(first) == big
    assert opener.feed(sealer.seal(b"next")) == b"next"


def test_the_opener_buffer_counts_in_the_receivers_memory_budget():
    """A record is held whole before it opens: its buffer is taken from --max-memory's budget,
    refused with BufferLimit (ERROR BUSY) when the budget is spent, and given back on release."""
    from ftx.core.frames import BufferBudget, BufferLimit

    budget = BufferBudget(MAX_RECORD)
    sealer, opener = pair()
    opener.use_budget(budget)
    assert opener.feed(sealer.seal(b"small")) == b"small"
    assert 0 < budget.used <= MIN_READ
    with pytest.raises(BufferLimit, match="--max-memory"):
        opener.feed(sealer.seal(b"m" * MAX_RECORD))  # a whole record plus what is held: over
    opener.release()
    assert budget.used == 0
    roomy = BufferBudget(IN_CAP)
    sealer, opener = pair(budget=None)
    opener.use_budget(roomy)
    assert opener.feed(sealer.seal(b"m" * MAX_RECORD)) == b"m" * MAX_RECORD
    assert roomy.used == opener.capacity
    opener.trim()
    assert roomy.used == opener.capacity == 0


# -- large records read and opened in their final place (begin_direct / finish_direct) ----------
def drive(opener: RecordOpener, wire: bytes, cuts, room: int = TAG_SIZE, plain: int | None = None,
          errors: list | None = None) -> tuple[bytes, int]:
    """What ftx/transport/tcp.py does, on bytes: input arrives in pieces ending at ``cuts``; a
    large record goes into the output's free space (``room`` bytes behind its plaintext), read to
    its end and no further, and opens there; the rest goes through the opener's buffer.
    Returns (plaintext, records read direct).  ``plain``: the plaintext's length (else from the headers).
    ``errors``: an AuthError is put there and the plaintext opened before it returned."""
    if plain is None:
        plain = sum(len(r) - OVERHEAD for r in split_records(wire))
    out = bytearray(plain + room)  # the plaintext, then room
    filled = direct = pos = 0
    cuts = sorted(set(c for c in cuts if 0 < c < len(wire))) + [len(wire)]

    def arrive(buf) -> int:  # one read: up to the next cut
        nonlocal pos
        limit = cuts[bisect.bisect_right(cuts, pos)]
        n = min(len(buf), limit - pos)
        buf[:n] = wire[pos : pos + n]
        pos += n
        return n

    try:
        while True:
            while (size := opener.next_size()) is not None:
                opener.open_into(memoryview(out)[filled : filled + size])
                filled += size
            if (size := opener.direct_size()) and len(out) - filled >= size + TAG_SIZE:
                target = memoryview(out)[filled : filled + size + TAG_SIZE]
                got = opener.begin_direct(target)
                while got < len(target):
                    n = arrive(target[got:])
                    if not n:
                        opener.receive_eof()
                    got += n
                opener.finish_direct(target)
                filled += size
                direct += 1
                continue
            if pos == len(wire):
                opener.receive_eof()
                return bytes(out[:filled]), direct
            buf = opener.get_buffer()
            opener.buffer_updated(arrive(buf))
    except AuthError as exc:
        if errors is None:
            raise
        errors.append(exc)
        return bytes(out[:filled]), direct


def chunk_wire(sealer: RecordSealer, size: int = 2 * DIRECT_MIN + TAIL + 3) -> tuple[bytes, bytes]:
    data = random.Random(size).randbytes(size)
    parts = [b"h" * 40, data, b"end" * 5]
    return b"".join(bytes(v) for v in sealer.seal_buffers(parts)), b"".join(parts)


def test_a_large_buffer_ends_in_a_tail_record_so_the_one_before_opens_in_place():
    """The receiver's frame buffer ends where the chunk ends (``room=0``): a large record there
    has no room for its tag behind it, so the sealer cuts a small record off the end."""
    sealer, opener = pair()
    wire, plain = chunk_wire(sealer, 2 * MAX_RECORD)
    assert [len(r) - OVERHEAD for r in split_records(wire)] == [40, MAX_RECORD, MAX_RECORD - TAIL, TAIL, 15]
    assert drive(opener, wire, [], room=0) == (plain, 2)
    sealer, opener = pair(max_record=DIRECT_MIN)
    wire, plain = chunk_wire(sealer)  # a short last piece is left as it is: the large ones have room
    assert [len(r) - OVERHEAD for r in split_records(wire)] == [40, DIRECT_MIN, DIRECT_MIN, TAIL + 3, 15]
    assert drive(opener, wire, [], room=0) == (plain, 2)
    # a peer that splits otherwise: the record with no room behind it goes through the opener's buffer
    sealer, opener = pair()
    plain = random.Random(3).randbytes(40 + 2 * MAX_RECORD)
    out, n = bytearray(len(plain) + 3 * OVERHEAD), 0
    for piece in (plain[:40], plain[40 : 40 + MAX_RECORD], plain[40 + MAX_RECORD :]):
        n += sealer.seal_record_into(piece, memoryview(out)[n:])
    assert drive(opener, bytes(out), [], room=0) == (plain, 1)


@pytest.mark.parametrize("cipher", [AES_256_GCM, CHACHA20_POLY1305])
def test_a_direct_record_split_at_every_boundary(cipher):
    """Reads ending at every byte around the headers, the first ciphertext bytes and the tags of
    the large records; each time the same plaintext, and the large records opened in place."""
    sealer = RecordSealer(Direction(cipher, SECRET), max_record=DIRECT_MIN)
    wire, plain = chunk_wire(sealer)
    starts, i = [], 0
    for rec in split_records(wire):
        starts.append(i)
        i += len(rec)
    edges = sorted({p for s in starts + [len(wire)] for p in range(s - 24, s + 24)})
    for cut in edges:
        opener = RecordOpener(Direction(cipher, SECRET))
        got, direct = drive(opener, wire, [cut])
        assert got == plain and direct == 2, cut
    opener = RecordOpener(Direction(cipher, SECRET))
    assert drive(opener, wire, range(0, len(wire), 1)) == (plain, 2)  # one byte per read
    opener = RecordOpener(Direction(cipher, SECRET))
    assert drive(opener, wire, range(0, len(wire), 4093)) == (plain, 2)


def test_a_direct_record_with_a_flipped_tag_or_body_bit_does_not_open():
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN)
    wire, _ = chunk_wire(sealer)
    second = len(split_records(wire)[0])
    for pos in (second + 4, second + 4 + DIRECT_MIN, second + 4 + DIRECT_MIN + 15):  # body, tag, tag
        bad = bytearray(wire)
        bad[pos] ^= 1
        opener = RecordOpener(Direction(AES_256_GCM, SECRET))
        with pytest.raises(AuthError):
            drive(opener, bytes(bad), [second + 100])
        assert opener.number == 1  # only the small header record opened
        with pytest.raises(AuthError):
            opener.next_size()  # and it stays failed


def test_a_cut_inside_a_direct_record_is_an_auth_error():
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN)
    wire, _ = chunk_wire(sealer)
    second = len(split_records(wire)[0])
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    with pytest.raises(AuthError, match="middle of a sealed record"):
        drive(opener, wire[: second + 1000], [second + 10])


def test_direct_records_across_key_updates():
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN, update_after=1)
    wires, plains = zip(*(chunk_wire(sealer, 3 * DIRECT_MIN + TAIL + i) for i in range(3)))
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    assert drive(opener, b"".join(wires), [5, 70000, 140001]) == (b"".join(plains), 9)
    assert opener.phase == sealer.phase > 10


def test_direct_reads_keep_the_openers_buffer_small():
    """Large records do not pass through the opener's buffer: it stays small."""
    sealer, opener = pair()
    parts = [b"h" * 40, random.Random(2).randbytes(4 * MAX_RECORD)] * 2
    wire = b"".join(bytes(v) for v in sealer.seal_buffers(parts))
    assert drive(opener, wire, range(0, len(wire), 256 * 1024)) == (b"".join(parts), 8)
    assert opener.capacity < DIRECT_MIN  # before, every record passed through it: MAX_RECORD + OVERHEAD at least


def test_direct_misuse_is_refused():
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN)
    wire, _ = chunk_wire(sealer)
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    assert opener.direct_size() == 0
    opener.feed(wire[: len(split_records(wire)[0]) + 10])
    assert opener.next_size() is None and opener.direct_size() == DIRECT_MIN
    with pytest.raises(ValueError):
        opener.begin_direct(bytearray(DIRECT_MIN))  # no room for the tag
    target = memoryview(bytearray(DIRECT_MIN + TAG_SIZE))
    assert opener.begin_direct(target) == 6
    with pytest.raises(ValueError):
        opener.get_buffer()
    with pytest.raises(ValueError):
        opener.finish_direct(target[:-1])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255), st.sampled_from("xidt")), max_size=3),
    cuts=st.lists(st.integers(0, 10**7), max_size=6),
    update_after=st.sampled_from([None, 1]),
)
def test_mutated_streams_read_direct_never_open_to_other_plaintext(edits, cuts, update_after):
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN, update_after=update_after)
    data = random.Random(5).randbytes(3 * DIRECT_MIN + 100)
    wire = bytearray(b"".join(bytes(v) for v in sealer.seal_buffers([b"h" * 40, data, b"t" * 9])))
    for pos, byte, op in edits:  # as above
        pos %= len(wire) + 1
        if op == "x" and pos < len(wire):
            wire[pos] ^= byte or 1
        elif op == "i":
            wire[pos:pos] = bytes([byte])
        elif op == "d" and pos < len(wire):
            del wire[pos]
        elif op == "t":
            del wire[pos:]
    opener, errors = RecordOpener(Direction(AES_256_GCM, SECRET)), []
    got, direct = drive(opener, bytes(wire), [c % (len(wire) + 1) for c in cuts], plain=len(wire), errors=errors)
    assert opener.capacity <= MAX_RECORD + OVERHEAD
    want = b"h" * 40 + data + b"t" * 9
    assert want.startswith(got)  # what opened before an AuthError, if any: a prefix
    if not edits:
        assert got == want and direct == 3 and not errors


def test_the_openers_buffer_shrinks_once_records_come_direct():
    """A connection's first chunk may not go direct (the frame buffer grows with what arrives):
    its records pass through the opener's buffer, which grows to hold one; the first record that
    comes direct gives that memory back (to the --max-memory budget too)."""
    from ftx.core.frames import BufferBudget

    budget = BufferBudget(4 << 20)
    sealer, opener = pair(budget=budget)
    first = random.Random(8).randbytes(2 * MAX_RECORD)
    wire = b"".join(bytes(v) for v in sealer.seal_buffers([b"h" * 40, first]))
    assert opener.feed(wire) == b"h" * 40 + first  # the buffer path: whole records held
    assert opener.capacity >= MAX_RECORD + OVERHEAD and budget.used == opener.capacity
    wire, plain = chunk_wire(sealer, 2 * MAX_RECORD)
    assert drive(opener, wire, range(0, len(wire), 100_000)) == (plain, 2)
    assert opener.capacity <= 2 * MIN_READ and budget.used == opener.capacity


def test_next_record_agrees_with_next_size_and_direct_size():
    """The driver's one call per record (``next_record``) says what the two calls would: the size
    of a whole record, minus the size of one that may go direct, 0 when more must arrive."""
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), max_record=DIRECT_MIN)
    wire, plain = chunk_wire(sealer)
    seen = set()
    for step in (1, 7, 4093):
        opener, out, filled, pos = RecordOpener(Direction(AES_256_GCM, SECRET)), bytearray(len(plain)), 0, 0
        while True:
            whole = opener.next_size()
            direct = opener.direct_size()
            kind = opener.next_record()
            assert kind == (whole if whole is not None else -direct), (step, pos)
            seen.add((kind > 0) - (kind < 0))
            if kind > 0:
                opener.open_into(memoryview(out)[filled : filled + kind])
                filled += kind
                continue
            if pos == len(wire):
                break
            buf = opener.get_buffer()
            n = min(len(buf), step, len(wire) - pos)
            buf[:n] = wire[pos : pos + n]
            pos += n
            opener.buffer_updated(n)
        assert bytes(out) == plain
    assert seen == {-1, 0, 1}


def test_open_in_place_gives_the_plaintext_where_the_record_lay():
    """A record opened in the opener's own buffer (no new buffer for it): the same plaintext as
    ``open``, the buffer reused after it, and a tampered record an AuthError."""
    sealer = RecordSealer(Direction(AES_256_GCM, SECRET), update_after=2)
    parts = [random.Random(i).randbytes(n) for i, n in enumerate((300, 70_000, 5, MAX_RECORD))]
    wire = b"".join(sealer.seal(p) for p in parts)
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    got, pos = [], 0
    while pos < len(wire) or opener.next_size() is not None:
        if opener.next_size() is not None:
            view = opener.open_in_place()
            assert view.obj is opener._buf  # in the opener's buffer, not a copy
            got.append(bytes(view))
            del view
            continue
        buf = opener.get_buffer()
        n = min(len(buf), 9000, len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        del buf
        pos += n
        opener.buffer_updated(n)
    assert b"".join(got) == b"".join(parts) and len(got) == 6  # the large ones end in a TAIL record
    bad = bytearray(RecordSealer(Direction(AES_256_GCM, SECRET)).seal(b"secret"))
    bad[6] ^= 1
    opener = RecordOpener(Direction(AES_256_GCM, SECRET))
    buf = opener.get_buffer()
    buf[: len(bad)] = bad
    del buf
    opener.buffer_updated(len(bad))
    assert opener.next_size() == 6
    with pytest.raises(AuthError):
        opener.open_in_place()
    with pytest.raises(AuthError):
        opener.next_size()
