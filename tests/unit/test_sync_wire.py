"""Sync wire codec and the receive path's defences: every bad frame is dropped, counted by
kind, changes nothing, and nothing ever raises (a fuzz run of 100,000+ frames)."""

from __future__ import annotations

import random

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.agent import SyncAgent
from sync.records import NO_BUCKET, MemoryStore, Record, Scope, Trigger
from sync.sim import SimCluster
from sync.wire import (
    TAG_BYTES,
    TRIGGER_CODE,
    BadFrame,
    BadFrameKind,
    Frame,
    MsgType,
    batch_records,
    decode_frame,
    encode_frame,
    record_from_wire,
    record_to_wire,
    records_from_blob,
)

KEY = b"sim-key-0123456789abcdef"


def _frame(**kw: object) -> Frame:
    base: dict[str, object] = dict(
        sender="n2", incarnation=7, to_inc=0, epoch=0, seq=1, ack=0,
        type=MsgType.HEARTBEAT, payload=[0, False], lab="sim",
    )
    base.update(kw)
    return Frame(**base)  # type: ignore[arg-type]


def test_frame_round_trip_and_tamper_detection() -> None:
    blob = msgpack.packb([b"k", 0, "n2", 3, 4, [1, "x"], False])
    f = _frame(type=MsgType.RECORDS, payload=[1, blob])
    data = encode_frame(f, KEY)
    assert decode_frame(data, KEY, "sim", 1400) == f
    for i in (0, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            decode_frame(bytes(bad), KEY, "sim", 1400)
        except BadFrame as exc:
            assert exc.kind is BadFrameKind.BAD_HMAC
        else:
            raise AssertionError("a flipped bit went unnoticed")
    try:
        decode_frame(data, b"another lab's key", "sim", 1400)
    except BadFrame as exc:
        assert exc.kind is BadFrameKind.BAD_HMAC


def test_records_round_trip_as_positional_arrays() -> None:
    r = Record(b"\x01\x02", Scope.COMMON, "n3", 9, NO_BUCKET, [1, b"x", "y", None], True)
    w = record_to_wire(r)
    assert isinstance(w, list) and len(w) == 7
    assert record_from_wire(msgpack.unpackb(msgpack.packb(w))) == r


def test_batches_fill_datagrams_below_the_budget() -> None:
    recs = [Record(i.to_bytes(13, "big"), Scope.NODE, "n1", 1, 3, [i, i * 2, "est"]) for i in range(500)]
    batches = list(batch_records(recs, 1200))
    assert [r.key for b in batches for r in records_from_blob(b.blob)] == [r.key for r in recs]
    assert [k for b in batches for k in b.keys] == [r.key for r in recs]
    assert len(batches) < 500 // 10  # many records per datagram
    assert all(len(b.blob) <= 1200 for b in batches)


def _agent() -> tuple[SyncAgent, MemoryStore, tuple[str, int]]:
    c = SimCluster(3)
    store = MemoryStore()
    a = SyncAgent(c.config_for("n1"), store, 0.0)
    a.start(0.0)
    return a, store, c.addrs["n2"]


def test_each_kind_of_bad_frame_is_counted_by_name() -> None:
    a, store, src = _agent()
    good = _frame()
    cases: list[tuple[bytes, tuple[str, int], str]] = [
        (b"\x00" * 5, src, "short"),
        (encode_frame(_frame(payload=[0, False, "x" * 2000]), KEY), src, "oversize"),
        (encode_frame(good, b"wrong"), src, "bad-hmac"),
        (b"\xc1" * 20 + encode_frame(good, KEY)[-TAG_BYTES:], src, "bad-hmac"),
        (encode_frame(_frame(version=9), KEY), src, "bad-version"),
        (encode_frame(_frame(lab="other"), KEY), src, "wrong-lab"),
        (encode_frame(_frame(sender="mallory"), KEY), src, "unknown-sender"),
        (encode_frame(good, KEY), ("10.9.9.9", 7400), "wrong-source"),
        (encode_frame(_frame(to_inc=12345), KEY), src, "replayed/stale"),
    ]
    body = msgpack.packb([1, "sim", "n2", 7, 0, 0, 2, 0, 99, None])
    import hashlib
    import hmac as _hmac

    cases.append((body + _hmac.new(KEY, body, hashlib.sha256).digest(), src, "unknown-type"))
    junk = b"\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1"
    cases.append((junk + _hmac.new(KEY, junk, hashlib.sha256).digest(), src, "undecodable"))
    for data, s, kind in cases:
        before = dict(a.stats()["bad_frames"])
        a.receive(data, s, 0.001)
        after = a.stats()["bad_frames"]
        assert after.get(kind, 0) == before.get(kind, 0) + 1, (kind, after)
    assert len(store) == 0
    assert a.stats()["peers"]["n2"]["up"] is False  # none of them counted as a sign of life


def test_replayed_heartbeat_is_stale() -> None:
    a, _, src = _agent()
    hb = encode_frame(_frame(seq=5), KEY)
    a.receive(hb, src, 0.001)
    a.receive(hb, src, 0.002)
    assert a.stats()["bad_frames"] == {"replayed/stale": 1}


def test_bad_hmac_and_replayed_frames_change_nothing() -> None:
    c = SimCluster(3)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    captured: list[tuple[str, str, bytes]] = []
    c.tap = lambda t, s, d, data: captured.append((s, d, data))
    c.put("n1", b"conn", [1])
    c.run(0.02)
    frames = [
        data for s, d, data in captured
        if s == "n1" and d == "n2" and decode_frame(data, KEY, "sim", 1400).type is MsgType.RECORDS
    ]
    assert frames and c.stores["n2"].get(b"conn") is not None
    c.put("n1", b"conn", [2])  # version 2 reaches n2
    c.run(0.02)
    assert c.stores["n2"].get(b"conn").data == [2]  # type: ignore[union-attr]
    n2 = c.agents["n2"]
    before = dict(n2.stats()["bad_frames"])
    c.inject("n2", c.addrs["n1"], frames[0])  # replay of the version-1 frame
    tampered = bytearray(frames[0])
    tampered[-TAG_BYTES - 3] ^= 0xFF
    c.inject("n2", c.addrs["n1"], bytes(tampered))
    after = n2.stats()["bad_frames"]
    assert after.get("replayed/stale", 0) == before.get("replayed/stale", 0) + 1
    assert after.get("bad-hmac", 0) == before.get("bad-hmac", 0) + 1
    rec = c.stores["n2"].get(b"conn")
    assert rec is not None and rec.version == 2 and rec.data == [2]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1600))
