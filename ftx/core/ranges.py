"""RangeSet: a sorted set of half-open integer ranges [start, stop).

One structure serves as the receiver's chunk map, the HAVE list of a resume
decision and (later) the ACK ranges of the UDP transport.  Its wire form is a
count followed by (gap, length) pairs as unsigned LEB128 varints, so a file of
any size whose held chunks form a few runs costs a few bytes.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator

from ..errors import RemoteProtocolError


class RangeSet:
    __slots__ = ("_starts", "_stops")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        for start, stop in ranges:
            self.add(start, stop)

    # -- mutation ---------------------------------------------------------
    def add(self, start: int, stop: int | None = None) -> None:
        if stop is None:
            stop = start + 1
        if stop <= start:
            return
        starts, stops = self._starts, self._stops
        # fast path: appending at or adjacent to the end (in-order arrival)
        if not starts or start > stops[-1]:
            starts.append(start)
            stops.append(stop)
            return
        if start >= starts[-1]:
            if stop > stops[-1]:
                stops[-1] = stop
            return
        i = bisect.bisect_left(stops, start)  # first range that ends at/after start
        j = bisect.bisect_right(starts, stop)  # ranges before j start at/before stop
        if i == j:
            starts.insert(i, start)
            stops.insert(i, stop)
            return
        new_start = min(start, starts[i])
        new_stop = max(stop, stops[j - 1])
        starts[i:j] = [new_start]
        stops[i:j] = [new_stop]

    def subtract(self, start: int, stop: int) -> None:
        if stop <= start or not self._starts:
            return
        starts, stops = self._starts, self._stops
        i = bisect.bisect_right(stops, start)  # first range ending after start
        j = bisect.bisect_left(starts, stop)  # ranges [i, j) begin before stop: they overlap
        if i >= j:
            return
        keep_starts, keep_stops = [], []
        if starts[i] < start:
            keep_starts.append(starts[i])
            keep_stops.append(start)
        if stops[j - 1] > stop:
            keep_starts.append(stop)
            keep_stops.append(stops[j - 1])
        starts[i:j] = keep_starts
        stops[i:j] = keep_stops

    def clear(self) -> None:
        self._starts.clear()
        self._stops.clear()

    # -- queries ----------------------------------------------------------
    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._stops[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._stops))

    def __len__(self) -> int:
        """Number of ranges (not of integers; see ``count``)."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def count(self) -> int:
        return sum(b - a for a, b in self)

    def covers(self, start: int, stop: int) -> bool:
        """True when every integer in [start, stop) is in the set."""
        if stop <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._stops[i] >= stop

    def last(self) -> int:
        """The largest integer in the set (which must not be empty)."""
        return self._stops[-1] - 1

    def prefix_end(self) -> int:
        """End of the run that starts at 0 (0 when 0 is not held)."""
        if self._starts and self._starts[0] == 0:
            return self._stops[0]
        return 0

    def values(self) -> Iterator[int]:
        for a, b in self:
            yield from range(a, b)

    def complement(self, start: int, stop: int) -> "RangeSet":
        """The integers of [start, stop) not in the set."""
        out = RangeSet()
        pos = start
        for a, b in self:
            if b <= pos:
                continue
            if a >= stop:
                break
            if a > pos:
                out.add(pos, a)
            pos = max(pos, b)
        if pos < stop:
            out.add(pos, stop)
        return out

    # -- wire form --------------------------------------------------------
    def encode(self) -> bytes:
        out = bytearray()
        write_varint(out, len(self._starts))
        pos = 0
        for a, b in self:
            write_varint(out, a - pos)
            write_varint(out, b - a)
            pos = b
        return bytes(out)

    @classmethod
    def decode(cls, data, offset: int = 0, limit: int | None = None) -> tuple["RangeSet", int]:
        """Parse from ``data[offset:]``; return the set and the offset after it.

        ``limit`` bounds every value (e.g. a file's chunk count).
        """
        count, offset = read_varint(data, offset)
        if count > (len(data) - offset) // 2:  # every pair takes at least two bytes
            raise RemoteProtocolError(f"range count {count} exceeds the bytes that follow")
        rs = cls()
        pos = 0
        for _ in range(count):
            gap, offset = read_varint(data, offset)
            length, offset = read_varint(data, offset)
            if length == 0 or (rs and gap == 0):
                raise RemoteProtocolError("range list is not in canonical form")
            start = pos + gap
            pos = start + length
            if limit is not None and pos > limit:
                raise RemoteProtocolError("range beyond the end of the file")
            rs._starts.append(start)
            rs._stops.append(pos)
        return rs, offset


def write_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def read_varint(data, offset: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if offset >= len(data):
            raise RemoteProtocolError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >> 64:
                raise RemoteProtocolError("varint longer than 64 bits")
            return value, offset
        shift += 7
        if shift > 63:
            raise RemoteProtocolError("varint longer than 64 bits")
