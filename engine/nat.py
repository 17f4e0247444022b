"""NAT for the engine: bindings, the port allocator (HMARK-aware), and rewriting IPv4 packets
with incremental checksum updates (RFC 1624). Pure: bytes in, bytes out."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.packet import TCP, UDP, endpoint_text, make_key
from engine.rules import EngineError

__all__ = [
    "TRANSLATED_MARK",
    "NatBinding",
    "PortPlan",
    "allocate_port",
    "binding_text",
    "checksum_adjust",
    "hmark_bucket",
    "hmark_rnd",
    "jhash_3words",
    "make_binding",
    "rewrite",
    "rewrite_icmp_error",
]

_M32 = 0xFFFFFFFF
# The skb mark bit a node sets on a packet it translated. A packet translated in mangle
# PREROUTING (addressed to the cluster's own address) is routed afterwards and would meet the
# FORWARD queue a second time; the lab's FORWARD chain accepts packets with this bit at once
# (netns/iptables.py). Far above any bucket number, so the owned-bucket chain never sees it.
TRANSLATED_MARK = 0x40000000
_JHASH_INITVAL = 0xDEADBEEF


def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """The kernel's jhash_3words (include/linux/jhash.h), 32-bit unsigned arithmetic."""
    iv = (initval + _JHASH_INITVAL + (3 << 2)) & _M32
    a = (a + iv) & _M32
    b = (b + iv) & _M32
    c = (c + iv) & _M32
    # __jhash_final
    c ^= b
    c = (c - _rol32(b, 14)) & _M32
    a ^= c
    a = (a - _rol32(c, 11)) & _M32
    b ^= a
    b = (b - _rol32(a, 25)) & _M32
    c ^= b
    c = (c - _rol32(b, 16)) & _M32
    a ^= c
    a = (a - _rol32(c, 4)) & _M32
    b ^= a
    b = (b - _rol32(a, 14)) & _M32
    c ^= b
    c = (c - _rol32(b, 24)) & _M32
    return c


def hmark_bucket(
    proto: int, src: bytes, sport: int, dst: bytes, dport: int, rnd: int, buckets: int, offset: int = 1
) -> int:
    """The mark `-j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod buckets
    --hmark-offset offset --hmark-rnd rnd` gives an IPv4 TCP/UDP packet (net/netfilter/xt_HMARK.c,
    packet method). Addresses and ports are each put in order before hashing, so both
    directions of a flow get the same mark."""
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    if d < s:
        s, d = d, s
    ports = (dport << 16) | sport if dport > sport else (sport << 16) | dport
    h = jhash_3words(s, d, ports, rnd) ^ proto
    return ((h * buckets) >> 32) + offset  # reciprocal_scale


def hmark_rnd(lab_id: int) -> int:
    """The HMARK hash seed of a lab: the same on every node, different between labs.

    The one definition both sides use: netns/iptables.py writes it into `--hmark-rnd`, and
    engine/node.py gives it to its PortPlan, so the engine computes the marks the kernel gives."""
    digest = hashlib.blake2b(lab_id.to_bytes(8, "big"), digest_size=4, person=b"sw-hmark").digest()
    return int.from_bytes(digest, "big") or 1


@dataclass(frozen=True, slots=True)
class PortPlan:
    """How translated source ports are chosen (see docs/nat.md).

    - `rnd` and `buckets` given (the lab's HMARK seed and --hmark-mod): a port is taken only if
      the reply's tuple hashes to the connection's own bucket, so the reply reaches the node that
      holds the binding; the buckets' port sets are disjoint by construction.
    - `buckets` alone: the range is split by bucket (port - lo ≡ bucket - offset mod buckets).
    - neither (one engine alone): any free port.
    In every case a port whose translated tuple is in use is skipped."""

    lo: int = 1024
    hi: int = 65535
    buckets: int = 0
    rnd: int | None = None
    offset: int = 1
    max_tries: int = 4096  # candidates looked at before giving up (a hash per candidate)

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi <= 65535:
            raise EngineError(f"PortPlan: expected 1 <= lo <= hi <= 65535, got {self.lo}-{self.hi}")
        if self.buckets < 0 or (self.rnd is not None and self.buckets < 1):
            raise EngineError(f"PortPlan.buckets: expected >= 1 with rnd, got {self.buckets}")

    def owns(self, proto: int, src: bytes, port: int, dst: bytes, dport: int, bucket: int) -> bool:
        """May a connection of `bucket` use `port` as its translated source port?"""
        n = self.buckets
        if n < 1 or not self.offset <= bucket < self.offset + n:
            return True  # no partition known (or no bucket): one engine alone
        if self.rnd is not None:
            return hmark_bucket(proto, src, port, dst, dport, self.rnd, n, self.offset) == bucket
        return (port - self.lo) % n == (bucket - self.offset) % n


