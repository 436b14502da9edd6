"""The ``ftx`` program's entry point: the console script and ``python -m ftx`` run ``main``.

Before the command line loads (click and ftx.cli: some 25 ms), ``ftx send`` begins listing the
trees it names in a thread (ftx/prewalk.py), so that their directory digests are ready when the
send needs them.  Begun after the parse, as it was, the thread was not done when a re-send of
20 000 files wanted it: the send waited, and a re-send took ~5 ms longer (tiny set, 20
interleaved runs: 88.6 against 94.0 ms).  The names are found by ``send_paths``, a scan of
argv that knows which of send's options take a value (``SEND_VALUE_OPTIONS``; a test keeps it
equal to the command's).  The scan decides nothing: the command uses the listing only if the
paths click parsed are exactly those (``prewalk.take_prewalk``), and a listing of anything
else is stopped and dropped.
"""

from __future__ import annotations

import sys

SEND_VALUE_OPTIONS = frozenset({
    "--port", "--chunk-size", "--max-rate", "--mtu", "--code-file", "--identity", "--expect-fingerprint",
    "--tls-ca", "--tls-cert", "--tls-key", "--receipt", "--log-format", "--idle-timeout",
})
"""The options of ``ftx send`` that take a value (tests/test_startup.py checks them against click's)."""

NO_PREWALK = ("--checksum", "--receipt")  # as ftx send: no listing ahead then (no directory checks)


def send_paths(argv: list[str]) -> list[str] | None:
    """The PATH arguments of ``ftx send PATH... DEST [OPTIONS]`` in ``argv`` (sys.argv), as click
    parses them; None for any other command, or a send that lists nothing ahead."""
    if len(argv) < 4 or argv[1] != "send":
        return None
    positional: list[str] = []
    args = iter(argv[2:])
    for arg in args:
        if arg == "--":
            positional.extend(args)
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name in NO_PREWALK:
                return None
            if name in SEND_VALUE_OPTIONS and "=" not in arg:
                next(args, None)
        elif arg.startswith("-") and arg != "-":
            continue  # -v, -q, -vq: flags
        else:
            positional.append(arg)
    return positional[:-1] if len(positional) >= 2 else None


def main() -> None:
    paths = send_paths(sys.argv)
    if paths:
        from .prewalk import start_prewalk

        start_prewalk(paths, _import_json if "--json" in sys.argv else None, freeze=True)
    from .cli import main as command_line

    command_line()


def _import_json() -> None:
    """(In the listing's thread once it is done: ``--json`` output needs the module, ~1.5 ms.)"""
    __import__("json")
