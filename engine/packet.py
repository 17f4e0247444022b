"""Raw IPv4/IPv6 parsing (TCP, UDP, ICMP) by slicing: a result or a drop reason, never an exception."""

from __future__ import annotations

import ipaddress
import logging
from enum import StrEnum

log = logging.getLogger(__name__)

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

# One byte per protocol, made once: the connection key starts with it.
PROTO_BYTE = {p: bytes((p,)) for p in range(256)}

ICMP_ECHO_REQUEST = {ICMP: 8, ICMPV6: 128}
ICMP_ECHO_REPLY = {ICMP: 0, ICMPV6: 129}
# Error messages quote the offending packet's header: they belong to that packet's connection.
ICMP_ERRORS = {ICMP: frozenset({3, 4, 11, 12}), ICMPV6: frozenset({1, 2, 3, 4})}
# IPv6 extension headers the parser walks past (RFC 8200 4.1; AH's length counts 4-byte words).
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_DEST_OPTS = 60
IPV6_SKIPPED = frozenset({IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DEST_OPTS})
# Extension headers it cannot look past: ESP encrypts what follows; Mobility, HIP, Shim6 and the
# experimental values carry no transport header the rules could screen.
IPV6_EXTENSIONS = frozenset({50, 135, 139, 140, 253, 254})
# A chain longer than this is not a packet any real stack sends (Linux HMARK would still walk it;
# we drop it as unsupported rather than loop over a crafted one).
IPV6_MAX_EXTENSIONS = 8


class Reason(StrEnum):
    """Why the engine decided what it did; each is a counter name (engine.counters[reason])."""

    # malformed or unsupported input
    TRUNCATED_IP = "truncated-ip"
    BAD_IP_VERSION = "bad-ip-version"
    BAD_IP_HEADER = "bad-ip-header"
    FRAGMENT = "fragment"
    UNSUPPORTED_PROTO = "unsupported-proto"
    UNSUPPORTED_IPV6_EXT = "unsupported-ipv6-ext"
    TRUNCATED_TCP = "truncated-tcp"
    BAD_TCP_HEADER = "bad-tcp-header"
    BAD_TCP_FLAGS = "bad-tcp-flags"
    TRUNCATED_UDP = "truncated-udp"
    BAD_UDP_LENGTH = "bad-udp-length"
    BAD_PORT = "bad-port"
    TRUNCATED_ICMP = "truncated-icmp"
    UNSUPPORTED_ICMP = "unsupported-icmp-type"
    # decisions of the engine
    ESTABLISHED = "established"
    NEW = "new"
    RELATED = "related"
    RELATED_ICMP = "related-icmp"
    ICMP_ERROR_NO_STATE = "icmp-error-no-state"
    NO_STATE = "no-state"
    NO_RULE_MATCH = "no-rule-match"
    HOLD_RELATED = "hold-related"
    HOLD_PULL = "hold-pull"
    HELD = "hold-waiting"  # a later packet of a connection or key already waiting on a sync
    HOLD_CAP = "hold-cap"
    FTP_PORT_BOUNCE = "ftp-port-bounce"
    FTP_PASV_BOUNCE = "ftp-pasv-bounce"
    ENGINE_ERROR = "engine-error"


class Packet:
    """What the engine needs of one packet. `key` is the direction-normalised connection key:
    proto byte + lower (address, port) + higher (address, port); `low` says the sender is the lower
    endpoint, so both directions of a flow share the key and the entry can tell them apart."""

    __slots__ = (
        "dport",
        "dst",
        "end",
        "family",
        "flags",
        "icmp_type",
        "inner_key",
        "key",
        "l4_off",
        "low",
        "payload_off",
        "proto",
        "seq",
        "sport",
        "src",
    )

    def __init__(self) -> None:
        self.family = 4
        self.proto = 0
        self.src = b""
        self.dst = b""
        self.sport = 0
        self.dport = 0
        self.flags = 0
        self.seq = 0
        self.l4_off = 0
        self.payload_off = 0
        self.end = 0
        self.icmp_type = -1
        self.key = b""
        self.low = True
        self.inner_key: bytes | None = None

    def payload(self, data: bytes) -> bytes:
        return data[self.payload_off : self.end]


