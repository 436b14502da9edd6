"""Shared helpers for the end-to-end tests: real `ftx` subprocesses on loopback."""

from __future__ import annotations

import json
import os
import queue
import threading
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FTX = [sys.executable, "-m", "ftx"]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.002, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class LineReader:
    """Collects a child's stdout lines on a thread, so reads can have deadlines."""

    def __init__(self, stream) -> None:
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def next_json(self, timeout: float = 20.0) -> dict:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout} s waiting for a JSON line") from None
        if line is None:
            raise AssertionError("process closed its output")
        return json.loads(line)


class Receiver:
    """``ftx receive --json`` as a subprocess on an ephemeral loopback port."""

    def __init__(self, directory: Path, *args: str, host: str = "127.0.0.1", env: dict | None = None) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(
            FTX + ["receive", "--mkdir", "--listen", host, "--port", "0", "--dir", str(directory), "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=with_env(env),
        )
        self.lines = LineReader(self.proc.stdout)
        first = self.lines.next_json()
        assert first["event"] == "listening", first
        self.listening = first
        self.port = first["port"]
        self.host = host

    @property
    def dest(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def next_event(self, timeout: float = 20.0) -> dict:
        return self.lines.next_json(timeout)

    def events_until(self, kind: str, timeout: float = 20.0) -> list[dict]:
        out = []
        while True:
            ev = self.next_event(timeout)
            out.append(ev)
            if ev["event"] == kind:
                return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()
        return self.proc.returncode


def with_env(extra: dict | None) -> dict | None:
    """The tests' environment plus ``extra`` (a value None removes the variable)."""
    if not extra:
        return None
    env = dict(os.environ)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_send(*args: str, timeout: float = 60.0, env: dict | None = None) -> tuple[int, dict | None, str]:
    """Run ``ftx send ... --json``; return (exit code, parsed JSON or None, stderr)."""
    proc = subprocess.run(FTX + ["send", *args, "--json", "--no-progress"], capture_output=True, text=True,
                          timeout=timeout, env=with_env(env))
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, report, proc.stderr


def start_send(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(FTX + ["send", *args, "--json", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=with_env(env))


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    import random

    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def journal_path(dest_dir: Path, name: str) -> Path:
    """Where the receiver keeps the journal of ``dest_dir/name`` (its state directory .ftx)."""
    from ftx.journal import journal_name

    return Path(dest_dir) / ".ftx" / os.fsdecode(journal_name(os.fsencode(name)))


def data_path(dest_dir: Path, name: str) -> Path | None:
    """The partial data file the journal of ``dest_dir/name`` names (None without a journal)."""
    from ftx.journal import IN_STATE, JournalHeader

    try:
        info = JournalHeader.parse(journal_path(dest_dir, name).read_bytes())
    except OSError:
        return None
    if info is None:
        return None
    where = Path(dest_dir) / ".ftx" if info.where == IN_STATE else (Path(dest_dir) / name).parent
    return where / os.fsdecode(info.data_name)


def journal_records(dest_dir: Path, name: str) -> int:
    """Verified-chunk records in the journal of ``dest_dir/name`` (0 if none)."""
    from ftx.journal import journal_header_size

    try:
        size = os.path.getsize(journal_path(dest_dir, name))
    except OSError:
        return 0
    return max(0, (size - journal_header_size(os.fsencode(name))) // 24)


def partials(dest_dir: Path) -> list[str]:
    """The wire paths of the partials the receiver keeps for ``dest_dir`` (from their journals)."""
    from ftx.journal import JournalHeader

    state = Path(dest_dir) / ".ftx"
    out = []
    for p in sorted(state.glob("j-*")) if state.is_dir() else []:
        info = JournalHeader.parse(p.read_bytes())
        out.append(os.fsdecode(info.path) if info is not None else p.name)
    return sorted(out)


def tree_equal(a: Path, b: Path) -> bool:
    """Same relative paths, same kinds, same bytes, same modes (files)."""
    def listing(root: Path):
        out = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o777)
        return out

    return listing(a) == listing(b)


class Relay:
    """``ftx impair --json`` as a subprocess in front of a receiver's UDP port."""

    def __init__(self, target_port: int, *args: str, host: str = "127.0.0.1") -> None:
        h = f"[{host}]" if ":" in host else host
        self.proc = subprocess.Popen(
            FTX + ["impair", "--listen", f"{h}:0", "--to", f"{h}:{target_port}", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = LineReader(self.proc.stdout)
        first = self.lines.next_json()
        assert first["event"] == "listening", first
        self.port = first["port"]
        self.dest = f"{h}:{self.port}"

    def stop(self) -> dict:
        """Stop it and return its counters."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        stats = self.lines.next_json(timeout=10)
        self.proc.wait(10)
        self.proc.stderr.close()
        return stats


def interrupt_receiver_half_way(receiver_factory, dst: Path, src: Path, chunks: int, stop, *send_args: str) -> int:
    """Start a send, ``stop(receiver)`` once half the chunks are journaled; return the sender's exit code."""
    first = receiver_factory(directory=dst)
    proc = start_send(str(src), first.dest, *send_args)
    wait_for(lambda: journal_records(dst, src.name) >= chunks // 2, what="half the chunks")
    stop(first)
    proc.communicate(timeout=30)
    return proc.returncode


def resend_to_new_receiver(receiver_factory, dst: Path, src: Path, *send_args: str) -> dict:
    """Re-run the send against a fresh receiver on ``dst``; return the report (asserts success)."""
    again = receiver_factory(directory=dst)
    rc, report, err = run_send(str(src), again.dest, *send_args)
    assert rc == 0, err
    return report


def client_handshake():
    """A keys-mode sender handshake as the tests' own identity (authorized by every default receiver),
    trusting any receiver key: for hand-driven peers that must get past authentication."""
    from ftx.core.secure.sigma import SigmaClient
    from ftx.credentials import default_identity, load_identity

    return SigmaClient(load_identity(default_identity(), create=False).key, lambda peer: None)


class SealedSocket:
    """A blocking TCP connection that authenticates (``client_handshake``) and then seals.

    ``sendall``/``recv``/``shutdown``/``close`` work on the plaintext frame stream as
    on a socket, so hostile-peer tests keep writing raw frames, now past the
    handshake as an authorized (but misbehaving) sender would.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None,
                 hs=None) -> None:
        """``source``: the local address to connect from (e.g. 127.0.0.2: another host on loopback);
        ``hs``: the client handshake to run (default: ``client_handshake()``)."""
        from ftx.core.secure.records import RecordOpener, RecordSealer

        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        hs = hs or client_handshake()
        held = b""
        while True:
            out = hs.data_to_send()
            if out:
                self.sock.sendall(out)
            if hs.done:
                break
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the receiver closed the connection during the handshake")
            held += data
            held = held[hs.receive(held, time.monotonic()):]
        self.sealer, self.opener = RecordSealer(hs.result), RecordOpener(hs.result)
        self._plain = self.opener.feed(held) if held else b""

    def sendall(self, data) -> None:
        self.sock.sendall(self.sealer.seal(data))

    def recv(self, n: int) -> bytes:
        while not self._plain:
            data = self.sock.recv(65536)
            if not data:
                return b""
            self._plain = self.opener.feed(data)
        out, self._plain = self._plain[:n], self._plain[n:]
        return out

    def settimeout(self, t) -> None:
        self.sock.settimeout(t)

    def shutdown(self, how) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def second_sender_busy(first, start_second, *needles) -> None:
    """``start_second()`` (waiting for ``first``'s transfer, then starting another ``ftx send``) is
    refused -- exit 1, every one of ``needles`` in its stderr -- and ``first`` still completes."""
    try:
        second = start_second()
        _out, err = second.communicate(timeout=30)
        assert second.returncode == 1, err
        for needle in needles:
            assert needle in err, err
        _out, first_err = first.communicate(timeout=60)
        assert first.returncode == 0, first_err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
