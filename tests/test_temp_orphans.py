"""A receiver killed while one of its named temporaries exists leaves nothing behind for good (issue #11).

ftx makes temporaries ``.ftx-<32 random hex>.tmp`` in users' directories: a file committed with
--overwrite (a name to rename over the old file from), a small file on a file system without
O_TMPFILE, a symlink.  The receiver is a real ``ftx receive`` that SIGKILLs itself at a fixed point
(through a profile hook loaded by ``sitecustomize``; no timing involved) while such a temporary
exists; the next receiver, whatever its --partial-ttl, removes it at start -- and never a user's
file, whatever its name.
"""

from __future__ import annotations

import os

import pytest

from .helpers import Receiver, run_send, wait_for, write_random
from . import test_storage_race

pytestmark = pytest.mark.timeout(60)
mounted = test_storage_race.mounted  # the fixture: a tmpfs mounted below --dir

# (file, function, the call at which the temporary exists)
KILL_AT = {
    "overwrite": ("fileops.py", "replace", "rename"),  # Temp.replace: linked to its name, not yet renamed
    "no-tmpfile": ("smallwrite.py", "write_small", "write"),  # created under its name, before its bytes
    "symlink": ("storage.py", "make_symlink", "utime"),  # the symlink made under its temporary name
    "big-overwrite-beside": ("partial.py", "_commit", "rename"),  # data linked to a fresh name beside it
}

HOOK = """\
import os, signal, sys, threading
{patch}
def _kill(frame, event, arg):
    if event == "c_call" and arg is os.{call} and frame.f_code.co_name == {func!r} \\
            and frame.f_code.co_filename.endswith({file!r}):
        os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(_kill)
threading.setprofile(_kill)
"""
# a file system without O_TMPFILE, as the unit tests make one (tests/test_small_write.py)
NO_TMPFILE = "import ftx.fileops as f; f._TMPFILE = 0; f.NAMELESS = False\n"


def _temporaries(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".ftx-*.tmp"))


def _killed_with_a_temporary(tmp_path, mounted, case: str):
    """--dir ``tmp_path/dst`` after a receiver was killed while its temporary existed: (dst, src, sub, left)."""
    file, func, call = KILL_AT[case]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK.format(patch=NO_TMPFILE if case == "no-tmpfile" else "",
                                                       call=call, func=func, file=file))
    dst, src = tmp_path / "dst", tmp_path / "src" / "sub"
    (dst / "sub").mkdir(parents=True)
    args = ["--min-free", "0"]
    send = []
    if case == "symlink":
        write_random(src / "target.bin", 100)
        os.symlink("target.bin", src / "link")
        send = ["--links"]
    elif case == "big-overwrite-beside":
        mounted(dst / "sub")
        write_random(src / "big.bin", 3 << 20)
        (dst / "sub" / "big.bin").write_bytes(b"the user's old big.bin")
        args.append("--overwrite")
    else:
        write_random(src / "small.bin", 1000)  # a new file (one that exists is offered, and comes in chunks)
        if case == "overwrite":
            args.append("--overwrite")
    r = Receiver(dst, *args, env={"PYTHONPATH": str(hook)})
    rc, _report, _err = run_send(str(src), r.dest, *send, timeout=30)
    assert r.proc.wait(20) == -9, "the receiver was not killed where the hook kills it"
    r.stop()
    assert rc != 0
    left = _temporaries(dst)
    assert len(left) == 1 and left[0].startswith("sub/.ftx-"), left
    return dst, src, left


@pytest.mark.parametrize("case", list(KILL_AT))
def test_a_temporary_left_by_a_kill_is_removed_by_the_next_receiver(tmp_path, mounted, case):
    dst, src, left = _killed_with_a_temporary(tmp_path, mounted, case)
    users = {dst / "sub" / ".ftx-abcd.tmp": b"a user's file with a name like ftx's",
             dst / "sub" / (".ftx-" + "cd" * 16 + ".tmp"): b"a user's file with the form of ftx's names",
             dst / (".ftx-" + "ef" * 16 + ".tmp"): b"another one, in --dir itself"}
    for p, content in users.items():
        p.write_bytes(content)
    before = sorted(os.listdir(dst / "sub"))

    r = Receiver(dst, "--min-free", "0")  # the default --partial-ttl (7 days): not a matter of age
    try:
        wait_for(lambda: not os.path.lexists(dst / left[0]), timeout=10, what=f"{left[0]} removed")
        if case != "big-overwrite-beside":  # there the partial (journal and data) stays for a resume
            wait_for(lambda: not (dst / ".ftx").exists(), timeout=10, what=".ftx removed once empty")
    finally:
        r.stop()
    for p, content in users.items():
        assert p.read_bytes() == content
    assert _temporaries(dst) == sorted(str(p.relative_to(dst)) for p in users)
    assert sorted(os.listdir(dst / "sub")) == sorted(set(before) - {os.path.basename(left[0])})

    r = Receiver(dst, "--min-free", "0", *(["--overwrite"] if "overwrite" in case else []))
    try:  # and the same send now lands, leaving nothing of ftx's
        rc, _report, err = run_send(str(src), r.dest, *(["--links"] if case == "symlink" else []), timeout=30)
    finally:
        r.stop()
    assert rc == 0, err
    assert _temporaries(dst) == sorted(str(p.relative_to(dst)) for p in users)
    assert not (dst / ".ftx").exists()
