"""UDP driver: non-blocking sockets on the asyncio loop around the sans-I/O UDP core.

Three modules, one idea each:

* ``udp_socket.py``: ``DatagramSocket``, batched datagram I/O (GRO reads, GSO
  sends, a queue when the socket buffer is full);
* ``udp_link.py``: ``UdpLink``, one session's pump (timers, pacing, output) and
  the calls of ``TcpLink`` for the transport-neutral layers; ``connect``;
* ``udp_server.py``: ``UdpServer``, the receiver's one socket for every sender
  (routing by connection ID, admission, the INITIAL-flood socket filter); ``serve``.

This module gathers their public names.  The server's are loaded when first asked for:
a sender only dials out, and ``udp_server`` (with ctypes) is about 2 ms of its start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.udp.session import UdpConfig
from .udp_link import UdpLink, connect
from .udp_socket import DatagramSocket

if TYPE_CHECKING:  # for type checkers and linters; at run time __getattr__ below
    from .udp_server import UdpServer, serve

__all__ = ["UdpLink", "UdpConfig", "UdpServer", "DatagramSocket", "connect", "serve"]


def __getattr__(name: str):
    if name in ("UdpServer", "serve"):
        from . import udp_server

        return getattr(udp_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
