#!/usr/bin/env python3
"""UDP transport benchmarks, with baselines measured in the same run.

1. Loopback, no impairment, page cache -> tmpfs: ftx TCP and ftx UDP side by side, both
   sealed (the default), and UDP with --insecure on both sides, interleaved run by run
   (MB/s, UDP packets per second, CPU seconds per GB on each side, peak RSS; the CLI's
   sealed/plain UDP ratio from the medians).
2. Through the seeded relay: a bottleneck of --rate (default 200 Mbit/s) with a
   30 ms queue, --rtt (default 30 ms) and 0%, 1% and 3% random loss each way:
   goodput against the bottleneck and retransmitted bytes against the loss rate.
3. aioquic (QUIC in Python), when installed, pushing the same kind of file over one
   stream on the same paths (benchmarks/aioquic_peer.py), with smaller files and a
   time limit on the lossy paths, where its NewReno controller is slow.

4. With --sealed: sealed against plaintext UDP on loopback, library-level ends in two
   processes (benchmarks/sealed_udp_peer.py; the real keys handshake, then the
   sealed transfer): MB/s and CPU seconds per GB on each side.

    python benchmarks/bench_udp.py [--size 1G] [--relay-size 200M] [--runs 1] [--skip-relay] [--hard] [--sealed]
    python benchmarks/bench_udp.py --sealed-only [--sealed-mtus default,1500,65535] [--scp] [--runs 3]
    python benchmarks/bench_udp.py --seal-loops    (5. the C sealing loops alone, ns a datagram)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from harness import compile_ftx, round_order, warm_memory, Receiver, Relay, bench_ftx, ftx_send, make_source, parse_size, read_line, run_wait

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aioquic_peer.py")
SEALED_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sealed_udp_peer.py")


def have_aioquic() -> bool:
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return False
    return True


def aioquic_push(src: str, dst: str, via_relay: list[str] | None = None, timeout: float = 300.0) -> dict | None:
    """One aioquic transfer (optionally through a relay); None if it ran out of time."""
    import json
    import subprocess

    server = subprocess.Popen([sys.executable, PEER, "server", os.path.join(dst, "aioquic.bin")],
                              stdout=subprocess.PIPE, text=True)
    port = json.loads(read_line(server))["port"]
    relay = Relay(port, *via_relay) if via_relay is not None else None
    try:
        client = subprocess.Popen([sys.executable, PEER, "client", "127.0.0.1", str(relay.port if relay else port), src],
                                  stdout=subprocess.PIPE, text=True)
        try:
            out, _ = client.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            return None
        return json.loads(out)
    finally:
        if relay is not None:
            relay.stop()
        server.kill()
        server.wait()
        try:
            os.unlink(os.path.join(dst, "aioquic.bin"))
        except OSError:
            pass


def loopback(src: str, dst: str, size: int, runs: int, peers: bool = False) -> None:
    """ftx TCP, UDP (both sealed: the default) and UDP ``--insecure``, interleaved run by run;
    ``peers``: scp and magic-wormhole in the same rounds (``_rounds``)."""
    import statistics

    contenders = {"ftx tcp": ((), ()), "ftx udp": (("--udp",), ()),
                  # --insecure on both sides: the baseline of the sealed/plain ratio (issue 12: >= 0.75x)
                  "udp plain": (("--udp", "--insecure"), ("--insecure",))}
    rows, peer_runs = _rounds(list(contenders), runs, lambda name: _cli_run(src, dst, *contenders[name]), src, dst,
                              size, peers)
    gb = size / 1e9
    print(f"\n1. loopback, {size / 2**20:.0f} MiB, page cache -> tmpfs, best of {runs} (TCP: system default CC; "
          "tcp and udp sealed, as by default; udp plain: --insecure on both sides)")
    print(f"{'':10} {'MB/s':>7} {'pkts/s':>9} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} {'send RSS MB':>12} {'recv RSS MB':>12}")
    best = {}
    for name, results in rows.items():
        r = min(results, key=lambda x: x["seconds"])
        best[name] = r
        pps = r["stats"].get("packets_sent", 0) / r["seconds"]
        pps_text = f"{pps:.0f}" if pps else "-"
        print(f"{name:10} {size / r['seconds'] / 1e6:7.0f} {pps_text:>9} {r['send_cpu'] / gb:14.2f} {r['recv_cpu'] / gb:14.2f} "
              f"{r['send_rss'] / 1e6:12.1f} {r['recv_rss'] / 1e6:12.1f}")
    print(f"ratio udp/tcp: {best['ftx tcp']['seconds'] / best['ftx udp']['seconds']:.2f}x (best against best)")
    med = {name: statistics.median(r["seconds"] for r in results) for name, results in rows.items()}
    print(f"ratio udp sealed/plain (CLI): {med['udp plain'] / med['ftx udp']:.2f}x (medians; target >= 0.75)")
    if runs > 1:
        for name, results in rows.items():
            speeds = sorted(size / r["seconds"] / 1e6 for r in results)
            print(f"  every {name} run, MB/s: " + ", ".join(f"{v:.0f}" for v in speeds))
        pairs = [t["seconds"] / u["seconds"] for t, u in zip(rows["ftx tcp"], rows["ftx udp"])]
        print("  udp/tcp run by run: " + ", ".join(f"{v:.2f}x" for v in pairs))
        pairs = [p["seconds"] / u["seconds"] for p, u in zip(rows["udp plain"], rows["ftx udp"])]
        print("  udp sealed/plain run by run: " + ", ".join(f"{v:.2f}x" for v in pairs))
    _print_peers(peer_runs, size, {"ftx udp (sealed, median)": med["ftx udp"], "ftx tcp (sealed, median)": med["ftx tcp"]})
    if have_aioquic():
        res = aioquic_push(src, dst)
        if res:
            rate = res["bytes"] / res["seconds"]
            print(f"aioquic    {rate / 1e6:7.0f}   (one stream, same file; ftx udp is "
                  f"{size / best['ftx udp']['seconds'] / rate:.1f}x faster)")


def _cli_run(src: str, dst: str, send_args: tuple, recv_args: tuple) -> dict:
    """One ``ftx send`` of ``src`` into a fresh receiver (harness.bench_ftx); the copy is removed."""
    r = bench_ftx(src, dst, *send_args, recv_args=recv_args)
    os.unlink(os.path.join(dst, os.path.basename(src)))
    return r


SCP, WORMHOLE = "scp aes128-gcm", "magic-wormhole"


def _rounds(keys: list, runs: int, run_one, src: str, dst: str, size: int, scp: bool) -> tuple[dict, dict]:
    """``run_one(key)`` for every key in ``runs`` interleaved rounds (harness.round_order), the
    destination warmed before each run; ``scp``: the peers too, once in every round: scp
    aes128-gcm (to a private sshd on loopback) and magic-wormhole (a local mailbox and transit
    relay, when installed; bench_secure.py).  The runs of each key, and each peer's."""
    from bench_secure import PrivateSshd, bench_scp, bench_wormhole

    rows: dict = {key: [] for key in keys}
    peers: dict[str, list[dict]] = {SCP: [], WORMHOLE: []}
    sshd = PrivateSshd() if scp else None
    try:
        for n in range(runs):
            for key in round_order(rows, n):
                warm_memory(dst, 2 * size)
                rows[key].append(run_one(key))
            if sshd is not None:
                warm_memory(dst, 2 * size)
                if r := bench_scp(sshd, src, os.path.join(dst, "scp.bin")):
                    peers[SCP].append(r)
                    os.unlink(os.path.join(dst, "scp.bin"))
                warm_memory(dst, 2 * size)
                if r := bench_wormhole(src, dst):
                    peers[WORMHOLE].append(r)
                    os.unlink(os.path.join(dst, os.path.basename(src)))
    finally:
        if sshd is not None:
            sshd.close()
    return rows, peers


