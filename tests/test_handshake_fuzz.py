"""Hypothesis over the handshake decoders: any bytes end in a typed error or in progress,
never in another exception, never in keys for a peer that did not prove itself."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.core.frames import FrameType, encode_frame
from ftx.core.secure.handshake import HANDSHAKE_FRAME, MAX_MESSAGE
from ftx.errors import FtxError, LocalProtocolError

from .fuzz import corpus, targets
from .handshake_pair import pake_pair, pump, sigma_pair

SIDES = [0, 1, 3]  # receiver (serves both kinds), sender in keys mode, sender in code mode
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = corpus.handshake_seeds()["handshake"]


def feed(opts: int, stream: bytes) -> None:
    """The fuzz target's property, on one input."""
    targets.handshake(bytes([opts]) + stream)


@SETTINGS
@given(side=st.sampled_from(SIDES), split=st.integers(0, 31), seal=st.booleans(), data=st.binary(max_size=600))
def test_any_bytes(side, split, seal, data):
    feed(side | (seal << 2) | (split << 3), data)


def _frame(kind: int, mtype: int, body: bytes) -> bytes:
    return encode_frame(HANDSHAKE_FRAME, bytes([kind, mtype]) + body)


frames = st.one_of(
    st.builds(_frame, st.integers(0, 4), st.integers(0, 5),
              st.one_of(st.binary(max_size=200), st.sampled_from([32, 33, 65, 66, 67, 68, 144, 145]).flatmap(
                  lambda n: st.binary(min_size=n, max_size=n)))),
    st.builds(lambda code, text: encode_frame(FrameType.ERROR, code.to_bytes(2, "big") + len(text).to_bytes(2, "big")
                                              + text), st.integers(0, 0xFFFF), st.binary(max_size=40)),
)


@SETTINGS
@given(side=st.sampled_from(SIDES), seq=st.lists(frames, max_size=5), split=st.integers(0, 9))
def test_well_framed_messages_of_any_kind_and_type(side, seq, split):
    """Every (state, message) pair: valid frames with any kind, type and body."""
    feed(side | (split << 3), b"".join(seq))


@SETTINGS
@given(seed=st.sampled_from(SEEDS), pos=st.integers(0, 10_000), value=st.integers(0, 255), seal=st.booleans())
def test_mutated_real_handshakes(seed, pos, value, seal):
    data = bytearray(seed)
    if len(data) > 1:
        data[1 + pos % (len(data) - 1)] = value
    data[0] |= seal << 2
    targets.handshake(bytes(data))


@SETTINGS
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 10_000))
def test_truncated_real_handshakes(seed, cut):
    targets.handshake(seed[: 1 + cut % len(seed)])


def test_a_huge_length_is_refused_without_buffering():
    for side in SIDES:
        hs = targets.handshake_side(side)
        header = encode_frame(HANDSHAKE_FRAME, b"\x01\x01")[:4] + (MAX_MESSAGE + 1).to_bytes(4, "big") + bytes(8)
        try:
            hs.receive(header + bytes(1000), 0.0)
        except FtxError as exc:
            assert not isinstance(exc, LocalProtocolError)
        else:
            raise AssertionError("accepted")


def test_seeds_replay_to_the_end():
    """The seeds reach the end of a handshake (else fuzzing would stay shallow)."""
    finished = 0
    for seed in SEEDS:
        hs = targets.handshake_side(seed[0])
        try:
            hs.receive(seed[1:], 0.0)
        except FtxError:
            continue
        finished += hs.done
    assert finished >= 12
    assert pump(*sigma_pair()).client_error is None and pump(*pake_pair()).client_error is None
