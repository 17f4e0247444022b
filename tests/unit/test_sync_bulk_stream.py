"""A bulk resync answer streams (sync/resync.py): keys are taken at the request, records are
built and queued as the channel drains, each in its newest version, every key once."""

from __future__ import annotations

from sync.config import SyncConfig
from sync.context import AgentContext
from sync.membership import MemberState, compute_view
from sync.records import MemoryStore, Record, Scope
from sync.replicate import Replicator
from sync.resync import BULK_CALL_RECORDS, BULK_CHUNK_RECORDS, BULK_INFLIGHT_FRAMES, Resync
from sync.wire import MsgType, records_from_blob

N = 5000


def _answering(n: int = N) -> tuple[AgentContext, Resync, MemoryStore]:
    cfg = SyncConfig(lab_id="t", key=b"k" * 32, node="n1",
                     nodes=(("n1", ("10.0.0.1", 7400)), ("n2", ("10.0.0.2", 7400))), buckets=4)
    store = MemoryStore()
    ctx = AgentContext(cfg, store, 0.0, 1)
    # n1 alone active and owning everything; n2 joins and will back n1 up.
    ctx.view = compute_view(ctx.names, {"n1": MemberState.ACTIVE, "n2": MemberState.JOINING}, 4, 1, 1)
    ctx.owned = {1, 2, 3, 4}
    ctx.peers["n2"].up = True
    for i in range(n):
        store.put_local(Record(f"k{i:05}".encode(), Scope.NODE, "n1", 1, 1 + i % 4, [i], False))
    return ctx, Resync(ctx, Replicator(ctx)), store


def test_the_answer_is_queued_as_the_channel_drains_and_holds_every_key_once() -> None:
    ctx, resync, store = _answering()
    p = ctx.peers["n2"]
    resync.answer_bulk(p)
    ch = p.channel
    first = len(ch.unacked)
    # Not the whole answer at once: a bounded lead (BULK_START, the frames that may await
    # their ack, one chunk), at most BULK_CALL_RECORDS built.
    assert first <= 1 + BULK_INFLIGHT_FRAMES + BULK_CHUNK_RECORDS // 10
    assert resync.bulks["n2"].pos <= BULK_CALL_RECORDS < N
    got: dict[bytes, Record] = {}
    types: list[MsgType] = []
    now = 0.0
    changed = False
    for _ in range(10_000):
        now += 0.001
        sent = ch.due(now, None)
        for o, _retransmit in sent:
            types.append(o.type)
            if o.type is MsgType.RECORDS:
                for r in records_from_blob(o.payload[1]):
                    assert r.key not in got, "every key once"
                    got[r.key] = r
        ch.on_ack(ch.next_unsent - 1)
        if not changed and len(got) > N // 2:
            # A change while the answer streams: the record still to go is sent as it is now.
            changed = True
            last = store.get(f"k{N - 1:05}".encode())
            assert last is not None
            store.put_local(Record(last.key, Scope.NODE, "n1", last.version, last.bucket, ["new"], False))
        resync.feed()
        if types and types[-1] is MsgType.BULK_END:
            break
    assert types[0] is MsgType.BULK_START and types[-1] is MsgType.BULK_END
    assert len(got) == N and changed
    assert got[f"k{N - 1:05}".encode()].data == ["new"]
    assert not resync.bulks, "the cursor is gone once BULK_END is queued"


def test_a_silent_joiner_pauses_its_stream_and_a_restarted_one_drops_it() -> None:
    ctx, resync, _ = _answering(3 * BULK_CALL_RECORDS)  # more than two calls build
    p = ctx.peers["n2"]
    resync.answer_bulk(p)
    assert "n2" in resync.bulks
    p.channel.unacked.clear()  # as if all acked: room for more
    pos = resync.bulks["n2"].pos
    p.up = False  # silent past the failure-detection time: perhaps only its loop is held
    resync.feed()
    assert resync.bulks["n2"].pos == pos, "nothing more is queued for a peer that is down"
    p.up = True  # the same process answers again: the stream goes on where it was
    queued = p.channel.next_seq
    resync.feed()
    assert p.channel.next_seq > queued and resync.bulks["n2"].pos > pos
    resync.peer_restarted(p)  # a new process (or a closed one) asks anew, if at all
    assert not resync.bulks


def test_acks_are_cumulative_per_turn_and_wait_for_the_tick_unless_someone_waits() -> None:
    from sync.records import Trigger
    from sync.sim import SimCluster
    from sync.wire import decode_frame

    def burst(sim: SimCluster, tag: str, waited: bool) -> list[tuple[bytes, tuple[str, int]]]:
        a1 = sim.agents["n1"]
        for i in range(10):
            key = f"{tag}{i}".encode()
            sim.stores["n1"].put_local(Record(key, Scope.NODE, "n1", 1, a1.owned_buckets[0], [i], False))
            if waited:  # a held packet waits on this ack (sync-and-notify)
                a1.sync_and_notify([key], sim.now, 1.0, trigger=Trigger.RELATED)
            else:
                a1.changed(key, sim.now)
        return [(d, sim.addrs["n1"]) for _, d in a1.datagrams()]

    def acks(sim: SimCluster) -> int:
        c = sim.base
        out = sim.agents["n2"].datagrams()
        frames = [decode_frame(d, c.key, c.lab_id, c.max_frame_bytes) for _, d in out]
        return sum(1 for f in frames if f.type is MsgType.ACK)

    sim = SimCluster(2)
    sim.start()
    assert sim.run_until(sim.all_active, 5.0)
    sim.run(0.05)  # nothing in flight
    n2 = sim.agents["n2"]
    # Plain changes, one datagram a turn: no ack at once, one for all of them at the tick.
    for d, src in burst(sim, "a", waited=False):
        n2.receive(d, src, sim.now)
    assert acks(sim) == 0
    n2.tick(sim.now + 0.001)
    assert acks(sim) == 1, "one cumulative ack at the tick"
    # Someone waits on these: acked in the turn they arrive, once for the turn's datagrams.
    n2.receive_many(burst(sim, "b", waited=True), sim.now)
    assert acks(sim) == 1
    for d, src in burst(sim, "c", waited=True):
        n2.receive(d, src, sim.now)
    assert acks(sim) == 10, "a turn each: an ack each"
    assert {f"{t}{i}".encode() for t in "abc" for i in range(10)} <= {
        r.key for r in sim.stores["n2"].records(owner="n1")}


