"""Our libnetfilter_queue binding's pure parts: which ids a batch verdict may cover (held packets
stay out), and the parsing of the kernel's packet messages, byte for byte (no kernel needed)."""

from __future__ import annotations

import struct

from engine.nfqlib import (
    NFQNL_MSG_PACKET_TYPE,
    cut_packet_id,
    error_code,
    parse_message,
)
from engine.verdict_plan import Op, Planned, VerdictPlan, plan

A, D = 1, 0


def batch(pid: int, v: int = A) -> Planned:
    return Planned(Op.BATCH, pid, v)


def single(pid: int, v: int = A) -> Planned:
    return Planned(Op.SINGLE, pid, v)


def test_a_run_of_accepts_is_one_batch_at_its_last_id() -> None:
    assert plan([(5, "accept"), (6, "accept"), (7, "accept")]) == [batch(7)]


def test_a_change_of_verdict_closes_the_run() -> None:
    got = plan([(1, "accept"), (2, "accept"), (3, "drop"), (4, "drop"), (5, "accept")])
    assert got == [batch(2), batch(4, D), batch(5)]


def test_a_held_packet_ends_batching_for_the_rest_of_the_read() -> None:
    got = plan([(10, "accept"), (11, "accept"), (12, "held"), (13, "accept"), (14, "drop")])
    # The batch stops below the held id; above it, a batch would take 12 with it.
    assert got == [batch(11), single(13), single(14, D)]
    assert all(p.packet_id < 12 for p in got if p.op is Op.BATCH)


def test_a_packet_held_from_an_earlier_read_means_no_batch_at_all() -> None:
    got = plan([(20, "accept"), (21, "accept")], older_held=True)
    assert got == [single(20), single(21)]


def test_a_rewritten_packet_gets_its_own_verdict_in_its_place() -> None:
    got = plan([(1, "accept"), (2, "rewrite"), (3, "accept"), (4, "accept")])
    assert [(p.op, p.packet_id) for p in got] == [(Op.BATCH, 1), (Op.REWRITE, 2), (Op.BATCH, 4)]


def test_a_held_first_packet_leaves_nothing_to_batch() -> None:
    assert plan([(7, "held"), (8, "accept")]) == [single(8)]


def test_no_batch_ever_covers_a_held_id() -> None:
    """Every batch at X takes all outstanding ids <= X: replay the plan against a model queue."""
    import random

    rng = random.Random(13)
    for _ in range(300):
        older = rng.random() < 0.2
        kinds = rng.choices(["accept", "drop", "rewrite", "held"], [8, 2, 1, 1], k=rng.randint(1, 30))
        packets = list(enumerate(kinds, start=100))
        outstanding = {pid: k for pid, k in packets}
        if older:
            outstanding[50] = "held"
        for p in plan(packets, older_held=older):
            if p.op is Op.BATCH:
                covered = [pid for pid in outstanding if pid <= p.packet_id]
                assert covered and all(outstanding[pid] != "held" for pid in covered)
                want = "accept" if p.verdict == A else "drop"
                assert all(outstanding[pid] == want for pid in covered)
                for pid in covered:
                    del outstanding[pid]
            else:
                del outstanding[p.packet_id]
        assert all(k == "held" for k in outstanding.values())  # each other packet has its verdict


def test_the_plan_starts_afresh_each_read() -> None:
    p = VerdictPlan()
    p.begin(False)
    p.held(3)
    p.finish()
    p.begin(False)
    p.plain(9, A)
    assert p.finish() == [batch(9)]


# ---- the kernel's messages ------------------------------------------------------------------
def _nla(t: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t) + value
    return raw + b"\0" * (-len(raw) % 4)


