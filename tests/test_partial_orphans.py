"""A receiver killed while it makes a partial leaves nothing that --partial-ttl cannot find (issue #11).

The receiver is a real ``ftx receive`` that SIGKILLs itself at a fixed point of
``PartialFile._create`` -- just after the data file was made -- through a profile
hook loaded by ``sitecustomize`` (no timing involved).  Then a second receiver with
a short --partial-ttl must remove what the first one left, and nothing else.
"""

from __future__ import annotations

import os
import time

import pytest

from .helpers import Receiver, run_send, wait_for, write_random
from . import test_storage_race

pytestmark = pytest.mark.timeout(60)
mounted = test_storage_race.mounted  # the fixture: a tmpfs mounted below --dir

# the first os.fstat of PartialFile._create is the one of the data file it has just made
KILL_HOOK = """\
import os, signal, sys, threading

def _kill_when_the_data_file_exists(frame, event, arg):
    if event == "c_call" and arg is os.fstat and frame.f_code.co_name == "_create" \\
            and frame.f_code.co_filename.endswith("partial.py"):
        os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(_kill_when_the_data_file_exists)
threading.setprofile(_kill_when_the_data_file_exists)
"""


def _own_files(root) -> list[str] | None:
    """ftx's files below ``root``: its state directory's, and ``.ftx-*`` names anywhere.  None
    where a directory went while it was walked (the receiver tidies its state directory away
    when it empties it): a poll looks again."""
    try:
        return sorted(str(p.relative_to(root)) for p in [*root.rglob(".ftx-*"), *root.glob(".ftx/*")] if p.is_file())
    except FileNotFoundError:
        return None


def _killed_while_making_a_partial(tmp_path, mounted, where: str):
    """--dir ``tmp_path/dst`` after a receiver was killed making the partial of ``mnt/big.bin``:
    (dst, src, what ftx left).  ``beside``: ``mnt`` is a mount point, so the data is made in it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    dst = tmp_path / "dst"
    (dst / "mnt").mkdir(parents=True)
    if where == "beside":
        mounted(dst / "mnt")
    write_random(tmp_path / "src" / "mnt" / "big.bin", 3 << 20)
    r = Receiver(dst, "--min-free", "0", env={"PYTHONPATH": str(hook)})
    rc, _report, _err = run_send(str(tmp_path / "src" / "mnt"), r.dest, timeout=30)
    assert r.proc.wait(20) == -9, "the receiver was not killed where the hook kills it"
    r.stop()
    assert rc != 0
    left = _own_files(dst)
    expect = ".ftx/p-" if where == "state" else "mnt/.ftx-"
    assert any(name.startswith(expect) for name in left), left
    return dst, tmp_path / "src" / "mnt", left


@pytest.mark.parametrize("where", ["state", "beside"])
def test_a_partial_left_by_a_kill_during_its_creation_expires(tmp_path, mounted, where):
    """``beside``: the data is made in the destination's directory (``.ftx-<token>.part``), outside
    .ftx; before the journal named it first, nothing ever found it again and it stayed for good."""
    dst, _src, left = _killed_while_making_a_partial(tmp_path, mounted, where)
    users = {dst / "mnt" / (".ftx-" + "ab" * 16 + ".part"): b"a user's file with ftx's name for partial data",
             dst / "mnt" / "old.txt": b"a user's old file"}
    for p, content in users.items():
        p.write_bytes(content)
    old = time.time() - 7200
    for p in [*(dst / name for name in left), *users]:
        os.utime(p, (old, old))

    r = Receiver(dst, "--partial-ttl", "1h", "--min-free", "0")
    try:
        wait_for(lambda: _own_files(dst) == ["mnt/.ftx-" + "ab" * 16 + ".part"], timeout=10,
                 what=f"ftx's leftovers {left} removed")
    finally:
        r.stop()
    for p, content in users.items():
        assert p.read_bytes() == content


def test_sending_again_after_such_a_kill_leaves_nothing_behind(tmp_path, mounted):
    """The next offer of the file finds the journal, removes the data it names, and starts afresh."""
    dst, src, _left = _killed_while_making_a_partial(tmp_path, mounted, "beside")
    r = Receiver(dst, "--min-free", "0")
    try:
        rc, report, err = run_send(str(src), r.dest, timeout=30)
    finally:
        r.stop()
    assert rc == 0, err
    assert (dst / "mnt" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert _own_files(dst) == []
