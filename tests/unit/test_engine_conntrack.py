"""Connection tracking: TCP states both ways, UDP/ICMP pseudo-states, events, expiry on a fake clock."""

from __future__ import annotations

from engine.conntrack import EventKind, Timeouts
from engine.core import Engine, Verdict
from engine.rules import default_rules
from sync.records import Scope
from tests.unit.engine_packets import C1, S1, TcpFlow, icmp_unreachable_for, ping, tcp, udp


def _state(engine: Engine) -> str:
    rows = list(engine.rows("own"))
    assert len(rows) == 1, rows
    return str(rows[0]["state"])


def test_tcp_state_follows_a_real_handshake_and_teardown() -> None:
    engine = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    seen = []
    for p in [*f.handshake(), f.c2s(b"hello"), f.s2c(b"", "A"), f.s2c(b"world"),
              f.c2s(b"", "FA"), f.s2c(b"", "A"), f.s2c(b"", "FA"), f.c2s(b"", "A")]:
        assert engine.process(p, 1.0).verdict is Verdict.ACCEPT
        seen.append(_state(engine))
    assert seen == [
        "syn-sent", "syn-recv", "established", "established", "established", "established",
        "fin-wait", "fin-wait", "last-ack", "time-wait",
    ]
    kinds = [(ev.kind, ev.scope) for ev in engine.drain_events()]
    # NEW on the SYN, one UPDATE per state change, nothing for ordinary data packets.
    assert kinds == [(EventKind.NEW, Scope.NODE)] + [(EventKind.UPDATE, Scope.NODE)] * 5


def test_responder_closing_first_passes_close_wait() -> None:
    engine = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        engine.process(p, 1.0)
    engine.process(f.s2c(b"", "FA"), 1.0)
    assert _state(engine) == "close-wait"
    engine.process(f.c2s(b"still talking"), 1.0)  # half-closed: the other half still flows
    assert _state(engine) == "close-wait"
    engine.process(f.c2s(b"", "FA"), 1.0)
    assert _state(engine) == "last-ack"


def test_rst_closes_and_a_new_syn_reopens_the_tuple() -> None:
    engine = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        engine.process(p, 1.0)
    v_before = next(iter(engine.rows("own")))["version"]
    engine.process(f.s2c(b"", "R"), 2.0)
    assert _state(engine) == "closed"
    engine.drain_events()
    d = engine.process(f.syn(), 3.0)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "new")
    assert _state(engine) == "syn-sent"
    assert [ev.kind for ev in engine.drain_events()] == [EventKind.DELETE, EventKind.NEW]
    assert next(iter(engine.rows("own")))["version"] > v_before


def test_udp_and_icmp_pseudo_states() -> None:
    engine = Engine("n1", default_rules())
    engine.process(udp(C1, S1, 4000, 5001), 1.0)
    assert _state(engine) == "unreplied"
    engine.process(udp(C1, S1, 4000, 5001), 1.0)
    assert _state(engine) == "unreplied"
    engine.process(udp(S1, C1, 5001, 4000), 1.0)
    assert _state(engine) == "assured"
    other = Engine("n1", default_rules())
    other.process(ping(C1, S1, ident=3), 1.0)
    assert _state(other) == "echo-request"
    assert other.process(ping(S1, C1, ident=3, reply=True), 1.0).verdict is Verdict.ACCEPT
    assert _state(other) == "echo-replied"
    assert other.process(ping(S1, C1, ident=4, reply=True), 1.0).verdict is Verdict.DROP


def test_entries_expire_on_time_with_a_fake_clock() -> None:
    t = Timeouts(syn_s=5, established_s=100, udp_s=30, icmp_s=10)
    engine = Engine("n1", default_rules(), t)
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        engine.process(p, 0.0)
    engine.process(udp(C1, S1, 4000, 5001), 0.0)
    engine.process(ping(C1, S1), 0.0)
    half = TcpFlow(C1, S1, 40001, 5002)
    engine.process(half.syn(), 0.0)  # never answered
    engine.drain_events()

    engine.expire(4.9)
    assert len(list(engine.rows("own"))) == 4
    engine.expire(5.0)  # the unanswered SYN
    engine.expire(10.0)  # the ping
    assert {r["proto"] for r in engine.rows("own")} == {"tcp", "udp"}
    engine.process(f.c2s(b"keepalive"), 60.0)  # traffic pushes the deadline on
    engine.expire(30.0)
    assert [r["proto"] for r in engine.rows("own")] == ["tcp"]
    engine.expire(159.9)
    assert len(list(engine.rows("own"))) == 1
    engine.expire(160.0)
    assert not list(engine.rows("own"))
    events = engine.drain_events()
    assert [ev.kind for ev in events] == [EventKind.DELETE] * 4
    assert engine.counters["expired"] == 4
    # Gone means gone: the flow's next packet is unknown mid-stream TCP.
    late = engine.process(f.c2s(b"late"), 161.0)
    assert (late.verdict, late.reason) == (Verdict.HOLD, "hold-pull")


