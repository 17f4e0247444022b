"""The receive path's table: each message type's payload is checked against what its sender
sends; a malformed one is dropped, counted under its own kind, and changes nothing, while the
well-formed one does what it is for."""

from __future__ import annotations

from typing import Any

import pytest

from sync.agent import ResyncProgress, SyncAgent
from sync.dispatch import Dispatcher
from sync.records import NO_BUCKET, MemoryStore, Record, Scope, Trigger
from sync.sim import SimCluster
from sync.wire import TRIGGER_CODE, UNRELIABLE, Frame, MsgType, batch_records, decode_frame, encode_frame

KEY = b"sim-key-0123456789abcdef"
INC = 7  # the incarnation of the fake peer n2


class FromN2:
    """Frames from n2 to a standalone n1 agent, with the sequence numbers n1 expects."""

    def __init__(self) -> None:
        c = SimCluster(3)
        self.store = MemoryStore()
        self.agent = SyncAgent(c.config_for("n1"), self.store, 0.0)
        self.agent.start(0.0)
        self.src = c.addrs["n2"]
        self.now = 0.001
        self.useq = 0
        self.rseq = 0
        self.send(MsgType.HEARTBEAT, [1, True])  # n2 is up: later frames show only their payload
        self.agent.datagrams()
        self.agent.events()

    def send(self, t: MsgType, payload: Any) -> None:
        if t in UNRELIABLE:
            self.useq += 1
            seq = self.useq
        else:
            self.rseq += 1
            seq = self.rseq
        f = Frame("n2", INC, 0, 0, seq, 0, t, payload, "sim")
        self.now += 0.001
        self.agent.receive(encode_frame(f, KEY), self.src, self.now)

    def snapshot(self) -> dict[str, Any]:
        """Everything a message could change on n1 (what the checks must leave alone)."""
        a = self.agent
        p = a.peers["n2"]
        return {
            "store": sorted((r.key, r.version) for r in self.store.records()),
            "peer": (p.mode, p.ready, p.epoch, p.bulk_requested, p.bulk_done, p.bulk_total, p.bulk_received),
            "mode": a.mode,
            "view": a.view,
            "owned": a.owned_buckets,
            "queued": {n: len(q.channel.unacked) for n, q in a.peers.items()},
            "counters": dict(a.stats()["counters"]),
        }

    def sent_types(self) -> set[MsgType]:
        return {decode_frame(d, KEY, "sim", 1400).type for _, d in self.agent.datagrams()}


def _blob(key: bytes = b"k") -> bytes:
    rec = Record(key, Scope.COMMON, "n2", 1, NO_BUCKET, [1])
    return next(iter(batch_records([rec], 1200))).blob


MALFORMED: list[tuple[MsgType, Any, str]] = [
    (MsgType.HELLO, [9, True], "bad-payload:hello"),
    (MsgType.HEARTBEAT, [1, "yes"], "bad-payload:heartbeat"),
    (MsgType.ACK, [1], "bad-payload:ack"),
    (MsgType.RECORDS, [TRIGGER_CODE[Trigger.MODIFIED], "not bytes"], "bad-payload:records"),
    (MsgType.RECORDS, [99, _blob()], "bad-payload:records"),
    (MsgType.BULK_REQUEST, [1], "bad-payload:bulk_request"),
    (MsgType.BULK_START, ["many"], "bad-payload:bulk_start"),
    (MsgType.BULK_START, [-1], "bad-payload:bulk_start"),
    (MsgType.BULK_START, [True], "bad-payload:bulk_start"),
    (MsgType.BULK_START, [], "bad-payload:bulk_start"),
    (MsgType.BULK_END, None, "bad-payload:bulk_end"),
    (MsgType.BULK_END, [1, 2], "bad-payload:bulk_end"),
    (MsgType.STATE_REQUEST, ["k"], "bad-payload:state_request"),
    (MsgType.STATE_REPLY, [b"k", [1, 2]], "bad-payload:state_reply"),
    (MsgType.VIEW, [1, "n2", [0, 0, 0], [], []], "bad-view:view"),
    (MsgType.LEAVE, ["bye"], "bad-payload:leave"),
    (MsgType.LEAVE, None, "bad-payload:leave"),
    (MsgType.KEYS, [True, True, ["k"]], "bad-payload:keys"),
    (MsgType.KEYS, [1, True, []], "bad-payload:keys"),
    (MsgType.KEYS, [True, True], "bad-payload:keys"),
    (MsgType.WANT, [], "bad-payload:want"),
    (MsgType.WANT, [b"k", 3], "bad-payload:want"),
]