def allocate_port(
    plan: PortPlan,
    proto: int,
    src: bytes,
    dst: bytes,
    dport: int,
    want: int,
    bucket: int,
    in_use: Callable[[bytes], bool],
) -> int | None:
    """A source port for the translated tuple (proto, src:port -> dst:dport): the bucket's own
    (PortPlan.owns) and not in use. The search starts at `want` (the original source port,
    kept when it fits) and goes up, wrapping: deterministic, so a node rebuilding the same
    connection from its retransmitted SYN picks the same port. None when none is found."""
    lo, hi = plan.lo, plan.hi
    span = hi - lo + 1
    start = want - lo if lo <= want <= hi else 0
    for i in range(min(span, plan.max_tries)):
        port = lo + (start + i) % span
        if not plan.owns(proto, src, port, dst, dport, bucket):
            continue
        key, _ = make_key(proto, src, port.to_bytes(2, "big"), dst, dport.to_bytes(2, "big"))
        if not in_use(key):
            return port
    return None


class NatBinding:
    """A connection's translation: its original-direction packets leave as src:sport -> dst:dport
    (the translated tuple, keyed `key`); replies to that tuple are turned back into replies
    to the original one (osrc:osport -> odst:odport)."""

    __slots__ = ("dport", "dst", "key", "low", "odport", "odst", "osport", "osrc", "sport", "src")

    def __init__(
        self,
        proto: int,
        orig: tuple[bytes, int, bytes, int],
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
    ) -> None:
        self.osrc, self.osport, self.odst, self.odport = orig
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.key, self.low = make_key(
            proto, src, sport.to_bytes(2, "big"), dst, dport.to_bytes(2, "big")
        )

    def record(self) -> list[Any]:
        """The translated tuple as record data (the original one is the entry's key)."""
        return [self.src, self.sport, self.dst, self.dport]

    @classmethod
    def from_record(cls, proto: int, orig: tuple[bytes, int, bytes, int], data: Any) -> NatBinding:
        src, sport, dst, dport = data
        src, dst = bytes(src), bytes(dst)
        if len(src) != 4 or len(dst) != 4 or not (0 < int(sport) < 65536 and 0 < int(dport) < 65536):
            raise ValueError(f"not a NAT binding: {data!r}")
        return cls(proto, orig, src, int(sport), dst, int(dport))

    def __repr__(self) -> str:
        return (f"NatBinding({self.osrc.hex()}:{self.osport}>{self.odst.hex()}:{self.odport} as "
                f"{self.src.hex()}:{self.sport}>{self.dst.hex()}:{self.dport})")


def make_binding(
    plan: PortPlan,
    proto: int,
    orig: tuple[bytes, int, bytes, int],
    snat: bytes | None,
    dnat: tuple[bytes, int | None] | None,
    bucket: int,
    in_use: Callable[[bytes], bool],
) -> NatBinding | None:
    """The translation of a new connection (`orig`: its src, sport, dst, dport), or None when
    its translated tuple cannot be had: the source port is chosen (allocate_port) when the
    source changes; a destination-only translation keeps the source and needs its tuple free."""
    src, sport, dst, dport = orig
    if dnat is not None:
        dst = dnat[0]
        dport = dnat[1] if dnat[1] is not None else dport
    if snat is not None:
        port = allocate_port(plan, proto, snat, dst, dport, sport, bucket, in_use)
        if port is None:
            return None
        src, sport = snat, port
    n = NatBinding(proto, orig, src, sport, dst, dport)
    if snat is None and in_use(n.key):
        return None
    return n


def binding_text(n: NatBinding | None) -> str:
    """A binding as the console shows it: the translated tuple ("" when untranslated)."""
    if n is None:
        return ""
    return f"{endpoint_text(n.src, n.sport)} -> {endpoint_text(n.dst, n.dport)}"


_WORDS6 = struct.Struct("!6H")
_WORDS4 = struct.Struct("!4H")


