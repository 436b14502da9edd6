"""``ftx impair``: a local UDP forwarder that impairs a path (ftx/netsim.py), to rehearse
``ftx send --udp``; ``ftx relay`` is its former, hidden name."""

from __future__ import annotations

import click

from . import DEFAULT_PORT
from .cli_help import IMPAIR_EPILOG
from .cli_output import emit as _emit


@click.command(epilog=IMPAIR_EPILOG)
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT to listen on.")
@click.option("--to", "target", required=True, help="HOST:PORT to forward to (e.g. a receiver).")
@click.option("--both", default="", help="Impairments in both directions, e.g. 'loss=0.01,delay=15ms'.")
@click.option("--forward", default="", help="Extra impairments towards --to (override --both).")
@click.option("--reverse", default="", help="Extra impairments back to the client (override --both).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed: the same seed, the same fates.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: listening, then the counters at exit.")
def impair(listen, target, both, forward, reverse, seed, duration, as_json):
    """Emulate a bad network path for UDP (to rehearse 'ftx send --udp').

    A local UDP forwarder (not a rendezvous relay: it only impairs) that drops,
    duplicates, reorders, corrupts, delays and rate-limits datagrams.

    Impairments: loss, dup, reorder, reorder_delay, corrupt (probabilities or
    N%), delay, jitter, queue (seconds or ms), rate (as --max-rate: 20M =
    20 MiB/s, 20MB = 20*10^6 bytes/s, 200Mbit), blackout=START-END seconds after start (';' for several),
    replay (probability of re-sending an earlier datagram 50 ms late), and
    rebind=T (forward: new source port at T seconds, like a NAT rebinding),
    mtu=N (datagrams whose UDP payload exceeds N bytes are dropped, as on a path
    whose MTU is N + 28 over IPv4, N + 48 over IPv6; default 1472, a 1500-byte
    IPv4 path as on the internet; mtu=0: any size).
    """
    from .cli_options import EXIT_CONNECTION, check_listen as _check_listen, die as _die
    from .netsim import Impairment
    from .transport.sockets import parse_dest

    try:
        lhost, lport = parse_dest(listen, 0, allow_zero=True)
        thost, tport = parse_dest(target, DEFAULT_PORT)
        fwd = Impairment.parse(",".join(filter(None, [both, forward])))
        rev = Impairment.parse(",".join(filter(None, [both, reverse])))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _check_listen(lhost)
    _check_resolves(thost, "--to")
    import asyncio  # here, not at the top: `ftx --help` and TAB completion import this module

    try:
        asyncio.run(_impair(lhost, lport, (thost, tport), fwd, rev, seed, duration, as_json))
    except OSError as exc:
        _die(f"impair: {exc.strerror or exc}", EXIT_CONNECTION)


# 'ftx relay' was its first name; croc and magic-wormhole users read that as a rendezvous relay.
# It still works (scripts), but is not listed in --help nor offered by completion.
relay = click.Command("relay", params=impair.params, callback=impair.callback, help=impair.help,
                      epilog=IMPAIR_EPILOG, hidden=True)


def _check_resolves(host: str, option: str) -> None:
    import socket

    from .cli_options import EXIT_USAGE, die as _die

    try:
        socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        _die(f"{option} {host!r} is not an address: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)


async def _impair(lhost, lport, target, fwd, rev, seed, duration, as_json):
    import asyncio
    import json
    import signal

    from .netsim import Relay

    r = Relay(target, fwd, rev, seed)
    port = await r.start(lhost, lport)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before "listening": a SIGTERM right after it gets the counters
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    if as_json:
        _emit({"event": "listening", "host": lhost, "port": port, "to": list(target)})
    else:
        click.echo(f"ftx impair: {lhost}:{port} -> {target[0]}:{target[1]}", err=True)
    try:
        await asyncio.wait_for(stop, duration)
    except asyncio.TimeoutError:
        pass
    r.close()
    stats = {"event": "stats", **r.stats}
    if as_json:
        _emit(stats)
    else:
        click.echo(json.dumps(stats), err=True)
