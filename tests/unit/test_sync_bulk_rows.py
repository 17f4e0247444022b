"""A bulk resync's records without a Record each: a store lays them out as wire arrays
(StateStore.wire_rows) and applies received ones (StateStore.apply_rows). Both must give
exactly what the Record path gives: the same bytes on the wire, the same tables after."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from engine.core import Engine
from engine.nat import NatBinding
from engine.packet import split_key
from engine.rules import default_rules
from engine.store import EngineStore
from engine.synthetic import fill_synthetic
from sync.events import ResyncComplete
from sync.records import NO_BUCKET, MemoryStore, Record, Scope
from sync.sim import SimCluster
from sync.wire import (
    BadFrame,
    BadFrameKind,
    batch_records,
    batch_rows,
    record_of_row,
    record_to_wire,
    records_from_blob,
    rows_from_blob,
)
from tests.unit.engine_packets import C1, S1, S2, TcpFlow, udp

MISSING = b"\x06" + bytes(12)


def _pack(a: Any) -> bytes:
    packed: bytes = msgpack.packb(a, use_bin_type=True)
    return packed


def _varied() -> tuple[Engine, list[bytes]]:
    """n1 holding one of every kind of record a bulk resync may carry, and their keys."""
    n1 = Engine("n1", default_rules())
    fill_synthetic(n1.table, 0, 50, [1, 2, 3], 5.0)  # plain established entries
    for p in TcpFlow(C1, S1, 40000, 5001).handshake():  # a real one, later last_seen
        n1.process(p, 6.0, 1)
    ftp = TcpFlow(C1, S2, 40021, 21)  # a connection with its FTP helper, and an expectation
    for p in ftp.handshake():
        n1.process(p, 7.0, 2)
    n1.process(ftp.c2s(b"PORT 198,18,1,10,195,81\r\n"), 7.5, 2)
    n1.process(udp(C1, S1, 4000, 5001), 8.0, 3)  # UDP, unreplied
    conns = n1.table.conns
    plain = [k for k, e in conns.items() if e.helper is None]
    conns[plain[0]].extra = {"master": b"\x01" * 13, "n": 3}  # extras
    conns[plain[2]].last_seen = 9.5  # idle for a while: created and last seen apart
    conns[plain[3]].orig_low = False
    e = conns[plain[1]]
    proto, a, ap, b, bp = split_key(e.key)
    e.nat = NatBinding(proto, (a, ap, b, bp), bytes((198, 18, 2, 1)), 61000, b, bp)  # translated
    # A peer's copy, a common record and a tombstone.
    copy = Record(b"\x06" + bytes((198, 18, 1, 9)) + (999).to_bytes(2, "big") + bytes(6), Scope.NODE,
                  "n3", 11, 4, ["established", True, 1.0, 2.0, "", [], [], "new"])
    assert n1.store.apply(copy)
    block = Record(b"blocklist:198.18.2.66", Scope.COMMON, "n3", 3, NO_BUCKET, ["198.18.2.66"])
    assert n1.store.apply(block)
    dead = next(iter(n1.table.conns))
    n1.table.bury(dead, 99, "n1", Scope.NODE, 1, 9.0)
    del n1.table.conns[dead]
    keys = n1.store.keys()
    assert any(n1.store.get(k) is not None and n1.store.get(k).scope is Scope.COMMON  # type: ignore[union-attr]
               and k[:1] != b"b" for k in keys), "an expectation is among them"
    return n1, [*keys, dead, MISSING]


def test_engine_rows_are_the_records_wire_arrays_byte_for_byte() -> None:
    n1, keys = _varied()
    rows = n1.store.wire_rows(keys)
    want = [record_to_wire(r) for r in map(n1.store.get, keys) if r is not None]
    assert len(rows) == len(keys) - 1, "a key not held is left out"
    assert [_pack(a) for a in rows] == [_pack(a) for a in want]
    kinds = {(r.scope, r.deleted, bool(r.data[4]) if r.scope is Scope.NODE and r.data else False)
             for r in map(n1.store.get, keys) if r is not None}
    assert (Scope.NODE, False, True) in kinds and (Scope.NODE, True, False) in kinds
    # The batches the bulk path sends carry the same bytes as the Record path's.
    recs = [r for r in map(n1.store.get, keys) if r is not None]
    assert [b.blob for b in batch_rows(rows, 600)] == [b.blob for b in batch_records(recs, 600)]


def _received(n1: Engine, keys: list[bytes], tuples: bool = False) -> list[Any]:
    """n1's rows as a receiver decodes them (through msgpack and the payload check)."""
    return [a for b in batch_rows(n1.store.wire_rows(keys), 1200)
            for a in rows_from_blob(b.blob, tuples=tuples)]