def test_a_call_queues_up_to_the_frames_in_flight_allowed_and_its_cap() -> None:
    """Calls come with acks and ticks, a few ms apart: a call that queued only a fixed lead
    paced the whole stream, however fast records were built; one that filled the window kept
    256 frames queued at a joiner slower than the retransmission timer."""
    ctx, resync, _ = _answering(3 * BULK_CALL_RECORDS)
    p = ctx.peers["n2"]
    ch = p.channel
    resync.answer_bulk(p)
    # One call stops at its cap or at the frames allowed in flight, whichever comes first.
    pos = resync.bulks["n2"].pos
    assert pos == BULK_CALL_RECORDS or len(ch.unacked) >= BULK_INFLIGHT_FRAMES
    assert len(ch.unacked) <= BULK_INFLIGHT_FRAMES + BULK_CHUNK_RECORDS // 10
    for i in range(3):
        ch.due(0.001 * i, None)
        resync.feed()
    assert BULK_INFLIGHT_FRAMES <= len(ch.unacked) <= BULK_INFLIGHT_FRAMES + BULK_CHUNK_RECORDS // 10
    assert resync.bulks["n2"].pos < 3 * BULK_CALL_RECORDS
    ch.due(0.003, None)
    resync.feed()
    assert ch.unsent() == 0, "nothing more while as many await their ack"
    # An ack of ten frames: about ten more.
    ch.on_ack(10)
    resync.feed()
    assert 0 < len(ch.due(0.004, None)) <= 10 + BULK_CHUNK_RECORDS // 10


def test_bulk_records_are_acked_in_the_turn_they_arrive() -> None:
    """The bulk's sender queues more as acks come: in the turn once BULK_ACK_EVERY arrived
    since the last ack, not only at the tick."""
    from sync.dispatch import BULK_ACK_EVERY
    from sync.sim import SimCluster
    from sync.wire import decode_frame

    sim = SimCluster(2, keys_interval_ms=0)
    sim.start()
    assert sim.run_until(sim.all_active, 5.0)
    sim.kill("n2")
    assert sim.run_until(lambda: len(sim.agents["n1"].owned_buckets) == sim.base.buckets, 5.0)
    for i in range(20_000):
        sim.stores["n1"].put_local(Record(f"k{i:05}".encode(), Scope.NODE, "n1", 1,
                                          sim.agents["n1"].owned_buckets[i % 4], [i], False))
    sim.revive("n2")
    c = sim.base
    n2 = sim.agents["n2"]

    def leading_records() -> list[tuple[bytes, tuple[str, int]]]:
        """n2's pending datagrams, if they are all bulk records in order after what it holds."""
        got = sorted((m for m in sim._heap if m.dst == "n2"), key=lambda m: m.n)
        frames = [decode_frame(m.data, c.key, c.lab_id, c.max_frame_bytes) for m in got]
        ch = n2._ctx.peers["n1"].channel
        want = list(range(ch.recv_next, ch.recv_next + len(frames)))
        if (len(frames) < BULK_ACK_EVERY or any(f.type is not MsgType.RECORDS for f in frames)
                or [f.seq for f in frames] != want):
            return []
        return [(m.data, m.src) for m in got]

    turn: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(5000):
        sim.step(0.0001)
        if n2._ctx.peers["n1"].bulk_received and (turn := leading_records()):
            break
    assert turn, "a turn of bulk records alone"
    sim._heap = [m for m in sim._heap if m.dst != "n2"]
    n2.datagrams()
    n2.receive_many(turn, sim.now)
    out = [decode_frame(d, c.key, c.lab_id, c.max_frame_bytes) for _, d in n2.datagrams()]
    assert [f.type for f in out] == [MsgType.ACK], "one ack for the turn, at once"
    assert out[0].ack == n2._ctx.peers["n1"].channel.cum_ack


def test_the_key_sweep_after_a_bulk_waits_until_bulk_end_has_left() -> None:
    """Building a sweep of 1M keys holds the loop ~0.4 s: not between queueing the last
    records and BULK_END and sending them."""
    ctx, resync, _ = _answering(300)
    p = ctx.peers["n2"]
    ch = p.channel
    swept: list[int] = []
    resync.bulk_done = lambda peer: swept.append(peer.channel.unsent())
    resync.answer_bulk(p)
    assert list(ch.unacked.values())[-1].type is MsgType.BULK_END
    assert not swept and "n2" in resync.bulks, "BULK_END is queued, not sent: no sweep yet"
    resync.feed()
    assert not swept
    ch.due(0.0, None)
    resync.feed()
    assert swept == [0] and not resync.bulks
    resync.feed()
    assert swept == [0], "one sweep"