def _print_peers(peers: dict, size: int, medians: dict) -> None:
    """Each peer's median and every run, then each of ``medians`` (name: median seconds) against
    it (issue 12: sealed >= 2x each)."""
    import statistics

    for peer, runs in peers.items():
        if not runs:
            continue
        secs = statistics.median(r["seconds"] for r in runs)
        print(f"{peer:22} {size / secs / 1e6:7.0f}  every run, MB/s: " + ", ".join(f"{size / r['seconds'] / 1e6:.0f}" for r in runs))
        for name, med in medians.items():
            print(f"ratio {name}/{peer}: {secs / med:.2f}x (target >= 2)")


CONTENDED = 0.1  # a run during which runnable tasks waited for a CPU this share of its time: other tenants


def _waited(r: dict) -> str:
    """The share of a run during which some runnable task waited for a CPU (harness.cpu_waited)."""
    return "?" if r.get("cpu_wait") is None else f"{r['cpu_wait'] / r['seconds']:.0%}"


def _contended(r: dict) -> bool:
    return r.get("cpu_wait") is not None and r["cpu_wait"] >= CONTENDED * r["seconds"]


def pmtud_ab(src: str, dst: str, size: int, runs: int, mtus: list[int], scp: bool) -> None:
    """The ``ftx send --udp`` command with and without the path MTU search above 1452 bytes
    (``--pmtud`` / ``--no-pmtud``), sealed and ``--insecure``, interleaved run by run; ``mtus``:
    also fixed datagram sizes without a search (``--mtu M --no-pmtud``: MTU-48-byte datagrams from
    the start, as a search capped there would settle on); ``scp``: scp aes128-gcm in the same
    rounds.  Every run is printed, with what was lost and retransmitted, and the share of it during
    which a runnable task waited for a CPU (on a shared machine: the other tenants' load; such
    runs measure them, at either datagram size, and are starred in the run-by-run ratios)."""
    import statistics

    plain = ("--insecure",)
    contenders = {"sealed": (("--udp", "--no-pmtud"), ()), "sealed pmtud": (("--udp", "--pmtud"), ()),
                  "plain": (("--udp", "--no-pmtud", *plain), plain),
                  "plain pmtud": (("--udp", "--pmtud", *plain), plain)}
    for m in mtus:
        contenders[f"sealed mtu {m}"] = (("--udp", "--no-pmtud", "--mtu", str(m)), ())

    rows, peer_runs = _rounds(list(contenders), runs, lambda name: _cli_run(src, dst, *contenders[name]), src, dst, size, scp)
    scp_runs = peer_runs[SCP]
    gb = size / 1e9
    print(f"\n1b. ftx send --udp with and without --pmtud, loopback, {size / 2**20:.0f} MiB, median of {runs} "
          f"(whole commands; load {os.getloadavg()[0]:.2f} at the end)")
    print(f"{'':18} {'MB/s':>7} {'datagram':>9} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} {'lost':>6} {'retx MB':>8}  every run, MB/s")
    med = {}
    for name, results in rows.items():
        secs = med[name] = statistics.median(r["seconds"] for r in results)
        st = [r["stats"] for r in results]
        print(f"{name:18} {size / secs / 1e6:7.0f} {max(x.get('max_datagram', 0) for x in st):9} "
              f"{statistics.median(r['send_cpu'] for r in results) / gb:14.2f} "
              f"{statistics.median(r['recv_cpu'] for r in results) / gb:14.2f} "
              f"{statistics.median(x.get('lost_packets', 0) for x in st):6.0f} "
              f"{statistics.median(x.get('retransmitted_bytes', 0) for x in st) / 1e6:8.1f}  "
              + ", ".join(f"{size / r['seconds'] / 1e6:.0f}" for r in results)
              + "  (lost: " + ",".join(str(x.get("lost_packets", 0)) for x in st)
              + "; fallbacks: " + ",".join(str(x.get("pmtu_fallbacks", 0)) for x in st)
              + "; cpu s/GB send+recv: " + ",".join(f"{(r['send_cpu'] + r['recv_cpu']) / gb:.2f}" for r in results)
              + "; cpu wait: " + ",".join(_waited(r) for r in results) + ")")
    for a, b in (("sealed pmtud", "sealed"), ("plain pmtud", "plain")):
        pairs = [(x["seconds"] / y["seconds"], _contended(x) or _contended(y)) for x, y in zip(rows[b], rows[a])]
        quiet = [v for v, busy in pairs if not busy]
        print(f"{a} / {b} run by run: " + ", ".join(f"{v:.2f}x{'*' if busy else ''}" for v, busy in pairs)
              + f"; medians {med[b] / med[a]:.2f}x; pairs with no run waiting for a CPU "
              f"{CONTENDED:.0%} of its time or more (* otherwise): "
              + (", ".join(f"{v:.2f}x" for v in quiet) or "none"))
    if scp_runs:
        secs = statistics.median(r["seconds"] for r in scp_runs)
        print(f"{'scp aes128-gcm':18} {size / secs / 1e6:7.0f}  every run, MB/s: "
              + ", ".join(f"{size / r['seconds'] / 1e6:.0f}" for r in scp_runs))
        for name in rows:
            if name.startswith("sealed"):
                print(f"ratio {name}/scp: {secs / med[name]:.2f}x (target >= 2); run by run: "
                      + ", ".join(f"{s['seconds'] / r['seconds']:.2f}x" for r, s in zip(rows[name], scp_runs)))


