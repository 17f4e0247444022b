"""The engine's fast path: an established flow's packet found with one slice in the table's fast
index (both directions), which holds exactly the entries that may take it."""

from __future__ import annotations

from engine.conntrack import ConnState, directional_keys
from engine.core import Engine, Verdict
from engine.packet import TCP, UDP
from engine.rules import default_rules
from tests.unit.engine_packets import C1, S1, TcpFlow, udp


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
