"""Addresses and listening sockets shared by the TCP and UDP drivers."""

from __future__ import annotations

import socket

from .. import DEFAULT_PORT
from ..errors import TransportError

ANY = (None, "", "::", "*")


def parse_dest(dest: str, default_port: int = DEFAULT_PORT, allow_zero: bool = False) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 address."""
    if dest.startswith("["):
        host, sep, rest = dest[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad destination {dest!r}: expected [IPv6]:PORT")
        port = rest[1:] if rest else ""
    elif dest.count(":") == 1:
        host, port = dest.split(":")
    else:
        host, port = dest, ""
    if not host:
        raise ValueError(f"bad destination {dest!r}: no host")
    if port:
        if not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
            raise ValueError(f"bad port {port!r}")
        return host, int(port)
    return host, default_port


def check_host(host: str) -> None:
    """Raise UnicodeError where the resolver could not take ``host`` (a label empty or over 63
    characters, a name IDNA cannot encode).  A plain ASCII name or address is checked without the
    idna codec (importing it costs ~2 ms of every send)."""
    labels = host.removesuffix(".").split(".")
    if not host.isascii() or not all(0 < len(label) <= 63 for label in labels):
        host.encode("idna")


async def resolve(host: str, port: int, socktype: int) -> list:
    """``getaddrinfo`` for a connect.  A numeric address (IPv4, IPv6, scoped IPv6) is converted
    here, at once: asyncio's ``loop.getaddrinfo`` would start its resolver thread for it (and the
    end of ``asyncio.run`` another to join that one), about 1-2 ms of every send.  Only a name
    goes to that thread; its result and errors are what they always were."""
    try:  # (as ASCII bytes: a str host is IDNA-encoded first, which imports the idna codec, ~2 ms)
        return socket.getaddrinfo(host.encode("ascii"), port, type=socktype, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeEncodeError):  # a name (or not an address at all: the resolver says which, as before)
        import asyncio

        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socktype)


def bound_socket(host: str | None, port: int, socktype: int, reuse_addr: bool = False) -> socket.socket:
    """A socket bound to ``host``/``port``; ``None``/``::`` means every address, IPv6 and IPv4
    (falling back to IPv4 alone where the machine has no IPv6)."""
    if host in ANY:
        try:
            sock = socket.socket(socket.AF_INET6, socktype)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr = ("::", port)
        except OSError:
            sock, addr = socket.socket(socket.AF_INET, socktype), ("0.0.0.0", port)
    else:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socktype)
    if reuse_addr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        kind = "UDP" if socktype == socket.SOCK_DGRAM else "TCP"
        raise TransportError(f"cannot listen on {kind} {addr[0]} port {addr[1]}: {exc.strerror}") from exc
    return sock


def host_of(peer) -> str | None:
    """The IP address of a peer's (host, port, ...) tuple, an IPv4-mapped IPv6 one as IPv4; None otherwise."""
    return peer[0].removeprefix("::ffff:") if isinstance(peer, tuple) else None


def peer_label(peer) -> str:
    """``host:port`` (``[v6]:port``) of a peer for logs and events."""
    host = host_of(peer)
    if host is None:
        return str(peer)
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
