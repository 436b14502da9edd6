"""Signed receipts: the receiver signs what landed, the sender checks it against what it sent,
and ``ftx verify-receipt`` re-checks the file later.  Real sockets, real files, a fixed key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.checksum import file_digest
from ftx.core.frames import FrameType, encode_frame
from ftx.core.manifest import Kind
from ftx.core.secure import receipt
from ftx.core.secure.receipt import (
    BATCH_ENTRIES,
    Entry,
    ReceiptChecker,
    ReceiptEnd,
    ReceiptError,
    ReceiptSigner,
    decode_entries,
    fingerprint,
)
from ftx.errors import ErrorCode, FtxError, RemoteProtocolError
from ftx.receipt_file import entry_json, read, verify_file
from ftx.receiving import receive_over
from ftx.sending import SendSession
from ftx.source import walk
from ftx.storage import Destination
from ftx.transport import tcp
from ftx.transport import udp as udp_transport

from .helpers import write_random

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed: the test vector's key too
PUBLIC = base64.b64decode("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=")
PROTOCOL_MD = Path(__file__).resolve().parent.parent / "protocol.md"


def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "small.txt").write_bytes(b"PAY ALICE $100\n")
    write_random(src / "sub" / "big.bin", 300 * 1024, seed=3)  # above the small-file limit: OFFER/DATA
    (src / "empty").write_bytes(b"")
    return src


def _run(src_paths, dest_dir: Path, receipt_path, *, identity=KEY, receipt_key=PUBLIC, udp=False,
         server_session=None):
    """One library-level transfer over loopback; returns (send report, receiver sessions)."""
    dest = Destination(dest_dir)
    sessions = []

    async def handle(link):
        sessions.append(await receive_over(link, dest, identity=identity, idle_timeout=10))

    async def run():
        items = list(walk([str(p) for p in src_paths]))
        if udp:
            server = await udp_transport.serve("127.0.0.1", 0, handle)
            port = server.dsock.sock.getsockname()[1]
            link = await udp_transport.connect("127.0.0.1", port)
        else:
            socks = tcp.listen("127.0.0.1", 0)
            port = socks[0].getsockname()[1]
            server = asyncio.get_running_loop().create_task(tcp.serve(socks, handle))
            link = await tcp.connect("127.0.0.1", port)
        try:
            session = SendSession(link, idle_timeout=10, receipt=receipt_path, receipt_key=receipt_key)
            report = await asyncio.wait_for(session.run(items), 20)
            await link.aclose()
            for _ in range(2000):  # the receiver's session ends once DONE is out
                if sessions:
                    break
                await asyncio.sleep(0.005)
            return report
        finally:
            if udp:
                server.close()
            else:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
                for s in socks:
                    s.close()

    return asyncio.run(run()), sessions


# -- a real transfer -------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_transfer_yields_a_receipt_that_verifies(tmp_path, transport):
    src = _tree(tmp_path)
    out = tmp_path / "receipt.json"
    report, sessions = _run([src], tmp_path / "dst", out, udp=transport == "udp")
    assert report.ok, report.error
    assert sessions and sessions[0].receipt_sent
    assert report.receipt == {"path": str(out), "fingerprint": fingerprint(PUBLIC), "entries": 5,
                              "key_proven": True}
    end = verify_file(out, fingerprint(PUBLIC))
    assert end.public == PUBLIC and end.transcript == b"" and end.count == 5
    entries, _ = read(out)
    listed = {e.path: e for e in entries}
    assert set(listed) == {b"src", b"src/sub", b"src/small.txt", b"src/sub/big.bin", b"src/empty"}
    for name in ("small.txt", "sub/big.bin", "empty"):
        e = listed[f"src/{name}".encode()]
        data = (src / name).read_bytes()
        assert (e.kind, e.size, e.code, e.digest) == (Kind.FILE, len(data), ErrorCode.OK, file_digest(data))
    assert listed[b"src/sub"].kind == Kind.DIR and listed[b"src/sub"].digest == bytes(16)
    assert not list(tmp_path.glob("*.ftx-tmp"))


@pytest.mark.timeout(60)
def test_identical_and_refused_items_are_listed_with_their_status(tmp_path):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    assert _run([src], dst, None)[0].ok  # no receipt asked: none sent, none written
    (dst / "src" / "small.txt").write_bytes(b"PAY MALLORY $9K\n")  # differs: EXISTS (no --overwrite)
    out = tmp_path / "second.json"
    report, _ = _run([src], dst, out)
    assert not report.ok and not report.error  # one item failed; the session and its receipt did not
    verify_file(out)
    listed = {e.path: e for e in read(out)[0]}
    big = (src / "sub" / "big.bin").read_bytes()
    assert listed[b"src/sub/big.bin"].code == ErrorCode.IDENTICAL  # a SKIP: the digest is the source's
    assert listed[b"src/sub/big.bin"].digest == file_digest(big)
    assert listed[b"src/small.txt"].code == ErrorCode.EXISTS and listed[b"src/small.txt"].digest == bytes(16)


# -- the receipt file --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receipt_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    src = _tree(tmp)
    out = tmp / "receipt.json"
    report, _ = _run([src], tmp / "dst", out)
    assert report.ok, report.error
    return out


def test_any_changed_byte_makes_the_receipt_invalid(receipt_file, tmp_path):
    raw = receipt_file.read_bytes()
    verify_file(receipt_file)
    bad = tmp_path / "bad.json"
    for i in range(len(raw)):
        new = ord("\t") if raw[i] in b" \n" else raw[i] ^ 1  # whitespace: a change JSON would forgive
        bad.write_bytes(raw[:i] + bytes([new]) + raw[i + 1:])
        with pytest.raises(ReceiptError):
            verify_file(bad)
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):  # and truncations, and a tail
        bad.write_bytes(raw[:cut])
        with pytest.raises(ReceiptError):
            verify_file(bad)
    bad.write_bytes(raw + b" ")
    with pytest.raises(ReceiptError):
        verify_file(bad)


def test_a_wrong_fingerprint_is_invalid(receipt_file):
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ReceiptError, match="not SHA256:"):
        verify_file(receipt_file, fingerprint(other))


def test_an_entry_swapped_for_another_signed_one_is_invalid(receipt_file, tmp_path):
    """Re-ordering lines keeps every byte valid JSON and every line canonical: the hash still differs."""
    lines = receipt_file.read_text().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines))
    with pytest.raises(ReceiptError, match="signature does not verify"):
        verify_file(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ftx", "verify-receipt", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(120)
def test_verify_receipt_command(receipt_file, tmp_path):
    ok = _cli(str(receipt_file), "--fingerprint", fingerprint(PUBLIC))
    assert ok.returncode == 0, ok.stderr
    assert f"valid receipt: 5 items, signed by {fingerprint(PUBLIC)}" in ok.stdout
    assert re.search(r"^ok +\d+ [0-9a-f]{64}  src/sub/big.bin$", ok.stdout, re.M)  # its SHA-256
    wrong = _cli(str(receipt_file), "--fingerprint", "SHA256:" + "A" * 43)
    assert wrong.returncode == 4 and wrong.stdout == ""
    assert wrong.stderr.count("\n") == 1 and wrong.stderr.startswith("ftx: invalid receipt")
    raw = bytearray(receipt_file.read_bytes())
    raw[raw.index(b'"size": ') + 8] ^= 1  # one digit of a size
    bad = tmp_path / "bad.json"
    bad.write_bytes(raw)
    tampered = _cli(str(bad))
    assert tampered.returncode == 4 and tampered.stdout == "" and tampered.stderr.count("\n") == 1
    missing = _cli(str(tmp_path / "nope.json"))
    assert missing.returncode == 5 and missing.stderr.startswith("ftx: cannot read")


# -- a receiver that lies, or cannot sign ------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_receiver_signing_a_digest_that_was_not_sent_is_reported(tmp_path, monkeypatch):
    src = _tree(tmp_path)
    honest = ReceiptSigner.add

    def lying(self, entry):
        if entry.path.endswith(b"big.bin"):
            entry = Entry(entry.path, entry.kind, entry.size, entry.code, bytes(16 - 1) + b"\x01")
        return honest(self, entry)

    monkeypatch.setattr(ReceiptSigner, "add", lying)
    out = tmp_path / "receipt.json"
    report, sessions = _run([src], tmp_path / "dst", out)
    assert not report.ok
    assert "receipt" in report.error and "src/sub/big.bin" in report.error and "we sent" in report.error
    assert isinstance(report.failure, ReceiptError)
    assert not out.exists() and not list(tmp_path.glob("*.ftx-tmp"))
    # (the receiver is told with ERROR AUTH, but after its DONE nobody reads it any more)


@pytest.mark.timeout(60)
def test_a_receipt_signed_by_another_key_is_refused(tmp_path):
    src = _tree(tmp_path)
    other = Ed25519PrivateKey.generate()
    out = tmp_path / "receipt.json"
    report, _ = _run([src], tmp_path / "dst", out, identity=other)
    assert not report.ok and f"signed by {fingerprint(other.public_key().public_bytes_raw())}" in report.error
    assert fingerprint(PUBLIC) in report.error and not out.exists()


@pytest.mark.timeout(60)
def test_a_receiver_without_a_key_declines_and_the_sender_says_so(tmp_path):
    src = _tree(tmp_path)
    out = tmp_path / "receipt.json"
    report, sessions = _run([src], tmp_path / "dst", out, identity=None)
    assert not report.ok and "no receipt: the receiver declined" in report.error
    assert "no identity key" in report.error and not out.exists()
    assert (tmp_path / "dst" / "src" / "small.txt").exists()  # the files themselves landed


@pytest.mark.timeout(60)
def test_a_plaintext_receipt_takes_the_signers_key_and_names_it(tmp_path):
    src = _tree(tmp_path)
    out = tmp_path / "receipt.json"
    report, _ = _run([src], tmp_path / "dst", out, receipt_key=None)
    assert report.ok and report.receipt["key_proven"] is False
    assert report.receipt["fingerprint"] == fingerprint(PUBLIC)


@pytest.mark.timeout(60)
def test_a_receiver_holding_back_entries_is_caught(tmp_path, monkeypatch):
    """Entries travel at most one batch behind their RESULTs, so the sender never has to hold
    more than a batch of expectations; a receiver that sends them all at the end is refused."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(BATCH_ENTRIES + 10):
        (src / f"f{i:04d}").write_bytes(b"%d" % i)
    honest, _ = _run([src], tmp_path / "dst0", tmp_path / "r0.json")  # more than a batch, on time
    assert honest.ok and honest.receipt["entries"] == BATCH_ENTRIES + 11
    add, finish = ReceiptSigner.add, ReceiptSigner.finish

    def hoarding_add(self, entry):  # every batch kept back until the END: a correct receipt, late
        batch = add(self, entry)
        if batch is not None:
            self.__dict__.setdefault("hoard", []).append(batch)

    monkeypatch.setattr(ReceiptSigner, "add", hoarding_add)
    monkeypatch.setattr(ReceiptSigner, "finish", lambda self, t: self.__dict__.get("hoard", []) + finish(self, t))
    report, _ = _run([src], tmp_path / "dst", tmp_path / "r.json")
    assert not report.ok and "holds back" in report.error