def make_key(proto: int, src: bytes, sport: bytes, dst: bytes, dport: bytes) -> tuple[bytes, bool]:
    """The normalised key and whether (src, sport) is the lower endpoint."""
    a = src + sport
    b = dst + dport
    if a <= b:
        return PROTO_BYTE[proto] + a + b, True
    return PROTO_BYTE[proto] + b + a, False


def tcp_flags_valid(flags: int) -> bool:
    """The combinations real stacks send (as Linux conntrack accepts): SYN or RST alone or with
    ACK, anything else only with ACK. Null, Xmas and SYN+FIN probes are not."""
    if flags & SYN:
        return not flags & (FIN | RST)
    if flags & RST:
        return not flags & FIN
    return bool(flags & ACK)


def parse(data: bytes, capture_bytes: int = 0) -> Packet | Reason:
    """Parse one IP packet as NFQUEUE gives it (no link layer).

    `capture_bytes`: the queue's copy range when the kernel hands over GSO packets whole; such
    a packet arrives cut to exactly that many bytes while its header states its full length.
    Its headers are all there, so it is parsed up to where the capture ends."""
    n = len(data)
    if n < 1:
        return Reason.TRUNCATED_IP
    version = data[0] >> 4
    p = Packet()
    if version == 4:
        if n < 20:
            return Reason.TRUNCATED_IP
        ihl = (data[0] & 0x0F) * 4
        total = (data[2] << 8) | data[3]
        if ihl < 20 or total < ihl:
            return Reason.BAD_IP_HEADER
        if total > n:
            if not capture_bytes or n != capture_bytes:
                return Reason.TRUNCATED_IP
            total = n  # a GSO packet cut at the copy range: parse what was captured
        if data[6] & 0x3F or data[7]:  # more-fragments flag or a fragment offset
            return Reason.FRAGMENT
        p.family = 4
        p.proto = data[9]
        p.src = data[12:16]
        p.dst = data[16:20]
        p.l4_off = ihl
        p.end = total
    elif version == 6:
        if n < 40:
            return Reason.TRUNCATED_IP
        end = 40 + ((data[4] << 8) | data[5])
        if end > n:
            return Reason.TRUNCATED_IP
        walked = _ipv6_l4(data, end)
        if isinstance(walked, Reason):
            return walked
        p.family = 6
        p.proto, p.l4_off = walked
        p.src = data[8:24]
        p.dst = data[24:40]
        p.end = end
    else:
        return Reason.BAD_IP_VERSION
    return _parse_l4(data, p)


def _ipv6_l4(data: bytes, end: int) -> tuple[int, int] | Reason:
    """(transport protocol, its offset) of an IPv6 packet, past its extension headers.

    A fragment is dropped like an IPv4 one, except an atomic fragment (offset 0, no more
    fragments: RFC 6946), which is the whole packet. A routing header with segments left names
    a next hop, not the final destination the key and the rules would use: unsupported (RFC 5095
    deprecated type 0, the only kind a forwarded packet could carry to a host)."""
    nh = data[6]
    off = 40
    for _ in range(IPV6_MAX_EXTENSIONS):
        if nh not in IPV6_SKIPPED:
            if nh in IPV6_EXTENSIONS:
                return Reason.UNSUPPORTED_IPV6_EXT
            return nh, off
        if end - off < 8:
            return Reason.TRUNCATED_IP
        if nh == IPV6_FRAGMENT:
            if (data[off + 2] << 8 | data[off + 3]) != 0:  # fragment offset and M flag (low bit)
                return Reason.FRAGMENT
            size = 8
        elif nh == IPV6_AH:
            size = (data[off + 1] + 2) * 4
        else:
            size = (data[off + 1] + 1) * 8
            if nh == IPV6_ROUTING and data[off + 3]:
                return Reason.UNSUPPORTED_IPV6_EXT
        if end - off < size:
            return Reason.TRUNCATED_IP
        nh = data[off]
        off += size
    return Reason.UNSUPPORTED_IPV6_EXT


