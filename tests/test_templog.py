"""The log of temporaries (ftx/templog.py): what a sweep removes, and everything it must leave alone.

Real directories and files; a receiver "killed" is one whose log descriptor is closed without
settling (its flock goes, as with a SIGKILL); the end-to-end kills are in test_temp_orphans.py.
"""

from __future__ import annotations

import os

import pytest

from ftx import fileops, templog
from ftx.core.checksum import file_digest
from ftx.core.manifest import FileEntry
from ftx.storage import Destination

pytestmark = pytest.mark.timeout(30)


def _logs(root) -> list[str]:
    state = root / ".ftx"
    return sorted(n for n in os.listdir(state) if n.startswith("t-")) if state.is_dir() else []


def _make_temp(dest: Destination, rel: bytes) -> bytes:
    """A named temporary in ``rel`` as ftx makes one (recorded first); its name."""
    d = dest.dirs.hold(rel, create=True)
    try:
        fd, name = fileops.create_exclusive(d.fd, b".ftx-", b".tmp", dest.temps.names(d))
        os.write(fd, b"half a file")
        os.close(fd)
        return name
    finally:
        dest.dirs.release(d)


def _killed(dest: Destination) -> None:
    """As if the receiver were SIGKILLed: its log's descriptor (and flock) goes, nothing is settled."""
    os.close(dest.temps._fd)
    dest.temps._fd = -1
    dest.temps._out.clear()


def test_a_live_receivers_temporaries_are_never_swept_and_its_log_goes_when_settled(tmp_path):
    a = Destination(tmp_path)
    b = Destination(tmp_path)  # another receiver on the same --dir
    try:
        name = _make_temp(a, b"sub")
        assert len(_logs(tmp_path)) == 1
        b.expire_partials(7 * 86400)
        a.expire_partials(7 * 86400)  # its own sweep too: the log is locked by its other descriptor
        assert (tmp_path / "sub" / os.fsdecode(name)).exists()
        os.unlink(tmp_path / "sub" / os.fsdecode(name))
        a.temps.done(name)
        a.sync()
        assert not (tmp_path / ".ftx").exists()  # nothing of ftx's stays once its temporaries are gone
    finally:
        a.close()
        b.close()


def test_a_dead_receivers_temporaries_are_removed_and_nothing_else(tmp_path):
    a = Destination(tmp_path)
    gone = [_make_temp(a, b"sub"), _make_temp(a, b""), _make_temp(a, b"sub/deep")]
    # recorded names that are not what ftx made there by now: a symlink, a directory, another user's file
    d = a.dirs.hold(b"sub")
    link, folder, foreign = (a.temps.take(d) for _ in range(3))
    a.dirs.release(d)
    outside = tmp_path / "outside"
    outside.write_text("not below --dir")
    os.symlink(outside, tmp_path / "sub" / os.fsdecode(link))
    os.mkdir(tmp_path / "sub" / os.fsdecode(folder))
    (tmp_path / "sub" / os.fsdecode(foreign)).write_text("someone else's")
    if os.geteuid() == 0:
        os.chown(tmp_path / "sub" / os.fsdecode(foreign), 12345, 12345)
    users = [tmp_path / "sub" / ".ftx-abcd.tmp", tmp_path / "sub" / (".ftx-" + "00" * 16 + ".tmp")]
    for p in users:
        p.write_text("a user's")
    _killed(a)
    a.close()

    b = Destination(tmp_path)
    try:
        b.expire_partials(7 * 86400)  # whatever the TTL: a dead receiver's temporaries are never in use
    finally:
        b.close()
    assert not any(os.path.lexists(tmp_path / rel / os.fsdecode(n)) for rel, n in zip(["sub", "", "sub/deep"], gone))
    assert os.path.islink(tmp_path / "sub" / os.fsdecode(link)) and outside.read_text() == "not below --dir"
    assert os.path.isdir(tmp_path / "sub" / os.fsdecode(folder))
    if os.geteuid() == 0:
        assert (tmp_path / "sub" / os.fsdecode(foreign)).read_text() == "someone else's"
    assert all(p.read_text() == "a user's" for p in users)
    assert not (tmp_path / ".ftx").exists()


