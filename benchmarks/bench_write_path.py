#!/usr/bin/env python3
"""The receiver's hot write path alone: ``PartialFile.write_chunk`` + finalize, in process.

No network, no second process: the CPU seconds per GB of the storage layer
(pwrite of the chunk, journal record, in-order hashing, descriptor budget), so
that a change to it can be compared before/after on a busy machine.

    python benchmarks/bench_write_path.py [--size 1G] [--chunk 1M] [--runs 5] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import xxhash

from ftx.core.checksum import chunk_checksum
from ftx.core.manifest import FileEntry
from ftx.limits import parse_size
from ftx.storage import Destination, PartialFile


def one_run(root: str, size: int, chunk: int, data: bytes) -> tuple[float, float]:
    dest = Destination(root)
    entry = FileEntry(b"bench.bin", size=size, chunk_size=chunk)
    n = entry.chunks
    csum = chunk_checksum(data)
    digest = xxhash.xxh3_128()
    for _ in range(n):
        digest.update(data)
    t0, c0 = time.perf_counter(), time.process_time()
    part = PartialFile(dest, entry, dest.resolve(entry.path))
    part.open(resume=True)
    for i in range(n):
        part.write_chunk(i, csum, data)
    part.finalize(digest.digest())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    os.unlink(os.path.join(root, "bench.bin"))
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--chunk", default="1M")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    size -= size % chunk
    data = os.urandom(chunk)
    root = tempfile.mkdtemp(prefix="ftx-bench-write-", dir=args.dir)
    try:
        results = [one_run(root, size, chunk, data) for _ in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gb = size / 1e9
    best_wall = min(w for w, _ in results)
    best_cpu = min(c for _, c in results)
    print(f"write path, {size >> 20} MiB in {chunk >> 10} KiB chunks into {args.dir}, best of {args.runs}:")
    print(f"  {size / best_wall / 1e6:.0f} MB/s, {best_cpu / gb:.3f} CPU s/GB "
          f"(median CPU {sorted(c for _, c in results)[len(results) // 2] / gb:.3f} s/GB)")


if __name__ == "__main__":
    main()
