"""``record``: what the events and messages kept from ``dataclass(frozen=True)``."""

from __future__ import annotations

import copy
import pickle

import pytest

from ftx.core import events as ev
from ftx.core import messages as m
from ftx.core.manifest import FileEntry, Kind, built
from ftx.core.ranges import RangeSet
from ftx.core.record import FrozenInstanceError, field, fields, record, replace


@record
class Point:
    x: int
    y: int = 2
    tags: list = field(default_factory=list)


def test_construction_by_position_keyword_and_defaults():
    assert Point(1).__dict__ == {"x": 1, "y": 2, "tags": []}
    assert Point(1, 3) == Point(x=1, y=3) == Point(1, y=3) == Point(y=3, x=1, tags=[])
    assert Point(1, 3, [4]).tags == [4]
    assert Point(1).tags is not Point(1).tags  # a fresh default per instance


@pytest.mark.parametrize("args, kwargs, words", [
    ((), {}, "missing 1 required argument(s): 'x'"),
    ((1, 2, [], 4), {}, "takes 4 positional arguments but 5 were given"),
    ((1,), {"z": 1}, "unexpected keyword argument 'z'"),
    ((1,), {"x": 1}, "multiple values for argument 'x'"),
])
def test_bad_arguments_raise_type_error(args, kwargs, words):
    with pytest.raises(TypeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Point(*args, **kwargs)


def test_non_default_after_default_is_refused():
    with pytest.raises(TypeError, match="non-default argument 'b'"):
        @record
        class Bad:
            a: int = 1
            b: int


def test_equality_hash_repr():
    assert Point(1) != Point(2)
    assert Point(1) != (1, 2, [])  # another type: not equal
    assert ev.FileRestarted(1) != ev.FileWithdrawn(1, 0, "")
    assert ev.SessionComplete() == ev.SessionComplete()
    assert hash(m.FileEnd(1, b"d")) == hash(m.FileEnd(file_id=1, digest=b"d"))
    assert {m.Result(1, 0): 1}[m.Result(file_id=1, code=0)] == 1
    assert repr(Point(1)) == "Point(x=1, y=2, tags=[])"
    assert repr(ev.FileRestarted(7)) == "FileRestarted(file_id=7)"
    assert repr(ev.ReceiptDue()) == "ReceiptDue()"


def test_frozen():
    e = FileEntry(b"a")
    with pytest.raises(FrozenInstanceError):
        e.size = 3
    with pytest.raises(AttributeError):  # FrozenInstanceError is an AttributeError, as dataclasses'
        del e.path
    with pytest.raises(FrozenInstanceError):
        ev.ChunkReceived(1, 0, 0, 0, b"x").data = b"y"
    assert e.size == 0


def test_fields_replace_match_args():
    assert fields(FileEntry) == ("path", "kind", "size", "mode", "mtime_ns", "chunk_size", "target")
    assert fields(ev.ChunkReceived(1, 0, 0, 0, b"")) == ev.ChunkReceived.__match_args__
    c = ev.ChunkReceived(1, 2, 3, 4, memoryview(b"ab"))
    owned = replace(c, data=bytes(c.data))
    assert owned == ev.ChunkReceived(1, 2, 3, 4, b"ab") and type(owned.data) is bytes
    match m.Decision(5):
        case m.Decision(file_id, flags):
            assert (file_id, flags) == (5, 0)


def test_hand_written_inits_match_the_fields():
    # the per-file classes write their own __init__: it must store every field, in order
    cases = [
        FileEntry(b"p", Kind.DIR, 0, 0o755, 9, 4096, b""),
        ev.FileOffered(1, FileEntry(b"p")),
        ev.SmallFileReceived(1, FileEntry(b"p"), b"d", b"x"),
        ev.ChunkReceived(1, 2, 3, 4, b"x"),
        ev.FileDataComplete(1, b"d"),
        ev.DecisionReceived(m.Decision(1)),
        ev.FileResolved(m.Result(1, 0)),
    ]
    for obj in cases:
        assert list(obj.__dict__) == list(fields(obj))
        assert replace(obj) == obj
        assert built(type(obj), **obj.__dict__) == obj


def test_built_and_pickle_and_copy():
    e = built(FileEntry, path=b"a", kind=Kind.FILE, size=1, mode=0o600, mtime_ns=2, chunk_size=4096, target=b"")
    assert e == FileEntry(b"a", Kind.FILE, 1, 0o600, 2, 4096)
    d = m.Decision(3, held=RangeSet())
    for obj in (e, d, ev.PeerFailed(1, "x"), Point(1)):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj


def test_no_dataclass_exec_at_import():
    # the point of record: ftx.core's events and messages define no dataclass
    import dataclasses

    for mod in (ev, m):
        for obj in vars(mod).values():
            if isinstance(obj, type) and obj.__module__ == mod.__name__:
                assert not dataclasses.is_dataclass(obj), obj


@record(frozen=False)
class Knobs:
    path: str
    hidden: list | None = field(default_factory=list, repr=False)
    level: int = field(default=3)


def test_mutable_record():
    k = Knobs("p")
    assert k.hidden == [] and k.level == 3 and Knobs.level == 3
    k.level = 4
    k.extra = "not a field"  # assignable, and left out of == (as a dataclass's)
    assert k == Knobs("p", [], 4) and k != Knobs("p", [], 5)
    assert repr(k) == "Knobs(path='p', level=4)"
    with pytest.raises(TypeError):
        hash(k)
    assert pickle.loads(pickle.dumps(k)).extra == "not a field"