def test_a_recorded_name_in_a_directory_that_was_replaced_is_left_alone(tmp_path):
    a = Destination(tmp_path)
    name = _make_temp(a, b"sub")
    _killed(a)
    a.close()
    os.rename(tmp_path / "sub", tmp_path / "sub-old")  # the user moved it away and made another
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / os.fsdecode(name)).write_text("the user's copy, under that very name")
    b = Destination(tmp_path)
    try:
        b.expire_partials(7 * 86400)
    finally:
        b.close()
    assert (tmp_path / "sub" / os.fsdecode(name)).read_text() == "the user's copy, under that very name"
    assert (tmp_path / "sub-old" / os.fsdecode(name)).exists()  # not reachable as recorded: not touched


def test_a_run_of_files_without_o_tmpfile_costs_one_record_per_32_names(tmp_path, monkeypatch):
    monkeypatch.setattr(fileops, "_TMPFILE", 0)
    monkeypatch.setattr(fileops, "NAMELESS", False)
    dest = Destination(tmp_path)
    try:
        entries = [FileEntry(b"d/%d" % i, size=3, mode=0o644, mtime_ns=0) for i in range(100)]
        datas = [b"abc"] * 100
        out = dest.write_small_run(entries, datas, [file_digest(x) for x in datas])
        assert all(o == 0 for o in out), out
        [log] = _logs(tmp_path)
        records = templog.parse_log((tmp_path / ".ftx" / log).read_bytes())
        assert [len(r[4]) for r in records] == [32] * 4  # 100 files: four writes, not 100
        dest.sync()
        assert sorted(os.listdir(tmp_path)) == ["d"] and len(os.listdir(tmp_path / "d")) == 100
    finally:
        dest.close()


def test_the_log_stays_bounded_while_names_are_always_out(tmp_path, monkeypatch):
    monkeypatch.setattr(templog, "LOG_LIMIT", 2048)
    dest = Destination(tmp_path)
    try:
        first = _make_temp(dest, b"a")  # out for the whole test
        for i in range(200):
            name = _make_temp(dest, b"d%d" % i)
            os.unlink(tmp_path / ("d%d" % i) / os.fsdecode(name))
            dest.temps.done(name)
        [log] = _logs(tmp_path)
        raw = (tmp_path / ".ftx" / log).read_bytes()
        assert len(raw) <= 2048 + 1024
        assert any(templog.temp_name(t) == first for r in templog.parse_log(raw) for t in r[4])
        _killed(dest)
    finally:
        dest.close()
    b = Destination(tmp_path)
    try:
        b.expire_partials(7 * 86400)
    finally:
        b.close()
    assert os.listdir(tmp_path / "a") == [] and not (tmp_path / ".ftx").exists()


def test_a_torn_or_foreign_log_is_parsed_to_its_last_good_record():
    rec = templog.pack_record(templog.FILE, b"x/y", 1, 2, [b"\x01" * 16, b"\x02" * 16])
    raw = templog.HEAD.pack(templog.MAGIC, templog.VERSION) + rec + rec[:-3]
    assert templog.parse_log(raw) == [(0, b"x/y", 1, 2, [b"\x01" * 16, b"\x02" * 16])]
    assert templog.parse_log(b"FTXJ\x00\x01" + rec) == []
    assert templog.parse_log(raw[:5]) == []


def test_every_temporary_ftx_makes_in_a_users_directory_takes_a_recorded_name():
    """Source check: a new call site of Temp / create_exclusive without ``names``, or a name of its own
    (random_name, secrets) for a ``.ftx-`` temporary, would make temporaries a kill leaves for good."""
    import ast
    from pathlib import Path

    root = Path(fileops.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            has_names = any(k.arg == "names" for k in node.keywords)
            if fn == "Temp" and not (has_names or len(node.args) >= 4):
                bad.append(f"{path.name}:{node.lineno} Temp without names")
            if fn == "create_exclusive" and path.name != "fileops.py" and not (has_names or len(node.args) >= 4):
                bad.append(f"{path.name}:{node.lineno} create_exclusive without names")
            if fn == "random_name" and path.name != "fileops.py":
                bad.append(f"{path.name}:{node.lineno} random_name: an unrecorded name")
    assert bad == []
