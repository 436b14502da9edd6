#!/usr/bin/env python3
"""Resource bounds under attack: what hostile clients cost one ``ftx receive`` (issue #11).

Each attack runs against its own fresh receiver (a real ``ftx receive``
subprocess on 127.0.0.1, ephemeral port, its own --dir), one at a time:

1. the receiver starts; a legitimate sender sends a 32 MiB file over TCP and
   over UDP (``ftx send``), once untimed (warm-up), then timed: the undisturbed
   times; RSS after them is the baseline ("before");
2. the attack starts (attackers use 127.0.0.2 and up as source addresses, the
   legitimate sender 127.0.0.1); the legitimate sender sends both files again;
3. the attackers leave; the receiver gets up to --settle seconds to give back
   what they cost (the wait ends early once RSS and descriptors are back).

A thread samples VmRSS/VmHWM (/proc/PID/status) and the open descriptors
(/proc/PID/fd; "dir fds" are those on files in --dir) throughout.  The table
shows, per attack: RSS before / peak / after, peak descriptors, sidecar files
(files in .ftx/ and .ftx-* temporaries) and disk used in --dir after, the legitimate sender's
times undisturbed -> during the attack, and PASS/FAIL against the targets.

--dir lives on a private filesystem (--fs auto: a loop-mounted ext4 image of
--fs-size when run as root, else a size-limited tmpfs, else a plain directory),
because some attacks try to fill the filesystem; on a plain directory the
10 TiB claim is skipped.

    python benchmarks/bench_abuse.py [--quick] [--only NAME[,NAME]] [--receiver-args "--max-memory 128M"]
    python benchmarks/bench_abuse.py --list
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_abuse.py   # benchmark that ftx

The attackers play authorized but hostile senders: the receiver and the legitimate
sender run ``--insecure``, so the raw attack clients reach the bounds behind
authentication.  ``--sealed`` runs everything against a default (keys-mode)
receiver instead; the attacks then cost only what an unauthenticated peer can.

Counts (full / --quick) are in each attack's description (--list).  Floods
are paced at --flood-rate datagrams/s (default 20 000), so the attacker and
the legitimate sender do not simply compete for this machine's cores.
Takes about 7 minutes (--quick: about 1).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import FTX, make_source, parse_size  # noqa: E402

import abuse_attacks  # noqa: E402

MB = 1 << 20
LEGIT = "legit.bin"
# ftx children run from here, so that PYTHONPATH (not the current directory) says which ftx they run
NEUTRAL_CWD = "/"


# == the receiver and what it costs ================================================
class Sampler(threading.Thread):
    """Samples a process's RSS and descriptors until stopped; peaks since the last ``mark``."""

    def __init__(self, pid: int, directory: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.dir, self.interval = pid, os.path.realpath(directory), interval
        self.rss = self.fds = self.dir_fds = 0
        self.peak_rss = self.peak_fds = self.peak_dir_fds = 0
        self.alive = True
        self._halt = threading.Event()
        self.sample()
        self.start()

    def sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.rss = int(line.split()[1]) * 1024
            names = os.listdir(f"/proc/{self.pid}/fd")
            fds = len(names)
            # reading every link is costly with 20 000 of them: count files in --dir only when it may matter
            dir_fds = 0
            for n in names:
                try:
                    if os.readlink(f"/proc/{self.pid}/fd/{n}").startswith(self.dir):
                        dir_fds += 1
                except OSError:
                    pass
            self.fds, self.dir_fds = fds, dir_fds
        except (FileNotFoundError, ProcessLookupError):
            self.alive = False
            return
        except OSError:
            return
        self.peak_rss = max(self.peak_rss, self.rss)
        self.peak_fds = max(self.peak_fds, self.fds)
        self.peak_dir_fds = max(self.peak_dir_fds, self.dir_fds)

    def hwm(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def mark(self) -> None:
        self.sample()
        self.peak_rss, self.peak_fds, self.peak_dir_fds = self.rss, self.fds, self.dir_fds

    def run(self) -> None:
        while not self._halt.wait(self.interval if self.fds < 2000 else 4 * self.interval):
            self.sample()
            if not self.alive:
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


MODE = ["--insecure"]  # main(): [] with --sealed


class Receiver:
    """``ftx receive --json`` on 127.0.0.1; its stdout is drained on a thread (it writes a
    line per file, and a blocked pipe would stall it), stderr goes to a log file."""

    def __init__(self, directory: str, log_path: str, extra: list[str]) -> None:
        self.log = open(log_path, "w")
        os.makedirs(directory, exist_ok=True)  # ftx receive no longer creates a missing --dir
        self.proc = subprocess.Popen(FTX + ["receive", "--listen", "127.0.0.1", "--port", "0", "--dir", directory,
                                            "--json", *MODE, *extra], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=NEUTRAL_CWD)
        self.lines: queue.Queue = queue.Queue()
        self.events = 0
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            first = json.loads(self.lines.get(timeout=30))
        except (queue.Empty, ValueError, TypeError):
            self.stop()
            raise RuntimeError(f"ftx receive did not start (see {log_path})") from None
        self.port = first["port"]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if self.events == 0:
                self.lines.put(line)
            self.events += 1
        self.lines.put(None)

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def legit_send(src: str, port: int, udp: bool, timeout: float, receiver_alive=lambda: True) -> tuple[float | None, str]:
    """``ftx send`` of the legitimate file; (seconds, "") or (None, why it did not finish).
    Once the receiver is gone the sender gets half a second more, not its whole timeout."""
    cmd = FTX + ["send", src, f"127.0.0.1:{port}", "--json", "--no-progress", *MODE] + (["--udp"] if udp else [])
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=NEUTRAL_CWD)
        deadline, why = t0 + timeout, ""
        while proc.poll() is None:
            now = time.perf_counter()
            if not receiver_alive() and not why:
                deadline, why = min(deadline, now + 0.5), "receiver gone"
            if now >= deadline:
                proc.kill()
                proc.wait()
                return None, why or f"not done in {timeout:.0f} s"
            time.sleep(0.01)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            if not receiver_alive():  # UDP ends at once on the ICMP port unreachable of a dead receiver
                return None, "receiver gone"
            err.seek(0)
            last = (err.read().strip().splitlines() or ["?"])[-1]
            return None, f"exit {proc.returncode}: {last}"[:200]
    return took, ""


def dir_usage(directory: str) -> tuple[int, int]:
    """(sidecar files, bytes of disk used) under ``directory``."""
    sidecars = used = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if os.path.basename(root) == ".ftx" or name.startswith(".ftx-"):  # ftx's state, its temporaries
                sidecars += 1
            try:
                used += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return sidecars, used


def clear_dir(directory: str) -> None:
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


# == a private filesystem for --dir ================================================
class Scratch:
    """Where --dir lives: ``kind`` is ext4 (loop image), tmpfs or plain."""

    def __init__(self, want: str, size: int, work: str) -> None:
        self.mount = os.path.join(work, "fs")
        os.makedirs(self.mount)
        self.image = None
        self.kind = "plain"
        root = os.geteuid() == 0
        if want in ("auto", "ext4") and root and shutil.which("mkfs.ext4"):
            self.image = os.path.join(work, "fs.img")
            with open(self.image, "wb") as f:
                f.truncate(size)
            ok = subprocess.run(["mkfs.ext4", "-q", "-F", "-i", "4096", self.image], capture_output=True).returncode == 0
            ok = ok and subprocess.run(["mount", "-o", "loop", self.image, self.mount],
                                       capture_output=True).returncode == 0
            if ok:
                self.kind = "ext4"
            else:
                os.unlink(self.image)
                self.image = None
        if self.kind == "plain" and want in ("auto", "tmpfs") and root:
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=1000000", "tmpfs", self.mount],
                              capture_output=True).returncode == 0:
                self.kind = "tmpfs"
        if want not in ("auto", self.kind):
            self.close()
            raise SystemExit(f"bench_abuse: cannot make a private {want} filesystem (needs root)")

    def close(self) -> None:
        if self.kind != "plain":
            subprocess.run(["umount", "-l", self.mount], capture_output=True)
            self.kind = "plain"
        if self.image:
            os.unlink(self.image)
            self.image = None


