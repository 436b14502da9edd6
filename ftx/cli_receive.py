"""``ftx receive``: serve senders into --dir (its options are built only when the command is named:
``ftx send`` does not pay for them; see cli._Commands)."""

from __future__ import annotations

import logging
import os
import sys

import click

from . import DEFAULT_PORT, config_file
from .cli import (EXIT_FILES, EXIT_INTERRUPTED, EXIT_LOCAL, EXIT_OK, EXIT_USAGE, _asyncio_without_ssl, _die,
                  _exit_code, _fit_descriptors, _loaded, _paused_collection, _setup_logging, _show_progress, _tell,
                  _with, verbosity)
from .cli_help import RECEIVE_EPILOG
from .cli_options import check_listen as _check_listen, limit_options as _limit_options, limits_from as _limits_from
from .cli_output import emit as _emit, flush as _flush, start_writers as _start_writers, stop_writers as _stop_writers
from .errors import FtxError
from .limits import Limits


@click.command(epilog=RECEIVE_EPILOG)
@click.option("--listen", "host", default="::", show_default=True, help="Address to listen on (:: = all, IPv6 and IPv4).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="TCP port; 0 picks a free one (see the --json 'listening' line).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory to receive into.")
@click.option("--mkdir", is_flag=True, help="Create --dir (and its parents) if it does not exist; without it a "
              "missing --dir is an error (a typo is not silently created).")
@click.option("--once", is_flag=True, help="Exit after one complete transfer.")
@click.option("--overwrite", is_flag=True, help="Replace destination files whose content differs.")
@click.option("--no-udp", is_flag=True, help="Serve TCP only (by default UDP is served on the same port number).")
@click.option("--code", "code_mode", is_flag=True,
              help="Pairing-code mode: print a one-off code (stderr and --json) that the sender must enter.")
@click.option("--yes", is_flag=True, help="Code mode: accept what is offered without asking.")
@click.option("--identity", type=click.Path(dir_okay=False), default=None,
              help="Identity key (default $XDG_CONFIG_HOME/ftx/identity, created on first start).")
@click.option("--authorized-keys", type=click.Path(dir_okay=False), default=None,
              help="Senders accepted: one public-key line each (default $XDG_CONFIG_HOME/ftx/authorized_keys).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3 mode: this receiver's certificate chain (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3: private key of --tls-cert (if not in the same file).")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None,
              help="TLS 1.3: require client certificates that chain to these CA certificates (PEM).")
@click.option("--tls-any-client", is_flag=True,
              help="TLS 1.3 without --tls-ca: accept any sender, no client certificate asked (anyone who can "
                   "reach the port can write into --dir; warns at start).")
@click.option("--insecure", is_flag=True,
              help="No authentication, no encryption: anyone who can reach the port can write into --dir "
                   "(listens on loopback unless --listen is given).")