def sealed_run(src: str, dst: str, plain: bool, mtu: int | None = None) -> dict:
    """One library-level UDP transfer, sealed or plaintext: seconds (connect to report), the
    client process's whole life (``process_seconds``: start-up and imports too, as a CLI row
    measures), CPU and RSS of each end.  ``mtu``: the sender's link MTU (``ftx send --mtu``), with
    no search above it (``--no-pmtud``: datagrams of MTU-48 bytes); None: ftx's default (the search on)."""
    import json
    import subprocess
    import time

    extra = ["--plain"] if plain else []
    server = subprocess.Popen([sys.executable, SEALED_PEER, "server", dst, *extra], stdout=subprocess.PIPE, text=True)
    port = json.loads(read_line(server))["port"]
    t0 = time.perf_counter()
    client = subprocess.Popen([sys.executable, SEALED_PEER, "client", str(port), src, *extra,
                               *(["--mtu", str(mtu), "--no-pmtud"] if mtu else [])], stdout=subprocess.PIPE, text=True)
    out = json.loads(read_line(client, timeout=600))
    _, send_cpu, send_rss = run_wait(client)
    out["process_seconds"] = time.perf_counter() - t0
    _, recv_cpu, recv_rss = run_wait(server)
    if not out["ok"]:
        raise RuntimeError(f"sealed bench transfer failed: {out['error']}")
    os.unlink(os.path.join(dst, os.path.basename(src)))
    return {**out, "send_cpu": send_cpu, "recv_cpu": recv_cpu, "send_rss": send_rss, "recv_rss": recv_rss}


