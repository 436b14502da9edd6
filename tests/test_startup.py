"""Fixed costs of every run: what `ftx --help`, a shell's TAB and a send import before any work.

Every TAB runs the program, and 20 000 tiny files are sent in about as long as the interpreter
takes to start twice: modules a run does not need (asyncio for --help, cryptography for
--insecure) must not be imported.  Checked in a fresh interpreter with ``-X importtime``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import FTX, Receiver

pytestmark = pytest.mark.timeout(60)


def _imported(args: list[str], env: dict | None = None) -> set[str]:
    """The modules a fresh ``ftx ARGS`` imports (it must exit 0)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *FTX[1:], *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


HEAVY_FOR_HELP = ("asyncio", "ssl", "cryptography", "tomllib", "ftx.areas", "ftx.core.secure", "socket")


def test_help_imports_no_event_loop_tls_or_crypto():
    mods = _imported(["--help"])
    assert "click" in mods  # the check can see imports at all
    assert not [m for m in HEAVY_FOR_HELP if m in mods]


def test_tab_completion_imports_no_event_loop_tls_or_crypto():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "from ftx.cli import main; main(prog_name='ftx')"],
                          capture_output=True, text=True, env={**os.environ, "_FTX_COMPLETE": "bash_complete",
                                                               "COMP_WORDS": "ftx receive --", "COMP_CWORD": "2"},
                          timeout=50)
    assert proc.returncode == 0 and "--max-connections" in proc.stdout  # it completed
    mods = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not [m for m in HEAVY_FOR_HELP if m in mods]


def test_insecure_send_imports_no_cryptography(tmp_path):
    """--insecure neither authenticates nor encrypts: no cipher, key or signature module is loaded."""
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n")
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        mods = _imported(["send", str(src), r.dest, "--insecure", "--no-progress"])
        assert "ftx.sending" in mods and "ftx.core.secure.handshake" in mods  # the check sees the send path
        assert not [m for m in mods if m.startswith("cryptography")]
        assert (tmp_path / "in" / "a.txt").read_bytes() == b"hello\n"
    finally:
        r.stop()
