"""Packets for the engine tests, crafted with scapy and handed to the engine as raw bytes."""

from __future__ import annotations

from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

C1 = "198.18.1.10"
C2 = "198.18.1.11"
S1 = "198.18.2.10"
S2 = "198.18.2.11"  # the FTP server
EVIL = "198.18.2.66"


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 0, ack: int = 0,
        payload: bytes = b"") -> bytes:
    pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def ping(src: str, dst: str, ident: int = 7, seq: int = 1, reply: bool = False) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident, seq=seq))


def ping6(src: str, dst: str, ident: int = 7, reply: bool = False) -> bytes:
    icmp = ICMPv6EchoReply(id=ident) if reply else ICMPv6EchoRequest(id=ident)
    return bytes(IPv6(src=src, dst=dst) / icmp)


def tcp6(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def icmp_unreachable_for(original: bytes, router: str) -> bytes:
    """An ICMP port-unreachable quoting `original` (an IPv4 TCP packet), sent back to its source."""
    ip = IP(original)
    quoted = IPerror(src=ip.src, dst=ip.dst, proto=6) / TCPerror(sport=ip[TCP].sport, dport=ip[TCP].dport)
    return bytes(IP(src=router, dst=ip.src) / ICMP(type=3, code=3) / quoted)


@dataclass
class TcpFlow:
    """Both ends of one TCP connection, keeping sequence numbers so payload segments are realistic."""

    client: str
    server: str
    sport: int
    dport: int
    cseq: int = 1000
    sseq: int = 5000
    sent: list[bytes] = field(default_factory=list)

    def syn(self) -> bytes:
        return tcp(self.client, self.server, self.sport, self.dport, "S", self.cseq)

    def synack(self) -> bytes:
        return tcp(self.server, self.client, self.dport, self.sport, "SA", self.sseq, self.cseq + 1)

    def ack(self) -> bytes:
        return tcp(self.client, self.server, self.sport, self.dport, "A", self.cseq + 1, self.sseq + 1)

    def handshake(self) -> list[bytes]:
        pkts = [self.syn(), self.synack(), self.ack()]
        self.cseq += 1
        self.sseq += 1
        return pkts

    def c2s(self, payload: bytes = b"", flags: str = "PA") -> bytes:
        p = tcp(self.client, self.server, self.sport, self.dport, flags, self.cseq, self.sseq, payload)
        self.cseq += len(payload) + (1 if "F" in flags else 0)
        return p

    def s2c(self, payload: bytes = b"", flags: str = "PA") -> bytes:
        p = tcp(self.server, self.client, self.dport, self.sport, flags, self.sseq, self.cseq, payload)
        self.sseq += len(payload) + (1 if "F" in flags else 0)
        return p
