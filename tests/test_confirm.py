"""Code mode's question before accepting an offer is bounded: on a real pty, with stdin closed or not a terminal."""

from __future__ import annotations

import os
import subprocess

import pytest

from .helpers import FTX, LineReader, start_send, wait_for, with_env, write_random
from .test_secure_cli import EXIT_USAGE, Drain, stranger

pytestmark = pytest.mark.timeout(90)


def test_an_unanswered_question_is_answered_no_in_time_and_the_receiver_goes_on(tmp_path):
    """Nobody answers: after --confirm-timeout the sender is told the receiver did not accept in time,
    nothing is written, and the next sender's question (answered) gets its files through."""
    import pty

    write_random(tmp_path / "a", 1000)
    d = tmp_path / "dst"
    master, slave = pty.openpty()
    proc = subprocess.Popen(FTX + ["receive", "--mkdir", "--code", "--confirm-timeout", "1s", "--listen", "127.0.0.1",
                                   "--port", "0", "--dir", str(d), "--json"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=with_env(stranger(tmp_path, "r")))
    os.close(slave)
    try:
        lines = LineReader(proc.stdout)
        first = lines.next_json()
        err = Drain(proc.stderr)
        dest = f"127.0.0.1:{first['port']}"
        sender = start_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": first["code"]})
        _, serr = sender.communicate(timeout=30)  # nobody answers
        assert sender.returncode != 0 and "the receiver did not accept in time" in serr, serr
        assert "no answer within 1 s" in err.text()
        assert not os.path.exists(d) or not os.listdir(d)
        while (ev := lines.next_json())["event"] != "code":
            pass
        sender = start_send(str(tmp_path / "a"), dest, env={**stranger(tmp_path, "s"), "FTX_CODE": ev["code"]})
        wait_for(lambda: err.text().count("Accept?") == 2, what="the second question")
        os.write(master, b"y\n")
        _, serr = sender.communicate(timeout=30)
        assert sender.returncode == 0, serr + err.text()
        assert (d / "a").stat().st_size == 1000
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


@pytest.mark.parametrize("stdin", ["closed", "devnull"])
def test_a_code_receiver_with_nothing_to_ask_on_refuses_at_once_in_one_line(tmp_path, stdin):
    """Standard input closed (no file descriptor 0 at all) or not a terminal, and no --yes: one
    ``ftx:`` line naming --yes and the usage exit code, at once -- never a traceback or a hang."""
    kwargs = {"stdin": subprocess.DEVNULL} if stdin == "devnull" else {"pass_fds": (), "preexec_fn": lambda: os.close(0)}
    proc = subprocess.run(FTX + ["receive", "--mkdir", "--code", "--port", "0", "--dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=30, **kwargs)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftx: ") and "--yes" in lines[0], proc.stderr
    assert ("closed" if stdin == "closed" else "not a terminal") in lines[0]
