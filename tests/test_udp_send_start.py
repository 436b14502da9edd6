"""What a UDP sender does before its file moves (issue #12, Speed: the whole command).

A sender does not import the receiver's UDP server.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


def test_udp_sender_does_not_load_the_receivers_server(tmp_path):
    """``ftx send --udp`` dials out: the receiver's UdpServer (its admission, socket filter
    and ctypes for malloc_trim) is not imported -- about 2 ms of every sender's start."""
    from .helpers import Receiver
    from .test_startup import _imported

    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        mods = _imported(["send", str(src), r.dest, "--udp", "--insecure", "--no-progress"])
        assert "ftx.transport.udp_link" in mods  # the check sees the UDP send path
        assert "ftx.transport.udp_server" not in mods and "ctypes" not in mods
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()
    from ftx.transport import udp  # the names stay where they were

    assert udp.serve is udp_server_serve() and udp.UdpServer.__name__ == "UdpServer"


def udp_server_serve():
    from ftx.transport.udp_server import serve

    return serve
