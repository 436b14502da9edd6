"""The receiver's whole-file digest when chunks are written out of order (as UDP delivers
them after a loss): right either way, and without reading the file back while the chunks
that arrived early fit in memory."""

from __future__ import annotations

import random

import pytest
import xxhash

from ftx import partial as storage
from ftx.core.checksum import chunk_checksum
from ftx.core.manifest import FileEntry
from ftx.storage import Destination, PartialFile

CHUNK = 4096


def _write_shuffled(tmp_path, data: bytes, order: list[int], name: bytes = b"f.bin") -> tuple[PartialFile, bytes]:
    dest = Destination(str(tmp_path))
    entry = FileEntry(name, size=len(data), chunk_size=CHUNK)
    path = dest.resolve(name)
    part = PartialFile(dest, entry, path)
    part.open(resume=True)
    for i in order:
        piece = data[i * CHUNK : (i + 1) * CHUNK]
        part.write_chunk(i, chunk_checksum(piece), piece)
    return part, path


def _reordered(n: int, distance: int, seed: int) -> list[int]:
    """0..n-1 with each index moved at most ``distance`` places (a loss delays a chunk)."""
    r = random.Random(seed)
    keys = [i + r.uniform(0, distance) for i in range(n)]
    return [i for _, i in sorted(zip(keys, range(n)))]


@pytest.mark.parametrize("seed", range(5))
def test_out_of_order_chunks_are_hashed_without_reading_back(tmp_path, seed, monkeypatch):
    data = random.Random(seed).randbytes(50 * CHUNK + 123)
    order = _reordered(51, 6, seed)
    assert order != sorted(order)
    part, path = _write_shuffled(tmp_path, data, order)
    reads = []
    monkeypatch.setattr(storage, "pread_full", lambda *a: reads.append(a) or 0)  # finalize must not need it
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert reads == [] and open(path, "rb").read() == data


def test_beyond_the_memory_bound_the_digest_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "PENDING_LIMIT", 3 * CHUNK)
    data = random.Random(9).randbytes(20 * CHUNK)
    order = list(range(1, 20)) + [0]  # chunk 0 last: 19 chunks wait, only 3 fit
    part, path = _write_shuffled(tmp_path, data, order)
    assert part._pending_bytes <= 3 * CHUNK
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert open(path, "rb").read() == data


def test_a_wrong_digest_still_fails_after_reordering(tmp_path):
    data = random.Random(3).randbytes(10 * CHUNK)
    part, path = _write_shuffled(tmp_path, data, [1, 0, 3, 2, 5, 4, 7, 6, 9, 8])
    with pytest.raises(storage.StorageError):
        part.finalize(bytes(16))


def test_a_chunk_that_cannot_be_kept_frees_what_waits_behind_it(tmp_path, monkeypatch):
    """Only 3 chunks fit and chunk 5 is not kept: the running hash can never pass 5 in memory,
    so chunks behind it must not take the receiver's shared pending budget (6, 7, 8 used to
    fill it and hold it until finalize, and every other file then read back from disk)."""
    monkeypatch.setattr(storage, "PENDING_LIMIT", 3 * CHUNK)
    data = random.Random(10).randbytes(20 * CHUNK)
    order = [2, 3, 4, 5, 0, 1] + list(range(6, 20))
    part, path = _write_shuffled(tmp_path, data, order)
    assert part._hashed == 5 and part._pending_bytes == 0 and part.dest.pending.used == 0
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert open(path, "rb").read() == data


@pytest.mark.parametrize("order, again", [([0, 1, 2, 3], 1),  # chunk 1 is already in the running hash
                                          ([0, 2, 3], 2)])  # chunk 2 waits in memory for chunk 1
def test_a_repeated_chunk_with_other_bytes_is_what_the_digest_covers(tmp_path, order, again):
    """DATA may repeat a chunk (protocol.md 5.5); the last copy is the one on disk, so the digest
    FILE_END is checked against must be of it: the first copy's digest fails, the landed one's passes."""
    data = random.Random(3).randbytes(4 * CHUNK)
    changed = bytearray(data)
    changed[again * CHUNK + 5] ^= 1
    for expected, ok in ((data, False), (bytes(changed), True)):
        sub = tmp_path / str(ok)
        part, path = _write_shuffled(sub, data, order)
        piece = changed[again * CHUNK : (again + 1) * CHUNK]
        part.write_chunk(again, chunk_checksum(piece), piece)
        for i in range(4):
            if i not in order:
                part.write_chunk(i, chunk_checksum(data[i * CHUNK : (i + 1) * CHUNK]), data[i * CHUNK : (i + 1) * CHUNK])
        if ok:
            assert part.finalize(xxhash.xxh3_128_digest(expected)) == xxhash.xxh3_128_digest(expected)
            assert open(path, "rb").read() == expected
        else:
            with pytest.raises(storage.StorageError):
                part.finalize(xxhash.xxh3_128_digest(expected))
            assert not (sub / "f.bin").exists()


def test_a_repeated_chunk_with_the_same_bytes_keeps_the_running_hash(tmp_path, monkeypatch):
    """The same bytes again (a resend) are compared with the disk a block at a time and leave the
    running hash as it was: nothing is read back at FILE_END.  (Blocks of 1000 bytes here: a
    difference in the last, short block is seen too.)"""
    import ftx.partial

    monkeypatch.setattr(ftx.partial, "READ_BLOCK", 1000)
    data = random.Random(4).randbytes(4 * CHUNK)
    part, path = _write_shuffled(tmp_path, data, [0, 1, 2, 3])
    other = bytearray(data[CHUNK : 2 * CHUNK])
    other[-1] ^= 1
    assert not part._same_on_disk(1, other)
    part.write_chunk(1, chunk_checksum(data[CHUNK : 2 * CHUNK]), data[CHUNK : 2 * CHUNK])
    assert part._hashed == 4 and part._hasher is not None
    assert part.finalize(xxhash.xxh3_128_digest(data)) == xxhash.xxh3_128_digest(data)
    assert open(path, "rb").read() == data
