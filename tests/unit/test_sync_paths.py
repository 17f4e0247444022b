"""sync/paths.py: path probes and record frames; refused frames are counted by kind and change
nothing; the sync route fails over to a data path and back; self-fencing decisions."""

from __future__ import annotations

import pytest

from sync.paths import (
    KIND_PROBE,
    KIND_RECORD,
    MAX_DATAGRAM,
    MTU,
    DatagramTooBig,
    Paths,
)

NAMES = ["n1", "n2", "n3"]
KEY = b"lab-key-0123456789abcdef"


def _paths(node: str, inc: int, now: float = 0.0, lab: str = "lab1", key: bytes = KEY) -> Paths:
    return Paths(lab, key, node, NAMES, inc, now, grace_s=0.0)


def _snapshot(p: Paths) -> tuple[object, ...]:
    """Everything a refused frame must leave alone."""
    return tuple(
        (n, pp.inc, dict(pp.last_seq), dict(pp.last_heard), dict(pp.hears), pp.route)
        for n, pp in sorted(p.peers.items())
    )


def test_a_probe_is_heard_on_its_path_and_carries_whom_the_sender_hears() -> None:
    a, b, c = _paths("n1", 11), _paths("n2", 22), _paths("n3", 33)
    got = b.receive("inside", c.probe("inside", 0.0), 0.0)
    assert got is not None and got.kind == KIND_PROBE and got.sender == "n3" and got.incarnation == 33
    got = a.receive("inside", b.probe("inside", 0.001), 0.001)
    assert got is not None and got.sender == "n2"
    assert a.heard("n2", "inside", 0.002) and not a.heard("n2", "sync", 0.002)
    assert a.reports("n2", "inside") == frozenset({"n3"})
    assert a.reports("n2", "sync") == frozenset()
    assert not a.heard("n2", "inside", 0.001 + a.silent_s + 0.001), "silence past three probes is unheard"


def test_a_record_frame_carries_one_datagram_to_its_receiver_only() -> None:
    a, b, c = _paths("n1", 11), _paths("n2", 22), _paths("n3", 33)
    frame = a.record("outside", "n2", b"datagram")
    got = b.receive("outside", frame, 0.0)
    assert got is not None and got.kind == KIND_RECORD and got.datagram == b"datagram" and got.sender == "n1"
    assert c.receive("outside", frame, 0.0) is None
    assert c.counters["record-not-ours"] == 1 and sum(c.refused.values()) == 0


def test_every_frame_fits_the_mtu_and_a_larger_datagram_is_refused_clearly() -> None:
    a = _paths("n1", 11)
    assert len(a.record("inside", "n2", bytes(MAX_DATAGRAM))) == MTU
    with pytest.raises(DatagramTooBig):
        a.record("inside", "n2", bytes(MAX_DATAGRAM + 1))
    assert a.counters["record-too-big"] == 1


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("garbage", lambda good, a: b"\x00" * 10),
        ("garbage", lambda good, a: b"XXXX" + good[4:]),
        ("foreign-lab", lambda good, a: _paths("n1", 11, lab="other").probe("inside", 0.0)),
        ("forged", lambda good, a: _paths("n1", 11, key=b"not-the-lab-key-000000").probe("inside", 0.0)),
        ("forged", lambda good, a: good[:-1] + bytes([good[-1] ^ 1])),
        ("forged", lambda good, a: good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]),
        ("forged", lambda good, a: a.probe("inside", 0.0)),  # our own name, key and incarnation
        ("replayed", lambda good, a: good),
        ("wrong-path", lambda good, a: _paths("n1", 11).probe("outside", 0.0)),
    ],
)
def test_refused_frames_are_counted_by_kind_and_change_nothing(kind: str, make: object) -> None:
    sender, receiver = _paths("n1", 11), _paths("n2", 22)
    good = sender.probe("inside", 0.0)
    assert receiver.receive("inside", good, 0.0) is not None
    before = _snapshot(receiver)
    bad = make(good, receiver)  # type: ignore[operator]
    assert receiver.receive("inside", bad, 0.005) is None
    assert receiver.refused[kind] == 1 and sum(receiver.refused.values()) == 1
    assert _snapshot(receiver) == before


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 0xFF]) + frame[at + 1:]


# Offsets in a frame: magic 0-3, kind 4, lab tag 5-12, sender 13, receiver 14, incarnation
# 15-22, path 23, seq 24-31, body (the datagram) from 32, then the HMAC (32 bytes).
@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("replayed", lambda good, rx: good),
        ("forged", lambda good, rx: _flip(good, 40)),  # the datagram changed
        ("forged", lambda good, rx: _flip(good, 14)),  # redirected to another receiver
        ("forged", lambda good, rx: _flip(good, 24)),  # a fresh sequence number claimed
        ("forged", lambda good, rx: good[:-1] + bytes([good[-1] ^ 1])),  # the HMAC itself
        ("forged", lambda good, rx: _paths("n1", 11, key=b"not-the-lab-key-000000").record(
            "inside", "n2", b"sync datagram")),
        ("forged", lambda good, rx: _paths("n2", 22).record("inside", "n2", b"sync datagram")),  # own name
        ("foreign-lab", lambda good, rx: _paths("n1", 11, lab="other").record("inside", "n2", b"x")),
        ("foreign-lab", lambda good, rx: _flip(good, 6)),
        ("garbage", lambda good, rx: good[:40]),
        ("wrong-path", lambda good, rx: _paths("n1", 11).record("outside", "n2", b"sync datagram")),
    ],
)
def test_forged_replayed_and_foreign_record_frames_deliver_nothing_and_are_counted_by_kind(
        kind: str, make: object) -> None:
    sender, receiver = _paths("n1", 11), _paths("n2", 22)
    good = sender.record("inside", "n2", b"sync datagram " * 4)
    got = receiver.receive("inside", good, 0.0)
    assert got is not None and got.kind == KIND_RECORD
    before, counters = _snapshot(receiver), dict(receiver.counters)
    bad = make(good, receiver)  # type: ignore[operator]
    assert receiver.receive("inside", bad, 0.005) is None, "a refused record frame delivered a datagram"
    assert receiver.refused[kind] == 1 and sum(receiver.refused.values()) == 1, dict(receiver.refused)
    assert _snapshot(receiver) == before and dict(receiver.counters) == counters


