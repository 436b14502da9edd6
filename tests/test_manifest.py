"""Unit tests of wire paths, file entries and the control-frame payloads."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftx.core.checksum import DIGEST_SIZE, EMPTY_DIGEST, file_digest
from ftx.core.manifest import (
    DEFAULT_CHUNK_SIZE,
    ENTRY,
    MAX_CHUNK_SIZE,
    MAX_COMPONENT,
    MAX_PATH,
    MIN_CHUNK_SIZE,
    FileEntry,
    Kind,
    check_link_target,
    check_wire_path,
    chunk_count,
    chunk_length,
    decode_entry,
    encode_entry,
)
from ftx.core.messages import (
    MAGIC,
    PROTOCOL_VERSION,
    ROLE_RECEIVER,
    ROLE_SENDER,
    ZERO_DIGEST,
    Decision,
    ErrorMessage,
    FileEnd,
    FileNotice,
    Hello,
    Offer,
    Result,
    SmallFile,
)
from ftx.core.ranges import RangeSet
from ftx.errors import ErrorCode, RemoteProtocolError, UnsafePath

SETTINGS = settings(max_examples=100, deadline=None)


# -- wire paths --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        b"",
        b"..",
        b".",
        b"../x",
        b"a/../b",
        b"a/..",
        b"/etc/x",
        b"/",
        b"a//b",
        b"a/",
        b"./a",
        b"a/./b",
        b"a\x00b",
        b"\x00",
        b"x" * (MAX_PATH + 1),
        b"a/" + b"c" * (MAX_COMPONENT + 1),
        b"c" * (MAX_COMPONENT + 1),
        (b"d" * 200 + b"/") * 21 + b"e",  # components fine, whole path too long
    ],
)
def test_check_wire_path_rejects(path):
    with pytest.raises(UnsafePath):
        check_wire_path(path)


@pytest.mark.parametrize(
    "path",
    [
        b"a",
        b"a/b/c.txt",
        b"...",
        b"..a",
        b"a..",
        b".hidden/x",
        b"dir with spaces/f",
        b"\xff\xfe/\x80latin1-\xe9",  # not UTF-8: still a valid name
        "ünïcødé/名前".encode(),
        b"c" * MAX_COMPONENT,
        b"/".join([b"d" * MAX_COMPONENT] * 16),  # 16*255 + 15 = 4095 bytes
        (b"x" * 254 + b"/") * 16 + b"yyyyyy"[: MAX_PATH - 255 * 16],
    ],
)
def test_check_wire_path_accepts(path):
    assert len(path) <= MAX_PATH
    assert check_wire_path(path) == path


def test_path_of_exactly_max_length():
    p = b"/".join([b"a" * 240] * 17)  # 17 * 240 + 16 = 4096
    assert len(p) == MAX_PATH
    assert check_wire_path(p) == p
    with pytest.raises(UnsafePath, match="longer than 4096"):
        check_wire_path(p + b"x")


@pytest.mark.parametrize(
    "path,target",
    [
        (b"link", b"../x"),
        (b"link", b".."),
        (b"a/link", b"../../x"),
        (b"a/b/link", b"../../../etc/passwd"),
        (b"a/link", b"x/../../../y"),
        (b"link", b"/etc/passwd"),
        (b"a/link", b"/"),
        (b"link", b""),
        (b"link", b"a\x00b"),
        (b"link", b"x" * (MAX_PATH + 1)),
        (b"a/link", b"./.././../x"),
        # '..' after a name could climb out of another symlink (a/l1 -> .., a/l2 -> l1/..)
        (b"a/l2", b"l1/.."),
        (b"a/b/link", b"c/../../../x"),
        (b"link", b"x/../y"),
    ],
)
def test_check_link_target_rejects(path, target):
    with pytest.raises(UnsafePath):
        check_link_target(path, target)


@pytest.mark.parametrize(
    "path,target",
    [
        (b"link", b"x"),
        (b"link", b"."),
        (b"link", b"sub/dir/file"),
        (b"a/link", b".."),
        (b"a/link", b"../x"),
        (b"a/b/link", b"../../x"),
        (b"link", b"./x//y/"),
        (b"link", b"\xff\xfe"),
    ],
)
def test_check_link_target_accepts(path, target):
    assert check_link_target(path, target) == target


def test_chunk_arithmetic():
    assert chunk_count(0, 4096) == 0
    assert chunk_count(1, 4096) == 1
    assert chunk_count(4096, 4096) == 1
    assert chunk_count(4097, 4096) == 2
    assert chunk_length(10000, 4096, 0) == 4096
    assert chunk_length(10000, 4096, 2) == 10000 - 8192
    e = FileEntry(b"f", size=3 * DEFAULT_CHUNK_SIZE + 1)
    assert e.chunks == 4 and e.chunk_length(3) == 1 and e.chunk_length(0) == DEFAULT_CHUNK_SIZE
    assert FileEntry(b"d", Kind.DIR).chunks == 0
    assert FileEntry(b"l", Kind.SYMLINK, target=b"x").chunks == 0


# -- entries -----------------------------------------------------------------------------
raw_paths = st.binary(min_size=0, max_size=300)
file_entries = st.builds(
    FileEntry,
    path=raw_paths,
    kind=st.just(Kind.FILE),
    size=st.integers(0, 2**63 - 1),  # sizes from 2**63 are a protocol error (test_decode_bounds)
    mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    chunk_size=st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
    target=st.just(b""),
)
other_entries = st.builds(
    FileEntry,
    path=raw_paths,
    kind=st.just(Kind.SYMLINK),
    size=st.just(0),
    mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    chunk_size=st.integers(0, 2**32 - 1),  # meaningless for non-files: anything goes
    target=st.binary(max_size=300),
)
dir_entries = st.builds(
    FileEntry,
    path=raw_paths,
    kind=st.just(Kind.DIR),
    size=st.just(0),
    mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    chunk_size=st.integers(0, 2**32 - 1),
    target=st.just(b""),  # only symlinks have a target (test_decode_bounds)
)
entries = st.one_of(file_entries, other_entries, dir_entries)
file_ids = st.integers(0, 2**32 - 1)


@SETTINGS
@given(fid=file_ids, e=entries, prefix=st.binary(max_size=8), suffix=st.binary(max_size=8))
def test_entry_round_trip(fid, e, prefix, suffix):
    enc = encode_entry(fid, e)
    assert len(enc) == ENTRY.size + len(e.path) + len(e.target)
    got_id, got, end = decode_entry(prefix + enc + suffix, len(prefix))
    assert got_id == fid
    assert got == e
    assert end == len(prefix) + len(enc)


def test_entry_mode_is_masked():
    e = FileEntry(b"f", mode=0o100755)
    _, got, _ = decode_entry(encode_entry(1, e))
    assert got.mode == 0o755


def test_entry_truncated():
    enc = encode_entry(5, FileEntry(b"some/path", Kind.SYMLINK, target=b"../t"))
    for cut in range(len(enc)):
        with pytest.raises(RemoteProtocolError, match="truncated"):
            decode_entry(enc[:cut])


def _entry_bytes(kind=1, size=0, chunk_size=DEFAULT_CHUNK_SIZE, path=b"p"):
    return ENTRY.pack(1, kind, 0, 0, 0o644, 0, size, chunk_size, len(path), 0) + path


@pytest.mark.parametrize("kind", [0, 4, 255])
def test_entry_unknown_kind(kind):
    with pytest.raises(RemoteProtocolError, match="kind"):
        decode_entry(_entry_bytes(kind=kind))


@pytest.mark.parametrize("chunk_size", [0, 1, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 2**32 - 1])
def test_entry_chunk_size_out_of_range(chunk_size):
    with pytest.raises(RemoteProtocolError, match="chunk size"):
        decode_entry(_entry_bytes(chunk_size=chunk_size))


@pytest.mark.parametrize("kind", [Kind.DIR, Kind.SYMLINK])
def test_entry_non_file_with_size(kind):
    with pytest.raises(RemoteProtocolError, match="size"):
        decode_entry(_entry_bytes(kind=kind, size=1))


def test_entry_does_not_check_path_safety():
    # a bad path is a per-file refusal, so decode must still succeed
    _, e, _ = decode_entry(encode_entry(1, FileEntry(b"../../etc/passwd")))
    assert e.path == b"../../etc/passwd"


# -- messages ----------------------------------------------------------------------------
texts = st.text(max_size=60)
codes = st.one_of(st.sampled_from(list(ErrorCode)), st.integers(0, 0xFFFF))
digests = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)


@st.composite
def range_sets(draw):
    rs = RangeSet()
    for a, n in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 1000)), max_size=8)):
        rs.add(a, a + n)
    return rs


def _expect_code(value):
    try:
        return ErrorCode(value)
    except ValueError:
        return value


messages = st.one_of(
    st.builds(
        Hello,
        role=st.sampled_from([ROLE_SENDER, ROLE_RECEIVER]),
        max_payload=st.integers(0, 2**32 - 1),
        flags=st.integers(0, 2**64 - 1),
        agent=texts,
        version=st.integers(0, 0xFFFF),
    ),
    st.builds(Offer, file_id=file_ids, entry=entries),
    st.builds(
        Decision,
        file_id=file_ids,
        flags=st.integers(0, 255),
        existing_digest=digests,
        held_digest=st.integers(0, 2**64 - 1),
        held=range_sets(),
        message=texts,
    ),
    st.builds(FileEnd, file_id=file_ids, digest=digests),
    st.builds(Result, file_id=file_ids, code=codes, digest=digests, message=texts),
    st.builds(FileNotice, file_id=file_ids, code=codes, message=texts),
    st.builds(ErrorMessage, code=codes, message=texts),
)


def _normalize(msg):
    """What decode should give back: unknown codes stay ints, known ones become ErrorCode."""
    if hasattr(msg, "code"):
        object.__setattr__(msg, "code", _expect_code(int(msg.code)))
    return msg


@settings(max_examples=60, deadline=None)
@given(msg=messages)
def test_message_round_trip(msg):
    enc = msg.encode()
    got = type(msg).decode(enc)
    assert got == _normalize(msg)
    if hasattr(got, "code"):
        assert type(got.code) is type(_expect_code(int(got.code)))
    # the zero-copy path hands memoryviews to decode
    assert type(msg).decode(memoryview(enc)) == got
    # every strict prefix is rejected as malformed
    for cut in range(len(enc)):
        with pytest.raises(RemoteProtocolError):
            type(msg).decode(enc[:cut])


@SETTINGS
@given(fid=file_ids, path=raw_paths, data=st.binary(max_size=2000), mode=st.integers(0, 0o7777))
def test_small_file_round_trip(fid, path, data, mode):
    e = FileEntry(path, Kind.FILE, len(data), mode, 123, MIN_CHUNK_SIZE)
    msg = SmallFile(fid, e, file_digest(data), data)
    enc = msg.encode()
    got = SmallFile.decode(memoryview(enc))
    assert (got.file_id, got.entry, got.digest, bytes(got.data)) == (fid, e, file_digest(data), data)
    for cut in range(0, len(enc), max(1, len(enc) // 50)):
        with pytest.raises(RemoteProtocolError):
            SmallFile.decode(enc[:cut])
    with pytest.raises(RemoteProtocolError):
        SmallFile.decode(enc + b"x")  # more data than the entry's size


def test_small_file_empty():
    e = FileEntry(b"empty", size=0)
    got = SmallFile.decode(SmallFile(0, e, EMPTY_DIGEST, b"").encode())
    assert bytes(got.data) == b"" and got.digest == EMPTY_DIGEST


def test_hello_layout_and_bad_magic():
    enc = Hello(ROLE_SENDER, 65536, 3, "agent/1").encode()
    assert enc[:4] == MAGIC
    assert struct.unpack_from(">HBBIQ", enc, 4) == (PROTOCOL_VERSION, ROLE_SENDER, 0, 65536, 3)
    h = Hello.decode(enc + b"extension bytes")  # trailing bytes are reserved: accepted
    assert h == Hello(ROLE_SENDER, 65536, 3, "agent/1", PROTOCOL_VERSION)
    with pytest.raises(RemoteProtocolError, match="magic"):
        Hello.decode(b"ftp\x00" + enc[4:])


def test_hello_sender_id_extension():
    sid = bytes(range(16))
    enc = Hello(ROLE_SENDER, 65536, 0, "a", sender_id=sid).encode()
    # after the agent: type 1, length 16, the id (protocol.md 6.1)
    assert enc.endswith(struct.pack(">HH", 1, 16) + sid)
    assert Hello.decode(enc).sender_id == sid
    assert Hello.decode(Hello(ROLE_SENDER, 65536, 0, "a").encode()).sender_id == b""  # older peers: anonymous
    ext = Hello(ROLE_SENDER, 65536, 0, "a").encode()
    unknown = struct.pack(">HH", 0x7777, 3) + b"xyz"
    assert Hello.decode(ext + unknown + struct.pack(">HH", 1, 2) + b"id").sender_id == b"id"
    # the first id counts; a bad length, a truncated one or a short tail are ignored, never an error
    assert Hello.decode(ext + struct.pack(">HH", 1, 1) + b"A" + struct.pack(">HH", 1, 1) + b"B").sender_id == b"A"
    assert Hello.decode(ext + struct.pack(">HH", 1, 0)).sender_id == b""
    assert Hello.decode(ext + struct.pack(">HH", 1, 65) + bytes(65)).sender_id == b""
    assert Hello.decode(ext + struct.pack(">HH", 1, 16) + b"short").sender_id == b""
    assert Hello.decode(ext + b"\x00").sender_id == b""


def test_protocol_md_hello_vectors_match_the_encoder():
    import re
    from pathlib import Path

    from ftx.core.frames import FrameType, encode_frame

    text = (Path(__file__).parent.parent / "protocol.md").read_text()
    blocks = re.findall(r"\*\*HELLO\*\* from a sender.*?```\n(.*?)```.*?SENDER_ID extension.*?```\n(.*?)```",
                        text, re.S)[0]

    def hexdump(block: str) -> bytes:
        return bytes.fromhex("".join(line[6:53] for line in block.splitlines()))

    plain = Hello(ROLE_SENDER, 4259840, 0, "ftx/0.1.0")
    assert hexdump(blocks[0]) == encode_frame(FrameType.HELLO, plain.encode())
    with_id = Hello(ROLE_SENDER, 4259840, 0, "ftx/0.1.0", sender_id=bytes(range(16)))
    assert hexdump(blocks[1]) == encode_frame(FrameType.HELLO, with_id.encode())


def test_hello_agent_is_truncated_to_1024_bytes():
    h = Hello.decode(Hello(ROLE_RECEIVER, 1 << 20, agent="a" * 5000).encode())
    assert h.agent == "a" * 1024


def test_text_invalid_utf8_is_replaced():
    enc = struct.pack(">H", 7) + struct.pack(">H", 2) + b"\xff\xfe"
    msg = ErrorMessage.decode(enc)
    assert msg.code == 7 and not isinstance(msg.code, ErrorCode)
    assert msg.message == "\ufffd\ufffd"


def test_decision_defaults_and_verdict():
    d = Decision(7)
    enc = d.encode()
    got = Decision.decode(enc)
    assert got == Decision(7, 0, ZERO_DIGEST, 0, RangeSet(), "")
    bad = bytearray(enc)
    bad[4] = 2  # verdict
    with pytest.raises(RemoteProtocolError, match="verdict"):
        Decision.decode(bytes(bad))


def test_decision_with_non_canonical_ranges_rejected():
    head = Decision._S.pack(1, 1, 0, 0, ZERO_DIGEST, 0)
    with pytest.raises(RemoteProtocolError, match="canonical"):
        Decision.decode(head + b"\x01\x00\x00" + b"\x00\x00")


def test_offer_trailing_bytes_rejected():
    enc = Offer(1, FileEntry(b"f", size=10)).encode()
    with pytest.raises(RemoteProtocolError, match="trailing"):
        Offer.decode(enc + b"\x00")


def test_result_ok_property():
    assert Result(1, ErrorCode.OK).ok
    assert Result(1, ErrorCode.IDENTICAL).ok
    assert not Result(1, ErrorCode.STORAGE).ok
    assert not Result.decode(Result(1, 999).encode()).ok


def test_known_codes_decode_as_enum():
    r = Result.decode(Result(3, 23, file_digest(b"x"), "bad").encode())
    assert r.code is ErrorCode.DIGEST_MISMATCH
    n = FileNotice.decode(FileNotice(3, ErrorCode.SOURCE_CHANGED, "changed").encode())
    assert n == FileNotice(3, ErrorCode.SOURCE_CHANGED, "changed")


def _unpack_outcome(fn, payload):
    try:
        fid, entry, digest, data = fn(payload)
    except RemoteProtocolError as exc:
        return type(exc), str(exc)
    assert type(digest) is bytes and type(data) is bytes and type(entry.path) is bytes  # owned, not views
    return fid, entry, entry.__dict__, digest, data


@SETTINGS
@given(fid=file_ids, path=raw_paths, data=st.binary(max_size=300), mode=st.integers(0, 0o7777),
       chunk=st.sampled_from([MIN_CHUNK_SIZE - 1, MIN_CHUNK_SIZE, 1 << 20, 16 << 20, (16 << 20) + 1]),
       noise=st.binary(max_size=8), at=st.integers(0, 60), cut=st.integers(-2, 3))
def test_receivers_small_file_fast_decode_agrees_with_small_file_unpack(fid, path, data, mode, chunk, noise, at, cut):
    """receiver.unpack_small (one struct call for the common frame) gives what SmallFile.unpack
    gives -- the same fields, or the same error -- on valid frames and on corrupted ones."""
    from ftx.core.receiver import unpack_small

    enc = bytearray(SmallFile(fid, FileEntry(path, Kind.FILE, len(data), mode, -5, MIN_CHUNK_SIZE),
                              file_digest(data), data).encode())
    enc[28:32] = chunk.to_bytes(4, "big")  # chunk size (some out of range)
    variants = [bytes(enc)]
    enc[at : at + len(noise)] = noise
    variants.append(bytes(enc[: len(enc) - cut] if cut > 0 else enc + b"z" * -cut))
    for payload in variants:
        assert _unpack_outcome(unpack_small, payload) == _unpack_outcome(SmallFile.unpack, payload)


def _safe_wire_path(path: bytes) -> bool:
    """The rule check_wire_path enforces, spelled out the slow way (its reference)."""
    return (0 < len(path) <= MAX_PATH and b"\x00" not in path and not path.startswith(b"/")
            and all(part not in (b"", b".", b"..") and len(part) <= MAX_COMPONENT for part in path.split(b"/")))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"/", b"\x00", b"..", b"x" * 120, b"./", b"/."]), max_size=12))
def test_check_wire_path_fast_case_agrees_with_the_rule(pieces):
    """check_wire_path's common case (no split) accepts exactly what the component rule accepts."""
    path = b"".join(pieces)
    try:
        ok = check_wire_path(path) == path
    except UnsafePath:
        ok = False
    assert ok == _safe_wire_path(path)
