"""The decisions of protocol.md's "The spec must match the code" review, pinned (issue #11).

Each test names the section it holds the code to; protocol.md says which side was wrong.
"""

from __future__ import annotations

import pytest

from ftx.core.manifest import check_link_target
from ftx.core.udp import packets as P
from ftx.core.udp.session import UdpConfig, UdpSession
from ftx.errors import ChecksumMismatch, ErrorCode, UnsafePath

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("path,target", [(b"d/l", b"../f"), (b"d/l", b"./../f"), (b"d3/l", b"a/f")])
def test_11_2_leading_dotdot_allowed(path, target):
    assert check_link_target(path, target) == target


@pytest.mark.parametrize("path,target", [(b"d3/l", b"a/../f"), (b"l", b"../x"), (b"a/l2", b"l1/..")])
def test_11_2_dotdot_after_a_name_or_above_the_tree_refused(path, target):
    with pytest.raises(UnsafePath):
        check_link_target(path, target)


def test_14_8_reassembled_chunk_with_a_bad_checksum_closes_with_checksum():
    receiver = UdpSession(2, 1, UdpConfig(), 0.0, chunk_receiver=True)
    frame = P.CHUNK_HEADER.pack(P.F_CHUNK, 1, 0, 100, 0, 1, 100) + b"a" * 100
    with pytest.raises(ChecksumMismatch) as info:
        receiver.receive_payload(0, memoryview(frame), 0.1)
    assert info.value.code == ErrorCode.CHECKSUM == 17  # the endpoint closes with exc.code


def test_14_8_checksum_is_documented_as_a_close_code():
    from pathlib import Path

    spec = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
    assert "| 17 | CHECKSUM | ERROR, CLOSE on UDP |" in spec
    assert "mismatch: CLOSE with code **CHECKSUM**, 17" in spec
