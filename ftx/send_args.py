"""What a send is asked to do, checked before anything connects: ``plan_send`` takes the
arguments of ``ftx.send_async`` (and of ``ftx send``) and returns a ``SendPlan``, or raises
``ArgumentError``.  Nothing here loads asyncio: ``ftx send`` plans, begins its head start
(ftx/head_start.py), and loads the session meanwhile.
"""

from __future__ import annotations

import os
from typing import Iterable

from . import DEFAULT_PORT
from .errors import ArgumentError
from .units import parse_size


class SendPlan:
    """A checked send: what ``client.send_over_network`` runs."""

    __slots__ = ("names", "host", "port", "config", "links", "idle_timeout", "rate", "udp", "mtu", "pmtud",
                 "auth", "receipt")

    def __init__(self, names, host, port, config, links, idle_timeout, rate, udp, mtu, pmtud, auth, receipt):
        self.names, self.host, self.port, self.config, self.links = names, host, port, config, links
        self.idle_timeout, self.rate, self.udp, self.mtu, self.pmtud = idle_timeout, rate, udp, mtu, pmtud
        self.auth, self.receipt = auth, receipt


def path_names(paths) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    out = [os.fsdecode(os.fspath(p)) for p in paths]
    if not out:
        raise ArgumentError("nothing to send: give at least one path")
    return out


def plan_send(paths: Iterable, dest: str, *, port: int | None = None, udp: bool = False,
              identity: str | None = None, expect_fingerprint: str | None = None, code: str | None = None,
              tls: bool = False, tls_ca: str | None = None, tls_cert: str | None = None,
              tls_key: str | None = None, insecure: bool = False, checksum: bool = False,
              max_rate: int | str | None = None, receipt: str | None = None, resume: bool = True,
              links: bool = False, chunk_size: int | str = 1 << 20, mtu: int = 1500, pmtud: bool = True,
              idle_timeout: float | None = None, transfer_id: bytes | None = None) -> SendPlan:
    """``ftx.send_async``'s arguments (documented there) checked; ArgumentError names a bad one."""
    from .core.config import Config
    from .core.manifest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
    from .credentials import CredentialError, parse_code
    from .identity import sender_id
    from .security_setup import SenderAuth
    from .transport.sockets import check_host, parse_dest

    names = path_names(paths)
    try:
        host, dport = parse_dest(dest, port or DEFAULT_PORT)
        check_host(host)  # what the resolver will need; e.g. a label over 63 characters fails
        csize = parse_size(chunk_size) if isinstance(chunk_size, str) else int(chunk_size)
        rate = parse_size(max_rate) if isinstance(max_rate, str) else max_rate
    except (ValueError, UnicodeError) as exc:
        raise ArgumentError(f"bad destination {dest!r}: {exc}" if isinstance(exc, UnicodeError) else str(exc)) \
            from None
    if not MIN_CHUNK_SIZE <= csize <= MAX_CHUNK_SIZE:
        raise ArgumentError("chunk_size must be between 4K and 16M")
    if rate is not None and rate <= 0:
        raise ArgumentError("max_rate must be positive")
    if idle_timeout is not None and not 0 < idle_timeout < float("inf"):
        raise ArgumentError("idle_timeout must be a positive number of seconds")
    if not 1248 <= mtu <= 65535:
        raise ArgumentError("mtu must be between 1248 and 65535")
    auth = SenderAuth(insecure, identity, expect_fingerprint, code, tls, tls_ca, tls_cert, tls_key)
    if (why := auth.conflict(code is not None)) is not None:
        raise ArgumentError(why.replace("--", "").replace("-", "_"))
    if code is not None:
        try:
            auth.code = parse_code(code)
        except CredentialError as exc:
            raise ArgumentError(str(exc)) from None
    if transfer_id is not None and len(transfer_id) != 8:
        raise ArgumentError("transfer_id must be 8 bytes")
    config = Config(chunk_size=csize, resume=resume, sender_id=sender_id(), quick_check=not checksum,
                    transfer_id=transfer_id or os.urandom(8))
    return SendPlan(names, host, dport, config, links, idle_timeout or (15.0 if udp else 30.0), rate, udp, mtu, pmtud,
                    auth, receipt)