def test_random_bytes_never_raise(data: bytes) -> None:
    a, store, src = _agent()
    a.receive(data, src, 0.001)
    assert "internal-error" not in a.stats()["bad_frames"]
    assert len(store) == 0


def _rand_value(rng: random.Random, depth: int = 0) -> object:
    k = rng.randrange(9 if depth < 3 else 6)
    if k == 0:
        return rng.randrange(-(2**40), 2**40)
    if k == 1:
        return rng.randbytes(rng.randrange(20))
    if k == 2:
        return rng.choice(["n1", "n2", "n3", "sim", "", "x" * 40])
    if k == 3:
        return None
    if k == 4:
        return rng.random() < 0.5
    if k == 5:
        return rng.random()
    if k == 6:
        return {_rand_key(rng): _rand_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [_rand_value(rng, depth + 1) for _ in range(rng.randrange(8))]


def _rand_key(rng: random.Random) -> object:
    return rng.choice([1, "a", b"b"])


def _payload_for(rng: random.Random, t: int) -> object:
    """A payload shaped like the real one for the type, with random damage."""
    rec = [rng.randbytes(4), rng.randrange(3), rng.choice(["n1", "n2", "n9"]), rng.randrange(5),
           rng.randrange(-2, 14), [rng.randrange(9)], rng.random() < 0.2]
    if rng.random() < 0.3:
        rec[rng.randrange(7)] = _rand_value(rng)
    shapes: dict[int, object] = {
        1: [rng.randrange(5), rng.random() < 0.5],
        2: [rng.randrange(5), rng.random() < 0.5],
        4: [rng.randrange(12), b"".join(msgpack.packb(x) for x in (rec, rec, _rand_value(rng)))[
            : rng.choice([10_000, rng.randrange(1, 40)])]],
        6: [rng.randrange(100)],
        7: [rng.randrange(100)],
        8: [rng.randbytes(3)],
        9: [rng.randbytes(3), rec if rng.random() < 0.5 else None],
        10: [rng.randrange(9), "n1", [rng.randrange(5) for _ in range(3)], [None] * 12, [[]] * 3],
    }
    return shapes.get(t, _rand_value(rng)) if rng.random() < 0.8 else _rand_value(rng)


def test_fuzz_100k_random_and_mutated_frames_never_raise() -> None:
    import hashlib
    import hmac as _hmac

    rng = random.Random(1234)
    a, _store, src = _agent()
    srcs = [src, ("10.0.0.3", 7400), ("10.0.0.9", 1)]
    valid = [encode_frame(_frame(seq=i + 1), KEY) for i in range(50)]
    t = 0.0
    for i in range(100_000):
        t += 0.0001
        r = rng.random()
        if r < 0.2:
            data = rng.randbytes(rng.randrange(0, 1500))
        elif r < 0.4:
            b = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b[: rng.randrange(len(b) + 1)]) if rng.random() < 0.3 else bytes(b)
        else:
            # Authenticated but malformed: what a buggy or compromised member could send.
            tcode = rng.randrange(0, 13)
            fields: list[object] = [
                1 if rng.random() < 0.95 else _rand_value(rng),
                "sim" if rng.random() < 0.95 else _rand_value(rng),
                rng.choice(["n2", "n3"]) if rng.random() < 0.95 else _rand_value(rng),
                rng.choice([7, 8, rng.randrange(1, 2**62)]),
                rng.choice([0, a.incarnation, 5]),
                rng.randrange(0, 20),
                rng.randrange(0, 300),
                rng.randrange(0, 300),
                tcode,
                _payload_for(rng, tcode),
            ]
            if rng.random() < 0.05:
                fields[rng.randrange(10)] = _rand_value(rng)
            if rng.random() < 0.03:
                fields = fields[: rng.randrange(10)]
            body = msgpack.packb(fields, use_bin_type=True)
            data = body + _hmac.new(KEY, body, hashlib.sha256).digest()
        a.receive(data, rng.choice(srcs), t)
        if i % 50 == 0:
            a.tick(t)
            a.datagrams()
            a.events()
    bad = a.stats()["bad_frames"]
    assert "internal-error" not in bad, bad
    assert sum(bad.values()) > 50_000
    for kind in ("short", "bad-hmac", "unknown-type", "bad-payload", "wrong-source"):
        assert bad.get(kind, 0) > 0, (kind, bad)


def test_trigger_codes_are_stable() -> None:
    assert len(TRIGGER_CODE) == len(Trigger)
    assert TRIGGER_CODE[Trigger.MODIFIED] == 0
