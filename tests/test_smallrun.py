"""A run of small files read and framed in one call (ftx.smallrun): the C helper and the Python
reference give the same frames and stop at the same item, and a stopped item is one the
per-file path must look at (a symlink, a FIFO, a file changed since the listing, ...).
Real files; the frames decoded by the receiver's own decoder."""

from __future__ import annotations

import os

import pytest

from ftx import smallrun
from ftx.core.checksum import file_digest
from ftx.core.frames import FrameDecoder, FrameType
from ftx.core.messages import SmallFile
from ftx.source import SmallReader, walk_groups

pytestmark = pytest.mark.timeout(30)

IMPLS = ["python"] + (["c"] if smallrun._c_frames is not None else [])


def run(impl: str, group, start=0, stop=None, limit=1 << 20, max_out=1 << 30, fid=7, chunk_size=65536):
    reader = SmallReader(group.dir, follow=True, ident=group.ident)
    out = bytearray()
    skip = len(group.dir.wire) + 1
    stop = len(group.items) if stop is None else stop
    try:
        fn = smallrun.py_frames if impl == "python" else smallrun.frames
        r = fn(reader, group.items, start, stop, skip, limit, fid, chunk_size, out, max_out)
    finally:
        reader.close()
    return r, bytes(out)


def frames_of(data: bytes) -> list:
    dec = FrameDecoder()
    dec.set_max_payload(1 << 24)
    dec.copy_payloads = True
    buf = dec.get_buffer()
    got = []
    view = memoryview(data)
    while view:
        buf = dec.get_buffer()
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        dec.buffer_updated(n)
        view = view[n:]
        while (f := dec.next_frame()) is not None:
            got.append(f)
    return got


def group_of(tmp_path, files: dict) -> "object":
    d = tmp_path / "t"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    groups = list(walk_groups([d]))
    return groups[1]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_is_the_frames_send_small_would_make(tmp_path, impl):
    files = {f"f{i:03}": os.urandom(i * 37 % 3000) for i in range(50)}
    group = group_of(tmp_path, files)
    r, out = run(impl, group)
    assert (r.next, r.count, r.total) == (50, 50, sum(map(len, files.values())))
    frames = frames_of(out)
    assert [f.type for f in frames] == [FrameType.SMALL_FILE] * 50
    for i, (f, item) in enumerate(zip(frames, group.items)):
        sf = SmallFile.decode(f.payload)
        assert sf.file_id == 7 + i and sf.entry.path == item.wire and sf.data == files[item.wire[2:].decode()]
        assert sf.entry.mode == item.mode & 0o7777 and sf.entry.mtime_ns == item.mtime_ns
        assert sf.digest == file_digest(sf.data) == r.digests[i]


@pytest.mark.skipif("c" not in IMPLS, reason="the C helper is not built")
def test_c_and_python_agree_byte_for_byte(tmp_path):
    files = {f"n{i}": os.urandom(i * 101 % 5000) for i in range(40)}
    group = group_of(tmp_path, files)
    for start, stop, max_out in ((0, 40, 1 << 30), (3, 17, 1 << 30), (0, 40, 20_000), (39, 40, 1)):
        assert run("c", group, start, stop, max_out=max_out) == run("python", group, start, stop, max_out=max_out)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_stops_at_what_the_per_file_path_must_see(tmp_path, impl):
    """Each of these is the first item not framed; the items before it are."""
    group = group_of(tmp_path, {"a": b"1" * 10, "b": b"2" * 20, "c": b"3" * 30, "d": b"4" * 40})
    d = tmp_path / "t"
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * 20)

    def swapped_symlink():
        os.unlink(d / "b")
        os.symlink(secret, d / "b")

    def fifo():
        os.unlink(d / "b")
        os.mkfifo(d / "b")

    def grew():
        (d / "b").write_bytes(b"2" * 21)

    def shrank():
        (d / "b").write_bytes(b"2" * 19)

    def vanished():
        os.unlink(d / "b")

    def directory():
        os.unlink(d / "b")
        os.mkdir(d / "b")

    for change in (swapped_symlink, fifo, grew, shrank, vanished, directory):
        change()
        r, out = run(impl, group)
        assert (r.next, r.count, r.total) == (1, 1, 10), change.__name__
        assert b"S" * 20 not in out
        assert [f.type for f in frames_of(out)] == [FrameType.SMALL_FILE]
        if os.path.isdir(d / "b") and not os.path.islink(d / "b"):
            os.rmdir(d / "b")
        elif os.path.lexists(d / "b"):
            os.unlink(d / "b")
        (d / "b").write_bytes(b"2" * 20)
    # larger than the limit; beyond the run's byte budget
    assert run(impl, group, limit=25)[0][:3] == (2, 2, 30)
    assert run(impl, group, max_out=1)[0][:3] == (1, 1, 10)
    assert run(impl, group, start=2, stop=3)[0][:3] == (3, 1, 30)
    assert run(impl, group, fid=0xFFFFFFFF)[0][:3] == (1, 1, 10)  # file ids are 32 bits: the rest is not framed