def _parse_l4(data: bytes, p: Packet) -> Packet | Reason:
    off = p.l4_off
    end = p.end
    proto = p.proto
    if proto == TCP:
        if end - off < 20:
            return Reason.TRUNCATED_TCP
        doff = (data[off + 12] >> 4) * 4
        if doff < 20:
            return Reason.BAD_TCP_HEADER
        if off + doff > end:
            return Reason.TRUNCATED_TCP
        flags = data[off + 13] & 0x3F
        if not tcp_flags_valid(flags):
            return Reason.BAD_TCP_FLAGS
        p.sport = (data[off] << 8) | data[off + 1]
        p.dport = (data[off + 2] << 8) | data[off + 3]
        if p.sport == 0 or p.dport == 0:
            return Reason.BAD_PORT
        p.flags = flags
        p.seq = int.from_bytes(data[off + 4 : off + 8], "big")
        p.payload_off = off + doff
        p.key, p.low = make_key(TCP, p.src, data[off : off + 2], p.dst, data[off + 2 : off + 4])
        return p
    if proto == UDP:
        if end - off < 8:
            return Reason.TRUNCATED_UDP
        ulen = (data[off + 4] << 8) | data[off + 5]
        if ulen < 8 or ulen > end - off:
            return Reason.BAD_UDP_LENGTH
        p.sport = (data[off] << 8) | data[off + 1]
        p.dport = (data[off + 2] << 8) | data[off + 3]
        if p.sport == 0 or p.dport == 0:
            return Reason.BAD_PORT
        p.payload_off = off + 8
        p.end = off + ulen
        p.key, p.low = make_key(UDP, p.src, data[off : off + 2], p.dst, data[off + 2 : off + 4])
        return p
    if (proto == ICMP and p.family == 4) or (proto == ICMPV6 and p.family == 6):
        if end - off < 8:
            return Reason.TRUNCATED_ICMP
        t = data[off]
        p.icmp_type = t
        p.payload_off = off + 8
        if t == ICMP_ECHO_REQUEST[proto] or t == ICMP_ECHO_REPLY[proto]:
            ident = data[off + 4 : off + 6]
            p.sport = p.dport = int.from_bytes(ident, "big")
            p.key, p.low = make_key(proto, p.src, ident, p.dst, ident)
            return p
        if t in ICMP_ERRORS[proto]:
            inner = _inner_key(data, off + 8, end, p.family)
            if inner is None:
                return Reason.TRUNCATED_ICMP
            p.inner_key = inner
            return p
        return Reason.UNSUPPORTED_ICMP
    return Reason.UNSUPPORTED_PROTO


def _inner_key(data: bytes, off: int, end: int, family: int) -> bytes | None:
    """The connection key of the packet quoted inside an ICMP error (its IP header + 8 bytes)."""
    if family == 4:
        if end - off < 20 or data[off] >> 4 != 4:
            return None
        ihl = (data[off] & 0x0F) * 4
        if ihl < 20 or end - off < ihl + 8:
            return None
        proto = data[off + 9]
        src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
        l4 = off + ihl
    else:
        if end - off < 48 or data[off] >> 4 != 6:
            return None
        proto = data[off + 6]
        src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
        l4 = off + 40
    if proto in (TCP, UDP):
        return make_key(proto, src, data[l4 : l4 + 2], dst, data[l4 + 2 : l4 + 4])[0]
    if proto in (ICMP, ICMPV6):
        ident = data[l4 + 4 : l4 + 6]
        return make_key(proto, src, ident, dst, ident)[0]
    return None


def addr_text(addr: bytes) -> str:
    """An address as a person writes it."""
    return str(ipaddress.ip_address(addr))


def endpoint_text(addr: bytes, port: int | None) -> str:
    host = addr_text(addr)
    if port is None:
        return f"[{host}]:*" if len(addr) == 16 else f"{host}:*"
    return f"[{host}]:{port}" if len(addr) == 16 else f"{host}:{port}"


def split_key(key: bytes) -> tuple[int, bytes, int, bytes, int]:
    """(proto, low address, low port, high address, high port) of a connection key."""
    alen = (len(key) - 5) // 2
    a = key[1 : 1 + alen]
    ap = int.from_bytes(key[1 + alen : 3 + alen], "big")
    b = key[3 + alen : 3 + 2 * alen]
    bp = int.from_bytes(key[3 + 2 * alen : 5 + 2 * alen], "big")
    return key[0], a, ap, b, bp
