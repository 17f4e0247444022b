"""The engine's tables as a StateStore: remote copies, tombstones, promotion, versions that never go back."""

from __future__ import annotations

import dataclasses

import msgpack

from engine.core import Engine, Verdict
from engine.rules import default_rules
from sync.records import NO_BUCKET, Record, Scope
from tests.unit.engine_packets import C1, C2, S1, S2, TcpFlow, tcp, udp


def _wire(rec: Record) -> Record:
    """The record as a peer receives it: data through msgpack, as the sync layer sends it."""
    data = msgpack.unpackb(msgpack.packb(rec.data), raw=False)
    return dataclasses.replace(rec, data=data)


def _own_flow(engine: Engine, sport: int, mark: int, now: float = 1.0) -> TcpFlow:
    f = TcpFlow(C1, S1, sport, 5001)
    for p in f.handshake():
        engine.process(p, now, mark)
    return f


def test_records_travel_and_become_backup_copies() -> None:
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    _own_flow(n1, 40000, mark=1)
    _own_flow(n1, 40001, mark=2)
    for rec in n1.store.records():
        assert n2.store.apply(_wire(rec))
    assert not n2.drain_events(), "remote records are not re-announced"
    assert {r.bucket for r in n2.store.records(owner="n1")} == {1, 2}
    assert next(iter(n2.store.records(buckets=[2]))).data == next(iter(n1.store.records(buckets=[2]))).data
    assert not list(n2.store.records(scope=Scope.COMMON))
    assert [r["state"] for r in n2.rows("backup")] == ["established"] * 2
    assert not list(n2.rows("own"))


def test_version_never_goes_backwards() -> None:
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    f = TcpFlow(C1, S1, 40000, 5001)
    n1.process(f.syn(), 1.0)
    old = n1.store.get(next(iter(n1.store.records())).key)
    assert old is not None
    n1.process(f.synack(), 1.1)
    new = n1.store.get(old.key)
    assert new is not None and new.version > old.version
    assert n2.store.apply(_wire(new))
    assert not n2.store.apply(_wire(old)), "an older version must not win"
    assert not n2.store.apply(_wire(new)), "nor the same one again"
    got = n2.store.get(old.key)
    assert got is not None and got.data[0] == "syn-recv"


def test_a_tombstone_keeps_a_late_insert_out() -> None:
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    n1.process(udp(C1, S1, 4000, 5001), 1.0)
    (rec,) = n1.store.records()
    n2.store.apply(_wire(rec))
    n1.expire(100.0)
    tomb = n1.store.get(rec.key)
    assert tomb is not None and tomb.deleted and tomb.version > rec.version
    assert n2.store.apply(tomb)
    assert not list(n2.store.records())
    got = n2.store.get(rec.key)
    assert got is not None and got.deleted
    assert not n2.store.apply(_wire(rec)), "the delete outranks the insert that arrives late"


def test_promote_takes_over_a_bucket_with_higher_versions() -> None:
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    flows = {mark: _own_flow(n1, 40000 + mark, mark) for mark in (1, 2)}
    for rec in n1.store.records():
        n2.store.apply(_wire(rec))
    before = {r.bucket: r.version for r in n2.store.records()}
    promoted = n2.store.promote([1], "n2")
    assert [(r.bucket, r.owner) for r in promoted] == [(1, "n2")]
    assert promoted[0].version > before[1]
    assert not n2.store.promote([1], "n2"), "already ours"
    # The promoted flow is ours now: its packets take the table, and it expires on our clock.
    d = n2.process(flows[1].c2s(b"after takeover"), 50.0, 1)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")
    assert [r["owner"] for r in n2.rows("backup")] == ["n1"]
    n2.expire(50.0 + 299.0)
    assert len(list(n2.rows("own"))) == 1
    n2.expire(50.0 + 300.0)
    assert not list(n2.rows("own"))
    assert len(list(n2.rows("backup"))) == 1, "backup copies wait for their owner's delete"


def test_drop_owner_forgets_only_that_node() -> None:
    n1, n2, n3 = (Engine(n, default_rules()) for n in ("n1", "n2", "n3"))
    _own_flow(n1, 40000, 1)
    _own_flow(n3, 40001, 3)
    _own_flow(n2, 40002, 2)
    for src in (n1, n3):
        for rec in src.store.records():
            n2.store.apply(_wire(rec))
    (b3,) = {r.bucket for r in n2.store.records(owner="n3")}
    assert n2.store.drop_owner("n3", keep_buckets={b3}) == 0  # a failed node's copies we back up
    assert n2.store.drop_owner("n1") == 1
    assert sorted(r.owner for r in n2.store.records()) == ["n2", "n3"]
    assert n2.store.drop_owner("n3", keep_buckets={b3 + 1}) == 1


def test_expectation_synced_to_another_node_admits_the_data_connection_there() -> None:
    """Claims 15-17: the control connection is on n1, the data connection hashes to n2."""
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    f = TcpFlow(C1, S2, 40021, 21)
    for p in f.handshake():
        n1.process(p, 1.0)
    d = n1.process(f.c2s(b"PORT 198,18,1,10,195,81\r\n"), 2.0)
    assert d.verdict is Verdict.HOLD
    (req,) = n1.drain_sync_requests()
    for key in req.keys:
        rec = n1.store.get(key)
        assert rec is not None and (rec.scope, rec.bucket) == (Scope.COMMON, NO_BUCKET)
        assert n2.store.apply(_wire(rec))
    assert d.sync_id is not None
    n1.sync_done(d.sync_id, True, 2.01)
    assert [r["kind"] for r in n2.rows("common")] == ["expect"]
    d2 = n2.process(tcp(S2, C1, 20, 50001, "S"), 2.1, 5)
    assert (d2.verdict, d2.reason) == (Verdict.ACCEPT, "related")
    # n2 used it up: its DELETE reaches n1, whose copy goes too.
    (gone,) = [e for e in n2.drain_events() if e.scope is Scope.COMMON]
    tomb = n2.store.get(gone.key)
    assert tomb is not None and tomb.deleted
    assert n1.store.apply(tomb)
    assert n1.process(tcp(S2, C1, 20, 50001, "S"), 2.2).verdict is Verdict.DROP


def test_a_remote_expectation_expires_quietly() -> None:
    n1, n2 = Engine("n1", default_rules()), Engine("n2", default_rules())
    f = TcpFlow(C2, S2, 40021, 21)
    for p in f.handshake():
        n1.process(p, 1.0)
    n1.process(f.s2c(b"227 Entering Passive Mode (198,18,2,11,195,80).\r\n"), 2.0)
    for rec in n1.store.records(scope=Scope.COMMON):
        n2.store.apply(_wire(rec))
    n2.expire(2.0 + 31.0)
    assert not list(n2.rows("common"))
    assert not n2.drain_events(), "only the creator announces the expiry"


def test_malformed_and_foreign_records() -> None:
    n2 = Engine("n2", default_rules())
    bad = Record(b"\x06" + bytes(12), Scope.NODE, "n1", 5, 1, ["no-such-state"])
    assert not n2.store.apply(bad)
    assert n2.store.rejected == 1
    other = Record(b"blocklist:198.18.2.66", Scope.COMMON, "n1", 3, NO_BUCKET, ["198.18.2.66"])
    assert n2.store.apply(other)
    assert n2.store.get(other.key) == other
    assert [r["kind"] for r in n2.rows("common")] == ["common"]
    assert not n2.store.apply(dataclasses.replace(other, version=2))