def _state(store: EngineStore, keys: list[bytes]) -> list[bytes | None]:
    return [None if (r := store.get(k)) is None else _pack(record_to_wire(r)) for k in keys]


@pytest.mark.parametrize("tuples", [False, True], ids=["lists", "tuples"])
def test_engine_apply_rows_leaves_the_tables_apply_leaves(tuples: bool) -> None:
    n1, keys = _varied()
    rows = [list(a) for a in _received(n1, keys, tuples)]
    assert all(type(a[5]) is (tuple if tuples else list) for a in rows)
    # Beside n1's: a malformed entry (refused), an entry owned by the receiver (its own
    # table), an older version of one of them (stale), and the same key again newer.
    rows.append([b"\x06" + bytes((198, 18, 1, 8)) + bytes(8), 0, "n3", 5, 1,
                 ["no-such-state", True, 1.0, 1.0, "", [], [], "new"], False])
    own = [b"\x06" + bytes((198, 18, 1, 7)) + bytes(8), 0, "n2", 5, 2,
           ["established", False, 1.0, 3.0, "", [], [], "promoted"], False]
    rows += [own, [*rows[0][:3], 1, *rows[0][4:]], [*rows[1][:3], rows[1][3] + 1, *rows[1][4:]]]
    # A late insert of the buried key, older than its tombstone: kept out.
    (tomb,) = [a for a in rows if a[6]]
    rows.append([tomb[0], 0, "n1", tomb[3] - 1, 1, ["established", True, 1.0, 1.0, "", [], [], "new"], False])
    by_record, by_rows = Engine("n2", default_rules()), Engine("n2", default_rules())
    got = [by_record.store.apply(record_of_row(a)) for a in rows]
    assert by_rows.store.apply_rows(rows) == sum(got)
    assert not all(got) and sum(got) > len(keys) // 2
    all_keys = [*keys, *(a[0] for a in rows)]
    assert _state(by_rows.store, all_keys) == _state(by_record.store, all_keys)
    assert by_rows.store.counts() == by_record.store.counts()
    assert by_rows.store.rejected == by_record.store.rejected == 1
    assert set(by_rows.table.conns) == set(by_record.table.conns) == {own[0]}
    assert {k: e.sched for k, e in by_rows.store.backups.copies.items()} == {
        k: e.sched for k, e in by_record.store.backups.copies.items()}
    # The same rows again: nothing newer, nothing applied.
    assert by_rows.store.apply_rows(rows) == 0


def test_memory_store_rows_and_apply_rows_are_the_record_path() -> None:
    a = MemoryStore()
    for i in range(20):
        a.put_local(Record(f"k{i:02}".encode(), Scope.NODE if i % 3 else Scope.COMMON, "n1", 1,
                           i % 4, [i, "x"], i == 7))
    keys = [f"k{i:02}".encode() for i in range(25)]
    rows = a.wire_rows(keys)
    assert rows == [record_to_wire(r) for r in map(a.get, keys) if r is not None] and len(rows) == 20
    b = MemoryStore()
    assert b.apply_rows(a for b_ in batch_rows(rows, 500) for a in rows_from_blob(b_.blob)) == 20
    assert [b.get(k) for k in keys] == [a.get(k) for k in keys]


