"""Seed corpora from real traffic: whole sessions run in memory (``wiring``), their bytes
and datagrams recorded and laid out as each target reads its input.

    python -m tests.fuzz.corpus DIR     # writes DIR/<target>/seed-NNN
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftx.core.frames import HEADER
from ftx.core.ranges import RangeSet
from ftx.core.udp import packets as P

from . import drivers as D
from .targets import DT, record, records_from_frames, unseal
from .wiring import TcpPair, UdpPair, offer_all, sample_files

RECEIVER_POLICIES = (D.ACCEPT_ALL, D.REFUSE_EXISTS, D.RESUME_FIRST, D.FAIL_EARLY, D.BAD_DIGEST)
SENDER_POLICIES = (D.SEND_ALL, D.SKIP_EXISTING, D.ABORT_MIDWAY, D.RESTART_HELD)


def _after_hello(blob: bytes) -> bytes:
    length = HEADER.unpack_from(blob, 0)[3]
    return blob[16 + length :]


def _prefixes(stream: bytes):
    pos = 0
    while pos + 16 <= len(stream):
        pos += 16 + HEADER.unpack_from(stream, pos)[3]
        yield stream[:pos]


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
            for opts, split in ((rp << 2, 100), ((rp << 2) | 2, 97), ((rp << 2) | 0x81, 61)):
                out["tcp_receiver"].append(bytes([opts, split]) + to_r)
            out["tcp_receiver"].append(bytes([rp << 2, 0x80 | 127]) + records_from_frames(to_r))
            if sp == D.SEND_ALL or rp == D.ACCEPT_ALL:
                opts = (0x40 if rp & D.REFUSE_EXISTS else 0) | (0x80 if rp & D.RESUME_FIRST else 0)
                out["tcp_storage"].append(bytes([opts, 100]) + to_r)
                out["tcp_storage"].append(bytes([opts, 0x80 | 100]) + records_from_frames(to_r))
            for opts, split in ((sp << 2) | 0x80, 0), ((sp << 2) | 0x82, 0), ((sp << 2) | 0x81, 29):
                out["tcp_sender"].append(bytes([opts, split]) + to_s)
            out["tcp_sender"].append(bytes([(sp << 2) | 0x80, 0x80]) + records_from_frames(to_s))
            if rp == D.ACCEPT_ALL and sp == D.SEND_ALL:
                # short seeds, a frame more each: a mutation then often hits the last frame
                for target, opts, stream in (("tcp_receiver", 0, to_r), ("tcp_sender", 0x80, to_s)):
                    for frames in _prefixes(stream):
                        out[target].append(bytes([opts, 0x80 | 127]) + records_from_frames(frames))
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
                      and all(s.stream_all_acked for s in p.sessions))
    return pair


def _udp_records(log: list, tag: str, skip: int, limit: int | None = None, gro: bool = False) -> bytes:
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
        if limit is not None and seen - skip > limit:
            break
        flags = _dt_flags(when - last if last is not None else 0.0)
        last = when
        if gro:
            flags |= 0x20  # coalesced with the records before it when they have its size
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
            out["udp_receiver"].append(bytes([rp << 4]) + _udp_records(pair.log, "r", 2, gro=True))
            out["udp_sender"].append(bytes([(sp << 5) | 1]) + _udp_records(pair.log, "s", 2, gro=True))
            if rp == D.ACCEPT_ALL and sp == D.SEND_ALL:
                # short seeds, a datagram more each: a mutation then often hits the last one
                for k in range(1, 25):
                    out["udp_receiver"].append(bytes([0]) + _udp_records(pair.log, "r", 2, k))
                    out["udp_sender"].append(bytes([1]) + _udp_records(pair.log, "s", 2, k))
    # one sealed packet per frame type, encoded by the core's own encoders
    frames = [bytes([P.F_PING]), bytes([P.F_PADDING]) * 3, P.encode_ack(RangeSet([(0, 3), (5, 9)]), 250),
              P.encode_stream(0, b"x" * 20), P.encode_varint_frame(P.F_MAX_DATA, 1 << 24),
              P.encode_close(16, "bye"), P.CHUNK_HEADER.pack(P.F_CHUNK, 1, 0, 4096, 0, 7, 16) + bytes(16)]
    for f in frames:
        for target in ("udp_receiver", "udp_sender"):
            out[target].append(bytes([0]) + record(1, (1).to_bytes(8, "big") + f))
    return out


def handshake_seeds() -> dict[str, list[bytes]]:
    """Both sides of both handshake kinds, recorded from pairs with the target's randomness."""
    from ..handshake_pair import OTHER_KEY, pake_pair, pump, sigma_pair

    out = []
    runs = [(0, sigma_pair(), 0), (1, sigma_pair(), 1), (0, pake_pair(), 0), (3, pake_pair(), 1),
            (0, sigma_pair(client_key=OTHER_KEY), 0), (0, pake_pair(client_code="wrong"), 0)]
    for opts, (client, server), direction in runs:
        stream = bytes(pump(client, server).streams[direction])  # 0: sender's bytes, 1: receiver's
        for extra, tail in ((0, b""), (7 << 3, b""), (4, b"sealed bytes follow"), (1 << 3, b"")):
            out.append(bytes([opts | extra]) + stream + tail)
    out += [bytes([extra]) + tls_client_hello() for extra in (0, 7 << 3, 4)]
    return {"handshake": out}


def tls_client_hello() -> bytes:
    """A sender's first TLS flight (kind 3): OpenSSL's randomness makes later flights unreplayable."""
    import ssl

    from ftx.core.secure.tls import TlsClientHandshake

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return TlsClientHandshake(ctx, "localhost").data_to_send()


def seeds() -> dict[str, list[bytes]]:
    return {**tcp_seeds(), **udp_seeds(), **handshake_seeds()}


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
