"""The engine's packet path: the table before the rules, pulls for unknown sessions, adoption, counters."""

from __future__ import annotations

import pytest

from engine.conntrack import EventKind, Timeouts
from engine.core import Engine, EngineError, SyncKind, Verdict
from engine.rules import RuleSet, default_rules, parse_rules
from sync.records import Scope
from tests.unit.engine_packets import C1, S1, TcpFlow, ping6, tcp6, udp


def _established(engine: Engine, f: TcpFlow, now: float = 1.0, mark: int = 0) -> None:
    for p in f.handshake():
        assert engine.process(p, now, mark).verdict is Verdict.ACCEPT


def test_established_flow_passes_on_the_table_without_the_rules() -> None:
    rules = default_rules()
    engine = Engine("n1", rules)
    f = TcpFlow(C1, S1, 40000, 5001)
    _established(engine, f)
    engine.process(udp(C1, S1, 4000, 5001), 1.0)
    engine.process(udp(S1, C1, 5001, 4000), 1.0)
    screened = rules.evaluations
    assert screened == 2  # the SYN and the first UDP datagram
    engine.rules = RuleSet([])  # from now on the rules would drop everything
    for i in range(50):
        assert engine.process(f.c2s(b"data %d" % i), 2.0).verdict is Verdict.ACCEPT
        assert engine.process(f.s2c(b"", "A"), 2.0).verdict is Verdict.ACCEPT
        assert engine.process(udp(S1, C1, 5001, 4000), 2.0).verdict is Verdict.ACCEPT
    assert rules.evaluations == screened
    assert engine.counters["established"] == 2 + 150 + 1  # SYN-ACK, ACK, data, first UDP reply
    # ...while a new connection now meets the (empty) rule set.
    d = engine.process(TcpFlow(C1, S1, 40001, 5001).syn(), 2.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "no-rule-match")


def test_new_entries_carry_owner_and_bucket() -> None:
    engine = Engine("n2", default_rules())
    engine.process(udp(C1, S1, 4000, 5001), 1.0, mark=7)
    (row,) = engine.rows("own")
    assert (row["owner"], row["bucket"], row["src"], row["dst"], row["kind"]) == (
        "n2", 7, f"{C1}:4000", f"{S1}:5001", "conn",
    )
    (ev,) = engine.drain_events()
    assert (ev.kind, ev.scope, ev.key.hex()) == (EventKind.NEW, Scope.NODE, row["key"])
    rec = engine.store.get(ev.key)
    assert rec is not None and (rec.owner, rec.bucket, rec.version) == ("n2", 7, row["version"])


def test_unknown_midstream_tcp_is_pulled_once_then_dropped() -> None:
    engine = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    first = engine.process(f.c2s(b"where am I"), 1.0)
    assert (first.verdict, first.reason) == (Verdict.HOLD, "hold-pull")
    second = engine.process(f.s2c(b"here"), 1.01)
    assert (second.verdict, second.sync_id) == (Verdict.HOLD, first.sync_id)
    (req,) = engine.drain_sync_requests()
    assert (req.kind, req.scope, req.sync_id) == (SyncKind.PULL, Scope.NODE, first.sync_id)
    assert first.sync_id is not None
    engine.sync_done(first.sync_id, False, 1.2)
    # The node re-runs the held packets: nobody had the session.
    for _ in range(3):
        d = engine.process(f.c2s(b"again"), 1.3)
        assert (d.verdict, d.reason) == (Verdict.DROP, "no-state")
    assert not engine.drain_sync_requests()


def test_a_pulled_session_arriving_from_a_peer_is_adopted() -> None:
    owner = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    _established(owner, f, mark=4)
    (rec,) = owner.store.records()

    taker = Engine("n2", default_rules(), pull_unknown=True)
    held = taker.process(f.c2s(b"mid-stream"), 2.0, mark=4)
    assert held.verdict is Verdict.HOLD and held.sync_id is not None
    assert taker.store.apply(rec)  # the StateReply's record
    assert [r["owner"] for r in taker.rows("backup")] == ["n1"]
    taker.sync_done(held.sync_id, True, 2.01)
    d = taker.process(f.c2s(b"mid-stream"), 2.02, mark=4)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")
    (row,) = taker.rows("own")
    assert row["owner"] == "n2" and row["version"] > rec.version and row["trigger"] == "adopted"
    assert [e.kind for e in taker.drain_events()] == [EventKind.UPDATE]
    assert taker.counters["adopted"] == 1 and taker.counters["released-by-ack"] == 1


