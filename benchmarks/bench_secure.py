#!/usr/bin/env python3
"""Sealed TCP throughput: ftx plaintext vs sealed (AES-256-GCM, ChaCha20-Poly1305), same run,
beside scp (aes128-gcm, to a private sshd on loopback) and magic-wormhole (local
mailbox server and transit relay) when they are installed.

Source file in the page cache, destination on tmpfs, loopback.  Each ftx
side is its own process (``--child``) running the library: ``tcp.connect`` /
``tcp.serve``, then ``ftx.securing.run_handshake`` (sealed rows only), then
``send_paths`` / ``receive_over``.  Prints the median MB/s and CPU s/GB of
each side over ``--runs``, and sealed/plaintext ratios (target >= 0.85).

The handshake is pluggable: ``--handshake MODULE:FACTORY`` names a callable
``FACTORY(role, cipher=...)`` returning a ``Handshake`` for role "client" or
"server" (default: the test double ``tests.secure_fakes:FakeHandshake``,
fixed secrets, one frame each way).  ``--handshake-latency N`` also times N
connect+handshake round trips on loopback (the lead measures the real
handshakes with it).

    python benchmarks/bench_secure.py [--size 1G] [--runs 3] [--handshake tests.secure_fakes:FakeHandshake]
        [--baseline TREE]     # TREE's ftx beside this one's, interleaved: rows "NAME (base)"

scp needs openssh-server (sshd) and magic-wormhole needs ``wormhole`` and ``twist`` on PATH
(pip install magic-wormhole magic-wormhole-mailbox-server magic-wormhole-transit-relay);
otherwise their rows are skipped with a note.  scp's CPU is the sending side's (scp and ssh).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from harness import compile_ftx, make_source, parse_size, read_line, round_order, run_wait, warm_memory  # noqa: E402

DEFAULT_HANDSHAKE = "real_handshakes:keys"  # the real SIGMA-I handshake; tests.secure_fakes:FakeHandshake is the stand-in
WORMHOLE_TIMEOUT = 300  # seconds for one magic-wormhole transfer before it counts as failed


def load_factory(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# -- the two ftx sides, as child processes ----------------------------------------------
async def child_recv(directory: str, cipher: str | None, handshake: str) -> None:
    from ftx.receiving import receive_over
    from ftx.securing import run_handshake
    from ftx.storage import Destination
    from ftx.transport import tcp

    factory = load_factory(handshake) if cipher else None  # before the port is printed (untimed), as `ftx
    # receive` loads its identity (cryptography) before it listens: its imports are not the transfer's time
    socks = tcp.listen("127.0.0.1", 0)
    print(socks[0].getsockname()[1], flush=True)
    done = asyncio.get_running_loop().create_future()

    async def handle(link):
        try:
            if cipher:
                await run_handshake(link, factory("server", cipher=cipher.partition("/")[0]), 10)
            session = await receive_over(link, Destination(directory))
            done.set_result(session.error)
        except Exception as exc:
            done.set_result(repr(exc))

    server = asyncio.get_running_loop().create_task(tcp.serve(socks, handle))
    error = await done
    server.cancel()
    if error:
        sys.exit(f"receive failed: {error}")


async def child_send(src: str, port: int, cipher: str | None, handshake: str) -> None:
    from ftx.securing import run_handshake
    from ftx.sending import send_paths
    from ftx.transport import tcp

    link = await tcp.connect("127.0.0.1", port)
    if cipher:
        name, _, record = cipher.partition("/")
        await run_handshake(link, load_factory(handshake)("client", cipher=name), 10)
        if record:  # a row "aes-256-gcm/262144": the sender seals records of at most that many bytes
            link._sealer.max_record = int(record)
    report = await send_paths(link, [src])
    if not report.ok:
        sys.exit(f"send failed: {report.error}")


async def child_latency(port: int, count: int, cipher: str, handshake: str) -> None:
    from ftx.securing import run_handshake
    from ftx.transport import tcp

    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        link = await tcp.connect("127.0.0.1", port)
        await run_handshake(link, load_factory(handshake)("client", cipher=cipher), 10)
        times.append(time.perf_counter() - t0)
        link.close()
    print(statistics.median(times), min(times), max(times), flush=True)


async def child_latency_server(cipher: str, handshake: str) -> None:
    from ftx.securing import run_handshake
    from ftx.transport import tcp

    socks = tcp.listen("127.0.0.1", 0)
    print(socks[0].getsockname()[1], flush=True)

    async def handle(link):
        try:
            await run_handshake(link, load_factory(handshake)("server", cipher=cipher), 10)
            await link.recv_into(memoryview(bytearray(16)))  # until the client closes
        except Exception:
            pass
        link.close()

    await tcp.serve(socks, handle)


# -- the parent -------------------------------------------------------------------------
def child(*args: str, stdout=None, tree: str = ROOT) -> subprocess.Popen:
    """A child process running ``tree``'s copy of this script (and so that tree's ftx)."""
    return subprocess.Popen([sys.executable, os.path.join(tree, "benchmarks", os.path.basename(__file__)), "--child",
                             *args], stdout=stdout, text=True, cwd=tree)


def bench_ftx(src: str, dst_dir: str, cipher: str, handshake: str, tree: str = ROOT) -> dict:
    recv = child("recv", dst_dir, cipher, handshake, stdout=subprocess.PIPE, tree=tree)
    port = read_line(recv).strip()
    t0 = time.perf_counter()
    send = child("send", src, port, cipher, handshake, tree=tree)
    s = run_wait(send)
    r = run_wait(recv)
    elapsed = time.perf_counter() - t0
    if s[0] or r[0]:
        raise RuntimeError(f"ftx {cipher} run failed ({s[0]}, {r[0]})")
    return {"seconds": elapsed, "send_cpu": s[1], "recv_cpu": r[1], "send_rss": s[2], "recv_rss": r[2]}


class PrivateSshd:
    """An sshd of our own on a free loopback port: fresh host and client keys in a temporary
    directory, nothing read from or written to the user's ~/.ssh."""

    def __init__(self) -> None:
        import socket

        self.ok = False
        sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
        if not sshd or not shutil.which("scp") or not shutil.which("ssh-keygen"):
            return
        self.dir = tempfile.mkdtemp(prefix="ftx-sshd-")
        d = self.dir
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{name}"], check=True)
        shutil.copy(f"{d}/client.pub", f"{d}/authorized_keys")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n"
                    f"PidFile {d}/pid\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                    f"PasswordAuthentication no\nCiphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n"
                    f"Subsystem sftp internal-sftp\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", f"{d}/sshd_config"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                self.ok = True
                break
            except OSError:
                time.sleep(0.05)

    def scp_args(self) -> list[str]:
        return ["scp", "-q", "-P", str(self.port), "-i", f"{self.dir}/client", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={self.dir}/kh",
                "-c", "aes128-gcm@openssh.com"]

    def close(self) -> None:
        if getattr(self, "proc", None) is not None:
            self.proc.terminate()
            self.proc.wait()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)


