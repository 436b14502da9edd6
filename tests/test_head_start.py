"""A send's head start (ftx/head_start.py): connected, authenticated, HELLOs exchanged and the first
directory checks sent before asyncio and the session load; the session takes over from there.

Real ``ftx`` subprocesses and sockets.  ``--checksum`` sends (no directory checks) have no head
start: they are what a send without one does, to compare with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from ftx.source import CHECKS_AHEAD

from .helpers import FTX, Receiver, run_send, start_send, wait_for

pytestmark = pytest.mark.timeout(90)


def _tree(root, dirs: int, files: int = 2):
    for d in range(dirs):
        (root / f"d{d:04d}").mkdir(parents=True)
        for f in range(files):
            (root / f"d{d:04d}" / f"f{f}").write_bytes(b"x" * (d + f))
    return root


def test_a_resend_of_more_directories_than_the_head_start_checks_goes_on_in_the_session(tmp_path):
    src = _tree(tmp_path / "tree", CHECKS_AHEAD + 60)
    r = Receiver(tmp_path / "in", "--overwrite")
    try:
        rc, first, err = run_send(str(src), r.dest)
        assert rc == 0, err
        rc, again, err = run_send(str(src), r.dest)
        assert rc == 0, err
        assert again["file_count"] == first["file_count"] == 1 + (CHECKS_AHEAD + 60) * 3
        assert again["identical"] == again["file_count"] - 1  # (the named directory: its mode and mtime set again)
        assert again["bytes_sent"] == 0
        (src / "d0300" / "f1").write_bytes(b"changed")  # in a directory past the head start's checks
        (src / "d0000" / "f0").write_bytes(b"changed too")  # and in one it checked
        rc, third, err = run_send(str(src), r.dest)
        assert rc == 0, err
        assert (r.dir / "tree" / "d0300" / "f1").read_bytes() == b"changed"
        assert (r.dir / "tree" / "d0000" / "f0").read_bytes() == b"changed too"
        assert third["bytes_sent"] == len(b"changed") + len(b"changed too")
    finally:
        r.stop()


HEAD_PROBE = """
import sys
import ftx.head_start as head_start
begin = head_start.begin
def _begin(plan, *rest):
    state = begin(plan, *rest)
    sys.stderr.write(f"probe head={state is not None} asyncio={'asyncio' in sys.modules} "
                     f"checks={sum(did is not None for _, did in state.ahead) if state else 0}\\n")
    return state