def test_without_pull_unknown_midstream_tcp_is_dropped() -> None:
    engine = Engine("n1", default_rules(), pull_unknown=False)
    d = engine.process(TcpFlow(C1, S1, 40000, 5001).c2s(b"x"), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "no-state")


def test_sync_done_for_an_unknown_id_is_counted_not_raised() -> None:
    engine = Engine("n1", default_rules())
    engine.sync_done(999, True, 1.0)
    assert engine.counters["sync-done-unknown"] == 1


def test_rows_by_scope() -> None:
    engine = Engine("n1", parse_rules([{"name": "all", "action": "accept"}]))
    engine.process(udp(C1, S1, 4000, 5001), 1.0)
    peer = Engine("n3", default_rules())
    peer.process(udp(C1, S1, 4001, 5001), 1.0)
    for rec in peer.store.records():
        engine.store.apply(rec)
    engine.expire(3.5)
    own, backup = list(engine.rows("own")), list(engine.rows("backup"))
    assert [r["owner"] for r in own] == ["n1"] and [r["owner"] for r in backup] == ["n3"]
    assert own[0]["age_s"] == 2.5
    assert set(own[0]) >= {"key", "proto", "src", "dst", "state", "owner", "age_s", "trigger",
                           "version", "bucket", "kind"}
    assert list(engine.rows("common")) == []


def test_rows_with_a_limit_are_the_first_ones_and_the_table_may_change_meanwhile() -> None:
    engine = Engine("n1", parse_rules([{"name": "all", "action": "accept"}]))
    for port in range(4000, 4005):
        engine.process(udp(C1, S1, port, 5001), 1.0)
    everything = [r["key"] for r in engine.rows("own")]
    assert len(everything) == 5
    assert [r["key"] for r in engine.rows("own", 3)] == everything[:3]
    assert list(engine.rows("own", 0)) == [] and len(list(engine.rows("own", 9))) == 5
    rows = engine.rows("own", 2)
    first = next(rows)
    engine.process(udp(C1, S1, 4999, 5001), 1.0)  # a new entry while the rows are read
    assert [first["key"], next(rows)["key"]] == everything[:2]
    assert list(rows) == []


def test_ipv6_flows_are_screened_and_tracked_like_ipv4() -> None:
    rules = parse_rules([{"name": "v6-web", "action": "accept", "proto": "tcp",
                          "src": "2001:db8:1::/64", "dst": "2001:db8:2::/64", "dport": 80}])
    engine = Engine("n1", rules)
    c, s = "2001:db8:1::10", "2001:db8:2::10"
    for pkt in (tcp6(c, s, 40000, 80, "S"), tcp6(s, c, 80, 40000, "SA"), tcp6(c, s, 40000, 80, "A")):
        assert engine.process(pkt, 1.0).verdict is Verdict.ACCEPT
    (row,) = engine.rows("own")
    assert (row["src"], row["dst"], row["state"]) == (f"[{c}]:40000", f"[{s}]:80", "established")
    assert engine.process(tcp6(c, s, 40001, 81, "S"), 1.0).reason == "no-rule-match"
    assert engine.process(ping6(c, s), 1.0).reason == "no-rule-match"


def test_misuse_gives_an_engine_error() -> None:
    with pytest.raises(EngineError, match="established_s"):
        Timeouts(established_s=0)
    with pytest.raises(EngineError, match="'own', 'backup' or 'common'"):
        list(Engine("n1", default_rules()).rows("mine"))


def test_the_bench_runs_and_reports_its_figures() -> None:
    from engine.bench import run_engine_bench

    r = run_engine_bench(flows=20, packets=200)
    assert r["established_accepted"] == 200  # every packet of the established flows passed
    assert r["established_pps"] > 0 and r["new_connections_per_s"] > 0 and r["bytes_per_entry"] > 0


def test_a_packet_of_a_peer_connection_outside_our_buckets_passes_without_adoption() -> None:
    # During a handover the old owner forwards a few more packets of buckets it just gave up;
    # it must not take those connections back (the new owner already promoted them).
    owner = Engine("n1", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    _established(owner, f, mark=4)
    (rec,) = owner.store.records()
    old = Engine("n2", default_rules())
    old.owned_buckets = frozenset({2, 5})
    assert old.store.apply(rec)
    d = old.process(f.c2s(b"late"), 2.0, mark=4)
    assert d.verdict is Verdict.ACCEPT
    assert [r["owner"] for r in old.rows("backup")] == ["n1"] and list(old.rows("own")) == []
    assert old.drain_events() == [] and "adopted" not in old.counters
    old.owned_buckets = frozenset({4})
    old.process(f.c2s(b"ours now"), 2.1, mark=4)
    assert [r["owner"] for r in old.rows("own")] == ["n2"]
