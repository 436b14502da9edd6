"""Paths in ``--json`` and ``--log-format json`` output are valid UTF-8, with the exact bytes beside
them when they are not (issue #11): a name like b"caf\\xe9.txt" must not come out as "\\udce9".

Real ``ftx send`` and ``ftx receive`` subprocesses; every line either side prints is parsed.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from .helpers import Receiver, run_send

pytestmark = pytest.mark.timeout(60)

ODD = b"caf\xe9.txt"  # Latin-1, not UTF-8
ODD_BIG = b"gro\xdf.bin"  # not UTF-8, sent in chunks
ODD_EXISTS = b"d\xfcp.bin"  # not UTF-8, refused: the receiver holds another file of that name
NAMES = [ODD, ODD_BIG, ODD_EXISTS, "naïve.txt".encode(), b"plain.txt"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _paths(value, key="path"):
    """Every dict in ``value`` that has ``key``."""
    if isinstance(value, dict):
        if key in value:
            yield value
        for v in value.values():
            yield from _paths(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _paths(v, key)


def _check(obj, expected: set[bytes], key: str = "path") -> list[bytes]:
    """Assert every string of ``obj`` is valid UTF-8 and each path is right; return the names seen."""
    for s in _strings(obj):
        s.encode("utf-8")  # strict: no lone surrogate anywhere
    seen = []
    for d in _paths(obj, key):
        if f"{key}_b64" in d:
            raw = base64.b64decode(d[f"{key}_b64"], validate=True)
            assert raw.decode("utf-8", "replace") == d[key]
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
        else:
            raw = d[key].encode("utf-8")
        assert raw in expected, (raw, d)
        seen.append(raw)
    return seen


def test_non_utf8_names_in_json_output_of_both_sides(tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    for name in NAMES:
        with open(os.path.join(src, name), "wb") as f:
            f.write(os.urandom(3 << 20) if name == ODD_BIG else b"x" * 100)
    dst = tmp_path / "dst"
    os.makedirs(os.path.join(os.fsencode(dst), b"src"))
    with open(os.path.join(os.fsencode(dst), b"src", ODD_EXISTS), "wb") as f:
        f.write(b"the receiver's own, different file")
    wire = {b"src/" + n for n in NAMES} | {b"src"}

    r = Receiver(dst, "-v", "--log-format", "json")
    rc, report, err = run_send(os.fsdecode(src), r.dest, "-v", "--log-format", "json")
    assert rc == 1, err  # ODD_EXISTS was refused, the others arrived
    files = [r.next_event() for _ in range(len(NAMES) + 1)]  # the items, and the session line
    r.stop()

    assert _check(report, wire | {os.fsencode(tmp_path / "src")})
    by_path = {base64.b64decode(f["path_b64"]) if "path_b64" in f else f["path"].encode(): f for f in report["files"]}
    assert by_path[b"src/" + ODD]["path"] == "src/caf\ufffd.txt"
    assert by_path[b"src/" + ODD_EXISTS]["status"] == "exists"
    assert "path_b64" not in by_path["src/naïve.txt".encode()] and "path_b64" not in by_path[b"src/plain.txt"]

    seen = []
    for ev in files:
        seen += _check(ev, wire)
    assert sorted(seen) == sorted(wire), seen
    for ev in files:
        if ev.get("path") == "src/plain.txt" or ev.get("path") == "src/naïve.txt":
            assert "path_b64" not in ev
    for side, text in (("receiver", r.stderr), ("sender", err)):
        for line in text.splitlines():
            obj = json.loads(line)  # --log-format json: every line one object
            _check(obj, wire | {os.fsencode(dst)}, "path")
    listening = r.listening
    assert listening["dir"] == str(dst) and "dir_b64" not in listening


def test_a_receive_dir_that_is_not_utf8_is_given_exactly(tmp_path):
    dst = os.path.join(os.fsencode(tmp_path), b"d\xe9st")
    os.mkdir(dst)
    r = Receiver(os.fsdecode(dst))
    try:
        ev = r.listening
        assert ev["dir"].encode("utf-8") and base64.b64decode(ev["dir_b64"]) == dst
        assert ev["dir"] == dst.decode("utf-8", "replace")
    finally:
        r.stop()


def test_clean_keeps_order_and_objects_that_need_nothing():
    from ftx.jsontext import clean

    ok = {"event": "file", "path": "naïve", "files": [{"path": "a"}], "n": 1}
    assert clean(ok) is ok
    odd = {"ok": True, "path": "caf\udce9", "error": "caf\udce9: gone", "receipt": {"path": "r\udcff"},
           "files": [{"path": "a"}, {"path": "b\udce9", "kind": "file"}]}
    assert clean(odd) == {"ok": True, "path": "caf\ufffd", "path_b64": base64.b64encode(b"caf\xe9").decode(),
                          "error": "caf\ufffd: gone", "receipt": {"path": "r\ufffd", "path_b64": "cv8="},
                          "files": [{"path": "a"}, {"path": "b\ufffd", "path_b64": "Yuk=", "kind": "file"}]}
    assert list(clean(odd)) == ["ok", "path", "path_b64", "error", "receipt", "files"]
