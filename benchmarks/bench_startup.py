#!/usr/bin/env python3
"""Fixed costs of every ``ftx`` run: wall time and CPU of whole commands, median of ``--runs``.

Rows: ``ftx --help``; shell completion (what TAB runs: ``_FTX_COMPLETE=bash_complete``);
``ftx send`` of one small file to a running receiver, ``--insecure`` and in keys mode (a
private config directory whose identity authorizes itself, ``harness.own_identity``), over
TCP and over UDP (``--udp``).  The receivers (one insecure, one in keys mode serving both
transports) run before the clock starts, as daemons would.

    python benchmarks/bench_startup.py [--runs 20]
    python benchmarks/bench_startup.py --baseline /tmp/old     # A/B, interleaved: `git archive` there

With ``--baseline`` every round runs both trees one after the other (A, B, A, B, ...), so a
load that comes and goes on a shared machine touches both columns alike.

Commands run with bytecode caching on (PYTHONDONTWRITEBYTECODE is dropped, and one untimed
round writes the __pycache__ files), as from a pip install, which compiles at install time:
with PYTHONDONTWRITEBYTECODE=1 every run compiles every ftx module it imports again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from harness import compile_ftx, FTX, read_line, run_wait  # noqa: E402  (also sets up the keys-mode config dir)

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: ftx's modules are compiled once


# the console script, as a user (and a shell's TAB) runs it; PYTHONPATH picks the tree
FTX_SCRIPT = [os.path.join(os.path.dirname(sys.executable), "ftx")]


def _env(root: str | None) -> dict:
    return {**os.environ, **({"PYTHONPATH": root} if root else {})}


class Daemon:
    """``ftx receive`` (not --once) on a free loopback port, its output drained by a thread."""

    def __init__(self, dst: str, root: str | None, *extra: str) -> None:
        os.makedirs(dst, exist_ok=True)
        self.proc = subprocess.Popen(FTX + ["receive", "--port", "0", "--listen", "127.0.0.1", "--dir", dst,
                                            "--json", *extra], stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL,
                                     cwd=root, env=_env(root))
        self.port = json.loads(read_line(self.proc))["port"]
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def timed(argv: list[str], root: str | None, extra_env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command; it must exit 0."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root,
                            env={**_env(root), **(extra_env or {})})
    err = proc.stderr.read()
    rc, cpu, _ = run_wait(proc)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {rc}: {err.decode(errors='replace')}")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--baseline", metavar="DIR", help="also run the ftx of this source tree, interleaved")
    args = ap.parse_args()
    compile_ftx()

    work = tempfile.mkdtemp(prefix="ftx-startup-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    src = os.path.join(work, "small.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(1000))
    trees = {"this": None, **({"base": os.path.abspath(args.baseline)} if args.baseline else {})}
    daemons = {}
    for name, root in trees.items():
        daemons[name, "insecure"] = Daemon(os.path.join(work, name, "insecure"), root, "--insecure", "--no-udp")
        daemons[name, "keys"] = Daemon(os.path.join(work, name, "keys"), root)
    complete = {"_FTX_COMPLETE": "bash_complete", "COMP_WORDS": "ftx send --", "COMP_CWORD": "2"}
    rows = {
        "ftx --help": lambda name, root: timed(FTX_SCRIPT + ["--help"], root),
        "completion (TAB)": lambda name, root: timed(FTX_SCRIPT, root, complete),
        "send 1 file --insecure": lambda name, root: timed(
            FTX_SCRIPT + ["send", src, f"127.0.0.1:{daemons[name, 'insecure'].port}", "--insecure", "--no-progress"], root),
        "send 1 file, keys": lambda name, root: timed(
            FTX_SCRIPT + ["send", src, f"127.0.0.1:{daemons[name, 'keys'].port}", "--no-progress"], root),
        "send 1 file, keys, UDP": lambda name, root: timed(
            FTX_SCRIPT + ["send", src, f"127.0.0.1:{daemons[name, 'keys'].port}", "--udp", "--no-progress"], root),
    }
    results: dict = {(row, name): [] for row in rows for name in trees}
    try:
        for row, fn in rows.items():  # untimed: writes the bytecode caches
            for name, root in trees.items():
                fn(name, root)
        for _ in range(args.runs):
            for row, fn in rows.items():
                for name, root in trees.items():
                    results[row, name].append(fn(name, root))
    finally:
        for d in daemons.values():
            d.stop()
    print(f"median of {args.runs} runs (wall ms / CPU ms); load average {os.getloadavg()[0]:.2f}")
    head = "".join(f"{name:>22}" for name in trees)
    print(f"{'':26}{head}")
    for row in rows:
        cells = ""
        for name in trees:
            wall = statistics.median(w for w, _ in results[row, name]) * 1000
            cpu = statistics.median(c for _, c in results[row, name]) * 1000
            cells += f"{wall:>13.0f} / {cpu:>5.0f}"
        print(f"{row:26}{cells}")


if __name__ == "__main__":
    main()