@pytest.mark.parametrize("impl", IMPLS)
def test_an_in_tree_link_and_a_directory_are_left_to_the_per_item_path(tmp_path, impl):
    d = tmp_path / "t"
    d.mkdir()
    (d / "a").write_bytes(b"x")
    (d / "b").symlink_to("a")  # sent as the file it points to, read from there: not by this run
    (d / "c").mkdir()
    (d / "d").write_bytes(b"y")
    group = list(walk_groups([d]))[1]
    assert [i.wire for i in group.items] == [b"t/a", b"t/b", b"t/c", b"t/d"]
    assert run(impl, group)[0][:3] == (1, 1, 1)
    assert run(impl, group, start=1)[0][:3] == (1, 0, 0)
    assert run(impl, group, start=2)[0][:3] == (2, 0, 0)
    assert run(impl, group, start=3)[0][:3] == (4, 1, 1)


@pytest.mark.skipif("c" not in IMPLS, reason="the C helper is not built")
def test_the_c_helper_refuses_what_would_index_outside_its_list(tmp_path):
    group = group_of(tmp_path, {"a": b"1"})
    reader = SmallReader(group.dir, follow=True, ident=group.ident)
    try:
        for start, skip, limit, max_out in ((-1, 2, 9, 9), (0, -1, 9, 9), (0, 2, -1, 9), (0, 2, 9, -1)):
            with pytest.raises(ValueError):
                smallrun._c_frames(reader.fd, reader.flags, group.items, start, 1, skip, reader.prefix,
                                   smallrun._FILE, limit, 0, 65536, bytearray(), max_out, smallrun._digest128,
                                   smallrun._hash64)
        out = bytearray(b"kept")
        with pytest.raises(TypeError):  # a failure midway leaves the buffer as it came
            smallrun._c_frames(reader.fd, reader.flags, group.items, 0, 1, 2, reader.prefix, smallrun._FILE, 9, 0,
                               65536, out, 1 << 20, lambda v: b"short", smallrun._hash64)
        assert out == b"kept"
    finally:
        reader.close()


def test_an_unopenable_directory_frames_nothing(tmp_path):
    group = group_of(tmp_path, {"a": b"1"})
    reader = SmallReader(group.dir, follow=True, ident=(0, 0))  # another directory than listed
    assert reader.fd < 0
    assert smallrun.frames(reader, group.items, 0, 1, 2, 100, 0, 65536, bytearray(), 1 << 20)[:3] == (0, 0, 0)