def bench_scp(sshd: PrivateSshd, src: str, dst: str) -> dict | None:
    """scp -c aes128-gcm@openssh.com to our own sshd on loopback (CPU: scp and its ssh only)."""
    import resource

    if not sshd.ok:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = subprocess.run([*sshd.scp_args(), src, f"127.0.0.1:{dst}"]).returncode
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        return None
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": elapsed, "send_cpu": cpu, "recv_cpu": float("nan"), "send_rss": float("nan"),
            "recv_rss": float("nan")}


def bench_wormhole(src: str, dst_dir: str) -> dict | None:
    """magic-wormhole through a local mailbox server and transit relay (both must be installed)."""
    wormhole = shutil.which("wormhole")
    if not wormhole or not shutil.which("twist"):
        return None
    return _wormhole_run(wormhole, src, dst_dir)


def _wormhole_run(wormhole: str, src: str, dst_dir: str) -> dict | None:
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    mport, tport = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="ftx-wh-")
    procs = [
        subprocess.Popen(["twist", "wormhole-mailbox", f"--port=tcp:{mport}:interface=127.0.0.1",
                          f"--channel-db={work}/c.sqlite", f"--usage-db={work}/u.sqlite"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work),
        subprocess.Popen(["twist", "transitrelay", f"--port=tcp:{tport}:interface=127.0.0.1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work),
    ]
    try:
        common = ["--relay-url", f"ws://127.0.0.1:{mport}/v1", "--transit-helper", f"tcp:127.0.0.1:{tport}"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", mport), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        code = "7-bench-ftx"
        log = open(os.path.join(work, "log"), "w+")
        t0 = time.perf_counter()
        send = subprocess.Popen([wormhole, *common, "send", "--code", code, src], stdout=log, stderr=log)
        recv = subprocess.Popen([wormhole, *common, "receive", "--accept-file", "--hide-progress", code],
                                stdout=log, stderr=log, cwd=dst_dir)
        s, r = _wait_all([send, recv], WORMHOLE_TIMEOUT)
        elapsed = time.perf_counter() - t0
        if r[0] or s[0]:
            log.seek(0)
            lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            print(f"note: a magic-wormhole run failed ({s[0]}, {r[0]}): {lines[-1] if lines else 'no output'}",
                  file=sys.stderr)
            log.close()
            return None
        log.close()
        return {"seconds": elapsed, "send_cpu": s[1], "recv_cpu": r[1], "send_rss": s[2], "recv_rss": r[2]}
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, float, int]]:
    """Like ``run_wait`` for each, but kill them all when one fails or the time is up."""
    results: dict[int, tuple[int, float, int]] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        for p in procs:
            if p.pid in results:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                results[p.pid] = (p.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024)
        if len(results) == len(procs):
            break
        if any(r[0] for r in results.values()) or time.monotonic() > deadline:
            for p in procs:
                if p.pid not in results:
                    p.kill()
            deadline = float("inf")
        time.sleep(0.01)
    return [results[p.pid] for p in procs]


def handshake_latency(count: int, cipher: str, handshake: str) -> tuple[float, float, float]:
    server = child("latency-server", cipher, handshake, stdout=subprocess.PIPE)
    try:
        port = read_line(server).strip()
        client = child("latency", port, str(count), cipher, handshake, stdout=subprocess.PIPE)
        out, _ = client.communicate(timeout=120)
        median, lo, hi = map(float, out.split())
        return median, lo, hi
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, args = sys.argv[2], sys.argv[3:]
        if kind == "recv":
            asyncio.run(child_recv(args[0], None if args[1] == "plaintext" else args[1], args[2]))
        elif kind == "send":
            asyncio.run(child_send(args[0], int(args[1]), None if args[2] == "plaintext" else args[2], args[3]))
        elif kind == "latency":
            asyncio.run(child_latency(int(args[0]), int(args[1]), args[2], args[3]))
        elif kind == "latency-server":
            asyncio.run(child_latency_server(args[0], args[1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src-dir", default="/var/tmp")
    ap.add_argument("--dst-dir", default="/dev/shm")
    ap.add_argument("--handshake", default=DEFAULT_HANDSHAKE, help="MODULE:FACTORY of the handshake (role, cipher=)")
    ap.add_argument("--handshake-latency", type=int, default=0, metavar="N",
                    help="also time N connect+handshake round trips")
    ap.add_argument("--no-peers", action="store_true", help="skip scp and magic-wormhole")
    ap.add_argument("--baseline", metavar="TREE",
                    help="also run every ftx row with TREE's ftx (another source tree with its C modules built), "
                         "interleaved, as rows 'NAME (base)'")
    ap.add_argument("--ciphers", default="aes-256-gcm,chacha20-poly1305",
                    help="sealed rows beside plaintext, comma-separated (fewer rows: more rounds in the same time); "
                         "CIPHER/N: the sender's records hold at most N bytes (record size against the cache)")
    args = ap.parse_args()
    compile_ftx()
    size = parse_size(args.size)
    work_src = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.src_dir)
    work_dst = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.dst_dir)
    src = os.path.join(work_src, "payload.bin")
    notes = []
    sshd = None
    try:
        make_source(src, size)
        names = ["plaintext", *(c for c in args.ciphers.split(",") if c)]
        trees = {n: ROOT for n in names}
        if args.baseline:
            base = os.path.abspath(args.baseline)
            trees.update({f"{n} (base)": base for n in names})
        rows: dict[str, list[dict]] = {n: [] for n in trees}
        peers: dict[str, list[dict]] = {"scp aes128-gcm": [], "magic-wormhole": []}
        sshd = PrivateSshd() if not args.no_peers else None
        for round_ in range(args.runs):
            for name, tree in round_order(trees.items(), round_):  # interleaved: a noisy neighbour hits every row
                warm_memory(work_dst, 2 * size)  # before every run, untimed (harness.round_order says why)
                rows[name].append(bench_ftx(src, work_dst, name.removesuffix(" (base)"), args.handshake, tree))
                os.unlink(os.path.join(work_dst, "payload.bin"))
            if not args.no_peers:
                dst = os.path.join(work_dst, "scp.bin")
                r = bench_scp(sshd, src, dst)
                if r:
                    peers["scp aes128-gcm"].append(r)
                    os.unlink(dst)
                r = bench_wormhole(src, work_dst)
                if r:
                    peers["magic-wormhole"].append(r)
                    os.unlink(os.path.join(work_dst, "payload.bin"))
        if args.no_peers:
            notes.append("scp and magic-wormhole skipped (--no-peers)")
        else:
            if not peers["scp aes128-gcm"]:
                notes.append("scp skipped: needs scp, ssh-keygen and sshd (openssh-server) installed")
            if not peers["magic-wormhole"]:
                notes.append("magic-wormhole skipped: `wormhole` and `twist` (mailbox server, transit relay) "
                             "not installed")
        gb = size / 1e9
        print(f"\nloopback TCP, {size / 2**20:.0f} MiB, page cache -> {args.dst_dir}, median of {args.runs}; "
              f"handshake {args.handshake}")
        print(f"{'':26} {'MB/s':>8} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} {'send RSS MB':>12} {'recv RSS MB':>12}")
        med = {}
        for name, results in {**rows, **peers}.items():
            if not results:
                continue
            secs = statistics.median(r["seconds"] for r in results)
            med[name] = secs
            print(f"{name:26} {size / secs / 1e6:8.0f} {statistics.median(r['send_cpu'] for r in results) / gb:14.2f} "
                  f"{statistics.median(r['recv_cpu'] for r in results) / gb:14.2f} "
                  f"{max(r['send_rss'] for r in results) / 1e6:12.1f} {max(r['recv_rss'] for r in results) / 1e6:12.1f}")
        for name in names[1:]:
            print(f"ratio {name}/plaintext: {med['plaintext'] / med[name]:.2f}x (target >= 0.85)")
            if args.baseline:
                print(f"ratio {name} (base)/plaintext (base): {med['plaintext (base)'] / med[name + ' (base)']:.2f}x")
        if args.baseline:
            for name in names:
                print(f"ratio {name}/{name} (base): {med[name + ' (base)'] / med[name]:.2f}x (above 1: faster)")
        for name in peers:
            if name in med and "aes-256-gcm" in med:  # (the row of the default record size)
                print(f"ratio aes-256-gcm/{name}: {med[name] / med['aes-256-gcm']:.2f}x (target >= 2)")
        for note in notes:
            print(f"note: {note}")
        if args.handshake_latency:
            m, lo, hi = handshake_latency(args.handshake_latency, "aes-256-gcm", args.handshake)
            print(f"connect + handshake on loopback, {args.handshake_latency} runs: median {m * 1e3:.2f} ms "
                  f"(min {lo * 1e3:.2f}, max {hi * 1e3:.2f})")
    finally:
        if sshd is not None:
            sshd.close()
        shutil.rmtree(work_src, ignore_errors=True)
        shutil.rmtree(work_dst, ignore_errors=True)


if __name__ == "__main__":
    main()
