"""IPv6 in the engine: extension headers walked past, keys, ICMPv6, FTP's EPRT/EPSV (scapy-built packets)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    TCPerror,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from engine.core import Engine, Verdict
from engine.ftp import Expect, FtpHelper, Refuse
from engine.packet import ICMPV6, Packet, Reason, make_key, parse
from engine.rules import parse_rules

C = "2001:2:0:1::a"
S = "2001:2:0:2::a"
RULES = [
    {"name": "v6-tcp", "action": "accept", "proto": "tcp", "src": "2001:2:0:1::/64",
     "dst": "2001:2:0:2::/64", "dport": "5000-5999"},
    {"name": "v6-udp", "action": "accept", "proto": "udp", "src": "2001:2:0:1::/64",
     "dst": "2001:2:0:2::/64", "dport": "5000-5999"},
]


def _raw(pkt: ScapyPacket) -> bytes:
    return bytes(pkt)


def _key(sport: int, dport: int, proto: int = 6) -> bytes:
    return make_key(proto, ipaddress.ip_address(C).packed, sport.to_bytes(2, "big"),
                    ipaddress.ip_address(S).packed, dport.to_bytes(2, "big"))[0]


EXTENSIONS: dict[str, ScapyPacket] = {
    "hop-by-hop": IPv6ExtHdrHopByHop(),
    "routing, no segments left": IPv6ExtHdrRouting(segleft=0, addresses=["2001:2:0:3::1"]),
    "atomic fragment": IPv6ExtHdrFragment(offset=0, m=0, id=7),
    "destination options": IPv6ExtHdrDestOpt(),
    # scapy leaves AH's next header and length to the caller: 24 bytes is (4 + 2) words
    "authentication header": AH(nh=6, payloadlen=4, spi=1, icv=b"\0" * 12),
    "all of them": (IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(segleft=0)
                    / IPv6ExtHdrFragment(offset=0, m=0) / IPv6ExtHdrDestOpt()),
}


@pytest.mark.parametrize("name", list(EXTENSIONS))
def test_extension_headers_are_walked_to_the_transport_header(name: str) -> None:
    data = _raw(IPv6(src=C, dst=S) / EXTENSIONS[name] / TCP(sport=40000, dport=5001, flags="S", seq=9))
    p = parse(data)
    assert isinstance(p, Packet), p
    assert (p.family, p.proto, p.sport, p.dport, p.seq) == (6, 6, 40000, 5001, 9)
    assert p.key == _key(40000, 5001)
    assert p.payload_off == len(data)  # the TCP header ends the packet


def test_udp_payload_is_found_behind_extension_headers() -> None:
    data = _raw(IPv6(src=C, dst=S) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                / UDP(sport=40000, dport=5002) / Raw(b"hello"))
    p = parse(data)
    assert isinstance(p, Packet)
    assert p.payload(data) == b"hello" and p.key == _key(40000, 5002, 17)


@pytest.mark.parametrize(("pkt", "reason"), [
    (IPv6ExtHdrFragment(offset=0, m=1) / TCP(flags="S"), Reason.FRAGMENT),  # a first fragment
    (IPv6ExtHdrFragment(offset=185, m=0) / Raw(b"x" * 16), Reason.FRAGMENT),  # a later one
    (IPv6ExtHdrRouting(segleft=1, addresses=["2001:2:0:2::b"]) / TCP(flags="S"),
     Reason.UNSUPPORTED_IPV6_EXT),
    (IPv6ExtHdrHopByHop(nh=50) / Raw(b"\0" * 16), Reason.UNSUPPORTED_IPV6_EXT),  # ESP behind it
    (IPv6ExtHdrHopByHop(nh=59), Reason.UNSUPPORTED_PROTO),  # "no next header"
])
def test_fragments_and_unreadable_chains_are_dropped_with_their_reason(pkt: ScapyPacket,
                                                                       reason: Reason) -> None:
    assert parse(_raw(IPv6(src=C, dst=S) / pkt)) == reason


def test_a_truncated_or_endless_chain_is_dropped_not_read_past_its_end() -> None:
    whole = _raw(IPv6(src=C, dst=S) / IPv6ExtHdrDestOpt() / TCP(flags="S"))
    # Cut inside the extension header, with the payload length fixed to match: no read past it.
    cut = bytearray(whole[:44])
    cut[4:6] = (4).to_bytes(2, "big")
    assert parse(bytes(cut)) == Reason.TRUNCATED_IP
    # A length byte claiming more than the packet holds.
    bad = bytearray(whole)
    bad[41] = 200
    assert parse(bytes(bad)) == Reason.TRUNCATED_IP
    chain: ScapyPacket = IPv6ExtHdrDestOpt()
    for _ in range(12):
        chain = chain / IPv6ExtHdrDestOpt()
    assert parse(_raw(IPv6(src=C, dst=S) / chain / TCP(flags="S"))) == Reason.UNSUPPORTED_IPV6_EXT


def test_a_flow_with_extension_headers_is_the_same_connection_as_one_without() -> None:
    engine = Engine("n1", parse_rules(RULES))
    syn = _raw(IPv6(src=C, dst=S) / IPv6ExtHdrHopByHop() / TCP(sport=40000, dport=5001, flags="S"))
    synack = _raw(IPv6(src=S, dst=C) / TCP(sport=5001, dport=40000, flags="SA"))
    ack = _raw(IPv6(src=C, dst=S) / IPv6ExtHdrDestOpt() / TCP(sport=40000, dport=5001, flags="A"))
    assert [engine.process(x, 1.0).verdict for x in (syn, synack, ack)] == [Verdict.ACCEPT] * 3
    (row,) = engine.rows("own")
    assert row["state"] == "established" and row["src"] == f"[{C}]:40000"


def test_icmpv6_errors_belong_to_their_flow_and_neighbour_discovery_is_not_forwarded() -> None:
    engine = Engine("n1", parse_rules(RULES))
    syn = IPv6(src=C, dst=S) / TCP(sport=40000, dport=5001, flags="S")
    for x in (syn, IPv6(src=S, dst=C) / TCP(sport=5001, dport=40000, flags="SA")):
        assert engine.process(_raw(x), 1.0).verdict is Verdict.ACCEPT
    quoted = IPerror6(src=C, dst=S) / TCPerror(sport=40000, dport=5001)
    too_big = _raw(IPv6(src="2001:2:0:2::1", dst=C) / ICMPv6PacketTooBig(mtu=1280) / quoted)
    p = parse(too_big)
    assert isinstance(p, Packet) and p.proto == ICMPV6 and p.inner_key == _key(40000, 5001)
    assert engine.process(too_big, 1.0).verdict is Verdict.ACCEPT
    unknown = IPerror6(src=C, dst=S) / TCPerror(sport=40001, dport=5001)
    unreach = _raw(IPv6(src=S, dst=C) / ICMPv6DestUnreach(code=4) / unknown)
    assert engine.process(unreach, 1.0).verdict is Verdict.DROP
    # Neighbour discovery is link-local: the lab accepts it before the bucket split and it never
    # reaches the queue (netns/iptables.py); should one come, it is nothing to forward.
    for nd in (ICMPv6ND_NS(tgt=S), ICMPv6ND_NA(tgt=S)):
        assert parse(_raw(IPv6(src=C, dst="ff02::1:ff00:a", hlim=255) / nd)) == Reason.UNSUPPORTED_ICMP
    ping = _raw(IPv6(src=C, dst=S) / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(id=3))
    p = parse(ping)
    assert isinstance(p, Packet) and p.proto == ICMPV6 and p.sport == 3


def test_ftp_eprt_and_epsv_over_ipv6_expect_the_data_connection() -> None:
    client, server = ipaddress.ip_address(C).packed, ipaddress.ip_address(S).packed
    h = FtpHelper(client, server)
    (eprt,) = h.feed(True, 100, f"EPRT |2|{C}|41000|\r\n".encode())
    assert eprt == Expect(server, 0, client, 41000, "ftp-eprt")
    (epsv,) = h.feed(False, 500, b"229 Entering extended passive mode (|||30007|).\r\n")
    assert epsv == Expect(client, 0, server, 30007, "ftp-229")
    # An EPRT naming another host is a bounce, refused as PORT's is.
    (bounce,) = FtpHelper(client, server).feed(True, 1, b"EPRT |2|2001:2:0:2::66|41000|\r\n")
    assert bounce == Refuse(Reason.FTP_PORT_BOUNCE)
