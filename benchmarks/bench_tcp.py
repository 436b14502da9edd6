#!/usr/bin/env python3
"""TCP throughput and memory: ftx against a plain-Python baseline, same run.

Source file on disk (read once so it sits in the page cache), destination on
tmpfs, loopback.  Baseline: ``socket.sendfile`` into a ``recv_into`` + write
loop.  Prints MB/s, CPU seconds per GB and peak RSS of each side, and ratios.
Also times resuming a half-done 1 GiB partial (the receiver re-verifies it).

    python benchmarks/bench_tcp.py [--size 1G] [--runs 3] [--src-dir /var/tmp] [--dst-dir /dev/shm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import compile_ftx, warm_memory, FTX, bench_ftx, make_source, parse_size, read_line, run_wait

BASELINE_RECV = r"""
import socket, sys
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept()
buf = bytearray(1 << 20); mv = memoryview(buf)
with open(sys.argv[1], "wb") as f:
    while n := c.recv_into(buf):
        f.write(mv[:n])
"""

BASELINE_SEND = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
with open(sys.argv[1], "rb") as f:
    s.sendfile(f)
s.close()
"""


def bench_baseline(src: str, dst: str) -> dict:
    recv = subprocess.Popen([sys.executable, "-c", BASELINE_RECV, dst], stdout=subprocess.PIPE, text=True)
    port = read_line(recv).strip()
    t0 = time.perf_counter()
    send = subprocess.Popen([sys.executable, "-c", BASELINE_SEND, src, port])
    s = run_wait(send)
    r = run_wait(recv)
    elapsed = time.perf_counter() - t0
    assert s[0] == 0 and r[0] == 0
    return {"seconds": elapsed, "send_cpu": s[1], "recv_cpu": r[1], "send_rss": s[2], "recv_rss": r[2]}


def bench_resume_check(src: str, dst_dir: str, size: int) -> dict:
    """Kill a transfer half-way, then time the resumed run and its verify step."""
    os.makedirs(dst_dir, exist_ok=True)  # ftx receive no longer creates a missing --dir
    recv = subprocess.Popen(FTX + ["receive", "--port", "0", "--listen", "127.0.0.1", "--dir", dst_dir,
                                         "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = json.loads(read_line(recv))["port"]
    from ftx.journal import partial_paths

    journal, _ = partial_paths(dst_dir, os.fsencode(os.path.basename(src)))
    send = subprocess.Popen(FTX + ["send", src, f"127.0.0.1:{port}", "--no-progress"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(journal) and os.path.getsize(journal) > 40 + 24 * (size // (1 << 20)) // 2:
            break
        time.sleep(0.002)
    send.send_signal(signal.SIGKILL)
    send.wait()
    recv.send_signal(signal.SIGTERM)
    recv.wait()
    t0 = time.perf_counter()
    from ftx.core.manifest import FileEntry
    from ftx.storage import Destination, PartialFile

    st = os.stat(src)
    entry = FileEntry(os.path.basename(src).encode(), size=st.st_size, mtime_ns=st.st_mtime_ns, mode=0o644)
    dest = Destination(dst_dir)
    pf = PartialFile(dest, entry, os.path.join(dest.root, entry.path))
    held, _ = pf.open(resume=True)
    verify = time.perf_counter() - t0
    pf.close()
    held_bytes = sum(entry.chunk_length(i) for i in held.values())
    result = bench_ftx(src, dst_dir)
    part = partial_paths(dst_dir, entry.path)[1]
    result.update(verify_seconds=verify, held_bytes=held_bytes, part_exists=bool(part) and os.path.exists(part))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src-dir", default="/var/tmp")
    ap.add_argument("--dst-dir", default="/dev/shm")
    args = ap.parse_args()
    compile_ftx()
    size = parse_size(args.size)
    work_src = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.src_dir)
    work_dst = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.dst_dir)
    src = os.path.join(work_src, "payload.bin")
    try:
        make_source(src, size)
        warm_memory(work_dst, 2 * size)
        rows: dict[str, list[dict]] = {"baseline": [], "ftx": []}
        for _ in range(args.runs):
            dst = os.path.join(work_dst, "baseline.bin")
            rows["baseline"].append(bench_baseline(src, dst))
            os.unlink(dst)
            rows["ftx"].append(bench_ftx(src, work_dst))
            os.unlink(os.path.join(work_dst, "payload.bin"))
        print(f"\nloopback TCP, {size / 2**20:.0f} MiB, page cache -> {args.dst_dir}, best of {args.runs} "
              f"(TCP congestion control: system default)")
        print(f"{'':10} {'MB/s':>8} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} {'send RSS MB':>12} {'recv RSS MB':>12}")
        best = {}
        for name, results in rows.items():
            r = min(results, key=lambda x: x["seconds"])
            best[name] = r
            gb = size / 1e9
            print(f"{name:10} {size / r['seconds'] / 1e6:8.0f} {r['send_cpu'] / gb:14.2f} {r['recv_cpu'] / gb:14.2f} "
                  f"{max(x['send_rss'] for x in results) / 1e6:12.1f} {max(x['recv_rss'] for x in results) / 1e6:12.1f}")
        print(f"ratio ftx/baseline: {best['baseline']['seconds'] / best['ftx']['seconds']:.2f}x")
        res = bench_resume_check(src, work_dst, size)
        print(f"\nresume after SIGKILL of the sender: {res['held_bytes'] / 2**20:.0f} MiB held; verifying the partial took "
              f"{res['verify_seconds']:.3f} s ({res['held_bytes'] / max(res['verify_seconds'], 1e-9) / 1e9:.2f} GB/s); "
              f"resumed run sent {res['bytes_sent'] / size:.1%} of the file in {res['seconds']:.2f} s")
    finally:
        shutil.rmtree(work_src, ignore_errors=True)
        shutil.rmtree(work_dst, ignore_errors=True)


if __name__ == "__main__":
    main()
