#!/usr/bin/env python3
"""UDP attacks on a real ``ftx receive`` (issue #11, item 11 and the UDP half of 12): for each,
the receiver's resident memory before, at its peak and after the attackers leave, its open
file descriptors at the peak, and how long a legitimate ``ftx send --udp`` of --size takes
while the attack runs, against the same send undisturbed.

    python benchmarks/bench_udp_abuse.py [--size 8M] [--max-memory 256M]

The attackers are Python (tests/udp_attacker.py); on loopback they share the machine's
cores with the receiver and the sender, which is harder on the receiver than a remote
attacker of the same rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ftx.core.frames import FrameType, encode_frame  # noqa: E402
from ftx.core.udp import packets as P  # noqa: E402
from tests.udp_attacker import MIB, RawPeer, Refused, hello_bytes, rss  # noqa: E402

FTX = [sys.executable, "-m", "ftx"]
FLOOD = ROOT / "tests" / "test_udp_abuse.py"


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Target:
    def __init__(self, directory: Path, *args: str) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(FTX + ["receive", "--port", "0", "--dir", str(directory), "--json", "-q", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.port = json.loads(self.proc.stdout.readline())["port"]
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.peak_fds = 0

    def settled(self) -> int:
        last = rss(self.proc.pid)[0]
        for _ in range(25):
            time.sleep(0.2)
            now = rss(self.proc.pid)[0]
            if abs(now - last) < 256 * 1024:
                return now
            last = now
        return last

    def sample(self) -> None:
        self.peak_fds = max(self.peak_fds, fds(self.proc.pid))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def legit(target: Target, src: Path) -> float | None:
    t = time.monotonic()
    try:
        p = subprocess.run(FTX + ["send", str(src), f"127.0.0.1:{target.port}", "--udp", "--json", "--no-progress"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    finally:
        for f in target.dir.iterdir():
            f.unlink()
    return time.monotonic() - t if p.returncode == 0 else None


# -- attacks: each sets itself up, and returns a function that ends it ------------------------
def chunk_claims(target: Target):
    sessions = []
    for k in range(20):
        s = RawPeer(target.port, bind=f"127.0.1.{k + 1}").handshake()
        s.hello()
        for i in range(2):
            s.chunk(1, i, 16 * MIB, i * 8 * MIB, b"x" * 10)
        sessions.append(s)
    return lambda: [s.close() for s in sessions]


def reassembly(target: Target):
    sessions = []
    for k in range(10):
        s = RawPeer(target.port, bind=f"127.0.2.{k + 1}").handshake()
        s.hello()
        sessions.append(s)
    for index in range(12):
        for off in range(0, MIB - 2400, 1200):
            for s in sessions:
                s.chunk(1, index, MIB, off, bytes(1200))
        time.sleep(0.02)
    return lambda: [s.close() for s in sessions]


def background(fn):
    """Run ``fn(stop_event)`` in a thread; return the function that stops it."""
    stop = threading.Event()
    t = threading.Thread(target=fn, args=(stop,), daemon=True)
    t.start()

    def end():
        stop.set()
        t.join(10)
    return end


def handshake_storm(target: Target):
    def run(stop):
        peer = RawPeer(target.port, timeout=1)
        while not stop.is_set():
            try:
                peer.handshake(wait=0.001, attempts=2)
            except (Refused, TimeoutError):
                pass
    return background(run)


def mutated(target: Target):
    hello = hello_bytes()

    def run(stop):
        rng = random.Random(1)
        peers = [RawPeer(target.port, bind=f"127.0.3.{k + 1}", timeout=1) for k in range(4)]
        sessions = [p.handshake() for p in peers]
        while not stop.is_set():
            for i, s in enumerate(sessions):
                for _ in range(50):
                    kind = rng.randrange(4)
                    if kind == 0:
                        clen = rng.choice([1000, MIB, 16 * MIB])
                        off = rng.randrange(clen)
                        n = min(1300, clen - off)
                        payload = P.CHUNK_HEADER.pack(P.F_CHUNK, rng.randrange(4), rng.randrange(64), clen, off, 0, n) \
                            + bytes(n)
                    elif kind == 1:
                        payload = P.encode_stream(rng.randrange(1 << 30), rng.randbytes(rng.choice([0, 1, 1200])))
                    elif kind == 2:
                        payload = P.encode_stream(0, hello)
                    else:
                        payload = rng.randbytes(rng.randrange(1, 1300))
                    payload = bytearray(payload)
                    payload[rng.randrange(len(payload))] = rng.randrange(256)
                    s.send(bytes(payload))
                if any(isinstance(f, P.CloseFrame) for f in s.poll(0.001)):
                    try:
                        sessions[i] = peers[i].handshake(wait=0.05, attempts=4)
                    except (Refused, TimeoutError):
                        pass
    return background(run)


def initial_flood(target: Target):
    src = FLOOD.read_text()
    code = src[src.index('FLOOD = r"""') + len('FLOOD = r"""'):]
    code = code[: code.index('"""')]
    proc = subprocess.Popen([sys.executable, "-c", code, str(target.port), "600"], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    proc.stdout.readline()

    def end():
        proc.kill()
        proc.wait()
    return end


def empty_stream_frames(target: Target):
    s = RawPeer(target.port).handshake()
    s.hello()
    ahead = s.stream_off + 1_000_000
    for k in range(500):
        s.send(b"".join(P.encode_stream(ahead + 100 * k + j, b"") for j in range(100)))
    frame = encode_frame(FrameType.OFFER, bytes(64 * 1024))
    for b in range(3000):
        s.send(P.encode_stream(s.stream_off, frame[b:b + 1]))
        s.stream_off += 1
    return s.close


ATTACKS = [
    ("20 sessions x 2 CHUNKs announcing 16 MiB", chunk_claims),
    ("10 sessions x 12 MiB of unfinished chunks", reassembly),
    ("handshake storm from one socket", handshake_storm),
    ("mutated datagrams, 4 sessions", mutated),
    ("INITIAL flood from 256 addresses", initial_flood),
    ("50 000 empty STREAM frames", empty_stream_frames),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="8M", help="the legitimate send (K/M suffix)")
    ap.add_argument("--max-memory", default="256M")
    ap.add_argument("--only", default="", help="run the attacks whose name contains this")
    args = ap.parse_args()
    size = int(args.size[:-1]) * (MIB if args.size[-1] in "mM" else 1024)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "legit.bin"
        src.write_bytes(os.urandom(size))
        dst = Path(tmp) / "dst"
        dst.mkdir()
        print(f"receiver --max-memory {args.max_memory}; legitimate send: {args.size} over UDP")
        print(f"{'attack':44} {'RSS MiB before':>14} {'peak':>6} {'after':>6} {'fds':>5} {'send s alone':>13} "
              f"{'during':>7}")
        for name, attack in ATTACKS:
            if args.only not in name:
                continue
            target = Target(dst, "--max-memory", args.max_memory, "--idle-timeout", "5")
            try:
                alone = legit(target, src)
                base = target.settled()
                end = attack(target)
                time.sleep(0.5)  # let the attack take hold before the sender starts
                target.sample()
                during = legit(target, src)
                target.sample()
                peak = rss(target.proc.pid)[1]
                end()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and rss(target.proc.pid)[0] > base + 16 * MIB:
                    time.sleep(0.2)
                after = rss(target.proc.pid)[0]
                shown = f"{during:7.2f}" if during is not None else " failed"  # or over 120 s
                print(f"{name:44} {base / MIB:14.0f} {peak / MIB:6.0f} {after / MIB:6.0f} {target.peak_fds:5d} "
                      f"{alone:13.2f} {shown}", flush=True)
            finally:
                target.stop()


if __name__ == "__main__":
    main()