def checksum_adjust(csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for 12 bytes (addresses and ports) or 8
    (addresses) changed from `old` to `new`."""
    w = _WORDS6 if len(old) == 12 else _WORDS4
    ow: tuple[int, ...] = w.unpack(old)
    nw: tuple[int, ...] = w.unpack(new)
    s = (~csum & 0xFFFF) + len(ow) * 0xFFFF - sum(ow) + sum(nw)  # ~m is 0xFFFF - m
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rewrite(data: bytes, l4: int, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """The IPv4 TCP/UDP packet with its addresses and ports replaced, IP and L4 checksums
    updated incrementally (a UDP checksum of 0, none, stays 0). The L4 checksum is taken to be
    complete, as on the wire; see docs/nat.md about partial (offloaded) checksums."""
    b = bytearray(data)
    old_addr = data[12:20]
    new_addr = src + dst
    b[12:20] = new_addr
    ipc = checksum_adjust((b[10] << 8) | b[11], old_addr, new_addr)
    b[10] = ipc >> 8
    b[11] = ipc & 0xFF
    old_ports = data[l4 : l4 + 4]
    new_ports = bytes((sport >> 8, sport & 0xFF, dport >> 8, dport & 0xFF))
    b[l4 : l4 + 4] = new_ports
    off = l4 + 16 if proto == TCP else l4 + 6
    if off + 2 <= len(b):  # a capture cut before the checksum leaves nothing to fix
        c = (b[off] << 8) | b[off + 1]
        if proto != UDP or c:
            c = checksum_adjust(c, old_addr + old_ports, new_addr + new_ports)
            if proto == UDP and c == 0:
                c = 0xFFFF  # 0 means "no checksum" in UDP
            b[off] = c >> 8
            b[off + 1] = c & 0xFF
    return bytes(b)


def _inet_checksum(data: bytes | bytearray) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rewrite_icmp_error(data: bytes, l4: int, end: int, n: NatBinding, to_translated: bool) -> bytes | None:
    """An IPv4 ICMP error about a packet of a translated connection, rewritten as Linux NAT
    does: the quoted packet is mapped to the other side's tuple (`to_translated`: from the
    original tuple to the translated one, else back), the outer source or destination that
    is an endpoint of the quoted packet with it (a router's own address stays). Checksums:
    the outer IP header and the quoted headers incrementally, the ICMP message recomputed (it
    covers the quoted bytes). None when the quoted packet is not one of the connection's."""
    io = l4 + 8
    il4 = io + (data[io] & 0x0F) * 4
    proto = data[io + 9]
    isrc, idst = data[io + 12 : io + 16], data[io + 16 : io + 20]
    isport = (data[il4] << 8) | data[il4 + 1]
    idport = (data[il4 + 2] << 8) | data[il4 + 3]
    inner = (isrc, isport, idst, idport)
    orig = (n.osrc, n.osport, n.odst, n.odport)
    trans = (n.src, n.sport, n.dst, n.dport)
    here, there = (orig, trans) if to_translated else (trans, orig)
    if inner == here:
        ns, nsp, nd, ndp = there
    elif inner == (here[2], here[3], here[0], here[1]):  # the quoted packet was a reply
        nd, ndp, ns, nsp = there
    else:
        return None
    b = bytearray(data)
    # The quoted packet: its addresses, header checksum, ports and (if quoted) L4 checksum.
    old_a, new_a = data[io + 12 : io + 20], ns + nd
    b[io + 12 : io + 20] = new_a
    c = checksum_adjust((b[io + 10] << 8) | b[io + 11], old_a, new_a)
    b[io + 10], b[io + 11] = c >> 8, c & 0xFF
    old_p = data[il4 : il4 + 4]
    new_p = bytes((nsp >> 8, nsp & 0xFF, ndp >> 8, ndp & 0xFF))
    b[il4 : il4 + 4] = new_p
    off = il4 + 16 if proto == TCP else il4 + 6
    if off + 2 <= end:
        c = (b[off] << 8) | b[off + 1]
        if proto != UDP or c:
            c = checksum_adjust(c, old_a + old_p, new_a + new_p)
            if proto == UDP and c == 0:
                c = 0xFFFF
            b[off], b[off + 1] = c >> 8, c & 0xFF
    # The outer header: the error travels to the quoted packet's source.
    osrc, odst = data[12:16], data[16:20]
    new_osrc = nd if osrc == idst else osrc
    new_odst = ns if odst == isrc else odst
    b[12:20] = new_osrc + new_odst
    c = checksum_adjust((b[10] << 8) | b[11], osrc + odst, new_osrc + new_odst)
    b[10], b[11] = c >> 8, c & 0xFF
    b[l4 + 2 : l4 + 4] = b"\x00\x00"
    c = _inet_checksum(b[l4:end])
    b[l4 + 2], b[l4 + 3] = c >> 8, c & 0xFF
    return bytes(b)
