"""The sender's work: check the paths, connect, authenticate, send, report.

``send_over_network`` runs one planned transfer (``send_args.SendPlan``) over TCP or the
reliable UDP transport and returns the ``SendReport``; errors before the session (bad
arguments, bad credentials, cannot connect, handshake failed) raise ``ftx.errors``
exceptions.  ``ftx send`` (ftx/cli.py) and ``ftx.send`` (ftx/api.py) both run it; ``ftx send``
gives it where its head start left the send (ftx/head_start.py: the first steps of this, to
the first directory checks, done before asyncio and the session were loaded).
"""

from __future__ import annotations

from .errors import TransportError
from .progress import Progress
from .send_args import SendPlan
from .send_report import SendReport, finished


async def send_over_network(plan: SendPlan, progress: Progress | None, head=None) -> SendReport:
    from .security_setup import SenderAuth, sender_handshake
    from .sending import SendSession
    from .prewalk import take_prewalk
    from .source import arguments, walk, walk_groups

    paths, host, port, config, links, auth = plan.names, plan.host, plan.port, plan.config, plan.links, plan.auth
    if head is not None:  # (head_start.HeadState: connected, authenticated, HELLOs exchanged)
        from .transport.tcp import TcpLink

        link = TcpLink.taking_over(head.link)
        try:
            report = await SendSession(link, config, progress, plan.idle_timeout, plan.rate,
                                       established=head.established, head=head).run(
                head.walk or walk_groups(paths, links, head.top, take_prewalk(paths)))
            return finished(report, link, head.established)
        finally:
            await link.aclose()
    top = arguments(paths)  # bad arguments fail before connecting
    hs = sender_handshake(auth or SenderAuth(insecure=True), host, port)  # bad credentials too
    if hs is not None and auth.mode == "code":  # the receiver asks its user: say what comes
        from .security_setup import offer_summary

        config.summary = offer_summary(walk(paths, links))  # a first walk that counts, holding nothing
    rate = plan.rate
    try:
        if plan.udp:
            from .transport import udp as transport

            link = await transport.connect(host, port, transport.UdpConfig(
                max_datagram=plan.mtu - 48, idle_timeout=plan.idle_timeout, max_rate=rate, pmtud=plan.pmtud))
            rate = None  # the UDP pacer applies it
        else:
            from .transport import tcp as transport

            link = await transport.connect(host, port)
    except OSError as exc:  # what the transports do not name themselves (e.g. a broadcast address)
        raise TransportError(f"cannot connect to {host} port {port}: {exc.strerror or exc}") from exc
    try:
        est = None
        if hs is not None:
            from .securing import run_handshake

            est = await run_handshake(link, hs, plan.idle_timeout)
        report = await SendSession(link, config, progress, plan.idle_timeout, rate, receipt=plan.receipt,
                                   established=est).run(walk_groups(paths, links, top, take_prewalk(paths)))
        return finished(report, link, est)
    finally:
        await link.aclose()


__all__ = ["send_over_network"]
