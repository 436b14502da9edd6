"""The receiver's limits table: parsing, the CLI options built from it, admission counting."""

import pytest
from click.testing import CliRunner

from ftx.cli import main
from ftx.limits import Admission, Limits, parse_duration, parse_size


@pytest.mark.parametrize("text,value", [("4096", 4096), ("1K", 1024), ("256M", 256 << 20), ("256MiB", 256 << 20),
                                        ("1.5G", 3 << 29), ("2T", 2 << 40), ("20MB", 20_000_000)])  # MB: SI, as rsync (ftx/units.py)
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("12h", 43200.0), ("7d", 604800.0)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("bad", ["", "x", "-1", "1Q", "nan"])
def test_bad_values_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_limit_is_a_receive_option_with_its_default_in_help():
    out = CliRunner().invoke(main, ["receive", "--mkdir", "--help"]).output
    for name, _kind, _default, _help in Limits.options():
        assert "--" + name.replace("_", "-") in out


def test_a_bad_limit_is_a_usage_error():
    result = CliRunner().invoke(main, ["receive", "--mkdir", "--min-free", "lots"])
    assert result.exit_code == 2
    assert "--min-free" in result.output


def test_admission_counts_total_and_per_host():
    adm = Admission(Limits(max_connections=3, max_per_host=2))
    assert adm.admit("a") is None and adm.admit("a") is None
    assert "max-per-host" in adm.admit("a")
    assert adm.admit("b") is None
    assert "max-connections" in adm.admit("c")
    adm.release("a")
    assert adm.admit("c") is None
    assert adm.refused == 2
    for host in ("a", "b", "c"):
        adm.release(host)
    assert adm.total == 0 and adm.per_host == {}


def test_buffers_get_max_memory_less_the_process_share():
    assert Limits().buffer_bytes == (256 - 48) << 20
    assert Limits(max_memory=24 << 20).buffer_bytes == 12 << 20


@pytest.mark.parametrize("option", ["--handshake-timeout", "--stall-timeout", "--partial-ttl"])
def test_a_zero_time_limit_is_a_usage_error(option):
    """0 would drop every connection (or expire every partial) at once."""
    result = CliRunner().invoke(main, ["receive", "--mkdir", option, "0"])
    assert result.exit_code == 2
    assert option in result.output


def test_per_item_bookkeeping_is_charged_to_the_memory_budget():
    """256 senders x 1024 unsettled items would be ~500 MB of bookkeeping: it counts against
    --max-memory like the frame buffers, and a sender past it gets ERROR BUSY, not more memory."""
    from ftx.core.config import Config
    from ftx.core.frames import BufferBudget, BufferLimit
    from ftx.core.manifest import FileEntry
    from ftx.core.receiver import FILE_STATE_COST, ReceiverConnection
    from ftx.core.sender import SenderConnection
    from ftx.errors import ErrorCode

    budget = BufferBudget(64 * 1024 + 200 * FILE_STATE_COST)  # the frame buffer, then ~200 items
    r = ReceiverConnection(Config(), budget)
    s = SenderConnection(Config())
    r.receive_data(b"".join(bytes(b) for b in s.data_to_send()))
    s.receive_data(b"".join(bytes(b) for b in r.data_to_send()))
    for i in range(1000):
        s.offer(FileEntry(b"f%04d" % i, size=10 << 20))
    with pytest.raises(BufferLimit):
        r.receive_data(b"".join(bytes(b) for b in s.data_to_send()))
    assert budget.used <= budget.limit
    out = b"".join(bytes(b) for b in r.data_to_send())
    assert out  # an ERROR BUSY for the sender
    s.receive_data(out)
    failed = [e for e in iter(s.next_event, None) if type(e).__name__ == "PeerFailed"]
    assert failed and failed[0].code == ErrorCode.BUSY and "--max-memory" in failed[0].message
    r.release_buffers()
    assert budget.used == 0