def test_a_record_frame_for_another_node_delivers_nothing_there_even_replayed() -> None:
    sender, rx, other = _paths("n1", 11), _paths("n2", 22), _paths("n3", 33)
    frame = sender.record("outside", "n3", b"for n3 only")
    assert rx.receive("outside", frame, 0.0) is None  # authentic, not ours: heard, not delivered
    assert rx.counters["record-not-ours"] == 1 and "record-heard:outside" not in rx.counters
    assert rx.receive("outside", frame, 0.001) is None and rx.refused["replayed"] == 1
    got = other.receive("outside", frame, 0.0)
    assert got is not None and got.datagram == b"for n3 only"
    assert other.receive("outside", frame, 0.001) is None and other.refused["replayed"] == 1
    assert other.counters["record-heard:outside"] == 1


def test_a_frame_of_a_retired_incarnation_is_a_replay() -> None:
    old, new, rx = _paths("n1", 11), _paths("n1", 12), _paths("n2", 22)
    stale = old.probe("sync", 0.0)
    assert rx.receive("sync", old.probe("sync", 0.0), 0.0) is not None
    assert rx.receive("sync", new.probe("sync", 0.0), 0.001) is not None  # a restart: new incarnation
    before = _snapshot(rx)
    assert rx.receive("sync", stale, 0.002) is None
    assert rx.refused["replayed"] == 1 and _snapshot(rx) == before


def test_the_sync_route_fails_over_to_a_data_path_within_three_probes_and_back() -> None:
    a, b = _paths("n1", 11), _paths("n2", 22)
    t = 0.0
    for _ in range(5):
        t += 0.01
        for path in ("sync", "inside", "outside"):
            a.receive(path, b.probe(path, t), t)
    assert a.route("n2", t) == "sync"
    cut_at = t
    while a.route("n2", t) == "sync":  # the sync segment is cut: only data paths carry probes
        t += 0.01
        for path in ("inside", "outside"):
            a.receive(path, b.probe(path, t), t)
        assert t - cut_at < 0.06
    assert a.route("n2", t) == "inside"
    assert a.switches[-1]["from"] == "sync" and a.switches[-1]["to"] == "inside"
    t += 0.01
    a.receive("sync", b.probe("sync", t), t)
    assert a.route("n2", t) == "sync"
    st = a.status(t)
    assert st["peers"]["n2"]["route"] == "sync" and st["peers"]["n2"]["paths"]["sync"]["heard"]
    assert st["peers"]["n3"]["paths"]["inside"] == {"heard": False, "ago_ms": None, "hears": []}


def test_nothing_heard_anywhere_keeps_the_sync_route() -> None:
    a = _paths("n1", 11)
    assert a.route("n2", 5.0) == "sync" and a.counters["route-switch"] == 0


def _hear_all(rx: Paths, senders: list[Paths], paths: tuple[str, ...], t: float) -> None:
    for s in senders:
        for path in paths:
            rx.receive(path, s.probe(path, t), t)


def test_a_node_that_hears_no_peer_on_a_segment_others_share_fences_itself_then_unfences() -> None:
    n1, n2, n3 = _paths("n1", 11), _paths("n2", 22), _paths("n3", 33)
    t = 0.0
    carrier = {"inside": True, "outside": True}
    for _ in range(3):
        t += 0.01
        for rx, others in ((n1, [n2, n3]), (n2, [n1, n3]), (n3, [n1, n2])):
            _hear_all(rx, others, ("sync", "inside", "outside"), t)
    assert not n1.fencing(t, carrier)
    # n1's inside is cut silently: it hears nobody there; n2 and n3 still hear each other.
    for _ in range(6):
        t += 0.01
        _hear_all(n2, [n3], ("sync", "inside", "outside"), t)
        _hear_all(n3, [n2], ("sync", "inside", "outside"), t)
        _hear_all(n1, [n2, n3], ("sync", "outside"), t)
    assert n1.fencing(t, carrier)
    assert n1.fence_why is not None and "inside" in n1.fence_why
    assert not n2.fencing(t, carrier), "n2 hears n3 on inside: it is not the one cut off"
    # Healed: unfenced only after the link stayed good for unfence_s.
    t0 = t
    while n1.fencing(t, carrier):
        t += 0.01
        _hear_all(n1, [n2, n3], ("sync", "inside", "outside"), t)
    assert t - t0 >= n1.unfence_s


def test_carrier_loss_fences_at_once() -> None:
    n1 = _paths("n1", 11)
    assert n1.fencing(1.0, {"inside": True, "outside": False})
    assert n1.fence_why == "outside link down"


def test_two_nodes_that_both_hear_nobody_on_a_segment_do_not_fence() -> None:
    n1 = _paths("n1", 11)
    assert not n1.fencing(1.0, {"inside": True, "outside": True})