# -- the core parts, bytes only ----------------------------------------------------------------
def _entries(n):
    for i in range(n):
        yield Entry(b"dir/file-%09d" % i, Kind.FILE, i, ErrorCode.OK, i.to_bytes(16, "big"))


def _peak_of_a_session(n: int) -> int:
    signer, checker = ReceiptSigner(KEY), ReceiptChecker(PUBLIC)
    tracemalloc.start()
    for e in _entries(n):
        checker.expect(e)
        batch = signer.add(e)
        if batch is not None:
            checker.entries(decode_entries(batch))
    for payload in signer.finish(1):
        if payload[0] == receipt.PART_ENTRIES_SHA256:
            checker.entries(decode_entries(payload))
        else:
            checker.finish(ReceiptEnd.decode(payload))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert checker.end.count == n
    return peak


def test_a_million_files_cost_one_batch_of_memory_on_both_sides():
    """Signer and checker hash as they go: memory stays flat with the number of entries
    (keeping the entries would cost about 200 bytes each: 4 MB more for 20 000)."""
    small, large = _peak_of_a_session(2_000), _peak_of_a_session(20_000)
    assert large < small + 256 * 1024 and large < 1024 * 1024, (small, large)


def test_the_checker_refuses_what_was_not_sent():
    e = next(_entries(1))
    checker = ReceiptChecker(PUBLIC)
    with pytest.raises(ReceiptError, match="has no RESULT"):
        checker.entries([e])
    checker.expect(e)
    signer = ReceiptSigner(KEY)
    signer.add(e)
    payloads = signer.finish(7)
    with pytest.raises(ReceiptError, match="omits 1 items"):
        checker.finish(ReceiptEnd.decode(payloads[-1]))
    checker.entries(decode_entries(payloads[0]))
    with pytest.raises(ReceiptError, match="another session"):
        ReceiptChecker(PUBLIC, b"t" * 32).finish(ReceiptEnd.decode(ReceiptSigner(KEY).finish(7)[-1]))
    end = ReceiptEnd.decode(payloads[-1])
    forged = ReceiptEnd(end.count, end.time_ns + 1, end.transcript, end.public, end.signature)
    with pytest.raises(ReceiptError, match="signature does not verify"):
        checker.finish(forged)
    checker.finish(end)
    with pytest.raises(ReceiptError, match="second END"):
        checker.finish(end)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_receipt_decoders_end_in_typed_errors(data):
    for decode in (lambda p: decode_entries(b"\x01" + p), lambda p: ReceiptEnd.decode(b"\x02" + p),
                   receipt.decode_declined):
        try:
            decode(data)
        except RemoteProtocolError:
            pass