def sealed(src: str, dst: str, size: int, runs: int, mtus: list[int | None], scp: bool = False) -> None:
    """Sealed against plaintext UDP at each MTU in ``mtus`` (None: ftx's default), interleaved
    run by run so that a noisy neighbour hits every row alike; medians.  ``scp``: also scp
    (aes128-gcm, to a private sshd on loopback: bench_secure.py) in the same rounds."""
    import statistics

    keys = [(kind, mtu) for mtu in mtus for kind in ("plain", "sealed")]
    rows, peer_runs = _rounds(keys, runs, lambda key: sealed_run(src, dst, key[0] == "plain", key[1]), src, dst, size, scp)
    scp_runs = peer_runs[SCP]
    gb = size / 1e9
    print(f"\n4. sealed against plaintext UDP, loopback, {size / 2**20:.0f} MiB, library level, median of {runs} "
          "(MB/s: connect to report; process: the client process's whole life, start-up and imports too, "
          "as the CLI rows count)")
    print(f"{'':22} {'MB/s':>7} {'process':>8} {'datagram':>9} {'send cpu s/GB':>14} {'recv cpu s/GB':>14} "
          f"{'send RSS MB':>12} {'recv RSS MB':>12}")
    med = {}
    for (kind, mtu), results in rows.items():
        secs = med[kind, mtu] = statistics.median(r["seconds"] for r in results)
        whole = statistics.median(r["process_seconds"] for r in results)
        datagram = max(r["stats"].get("max_datagram", 0) for r in results)
        label = f"{kind} mtu {mtu or 'default'}"
        print(f"{label:22} {size / secs / 1e6:7.0f} {size / whole / 1e6:8.0f} {datagram:9} "
              f"{statistics.median(r['send_cpu'] for r in results) / gb:14.2f} "
              f"{statistics.median(r['recv_cpu'] for r in results) / gb:14.2f} "
              f"{max(r['send_rss'] for r in results) / 1e6:12.1f} {max(r['recv_rss'] for r in results) / 1e6:12.1f}")
    for mtu in mtus:
        print(f"ratio sealed/plain, mtu {mtu or 'default'}: {med['plain', mtu] / med['sealed', mtu]:.2f}x "
              f"(target >= 0.75); every run, MB/s: "
              + "; ".join(f"{kind} " + ", ".join(f"{size / r['seconds'] / 1e6:.0f}" for r in rows[kind, mtu])
                          for kind in ("plain", "sealed")))
    if scp_runs:
        secs = statistics.median(r["seconds"] for r in scp_runs)
        print(f"{'scp aes128-gcm':22} {size / secs / 1e6:7.0f} (sender CPU {statistics.median(r['send_cpu'] for r in scp_runs) / gb:.2f} s/GB); "
              "every run, MB/s: " + ", ".join(f"{size / r['seconds'] / 1e6:.0f}" for r in scp_runs))
        for mtu in mtus:
            print(f"ratio sealed mtu {mtu or 'default'}/scp: {secs / med['sealed', mtu]:.2f}x (target >= 2)")
    elif scp:
        print("note: scp skipped: needs scp, ssh-keygen and sshd (openssh-server) installed")
    _print_peers({WORMHOLE: peer_runs[WORMHOLE]}, size, {f"sealed mtu {mtu or 'default'}": med["sealed", mtu] for mtu in mtus})