# == one row =======================================================================
@dataclass
class Row:
    name: str
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    fds_peak: int = 0
    dir_fds_peak: int = 0
    sidecars: int = 0
    disk: int = 0
    tcp: tuple = (None, None)  # undisturbed s, during s
    udp: tuple = (None, None)
    died: str = ""
    skipped: str = ""
    notes: list[str] = field(default_factory=list)
    fails: list[str] = field(default_factory=list)


@dataclass
class Targets:
    memory: int = 256 * MB
    settle: int = 16 * MB
    open_files: int = 512
    connections: int = 256
    slowdown: float = 3.0

    @classmethod
    def from_args(cls, args: list[str]) -> "Targets":
        t = cls()
        opts = {}
        for i, a in enumerate(args):
            if a.startswith("--") and "=" in a:
                k, v = a.split("=", 1)
                opts[k] = v
            elif a.startswith("--") and i + 1 < len(args):
                opts[a] = args[i + 1]
        from ftx.limits import parse_size as limit_size

        if "--max-memory" in opts:
            t.memory = limit_size(opts["--max-memory"])
        if "--max-open-files" in opts:
            t.open_files = int(opts["--max-open-files"])
        if "--max-connections" in opts:
            t.connections = int(opts["--max-connections"])
        return t


def judge(row: Row, t: Targets) -> None:
    if row.skipped:
        return
    if row.died:
        row.fails.append("died")
    if row.rss_peak > t.memory:
        row.fails.append("mem")
    if row.rss_after > row.rss_before + t.settle:
        row.fails.append("after")
    # files in --dir are what --max-open-files caps; sockets come on top (--max-connections)
    if row.dir_fds_peak > t.open_files or row.fds_peak > t.open_files + t.connections + 64:
        row.fails.append("fds")
    for label, (base, during) in (("tcp", row.tcp), ("udp", row.udp)):
        if during is None or base is None or during > t.slowdown * base:
            row.fails.append(label)