@pytest.mark.parametrize("option,value", [("--max-memory", "16M"), ("--max-files-in-flight", "255"),
                                          ("--max-open-files", "3")])
def test_limits_below_what_a_legitimate_sender_needs_are_usage_errors(option, value):
    """--max-memory under 24M cannot hold one 4 MiB chunk over UDP (twice its quarter share)
    nor a frame over TCP: every sender would stall or be refused.  ftx senders keep 256 items
    outstanding; fewer than 4 open partials can block the event loop behind the workers."""
    result = CliRunner().invoke(main, ["receive", "--mkdir", option, value])
    assert result.exit_code == 2
    assert option in result.output


def test_sessions_that_never_finish_a_handshake_are_evicted_for_newcomers():
    """A flood of connections that answer RETRYs but never send a HELLO used to fill
    --max-connections, and every real sender got BUSY: now the oldest pending one makes room."""
    adm = Admission(Limits(max_connections=3, max_per_host=2))
    ended = []
    ev = {name: (lambda name=name: ended.append(name)) for name in "abcdef"}
    assert adm.admit("x", ev["a"]) is None and adm.admit("y", ev["b"]) is None
    adm.settled(ev["b"])  # b finished its handshake: never evicted
    assert adm.admit("z", ev["c"]) is None
    assert adm.admit("w", ev["d"]) is None and ended == ["a"]  # full: the oldest pending goes
    assert adm.admit("z", ev["e"]) is None and ended == ["a", "c"]  # full again: c is the oldest pending
    assert adm.total == 3
    adm.release("x", ev["a"])  # the evicted sessions end later: their places are already gone
    adm.release("z", ev["c"])
    assert adm.total == 3 and adm.per_host == {"y": 1, "w": 1, "z": 1}
    adm.settled(ev["d"])
    adm.settled(ev["e"])
    assert "max-connections" in adm.admit("v", ev["f"])  # every place settled: refused
    assert adm.refused == 1 and adm.evicted == 2
    for host, name in (("y", "b"), ("w", "d"), ("z", "e")):
        adm.release(host, ev[name])
    assert adm.total == 0 and adm.per_host == {}


def test_per_host_eviction_takes_a_pending_session_of_the_same_host():
    adm = Admission(Limits(max_connections=10, max_per_host=2))
    ended = []
    a, b, c, d = (lambda n=n: ended.append(n) for n in "abcd")
    assert adm.admit("other", a) is None
    assert adm.admit("h", b) is None and adm.admit("h", c) is None
    assert adm.admit("h", d) is None and ended == ["b"]  # not "a": another host's


def test_a_protected_pending_session_is_evicted_only_for_another_protected_one():
    """bench_abuse's INITIAL flood: 1 300 sessions a second from busy addresses evicted a new
    sender's pending session before its HELLO was handled.  A session admitted as protected
    (UDP: from an address that has asked little lately) makes room only for another."""
    adm = Admission(Limits(max_connections=3, max_per_host=2))
    ended = []
    ev = {name: (lambda name=name: ended.append(name)) for name in "abcdefgh"}
    assert adm.admit("new", ev["a"], protected=True) is None
    assert adm.admit("x", ev["b"]) is None and adm.admit("y", ev["c"]) is None
    assert adm.admit("z", ev["d"]) is None and ended == ["b"]  # not a, though it is older
    assert adm.admit("w", ev["e"]) is None and ended == ["b", "c"]
    adm.settled(ev["e"])
    assert adm.admit("v", ev["f"]) is None and ended == ["b", "c", "d"]
    adm.settled(ev["f"])
    assert "max-connections" in adm.admit("u", ev["g"])  # only a protected one left: refused
    assert adm.admit("t", ev["h"], protected=True) is None and ended == ["b", "c", "d", "a"]
    # per host alike: a busy newcomer of the host does not take a protected place
    adm = Admission(Limits(max_connections=10, max_per_host=1))
    assert adm.admit("h", ev["a"], protected=True) is None
    assert "max-per-host" in adm.admit("h", ev["b"])
