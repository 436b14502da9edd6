#!/usr/bin/env python3
"""Many files: ftx (TCP, UDP) beside tar | nc, an rsync daemon, scp and magic-wormhole, same run.

Each column is the whole command as a user waits for it (interpreter start-up
included), median of ``--runs``; files/s and the peak RSS of each side.  Source
tree in the page cache on ``--src-dir`` (default /dev/shm), a fresh destination
on ``--dst-dir`` (default /dev/shm, tmpfs) for every run, loopback only.

Sets (``--set``, repeatable; default small and tiny):

* ``small``: 2 000 files of 1-64 KiB in 20 directories (about 67.6 MB);
* ``tiny``:  20 000 files of 0-2 KiB in 200 directories;
* ``huge``:  ``--count`` empty files (default 200 000) in count/100 directories.
  ``--set huge --count 1000000 --runs 1 --only ftx-tcp,rsync`` is the issue's
  million-file run: making the tree takes about 20 s on tmpfs, ftx TCP about 4 minutes
  (221 s, 2 shared cores), rsync about 2.

ftx rows run as users run them: sealed, keys mode (a private config directory
whose identity authorizes itself, ``harness.own_identity``), ``--json``.  The
receiver (``ftx receive --once``) and the rsync daemon are started before the
clock starts, as daemons would be.  The resend row sends the same tree again
onto the complete destination: its time, and the bytes that crossed the wire
(the sender's TCP byte counters, ``transport_stats``), beside rsync's second run.

    python benchmarks/bench_files.py [--set small --set tiny] [--runs 5] [--only ftx-tcp,rsync]
    python benchmarks/bench_files.py --only ftx-tcp,ftx-tcp-base --baseline /tmp/old   # A/B: `git archive` there
    python benchmarks/bench_files.py --python /tmp/v/bin/python   # ftx run by that interpreter

``--python``: the interpreter that runs the ftx rows (default: this one).  A
``pip install -e`` checkout starts every ftx with its editable-install finder
loaded by ``site`` (about 8-12 ms of each command that a user's ``pip install .``
does not pay); a venv with a regular install (``python3 -m venv /tmp/v &&
/tmp/v/bin/pip install .``) measures what users run.  Report both figures.

rsync and nc (netcat-openbsd) must be installed; scp needs openssh-server;
magic-wormhole needs ``wormhole`` and ``twist`` (pip install magic-wormhole
magic-wormhole-mailbox-server magic-wormhole-transit-relay).  A missing peer is
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from harness import FTX, compile_ftx, own_identity, read_line, run_wait  # noqa: E402

# as installed: pip compiles ftx once; with PYTHONDONTWRITEBYTECODE=1 every run (both sides)
# would compile every ftx module it imports again, and the start-up figures would include that
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

PEER_TIMEOUT = 600  # seconds for one transfer of any tool before it counts as failed
ROWS = ("ftx-tcp", "ftx-tcp-base", "ftx-udp", "ftx-udp-base", "tar-nc", "rsync", "scp", "wormhole")
TITLES = {"ftx-tcp": "ftx TCP", "ftx-tcp-base": "ftx TCP base", "ftx-udp": "ftx UDP", "ftx-udp-base": "ftx UDP base",
          "tar-nc": "tar | nc", "rsync": "rsync daemon",
          "scp": "scp", "wormhole": "magic-wormhole"}


# -- the trees ---------------------------------------------------------------------------
def make_tree(root: str, kind: str, count: int) -> tuple[int, int]:
    """Build the set under ``root`` (seeded: every run of the benchmark sends the same tree);
    return (files, bytes).  The bytes are random (incompressible)."""
    rng = random.Random(13)
    if kind == "small":
        files, dirs, sizes = 2000, 20, lambda: rng.randint(1024, 64 * 1024)
    elif kind == "tiny":
        files, dirs, sizes = 20000, 200, lambda: rng.randint(0, 2048)
    else:
        files, dirs, sizes = count, max(1, count // 100), lambda: 0
    pool = os.urandom(64 * 1024 + 4096)
    total = 0
    per_dir = -(-files // dirs)
    for d in range(dirs):
        path = os.path.join(root, f"d{d:05d}")
        os.mkdir(path)
        for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
            n = sizes()
            off = rng.randrange(4096)
            fd = os.open(os.path.join(path, f"f{i:07d}.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if n:
                    os.write(fd, pool[off : off + n])
            finally:
                os.close(fd)
            total += n
    return files, total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str | None:
    """A program on PATH or beside this interpreter (a venv's console scripts)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


TIME = "/usr/bin/time"  # GNU time: a child's peak RSS of its own (wait4 in the parent reports at least
# the parent's own size at fork, which a Python parent of 60 MB makes useless)


class Peak:
    """Run a command under GNU time; ``rss()`` is its peak RSS (the largest of it and its children)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="ftx-bench-rss-")
        os.close(fd)

    def wrap(self, cmd: list[str]) -> list[str]:
        return [TIME, "-f", "%M", "-o", self.path, *cmd] if os.path.exists(TIME) else cmd

    def rss(self) -> float:
        try:
            with open(self.path) as f:
                return int(f.read().split()[-1]) * 1024
        except (OSError, ValueError, IndexError):
            return float("nan")
        finally:
            os.unlink(self.path)


def wait_all(procs: list[subprocess.Popen], timeout: float = PEER_TIMEOUT) -> list[tuple[int, float, int]]:
    from bench_secure import _wait_all

    return _wait_all(procs, timeout)


# -- the contenders ------------------------------------------------------------------------
def result(seconds: float, s: tuple, r: tuple | None, ps: Peak | None, pr: Peak | None, **extra) -> dict:
    nan = float("nan")
    return {"seconds": seconds, "send_cpu": s[1], "recv_cpu": r[1] if r else nan,
            "send_rss": ps.rss() if ps else nan, "recv_rss": pr.rss() if pr else nan, **extra}


FTX_CMD = list(FTX)  # the command that runs ftx (--python changes the interpreter)


def bench_ftx(src: str, dst: str, udp: bool, root: str | None = None) -> dict:
    """One ``ftx send`` into a fresh ``ftx receive --once``; ``root``: run the ftx of that source
    tree instead (``--baseline``, for A/B figures in one run)."""
    ps, pr = Peak(), Peak()
    env = None
    if root is not None:
        env = {**os.environ, "PYTHONPATH": root}
    os.makedirs(dst, exist_ok=True)  # ftx receive no longer creates a missing --dir
    recv = subprocess.Popen(pr.wrap(FTX_CMD + ["receive", "--port", "0", "--listen", "127.0.0.1", "--dir", dst,
                                           "--json", "--once", *([] if udp else ["--no-udp"])]),
                            stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    port = json.loads(read_line(recv))["port"]
    lines: list[str] = []  # read as they come: a full pipe would stop the receiver
    reader = threading.Thread(target=lambda: lines.extend(recv.stdout), daemon=True)
    reader.start()
    t0 = time.perf_counter()
    send = subprocess.Popen(ps.wrap(FTX_CMD + ["send", src, f"127.0.0.1:{port}", "--json", "--no-progress",
                                           *(["--udp"] if udp else [])]), stdout=subprocess.PIPE, text=True,
                            cwd=root, env=env)
    out = send.stdout.read()
    s = run_wait(send)
    elapsed = time.perf_counter() - t0
    reader.join(PEER_TIMEOUT)
    r = run_wait(recv)
    if s[0] or r[0]:
        raise RuntimeError(f"ftx {'udp' if udp else 'tcp'} failed ({s[0]}, {r[0]})")
    report = json.loads(out)
    file_lines = sum(1 for line in lines if '"event": "file"' in line)
    return result(elapsed, s, r, ps, pr, wire=_wire_bytes(report), file_lines=file_lines,
                  failed=report.get("failed", 0))


def _wire_bytes(report: dict) -> int | None:
    stats = report.get("transport_stats") or {}
    if "bytes_out" in stats:
        return stats["bytes_out"] + stats.get("bytes_in", 0)
    return None


def bench_tar_nc(src: str, dst: str) -> dict | None:
    if not tool("nc"):
        return None
    port = free_port()
    ps, pr = Peak(), Peak()
    recv = subprocess.Popen(pr.wrap(["bash", "-c", f"nc -l 127.0.0.1 {port} | tar -x -C {dst}"]))
    _wait_listening(port)  # a probing connection would be taken for the transfer
    t0 = time.perf_counter()
    parent, name = os.path.split(src.rstrip("/"))
    send = subprocess.Popen(ps.wrap(["bash", "-c", f"tar -c -C {parent} {name} | nc -N 127.0.0.1 {port}"]))
    s, r = wait_all([send, recv])
    elapsed = time.perf_counter() - t0
    if s[0] or r[0]:
        raise RuntimeError(f"tar | nc failed ({s[0]}, {r[0]})")
    return result(elapsed, s, r, ps, pr)


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    needle = f":{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            if needle in f.read():
                return
        time.sleep(0.005)
    raise RuntimeError("nc did not start listening")


class RsyncDaemon:
    """``rsync --daemon --no-detach`` of our own on a free loopback port, module ``bench`` at ``root``.

    One daemon per run: its peak RSS and CPU (with the forked connection handler's, which it
    reaps) are known when it is stopped."""

    def __init__(self, root: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="ftx-rsyncd-")
        self.port = free_port()
        self.peak = Peak()
        conf = os.path.join(self.dir, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"pid file = {self.dir}/pid\nuse chroot = no\nuid = 0\ngid = 0\n"
                    f"[bench]\npath = {root}\nread only = no\n")
        self.proc = subprocess.Popen(self.peak.wrap(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                                     f"--port={self.port}", "--address=127.0.0.1"]),
                                     stderr=subprocess.DEVNULL)
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError("rsync daemon did not start")

    def stop(self) -> tuple[int, float, int]:
        try:  # the daemon itself, not GNU time in front of it
            with open(os.path.join(self.dir, "pid")) as f:
                os.kill(int(f.read()), signal.SIGTERM)
        except (OSError, ValueError):
            self.proc.terminate()
        res = run_wait(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        return res


def bench_rsync(src: str, dst_root: str, name: str, again: bool = False) -> dict | None:
    """``rsync -a SRC/ rsync://.../bench/NAME/``; with ``again`` the same send twice (the second timed)."""
    if not tool("rsync"):
        return None
    daemon = RsyncDaemon(dst_root)
    ps = Peak()
    try:
        cmd = ["rsync", "-a", "--stats", src.rstrip("/") + "/", f"rsync://127.0.0.1:{daemon.port}/bench/{name}/"]
        if again:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        send = subprocess.Popen(ps.wrap(cmd), stdout=subprocess.PIPE, text=True)
        out = send.stdout.read()
        s = run_wait(send)
        elapsed = time.perf_counter() - t0
    finally:
        r = daemon.stop()
    if s[0]:
        raise RuntimeError(f"rsync failed ({s[0]})")
    wire = None
    for line in out.splitlines():  # "Total bytes sent: 1,234" / "Total bytes received: 56"
        if line.startswith(("Total bytes sent:", "Total bytes received:")):
            wire = (wire or 0) + int(line.split(":")[1].replace(",", "").strip())
    return result(elapsed, s, r, ps, daemon.peak, wire=wire)


def bench_scp(sshd, src: str, dst: str) -> dict | None:
    """scp -r to our own sshd (its receiving ``scp -t`` is sshd's child: no RSS for that side)."""
    if sshd is None or not sshd.ok:
        return None
    ps = Peak()
    t0 = time.perf_counter()
    send = subprocess.Popen(ps.wrap([*sshd.scp_args(), "-r", src, f"127.0.0.1:{dst}"]))
    (s,) = wait_all([send])
    elapsed = time.perf_counter() - t0
    if s[0]:
        ps.rss()
        return None
    return result(elapsed, s, None, ps, None)


def bench_wormhole(src: str, dst: str) -> dict | None:
    """magic-wormhole through our own mailbox server and transit relay (as bench_secure.py)."""
    wormhole, twist = tool("wormhole"), tool("twist")
    if not wormhole or not twist:
        return None
    mport, tport = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="ftx-wh-")
    procs = [
        subprocess.Popen([twist, "wormhole-mailbox", f"--port=tcp:{mport}:interface=127.0.0.1",
                          f"--channel-db={work}/c.sqlite", f"--usage-db={work}/u.sqlite"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work),
        subprocess.Popen([twist, "transitrelay", f"--port=tcp:{tport}:interface=127.0.0.1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work),
    ]
    try:
        if not wait_port(mport, procs[0]):
            return None
        common = ["--relay-url", f"ws://127.0.0.1:{mport}/v1", "--transit-helper", f"tcp:127.0.0.1:{tport}"]
        ps, pr = Peak(), Peak()
        with open(os.path.join(work, "log"), "w+") as log:
            t0 = time.perf_counter()
            send = subprocess.Popen(ps.wrap([wormhole, *common, "send", "--code", "7-bench-ftx", src]),
                                    stdout=log, stderr=log)
            recv = subprocess.Popen(pr.wrap([wormhole, *common, "receive", "--accept-file", "--hide-progress",
                                             "7-bench-ftx"]), stdout=log, stderr=log, cwd=dst)
            s, r = wait_all([send, recv])
            elapsed = time.perf_counter() - t0
            if s[0] or r[0]:
                ps.rss(), pr.rss()
                log.seek(0)
                last = [line.strip() for line in log.read().splitlines() if line.strip()][-1:] or ["no output"]
                raise RuntimeError(f"magic-wormhole failed ({s[0]}, {r[0]}): {last[0]}")
        return result(elapsed, s, r, ps, pr)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


# -- the parent ------------------------------------------------------------------------------
def drop(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_set(kind: str, args, work_src: str, work_dst: str, notes: list[str]) -> None:
    src = os.path.join(work_src, kind)
    os.mkdir(src)
    t0 = time.perf_counter()
    files, total = make_tree(src, kind, args.count)
    made = time.perf_counter() - t0
    print(f"\n[{kind}] {files} files, {total / 1e6:.1f} MB (tree made in {made:.1f} s)", flush=True)
    only = set(args.only.split(",")) if args.only else set(ROWS)
    rows: dict[str, list[dict]] = {name: [] for name in ROWS if name in only
                                   and (args.baseline or not name.endswith("-base"))}
    resend: dict[str, list[dict]] = {"ftx-tcp": [], "ftx-tcp-base": [], "rsync": []}
    sshd = None
    if "scp" in rows:
        from bench_secure import PrivateSshd

        sshd = PrivateSshd()
    try:
        for run in range(args.runs):
            for name in rows:  # interleaved: a noisy neighbour hits every column alike
                dst = os.path.join(work_dst, f"{name}-{run}")
                os.mkdir(dst)
                try:
                    if name == "ftx-tcp":
                        r = bench_ftx(src, dst, udp=False)
                        if args.resend:
                            resend["ftx-tcp"].append(bench_ftx(src, dst, udp=False))
                    elif name == "ftx-udp":
                        r = bench_ftx(src, dst, udp=True)
                    elif name.endswith("-base"):
                        r = bench_ftx(src, dst, udp=name == "ftx-udp-base", root=args.baseline)
                        if args.resend and name == "ftx-tcp-base":
                            resend[name].append(bench_ftx(src, dst, udp=False, root=args.baseline))
                    elif name == "tar-nc":
                        r = bench_tar_nc(src, dst)
                    elif name == "rsync":
                        r = bench_rsync(src, dst, kind)
                        if args.resend and r is not None:
                            resend["rsync"].append(bench_rsync(src, dst, kind + "-again", again=True))
                    elif name == "scp":
                        r = bench_scp(sshd, src, dst)
                    else:
                        r = bench_wormhole(src, dst)
                except RuntimeError as exc:
                    notes.append(f"{kind}: {TITLES[name]} run {run + 1} failed: {exc}")
                    r = None
                finally:
                    drop(dst)
                if r is not None:
                    rows[name].append(r)
                    if r.get("file_lines") is not None and r["file_lines"] != files + _dirs(kind, files):
                        notes.append(f"{kind}: {TITLES[name]}: {r['file_lines']} --json file lines for "
                                     f"{files + _dirs(kind, files)} items")
    finally:
        if sshd is not None:
            sshd.close()
    print_table(kind, files, total, rows, resend, args.runs)


def _dirs(kind: str, files: int) -> int:
    return 1 + {"small": 20, "tiny": 200}.get(kind, max(1, files // 100))  # the root and its subdirectories


def print_table(kind, files, total, rows, resend, runs) -> None:
    med = {name: statistics.median(r["seconds"] for r in res) for name, res in rows.items() if res}
    print(f"loopback, page cache -> tmpfs, median of {runs} (whole command, start-up included)")
    print(f"{'':16} {'seconds':>8} {'files/s':>9} {'MB/s':>7} {'send RSS MB':>12} {'recv RSS MB':>12} "
          f"{'vs rsync':>9} {'send CPU s':>11} {'recv CPU s':>11}")
    for name, res in rows.items():
        if not res:
            print(f"{TITLES[name]:16} {'skipped':>8}")
            continue
        secs = med[name]
        ratio = f"{med['rsync'] / secs:8.2f}x" if "rsync" in med else ""
        print(f"{TITLES[name]:16} {secs:8.2f} {files / secs:9.0f} {total / secs / 1e6:7.1f} "
              f"{max(r['send_rss'] for r in res) / 1e6:12.1f} {max(r['recv_rss'] for r in res) / 1e6:12.1f} {ratio:>9} "
              f"{statistics.median(r['send_cpu'] for r in res):11.2f} {statistics.median(r['recv_cpu'] for r in res):11.2f}")
    for name, res in resend.items():
        if not res:
            continue
        secs = statistics.median(r["seconds"] for r in res)
        wire = [r["wire"] for r in res if r.get("wire") is not None]
        share = f" ({statistics.median(wire) / total:.1%} of the set's bytes)" if total else ""  # (huge: 0 bytes)
        wire_text = f"{statistics.median(wire) / 1e6:.2f} MB on the wire{share}" if wire else "wire bytes unknown"
        first = med.get(name)
        speed = f", {first / secs:.1f}x faster than the first send" if first else ""
        print(f"resend {TITLES[name]:9} {secs:8.3f} s onto the complete destination: {wire_text}{speed}")
    for name, res in [*rows.items(), *(("resend " + n, r) for n, r in resend.items())]:  # every run, for A/B
        if res:
            print(f"  runs {name}: " + " ".join(f"{r['seconds']:.3f}" for r in res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=("small", "tiny", "huge"), dest="sets")
    ap.add_argument("--count", type=int, default=200_000, help="files of the huge set")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--src-dir", default="/dev/shm")
    ap.add_argument("--dst-dir", default="/dev/shm")
    ap.add_argument("--only", default="", help=f"comma-separated columns among {','.join(ROWS)}")
    ap.add_argument("--baseline", metavar="DIR", help="also run the ftx of this source tree (e.g. `git archive` "
                    "of an older commit), interleaved: the ftx-tcp-base and ftx-udp-base columns")
    ap.add_argument("--no-resend", dest="resend", action="store_false", help="skip the resend rows")
    ap.add_argument("--python", metavar="PY", help="the interpreter that runs the ftx rows, e.g. a venv's with a "
                    "regular `pip install .` (no editable-install finder at start-up); default: this one")
    args = ap.parse_args()
    if args.python:
        FTX_CMD[0] = args.python
    # the .pyc of both ftx trees written first, as installing does (PYTHONDONTWRITEBYTECODE=1 left
    # every run compiling the modules changed since: up to 75 ms a command)
    compile_ftx(FTX_CMD[0])
    if args.baseline:
        compile_ftx(FTX_CMD[0], args.baseline)
    own_identity()
    notes: list[str] = []
    work_src = tempfile.mkdtemp(prefix="ftx-bench-files-src-", dir=args.src_dir)
    work_dst = tempfile.mkdtemp(prefix="ftx-bench-files-dst-", dir=args.dst_dir)
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        for kind in args.sets or ["small", "tiny"]:
            run_set(kind, args, work_src, work_dst, notes)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        if not tool("rsync"):
            notes.append("rsync skipped: not installed")
        if not tool("nc"):
            notes.append("tar | nc skipped: nc (netcat-openbsd) not installed")
        if not (tool("wormhole") and tool("twist")):
            notes.append("magic-wormhole skipped: `wormhole` and `twist` not installed")
        for note in notes:
            print(f"note: {note}")
    finally:
        drop(work_src)
        drop(work_dst)


if __name__ == "__main__":
    main()
