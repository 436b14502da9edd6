"""Addresses and listening sockets shared by the TCP and UDP drivers."""

from __future__ import annotations

import os
import socket

from .. import DEFAULT_PORT
from ..errors import ErrorCode, TransportError

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
    infos = _numeric(host, port, socktype)
    if infos is None:  # a name (or not an address at all: the resolver says which, as before)
        import asyncio

        return await asyncio.get_running_loop().getaddrinfo(host, port, type=socktype)
    return infos


def _numeric(host: str, port: int, socktype: int) -> list | None:
    try:  # (as ASCII bytes: a str host is IDNA-encoded first, which imports the idna codec, ~2 ms)
        return socket.getaddrinfo(host.encode("ascii"), port, type=socktype, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeEncodeError):
        return None


def connect_blocking(host: str, port: int, timeout: float) -> socket.socket:
    """``tcp.connect`` without an event loop (ftx/head_start.py): a blocking socket (``timeout`` on each
    call, TCP_NODELAY) connected to the first of HOST's addresses that answers; the same errors."""
    try:
        infos = _numeric(host, port, socket.SOCK_STREAM) or socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc.strerror}") from exc
    last: Exception | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise connect_error(host, port, last)


def connect_error(host: str, port: int, last: Exception | None) -> TransportError:
    """What a connect that found no address answering says (the last address's reason)."""
    errno_ = getattr(last, "errno", None)  # asyncio's strerror reads "Connect call failed ('127.0.0.1', 9)"
    reason = os.strerror(errno_).lower() if errno_ else getattr(last, "strerror", None) or "timed out"
    return TransportError(f"cannot connect to {host} port {port}: {reason}", ErrorCode.ABORTED)


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