def packet_message(pid: int, payload: bytes, mark: int | None = None) -> bytes:
    attrs = _nla(1, struct.pack("!IHB", pid, 0x0800, 2))  # NFQA_PACKET_HDR: id, hw proto, hook
    attrs += _nla(4, struct.pack("!I", 3))  # NFQA_IFINDEX_INDEV
    if mark is not None:
        attrs += _nla(3, struct.pack("!I", mark))
    attrs += _nla(9, bytes(12))  # NFQA_HWADDR
    attrs += _nla(10, payload)
    attrs += _nla(14 | 0x4000, struct.pack("!I", 0))  # an attribute with a flag bit after the payload
    body = struct.pack("=BBH", 2, 0, struct.pack("!H", 0)[0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFQNL_MSG_PACKET_TYPE, 0, 0, 0) + body


def test_a_packet_message_gives_id_mark_and_payload() -> None:
    payload = bytes(range(61))  # odd length: the attribute is padded
    msg = b"\xff" * 8 + packet_message(0xDEADBEEF, payload, mark=7)
    r = parse_message(msg, 8, len(msg))
    assert r is not None
    pid, mark, off, n = r
    assert (pid, mark) == (0xDEADBEEF, 7)
    assert msg[off : off + n] == payload


def test_a_packet_without_mark_has_mark_0() -> None:
    msg = packet_message(1, b"x" * 20)
    assert parse_message(msg, 0, len(msg))[:2] == (1, 0)  # type: ignore[index]


def test_a_cut_message_is_not_parsed_but_its_id_is_found() -> None:
    msg = packet_message(42, b"y" * 200)
    assert parse_message(msg, 0, 100) is None
    assert cut_packet_id(msg, 0, 100) == 42


def test_an_error_message_is_told_apart() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 5, 0) + struct.pack("=i", -2) + bytes(16)
    assert parse_message(err, 0, len(err)) is None
    assert error_code(err, 0, len(err)) == 2  # ENOENT: a batch verdict found nothing queued
    assert error_code(packet_message(1, b"z"), 0, 40) is None


def test_the_cached_layout_parses_exactly_as_the_walk() -> None:
    """A stream of messages whose layouts change (mark or not, another attribute, sizes,
    payloads that look like attribute headers): the layout's answer is always the walk's."""
    import random

    from engine.nfqlib import Layout

    rng = random.Random(5)
    layout = Layout()
    hits = 0
    for i in range(2000):
        mark = rng.choice([None, None, 0x10, 0xFFFFFFFF])
        n = rng.choice([20, 28, 40, 41, 42, 43, 60, 1500])
        payload = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.3:  # bytes that read as a payload attribute header if misaligned
            payload = struct.pack("=HH", n, 10) * (n // 4) + payload[: n % 4]
        msg = packet_message(i, payload, mark)
        if rng.random() < 0.1:  # another interface attribute: a different layout
            body = msg[20:]
            extra = _nla(5, struct.pack("!I", 9))
            msg = struct.pack("=IHHII", 20 + len(extra) + len(body), NFQNL_MSG_PACKET_TYPE, 0, 0, 0) + \
                bytes(4) + extra + body
        # trailing attribute in packet_message: strip it so the payload is last (the kernel's order)
        if rng.random() < 0.8:
            msg = struct.pack("=I", len(msg) - 8) + msg[4:-8]
        buf = b"\x00" * 16 + msg + b"\xee" * 64
        want = parse_message(buf, 16, 16 + len(msg))
        got = layout.parse(buf, 16, 16 + len(msg))
        assert got == want, i
        hits += layout._headers is not None
    assert hits > 1000  # the layout was used, not only the walk


def test_expired_held_packets_leave_in_one_batch_drop_when_nothing_else_is_held_below() -> None:
    from engine.verdict_plan import batch_drop_at

    # A backup's window: 3, 5, 8 expire; 9 and 12 are younger and stay held.
    assert batch_drop_at([3, 5, 8, 9, 12], {3, 5, 8}) == 8


def test_no_batch_drop_over_a_packet_held_for_another_reason() -> None:
    from engine.verdict_plan import batch_drop_at

    # 4 waits for a sync ack: a batch drop at 8 would drop it too.
    assert batch_drop_at([3, 4, 5, 8], {3, 5, 8}) is None
    # One packet alone is one verdict anyway; an id not held is a bug, never batched over.
    assert batch_drop_at([3, 5], {3}) is None
    assert batch_drop_at([3, 8], {3, 5, 8}) is None


def test_a_batch_drop_takes_exactly_the_packets_to_drop() -> None:
    """Against a model queue: a batch drop at X takes every still-queued id <= X."""
    import random

    from engine.verdict_plan import batch_drop_at

    rng = random.Random(7)
    for _ in range(300):
        held = sorted(rng.sample(range(1, 60), rng.randint(0, 20)))
        drop = {p for p in held if rng.random() < 0.6}
        top = batch_drop_at(held, drop)
        if top is not None:
            assert {p for p in held if p <= top} == drop