def run_attack(cls, args, scratch_dir: str, work: str, src: str, targets: Targets, extra: list[str]) -> Row:
    row = Row(cls.name)
    if cls.needs_private_fs and args.fs_kind == "plain":
        row.skipped = "skipped: would fill a shared filesystem (use --fs ext4 or tmpfs, as root)"
        return row
    clear_dir(scratch_dir)
    recv = Receiver(scratch_dir, os.path.join(work, f"receiver-{cls.name}.log"), extra)
    sampler = Sampler(recv.proc.pid, scratch_dir)
    alive = lambda: recv.exit_code is None  # noqa: E731
    attack = None
    try:
        for udp in (False, True) if args.warmup else ():  # untimed: a fresh receiver's start-up costs
            legit_send(src, recv.port, udp, args.send_timeout, alive)
            _remove(scratch_dir, LEGIT)
        base_tcp, why_t = legit_send(src, recv.port, False, args.send_timeout, alive)
        _remove(scratch_dir, LEGIT)
        base_udp, why_u = legit_send(src, recv.port, True, args.send_timeout, alive)
        for why, label in ((why_t, "tcp"), (why_u, "udp")):
            if why:
                row.notes.append(f"undisturbed {label}: {why}")
        clear_dir(scratch_dir)
        sampler.mark()
        row.rss_before = sampler.rss
        fds_before, dir_fds_before = sampler.fds, sampler.dir_fds
        attack = cls(abuse_attacks.Context(recv.port, scratch_dir, args, LEGIT))
        t0 = time.monotonic()
        try:
            attack.start()
        except Exception as exc:  # an attack that cannot even be set up is a finding, not a crash
            row.notes.append(f"attack setup: {type(exc).__name__}: {exc}"[:120])
        row.notes.append(f"in place after {time.monotonic() - t0:.1f} s")
        attack.before_send("tcp")
        during_t, why_t = legit_send(src, recv.port, False, args.send_timeout, alive)
        _remove(scratch_dir, LEGIT)
        attack.before_send("udp")
        during_u, why_u = legit_send(src, recv.port, True, args.send_timeout, alive)
        _remove(scratch_dir, LEGIT)
        for why, label in ((why_t, "tcp"), (why_u, "udp")):
            if why:
                row.notes.append(f"{label} during: {why}".replace(os.path.realpath(scratch_dir), "DIR"))
        attack.hold_until(t0 + attack.min_seconds)
        row.tcp, row.udp = (base_tcp, during_t), (base_udp, during_u)
        row.notes.extend(attack.finish())
        attack = None
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline and sampler.alive:
            sampler.sample()
            if (sampler.rss <= row.rss_before + targets.settle and sampler.fds <= fds_before
                    and sampler.dir_fds <= dir_fds_before):
                break
            time.sleep(0.2)
        sampler.sample()
        row.rss_after = sampler.rss
        row.rss_peak = max(sampler.peak_rss, sampler.hwm())
        row.fds_peak, row.dir_fds_peak = sampler.peak_fds, sampler.peak_dir_fds
    finally:
        if attack is not None:
            attack.finish()
        sampler.stop()
        if not sampler.alive or recv.exit_code is not None:
            row.died = f"receiver died (exit {recv.exit_code})"
            row.rss_peak = max(row.rss_peak, sampler.peak_rss)
        recv.stop()
    row.sidecars, row.disk = dir_usage(scratch_dir)
    row.notes.extend(log_findings(os.path.join(work, f"receiver-{cls.name}.log")))
    judge(row, targets)
    return row


