"""Bulk resync (claim 12: a joiner asks, the active nodes answer), joining readiness, and the
graceful leave (claim 13: push everything to the backups, wait for acks, then go)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sync.context import AgentContext, Peer
from sync.events import LeaveComplete, ResyncComplete, ResyncProgress
from sync.membership import LIVE, MemberState, Mode, ModeEvent, View
from sync.records import Scope, Trigger
from sync.replicate import Replicator, Sent
from sync.wire import TRIGGER_CODE, MsgType, batch_rows

log = logging.getLogger(__name__)

# How many frames of a bulk resync may wait for their ack (in flight, or queued behind them);
# how many records are built at a time; and at most how many one call builds (a few ms of this
# node's loop). See Resync.feed.
BULK_INFLIGHT_FRAMES = 64
BULK_CHUNK_RECORDS = 256
BULK_CALL_RECORDS = 4096


@dataclass(slots=True)
class _Bulk:
    """A bulk resync we answer: the keys to send, and how many went."""

    keys: list[bytes]
    pos: int = 0
    backs_us: bool = False  # the joiner will back us up: a key sweep follows the bulk
    ended: bool = False  # BULK_END is queued; the sweep (if any) waits for the next call


class Resync:
    """The joining side (requests, progress, readiness), the answering side, and leaving."""

    def __init__(self, ctx: AgentContext, rep: Replicator) -> None:
        self.ctx = ctx
        self.rep = rep
        self.join_started = ctx.now
        self.join_wait_s = ctx.config.join_wait_s
        # (peer, seq) of what we pushed on leaving and still wait to see acked.
        self.leave_pending: set[tuple[str, int]] = set()
        self.bulks: dict[str, _Bulk] = {}  # bulk resyncs we answer, by joiner
        # Called with the joiner once its bulk is all queued, if it will back us up (the agent
        # sends it a key sweep: copies from before a false failover are dropped at once).
        self.bulk_done: Callable[[Peer], object] | None = None

    # ---- joining ----------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.join_started = now
        for p in self.ctx.peers.values():
            p.owes_bulk = False

    def restart(self, now: float) -> None:
        """Join again from scratch (after we were declared failed): not ready, ask everyone."""
        self.ctx.ready = False
        self.join_started = now
        for p in self.ctx.peers.values():
            p.bulk_requested = p.bulk_done = p.owes_bulk = False

    def ask_again(self, now: float) -> None:
        """What the peers must send us depends on the view (who owns which bucket now, whom
        we will back up): ask again under a new one. Versions make it idempotent."""
        for p in self.ctx.peers.values():
            p.bulk_requested = p.bulk_done = False
        self.joining(now)

    def joining(self, now: float) -> None:
        """Request bulk resync from every active peer; ready once all of them answered.
        Re-evaluated against each view: a peer that became active since must answer too."""
        ctx = self.ctx
        view = ctx.view
        actives = [p for p in ctx.peers.values() if p.up and view.state(p.name) is MemberState.ACTIVE]
        for p in actives:
            if not p.bulk_requested:
                p.bulk_requested = True
                p.bulk_done = False
                ctx.queue(p, MsgType.BULK_REQUEST, [])
        # Without the wait a node that has heard nobody yet would think itself alone; once it
        # hears every active member of the view it knows, it need not wait any longer.
        in_view = [p for p in ctx.peers.values() if view.state(p.name) is MemberState.ACTIVE]
        heard_all = bool(in_view) and all(p.up for p in in_view)
        waited = now - self.join_started >= self.join_wait_s
        owed = self._owed(now)
        # A fenced node (a data link lost, sync/paths.py) or one on the minority side of a cut
        # stays joining: it cannot, or must not, carry flows.
        ready = ((waited or heard_all) and all(p.bulk_done for p in actives) and not owed
                 and not ctx.held_back())
        if ready and not ctx.ready:
            n = sum(p.bulk_received for p in actives)
            log.info("%s: resync complete, %d records from %s", ctx.node, n, [p.name for p in actives])
            ctx.events.append(ResyncComplete(n))
        ctx.ready = ready

    def _owed(self, now: float) -> list[Peer]:
        """The peers whose bulk resync we still wait for although our view may not ask it of
        them yet: every peer heard announcing itself active since this join began holds state
        this node may have to carry. The join wait alone must not outlast it: a peer whose
        loop is held (a long walk of its table, a bulk build, a GC pause) is silent past the
        failure-detection time, and a joiner that took that for death went on with none of
        its state, beside the peer that held it. Given up only when it answered, is gone for
        certain (its process closed its liveness link, or it left or restarted), or stayed
        silent past the join patience (a frozen host or a cut link sends no close)."""
        patience = self.ctx.config.join_patience_s
        owed: list[Peer] = []
        for p in self.ctx.peers.values():
            if p.up:
                if p.mode in (Mode.ACTIVE, Mode.LEAVING):
                    p.owes_bulk = True
                else:  # left, gone, or joining again itself (it lost its state): owes nothing
                    p.owes_bulk = False
            elif p.owes_bulk and (p.down_at is None or now - p.last_heard >= patience):
                if p.down_at is not None:
                    log.warning("%s: %s, heard active, silent %.0f ms: joining without its state",
                                self.ctx.node, p.name, (now - p.last_heard) * 1e3)
                p.owes_bulk = False  # closed for certain, or silent past our patience
            if p.owes_bulk and not p.bulk_done:
                owed.append(p)
        return owed

    def bulk_started(self, p: Peer, total: int) -> None:
        p.bulk_total, p.bulk_received, p.bulk_done = total, 0, False
        self.ctx.events.append(ResyncProgress(p.name, 0, total))

    def bulk_records(self, p: Peer, n: int) -> None:
        """`n` resync records arrived from `p` (applied or not): report progress per thousand."""
        before = p.bulk_received
        p.bulk_received += n
        if p.bulk_received // 1000 != before // 1000:
            self.ctx.events.append(ResyncProgress(p.name, p.bulk_received, p.bulk_total))

    def bulk_ended(self, p: Peer) -> None:
        p.bulk_done = True
        self.ctx.events.append(ResyncProgress(p.name, p.bulk_received, p.bulk_total))

    # ---- answering ----------------------------------------------------------------------

    def answer_bulk(self, p: Peer) -> bool:
        """Claim 12: common records, our records if the joiner will back us up, and the
        records of buckets we own that will move to it. Returns whether it will back us up.

        The keys are taken now (a snapshot, no records built); the records go out as the
        channel drains (`feed`), each built when it is sent, so it carries the newest version.
        Built all at once, 1M records held this node's loop for seconds: its peers missed its
        heartbeats and failed it, and the joiner went on without it."""
        ctx = self.ctx
        store = ctx.store
        fut = ctx.view.with_active(p.name)
        keys = store.keys(scope=Scope.COMMON)
        backs_us = p.name in fut.backups_of(ctx.node)
        if backs_us:
            keys += store.keys(owner=ctx.node, scope=Scope.NODE)
        moving = [b for b in ctx.owned if fut.owner(b) == p.name]
        if moving:
            # Our own records of a moving bucket come once: with the ones above, if it backs
            # us up. (The lists are disjoint, so no pass over all keys removes duplicates: at
            # 1M that pass held this loop 0.3 s, its joiner failed it, asked again, and the
            # answer began anew, over and over.)
            keys += store.keys(scope=Scope.NODE, buckets=moving, not_owner=ctx.node if backs_us else None)
        ctx.queue(p, MsgType.BULK_START, [len(keys)])
        # A second request (a new view) starts over: its BULK_START resets the joiner's count.
        self.bulks[p.name] = _Bulk(keys, backs_us=backs_us)
        ctx.counters["bulk-answered"] += 1
        log.info("%s: bulk resync to %s: %d records", ctx.node, p.name, len(keys))
        self._feed(p)
        return backs_us

    def feed(self) -> None:
        """Queue more of each bulk resync we answer while its channel has room (called after
        every input and timer, so the stream goes on as acks come back)."""
        if not self.bulks:
            return
        for name in list(self.bulks):
            p = self.ctx.peers[name]
            if not p.up:
                # Paused, not dropped: a joiner silent past the failure-detection time (its
                # loop held by a GC pause, a busy host) is the same process when it answers
                # again, still waiting for this stream's end; nothing tells it to ask again,
                # so a dropped stream left it joining for ever (the lab at 1M: 700k of 1M).
                # Its channel keeps what is queued. A restart or a close ends the stream
                # (peer_restarted): a new process asks anew.
                continue
            self._feed(p)

    def _feed(self, p: Peer) -> None:
        ctx = self.ctx
        bulk = self.bulks[p.name]
        ch = p.channel
        rows = ctx.store.wire_rows
        code = TRIGGER_CODE[Trigger.RESYNC]
        keys = bulk.keys
        # Up to BULK_INFLIGHT_FRAMES awaiting their ack: the joiner acks every few of them
        # (sync/dispatch.py), so the stream is paced by how fast it applies records. Not a
        # fixed lead a call (32 frames: calls come with acks and ticks a few ms apart, which
        # paced the stream at ~300k records/s whatever the CPU), nor the whole window: frames
        # queued at a joiner that applies ~10-20k frames/s must be acked well within the 20 ms
        # retransmission timer (256 or 128 in flight: many frames went twice). One call builds at most
        # BULK_CALL_RECORDS (a few ms of this node's loop). The store lays each record out as
        # its wire array at once (no Record per entry).
        end = min(len(keys), bulk.pos + BULK_CALL_RECORDS)
        inflight = min(BULK_INFLIGHT_FRAMES, ch.window)
        while bulk.pos < end and len(ch.unacked) < inflight:
            chunk = keys[bulk.pos:min(end, bulk.pos + BULK_CHUNK_RECORDS)]
            bulk.pos += len(chunk)
            for batch in batch_rows(rows(chunk), ctx.budget):
                ctx.queue(p, MsgType.RECORDS, [code, batch.blob])
        if bulk.pos < len(keys):
            return
        if not bulk.ended:
            ctx.queue(p, MsgType.BULK_END, [len(keys)])
            bulk.ended = True
        sweep = bulk.backs_us and self.bulk_done is not None
        if sweep and ch.unsent():
            # The sweep waits until the last records and BULK_END have left (a later call: an
            # ack, a tick): at 1M keys building it held this loop for ~0.4 s between queueing
            # them and sending them, and the joiner waited that long.
            return
        del self.bulks[p.name]
        if sweep:
            assert self.bulk_done is not None
            # After the last record, not before: a sweep queued ahead of the stream would
            # list keys the joiner does not hold yet, and it would WANT every one of them.
            self.bulk_done(p)

    # ---- leaving --------------------------------------------------------------------------

    def leave(self, now: float) -> bool:
        """Claim 13: push everything to the backups, wait for acks, then ask to leave.
        Returns whether anything was pushed (False: already leaving, or owned nothing)."""
        ctx = self.ctx
        if ctx.modes.mode in (Mode.LEAVING, Mode.LEFT, Mode.GONE):
            return False  # already on its way out
        if ctx.fire(ModeEvent.LEAVE) is Mode.LEFT:
            return False  # it was joining: it owns nothing, so leaving is immediate
        rep = self.rep
        rep.send_dirty(now, Trigger.LEAVE)
        own = list(ctx.store.records(owner=ctx.node, scope=Scope.NODE))
        group = tuple(n for n in ctx.view.backups_of(ctx.node) if ctx.peers[n].up)
        sent = rep.send_records({group: own} if group and own else {}, Trigger.LEAVE, now, track=True)
        # Our common records too, to every live node: one sent just before leave() must not
        # be lost because we stopped retransmitting it.
        common = [r for r in ctx.store.records(scope=Scope.COMMON) if r.owner == ctx.node]
        everyone = tuple(p.name for p in ctx.live_peers())
        if common and everyone:
            sent += rep.send_records({everyone: common}, Trigger.LEAVE, now, track=True)
        self.leave_pending = set(sent)
        log.info("%s: leaving, pushed %d records to %s", ctx.node, len(own), list(group))
        return True

    def leaving(self, now: float) -> None:
        """Timers: all pushed and acked -> tell the peers; nobody left to tell -> gone."""
        ctx = self.ctx
        if ctx.modes.mode is Mode.LEAVING and self.leave_pending and not any(
            p.up and p.mode in (Mode.JOINING, Mode.ACTIVE) for p in ctx.peers.values()
        ):
            # A leaving node proposes no views, and no live peer will: no new view will tell
            # us that the acks of a dead peer are not coming (pushed_under), so stop waiting
            # for them here, or we stay leaving forever.
            self.leave_pending = {ps for ps in self.leave_pending if ctx.peers[ps[0]].up}
        if ctx.modes.mode is Mode.LEAVING and not self.leave_pending:
            ctx.fire(ModeEvent.PUSHED)
            for p in ctx.live_peers():
                ctx.queue(p, MsgType.LEAVE, [])
        if ctx.modes.mode is Mode.LEFT and not any(
            p.up and ctx.view.state(p.name) is MemberState.ACTIVE for p in ctx.peers.values()
        ):
            # Nobody left to hand over to: leaving is complete on our own.
            ctx.fire(ModeEvent.ALONE)
            ctx.owned = set()
            ctx.events.append(LeaveComplete())

    def pushed_under(self, v: View, sent: Sent) -> None:
        """A new view while leaving: acks still awaited from nodes that failed or left will
        not come; what we just sent our (new) backups must be acked too before we go."""
        ctx = self.ctx
        self.leave_pending = {
            ps for ps in self.leave_pending if ctx.peers[ps[0]].up and v.state(ps[0]) in LIVE
        }
        if sent:
            self.leave_pending.update(sent)
            ctx.fire(ModeEvent.MORE_TO_PUSH)

    def peer_left(self, p: Peer) -> None:
        p.mode = Mode.LEFT

    def acked(self, ps: tuple[str, int]) -> None:
        self.leave_pending.discard(ps)

    def peer_restarted(self, p: Peer) -> None:
        self.bulks.pop(p.name, None)  # its channel is gone; it asks again
        p.bulk_requested = p.bulk_done = p.owes_bulk = False
        p.bulk_total = p.bulk_received = 0
        self.leave_pending = {k for k in self.leave_pending if k[0] != p.name}