def test_every_message_type_has_a_route() -> None:
    p = FromN2()
    assert set(p.agent._dispatch.routes) == set(MsgType)
    assert isinstance(p.agent._dispatch, Dispatcher)


@pytest.mark.parametrize(("mtype", "payload", "kind"), MALFORMED, ids=[k + repr(p) for _, p, k in MALFORMED])
def test_a_malformed_payload_is_counted_by_its_kind_and_changes_nothing(
    mtype: MsgType, payload: Any, kind: str
) -> None:
    p = FromN2()
    before = p.snapshot()
    bad_before = dict(p.agent.stats()["bad_frames"])
    p.send(mtype, payload)
    bad = p.agent.stats()["bad_frames"]
    reason = kind.split(":")[0]
    assert bad.get(kind, 0) == bad_before.get(kind, 0) + 1, bad
    assert bad.get(reason, 0) == bad_before.get(reason, 0) + 1, bad  # the total by reason too
    assert set(bad) - set(bad_before) <= {kind, reason}, bad
    assert p.snapshot() == before
    assert p.agent.events() == []
    assert p.sent_types() <= {MsgType.ACK}  # a reliable message is still acked, nothing else


WELL_FORMED: list[tuple[MsgType, Any]] = [
    (MsgType.RECORDS, [TRIGGER_CODE[Trigger.MODIFIED], _blob()]),
    (MsgType.BULK_REQUEST, []),
    (MsgType.BULK_START, [3]),
    (MsgType.BULK_END, [3]),
    (MsgType.STATE_REQUEST, [b"k"]),
    (MsgType.LEAVE, []),
]


@pytest.mark.parametrize(("mtype", "payload"), WELL_FORMED, ids=[t.name for t, _ in WELL_FORMED])
def test_the_well_formed_payload_of_each_type_acts(mtype: MsgType, payload: Any) -> None:
    p = FromN2()
    before = p.snapshot()
    p.send(mtype, payload)
    assert p.agent.stats()["bad_frames"] == {}
    assert p.snapshot() != before or p.agent.events()


def test_a_malformed_bulk_start_does_not_reset_a_resync_under_way() -> None:
    p = FromN2()
    p.send(MsgType.BULK_START, [3])
    assert p.agent.events() == [ResyncProgress("n2", 0, 3)]
    p.send(MsgType.RECORDS, [TRIGGER_CODE[Trigger.RESYNC], _blob(b"a")])
    peer = p.agent.peers["n2"]
    assert (peer.bulk_total, peer.bulk_received, peer.bulk_done) == (3, 1, False)
    state = (peer.bulk_total, peer.bulk_received, peer.bulk_done)
    p.send(MsgType.BULK_START, ["garbage"])  # used to become a fresh resync of 0 records
    assert (peer.bulk_total, peer.bulk_received, peer.bulk_done) == state
    p.send(MsgType.BULK_END, "garbage")  # used to end the resync anyway
    assert peer.bulk_done is False
    p.send(MsgType.BULK_END, [3])
    assert peer.bulk_done is True
    assert p.agent.stats()["bad_frames"] == {
        "bad-payload": 2, "bad-payload:bulk_start": 1, "bad-payload:bulk_end": 1,
    }
