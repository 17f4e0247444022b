"""NAT in one engine: rules, packet rewriting with valid checksums (checked by scapy), the port
allocator and its bucket partition, the HMARK hash, and the binding as record data."""

from __future__ import annotations

import random
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror

from engine.core import NAT_NO_PORT, Engine, Verdict
from engine.nat import PortPlan, allocate_port, checksum_adjust, hmark_bucket, rewrite
from engine.packet import make_key
from engine.rules import DEFAULT_RULES, RuleError, parse_rules
from tests.unit.engine_packets import C1, C2, S1, S2, tcp, udp

GW_OUT = "198.18.2.1"  # the cluster's outside address
GW_IN = "198.18.1.1"

NAT_RULES: list[dict[str, Any]] = [
    # c2 is translated to the cluster's outside address; c1 (the default rules) is not.
    {"name": "c2-snat", "action": "accept", "proto": "tcp", "src": C2 + "/32",
     "dst": "198.18.2.0/24", "dport": "5000-5999", "snat": GW_OUT},
    {"name": "c2-snat-udp", "action": "accept", "proto": "udp", "src": C2 + "/32",
     "dst": "198.18.2.0/24", "dport": "5000-5999", "snat": GW_OUT},
    # A port forward: the outside reaches s1's service at the cluster's address, port 8080.
    # s1 and the outside clients share a segment, so the source is translated too (see docs/nat.md).
    {"name": "web-forward", "action": "accept", "proto": "tcp", "dst": GW_OUT, "dport": 8080,
     "dnat": S1 + ":5000", "snat": GW_OUT},
    # The inside reaches the same service at the inside address: destination only.
    {"name": "inside-forward", "action": "accept", "proto": "tcp", "dst": GW_IN, "dport": 8080,
     "dnat": S1 + ":5000"},
    *DEFAULT_RULES,
]


def nat_engine(**kw: Any) -> Engine:
    return Engine("n1", parse_rules(NAT_RULES), **kw)


def valid(pkt: bytes) -> IP:
    """The packet as scapy reads it, after checking that its IP and L4 checksums are right."""
    ip = IP(pkt)
    fresh = IP(pkt)
    del fresh.chksum
    l4 = fresh[TCP] if TCP in fresh else fresh[UDP]
    if not (UDP in fresh and ip[UDP].chksum == 0):
        del l4.chksum
    again = IP(bytes(fresh))
    assert ip.chksum == again.chksum, "IP checksum"
    ours = ip[TCP].chksum if TCP in ip else ip[UDP].chksum
    theirs = again[TCP].chksum if TCP in again else again[UDP].chksum
    assert ours == theirs, "L4 checksum"
    return ip