def test_closing_states_expire_sooner() -> None:
    engine = Engine("n1", default_rules(), Timeouts(closing_s=2, established_s=100))
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        engine.process(p, 0.0)
    engine.process(f.s2c(b"", "R"), 1.0)
    engine.expire(2.9)
    assert len(list(engine.rows("own"))) == 1
    engine.expire(3.0)
    assert not list(engine.rows("own"))


def test_icmp_error_about_a_tracked_connection_is_related() -> None:
    engine = Engine("n1", default_rules())
    syn = tcp(C1, S1, 40000, 5001, "S")
    engine.process(syn, 1.0)
    d = engine.process(icmp_unreachable_for(syn, S1), 1.0)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "related-icmp")
    stray = tcp(C1, S1, 40009, 5001, "S")
    d = engine.process(icmp_unreachable_for(stray, S1), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "icmp-error-no-state")


def test_quiet_states_announce_a_tcp_connection_once_established_and_once_gone() -> None:
    from engine.conntrack import TRANSIENT_TCP_STATES, EventKind
    from engine.core import Engine
    from engine.rules import default_rules
    from tests.unit.engine_packets import C1, S1, TcpFlow

    e = Engine("n1", default_rules(), quiet_states=TRANSIENT_TCP_STATES)
    f = TcpFlow(C1, S1, 40000, 5001)
    for i, pkt in enumerate(f.handshake()):
        e.process(pkt, 1.0 + i * 0.01)
    assert [ev.kind for ev in e.drain_events()] == [EventKind.NEW]  # at established, not at SYN
    closing = [f.c2s(b"", "FA"), f.s2c(b"", "A"), f.s2c(b"", "FA"), f.c2s(b"", "A")]
    for i, pkt in enumerate(closing):
        e.process(pkt, 2.0 + i * 0.01)
    assert e.drain_events() == []  # closing states stay local
    e.expire(1000.0)
    assert [ev.kind for ev in e.drain_events()] == [EventKind.DELETE]

    refused = TcpFlow(C1, S1, 40001, 5001)
    e.process(refused.syn(), 3.0)
    e.process(refused.s2c(b"", "RA"), 3.01)
    e.expire(1000.0)
    assert e.drain_events() == [], "a connection nobody heard of is not deleted on the wire"


def test_entries_queued_in_one_expiry_slot_share_its_number() -> None:
    from engine.synthetic import fill_synthetic, synthetic_key

    t = Engine("n1", default_rules()).table
    fill_synthetic(t, 0, 3, [0], 10.0)
    a, b, c = (t.conns[synthetic_key(i)] for i in range(3))
    assert a.sched == int((10.0 + t.timeouts.established_s) * 8)
    # One int object for the slot, not a number per entry (memory: issue 13).
    assert a.sched is b.sched is c.sched


def test_an_entry_filed_again_sooner_expires_once_at_its_new_deadline() -> None:
    engine = Engine("n1", default_rules(), Timeouts(established_s=100, half_closed_s=60))
    table = engine.table
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        engine.process(p, 0.0)
    (e,) = table.conns.values()
    engine.expire(10.0)  # the SYN's deadline passed: filed again at established's, 100
    engine.process(f.c2s(b"", "FA"), 11.0)  # fin-wait: due at 71, sooner
    engine.process(f.s2c(b"still talking"), 50.0)  # the other half flows: due at 110 now
    engine.expire(71.0)
    assert table.conns.get(e.key) is e
    engine.expire(100.0)  # its first filing, stale since the FIN
    assert table.conns.get(e.key) is e
    assert sum(len(due) for due in table._wheel.values()) == 1, "queued once, at 110"
    engine.expire(109.9)
    assert table.conns.get(e.key) is e
    engine.expire(110.0)
    assert e.key not in table.conns
    assert engine.counters["expired"] == 1
    assert not table._wheel and not table._slots
