"""Receipt version 2: every landed file's SHA-256 is signed, computed by the receiver as the data
arrives (XXH3-128 alone is not collision resistant); version-1 receipts still verify, flagged."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from ftx.core.checksum import chunk_checksum, file_digest
from ftx.core.frames import FrameType, encode_frame
from ftx.core.manifest import FileEntry, Kind
from ftx.core.secure import receipt
from ftx.core.secure.receipt import (
    LEGACY_VERSION,
    ContentHasher,
    Entry,
    ReceiptChecker,
    ReceiptEnd,
    ReceiptError,
    ReceiptSigner,
    signed_message,
)
from ftx.errors import ErrorCode
from ftx.receipt_digest import ReceiptPartial, hash_file_both
from ftx.receipt_file import _end_line, entry_json, read, verify_file
from ftx.storage import Destination

from .helpers import write_random
from .test_receipt import KEY, PROTOCOL_MD, PUBLIC, _cli, _hexdump, _run, _tree


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_every_landed_file_is_listed_with_its_sha256(tmp_path, transport):
    src = _tree(tmp_path)
    out = tmp_path / "receipt.json"
    report, _ = _run([src], tmp_path / "dst", out, udp=transport == "udp")
    assert report.ok, report.error
    end = verify_file(out)
    assert end.version == receipt.VERSION == 2
    listed = {e.path: e for e in read(out)[0]}
    for name in ("small.txt", "sub/big.bin", "empty"):
        data = (src / name).read_bytes()
        assert listed[f"src/{name}".encode()].sha256 == _sha(data), name
    assert listed[b"src/sub"].sha256 == bytes(32)  # a directory has no content


@pytest.mark.timeout(60)
def test_an_identical_destination_is_listed_with_its_sha256(tmp_path):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    assert _run([src], dst, None)[0].ok
    out = tmp_path / "second.json"
    report, _ = _run([src], dst, out)
    assert report.ok, report.error
    e = {e.path: e for e in read(out)[0]}[b"src/sub/big.bin"]
    assert e.code == ErrorCode.IDENTICAL and e.sha256 == _sha((src / "sub" / "big.bin").read_bytes())


@pytest.mark.timeout(60)
def test_a_receiver_signing_a_sha256_that_was_not_sent_is_caught(tmp_path, monkeypatch):
    """Same path, size and XXH3 (what a collision would give), another SHA-256: refused."""
    src = _tree(tmp_path)
    honest = ReceiptSigner.add

    def lying(self, entry):
        if entry.path.endswith(b"big.bin"):
            entry = Entry(entry.path, entry.kind, entry.size, entry.code, entry.digest, _sha(b"other content"))
        return honest(self, entry)

    monkeypatch.setattr(ReceiptSigner, "add", lying)
    out = tmp_path / "receipt.json"
    report, _ = _run([src], tmp_path / "dst", out)
    assert not report.ok and "src/sub/big.bin" in report.error and "sha256" in report.error, report.error
    assert not out.exists()


def _resumable(tmp_path, size: int, seed: int):
    """A random source file of ``size`` bytes and a receipt partial of it opened for resume: (data,
    chunk size, entry, destination, the chunks, the partial)."""
    data = write_random(tmp_path / "src.bin", size, seed=seed)
    chunk = 1 << 20
    entry = FileEntry(b"f.bin", Kind.FILE, len(data), 0o644, 0, chunk)
    dest = Destination(tmp_path / "dst")
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    part = ReceiptPartial(dest, entry, dest.resolve(b"f.bin"))
    part.open(resume=True)
    return data, chunk, entry, dest, pieces, part


def test_the_sha256_of_a_resumed_file_covers_every_byte_once(tmp_path):
    """Held chunks re-verified on resume, chunks out of order, the rest read back at finalize: the
    SHA-256 is that of the whole file, without a second read of what was hashed on arrival."""
    data, chunk, entry, dest, pieces, part = _resumable(tmp_path, 5 * 1024 * 1024 + 123, seed=7)
    for i in (0, 1, 3):  # 3 ahead of the gap at 2
        part.write_chunk(i, chunk_checksum(pieces[i]), pieces[i])
    part.close()  # interrupted: 3 MiB verified are kept
    part = ReceiptPartial(dest, entry, dest.resolve(b"f.bin"))
    held, _ = part.open(resume=True)
    assert sorted(held.values()) == [0, 1, 3]
    for i in (5, 2):
        part.write_chunk(i, chunk_checksum(pieces[i]), pieces[i])
    part.write_chunk(4, chunk_checksum(pieces[4]), pieces[4])
    assert part.finalize(file_digest(data)) == file_digest(data)
    assert part.sha256() == _sha(data)
    assert hash_file_both(dest, dest.resolve(b"f.bin")) == (file_digest(data), _sha(data))


def test_content_hasher_is_xxh3_and_sha256_in_one_pass():
    h = ContentHasher()
    for piece in (b"hel", b"lo"):
        h.update(memoryview(piece))
    assert h.digest() == file_digest(b"hello") and h.sha256() == _sha(b"hello")


def _legacy_receipt(path) -> None:
    """A version-1 receipt file, as ftx wrote them before SHA-256 (format 1, END version 1)."""
    e = Entry(b"a.txt", Kind.FILE, 5, ErrorCode.OK, file_digest(b"hello"), None)
    h = hashlib.sha256(e.encode()).digest()
    msg = signed_message(LEGACY_VERSION, 1, 7, b"", PUBLIC, h)
    end = ReceiptEnd(1, 7, b"", PUBLIC, KEY.sign(msg), LEGACY_VERSION)
    path.write_text('{"ftx_receipt": 1,\n "files": [\n' + f"  {json.dumps(entry_json(e))}\n" + " ],\n"
                    + _end_line(end))


def test_a_version_1_receipt_still_verifies_and_is_flagged_as_weaker(tmp_path):
    old = tmp_path / "old.json"
    _legacy_receipt(old)
    assert '"sha256"' not in old.read_text()
    assert verify_file(old).version == LEGACY_VERSION
    shown = _cli(str(old))
    assert shown.returncode == 0, shown.stderr
    assert "version-1 receipt" in shown.stderr and "not collision resistant" in shown.stderr
    assert file_digest(b"hello").hex() in shown.stdout
    raw = old.read_text().replace('"ftx_receipt": 1', '"ftx_receipt": 2')  # relabelled: refused, not trusted
    relabelled = tmp_path / "relabelled.json"
    relabelled.write_text(raw)
    bad = _cli(str(relabelled))
    assert bad.returncode == 4 and "ftx: invalid receipt" in bad.stderr


def test_a_receiver_sending_version_1_entries_is_refused_clearly():
    from ftx.core.config import Config
    from ftx.core.sender import SenderConnection

    conn = SenderConnection(Config(), ReceiptChecker(PUBLIC))
    with pytest.raises(ReceiptError, match="XXH3-128 digests only"):
        conn._on_receipt(bytes([receipt.PART_ENTRIES]) + Entry(b"a", 1, 0, 0, bytes(16), None).encode())


def test_protocol_md_version_2_vector_is_what_the_code_produces():
    """protocol.md 21.4: one entry with its SHA-256, and its END, signed with the fixed key."""
    e = Entry(b"a.txt", Kind.FILE, 5, ErrorCode.OK, file_digest(b"hello"), _sha(b"hello"))
    signer = ReceiptSigner(KEY, transcript=bytes(range(32)))
    assert signer.add(e) is None
    entries, end = signer.finish(1_764_000_000_000_000_000)
    assert entries[0] == receipt.PART_ENTRIES_SHA256 and end[1] == 2
    text = PROTOCOL_MD.read_text()
    section = text[text.index("### 21.4"):]
    assert _hexdump(encode_frame(FrameType.RECEIPT, entries)) in section
    for payload in (entries, end):
        assert _hexdump(payload) in section, _hexdump(payload)
    assert receipt.hash_entries([e])[0].hex() in section.replace("\n", "").replace(" ", "")
    assert f"  {json.dumps(entry_json(e))}\n" in section
    assert base64.b64encode(_sha(b"hello")).decode() in section


def test_a_resumed_chunk_sent_again_with_other_bytes_is_what_both_digests_cover(tmp_path):
    """A held chunk (re-verified and hashed on resume) may come again (protocol.md 5.5) with other
    bytes: XXH3-128 and the receipt's SHA-256 are of the file that landed, not of the first copy."""
    data, chunk, entry, dest, pieces, part = _resumable(tmp_path, 4 * 1024 * 1024 + 9, seed=8)
    for i in (0, 1, 2):
        part.write_chunk(i, chunk_checksum(pieces[i]), pieces[i])
    part.close()
    part = ReceiptPartial(dest, entry, dest.resolve(b"f.bin"))
    held, _ = part.open(resume=True)
    assert sorted(held.values()) == [0, 1, 2]
    pieces[1] = b"\x01" + pieces[1][1:] if pieces[1][0] != 1 else b"\x02" + pieces[1][1:]
    for i in (1, 3, 4):
        part.write_chunk(i, chunk_checksum(pieces[i]), pieces[i])
    landed = b"".join(pieces)
    assert part.finalize(file_digest(landed)) == file_digest(landed)
    assert part.sha256() == _sha(landed)
    assert (tmp_path / "dst" / "f.bin").read_bytes() == landed
