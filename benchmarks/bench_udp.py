#!/usr/bin/env python3
"""UDP transport benchmarks, with baselines measured in the same run.

1. Loopback, no impairment, page cache -> tmpfs: ftx TCP and ftx UDP side by side
   (MB/s, UDP packets per second, CPU seconds per GB on each side, peak RSS).
2. Through the seeded relay: a bottleneck of --rate (default 200 Mbit/s) with a
   30 ms queue, --rtt (default 30 ms) and 0%, 1% and 3% random loss each way:
   goodput against the bottleneck and retransmitted bytes against the loss rate.
3. aioquic, when installed, is reported as skipped: no comparison harness yet.

    python benchmarks/bench_udp.py [--size 1G] [--relay-size 200M] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from harness import warm_memory, Receiver, Relay, bench_ftx, ftx_send, make_source, parse_size


def loopback(src: str, dst: str, size: int, runs: int) -> None:
    rows = {"ftx tcp": [], "ftx udp": []}
    for _ in range(runs):
        rows["ftx tcp"].append(bench_ftx(src, dst))
        os.unlink(os.path.join(dst, os.path.basename(src)))
        rows["ftx udp"].append(bench_ftx(src, dst, "--udp"))
        os.unlink(os.path.join(dst, os.path.basename(src)))
    gb = size / 1e9
    print(f"\n1. loopback, {size / 2**20:.0f} MiB, page cache -> tmpfs, best of {runs} (TCP: system default CC)")
    print(f"{'':8} {'MB/s':>7} {'pkts/s':>9} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} {'send RSS MB':>12} {'recv RSS MB':>12}")
    best = {}
    for name, results in rows.items():
        r = min(results, key=lambda x: x["seconds"])
        best[name] = r
        pps = r["stats"].get("packets_sent", 0) / r["seconds"]
        print(f"{name:8} {size / r['seconds'] / 1e6:7.0f} {pps:9.0f} {r['send_cpu'] / gb:14.2f} {r['recv_cpu'] / gb:14.2f} "
              f"{r['send_rss'] / 1e6:12.1f} {r['recv_rss'] / 1e6:12.1f}")
    print(f"ratio udp/tcp: {best['ftx tcp']['seconds'] / best['ftx udp']['seconds']:.2f}x")


def impaired(src: str, dst: str, size: int, rate: str, rtt_ms: float) -> None:
    from ftx.netsim import _rate

    bottleneck = _rate(rate)
    print(f"\n2. UDP through the relay: {rate} bottleneck (30 ms queue), {rtt_ms:g} ms RTT, "
          f"random loss both ways, {size / 2**20:.0f} MiB")
    print(f"{'loss':>5} {'goodput Mbit/s':>15} {'of bottleneck':>14} {'retransmitted':>14} {'relay drops (loss/queue)':>26}")
    for loss in (0.0, 0.01, 0.03):
        recv = Receiver(dst)
        relay = Relay(recv.port, "--both", f"loss={loss},delay={rtt_ms / 2}ms", "--forward", f"rate={rate},queue=30ms")
        report, _, _ = ftx_send(src, relay.port, "--udp")
        counters = relay.stop()
        recv.finish()
        os.unlink(os.path.join(dst, os.path.basename(src)))
        goodput = report["bytes"] / report["seconds"]
        retx = report["transport_stats"]["retransmitted_bytes"] / report["bytes"]
        fwd = counters["forward"]
        print(f"{loss:5.0%} {goodput * 8 / 1e6:15.1f} {goodput / bottleneck:14.1%} {retx:14.2%} "
              f"{fwd['dropped']:>13}/{fwd['queue_dropped']:<12}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="loopback file size")
    ap.add_argument("--relay-size", default="200M", help="file size through the relay")
    ap.add_argument("--rate", default="200Mbit")
    ap.add_argument("--rtt", type=float, default=30.0, help="round-trip time in ms")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--src-dir", default="/var/tmp")
    ap.add_argument("--dst-dir", default="/dev/shm")
    ap.add_argument("--skip-loopback", action="store_true")
    args = ap.parse_args()
    work_src = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.src_dir)
    work_dst = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.dst_dir)
    try:
        if not args.skip_loopback:
            size = parse_size(args.size)
            src = os.path.join(work_src, "loop.bin")
            make_source(src, size)
            warm_memory(work_dst, 2 * size)
            loopback(src, work_dst, size, args.runs)
            os.unlink(src)
        size = parse_size(args.relay_size)
        src = os.path.join(work_src, "relay.bin")
        make_source(src, size)
        impaired(src, work_dst, size, args.rate, args.rtt)
        try:
            import aioquic  # noqa: F401

            print("\n3. aioquic is installed, but this benchmark has no aioquic harness yet: skipped")
        except ImportError:
            print("\n3. aioquic not installed: comparison skipped (pip install aioquic)")
    finally:
        shutil.rmtree(work_src, ignore_errors=True)
        shutil.rmtree(work_dst, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