head_start.begin = _begin
from ftx.cli import main
main(sys.argv[1:], prog_name="ftx")
"""


def test_the_head_start_checks_the_tree_before_asyncio_is_loaded(tmp_path):
    src = _tree(tmp_path / "tree", 5)
    r = Receiver(tmp_path / "in")
    try:
        assert run_send(str(src), r.dest)[0] == 0
        proc = subprocess.run([sys.executable, "-c", HEAD_PROBE, "send", str(src), r.dest, "--no-progress", "--json"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["identical"] == 15  # (all but the named directory)
    finally:
        r.stop()
    assert "probe head=True asyncio=False checks=6" in proc.stderr, proc.stderr


class SilentServer:
    """Accepts TCP connections and never says a word (holds them until stopped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for s in self.accepted:
            s.close()


@pytest.mark.parametrize("mode", [["--insecure"], []], ids=["insecure", "keys"])
def test_a_silent_receiver_fails_a_send_as_without_a_head_start(tmp_path, mode):
    """keys: the handshake never ends; --insecure: our HELLO is never answered (the head start
    waits HELLO_WAIT, then the session's watchdog gives up as it always did)."""
    (tmp_path / "f").write_bytes(b"x")
    server = SilentServer()
    try:
        outcomes = []
        for extra in ([], ["--checksum"]):  # with a head start, and without
            rc, report, err = run_send(str(tmp_path / "f"), f"127.0.0.1:{server.port}", *mode, "--idle-timeout", "2",
                                       *extra)
            lines = [line for line in err.splitlines() if line.startswith("ftx: ") and "first contact" not in line]
            outcomes.append((rc, report["error"], lines[-1]))
        assert outcomes[0] == outcomes[1], outcomes
        assert outcomes[0][0] == 3, outcomes  # the connection failed (lost / timed out)
    finally:
        server.close()


def test_sigterm_during_the_head_start_ends_the_send_as_terminated(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    server = SilentServer()
    try:
        proc = start_send(str(tmp_path / "f"), f"127.0.0.1:{server.port}", "--idle-timeout", "30")
        wait_for(lambda: server.accepted, what="the sender to connect")  # its handshake now waits
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        server.close()
    assert proc.returncode == 143, err
    report = json.loads(out)
    assert report["exit"] == 143 and report["error"] == "terminated" and not report["ok"]


def test_the_head_start_keeps_no_descriptor_of_a_failed_connect(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    code = ("import os, sys\n"
            "import ftx.head_start as hs\n"
            "from ftx.send_args import plan_send\n"
            "from ftx.errors import FtxError\n"
            "before = len(os.listdir('/proc/self/fd'))\n"
            "for port in (9, 9):\n"
            "    try:\n"
            "        hs.begin(plan_send([sys.argv[1]], f'127.0.0.1:{port}', insecure=True, idle_timeout=2))\n"
            "    except FtxError as exc:\n"
            "        print(type(exc).__name__, exc)\n"
            "print(len(os.listdir('/proc/self/fd')) - before)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True,
                          timeout=30, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("TransportError cannot connect to 127.0.0.1 port 9") and lines[-1] == "0", lines


def test_ftx_command_line_runs_through_the_entry(tmp_path):
    """(python -m ftx and the console script run ftx.entry:main, which loads ftx.cli after it.)"""
    proc = subprocess.run(FTX + ["--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr


# -- an unchanged tree: the whole send is the head start's ---------------------------------------

def _compared(report: dict) -> dict:
    """What a send's report says of its items (not its timing or its bytes on the wire).  Its
    first 1 000 items listed are those of the tree's directories, in order, and the named
    directory where its result arrived before the list was full (a matter of timing): not that one."""
    said = {k: v for k, v in report.items() if k not in ("seconds", "transport_stats", "transfer_id", "auth",
                                                         "fingerprint", "exit")}
    said["files"] = [f for f in said["files"] if f["path"] != "tree"][:999]
    return said


def test_an_unchanged_tree_is_reported_by_the_head_start_as_by_the_session(tmp_path):
    """12 directories of 100 files: more than the 1 000 a report lists (the rest only counted)."""
    import ftx

    src = _tree(tmp_path / "tree", 12, 100)
    r = Receiver(tmp_path / "in", "--overwrite")
    try:
        assert run_send(str(src), r.dest)[0] == 0
        rc, head, err = run_send(str(src), r.dest)  # (without asyncio: test_startup)
        assert rc == 0, err
        session = ftx.send([str(src)], r.dest).as_json()  # the library: a session, no head start
        assert head["file_count"] == 1 + 12 * 101 and head["identical"] == 12 * 101 and head["bytes_sent"] == 0
        assert _compared(head) == _compared(json.loads(json.dumps(session))), (head, session)
        # one file changed: the session takes over and sends it
        (src / "d0007" / "f3").write_bytes(b"changed")
        rc, third, err = run_send(str(src), r.dest)
        assert rc == 0, err
        assert (r.dir / "tree" / "d0007" / "f3").read_bytes() == b"changed"
        assert third["bytes_sent"] == len(b"changed") and third["identical"] == head["identical"] - 2  # (f3, d0007)
    finally:
        r.stop()


def test_a_directory_changed_since_its_check_is_sent_by_the_session(tmp_path):
    """The receiver says a directory is unchanged, but the listing for the report differs from the
    one its check was made of (it changed in between): the head start leaves the send to the
    session, which sends it as it is now (as tests/test_prewalk.py, with the head start)."""
    import asyncio

    from ftx import head_start, prewalk
    from ftx.client import send_over_network
    from ftx.send_args import plan_send

    src = _tree(tmp_path / "tree", 3, 2)
    r = Receiver(tmp_path / "in", "--overwrite")
    try:
        assert run_send(str(src), r.dest)[0] == 0
        prewalk.start_prewalk([str(src)])
        prewalk._started.wait()  # listed ahead (what the checks are made of) ...
        (src / "d0001" / "f1").write_bytes(b"changed after the listing")  # ... then changed
        plan = plan_send([str(src)], r.dest)
        state = head_start.begin(plan)
        head_start.conclude(plan, state)
        assert state is not None and state.report is None  # left to the session
        assert state.events  # the answers it read: the session handles them first
        report = asyncio.run(send_over_network(plan, None, state))
    finally:
        r.stop()
    assert report.ok, report.error
    assert (r.dir / "tree" / "d0001" / "f1").read_bytes() == b"changed after the listing"
    assert report.bytes_sent == len(b"changed after the listing")


class CoreReceiver:
    """A receiver made of the core's state machine (core/receiver.py) on a real socket, plain
    frames (the sender runs with --insecure): it answers every directory check DIR_SAME, then
    answers the OFFER of the named directory as ``then`` says: "silent" (never), "error" (an
    ERROR frame), "fail" (a failed RESULT)."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.checks = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from ftx.core.config import Config
        from ftx.core.events import DirCheckRequested, FileOffered
        from ftx.core.messages import DIR_SAME
        from ftx.core.receiver import ReceiverConnection
        from ftx.errors import ErrorCode

        try:
            sock = self.sock.accept()[0]
        except OSError:
            return
        self.conns.append(sock)
        conn = ReceiverConnection(Config())
        while (data := sock.recv(65536)):
            conn.receive_data(data)
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, DirCheckRequested):
                    conn.dir_state(ev.dir_id, DIR_SAME)
                    self.checks += 1
                elif isinstance(ev, FileOffered) and self.then == "error":
                    conn.send_error(ErrorCode.STORAGE, "disk on fire")
                elif isinstance(ev, FileOffered) and self.then == "fail":
                    conn.file_result(ev.file_id, ErrorCode.STORAGE, message="cannot set its mode")
            out = conn.data_to_send()
            if out:
                sock.sendall(b"".join(out))

    def close(self) -> None:
        self.sock.close()
        for s in self.conns:
            s.close()


@pytest.mark.parametrize("then", ["silent", "error", "fail"])
def test_a_receiver_that_fails_the_end_of_an_unchanged_send(tmp_path, then):
    """After every answer said unchanged, the head start offers the named directory and ends the
    session itself: a receiver that then goes silent, sends an ERROR or fails the directory
    ends the send as it would end the session's (exit code, error, the directory's report)."""
    src = _tree(tmp_path / "tree", 3)
    receiver = CoreReceiver(then)
    try:
        rc, report, err = run_send(str(src), f"127.0.0.1:{receiver.port}", "--insecure", "--idle-timeout", "2",
                                   timeout=30)
    finally:
        receiver.close()
    assert receiver.checks == 4  # (the named directory and its three)
    named = [f for f in report["files"] if f["path"] == "tree"]
    assert report["file_count"] == 1 + 3 * 3 and report["identical"] == 3 * 3, report
    if then == "silent":
        assert (rc, report["error"]) == (3, "peer silent for 2 s: connection lost"), err
        assert named[0]["status"] == "aborted"
    elif then == "error":
        assert (rc, report["error"]) == (3, "receiver error: disk on fire"), err
        assert named[0]["status"] == "aborted"
    else:
        assert (rc, report["error"], report["failed"]) == (1, "", 1), err
        assert named[0]["status"] == "storage" and named[0]["message"] == "cannot set its mode"
        assert "tree: cannot set its mode" in err


def test_answers_that_arrive_slowly_are_left_to_the_session_half_read(tmp_path):
    """A slow link: the record of the receiver's answers is half way across when the head start's
    ANSWER_WAIT runs out.  The session takes over with the record half read (the opener's state
    goes with the link: TcpLink.taking_over) and the answers read so far, and ends the send."""
    import time

    from ftx import head_start

    from .test_tree_check import CountingProxy

    class SplittingProxy(CountingProxy):
        """Sends each large piece the receiver writes (its answers) in two, the second after a pause."""

        def _carry(self, data: bytes, b, up: bool) -> None:
            if not up and len(data) >= 2000:
                b.sendall(data[:100])
                time.sleep(head_start.ANSWER_WAIT + 0.5)
                data = data[100:]
            b.sendall(data)

    src = _tree(tmp_path / "tree", 200, 1)  # 201 answers: one piece of some 5 KB
    r = Receiver(tmp_path / "in")
    try:
        assert run_send(str(src), r.dest)[0] == 0
        proxy = SplittingProxy(r.port)
        try:
            started = time.monotonic()
            rc, again, err = run_send(str(src), f"127.0.0.1:{proxy.port}", "--idle-timeout", "5", timeout=60)
            took = time.monotonic() - started
        finally:
            proxy.sock.close()
    finally:
        r.stop()
    assert rc == 0, err
    assert again["identical"] == 200 * 2 and again["bytes_sent"] == 0
    assert took > head_start.ANSWER_WAIT, took  # (the pause happened)


# -- where the session loads: a receiver on this machine, or elsewhere ----------------------------

CONCLUDE_PROBE = """
import sys
import ftx.head_start as head_start
begin, conclude = head_start.begin, head_start.conclude
def _begin(plan, *rest):
    state = begin(plan, *rest)
    sys.stderr.write(f"probe local={state.local}\\n")
    return state
def _conclude(plan, state, *rest):
    conclude(plan, state, *rest)
    sys.stderr.write(f"probe concluded done={state.report is not None} asyncio={'asyncio' in sys.modules}\\n")
head_start.begin, head_start.conclude = _begin, _conclude
from ftx.cli import main
main(sys.argv[1:], prog_name="ftx")
"""


@pytest.fixture
def other_namespace():
    """A network namespace joined to ours by a veth pair, as another machine is by a link:
    (its name, its address).  (The tests run as root here.)"""
    tag = os.getpid() % 250
    name, ours, theirs = f"ftx-hs-{os.getpid()}", f"fhs{os.getpid()}a"[-15:], f"fhs{os.getpid()}b"[-15:]
    addr, peer = f"10.213.{tag}.1", f"10.213.{tag}.2"
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", ours, "type", "veth", "peer", "name", theirs],
             ["ip", "link", "set", theirs, "netns", name],
             ["ip", "addr", "add", f"{addr}/30", "dev", ours], ["ip", "link", "set", ours, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"{peer}/30", "dev", theirs],
             ["ip", "netns", "exec", name, "ip", "link", "set", theirs, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield name, peer
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", ours], capture_output=True, timeout=10)


def test_a_receiver_on_this_machine_shares_its_cores_and_the_session_is_not_loaded(tmp_path):
    src = _tree(tmp_path / "tree", 5)
    r = Receiver(tmp_path / "in", "--insecure")
    try:
        assert run_send(str(src), r.dest, "--insecure")[0] == 0
        proc = subprocess.run([sys.executable, "-c", CONCLUDE_PROBE, "send", str(src), r.dest, "--insecure",
                               "--no-progress", "--json"], capture_output=True, text=True, timeout=60)
    finally:
        r.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "probe local=True" in proc.stderr and "probe concluded done=True asyncio=False" in proc.stderr, proc.stderr


def test_a_receiver_elsewhere_lists_while_the_session_loads(tmp_path, other_namespace):
    """Its cores are not ours: the session loads while it answers and handles the answers as
    they come (no conclude: measured faster there)."""
    from .helpers import LineReader

    name, peer = other_namespace
    src = _tree(tmp_path / "tree", 5)
    (tmp_path / "in").mkdir()
    receiver = subprocess.Popen(["ip", "netns", "exec", name, *FTX, "receive", "--insecure", "--listen", peer, "--port",
                                 "0", "--dir", str(tmp_path / "in"), "--json", "--no-udp"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = LineReader(receiver.stdout).next_json()["port"]
        rc, first, err = run_send(str(src), f"{peer}:{port}", "--insecure")
        assert rc == 0, err
        proc = subprocess.run([sys.executable, "-c", CONCLUDE_PROBE, "send", str(src), f"{peer}:{port}", "--insecure",
                               "--no-progress", "--json"], capture_output=True, text=True, timeout=60)
    finally:
        receiver.terminate()
        receiver.communicate(timeout=20)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "probe local=False" in proc.stderr and "probe concluded" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["identical"] == 15
