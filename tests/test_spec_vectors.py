"""Every test vector in protocol.md is what the code produces (spec section 4.1, 9.3, 10, 14.12, 15.3).

An independent implementation found a vector (the second INITIAL's checksum) that matched no
packet the text describes; this test reads the hex dumps out of protocol.md and rebuilds each
one with the reference code, so the document cannot drift from the code again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftx.core.checksum import EMPTY_DIGEST, HeldDigest, chunk_checksum, file_digest
from ftx.core.frames import FrameType, encode_data_frame, encode_frame
from ftx.core.manifest import FileEntry
from ftx.core.manifest import Kind
from ftx.core.messages import DIR_SAME, RESULT_RUN, ROLE_SENDER, CheckDir, Decision, DirState, Hello, Result, SmallFile
from ftx.core.tree import dir_digest, entry_record
from ftx.core.ranges import RangeSet
from ftx.core.udp import packets as P
from ftx.core.udp.endpoint import make_token, padded_initial
from ftx.errors import ErrorCode

SPEC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
S, R, R0 = 0x1122334455667788, 0x99AABBCCDDEEFF00, 0x0102030405060708
SECRET = bytes(range(32))
TOKEN = make_token(SECRET, ("192.0.2.1", 40000), S, 1_700_000_000)
DONE = encode_frame(FrameType.DONE)


def held_digest(checksums) -> int:
    h = HeldDigest()
    for c in checksums:
        h.add(c)
    return h.value()


SMALL = FileEntry(b"a.txt", size=5, mode=0o644, mtime_ns=1_700_000_000_000_000_000, chunk_size=1 << 20)


def _chunk_packet() -> bytes:
    body = P.CHUNK_HEADER.pack(P.F_CHUNK, 0, 0, 5, 0, chunk_checksum(b"hello"), 5) + b"hello"
    return P.build(P.DATA, R, 0, body)


LISTING = [(b"a.txt", entry_record(Kind.FILE, b"a.txt", 0o644, 5, 1_700_000_000_000_000_000)),
           (b"sub", entry_record(Kind.DIR, b"sub", 0o755)),
           (b"l", entry_record(Kind.SYMLINK, b"l", 0o777, target=b"a.txt"))]

VECTORS = {
    "**CHECK_DIR** for directory 7": encode_frame(
        FrameType.CHECK_DIR, CheckDir(7, 3, dir_digest(LISTING), b"src/docs").encode()),
    "**DIR_STATE** SAME for directory 7": encode_frame(FrameType.DIR_STATE, DirState(7, DIR_SAME).encode()),
    "**DONE**": DONE,
    "**HELLO** from a sender": encode_frame(FrameType.HELLO, Hello(ROLE_SENDER, 4_259_840, 0, "ftx/0.1.0").encode()),
    "**DATA** for file 0": encode_data_frame(0, 0, b"hello"),
    "**SMALL_FILE** for file 0": encode_frame(
        FrameType.SMALL_FILE, SmallFile(0, SMALL, file_digest(b"hello"), b"hello").encode()),
    "**RESULT** for file 0": encode_frame(FrameType.RESULT, Result(0, ErrorCode.OK, file_digest(b"hello")).encode()),
    "**RESULT_RUN** for files 0 to 39": encode_frame(FrameType.RESULT_RUN, RESULT_RUN.pack(0, 40)),
    "**DECISION** for file 3": encode_frame(FrameType.DECISION, Decision(
        3, 0, held_digest=held_digest([chunk_checksum(b"a"), chunk_checksum(b"b")]),
        held=RangeSet([(0, 2)])).encode()),
    "**ACK** (receiver to sender": P.build(P.DATA, S, 7, P.encode_ack(RangeSet([(0, 10), (12, 15)]), 250)),
    "**CHUNK** (sender to receiver": _chunk_packet(),
    "**STREAM** (pn 3)": P.build(P.DATA, R, 3, P.encode_stream(0, DONE)),
    "**RETRY**, 56 bytes": P.build(P.RETRY, S, 0, P.initial_payload(0, TOKEN)),
    "**First INITIAL**": padded_initial(R0, 1, S, b""),
    "**Second INITIAL**": padded_initial(R0, 2, S, TOKEN),
    "**INITIAL reply**": P.build(P.INITIAL, S, 0, P.initial_payload(R, b"")),
}


def _dump_after(marker: str) -> dict[int, bytes]:
    """The hex dump in the first code block after ``marker``: {offset: bytes of that line}."""
    at = SPEC.index(marker)
    block = re.search(r"```\n(.*?)```", SPEC[at:], re.S).group(1)
    lines = {}
    for line in block.splitlines():
        m = re.match(r"([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)", line)
        if m:
            lines[int(m.group(1), 16)] = bytes.fromhex(m.group(2))
    assert lines, f"no hex dump after {marker}"
    return lines


@pytest.mark.parametrize("marker", list(VECTORS))
def test_hex_dump_matches_the_code(marker):
    built = VECTORS[marker]
    lines = _dump_after(marker)
    last = max(lines)
    assert last + len(lines[last]) == len(built), "length"
    covered = set()
    for off, want in lines.items():
        assert built[off:off + len(want)] == want, f"bytes at 0x{off:04x}"
        covered.update(range(off, off + len(want)))
    assert all(built[i] == 0 for i in range(len(built)) if i not in covered), "elided bytes must be zeros"


def test_inline_vectors():
    assert f"`{dir_digest(LISTING).hex()}`" in SPEC and f"`{dir_digest([]).hex()}`" in SPEC
    for name, rec in sorted(LISTING):
        assert f"{name.decode():<6} {rec.hex(' ')}" in SPEC
    assert f"`{EMPTY_DIGEST.hex()}`" in SPEC
    assert "`0xa2d2da25445ca60a`" in SPEC
    assert held_digest([chunk_checksum(b"a"), chunk_checksum(b"b")]) == 0xA2D2DA25445CA60A
    assert f"{chunk_checksum(b'a'):016x}{chunk_checksum(b'b'):016x}" == "e6c632b61e964e1f575a0b1c44d8843f"
    assert RangeSet([(0, 3), (5, 6), (300, 302)]).encode() == bytes.fromhex("03 00 03 02 01 a6 02 02")
    close = P.build(P.DATA, S, 8, P.encode_close(0, "done"))
    assert "`03 01 1122334455667788 0000000000000008 06 0000 0004 646f6e65 " + close[-8:].hex() + "`" in SPEC
    assert P.encode_varint_frame(P.F_MAX_DATA, 16 * 1024 * 1024) == bytes.fromhex("05 80 80 80 08")
    assert TOKEN.hex() == "cfe5680091b99e80ae4d9c598a56470705e94c96"
    assert "`cfe56800 91b99e80ae4d9c598a56470705e94c96`" in SPEC
