"""Names and other texts from a peer or the file system reach a terminal escaped (one function)."""

from __future__ import annotations

import logging

import pytest

from ftx.core.secure.handshake import printable

from .helpers import run_send

pytestmark = pytest.mark.timeout(60)

NAME = "a\x1b[2Jb"  # an escape sequence that clears the user's screen


def test_a_name_with_an_escape_sequence_sent_and_refused_never_reaches_stderr_raw(receiver, tmp_path):
    """The sender prints its own local name (-v lines, the failure summary), the receiver the
    offered one: neither writes the ESC byte; both show it as \\x1b."""
    src = tmp_path / NAME
    src.write_bytes(b"ours")
    (receiver.dir / NAME).write_bytes(b"theirs, different")  # refused: exists and differs
    code, report, err = run_send("-v", str(src), receiver.dest)
    assert code == 1, err
    receiver.stop()
    for side, text in (("sender", err), ("receiver", receiver.stderr)):
        assert "\x1b" not in text, (side, text)
        assert "a\\x1b[2Jb" in text, (side, text)
    assert (receiver.dir / NAME).read_bytes() == b"theirs, different"


def test_one_function_escapes_names_as_text_or_bytes():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable(b"caf\xe9\n") == "caf\\xe9\\n"  # a byte that is not UTF-8, as the file system gives it
    assert printable("caf\udce9") == "caf\\xe9"  # the same, after os.fsdecode
    assert printable("\u202eevil") == "\\u202eevil"  # a bidi override


def test_log_lines_are_escaped_whatever_the_caller_formatted(capsys):
    from ftx.terminal import setup_logging

    setup_logging(logging.WARNING, name="ftx-test-escaping")
    logging.getLogger("ftx-test-escaping").warning("%s: exists", "x\x1b]0;owned\x07y\nftx: forged")
    err = capsys.readouterr().err
    assert err == "ftx: x\\x1b]0;owned\\x07y\\nftx: forged: exists\n", err
