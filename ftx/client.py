"""The sender's work: check the paths, connect, authenticate, send, report.

``send_over_network`` runs one transfer of ``paths`` to ``host``/``port`` over TCP or the
reliable UDP transport and returns the ``SendReport``; errors before the session (bad
arguments, bad credentials, cannot connect, handshake failed) raise ``ftx.errors``
exceptions.  ``ftx send`` (ftx/cli.py) and ``ftx.send`` (ftx/api.py) both run it.
"""

from __future__ import annotations

from typing import Any

from .core.config import Config
from .errors import TransportError
from .progress import Progress
from .sending import SendReport


async def send_over_network(paths: list[str], host: str, port: int, config: Config, links: bool,
                            progress: Progress | None, idle_timeout: float, rate: float | None, udp: bool,
                            mtu: int, pmtud: bool, auth: Any = None, receipt: str | None = None) -> SendReport:
    from .security_setup import SenderAuth, sender_handshake
    from .sending import SendSession
    from .prewalk import take_prewalk
    from .source import arguments, walk, walk_groups

    top = arguments(paths)  # bad arguments fail before connecting
    hs = sender_handshake(auth or SenderAuth(insecure=True), host, port)  # bad credentials too
    if hs is not None and auth.mode == "code":  # the receiver asks its user: say what comes
        from .security_setup import offer_summary

        config.summary = offer_summary(walk(paths, links))  # a first walk that counts, holding nothing
    try:
        if udp:
            from .transport import udp as transport

            link = await transport.connect(host, port, transport.UdpConfig(
                max_datagram=mtu - 48, idle_timeout=idle_timeout, max_rate=rate, pmtud=pmtud))
            rate = None  # the UDP pacer applies it
        else:
            from .transport import tcp as transport

            link = await transport.connect(host, port)
    except OSError as exc:  # what the transports do not name themselves (e.g. a broadcast address)
        raise TransportError(f"cannot connect to {host} port {port}: {exc.strerror or exc}") from exc
    try:
        peer_fingerprint = ""
        est = None
        if hs is not None:
            from .securing import run_handshake

            est = await run_handshake(link, hs, idle_timeout)
            peer_fingerprint = est.peer.fingerprint
        report = await SendSession(link, config, progress, idle_timeout, rate, receipt=receipt,
                                   established=est).run(walk_groups(paths, links, top, take_prewalk(paths)))
        report.transport_stats = getattr(link, "stats", {})
        report.peer_fingerprint = peer_fingerprint
        return report
    finally:
        await link.aclose()


__all__ = ["send_over_network"]
