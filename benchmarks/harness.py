"""Shared pieces of the benchmarks: child processes with rusage, sources, ftx runs."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

FTX = [sys.executable, "-m", "ftx"]


def own_identity() -> str:
    """Point every ``ftx`` this benchmark runs at a fresh config directory whose identity
    authorizes itself, so the CLI rows run as a user would run them: keys mode, sealed.
    (The user's own ~/.config/ftx is never read or written.)"""
    import tempfile

    from ftx.credentials import config_dir, load_identity, public_line

    if not os.environ.get("FTX_BENCH_CONFIG"):
        os.environ["FTX_BENCH_CONFIG"] = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="ftx-bench-cfg-")
        ident = load_identity(os.path.join(config_dir(), "identity"))
        with open(os.path.join(config_dir(), "authorized_keys"), "w") as f:
            f.write(public_line(ident.public, "benchmark") + "\n")
    return os.environ["XDG_CONFIG_HOME"]


own_identity()


def compile_ftx(python: str = sys.executable, tree: str | None = None) -> None:
    """Write the bytecode of the ftx that ``python`` imports (with ``tree``: that source tree's,
    run as a baseline is, from ``tree`` on PYTHONPATH), before measuring, as installing ftx does.
    The rows start fresh interpreters; with PYTHONDONTWRITEBYTECODE set (as in some shells and
    CI) each of them compiled every module changed since its .pyc was written again: up to
    75 ms a command, a cost of the checkout's state, not of ftx."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
    subprocess.run([python, "-c", "import compileall, os, ftx; "
                    "compileall.compile_dir(os.path.dirname(os.path.abspath(ftx.__file__)), quiet=2)"],
                   check=True, cwd=tree, env=env)


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * mult[text[-1].upper()]) if text[-1].upper() in mult else int(text)


def run_wait(proc: subprocess.Popen) -> tuple[int, float, int]:
    """Wait for a child; return (exit code, CPU seconds, peak RSS bytes)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def read_line(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            return proc.stdout.readline()
    raise RuntimeError("child did not report in time")


def make_source(path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())  # no writeback competing with the measurement
    with open(path, "rb") as f:  # warm the page cache
        while f.read(8 << 20):
            pass


class Receiver:
    """``ftx receive --once --json`` on a free loopback port."""

    def __init__(self, dst_dir: str, *extra: str, once: bool = True) -> None:
        os.makedirs(dst_dir, exist_ok=True)  # ftx receive no longer creates a missing --dir
        self.proc = subprocess.Popen(FTX + ["receive", "--port", "0", "--listen", "127.0.0.1", "--dir", dst_dir,
                                            "--json", *(["--once"] if once else []), *extra],
                                     stdout=subprocess.PIPE, text=True)
        self.port = json.loads(read_line(self.proc))["port"]

    def finish(self) -> tuple[int, float, int]:
        self.proc.stdout.read()
        return run_wait(self.proc)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.stdout.read()
        self.proc.wait()


class Relay:
    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen(FTX + ["impair", "--to", f"127.0.0.1:{port}", "--json", *args],
                                     stdout=subprocess.PIPE, text=True)
        self.port = json.loads(read_line(self.proc))["port"]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        stats = json.loads(read_line(self.proc))
        self.proc.wait()
        return stats


def ftx_send(src: str, port: int, *extra: str) -> tuple[dict, tuple[int, float, int], float]:
    """Run ``ftx send --json``; return (its report, (rc, cpu, rss), wall seconds)."""
    t0 = time.perf_counter()
    send = subprocess.Popen(FTX + ["send", src, f"127.0.0.1:{port}", "--json", "--no-progress", *extra],
                            stdout=subprocess.PIPE, text=True)
    out = send.stdout.read()
    res = run_wait(send)
    elapsed = time.perf_counter() - t0
    if res[0] != 0:
        raise RuntimeError(f"ftx send failed with {res[0]}")
    return json.loads(out), res, elapsed


def cpu_waited() -> float | None:
    """Seconds, since boot, during which some runnable task waited for a CPU (Linux pressure
    stall information, /proc/pressure/cpu "some"); None where the kernel has none.  On a shared
    machine a run whose processes wait for a CPU a tenth of its time is measuring the other
    tenants: 1 GiB over UDP on loopback ran at 1200 MB/s, and at 470 from the moment other
    processes took the cores (both sides then waited 30-50 % of the time, 64 KiB datagrams or
    1452-byte ones alike)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def bench_ftx(src: str, dst_dir: str, *extra_send: str, recv_args: tuple = ()) -> dict:
    """One full transfer through a fresh receiver (``recv_args``: its extra options); figures for both
    sides, and ``cpu_wait``: seconds of it during which a runnable task waited for a CPU (None: unknown)."""
    recv = Receiver(dst_dir, *recv_args)
    waited = cpu_waited()
    report, s, elapsed = ftx_send(src, recv.port, *extra_send)
    after = cpu_waited()
    r = recv.finish()
    if r[0] != 0:
        raise RuntimeError(f"ftx receive failed with {r[0]}")
    return {"seconds": elapsed, "send_cpu": s[1], "recv_cpu": r[1], "send_rss": s[2], "recv_rss": r[2],
            "cpu_wait": None if waited is None or after is None else after - waited,
            "bytes_sent": report["bytes_sent"], "bytes_resumed": report["bytes_resumed"],
            "stats": report.get("transport_stats", {})}


def round_order(rows, n: int) -> list:
    """The rows of interleaved round ``n`` (from 0): every other round backwards, so that no row
    always runs right after the same one (with a fixed order identical code measured 0.89x of
    itself).  Callers warm the destination before every run (``warm_memory``): memory freed by the
    last run's unlink goes back to the host within seconds, and the row that touched it again
    paid 2-3x receiver CPU."""
    rows = list(rows)
    return rows[::-1] if n % 2 else rows


def warm_memory(dst_dir: str, size: int) -> None:
    """Write and delete ``size`` bytes in the destination once, untimed.

    On a virtual machine the first touch of guest memory can cost several
    times a later one; without this, whichever contender runs first on a
    tmpfs destination pays for it and the comparison is noise.
    """
    path = os.path.join(dst_dir, ".warm")
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(block) + 1):
            f.write(block)
    os.unlink(path)
