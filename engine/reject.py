"""What a REJECT sends back: a TCP RST for TCP, an ICMP (ICMPv6) port unreachable otherwise.

Pure: the rejected packet in, the reply's bytes out, checksums filled in. The node sends them
as they are on a raw socket; the reply comes from the rejected packet's destination, so the
sender learns at once that nobody listens (ECONNREFUSED) instead of waiting for a timeout."""

from __future__ import annotations

import struct

from engine.packet import ACK, FIN, ICMPV6, RST, SYN, TCP, Packet

TTL = 64
ICMP_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMPV6_UNREACH, ICMPV6_PORT_UNREACH = 1, 4
ICMP_QUOTE_BYTES = 576 - 20 - 8  # RFC 1812: as much of the packet as fits in 576 bytes
ICMPV6_QUOTE_BYTES = 1280 - 40 - 8  # RFC 4443: as much as fits in the minimum MTU

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(p: Packet, proto: int, length: int) -> bytes:
    """The pseudo-header of the reply (its source is the rejected packet's destination)."""
    if p.family == 4:
        return p.dst + p.src + struct.pack("!BBH", 0, proto, length)
    return p.dst + p.src + struct.pack("!I3xB", length, proto)


def _ip(p: Packet, proto: int, body: bytes) -> bytes:
    if p.family == 4:
        hdr = _IP4.pack(0x45, 0, 20 + len(body), 0, 0x4000, TTL, proto, 0, p.dst, p.src)
        return hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:] + body
    return _IP6.pack(6 << 28, len(body), proto, TTL, p.dst, p.src) + body


def reject_reply(p: Packet, data: bytes) -> bytes | None:
    """The reply to send for the rejected packet `p` (raw bytes `data`), None for none."""
    if p.proto == TCP:
        return _rst(p, data)
    return _unreachable(p, data)


def _rst(p: Packet, data: bytes) -> bytes | None:
    if p.flags & RST:
        return None  # never answer a reset
    off = p.l4_off
    if p.flags & ACK:
        # RFC 9293 3.10.7: <SEQ=SEG.ACK><CTL=RST>
        seq, ack, flags = int.from_bytes(data[off + 8 : off + 12], "big"), 0, RST
    else:
        # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, SYN and FIN counting one each
        seg_len = max(0, p.end - p.payload_off) + bool(p.flags & SYN) + bool(p.flags & FIN)
        seq, ack, flags = 0, (p.seq + seg_len) & 0xFFFFFFFF, RST | ACK
    seg = _TCP.pack(p.dport, p.sport, seq, ack, 0x50, flags, 0, 0, 0)
    csum = checksum(_pseudo(p, TCP, len(seg)) + seg)
    return _ip(p, TCP, seg[:16] + csum.to_bytes(2, "big") + seg[18:])


def _unreachable(p: Packet, data: bytes) -> bytes:
    if p.family == 4:
        quote = data[:ICMP_QUOTE_BYTES]
        msg = struct.pack("!BBHI", ICMP_UNREACH, ICMP_PORT_UNREACH, 0, 0) + quote
        msg = msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]
        return _ip(p, 1, msg)
    quote = data[:ICMPV6_QUOTE_BYTES]
    msg = struct.pack("!BBHI", ICMPV6_UNREACH, ICMPV6_PORT_UNREACH, 0, 0) + quote
    csum = checksum(_pseudo(p, ICMPV6, len(msg)) + msg)
    return _ip(p, ICMPV6, msg[:2] + csum.to_bytes(2, "big") + msg[4:])