def seal_loops(mss: int = 1452) -> None:
    """What sealing costs a datagram in the C loops (no network, no files): seal_chunk_burst from
    chunk data in cache and out of it (a chunk just read is partly evicted), open_burst, against
    building a plaintext burst (XXH3 trailers) -- and the bulk AES-256-GCM speed of the libcrypto
    the loops were built with and of the one bundled with ``cryptography``: the cipher itself is
    most of a sealed datagram's cost, and it differs by OpenSSL version."""
    import time

    from cryptography.hazmat.backends.openssl import backend
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ftx.core.secure import _seal
    from ftx.core.udp import burst
    from ftx.core.udp.assembly import _xxh64

    key, iv = os.urandom(32), os.urandom(12)
    room, per = mss - 18 - 31 - 16, 44  # data bytes a sealed CHUNK datagram carries; datagrams a GSO send

    def per_datagram(fn, data, rounds=3) -> float:
        best = float("inf")
        for _ in range(rounds):
            t, n = time.perf_counter(), fn(data)
            best = min(best, (time.perf_counter() - t) / n)
        return best * 1e9

    def chunks(data):  # 1 MiB chunks: 256 of the one chunk in cache, or of 256 MiB out of it
        mv = memoryview(data)
        return [mv] * 256 if len(data) == 1 << 20 else [mv[c : c + (1 << 20)] for c in range(0, len(data), 1 << 20)]

    def seal(data) -> int:
        pn = 0
        for chunk in chunks(data):
            off = 0
            while off < len(chunk):
                nb = min(per * room, len(chunk) - off)
                _seal.seal_chunk_burst(mss, 1, pn, 4, 1, 0, len(chunk), 0, chunk, off, nb, 1, key, iv)
                pn, off = pn + per, off + nb
        return pn

    def build(data) -> int:
        n, proom = 0, mss - 26 - 31
        for chunk in chunks(data):
            off = 0
            while off < len(chunk):
                nb = min(per * proom, len(chunk) - off)
                buf = bytearray(burst.burst_size(nb, mss))
                burst.build_chunk_burst(buf, mss, 1, n, 1, 0, len(chunk), 0, chunk, off, nb, _xxh64)
                n, off = n + per, off + nb
        return n

    hot, cold = os.urandom(1 << 20), os.urandom(256 << 20)
    sealed = bytes(_seal.seal_chunk_burst(mss, 1, 0, 4, 1, 0, 1 << 20, 0, hot, 0, per * room, 1, key, iv))[: per * mss]
    scratch, cid = bytearray(len(sealed)), (1).to_bytes(8, "big")

    def open_(data) -> int:
        for _ in range(2000):
            _seal.open_burst(sealed, mss, cid, 0, 0, scratch, 1, key, iv)
        return 2000 * per

    print(f"\n5. sealing loops, {mss}-byte datagrams, ns a datagram (best of 3)")
    print(f"seal_chunk_burst, data in cache {per_datagram(seal, hot):6.0f}; "
          f"out of cache {per_datagram(seal, cold, 2):6.0f}; open_burst {per_datagram(open_, None):6.0f}; "
          f"plaintext build_chunk_burst {per_datagram(build, hot):6.0f}")
    for name, version in (("_seal", getattr(_seal, "openssl_version", "?")), ("cryptography", backend.openssl_version_text())):
        if name == "_seal":
            buf = bytearray(65536 + 16)
            data = bytes(65536)
            ctx_t = time.perf_counter()
            # the same cipher through the loops' library: a 64 KiB "datagram" is all bulk
            for k in range(2000):
                _seal.seal_burst(buf, data + bytes(8), 65536 + 8, 65536 + 8, 65536 + 16, k, 4, 1, key, iv)
            rate = 2000 * 65536 / (time.perf_counter() - ctx_t)
        else:
            aead, data, out = AESGCM(key), bytes(65536), bytearray(65536 + 16)
            ctx_t = time.perf_counter()
            for k in range(2000):
                aead.encrypt_into(k.to_bytes(12, "big"), data, b"", out)
            rate = 2000 * 65536 / (time.perf_counter() - ctx_t)
        print(f"AES-256-GCM bulk (64 KiB) via {name:12} {rate / 1e9:5.1f} GB/s  ({version})")
    if getattr(_seal, "VERSION", 1) >= 2:  # the loops' two AEAD paths by datagram size (datagrams.BULK_AEAD_FROM)
        from ftx.core.secure.datagrams import BULK_AEAD_FROM

        row = []
        for size in (1452, 4096, 4400, 5000, 8952, 65000):
            n = max(4, 262144 // size)
            src, out = bytes(n * (size - 8)), bytearray(n * size)
            t = [per_datagram(lambda _, c=c: [_seal.seal_burst(out, src, size - 8, len(src), size, 0, 4, c, key, iv)
                                              for _ in range(20)] and 20 * n, None)
                 for c in (1, AESGCM(key).encrypt_into)]
            row.append(f"{size} B {t[0]:.0f}/{t[1]:.0f}")
        print(f"seal_burst, ns a datagram, EVP/cryptography (BULK_AEAD_FROM {BULK_AEAD_FROM}): " + ", ".join(row))


def impaired(src: str, dst: str, size: int, rate: str, rtt_ms: float, small_src: str | None = None) -> None:
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
        if small_src is not None:
            res = aioquic_push(small_src, dst, ["--both", f"loss={loss},delay={rtt_ms / 2}ms",
                                                "--forward", f"rate={rate},queue=30ms"], timeout=120)
            if res is None:
                print(f"{'':5} aioquic: not done within 120 s ({os.path.getsize(small_src) / 2**20:.0f} MiB)")
            else:
                g = res["bytes"] / res["seconds"]
                print(f"{'':5} aioquic: {g * 8 / 1e6:8.1f} Mbit/s = {g / bottleneck:.1%} of the bottleneck "
                      f"({res['bytes'] / 2**20:.0f} MiB)")


def impaired_ab(src: str, dst: str, size: int, rate: str, rtt_ms: float, runs: int, mtus: list[int]) -> None:
    """Through the relay as in ``impaired``, with against without the path MTU search
    (``--pmtud`` / ``--no-pmtud``), interleaved run by run, on paths that carry datagrams of at
    most ``mtus`` bytes (the relay's ``mtu=``: 1472 is a 1500-byte IPv4 path, 8972 a 9000-byte
    one; 0: any size, as loopback)."""
    import statistics

    from ftx.netsim import _rate

    bottleneck = _rate(rate)
    print(f"\n2b. UDP through the relay with and without --pmtud: {rate} bottleneck (30 ms queue), {rtt_ms:g} ms RTT, "
          f"random loss both ways, {size / 2**20:.0f} MiB, median of {runs}", flush=True)
    print(f"{'path':>9} {'loss':>5} {'search':>8} {'goodput Mbit/s':>15} {'of bottleneck':>14} {'retransmitted':>14} "
          f"{'datagram':>9} {'probes':>7} {'too big':>8}  every run, Mbit/s")
    for mtu in mtus:
        for loss in (0.0, 0.01, 0.03):
            res: dict[str, list] = {"--no-pmtud": [], "--pmtud": []}
            for n in range(runs):
                for flag in round_order(res, n):
                    recv = Receiver(dst)
                    relay = Relay(recv.port, "--both", f"loss={loss},delay={rtt_ms / 2}ms,mtu={mtu}",
                                  "--forward", f"rate={rate},queue=30ms")
                    report, _, _ = ftx_send(src, relay.port, "--udp", flag)
                    counters = relay.stop()
                    recv.finish()
                    os.unlink(os.path.join(dst, os.path.basename(src)))
                    res[flag].append((report, counters["forward"]["too_big"]))
            for flag, rs in res.items():
                good = [r["bytes"] / r["seconds"] for r, _ in rs]
                st = [r["transport_stats"] for r, _ in rs]
                g = statistics.median(good)
                print(f"{mtu or 'any':>9} {loss:5.0%} {'on' if flag == '--pmtud' else 'off':>8} {g * 8 / 1e6:15.1f} "
                      f"{g / bottleneck:14.1%} {statistics.median(x['retransmitted_bytes'] for x in st) / size:14.2%} "
                      f"{max(x['max_datagram'] for x in st):9} {max(x['pmtu_probes'] for x in st):7} "
                      f"{max(t for _, t in rs):8}  " + ", ".join(f"{v * 8 / 1e6:.1f}" for v in good), flush=True)


def hard(src: str, dst: str, size: int, rate: str, rtt_ms: float) -> None:
    """Heavy random loss and heavy reordering: beyond what the targets ask, to show the curve."""
    from ftx.netsim import _rate

    bottleneck = _rate(rate)
    print(f"\n3. UDP through harder paths: {rate} (30 ms queue), {rtt_ms:g} ms RTT, both ways, "
          f"{size / 2**20:.0f} MiB")
    print(f"{'impairment':>34} {'goodput Mbit/s':>15} {'of bottleneck':>14} {'retransmitted':>14} {'spurious':>9}")
    for imp in ("loss=0.1", "loss=0.2", "loss=0.3", "reorder=0.25,reorder_delay=5ms",
                "reorder=0.5,reorder_delay=10ms"):
        recv = Receiver(dst)
        relay = Relay(recv.port, "--both", f"{imp},delay={rtt_ms / 2}ms", "--forward", f"rate={rate},queue=30ms")
        report, _, _ = ftx_send(src, relay.port, "--udp")
        relay.stop()
        recv.finish()
        os.unlink(os.path.join(dst, os.path.basename(src)))
        goodput = report["bytes"] / report["seconds"]
        st = report["transport_stats"]
        print(f"{imp:>34} {goodput * 8 / 1e6:15.1f} {goodput / bottleneck:14.1%} "
              f"{st['retransmitted_bytes'] / report['bytes']:14.2%} {st['spurious_losses']:9}")


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
    ap.add_argument("--skip-relay", action="store_true")
    ap.add_argument("--hard", action="store_true", help="also 10-30%% loss and heavy reordering (20 MiB)")
    ap.add_argument("--sealed", action="store_true", help="also sealed against plaintext UDP (loopback)")
    ap.add_argument("--sealed-only", action="store_true", help="only the sealed against plaintext rows (loopback)")
    ap.add_argument("--scp", action="store_true",
                    help="also scp aes128-gcm and magic-wormhole (when installed) in the same rounds")
    ap.add_argument("--seal-loops", action="store_true",
                    help="only what sealing costs a datagram in the C loops, and the bulk AES-GCM speed of the "
                         "libcrypto they run on (no network)")
    ap.add_argument("--pmtud-ab", action="store_true",
                    help="only ftx send --udp with against without --pmtud (sealed and plain) on loopback")
    ap.add_argument("--ab-mtus", default="",
                    help="--pmtud-ab: also sealed rows with fixed link MTUs and no search, comma-separated")
    ap.add_argument("--relay-mtus", default=None,
                    help="relay rows with against without --pmtud, interleaved, on paths of these largest UDP "
                         "payloads (relay mtu=; 1472: a 1500-byte IPv4 path, 8972: 9000; 0: any size), comma-separated")
    ap.add_argument("--sealed-mtus", default="default,1500",
                    help="link MTUs of the sealed rows, comma-separated ('default': ftx's own choice)")
    args = ap.parse_args()
    if args.seal_loops:
        return seal_loops()
    compile_ftx()
    work_src = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.src_dir)
    work_dst = tempfile.mkdtemp(prefix="ftx-bench-", dir=args.dst_dir)
    try:
        if not args.skip_loopback:
            size = parse_size(args.size)
            src = os.path.join(work_src, "loop.bin")
            make_source(src, size)
            warm_memory(work_dst, 2 * size)
            if args.pmtud_ab:
                pmtud_ab(src, work_dst, size, args.runs, [int(m) for m in args.ab_mtus.split(",") if m], args.scp)
            elif not args.sealed_only:
                loopback(src, work_dst, size, args.runs, args.scp)
            if args.sealed or args.sealed_only:
                mtus = [None if m == "default" else int(m) for m in args.sealed_mtus.split(",") if m]
                sealed(src, work_dst, size, args.runs, mtus, args.scp)
            os.unlink(src)
        if args.skip_relay or args.sealed_only:
            return
        size = parse_size(args.relay_size)
        src = os.path.join(work_src, "relay.bin")
        make_source(src, size)
        small = None
        if have_aioquic():
            small = os.path.join(work_src, "small.bin")
            make_source(small, min(size, 40 << 20))
        if args.relay_mtus is not None:
            impaired_ab(src, work_dst, size, args.rate, args.rtt, args.runs,
                        [int(m) for m in args.relay_mtus.split(",") if m])
            return
        impaired(src, work_dst, size, args.rate, args.rtt, small)
        if args.hard:
            hard_src = os.path.join(work_src, "hard.bin")
            make_source(hard_src, 20 << 20)
            hard(hard_src, work_dst, 20 << 20, args.rate, args.rtt)
        if not have_aioquic():
            print("\n(aioquic not installed: its rows are skipped; pip install aioquic)")
    finally:
        shutil.rmtree(work_src, ignore_errors=True)
        shutil.rmtree(work_dst, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
