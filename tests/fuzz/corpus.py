"""Seed corpora from real traffic: whole sessions run in memory (``wiring``), their bytes
and datagrams recorded and laid out as each target reads its input.

    python -m tests.fuzz.corpus DIR     # writes DIR/<target>/seed-NNN
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftx.core.frames import HEADER
from ftx.core.udp import packets as P

from . import drivers as D
from .targets import DT, record, unseal
from .wiring import TcpPair, UdpPair, offer_all, sample_files

RECEIVER_POLICIES = (D.ACCEPT_ALL, D.REFUSE_EXISTS, D.RESUME_FIRST, D.FAIL_EARLY, D.BAD_DIGEST)
SENDER_POLICIES = (D.SEND_ALL, D.SKIP_EXISTING, D.ABORT_MIDWAY, D.RESTART_HELD)


def _after_hello(blob: bytes) -> bytes:
    length = HEADER.unpack_from(blob, 0)[3]
    return blob[16 + length :]


def tcp_session(rpolicy: int = 0, spolicy: int = 0) -> TcpPair:
    pair = TcpPair(rpolicy, spolicy, held_content={b"dir/big.bin": sample_files()[1][1]})
    pair.pump()
    offer_all(pair.sd)
    pair.s.finish()
    pair.pump()
    return pair


def tcp_seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"tcp_receiver": [], "tcp_storage": [], "tcp_sender": []}
    for rp in RECEIVER_POLICIES:
        for sp in SENDER_POLICIES:
            pair = tcp_session(rp, sp)
            to_r = _after_hello(b"".join(b for tag, b in pair.log if tag == "s"))
            to_s = _after_hello(b"".join(b for tag, b in pair.log if tag == "r"))
            # the driver answers between reads: the sender's DATA must not arrive in the read
            # that carries its OFFER, so no seed reads everything at once
            for opts, split in ((rp << 2, 200), ((rp << 2) | 2, 97), ((rp << 2) | 0x81, 61)):
                out["tcp_receiver"].append(bytes([opts, split]) + to_r)
            if sp == D.SEND_ALL or rp == D.ACCEPT_ALL:
                out["tcp_storage"].append(bytes([0x40 if rp & D.REFUSE_EXISTS else 0, 150]) + to_r)
            for opts, split in ((sp << 2) | 0x80, 0), ((sp << 2) | 0x82, 0), ((sp << 2) | 0x81, 29):
                out["tcp_sender"].append(bytes([opts, split]) + to_s)
    return out


def _dt_flags(dt: float) -> int:
    best = min(range(len(DT)), key=lambda i: abs(DT[i] - dt))
    return best << 1


def udp_session(rpolicy: int = 0, spolicy: int = 0) -> UdpPair:
    pair = UdpPair(rpolicy, spolicy)
    pair.run_lossless(lambda p: p.sender.conn.peer is not None)
    offer_all(pair.sender.drv)
    pair.sender.conn.finish()
    pair.sender.flush()
    pair.run_lossless(lambda p: p.sender.drv.complete and p.receiver.drv.complete
                      and all(not s._sout for s in p.sessions))
    return pair


def _udp_records(log: list, tag: str, skip: int) -> bytes:
    out = bytearray()
    last = None
    seen = 0
    for t, when, d in log:
        if t != tag:
            continue
        seen += 1
        if seen <= skip:
            last = when
            continue
        flags = _dt_flags(when - last if last is not None else 0.0)
        last = when
        if d[0] == P.DATA:
            out += record(flags | 1, unseal(d))
        else:
            out += record(flags, d)
    return bytes(out)


def udp_seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"udp_receiver": [], "udp_sender": []}
    for rp in (D.ACCEPT_ALL, D.REFUSE_EXISTS, D.FAIL_EARLY):
        for sp in (D.SEND_ALL, D.ABORT_MIDWAY):
            pair = udp_session(rp, sp)
            out["udp_receiver"].append(bytes([rp << 4]) + _udp_records(pair.log, "r", 2))
            out["udp_sender"].append(bytes([(sp << 5) | 1]) + _udp_records(pair.log, "s", 2))
    return out


def seeds() -> dict[str, list[bytes]]:
    return {**tcp_seeds(), **udp_seeds()}


def write(directory: Path) -> dict[str, Path]:
    dirs = {}
    for target, items in seeds().items():
        d = directory / target
        d.mkdir(parents=True, exist_ok=True)
        for i, blob in enumerate(items):
            (d / f"seed-{i:03d}").write_bytes(blob)
        dirs[target] = d
    return dirs


if __name__ == "__main__":
    for name, path in write(Path(sys.argv[1])).items():
        print(name, path)
