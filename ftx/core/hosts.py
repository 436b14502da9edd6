"""What the receiver counts as one host: the key of every per-host limit.

An IPv4 address is one host.  An IPv6 address counts as its /64: one machine (or
one customer of an ISP) is usually given a whole /64, and picks source addresses
in it freely (privacy addresses, RFC 8981), so counting per address would give
it 2^64 shares of every per-host limit.  An IPv4-mapped IPv6 address
(``::ffff:192.0.2.7``, what a dual-stack socket reports for an IPv4 peer) is the
IPv4 address, and so is one in RFC 6052's well-known NAT64 prefix (``64:ff9b::a.b.c.d``,
what an IPv6-only receiver behind a stateless translator sees for every IPv4 peer: as one
/64 they would all be one host).  Anything else (a name, a Unix socket path, None) is its own key.

Every per-host count uses ``host_key`` (limits.py ``Admission``, the handshake
throttles in security_setup.py, the UDP Listener's INITIAL budgets, the
frame-buffer share in frames.py, the failure log): one host is one key everywhere.
"""

from __future__ import annotations

from functools import lru_cache

UNKNOWN = "?"
NAT64 = "64:ff9b::/96"  # RFC 6052's well-known prefix: an IPv4 address in its last 32 bits


@lru_cache(maxsize=4096)
def _key(host: str) -> str:
    if "/" in host:  # already a key (a /64)
        return host
    import ipaddress  # here: every ftx command imports this module, few meet an IPv6 address (~1 ms)

    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # a scoped address (fe80::1%eth0): its scope goes
    except ValueError:
        return host
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip in ipaddress.IPv6Network(NAT64):
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def host_key(host) -> str:
    """The host ``host`` counts as: an IPv4 address as itself, an IPv6 address as its /64
    (``2001:db8:1:2::/64``), an IPv4-mapped or NAT64 (``64:ff9b::/96``) IPv6 address as the IPv4 one; ``host`` may also be
    a socket address tuple (its first element is used).  None or empty: ``"?"``."""
    if isinstance(host, tuple):
        host = host[0] if host else None
    if not host:
        return UNKNOWN
    if ":" not in host:  # IPv4 (the common case, no parsing) or a name
        return host
    return _key(host)


__all__ = ["host_key"]
