"""The engine's fast path: an established flow's packet found with one slice in the table's fast
index (both directions), which holds exactly the entries that may take it."""

from __future__ import annotations

import pytest

from engine.conntrack import ConnState, directional_keys
from engine.core import Engine, Verdict
from engine.packet import TCP, UDP
from engine.rules import default_rules
from tests.unit.engine_packets import C1, C2, S1, S2, TcpFlow, tcp, udp


def _flow(engine: Engine, sport: int = 40000) -> TcpFlow:
    f = TcpFlow(C1, S1, sport, 5001)
    for p in f.handshake():
        assert engine.process(p, 1.0).verdict is Verdict.ACCEPT
    return f


def test_both_directions_of_an_established_flow_are_filed_under_the_packets_own_bytes() -> None:
    engine = Engine("n1", default_rules())
    f = _flow(engine)
    (e,) = engine.table.conns.values()
    fwd, rev = directional_keys(e.key)
    c2s, s2c = f.c2s(b"x"), f.s2c(b"", "A")
    assert {c2s[12:24], s2c[12:24]} == {fwd, rev}
    assert engine.table.fast[TCP] == {fwd: e, rev: e}
    before = engine._n_fast
    assert engine.process(c2s, 2.0).verdict is Verdict.ACCEPT
    assert engine.process(s2c, 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 2 and e.last_seen == 2.0


def test_a_fin_takes_the_full_path_and_the_flow_leaves_the_index() -> None:
    engine = Engine("n1", default_rules())
    f = _flow(engine)
    (e,) = engine.table.conns.values()
    before = engine._n_fast
    assert engine.process(f.c2s(b"", "FA"), 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before and e.state is ConnState.FIN_WAIT
    assert engine.table.fast[TCP] == {}
    assert engine.process(f.s2c(b"", "A"), 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before  # half-closed: still the full path


def test_deleted_expired_or_dropped_entries_leave_the_index() -> None:
    engine = Engine("n1", default_rules())
    _flow(engine, 40000)
    _flow(engine, 40001)
    assert len(engine.table.fast[TCP]) == 4
    engine.expire(1.0 + engine.timeouts.established_s + 1)
    assert engine.table.fast[TCP] == {} and not engine.table.conns
    _flow(engine, 40002)
    engine.store.drop_owner("n1")
    assert engine.table.fast[TCP] == {}


def test_an_assured_udp_flow_is_indexed_an_unreplied_one_is_not() -> None:
    engine = Engine("n1", default_rules())
    engine.process(udp(C1, S1, 4000, 5001), 1.0)
    assert engine.table.fast[UDP] == {}
    engine.process(udp(S1, C1, 5001, 4000), 1.0)
    assert len(engine.table.fast[UDP]) == 2
    before = engine._n_fast
    assert engine.process(udp(C1, S1, 4000, 5001), 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 1


def test_a_held_entry_leaves_the_index_until_released() -> None:
    engine = Engine("n1", default_rules())
    _flow(engine)
    (e,) = engine.table.conns.values()
    e.hold = 7
    engine.table.refresh(e)
    assert engine.table.fast[TCP] == {}
    e.hold = 0
    engine.table.refresh(e)
    assert len(engine.table.fast[TCP]) == 2


# Helper traffic, translated flows and RSTs are established-looking packets that must still
# take the full path: the FTP helper reads the control payload, NAT rewrites every packet, and
# an RST changes the state. The fast counter shows which path decided.
def test_an_ftp_control_flow_is_never_indexed_and_takes_the_full_path() -> None:
    engine = Engine("n1", default_rules())
    f = TcpFlow(C1, S2, 40021, 21)
    for p in [*f.handshake(), f.s2c(b"220 syncwall ftp ready\r\n")]:
        assert engine.process(p, 1.0).verdict is Verdict.ACCEPT
    (e,) = engine.table.conns.values()
    assert e.state is ConnState.ESTABLISHED and e.helper is not None
    assert engine.table.fast[TCP] == {}
    before = engine._n_fast
    for p in (f.c2s(b"USER anonymous\r\n"), f.s2c(b"", "A"), f.s2c(b"331 Please specify the password.\r\n")):
        assert engine.process(p, 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before and e.last_seen == 2.0
    assert engine.table.fast[TCP] == {}


def test_a_translated_flow_is_never_indexed_and_each_packet_is_rewritten() -> None:
    from engine.rules import DEFAULT_RULES, parse_rules

    gw_out = "198.18.2.1"
    snat = {"name": "c2-snat", "action": "accept", "proto": "tcp", "src": C2 + "/32",
            "dst": "198.18.2.0/24", "dport": "5000-5999", "snat": gw_out}
    engine = Engine("n1", parse_rules([snat, *DEFAULT_RULES]))
    for p in (tcp(C2, S1, 40000, 5001, "S", 100), tcp(S1, gw_out, 5001, 40000, "SA", 900, 101),
              tcp(C2, S1, 40000, 5001, "A", 101, 901)):
        assert engine.process(p, 1.0).verdict is Verdict.ACCEPT
    (e,) = engine.table.conns.values()
    assert e.state is ConnState.ESTABLISHED and e.nat is not None
    assert engine.table.fast[TCP] == {}
    before = engine._n_fast
    out = engine.process(tcp(C2, S1, 40000, 5001, "PA", 101, 901, b"get"), 2.0)
    back = engine.process(tcp(S1, gw_out, 5001, 40000, "A", 901, 104), 2.0)
    assert out.verdict is Verdict.ACCEPT and out.payload is not None
    assert out.payload[12:16] == bytes((198, 18, 2, 1))  # c2's source became the outside address
    assert back.verdict is Verdict.ACCEPT and back.payload is not None
    assert back.payload[16:20] == bytes((198, 18, 1, 11))  # and the reply goes back to c2
    assert engine._n_fast == before and engine.table.fast[TCP] == {}


@pytest.mark.parametrize("flags", ["R", "RA"])
def test_an_ipv4_rst_takes_the_full_path_and_the_flow_leaves_the_index(flags: str) -> None:
    engine = Engine("n1", default_rules())
    f = _flow(engine)
    (e,) = engine.table.conns.values()
    assert e.fast and len(engine.table.fast[TCP]) == 2
    before = engine._n_fast
    assert engine.process(f.c2s(b"", flags), 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before
    assert not e.fast and e.state is not ConnState.ESTABLISHED
    assert engine.table.fast[TCP] == {}


# IPv6: addresses and ports are one slice too (bytes 8..44) when TCP or UDP follows the fixed
# header directly; an extension header, a SYN, FIN or RST, or an unknown flow take the full path.
C6, S6 = "2001:2:0:1::a", "2001:2:0:2::a"
RULES6 = [{"name": "v6", "action": "accept", "proto": "tcp", "src": "2001:2:0:1::/64",
           "dst": "2001:2:0:2::/64", "dport": "5000-5999"},
          {"name": "v6u", "action": "accept", "proto": "udp", "src": "2001:2:0:1::/64",
           "dst": "2001:2:0:2::/64", "dport": "5000-5999"}]


def _tcp6(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes = b"",
          ext: bool = False) -> bytes:
    from scapy.layers.inet import TCP as STCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
    from scapy.packet import Raw

    ip = IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() if ext else IPv6(src=src, dst=dst)
    return bytes(ip / STCP(sport=sport, dport=dport, flags=flags) / Raw(payload))


def _udp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    from scapy.layers.inet import UDP as SUDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    return bytes(IPv6(src=src, dst=dst) / SUDP(sport=sport, dport=dport) / Raw(b"x"))


def test_an_ipv6_established_flow_takes_the_fast_path_both_ways() -> None:
    from engine.rules import parse_rules

    engine = Engine("n1", parse_rules(RULES6))
    for p in (_tcp6(C6, S6, 40000, 5001, "S"), _tcp6(S6, C6, 5001, 40000, "SA"),
              _tcp6(C6, S6, 40000, 5001, "A")):
        assert engine.process(p, 1.0).verdict is Verdict.ACCEPT
    (e,) = engine.table.conns.values()
    assert len(e.key) == 37 and e.state is ConnState.ESTABLISHED
    fwd, rev = directional_keys(e.key)
    c2s, s2c = _tcp6(C6, S6, 40000, 5001, "PA", b"x"), _tcp6(S6, C6, 5001, 40000, "A")
    assert {c2s[8:44], s2c[8:44]} == {fwd, rev}
    assert engine.table.fast[TCP] == {fwd: e, rev: e}
    before = engine._n_fast
    assert engine.process(c2s, 2.0).verdict is Verdict.ACCEPT
    assert engine.process(s2c, 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 2 and e.last_seen == 2.0
    # An extension header: the full path (it walks past it), same verdict.
    assert engine.process(_tcp6(C6, S6, 40000, 5001, "A", ext=True), 3.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 2 and e.last_seen == 3.0
    # A mid-flow packet of no known flow: the full path, which holds it and asks the peers.
    assert engine.process(_tcp6(C6, S6, 40001, 5001, "A"), 3.0).verdict is Verdict.HOLD
    assert engine._n_fast == before + 2
    # A FIN: the full path; the flow leaves the index.
    assert engine.process(_tcp6(C6, S6, 40000, 5001, "FA"), 4.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 2 and e.state is ConnState.FIN_WAIT
    assert engine.table.fast[TCP] == {}


def test_an_assured_ipv6_udp_flow_is_indexed_and_leaves_with_its_entry() -> None:
    from engine.rules import parse_rules

    engine = Engine("n1", parse_rules(RULES6))
    engine.process(_udp6(C6, S6, 4000, 5001), 1.0)
    assert engine.table.fast[UDP] == {}
    engine.process(_udp6(S6, C6, 5001, 4000), 1.0)
    assert len(engine.table.fast[UDP]) == 2
    before = engine._n_fast
    assert engine.process(_udp6(C6, S6, 4000, 5001), 2.0).verdict is Verdict.ACCEPT
    assert engine._n_fast == before + 1
    engine.expire(2.0 + engine.timeouts.udp_assured_s + 1)
    assert engine.table.fast[UDP] == {} and not engine.table.conns