def log_findings(path: str) -> list[str]:
    """Tracebacks and the most frequent error in the receiver's stderr, in one note."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    tracebacks = sum(line.startswith("Traceback") for line in lines)
    errors: dict[str, int] = {}
    for line in lines:
        if "Error" in line and not line.startswith(" "):
            key = line.strip()[:100]
            errors[key] = errors.get(key, 0) + 1
    if not tracebacks and not errors:
        return []
    top = max(errors, key=errors.get) if errors else ""
    return [f"receiver stderr: {len(lines)} lines, {tracebacks} tracebacks; most frequent error "
            f"({errors.get(top, 0)}x): {top}"]


def _remove(directory: str, name: str) -> None:
    try:
        os.unlink(os.path.join(directory, name))
    except OSError:
        pass


# == the table =====================================================================
def _s(pair: tuple) -> str:
    base, during = pair
    b = f"{base:.2f}" if base is not None else "-"
    d = f"{during:.2f}" if during is not None else "FAILED"
    return f"{b}->{d}"


def print_table(rows: list[Row], t: Targets, args, fs_kind: str) -> None:
    print(f"\ntargets: RSS peak <= {t.memory // MB} MB; RSS after <= before + {t.settle // MB} MB; "
          f"files open in --dir <= {t.open_files} (--max-open-files) and all fds <= {t.open_files + t.connections + 64}; "
          f"legit sender during <= {t.slowdown:g}x undisturbed and finishes (FAILED: it did not)")
    import resource

    print(f"legit file {args.legit_size // MB} MiB (TCP, then UDP); --dir on {fs_kind}; receiver args: "
          f"{args.receiver_args or '(defaults)'}; its descriptor limit (RLIMIT_NOFILE): "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    head = (f"{'attack':18} {'RSS MB before/peak/after':>24} {'fds peak (dir)':>15} {'sidecars':>8} {'disk MB':>8} "
            f"{'tcp s base->during':>19} {'udp s base->during':>19}  result")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.skipped:
            print(f"{r.name:18} {r.skipped}")
            continue
        rss = f"{r.rss_before / MB:.0f}/{r.rss_peak / MB:.0f}/{r.rss_after / MB:.0f}"
        fds = f"{r.fds_peak} ({r.dir_fds_peak})"
        verdict = "PASS" if not r.fails else "FAIL " + ",".join(r.fails)
        print(f"{r.name:18} {rss:>24} {fds:>15} {r.sidecars:>8} {r.disk / MB:>8.1f} "
              f"{_s(r.tcp):>19} {_s(r.udp):>19}  {verdict}")
    print("\nnotes:")
    for r in rows:
        for n in ([r.died] if r.died else []) + r.notes:
            print(f"  {r.name}: {n}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated attack names (see --list)")
    ap.add_argument("--sealed", action="store_true", help="a default keys-mode receiver: attackers are unauthenticated")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--quick", action="store_true", help="smaller counts and durations (a smoke run)")
    ap.add_argument("--receiver-args", default="", help="extra arguments for ftx receive, e.g. '--max-memory 128M'")
    ap.add_argument("--legit-size", default=None, help="legitimate file size (default 32M, --quick 4M)")
    ap.add_argument("--fuzz-seconds", type=float, default=None, help="mutated-datagram attack (default 10, --quick 2)")
    ap.add_argument("--flood-seconds", type=float, default=None, help="INITIAL flood at least this long (default 10)")
    ap.add_argument("--flood-rate", type=float, default=20000, help="datagrams/s of UDP floods (0: flat out)")
    ap.add_argument("--attacker-hosts", type=int, default=50, help="source addresses many-connection attacks use")
    ap.add_argument("--settle", type=float, default=None, help="seconds the receiver gets to give memory back")
    ap.add_argument("--send-timeout", type=float, default=None, help="legit sender deadline (default 60, quick 20)")
    ap.add_argument("--fs", default="auto", choices=["auto", "ext4", "tmpfs", "plain"], help="filesystem for --dir")
    ap.add_argument("--fs-size", default="2G")
    ap.add_argument("--work-dir", default="/var/tmp", help="where the source file and the ext4 image go")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="no untimed legit sends before the timed ones (faster, noisier baseline)")
    ap.add_argument("--logs", default="", help="keep each receiver's stderr in this directory")
    args = ap.parse_args()
    if args.sealed:
        MODE.clear()
    attacks = abuse_attacks.ATTACKS
    if args.list:
        for cls in attacks:
            print(f"{cls.name:18} {' '.join(cls.__doc__.split())}")
        return 0
    q = args.quick
    args.legit_size = parse_size(args.legit_size or ("4M" if q else "32M"))
    args.fuzz_seconds = args.fuzz_seconds if args.fuzz_seconds is not None else (2.0 if q else 10.0)
    args.flood_seconds = args.flood_seconds if args.flood_seconds is not None else (2.0 if q else 10.0)
    args.settle = args.settle if args.settle is not None else (3.0 if q else 25.0)
    args.send_timeout = args.send_timeout or (20.0 if q else 60.0)
    chosen = attacks
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in {c.name for c in attacks}]
        if unknown:
            ap.error(f"unknown attack(s) {', '.join(unknown)}; --list shows them")
        chosen = [c for c in attacks if c.name in names]
    extra = shlex.split(args.receiver_args)
    targets = Targets.from_args(extra)
    work = tempfile.mkdtemp(prefix="ftx-abuse-", dir=args.work_dir)
    scratch = None
    rows = []
    try:
        scratch = Scratch(args.fs, parse_size(args.fs_size), work)
        args.fs_kind = scratch.kind
        dst = os.path.join(scratch.mount, "dst")
        os.makedirs(dst)
        src = os.path.join(work, "src", LEGIT)
        os.makedirs(os.path.dirname(src))
        make_source(src, args.legit_size)
        for cls in chosen:
            print(f"[{time.strftime('%H:%M:%S')}] {cls.name} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run_attack(cls, args, dst, work, src, targets, extra))
            except Exception as exc:  # the benchmark reports what broke and goes on to the next attack
                r = Row(cls.name, skipped=f"benchmark error: {type(exc).__name__}: {exc}"[:150])
                rows.append(r)
        print_table(rows, targets, args, scratch.kind)
        if args.logs:
            os.makedirs(args.logs, exist_ok=True)
            for name in os.listdir(work):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(work, name), args.logs)
    finally:
        if scratch is not None:
            scratch.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(not r.skipped.startswith("benchmark error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
