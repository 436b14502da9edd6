#!/usr/bin/env python3
"""The receiver's storage work for many small files alone: ``Destination.write_small`` + ``sync``.

No network, no second process: what the file system layer costs per file (20 000
files of 0-2 KiB in 200 directories by default), in files/s, with the batched
``sync()`` the session calls before each batch's RESULTs go out (every
``--batch`` files).  For syscalls per file run it under ``strace -c -f`` once
with ``--files 0`` and once with the real count, and subtract.

    python benchmarks/bench_small_files.py [--files 20000] [--dirs 200] [--max 2048] [--runs 5] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time

from ftx.core.checksum import file_digest
from ftx.core.manifest import FileEntry
from ftx.storage import Destination


def make_files(n: int, dirs: int, largest: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    blob = rng.randbytes(largest + 1)
    out = []
    for i in range(n):
        size = rng.randint(0, largest)
        data = blob[i % 97 : i % 97 + size] if size else b""
        # grouped by directory, as the sender walks a tree
        path = b"d%03d/f%05d.bin" % (i * dirs // n, i) if dirs else b"f%05d.bin" % i
        out.append((FileEntry(path, size=len(data), mode=0o644, mtime_ns=1_700_000_000_000_000_000),
                    data, file_digest(data)))
    return out


def one_run(parent: str, files: list, batch: int) -> tuple[float, float]:
    root = tempfile.mkdtemp(prefix="ftx-bench-small-", dir=parent)
    try:
        dest = Destination(root)
        sync = getattr(dest, "sync", lambda: None)
        t0, c0 = time.perf_counter(), time.process_time()
        for i, (entry, data, digest) in enumerate(files, 1):
            dest.write_small(entry, data, digest)
            if i % batch == 0:
                sync()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if hasattr(dest, "close"):
            dest.close()
        return wall, cpu
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--max", type=int, default=2048, help="largest file, bytes")
    ap.add_argument("--batch", type=int, default=100, help="files per sync() (one batch of events)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    files = make_files(args.files, args.dirs, args.max)
    results = [one_run(args.dir, files, args.batch) for _ in range(args.runs)]
    walls = [w for w, _ in results]
    wall, cpu = statistics.median(walls), statistics.median(c for _, c in results)
    rate = args.files / wall if wall else 0
    print(f"{args.files} files in {args.dirs} dirs on {args.dir}: median {wall:.3f} s wall, {cpu:.3f} s CPU, "
          f"{rate:,.0f} files/s (runs: {', '.join(f'{w:.3f}' for w in walls)})")


if __name__ == "__main__":
    main()
