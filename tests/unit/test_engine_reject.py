"""REJECT answers: a TCP RST or an ICMP(v6) port unreachable, with correct checksums (parsed by scapy)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.packet import Raw

from engine.core import Engine, Verdict
from engine.rules import parse_rules
from tests.unit.engine_packets import C1, S1, tcp, tcp6, udp

C6, S6 = "2001:db8:1::10", "2001:db8:2::10"


def _engine() -> Engine:
    return Engine("n1", parse_rules([
        {"name": "no-telnet", "action": "reject", "proto": "tcp", "dport": 23},
        {"name": "no-tftp", "action": "reject", "proto": "udp", "dport": 69},
    ]))


def _checksums_hold(reply: bytes) -> None:
    """Rebuilding the packet with its checksums cleared gives back the same bytes."""
    pkt = IP(reply) if reply[0] >> 4 == 4 else IPv6(reply)
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if fresh.haslayer(layer):
            del fresh[layer].chksum
    if fresh.haslayer(ICMPv6DestUnreach):
        del fresh[ICMPv6DestUnreach].cksum
    if fresh.haslayer(IPv6) and fresh.haslayer(TCP):
        del fresh[TCP].chksum
    assert bytes(fresh.__class__(bytes(fresh))) == reply


def test_a_rejected_syn_gets_a_reset_from_the_server_address() -> None:
    d = _engine().process(tcp(C1, S1, 40000, 23, "S", seq=1000), 1.0)
    assert (d.verdict, d.reason) == (Verdict.REJECT, "rule-reject:no-telnet") and d.reply
    ip = IP(d.reply)
    assert (ip.src, ip.dst, ip.ttl) == (S1, C1, 64)
    t = ip[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, str(t.flags)) == (23, 40000, 0, 1001, "RA")
    _checksums_hold(d.reply)


def test_a_rejected_udp_datagram_gets_port_unreachable_quoting_it() -> None:
    original = udp(C1, S1, 4000, 69, b"read me")
    d = _engine().process(original, 1.0)
    assert d.verdict is Verdict.REJECT and d.reply
    ip = IP(d.reply)
    assert (ip.src, ip.dst) == (S1, C1)
    assert (ip[ICMP].type, ip[ICMP].code) == (3, 3)
    assert bytes(ip[ICMP].payload) == original
    _checksums_hold(d.reply)


def test_ipv6_rejects_get_a_reset_or_icmpv6_port_unreachable() -> None:
    engine = _engine()
    d = engine.process(tcp6(C6, S6, 40000, 23, "S"), 1.0)
    assert d.verdict is Verdict.REJECT and d.reply
    ip6 = IPv6(d.reply)
    assert (ip6.src, ip6.dst, str(ip6[TCP].flags), ip6[TCP].ack) == (S6, C6, "RA", 1)
    _checksums_hold(d.reply)
    from scapy.layers.inet6 import UDP as UDP6  # the same class; scapy binds it for IPv6 too

    original = bytes(IPv6(src=C6, dst=S6) / UDP6(sport=4000, dport=69) / Raw(b"x"))
    d = engine.process(original, 1.0)
    assert d.verdict is Verdict.REJECT and d.reply
    un = IPv6(d.reply)[ICMPv6DestUnreach]
    assert (un.type, un.code, bytes(un.payload)) == (1, 4, original)
    _checksums_hold(d.reply)


def test_a_bad_checksum_is_caught_by_the_check() -> None:
    d = _engine().process(tcp(C1, S1, 40000, 23, "S"), 1.0)
    assert d.reply
    bad = d.reply[:36] + bytes((d.reply[36] ^ 0xFF,)) + d.reply[37:]  # the TCP checksum
    with pytest.raises(AssertionError):
        _checksums_hold(bad)


def test_dropped_packets_carry_no_reply_and_rejects_are_counted() -> None:
    engine = _engine()
    d = engine.process(tcp(C1, S1, 40000, 80, "S"), 1.0)
    assert (d.verdict, d.reply) == (Verdict.DROP, None)
    engine.process(tcp(C1, S1, 40001, 23, "S"), 1.0)
    assert engine.counters["rule-reject:no-telnet"] == 1 and engine.counters["rejected"] == 1