# -- the listing (source._listed): the C helper gives what py_listed gives, or leaves it to it --------
def listed_both(path) -> tuple:
    import ftx.source as source

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        wire = os.path.basename(os.fsencode(path))
        py = source.py_listed(fd, os.fsencode(path), wire, os.fsencode(path), False)
        c = source._listed(fd, os.fsencode(path), wire, os.fsencode(path), False)
        again = source.py_listed(fd, os.fsencode(path), wire, os.fsencode(path), False)  # offset left as found
    finally:
        os.close(fd)
    assert c == py == again
    if source._c_listing is not None:  # whether the C helper listed it (None: it left it to Python)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            handled = source._c_listing(fd, os.fsencode(path) + b"/", wire + b"/", source.MAX_PATH,
                                        source.MAX_COMPONENT, source.SourceItem, source.Kind.FILE,
                                        source.Kind.DIR, source.ListingHasher().update) is not None
        finally:
            os.close(fd)
        return c, handled
    return c, None


def test_the_c_listing_agrees_with_python_on_files_and_directories(tmp_path):
    import ftx.source as source

    d = tmp_path / "t"
    d.mkdir()
    for i in range(300):
        (d / f"f{i:04}\xe9".encode().decode("utf-8", "surrogateescape")).write_bytes(b"x" * (i % 17))
    (d / "sub").mkdir(mode=0o750)
    (d / "a b").write_bytes(b"")
    os.chmod(d / "f0001\xe9", 0o604)
    os.utime(d / "f0002\xe9", ns=(5, -1_500_000_000))
    os.mkdir(d / os.fsdecode(b"z\xff"))  # not UTF-8: bytes as listed
    (items, digest), handled = listed_both(d)
    assert handled is not False
    assert len(items) == 303 and [i.wire for i in items] == sorted(i.wire for i in items)
    assert all(type(i) is source.SourceItem for i in items)
    # empty; and each thing the Python path must judge: the same answer (C leaves it to Python)
    e = tmp_path / "e"
    e.mkdir()
    assert listed_both(e)[0] == ([], source.ListingHasher().digest())
    for odd in ("link", "fifo", "dot", "own", "own2", "long"):
        d2 = tmp_path / odd
        d2.mkdir()
        (d2 / "plain").write_bytes(b"p")
        if odd == "link":
            os.symlink("plain", d2 / "l")
        elif odd == "fifo":
            os.mkfifo(d2 / "p")
        elif odd == "dot":
            (d2 / ".hidden").write_bytes(b"h")
        elif odd == "own":
            (d2 / ".ftx-abc.tmp").write_bytes(b"h")
        elif odd == "own2":
            (d2 / ".ftx").mkdir()
        else:
            (d2 / ("n" * 255)).write_bytes(b"h")
        _, handled = listed_both(d2)
        # (a dot name and a 255-byte name are plain: MAX_COMPONENT is 255)
        assert handled is not (odd not in ("dot", "long")), odd


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_is_byte_for_byte_what_send_small_queues(tmp_path, impl):
    """No wire change: the frames of a run are the bytes SenderConnection.send_small makes for
    the same files, ids and chunk size."""
    from ftx.core.checksum import file_digest
    from ftx.core.config import Config
    from ftx.core.frames import encode_frame
    from ftx.core.messages import ROLE_RECEIVER, Hello
    from ftx.core.sender import SenderConnection

    files = {f"g{i:02}": os.urandom(i * 211 % 4000) for i in range(30)}
    group = group_of(tmp_path, files)
    conn = SenderConnection(Config())
    conn.receive_data(encode_frame(FrameType.HELLO, Hello(ROLE_RECEIVER, 1 << 22).encode()))
    conn.data_to_send()
    first = conn.next_file_id
    for item in group.items:
        data = (tmp_path / os.fsdecode(item.wire)).read_bytes()
        conn.send_small(item.wire, item.mode, item.mtime_ns, data, file_digest(data))
    expected = b"".join(bytes(b) for b in conn.data_to_send())
    r, out = run(impl, group, fid=first, chunk_size=conn.config.chunk_size)
    assert r.count == 30 and out == expected