@click.option("--metrics", "metrics_at", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics over HTTP at HOST:PORT (a bare PORT: 127.0.0.1); path /metrics.")
@_limit_options
@_with(verbosity)
@config_file.option()
@_paused_collection
def receive(host, port, directory, mkdir, once, overwrite, no_udp, code_mode, yes, identity, authorized_keys, tls_cert,
            tls_key, tls_ca, tls_any_client, insecure, metrics_at, verbose, quiet, as_json, log_format, no_progress,
            idle_timeout, **limit_values):
    """Receive files into --dir, serving one sender after another (many at once).

    Logs one line per event on stderr: listening, each sender, a summary per session, each
    refusal (-v adds a line per file, -q leaves only warnings)."""
    _setup_logging(verbose - (0 if as_json else 1), quiet, log_format, events=logging.INFO + 10 * (quiet - verbose))
    _asyncio_without_ssl()
    limits = _fit_descriptors(_limits_from(limit_values))
    if not os.path.isdir(directory):
        if os.path.lexists(directory) or not mkdir:
            _die(f"--dir {directory}: " + ("not a directory" if os.path.lexists(directory) else
                                           "no such directory (check the name; --mkdir creates it)"), EXIT_USAGE)
    if metrics_at is not None:
        from .metrics import parse_address

        try:
            metrics_at = parse_address(metrics_at)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics") from None
    from .security_setup import receiver_conflict

    if (why := receiver_conflict(insecure, code_mode, identity, authorized_keys, tls_cert, tls_key, tls_ca,
                                 tls_any_client)):
        raise click.UsageError(why)
    if code_mode and not yes:
        from .confirm import unavailable

        if (why := unavailable()) is not None:
            _die(why, EXIT_USAGE)
    if insecure:
        if click.get_current_context().get_parameter_source("host") == click.core.ParameterSource.DEFAULT:
            host = "127.0.0.1"
        _tell("WARNING: --insecure: senders are not authenticated and nothing is encrypted; "
              f"anyone who can reach {host} port {port} can write into {directory}")
    if tls_any_client:
        _tell("WARNING: --tls-any-client: senders are not authenticated (the channel is encrypted); "
              f"anyone who can reach {host} port {port} can write into {directory}")
    _check_listen(host)
    from .security_setup import HandshakeRate, ReceiverAuth
    from .storage import Destination

    try:
        auth = ReceiverAuth(insecure=insecure, identity=identity, authorized_keys=authorized_keys, code=code_mode,
                            tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                            rate=HandshakeRate(limits.code_handshakes_per_host, limits.code_handshakes))
    except FtxError as exc:
        _die(str(exc), _exit_code(exc))
    auth.ask = code_mode and not yes  # show what a code holder offers and ask first
    for notice in auth.notices:
        _tell(f"{notice}")

    if mkdir:  # checked at the start; created once every other option has been accepted
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            _die(f"cannot create --dir {directory}: {exc.strerror}", EXIT_LOCAL)
    try:
        dest = Destination(directory, overwrite, limits=limits)
    except OSError as exc:
        _die(f"cannot use {directory}: {exc.strerror}", EXIT_LOCAL)
    bars = _show_progress(no_progress, as_json)
    import asyncio

    _warm_receiver(auth)
    _start_writers(as_json, bars)
    _loaded()
    try:
        code = asyncio.run(_receive(dest, host, port, once, as_json, idle_timeout, bars, not no_udp, limits, auth,
                                    metrics_at, config_file.loaded()))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except FtxError as exc:
        _stop_writers()
        _die(str(exc), _exit_code(exc))
    _stop_writers()
    sys.exit(code)


def _warm_receiver(auth) -> tuple:
    """Import now what the first sender's connection would import: the session, and in keys mode
    the handshake's and the AEAD's modules (~15 ms), so that the first sender (a --once
    receiver's only one) does not wait for them in its handshake.  (Code and TLS modes keep
    their own modules lazy.)  Import statements, not importlib: ``-X importtime`` sees them."""
    import concurrent.futures.thread  # the session's worker thread

    from . import expiry, failure_log, receiving
    warm = (concurrent.futures.thread, expiry, failure_log, receiving)
    if auth.kind != "key":
        return warm
    from cryptography.hazmat.primitives import hmac, serialization
    from cryptography.hazmat.primitives.ciphers import aead
    from cryptography.hazmat.primitives.kdf import hkdf

    from . import securing
    from .core.secure import sigma
    return warm + (hmac, serialization, aead, hkdf, securing, sigma)


async def _receive(dest, host, port, once, as_json, idle_timeout, bars, udp, limits: Limits | None = None,
                   auth=None, metrics_at=None, settings=None) -> int:
    """The receiver service until a signal (or --once): its events printed as --json lines."""
    import asyncio
    import signal

    from .daemon import ReceiverService

    progress = None
    if bars:
        from .progress import Bars

        progress = lambda label: Bars(label=label)  # noqa: E731
    ask = None
    if auth is not None and auth.ask:
        from .confirm import Question

        question = Question((limits or Limits()).confirm_timeout)  # one at a time, each bounded by --confirm-timeout

        async def ask_user(peer: str, offer: str) -> str | None:
            return await question.ask(f"ftx: {peer} offers {offer}. Accept?")

        ask = ask_user

    service = ReceiverService(dest, host=host, port=port, udp=udp, once=once, idle_timeout=idle_timeout,
                              limits=limits, auth=auth, metrics_at=metrics_at, emit=_emit if as_json else None,
                              flush=_flush if as_json else None, tell=_tell, progress=progress, ask=ask,
                              settings=settings)
    await service.start()
    loop = asyncio.get_running_loop()
    stop_code = [EXIT_OK]

    def on_signal(code: int) -> None:
        stop_code[0] = code
        service.stop()

    loop.add_signal_handler(signal.SIGTERM, on_signal, EXIT_OK)
    loop.add_signal_handler(signal.SIGINT, on_signal, EXIT_INTERRUPTED)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    try:
        ok = await service.wait()
    finally:
        await service.aclose()
        _flush()  # nor a queued --json line
    if ok is None:
        return stop_code[0]
    return EXIT_OK if ok else EXIT_FILES
