#!/usr/bin/env python3
"""CPU cost of receipts per entry: the receiver's signer, the sender's checker and file
writer, and ``verify-receipt``; plus the receipt file's size per entry.  Then the cost of
the per-file SHA-256 a receipt adds (receipt version 2): hashing SIZE bytes in 1 MiB chunks
with XXH3-128 alone (no receipt) and with XXH3-128 + SHA-256 (``ContentHasher``), both sides
pay it once per file, in the pass they already make.

    python benchmarks/bench_receipt.py [N] [SIZE]   (default 200 000 entries, 1G; best of 3)
"""
import sys
import time, tempfile, os
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ftx.core.secure.receipt import *
from ftx.core.secure import receipt
from ftx.receipt_file import ReceiptWriter, verify_file
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
key = Ed25519PrivateKey.generate()
pub = key.public_key().public_bytes_raw()
entries = [Entry(b"some/dir/file-%09d.dat" % i, 1, i, 0, i.to_bytes(16, "big")) for i in range(N)]
best = {}
for run in range(3):
    signer, checker = ReceiptSigner(key), ReceiptChecker(pub)
    path = tempfile.mktemp(dir="/dev/shm")
    w = ReceiptWriter(path)
    t = {"sign": 0.0, "check": 0.0, "write": 0.0}
    for e in entries:
        c0 = time.process_time(); b = signer.add(e); c1 = time.process_time()
        checker.expect(e)
        if b is not None:
            got = decode_entries(b); checker.entries(got); c2 = time.process_time(); w.add(got); c3 = time.process_time()
            t["check"] += c2 - c1; t["write"] += c3 - c2
        else:
            t["check"] += time.process_time() - c1
        t["sign"] += c1 - c0
    for p in signer.finish(1):
        if p[0] == receipt.PART_ENTRIES_SHA256:
            got = decode_entries(p); checker.entries(got); w.add(got)
        else:
            end = ReceiptEnd.decode(p); checker.finish(end); w.finish(end)
    c0 = time.process_time(); verify_file(path); t["verify"] = time.process_time() - c0
    size = os.path.getsize(path); os.unlink(path)
    for k, v in t.items():
        best[k] = min(best.get(k, 1e9), v)
print({k: f"{v / N * 1e6:.2f} us/entry" for k, v in best.items()}, f"file {size / N:.0f} B/entry")

from ftx.core.checksum import FileHasher
from ftx.core.secure.receipt import ContentHasher
from ftx.limits import parse_size

size = parse_size(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
chunk = os.urandom(1 << 20)
times = {"xxh3": [], "xxh3+sha256": []}
for run in range(3):
    for name, make in (("xxh3", FileHasher), ("xxh3+sha256", ContentHasher)):  # interleaved A/B
        h = make()
        c0 = time.perf_counter()
        for _ in range(size >> 20):
            h.update(chunk)
        h.digest()
        times[name].append(time.perf_counter() - c0)
med = {k: sorted(v)[1] for k, v in times.items()}
print(f"hash {size >> 20} MiB: " + ", ".join(f"{k} {v:.3f} s ({size / v / 1e9:.2f} GB/s)" for k, v in med.items())
      + f"; SHA-256 adds {med['xxh3+sha256'] - med['xxh3']:.3f} s per {size >> 20} MiB on each side")