def test_tuple_decoding_gives_the_same_records_and_refuses_the_same_blobs() -> None:
    n1, keys = _varied()
    blobs = [b.blob for b in batch_rows(n1.store.wire_rows(keys), 600)]
    as_tuples = [record_of_row(a) for b in blobs for a in rows_from_blob(b, tuples=True)]
    assert as_tuples == [r for b in blobs for r in records_from_blob(b)]
    assert any(r.data and r.data[5] for r in as_tuples), "nested arrays (a helper's state) too"
    assert all(type(r.data) is list for r in as_tuples)
    # A blob with a map is decoded with lists: one keyed by an array is refused as before.
    common = [b"c", 1, "n1", 2, NO_BUCKET, [{"a": [1, 2]}, (3, 4)], False]
    (b,) = list(batch_rows([common], 1200))
    assert rows_from_blob(b.blob, tuples=True) == rows_from_blob(b.blob) == [
        [b"c", 1, "n1", 2, NO_BUCKET, [{"a": [1, 2]}, [3, 4]], False]]
    keyed = msgpack.packb([[b"c", 1, "n1", 2, NO_BUCKET, [{(1, 2): 3}], False]], use_bin_type=True)
    for tuples in (False, True):
        try:
            rows_from_blob(keyed, tuples=tuples)
        except BadFrame as exc:
            assert exc.kind is BadFrameKind.BAD_PAYLOAD
        else:
            raise AssertionError("a map keyed by an array went through")


def test_rows_from_blob_checks_every_row_as_records_from_blob() -> None:
    good = [b"k", 0, "n1", 3, 1, [1], False]
    blob = batch_rows([good, good], 1200)
    (batch,) = list(blob)
    assert rows_from_blob(batch.blob) == [good, good]
    assert records_from_blob(batch.blob) == [record_of_row(good)] * 2
    for bad in ([b"k", 0, "n1", True, 1, [1], False], [b"k", 2, "n1", 3, 1, [1], False],
                [b"k", 0, "n1", 3, 1, [1]], ["k", 0, "n1", 3, 1, [1], False]):
        (b,) = list(batch_rows([good, bad], 1200))
        for decode in (rows_from_blob, records_from_blob, lambda x: rows_from_blob(x, tuples=True)):
            try:
                decode(b.blob)
            except BadFrame as exc:
                assert exc.kind is BadFrameKind.BAD_PAYLOAD
            else:
                raise AssertionError(f"{bad} went through {decode}")


def test_a_bulk_resync_of_engine_tables_brings_every_entry_as_it_is() -> None:
    """End to end in the simulator: n1's varied table reaches a joining n2 intact."""
    c = SimCluster(2, buckets=3, record_events=False)
    engines = {x: Engine(x, default_rules()) for x in c.names}
    for x in c.names:
        store: Any = engines[x].store
        c.start([x], store=store)
    assert c.run_until(c.all_active, 5.0)
    c.kill("n2")
    assert c.run_until(lambda: len(c.agents["n1"].owned_buckets) == 3, 5.0)
    n1, _ = _varied()
    engines["n1"].table.conns.update(n1.table.conns)
    engines["n1"].table.expects.update(n1.table.expects)
    n2 = Engine("n2", default_rules())
    store2: Any = n2.store
    c.start(["n2"], store=store2)
    c.events["n2"].clear()
    assert c.run_until(lambda: any(isinstance(e, ResyncComplete) for e in c.events["n2"]), 10.0)
    mine = engines["n1"].store
    sent = mine.keys(owner="n1", scope=Scope.NODE)
    assert len(sent) > 50 and len(n2.store.backups) == len(sent)
    assert _state(n2.store, sent) == _state(mine, sent)