# ---- rules ----------------------------------------------------------------------------------
def test_nat_fields_are_parsed() -> None:
    rs = parse_rules(NAT_RULES)
    snat, _, fwd, inside = rs.rules[:4]
    assert snat.snat == bytes((198, 18, 2, 1)) and snat.dnat is None and snat.nat
    assert fwd.dnat == (bytes((198, 18, 2, 10)), 5000) and fwd.snat is not None
    assert inside.snat is None and inside.nat
    assert not rs.rules[4].nat
    (keep,) = parse_rules([{"name": "k", "action": "accept", "proto": "udp", "dnat": S1}]).rules
    assert keep.dnat == (bytes((198, 18, 2, 10)), None)  # the port is kept


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"action": "drop", "proto": "tcp", "snat": GW_OUT}, "snat"),
        ({"action": "reject", "proto": "tcp", "dnat": S1}, "dnat"),
        ({"action": "accept", "proto": "icmp", "snat": GW_OUT}, "proto"),
        ({"action": "accept", "snat": GW_OUT}, "proto"),
        ({"action": "accept", "proto": "tcp", "snat": "198.18.2.0/24"}, "snat"),
        ({"action": "accept", "proto": "tcp", "snat": "2001:2::1"}, "snat"),
        ({"action": "accept", "proto": "tcp", "snat": 7}, "snat"),
        ({"action": "accept", "proto": "tcp", "dnat": "198.18.2.10:0"}, "dnat"),
        ({"action": "accept", "proto": "tcp", "dnat": "198.18.2.10:http"}, "dnat"),
        ({"action": "accept", "proto": "tcp", "dnat": "s1:5000"}, "dnat"),
        ({"action": "accept", "proto": "tcp", "dport": 21, "helper": "ftp", "snat": GW_OUT},
         "helper"),
        ({"action": "accept", "proto": "tcp", "src": "2001:2::/48", "snat": GW_OUT}, "src"),
    ],
)
def test_bad_nat_rules_name_the_field(rule: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules([{"name": "bad", **rule}])
    assert err.value.field == field and "'bad'" in str(err.value)


# ---- rewriting and checksums ----------------------------------------------------------------
def test_checksum_adjust_matches_a_full_recompute() -> None:
    rng = random.Random(1624)
    for _ in range(200):
        src, dst = rng.randbytes(4), rng.randbytes(4)
        new_src = rng.randbytes(4)
        sport, dport, new_sport = rng.randrange(1, 65536), rng.randrange(1, 65536), rng.randrange(1, 65536)
        payload = rng.randbytes(rng.randrange(0, 40))
        pkt = bytes(IP(src=_a(src), dst=_a(dst)) / TCP(sport=sport, dport=dport, flags="PA") / payload)
        out = rewrite(pkt, 20, 6, new_src, new_sport, dst, dport)
        ip = valid(out)
        assert (ip.src, ip[TCP].sport, ip.dst, ip[TCP].dport) == (_a(new_src), new_sport, _a(dst), dport)
        assert bytes(ip[TCP].payload) == payload


def test_checksum_adjust_of_no_change_is_the_same_checksum() -> None:
    assert checksum_adjust(0x1234, bytes(8), bytes(8)) == 0x1234


def test_udp_rewrite_keeps_a_valid_checksum_and_keeps_none_as_none() -> None:
    pkt = udp(C2, S1, 40000, 5001, b"hello")
    out = rewrite(pkt, 20, 17, bytes((198, 18, 2, 1)), 41000, bytes((198, 18, 2, 10)), 5001)
    ip = valid(out)
    assert (ip.src, ip[UDP].sport) == (GW_OUT, 41000) and bytes(ip[UDP].payload) == b"hello"
    raw = bytearray(pkt)
    raw[26:28] = b"\x00\x00"  # UDP without a checksum
    out0 = rewrite(bytes(raw), 20, 17, bytes((198, 18, 2, 1)), 41000, bytes((198, 18, 2, 10)), 5001)
    assert out0[26:28] == b"\x00\x00" and IP(out0)[UDP].sport == 41000
    valid(out0)  # the IP header checksum is still right


# ---- HMARK and the allocator ----------------------------------------------------------------
# Marks the kernel's HMARK gave UDP 198.18.2.1:PORT -> 198.18.2.10:5001 (--hmark-tuple
# src,dst,sport,dport,proto --hmark-mod 6 --hmark-offset 1 --hmark-rnd 0x1d2c3b4a), read back
# through `-m mark --mark N` counters in a scratch namespace on this lab's kernel (6.18).
KERNEL_MARKS = {40000: 6, 40001: 5, 40002: 4, 40003: 4, 40004: 3, 40005: 2, 40006: 2,
                40007: 4, 50000: 6, 61234: 2}


def test_hmark_agrees_with_the_kernel() -> None:
    gw = bytes((198, 18, 2, 1))
    for port, want in KERNEL_MARKS.items():
        assert hmark_bucket(17, gw, port, S1b, 5001, 0x1D2C3B4A, 6) == want, port
        assert hmark_bucket(17, S1b, 5001, gw, port, 0x1D2C3B4A, 6) == want, "the reply's mark"


def test_hmark_is_symmetric_and_in_range() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a, b = rng.randbytes(4), rng.randbytes(4)
        pa, pb = rng.randrange(1, 65536), rng.randrange(1, 65536)
        m = hmark_bucket(6, a, pa, b, pb, 0xABCDEF, 12)
        assert m == hmark_bucket(6, b, pb, a, pa, 0xABCDEF, 12)
        assert 1 <= m <= 12
    marks = {hmark_bucket(17, C2b, p, S1b, 5001, 99, 12) for p in range(30000, 30400)}
    assert marks == set(range(1, 13)), "the hash spreads over every bucket"


def test_allocator_keeps_the_port_when_free_and_skips_used_tuples() -> None:
    plan = PortPlan()
    gw, s1 = bytes((198, 18, 2, 1)), S1b
    used: set[bytes] = set()
    assert allocate_port(plan, 6, gw, s1, 5001, 40000, 0, used.__contains__) == 40000
    used.add(make_key(6, gw, (40000).to_bytes(2, "big"), s1, (5001).to_bytes(2, "big"))[0])
    assert allocate_port(plan, 6, gw, s1, 5001, 40000, 0, used.__contains__) == 40001
    # A port out of the range starts the search at its bottom.
    assert allocate_port(PortPlan(lo=2000, hi=2010), 6, gw, s1, 5001, 80, 0, used.__contains__) == 2000


def test_allocator_gives_up_when_every_port_is_taken() -> None:
    plan = PortPlan(lo=3000, hi=3003)
    assert allocate_port(plan, 6, S1b, S1b, 5001, 3000, 0, lambda _k: True) is None


@pytest.mark.parametrize("rnd", [None, 0x5EED])
def test_buckets_never_share_a_translated_tuple(rnd: int | None) -> None:
    """Each bucket's owner allocates alone (here: one engine per bucket, no shared knowledge),
    yet no translated tuple is given twice: the port sets of the buckets are disjoint."""
    plan = PortPlan(buckets=6, rnd=rnd)
    gw = bytes((198, 18, 2, 1))
    seen: dict[bytes, int] = {}
    for bucket in range(1, 7):
        used: set[bytes] = set()
        for i in range(150):
            port = allocate_port(plan, 6, gw, S1b, 5001, 40000 + i % 7, bucket, used.__contains__)
            assert port is not None
            key = make_key(6, gw, port.to_bytes(2, "big"), S1b, (5001).to_bytes(2, "big"))[0]
            assert key not in used and seen.get(key, bucket) == bucket
            used.add(key)
            seen[key] = bucket
            if rnd is not None:  # the reply hashes into the connection's own bucket
                assert hmark_bucket(6, S1b, 5001, gw, port, rnd, 6) == bucket
            else:
                assert (port - plan.lo) % 6 == bucket - 1
    assert len(seen) == 6 * 150


# ---- one engine -----------------------------------------------------------------------------
def test_c2_is_translated_to_the_outside_address_and_c1_is_not() -> None:
    eng = nat_engine()
    d = eng.process(tcp(C2, S1, 40000, 5001, "S", 100), 1.0, 0)
    assert d.verdict is Verdict.ACCEPT and d.payload is not None
    out = valid(d.payload)
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (GW_OUT, 40000, S1, 5001)
    assert out[TCP].seq == 100 and out[TCP].flags == "S"
    # s1 answers the cluster's address; the reply goes back to c2.
    d2 = eng.process(tcp(S1, GW_OUT, 5001, 40000, "SA", 900, 101), 1.1, 0)
    assert d2.verdict is Verdict.ACCEPT and d2.payload is not None
    back = valid(d2.payload)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (S1, 5001, C2, 40000)
    d3 = eng.process(tcp(C2, S1, 40000, 5001, "A", 101, 901), 1.2, 0)
    assert d3.payload is not None and valid(d3.payload).src == GW_OUT
    (row,) = eng.rows("own")
    assert row["state"] == "established" and row["nat"] == f"{GW_OUT}:40000 -> {S1}:5001"
    # Established translated packets are still rewritten (never the untranslated fast path).
    d4 = eng.process(tcp(S1, GW_OUT, 5001, 40000, "PA", 901, 101, b"data"), 1.3, 0)
    assert d4.payload is not None and bytes(valid(d4.payload)[TCP].payload) == b"data"
    # c1 is untranslated: no payload to set.
    for i, flags in enumerate(("S", "SA", "A")):
        src, dst, sp, dp = (C1, S1, 40000, 5001) if flags != "SA" else (S1, C1, 5001, 40000)
        d5 = eng.process(tcp(src, dst, sp, dp, flags), 2.0 + i, 0)
        assert d5.verdict is Verdict.ACCEPT and d5.payload is None
    assert eng.counters["nat-bindings"] == 1


def test_two_clients_with_the_same_port_get_different_translated_ports() -> None:
    rules = [{**NAT_RULES[0], "src": "198.18.1.0/24"}]
    eng = Engine("n1", parse_rules(rules))
    a = eng.process(tcp(C1, S1, 40000, 5001, "S"), 1.0, 0)
    b = eng.process(tcp(C2, S1, 40000, 5001, "S"), 1.0, 0)
    assert a.payload is not None and b.payload is not None
    pa, pb = IP(a.payload)[TCP].sport, IP(b.payload)[TCP].sport
    assert pa == 40000 and pb != pa
    back = eng.process(tcp(S1, GW_OUT, 5001, pb, "SA"), 1.1, 0)
    assert back.payload is not None and IP(back.payload).dst == C2


def test_a_port_forward_reaches_s1() -> None:
    eng = nat_engine()
    d = eng.process(tcp(S2, GW_OUT, 33000, 8080, "S"), 1.0, 0)
    assert d.payload is not None
    out = valid(d.payload)
    assert (out.src, out.dst, out[TCP].dport) == (GW_OUT, S1, 5000)
    d2 = eng.process(tcp(S1, GW_OUT, 5000, out[TCP].sport, "SA"), 1.1, 0)
    assert d2.payload is not None
    back = valid(d2.payload)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (GW_OUT, 8080, S2, 33000)


def test_a_destination_only_forward_keeps_the_source() -> None:
    eng = nat_engine()
    d = eng.process(tcp(C1, GW_IN, 40001, 8080, "S"), 1.0, 0)
    assert d.payload is not None
    out = valid(d.payload)
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (C1, 40001, S1, 5000)
    d2 = eng.process(tcp(S1, C1, 5000, 40001, "SA"), 1.1, 0)
    assert d2.payload is not None
    back = valid(d2.payload)
    assert (back.src, back[TCP].sport, back.dst, back[TCP].dport) == (GW_IN, 8080, C1, 40001)


def test_udp_is_translated_both_ways() -> None:
    eng = nat_engine()
    d = eng.process(udp(C2, S1, 40000, 5001, b"ask"), 1.0, 0)
    assert d.payload is not None and valid(d.payload).src == GW_OUT
    d2 = eng.process(udp(S1, GW_OUT, 5001, 40000, b"answer"), 1.1, 0)
    assert d2.payload is not None
    back = valid(d2.payload)
    assert (back.dst, back[UDP].dport, bytes(back[UDP].payload)) == (C2, 40000, b"answer")
    (row,) = eng.rows("own")
    assert row["state"] == "assured"


def test_no_free_port_is_a_counted_drop() -> None:
    eng = nat_engine(nat_ports=PortPlan(lo=40000, hi=40000))
    assert eng.process(tcp(C2, S1, 40000, 5001, "S"), 1.0, 0).payload is not None
    d = eng.process(tcp(C2, S1, 40001, 5002, "S"), 1.0, 0)
    assert d.payload is not None  # another destination: the same port is free for it
    d2 = eng.process(tcp(C2, S1, 40002, 5001, "S"), 1.0, 0)
    assert (d2.verdict, d2.reason) == (Verdict.DROP, NAT_NO_PORT)
    assert eng.counters[NAT_NO_PORT] == 1


def test_an_unsolicited_packet_to_a_free_translated_port_is_not_admitted() -> None:
    eng = nat_engine()
    d = eng.process(tcp(S1, GW_OUT, 5001, 40000, "SA"), 1.0, 0)
    assert d.verdict is not Verdict.ACCEPT  # no state: dropped or held for a pull, never passed


def test_expiry_frees_the_translated_tuple() -> None:
    eng = nat_engine()
    eng.process(tcp(C2, S1, 40000, 5001, "S"), 1.0, 0)
    assert eng.table.nat_keys
    eng.expire(1.0 + eng.timeouts.syn_s + 1)
    assert not eng.table.nat_keys and list(eng.rows("own")) == []
    # The same client port gets the same translated port again.
    d = eng.process(tcp(C2, S1, 40000, 5001, "S"), 20.0, 0)
    assert d.payload is not None and IP(d.payload)[TCP].sport == 40000


def test_the_binding_travels_in_the_record() -> None:
    owner, peer = nat_engine(), Engine("n2", parse_rules(NAT_RULES))
    owner.process(tcp(C2, S1, 40000, 5001, "S"), 1.0, 3)
    key = make_key(6, C2b, (40000).to_bytes(2, "big"), S1b, (5001).to_bytes(2, "big"))[0]
    rec = owner.store.get(key)
    assert rec is not None and "nat" in rec.data[6]
    assert peer.store.apply(rec)
    (copy,) = list(peer.backups)
    assert copy.nat is not None and copy.nat.record() == owner.table.conns[key].nat.record()  # type: ignore[union-attr]
    assert peer.table.nat_keys == owner.table.nat_keys
    # The owner deletes it: the copy and its translated tuple go.
    owner.expire(100.0)
    gone = owner.store.get(key)
    assert gone is not None and gone.deleted and peer.store.apply(gone)
    assert not peer.table.nat_keys and len(peer.backups) == 0


def test_a_bad_binding_in_a_record_is_refused() -> None:
    owner, peer = nat_engine(), Engine("n2", parse_rules(NAT_RULES))
    owner.process(tcp(C2, S1, 40000, 5001, "S"), 1.0, 3)
    (rec,) = list(owner.store.records())
    rec.data[6][rec.data[6].index("nat") + 1] = [b"\x01", 0, b"\x02", 5]
    assert not peer.store.apply(rec) and peer.store.rejected == 1


C2b = bytes((198, 18, 1, 11))
S1b = bytes((198, 18, 2, 10))


def _a(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _valid_icmp_error(pkt: bytes) -> IP:
    """An ICMP error as scapy reads it, with its outer IP and ICMP checksums checked."""
    ip = IP(pkt)
    fresh = IP(pkt)
    del fresh.chksum
    del fresh[ICMP].chksum
    again = IP(bytes(fresh))
    assert (ip.chksum, ip[ICMP].chksum) == (again.chksum, again[ICMP].chksum)
    return ip


def test_icmp_errors_about_translated_packets_are_translated_too() -> None:
    eng = nat_engine()
    syn = eng.process(udp(C2, S1, 40000, 5001, b"ask"), 1.0, 0)
    assert syn.payload is not None
    # s1 refuses the translated datagram: the error it sends the cluster goes on to c2,
    # quoting c2's own datagram.
    err = bytes(IP(src=S1, dst=GW_OUT) / ICMP(type=3, code=3) / IP(syn.payload)[IP])
    d = eng.process(err, 1.1, 0)
    assert d.verdict is Verdict.ACCEPT and d.reason == "related-icmp" and d.payload is not None
    out = _valid_icmp_error(d.payload)
    assert (out.src, out.dst) == (S1, C2)
    quoted = out[IPerror]
    assert (quoted.src, quoted.dst, quoted[UDPerror].sport, quoted[UDPerror].dport) == (C2, S1, 40000, 5001)
    q_fresh = IP(bytes(quoted))
    del q_fresh.chksum
    assert IP(bytes(q_fresh)).chksum == quoted.chksum, "the quoted header's checksum"
    # A router on the way to s1 says the same: its own address stays the source.
    err2 = bytes(IP(src="198.18.2.254", dst=GW_OUT) / ICMP(type=11) / IP(syn.payload)[IP])
    d2 = eng.process(err2, 1.2, 0)
    assert d2.payload is not None
    assert (IP(d2.payload).src, IP(d2.payload).dst) == ("198.18.2.254", C2)
    # c2 refuses a reply: its error about s1 -> c2 leaves quoting s1 -> the cluster's port.
    rep = eng.process(udp(S1, GW_OUT, 5001, 40000, b"answer"), 1.3, 0)
    assert rep.payload is not None
    err3 = bytes(IP(src=C2, dst=S1) / ICMP(type=3, code=3) / IP(rep.payload)[IP])
    d3 = eng.process(err3, 1.4, 0)
    assert d3.payload is not None
    out3 = _valid_icmp_error(d3.payload)
    assert (out3.src, out3.dst, out3[IPerror].dst, out3[UDPerror].dport) == (GW_OUT, S1, GW_OUT, 40000)


def test_an_icmp_error_quoting_an_unknown_tuple_is_dropped() -> None:
    eng = nat_engine()
    eng.process(udp(C2, S1, 40000, 5001), 1.0, 0)
    err = bytes(IP(src=S1, dst=GW_OUT) / ICMP(type=3, code=3) / IP(udp(GW_OUT, S1, 40999, 5001))[IP])
    assert eng.process(err, 1.1, 0).verdict is Verdict.DROP
