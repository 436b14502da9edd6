"""Trees of many files: the first send, the re-send of the unchanged tree, and memory at scale.

    python benchmarks/bench_tree.py resend [--files 20000 --dirs 200 --max-size 2048 --rounds 3]
    python benchmarks/bench_tree.py scale  [--files 200000 --dirs 2000]

``resend``: a fresh destination per round; ``ftx send`` of the tree (whole-command wall
time, sealed keys mode as users run it), then the same command again over the unchanged
tree, and again with ``--checksum``.  Medians over the rounds.  The bytes on the wire are
counted in one extra round through a counting TCP relay (its copying would distort the
times, so the timed rounds go direct).  ``scale``: one send of empty files; files/s and the peak RSS of
both processes (``wait4``).  Sources and destinations live on tmpfs (/dev/shm).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compile_ftx, Receiver, ftx_send, run_wait  # noqa: E402

SHM = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def make_tree(root: str, files: int, dirs: int, max_size: int) -> int:
    """``files`` files of 0..max_size bytes spread over ``dirs`` directories; returns content bytes."""
    total = 0
    block = os.urandom(max_size + 1)
    for i in range(files):
        d = os.path.join(root, f"d{i % dirs:05}")
        if i < dirs:
            os.makedirs(d)
        size = (i * 7919) % (max_size + 1) if max_size else 0
        with open(os.path.join(d, f"f{i:07}"), "wb") as f:
            f.write(block[:size])
        total += size
    return total


class DrainedReceiver(Receiver):
    """A receiver whose --json lines (one per file) are read as they come: a full pipe would stop it."""

    def __init__(self, dst: str) -> None:
        import threading

        super().__init__(dst, once=True)
        self._reader = threading.Thread(target=self.proc.stdout.read, daemon=True)
        self._reader.start()

    def finish(self):
        self._reader.join()
        return run_wait(self.proc)


class CountingRelay:
    """TCP on loopback, both directions counted (threads: for byte counts, not for timing)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bytes = 0
        self.done = threading.Semaphore(0)

        def pipe(a, b):
            n = 0
            try:
                while data := a.recv(1 << 16):
                    b.sendall(data)
                    n += len(data)
            except OSError:
                pass
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.bytes += n  # one += per direction, at its end
            self.done.release()

        def accept():
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def stop(self) -> int:
        self.done.acquire(timeout=30)
        self.done.acquire(timeout=30)
        self.sock.close()
        return self.bytes


def one_send(src: str, dst: str, *extra: str, count: bool = False) -> dict:
    recv = DrainedReceiver(dst)
    relay = CountingRelay(recv.port) if count else None
    report, s, wall = ftx_send(src, relay.port if relay else recv.port, *extra)
    r = recv.finish()
    wire = relay.stop() if relay else 0
    return {"wall": wall, "wire": wire, "send_rss": s[2], "recv_rss": r[2], "send_cpu": s[1], "recv_cpu": r[1],
            "identical": report.get("identical", 0), "files": report["file_count"], "bytes_sent": report["bytes_sent"]}


def resend(args) -> None:
    work = tempfile.mkdtemp(prefix="ftx-bench-tree-", dir=SHM)
    try:
        src = os.path.join(work, "tree")
        content = make_tree(src, args.files, args.dirs, args.max_size)
        rows = {"first": [], "again": []} if args.skip_checksum else {"first": [], "again": [], "checksum": []}
        wire = {}
        dst = os.path.join(work, "counted")
        os.makedirs(dst)
        for name, extra in (("first", ()), ("again", ()), ("checksum", ("--checksum",)))[:len(rows)]:
            wire[name] = one_send(src, dst, *extra, count=True)["wire"]
        shutil.rmtree(dst)
        for r in range(args.rounds):
            dst = os.path.join(work, f"dst{r}")
            os.makedirs(dst)
            rows["first"].append(one_send(src, dst))
            rows["again"].append(one_send(src, dst))
            if "checksum" in rows:
                rows["checksum"].append(one_send(src, dst, "--checksum"))
            shutil.rmtree(dst)
        print(f"{args.files} files of 0-{args.max_size} B in {args.dirs} dirs, {content} content bytes, "
              f"{args.rounds} rounds (medians), load {os.getloadavg()[0]:.2f}")
        first = statistics.median(x["wall"] for x in rows["first"])
        for name, runs in rows.items():
            wall = statistics.median(x["wall"] for x in runs)
            print(f"  {name:9} {wall:7.3f} s  {wire[name]:>11} wire bytes ({100 * wire[name] / content:6.2f} % of content)  "
                  f"x{first / wall:5.1f} vs first  identical {runs[0]['identical']}/{runs[0]['files']}  "
                  f"cpu send {statistics.median(x['send_cpu'] for x in runs):.2f} s "
                  f"recv {statistics.median(x['recv_cpu'] for x in runs):.2f} s  "
                  f"rss send {max(x['send_rss'] for x in runs) >> 20} MiB recv {max(x['recv_rss'] for x in runs) >> 20} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scale(args) -> None:
    work = tempfile.mkdtemp(prefix="ftx-bench-scale-", dir=SHM)
    try:
        src = os.path.join(work, "tree")
        t0 = time.perf_counter()
        make_tree(src, args.files, args.dirs, 0)
        made = time.perf_counter() - t0
        dst = os.path.join(work, "dst")
        os.makedirs(dst)
        recv = DrainedReceiver(dst)
        report, s, wall = ftx_send(src, recv.port)
        r = recv.finish()
        print(f"{args.files} empty files in {args.dirs} dirs (made in {made:.1f} s), load {os.getloadavg()[0]:.2f}: "
              f"{wall:.1f} s, {args.files / wall:.0f} files/s; peak RSS send {s[2] >> 20} MiB, "
              f"receive {r[2] >> 20} MiB; report lists {len(report['files'])} of {report['file_count']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["resend", "scale"])
    p.add_argument("--files", type=int)
    p.add_argument("--dirs", type=int)
    p.add_argument("--max-size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-checksum", action="store_true", help="no --checksum row (an ftx without it, e.g. "
                   "PYTHONPATH pointing at an older tree for a before/after comparison)")
    args = p.parse_args()
    compile_ftx()
    if args.mode == "resend":
        args.files, args.dirs = args.files or 20_000, args.dirs or 200
        resend(args)
    else:
        args.files, args.dirs = args.files or 200_000, args.dirs or 2_000
        scale(args)


if __name__ == "__main__":
    main()
