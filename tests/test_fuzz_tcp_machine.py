"""A sender and a receiver connection wired in memory, driven by hypothesis rules.

Rules offer files (regular, small, empty, directories, symlinks), change how the
receiver answers (accept, refuse, resume, fail early, bad digest) and how the sender
does (send all, skip existing, abort midway, restart), move any split of the pending
bytes either way (copying or zero-copy input), corrupt a pending byte, and cut the
stream.  Invariants: no exception but a typed ``FtxError`` from peer input; every file
the receiver completed is byte-identical to what was offered; when nothing was
corrupted or cut, the session always finishes with every file resolved the same way on
both sides.

Examples: ``FTX_FUZZ_EXAMPLES`` (default 100, a fixed set; set it to explore with fresh
random ones) sequences of at most ``FTX_FUZZ_STEPS`` (40) steps.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ftx.core.manifest import FileEntry, Kind
from ftx.errors import ErrorCode, FtxError, LocalProtocolError

from .fuzz import drivers as D
from .fuzz.wiring import CS, TcpPair

EXAMPLES = int(os.environ.get("FTX_FUZZ_EXAMPLES", "100"))
# the suite runs a fixed set of examples (no red by chance); FTX_FUZZ_EXAMPLES explores afresh
DERANDOMIZE = "FTX_FUZZ_EXAMPLES" not in os.environ
STEPS = int(os.environ.get("FTX_FUZZ_STEPS", "40"))

RECEIVER_POLICIES = st.sampled_from([D.ACCEPT_ALL, D.ACCEPT_ALL, D.REFUSE_EXISTS, D.RESUME_FIRST, D.FAIL_EARLY,
                                     D.BAD_DIGEST, D.RESUME_FIRST | D.FAIL_EARLY])
SENDER_POLICIES = st.sampled_from([D.SEND_ALL, D.SEND_ALL, D.SKIP_EXISTING, D.ABORT_MIDWAY, D.RESTART_HELD])
SIZES = st.one_of(st.sampled_from([0, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 7, 5 * CS - 3]), st.integers(1, 300))


def content(n: int, size: int) -> bytes:
    return bytes((n * 31 + i * 7) % 251 for i in range(size))


class TcpSession(RuleBasedStateMachine):
    @initialize(rpolicy=RECEIVER_POLICIES, spolicy=SENDER_POLICIES, hostile=st.booleans(),
                finish_after=st.integers(0, 8))
    def start(self, rpolicy, spolicy, hostile, finish_after):
        self.hostile = hostile  # whether this run may corrupt or cut the stream
        self.finish_after = finish_after  # offers before the sender may say DONE
        self.pair = TcpPair(rpolicy, spolicy, held_content={})
        self.policies = {rpolicy}  # every receiver policy used in this run
        self.s, self.r, self.sd, self.rd = self.pair.s, self.pair.r, self.pair.sd, self.pair.rd
        self.to_r = bytearray()
        self.to_s = bytearray()
        self.offered: dict[bytes, tuple[FileEntry, bytes]] = {}
        self.n = 0
        self.finished = False
        self.damaged = False  # a byte was corrupted or the stream cut: the session may fail
        self.failed: dict[str, FtxError] = {}
        self.pair.pump()  # HELLOs: the handshake itself is the fuzz targets' business
        self.rd.events.clear()
        self.sd.events.clear()

    # -- moving bytes -------------------------------------------------------------------
    def _collect(self) -> None:
        if "s" not in self.failed or self.s.pending_output:
            self.to_r += b"".join(bytes(b) for b in self.s.data_to_send())
        if "r" not in self.failed or self.r.pending_output:
            self.to_s += b"".join(bytes(b) for b in self.r.data_to_send())

    def _feed(self, side: str, conn, drv, data: bytes, zero_copy: bool) -> None:
        if side in self.failed or conn.closed:
            return  # as the real drivers: nothing is read after the DONE exchange or an ERROR
        try:
            if zero_copy:
                view = memoryview(data)
                while view:
                    buf = conn.get_buffer()
                    k = min(len(buf), len(view))
                    buf[:k] = view[:k]
                    view = view[k:]
                    conn.buffer_updated(k)
                    drv.drain()
            else:
                conn.receive_data(data)
            drv.drain()
        except LocalProtocolError:
            raise
        except FtxError as exc:
            self.failed[side] = exc
        self._collect()

    @rule(frac=st.floats(0.0, 1.0), zero_copy=st.booleans())
    def deliver_to_receiver(self, frac, zero_copy):
        self._collect()
        k = max(1, int(len(self.to_r) * frac)) if self.to_r else 0
        data, self.to_r[:k] = bytes(self.to_r[:k]), b""
        if data:
            self._feed("r", self.r, self.rd, data, zero_copy)

    @rule(frac=st.floats(0.0, 1.0), zero_copy=st.booleans())
    def deliver_to_sender(self, frac, zero_copy):
        self._collect()
        k = max(1, int(len(self.to_s) * frac)) if self.to_s else 0
        data, self.to_s[:k] = bytes(self.to_s[:k]), b""
        if data:
            self._feed("s", self.s, self.sd, data, zero_copy)

    @precondition(lambda self: self.hostile and (self.to_r or self.to_s))
    @rule(to_receiver=st.booleans(), where=st.floats(0.0, 1.0), bit=st.integers(0, 7))
    def corrupt(self, to_receiver, where, bit):
        buf = self.to_r if to_receiver and self.to_r else self.to_s if self.to_s else self.to_r
        buf[min(len(buf) - 1, int(len(buf) * where))] ^= 1 << bit
        self.damaged = True

    @precondition(lambda self: self.hostile)
    @rule(receiver=st.booleans())
    def cut(self, receiver):
        """The stream ends: EOF to one side, after what is pending."""
        side, conn, pending = ("r", self.r, self.to_r) if receiver else ("s", self.s, self.to_s)
        self.deliver_to_receiver(1.0, False) if receiver else self.deliver_to_sender(1.0, False)
        if side not in self.failed:
            try:
                conn.receive_eof()
            except FtxError as exc:
                self.failed[side] = exc
        self.damaged = True
        self._collect()

    # -- what the applications do -----------------------------------------------------------
    def _sender_open(self) -> bool:
        return self.s.peer is not None and not self.s.closed and "s" not in self.failed and not self.finished

    @precondition(lambda self: self._sender_open())
    @rule(size=SIZES, kind=st.sampled_from([Kind.FILE, Kind.FILE, Kind.FILE, Kind.DIR, Kind.SYMLINK]),
          small=st.booleans())
    def offer(self, size, kind, small):
        self.n += 1
        path = f"f{self.n}".encode()
        if kind == Kind.FILE:
            data = content(self.n, size)
            entry = FileEntry(path, size=size, chunk_size=CS)
            small = small and size <= 4096
        else:
            data, small = b"", False
            entry = FileEntry(path, kind, target=b"f1" if kind == Kind.SYMLINK else b"")
        self.offered[path] = (entry, data)
        self.sd.offer(entry, data, small)
        if kind == Kind.FILE and size and self.n % 3 == 0:
            self.rd.held_content[path] = data  # an earlier partial the receiver may resume
        self._collect()

    @precondition(lambda self: self._sender_open() and self.n >= self.finish_after)
    @rule()
    def finish(self):
        self.s.finish()
        self.finished = True
        self._collect()

    @rule(policy=RECEIVER_POLICIES)
    def receiver_policy(self, policy):
        self.rd.policy = policy
        self.policies.add(policy)

    @rule(policy=SENDER_POLICIES)
    def sender_policy(self, policy):
        self.sd.policy = policy

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def digests_match_unless_told_otherwise(self):
        """A file arrives intact whatever the network did: DIGEST_MISMATCH only from a driver
        told to report it."""
        if not hasattr(self, "pair") or any(p & D.BAD_DIGEST for p in self.policies):
            return
        bad = [path for _, code, path in self.rd.results if code == ErrorCode.DIGEST_MISMATCH]
        assert not bad, f"{len(bad)} files failed their digest: {bad[:5]}"

    @invariant()
    def completed_files_are_identical(self):
        if not hasattr(self, "pair"):
            return
        for path, data in self.rd.completed:
            entry, sent = self.offered[path]
            assert data == sent, f"{path!r}: received content differs"

    @invariant()
    def only_damage_fails_a_session(self):
        if hasattr(self, "pair") and not self.damaged:
            assert not self.failed, f"an undamaged session failed: {self.failed}"

    @invariant()
    def sender_ok_means_receiver_has_it(self):
        if not hasattr(self, "pair"):
            return
        done = {p for p, _ in self.rd.completed}
        paths = {fid: self.s_paths().get(fid) for fid in self.sd.resolved}
        for fid, code in self.sd.resolved.items():
            path = paths[fid]
            if path is not None and code == ErrorCode.OK and self.offered[path][0].kind == Kind.FILE:
                assert path in done, f"sender was told {path!r} is OK, receiver never completed it"

    def s_paths(self) -> dict:
        # file ids are given in offer order, starting at 0
        return {i: f"f{i + 1}".encode() for i in range(self.n)}

    def teardown(self):
        if not hasattr(self, "pair") or self.damaged:
            return
        for _ in range(200):
            if self.s.peer is not None and not self.finished and not self.s.closed:
                self.finish()
            self._collect()
            if not self.to_r and not self.to_s:
                break
            self.deliver_to_receiver(1.0, False)
            self.deliver_to_sender(1.0, False)
        assert not self.failed, f"an undamaged session failed: {self.failed}"
        assert self.sd.complete and self.rd.complete, "an undamaged session did not finish"
        assert sorted(self.sd.resolved) == list(range(self.n)), "a file has no result on the sender"
        receiver_codes = {fid: code for fid, code, _ in self.rd.results}
        assert receiver_codes == self.sd.resolved
        self.completed_files_are_identical()
        self.digests_match_unless_told_otherwise()
        self.sender_ok_means_receiver_has_it()


TcpSession.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                        derandomize=DERANDOMIZE,
                                        suppress_health_check=[HealthCheck.too_slow])
test_tcp_session_machine = pytest.mark.timeout(300)(TcpSession.TestCase)