def _hexdump(data: bytes) -> str:
    return "\n".join(f"{i:04x}  " + " ".join(f"{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16))


# -- the CLI -------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_cli_send_receipt_signed_by_the_key_the_handshake_proved(receiver, tmp_path, transport):
    """`ftx receive` signs with its identity; the sender checks it against the key the handshake
    proved, and `ftx verify-receipt` accepts the file with that fingerprint and no other."""
    from .helpers import run_send

    src = _tree(tmp_path)
    out = tmp_path / "r.json"
    args = ["--udp"] if transport == "udp" else []
    code, report, err = run_send(str(src), receiver.dest, "--receipt", str(out), *args)
    assert code == 0, err
    assert report["receipt"]["key_proven"] and report["receipt"]["fingerprint"] == report["fingerprint"]
    assert (receiver.dir / "src" / "sub" / "big.bin").read_bytes() == (src / "sub" / "big.bin").read_bytes()
    ok = subprocess.run([sys.executable, "-m", "ftx", "verify-receipt", str(out), "--fingerprint",
                         report["fingerprint"]], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    other = "SHA256:" + "A" * 43
    bad = subprocess.run([sys.executable, "-m", "ftx", "verify-receipt", str(out), "--fingerprint", other],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 4 and bad.stderr.count("\n") == 1


@pytest.mark.timeout(60)
def test_cli_send_receipt_to_an_unwritable_place_fails_before_sending(receiver, tmp_path):
    from .helpers import run_send

    src = _tree(tmp_path)
    code, report, err = run_send(str(src), receiver.dest, "--receipt", str(tmp_path / "no" / "r.json"))
    last = err.strip().splitlines()[-1]  # (a first-contact note may come before it)
    assert code == 5 and last.startswith("ftx: cannot write the receipt")
    assert not (receiver.dir / "src").exists()


@pytest.mark.timeout(120)
def test_verify_receipt_prints_one_line_per_item_whatever_the_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil\nok              1 00000000000000000000000000000000  fake").write_bytes(b"x")
    (src / os.fsdecode(b"latin-\xe9")).write_bytes(b"y")
    out = tmp_path / "r.json"
    report, _ = _run([src], tmp_path / "dst", out)
    assert report.ok, report.error
    listing = _cli(str(out))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 1 + 3 and lines[0].startswith("valid receipt: 3 items")
    assert any(line.endswith("src/evil\\nok              1 00000000000000000000000000000000  fake")
               for line in lines)
    assert any(line.endswith("src/latin-\\xe9") for line in lines)


@pytest.mark.timeout(60)
def test_a_session_that_lands_nothing_gets_an_empty_receipt(tmp_path):
    out = tmp_path / "r.json"
    report, _ = _run([], tmp_path / "dst", out)
    assert report.ok and report.receipt["entries"] == 0
    assert verify_file(out).count == 0


# -- a relay that drops, duplicates, reorders or rewrites the receiver's frames -----------------
def _sender_with_files(hello: bytes, n: int):
    from ftx.core.config import Config
    from ftx.core.manifest import FileEntry
    from ftx.core.sender import SenderConnection

    s = SenderConnection(Config(), ReceiptChecker(PUBLIC))
    s.receive_data(hello)
    while s.next_event() is not None:
        pass
    for i in range(n):
        data = b"%d" % i
        s.send_small_file(FileEntry(b"f/%04d" % i, Kind.FILE, len(data)), data, file_digest(data))
    s.finish()
    return s


def _frames(stream: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 4:pos + 8], "big")
        out.append((stream[pos], stream[pos + 16:pos + 16 + length]))
        pos += 16 + length
    return out


@pytest.fixture(scope="module")
def honest_exchange():
    """What a receiver with a signer sends a sender of 300 small files (two ENTRIES batches)."""
    from ftx.core import events as ev
    from ftx.core.config import Config
    from ftx.core.receiver import ReceiverConnection

    r = ReceiverConnection(Config(), signer=ReceiptSigner(KEY))
    hello = b"".join(bytes(b) for b in r.data_to_send())
    s = _sender_with_files(hello, 300)
    r.receive_data(b"".join(bytes(b) for b in s.data_to_send()))
    while (e := r.next_event()) is not None:
        if isinstance(e, ev.SmallFileReceived):
            r.file_result(e.file_id, ErrorCode.OK, e.digest, sha256=hashlib.sha256(e.data).digest())
        elif isinstance(e, ev.ReceiptDue):
            r.send_receipt(1_764_000_000_000_000_000)
    frames = _frames(b"".join(bytes(b) for b in r.data_to_send()))
    assert [t for t, _ in frames].count(FrameType.RECEIPT) == 3 and frames[-1][0] == FrameType.DONE
    truth = _replay(hello, frames)
    assert len(truth[0]) == 300 and truth[1] is not None
    return hello, frames, truth


def _replay(hello: bytes, frames) -> tuple[list[Entry], ReceiptEnd | None]:
    """Feed ``frames`` to a fresh sender: (entries it was given, the END it verified or None)."""
    from ftx.core import events as ev

    s = _sender_with_files(hello, 300)
    s.data_to_send()
    got, verified = [], None
    try:
        s.receive_data(b"".join(encode_frame(FrameType(t), p) for t, p in frames))
        while (e := s.next_event()) is not None:
            if isinstance(e, ev.ReceiptEntries):
                got += e.entries
            elif isinstance(e, ev.ReceiptVerified):
                verified = e.end
    except FtxError:
        verified = None
    return got, verified


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_changed_exchange_yields_the_true_receipt_or_a_typed_error(honest_exchange, data):
    hello, frames, truth = honest_exchange
    receipts = [i for i, (t, _) in enumerate(frames) if t == FrameType.RECEIPT]
    frames = list(frames)
    what = data.draw(st.sampled_from(["drop", "duplicate", "swap", "flip"]))
    k = data.draw(st.sampled_from(receipts + [data.draw(st.integers(0, len(frames) - 2))]))
    if what == "drop":
        del frames[k]
    elif what == "duplicate":
        frames.insert(k, frames[k])
    elif what == "swap":
        frames[k], frames[k + 1] = frames[k + 1], frames[k]
    else:  # a relay that rewrites a payload and fixes up the (unkeyed) frame checksum
        t, p = frames[k]
        if not p:
            return
        bit = data.draw(st.integers(0, 8 * len(p) - 1))
        frames[k] = (t, p[: bit // 8] + bytes([p[bit // 8] ^ (1 << bit % 8)]) + p[bit // 8 + 1:])
    got, verified = _replay(hello, frames)  # raises only on a stray (untyped) exception
    if verified is not None:  # whatever changed, a verified receipt is exactly the true one
        assert (got, verified) == truth


@pytest.mark.timeout(60)
def test_the_receipt_file_never_writes_through_a_planted_link(tmp_path):
    src = _tree(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "r.json"
    (tmp_path / "r.json.ftx-tmp").symlink_to(victim)  # the name an older ftx used
    report, _ = _run([src], tmp_path / "dst", out)
    assert report.ok, report.error
    assert victim.read_bytes() == b"precious" and verify_file(out).count == 5


@pytest.mark.timeout(60)
def test_a_sender_killed_while_its_receipt_arrives_leaves_no_file_behind(tmp_path):
    """The receipt is written nameless (O_TMPFILE) until it has verified: a SIGKILL of the
    sender while entries arrive leaves nothing beside FILE (a named temporary did)."""
    out = tmp_path / "r.json"
    child = (
        "import os, signal, sys\n"
        "from ftx.receipt_file import ReceiptWriter\n"
        "from ftx.core.manifest import Kind\n"
        "from ftx.core.secure.receipt import Entry\n"
        "w = ReceiptWriter(sys.argv[1])\n"
        "w.add([Entry(b'a/%d' % i, Kind.FILE, i, 0, bytes(16), bytes(32)) for i in range(1000)])\n"
        "w._f.flush()\n"
        "print(len(os.listdir(os.path.dirname(sys.argv[1]))), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(out)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "0"  # nothing named while it was being written either
    assert os.listdir(tmp_path) == []


def _file_size_limit(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it: EFBIG


@pytest.mark.timeout(60)
def test_cli_send_receipt_that_cannot_be_written_at_the_end_fails_in_one_line(receiver, tmp_path):
    """The receipt's last bytes cannot be written (here: the sender's file size limit; a full
    disk is the same EFBIG/ENOSPC at flush): the send fails with one line, no traceback, and
    leaves nothing beside FILE."""
    from .helpers import FTX, with_env

    src = _tree(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(FTX + ["send", str(src), receiver.dest, "--receipt", str(out_dir / "r.json"), "--json",
                                 "--no-progress"], capture_output=True, text=True, timeout=50, env=with_env(None),
                          preexec_fn=_file_size_limit(200))
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 5 and last.startswith("ftx: cannot write the receipt"), proc.stderr
    assert os.listdir(out_dir) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tmpfile", [True, False])
def test_a_receipt_whose_end_cannot_be_written_leaves_nothing(tmp_path, tmpfile):
    """finish fails writing the last bytes (EFBIG here, ENOSPC on a full disk); abort then closes
    quietly and removes the named temporary of a file system without O_TMPFILE too."""
    out = tmp_path / "r.json"
    child = (
        "import os, resource, sys\n"
        "import ftx.receipt_file as rf\n"
        "from ftx.core.manifest import Kind\n"
        "from ftx.core.secure.receipt import Entry, ReceiptEnd\n"
        f"rf.TRY_TMPFILE = {tmpfile}\n"
        "w = rf.ReceiptWriter(sys.argv[1])\n"
        "w.add([Entry(b'a/%d' % i, Kind.FILE, i, 0, bytes(16), bytes(32)) for i in range(3)])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
        "try:\n"
        "    w.finish(ReceiptEnd(3, 1, bytes(32), bytes(32), bytes(64)))\n"
        "except OSError:\n"
        "    pass\n"
        "w.abort()\n"
        "w.abort()\n"
        "print('aborted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(out)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "aborted\n", proc.stderr
    assert os.listdir(tmp_path) == []
