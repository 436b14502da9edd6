"""The ``ftx`` command line's option helpers: exit codes, size/rate/limit options parsed into
values (a bad one is a one-line usage error), the verbosity options every command shares."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from .units import human_size, parse_duration, parse_rate, parse_size

if TYPE_CHECKING:
    from .limits import Limits

EXIT_OK, EXIT_FILES, EXIT_USAGE, EXIT_CONNECTION, EXIT_PROTOCOL, EXIT_LOCAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), as a shell reports a process it killed


def size_value(text: str, option: str) -> int:
    """A size option's value (ftx/units.py); a bad one is a usage error that lists the accepted forms."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def rate_value(text: str, option: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def limit_options(fn):
    """One ``ftx receive`` option per field of ``Limits`` (ftx/limits.py holds the table)."""
    from .limits import Limits  # (here: ``ftx send`` never loads the receiver's limits)

    for name, kind, default, help_text in reversed(Limits.options()):
        flag = "--" + name.replace("_", "-")
        if kind == "count":
            fn = click.option(flag, name, type=click.IntRange(max(1, int(Limits.least(name)))), default=default,
                              show_default=True,
                              help=help_text)(fn)
        else:
            shown = human(default, kind)
            fn = click.option(flag, name, default=None, metavar="SIZE" if kind == "size" else "TIME",
                              help=f"{help_text}  [default: {shown}]")(fn)
    return fn


def human(value, kind: str) -> str:
    if kind == "size":
        return human_size(value)
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= mult and value % mult == 0:
            return f"{int(value // mult)}{unit}"
    return f"{value:g}s"


def limits_from(values: dict) -> Limits:
    """Build ``Limits`` from the receive command's parsed options (unset ones keep defaults)."""
    from .limits import Limits

    kwargs = {}
    for name, kind, _default, _help in Limits.options():
        raw = values.get(name)
        if raw is None:
            continue
        if kind == "count":
            kwargs[name] = raw
            continue
        try:
            kwargs[name] = parse_size(raw) if kind == "size" else parse_duration(raw)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--" + name.replace("_", "-")) from None
        if kind == "duration" and kwargs[name] <= 0:
            raise click.BadParameter("must be a positive time, such as 30s", param_hint="--" + name.replace("_", "-"))
        if kwargs[name] < Limits.least(name):
            raise click.BadParameter(f"must be at least {human(Limits.least(name), kind)}",
                                     param_hint="--" + name.replace("_", "-"))
    return Limits(**kwargs)


def positive(value: float | None, param) -> float | None:
    if value is not None and not 0 < value < float("inf"):  # also refuses nan
        raise click.BadParameter(f"{value} is not a positive number of seconds", param=param)
    return value


def check_listen(host: str, option: str = "--listen") -> None:
    """A bad listening address is a one-line usage error, before anything starts."""
    import errno
    import socket

    from .transport.sockets import ANY

    if host in ANY:
        return
    try:
        family, socktype, proto, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        hint = " (give the port with --port)" if option == "--listen" and host.count(":") == 1 else ""
        die(f"{option} {host!r} is not an address: {getattr(exc, 'strerror', None) or exc}{hint}", EXIT_USAGE)
    with socket.socket(family, socktype, proto) as probe:
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                die(f"{option} {host}: not an address of this machine", EXIT_USAGE)



def die(message: str, code: int):
    from .terminal import say

    say(message)  # escaped: it may hold a name from the peer or the file system
    sys.exit(code)


verbosity = [
    click.option("-v", "--verbose", count=True, help="More logging (repeat for debug)."),
    click.option("-q", "--quiet", count=True, help="Less logging."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout."),
    click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                 help="Log lines on stderr: 'ftx: ...' text, or one JSON object per line (for machines)."),
    click.option("--no-progress", is_flag=True, help="No progress bars (also off when stderr is not a terminal)."),
    click.option("--idle-timeout", type=float, default=None, callback=lambda ctx, param, v: positive(v, param),
                 help="Give up when the peer has been silent this many seconds (TCP 30, UDP 15)."),
]


def with_options(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco
