"""Unit tests of RangeSet and its varint wire form."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.ranges import RangeSet, read_varint, write_varint
from ftx.errors import RemoteProtocolError

SETTINGS = settings(max_examples=150, deadline=None)
N = 120  # model universe: integers 0..N-1


def canonical(rs: RangeSet) -> None:
    """Sorted, non-empty, non-overlapping and non-adjacent ranges."""
    ranges = list(rs)
    for a, b in ranges:
        assert a < b
    for (a, b), (c, d) in zip(ranges, ranges[1:]):
        assert b < c, f"ranges {a, b} and {c, d} overlap or touch"


def check_against(rs: RangeSet, model: set[int]) -> None:
    canonical(rs)
    assert list(rs.values()) == sorted(model)
    assert rs.count() == len(model)
    assert bool(rs) == bool(model)
    for x in range(-2, N + 2):
        assert (x in rs) == (x in model)
    pe = 0
    while pe in model:
        pe += 1
    assert rs.prefix_end() == pe


# -- add -----------------------------------------------------------------------------
def test_add_in_order_single_values_merges():
    rs = RangeSet()
    for i in range(100):
        rs.add(i)
    assert list(rs) == [(0, 100)]
    assert len(rs) == 1 and rs.count() == 100


def test_add_in_order_with_gaps():
    rs = RangeSet()
    for i in [0, 1, 2, 5, 6, 9]:
        rs.add(i)
    assert list(rs) == [(0, 3), (5, 7), (9, 10)]


def test_add_out_of_order_fills_holes():
    rs = RangeSet()
    order = list(range(50))
    random.Random(3).shuffle(order)
    for i in order[:-1]:
        rs.add(i)
    assert (order[-1] in rs) is False
    assert rs.count() == 49
    rs.add(order[-1])
    assert list(rs) == [(0, 50)]


def test_add_overlapping_and_adjacent():
    rs = RangeSet([(10, 20), (30, 40), (50, 60)])
    rs.add(20, 25)  # adjacent on the right of the first
    assert list(rs) == [(10, 25), (30, 40), (50, 60)]
    rs.add(5, 10)  # adjacent on the left
    assert list(rs) == [(5, 25), (30, 40), (50, 60)]
    rs.add(24, 31)  # overlaps two
    assert list(rs) == [(5, 40), (50, 60)]
    rs.add(0, 100)  # swallows everything
    assert list(rs) == [(0, 100)]
    rs.add(40, 50)  # inside: no change
    assert list(rs) == [(0, 100)]


def test_add_between_without_touching():
    rs = RangeSet([(0, 2), (10, 12)])
    rs.add(5, 7)
    assert list(rs) == [(0, 2), (5, 7), (10, 12)]
    rs.add(3)
    assert list(rs) == [(0, 2), (3, 4), (5, 7), (10, 12)]
    rs.add(2)
    rs.add(4)
    assert list(rs) == [(0, 7), (10, 12)]


def test_add_empty_or_reversed_is_a_no_op():
    rs = RangeSet([(1, 3)])
    rs.add(5, 5)
    rs.add(9, 4)
    assert list(rs) == [(1, 3)]


def test_constructor_accepts_unsorted_overlapping():
    assert list(RangeSet([(50, 60), (0, 10), (5, 20), (20, 21)])) == [(0, 21), (50, 60)]


# -- subtract, complement, covers -------------------------------------------------------
def test_subtract():
    rs = RangeSet([(0, 10), (20, 30)])
    rs.subtract(5, 25)
    assert list(rs) == [(0, 5), (25, 30)]
    rs.subtract(0, 1)
    assert list(rs) == [(1, 5), (25, 30)]
    rs.subtract(2, 3)  # split a range
    assert list(rs) == [(1, 2), (3, 5), (25, 30)]
    rs.subtract(7, 7)
    rs.subtract(100, 200)
    assert list(rs) == [(1, 2), (3, 5), (25, 30)]
    rs.subtract(0, 1000)
    assert list(rs) == [] and not rs


def test_complement():
    rs = RangeSet([(2, 4), (6, 8)])
    assert list(rs.complement(0, 10)) == [(0, 2), (4, 6), (8, 10)]
    assert list(rs.complement(3, 7)) == [(4, 6)]
    assert list(rs.complement(2, 4)) == []
    assert list(RangeSet().complement(0, 5)) == [(0, 5)]
    assert list(RangeSet([(0, 5)]).complement(0, 5)) == []
    assert list(rs.complement(5, 5)) == []


def test_covers():
    rs = RangeSet([(0, 10), (20, 30)])
    assert rs.covers(0, 10) and rs.covers(3, 7) and rs.covers(20, 30)
    assert not rs.covers(0, 11)
    assert not rs.covers(9, 21)
    assert not rs.covers(15, 16)
    assert rs.covers(15, 15)  # empty interval
    assert not RangeSet().covers(0, 1)
    assert RangeSet().covers(0, 0)


def test_prefix_end_count_contains():
    assert RangeSet().prefix_end() == 0
    assert RangeSet([(1, 5)]).prefix_end() == 0
    rs = RangeSet([(0, 5), (7, 9)])
    assert rs.prefix_end() == 5
    assert rs.count() == 7
    assert len(rs) == 2
    assert 0 in rs and 4 in rs and 5 not in rs and 7 in rs and 9 not in rs and -1 not in rs


def test_equality_and_clear():
    a = RangeSet([(0, 3)])
    b = RangeSet()
    b.add(0)
    b.add(1, 3)
    assert a == b
    assert a != RangeSet([(0, 4)])
    assert a != [(0, 3)]
    a.clear()
    assert a == RangeSet() and not a


# -- model-based -----------------------------------------------------------------------
interval = st.tuples(st.integers(0, N), st.integers(0, N))
op = st.tuples(st.sampled_from(["add", "add1", "sub"]), interval)


@SETTINGS
@given(ops=st.lists(op, max_size=40), q=st.lists(interval, min_size=1, max_size=5))
def test_against_set_model(ops, q):
    rs, model = RangeSet(), set()
    for kind, (a, b) in ops:
        if kind == "add":
            rs.add(a, b)
            model |= set(range(a, b))
        elif kind == "add1":
            rs.add(a)
            model.add(a)
        else:
            rs.subtract(a, b)
            model -= set(range(a, b))
        check_against(rs, model)
    for a, b in q:
        assert rs.covers(a, b) == set(range(a, b)).issubset(model)
        comp = rs.complement(a, b)
        canonical(comp)
        assert set(comp.values()) == set(range(a, b)) - model
    # wire form
    enc = rs.encode()
    dec, end = RangeSet.decode(enc)
    assert dec == rs and end == len(enc)
    # with a prefix and trailing bytes, and the tightest limit
    top = max(model) + 1 if model else 0
    dec, end = RangeSet.decode(b"xyz" + enc + b"\xff\xff", 3, limit=top)
    assert dec == rs and end == 3 + len(enc)
    if model:
        with pytest.raises(RemoteProtocolError):
            RangeSet.decode(enc, limit=top - 1)


@SETTINGS
@given(st.sets(st.integers(0, 10**12), max_size=30))
def test_round_trip_sparse_large_values(values):
    rs = RangeSet()
    for v in values:
        rs.add(v)
    assert sorted(rs.values()) == sorted(values)
    dec, end = RangeSet.decode(rs.encode())
    assert dec == rs and end == len(rs.encode())


# -- wire form -------------------------------------------------------------------------
def test_encode_known_bytes():
    assert RangeSet().encode() == b"\x00"
    # count 2; gap 0 len 3; gap 2 len 1
    assert RangeSet([(0, 3), (5, 6)]).encode() == b"\x02\x00\x03\x02\x01"
    assert RangeSet([(300, 301)]).encode() == b"\x01\xac\x02\x01"


@pytest.mark.parametrize(
    "blob",
    [
        b"\x01\x00\x00",  # zero-length range
        b"\x02\x00\x01\x00\x01",  # two adjacent ranges (should be one)
        b"\x02\x05\x01\x00\x03",  # adjacent after a gap
        b"\x03\x00\x01\x01\x01\x00\x01",
    ],
)
def test_decode_rejects_non_canonical(blob):
    with pytest.raises(RemoteProtocolError, match="canonical"):
        RangeSet.decode(blob)


@pytest.mark.parametrize("rs", [RangeSet([(0, 3), (5, 6)]), RangeSet([(300, 100_000), (10**9, 10**9 + 7)])])
def test_decode_rejects_truncated(rs):
    enc = rs.encode()
    for cut in range(len(enc)):
        with pytest.raises(RemoteProtocolError):
            RangeSet.decode(enc[:cut])


def test_decode_count_larger_than_data():
    with pytest.raises(RemoteProtocolError):
        RangeSet.decode(b"\xff\xff\xff\xff\x0f\x00\x01")


def test_decode_beyond_limit():
    enc = RangeSet([(0, 10), (20, 30)]).encode()
    assert RangeSet.decode(enc, limit=30)[0] == RangeSet([(0, 10), (20, 30)])
    with pytest.raises(RemoteProtocolError, match="beyond"):
        RangeSet.decode(enc, limit=29)
    with pytest.raises(RemoteProtocolError, match="beyond"):
        RangeSet.decode(RangeSet([(0, 1)]).encode(), limit=0)
    assert RangeSet.decode(b"\x00", limit=0)[0] == RangeSet()


def test_varint_round_trip_and_limits():
    for v in [0, 1, 127, 128, 255, 300, 2**32, 2**63, 2**64 - 1]:
        out = bytearray()
        write_varint(out, v)
        assert read_varint(bytes(out), 0) == (v, len(out))
    with pytest.raises(ValueError):
        write_varint(bytearray(), -1)
    with pytest.raises(RemoteProtocolError):
        read_varint(b"\x80", 0)
    with pytest.raises(RemoteProtocolError):
        read_varint(b"", 0)
    with pytest.raises(RemoteProtocolError, match="64 bits"):
        read_varint(b"\xff" * 11 + b"\x01", 0)


def test_varint_above_64_bits_rejected():
    out = bytearray()
    write_varint(out, 2**64)  # 10 bytes: 9 x 0x80 then 0x02
    with pytest.raises(RemoteProtocolError):
        read_varint(bytes(out), 0)


def test_huge_file_chunk_map_is_tiny():
    chunks = 100 * 1024**3 // (1024 * 1024)  # 100 GB in 1 MiB chunks
    holes = {17, 5000, 5001, 65_432, chunks - 1}
    rs = RangeSet()
    for i in range(chunks):
        if i not in holes:
            rs.add(i)
    assert rs.count() == chunks - len(holes)
    assert len(rs) == 4  # runs: [0,17) [18,5000) [5002,65432) [65433,chunks-1)
    enc = rs.encode()
    assert len(enc) <= 36, len(enc)
    dec, end = RangeSet.decode(enc, limit=chunks)
    assert dec == rs and end == len(enc)
    assert list(rs.complement(0, chunks).values()) == sorted(holes)
    assert not rs.covers(0, chunks)
    assert rs.prefix_end() == 17
