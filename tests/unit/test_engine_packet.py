"""Raw packet parsing: keys, directions, and every kind of bad input as a counted drop."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import Engine, Verdict
from engine.packet import Packet, Reason, parse
from engine.rules import default_rules
from tests.unit.engine_packets import C1, S1, S2, ping, ping6, tcp, tcp6, udp


def test_both_directions_of_a_flow_share_one_key() -> None:
    out = parse(tcp(C1, S1, 40000, 5001, "S"))
    back = parse(tcp(S1, C1, 5001, 40000, "SA"))
    assert isinstance(out, Packet) and isinstance(back, Packet)
    assert out.key == back.key
    assert len(out.key) == 13  # proto + two (address, port) pairs
    assert out.low != back.low  # ...and the entry can still tell the directions apart
    assert (out.sport, out.dport, out.flags) == (40000, 5001, 0x02)


def test_udp_icmp_and_ipv6_parse() -> None:
    u = parse(udp(C1, S1, 4000, 5001))
    assert isinstance(u, Packet) and u.proto == 17 and u.dport == 5001
    req, rep = parse(ping(C1, S1, ident=9)), parse(ping(S1, C1, ident=9, reply=True))
    assert isinstance(req, Packet) and isinstance(rep, Packet) and req.key == rep.key
    t6 = parse(tcp6("2001:db8::1", "2001:db8::2", 40000, 80, "S"))
    assert isinstance(t6, Packet) and t6.family == 6 and len(t6.key) == 37
    p6 = parse(ping6("2001:db8::1", "2001:db8::2"))
    assert isinstance(p6, Packet) and p6.proto == 58


def _ipv4(proto: int, l4: bytes, total: int | None = None, frag: int = 0x4000, ihl: int = 5) -> bytes:
    tot = 20 + len(l4) if total is None else total
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 0, frag, 64, proto, 0,
                      bytes((198, 18, 1, 10)), bytes((198, 18, 2, 10)))
    return hdr + l4


def test_bad_input_gives_the_right_reason() -> None:
    syn = tcp(C1, S1, 40000, 5001, "S")
    cases = {
        b"": Reason.TRUNCATED_IP,
        b"\x45\x00": Reason.TRUNCATED_IP,
        b"\x75" + bytes(39): Reason.BAD_IP_VERSION,
        syn[:30]: Reason.TRUNCATED_IP,  # total length says 40
        _ipv4(6, bytes(20), ihl=4): Reason.BAD_IP_HEADER,
        _ipv4(6, bytes(20), frag=0x2000): Reason.FRAGMENT,
        _ipv4(6, bytes(20), frag=0x0010): Reason.FRAGMENT,
        _ipv4(47, bytes(8)): Reason.UNSUPPORTED_PROTO,
        _ipv4(6, bytes(10)): Reason.TRUNCATED_TCP,
        _ipv4(6, struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 0x40, 0x02, 0, 0, 0)): Reason.BAD_TCP_HEADER,
        tcp(C1, S1, 40000, 5001, "SF"): Reason.BAD_TCP_FLAGS,
        tcp(C1, S1, 40000, 5001, ""): Reason.BAD_TCP_FLAGS,
        tcp(C1, S1, 40000, 5001, "FPU"): Reason.BAD_TCP_FLAGS,
        tcp(C1, S1, 0, 5001, "S"): Reason.BAD_PORT,
        _ipv4(17, bytes(4)): Reason.TRUNCATED_UDP,
        _ipv4(17, struct.pack("!HHHH", 1, 2, 200, 0)): Reason.BAD_UDP_LENGTH,
        _ipv4(1, bytes(4)): Reason.TRUNCATED_ICMP,
        _ipv4(1, bytes((13, 0)) + bytes(6)): Reason.UNSUPPORTED_ICMP,  # timestamp request
        # an extension header the payload length leaves no room for (tests/unit/test_engine_ipv6.py
        # has the real chains)
        bytes([0x60]) + bytes(5) + bytes([44]) + bytes(33): Reason.TRUNCATED_IP,
        bytes([0x60]) + bytes(5) + bytes([0]) + bytes(33): Reason.TRUNCATED_IP,
        bytes([0x60]) + bytes(5) + bytes([50]) + bytes(33): Reason.UNSUPPORTED_IPV6_EXT,  # ESP
    }
    for data, reason in cases.items():
        assert parse(data) == reason, data.hex()


def test_garbage_and_truncated_packets_are_dropped_and_counted() -> None:
    engine = Engine("n1", default_rules())
    syn = tcp(C1, S1, 40000, 5001, "S")
    for data in (b"", b"\x99garbage" * 3, syn[:24], syn[:39], _ipv4(6, bytes(20), frag=0x2000)):
        d = engine.process(data, 1.0)
        assert d.verdict is Verdict.DROP
    c = engine.counters
    assert c["truncated-ip"] == 3  # empty, and the two cut SYNs (shorter than their total length)
    assert c["bad-ip-version"] == 1
    assert c["fragment"] == 1
    assert c["dropped"] == 5
    assert not list(engine.rows("own"))


def test_a_truncated_packet_of_an_established_flow_is_still_dropped() -> None:
    engine = Engine("n1", default_rules())
    for p in (tcp(C1, S1, 40000, 5001, "S"), tcp(S1, C1, 5001, 40000, "SA"),
              tcp(C1, S1, 40000, 5001, "A")):
        engine.process(p, 1.0)
    data = tcp(C1, S1, 40000, 5001, "PA", payload=b"x" * 100)
    assert engine.process(data, 1.1).verdict is Verdict.ACCEPT
    d = engine.process(data[:60], 1.2)
    assert (d.verdict, d.reason) == (Verdict.DROP, "truncated-ip")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 3))
def test_random_bytes_never_raise_out_of_process(data: bytes, prefix: int) -> None:
    engine = Engine("n1", default_rules())
    # Make some inputs look like IPv4/IPv6 headers so the deeper parsers are reached too.
    heads = [b"", b"\x45\x00", b"\x45\x00\x00\x28", b"\x60\x00\x00\x00\x00\x10\x06"]
    d = engine.process(heads[prefix] + data, 1.0)
    assert d.verdict in (Verdict.ACCEPT, Verdict.DROP, Verdict.REJECT, Verdict.HOLD)
    assert engine.counters.get("engine-error", 0) == 0


_FLOW = [
    tcp(C1, S2, 40021, 21, "S", 1000),
    tcp(S2, C1, 21, 40021, "SA", 5000, 1001),
    tcp(C1, S2, 40021, 21, "A", 1001, 5001),
    tcp(C1, S2, 40021, 21, "PA", 1001, 5001, b"PORT 198,18,1,10,195,81\r\n"),
    tcp(S2, C1, 21, 40021, "PA", 5001, 1026, b"227 Entering Passive Mode (198,18,2,11,195,80).\r\n"),
]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_FLOW) - 1), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                  max_size=4), st.integers(0, 120))
def test_mutated_real_packets_never_raise(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    """Real packets of an FTP session with bytes changed and tails cut reach the deeper paths."""
    engine = Engine("n1", default_rules())
    for p in _FLOW[:3]:
        engine.process(p, 1.0)
    data = bytearray(_FLOW[which])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    engine.process(bytes(data[: max(1, len(data) - cut)]), 2.0)
    engine.expire(100.0)
    assert engine.counters.get("engine-error", 0) == 0


def test_a_gso_packet_cut_at_the_copy_range_is_parsed_from_its_headers() -> None:


    big = tcp(C1, S1, 40000, 5001, "A", payload=b"x" * 9000)
    cut = big[:3840]
    assert parse(cut) is Reason.TRUNCATED_IP  # without GSO hand-over a cut packet is broken
    p = parse(cut, capture_bytes=3840)
    assert isinstance(p, Packet) and (p.sport, p.dport) == (40000, 5001)
    assert parse(big[:3000], capture_bytes=3840) is Reason.TRUNCATED_IP  # cut elsewhere: still bad
