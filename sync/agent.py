"""The sync agent: one per gateway node, a pure protocol object (bytes and a clock in,
datagrams and events out) that replicates records with triggers, backup groups and views.

`SyncAgent` is a facade. The jobs live in their own modules, as collaborating objects over one
shared `AgentContext` (sync/context.py):
  membership  Mode and its transition table, views        leader     heartbeats, election, views
  replicate   targets, batching, tokens, state requests   takeover   adopt a view, rejoin
  resync      bulk resync, joining, graceful leave        dispatch   receive path, message table
  sweep       owners' key sweeps: backups converge"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sync.config import Address, SyncConfig
from sync.context import AgentContext, Peer, PeerStats
from sync.dispatch import Dispatcher
from sync.events import (
    BucketsGained,
    BucketsLost,
    LeaveComplete,
    PeerDown,
    PeerUp,
    RecordApplied,
    ResyncComplete,
    ResyncProgress,
    StateReply,
    SyncCompleted,
    SyncEvent,
    ViewChanged,
)
from sync.leader import Leader
from sync.membership import IllegalModeChange, Mode, ModeEvent, View, has_majority
from sync.policy import SyncPolicy, make_policy
from sync.records import StateStore, Trigger
from sync.replicate import Replicator
from sync.resync import Resync
from sync.sweep import KeySweep
from sync.takeover import Takeover
from sync.wire import BadFrame

# The events are defined in sync.events, the config in sync.config and the modes in
# sync.membership; callers may import them from here too.
__all__ = [
    "Address",
    "BucketsGained",
    "BucketsLost",
    "IllegalModeChange",
    "LeaveComplete",
    "Mode",
    "ModeEvent",
    "Peer",
    "PeerDown",
    "PeerStats",
    "PeerUp",
    "RecordApplied",
    "ResyncComplete",
    "ResyncProgress",
    "StateReply",
    "SyncAgent",
    "SyncCompleted",
    "SyncConfig",
    "SyncEvent",
    "ViewChanged",
]

log = logging.getLogger(__name__)


class SyncAgent:
    """State replication for one node. Drive it with `start`, `receive`, `tick` and the
    trigger calls; send what `datagrams()` returns; handle what `events()` returns."""

    def __init__(
        self, config: SyncConfig, store: StateStore, now: float, incarnation: int | None = None
    ) -> None:
        ctx = self._ctx = AgentContext(config, store, now, incarnation)
        self.config = config
        self.store = store
        self.node = ctx.node
        self.names = ctx.names
        self.index = ctx.index
        self.incarnation = ctx.incarnation
        self.peers: dict[str, Peer] = ctx.peers
        self._replicate = Replicator(ctx)
        self._resync = Resync(ctx, self._replicate)
        self._takeover = Takeover(ctx, self._replicate, self._resync)
        self._leader = Leader(ctx, self._takeover)
        self._sweep = KeySweep(ctx, self._replicate)
        self._resync.bulk_done = self._sweep.send
        self._dispatch = Dispatcher(ctx, self._replicate, self._resync, self._leader, self._sweep)

    # ---- what other code reads --------------------------------------------------------

    @property
    def view(self) -> View:
        return self._ctx.view

    @property
    def mode(self) -> Mode:
        return self._ctx.modes.mode

    @property
    def policy(self) -> SyncPolicy:
        return self._ctx.policy

    @property
    def owned_buckets(self) -> list[int]:
        return sorted(self._ctx.owned)

    def take_unplanned(self, buckets: set[int]) -> set[int]:
        """Of `buckets` (just adopted), those gained from an owner that stopped without handing
        them over: their held packets are to be replayed (lossless takeover). Asked once."""
        ctx = self._ctx
        out = buckets & ctx.unplanned_gain
        ctx.unplanned_gain -= buckets
        return out

    # ---- driving it -------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Announce this incarnation and begin joining (owns no buckets until resynced)."""
        ctx = self._ctx
        ctx.now = now
        ctx.started = True
        self._resync.start(now)
        ctx.policy.start(now)
        self._leader.hello(now)

    def receive(self, data: bytes, src: Address, now: float) -> None:
        """Handle one datagram. Never raises: bad input is dropped and counted."""
        self.receive_many(((data, src),), now)

    def receive_many(self, datagrams: Iterable[tuple[bytes, Address]], now: float) -> None:
        """Handle the datagrams one turn of the loop read, then answer once: one cumulative
        ack per peer (riding on a data frame when there is one), not one per datagram.
        Never raises: bad input is dropped and counted."""
        ctx = self._ctx
        ctx.now = now
        if ctx.modes.mode is Mode.GONE:
            return
        dispatch = self._dispatch.receive
        for data, src in datagrams:
            try:
                dispatch(data, src, now)
            except BadFrame as exc:
                ctx.bad[exc.kind.value] += 1
                log.debug("%s: dropped frame from %s: %s", self.node, src, exc)
            except Exception:  # a bug of ours must not kill the node's loop
                ctx.bad["internal-error"] += 1
                log.exception("%s: internal error handling a frame from %s", self.node, src)
        try:
            self._resync.feed()
            ctx.pump(now)
            ctx.send_acks(delayed_too=False)
        except Exception:
            ctx.bad["internal-error"] += 1
            log.exception("%s: internal error after frames", self.node)

    def tick(self, now: float) -> None:
        """Timers: heartbeats, failure detection, membership, periodic sync, retransmits.
        Never raises: a bug of ours must not stop the node's timers."""
        try:
            self._tick(now)
        except Exception:
            self._ctx.bad["internal-error"] += 1
            log.exception("%s: internal error in tick", self.node)

    def _tick(self, now: float) -> None:
        ctx = self._ctx
        ctx.now = now
        mode = ctx.modes.mode
        if not ctx.started or mode is Mode.GONE:
            return
        self._majority(now)
        if ctx.modes.mode is Mode.JOINING:
            self._resync.joining(now)
        leader = self._leader
        leader.heartbeat(now)
        leader.detect_failures(now, self._replicate.peer_down)
        leader.tick(now)
        self._resync.leaving(now)
        self._replicate.period(now)
        self._replicate.deadlines(now)
        self._resync.feed()
        self._sweep.tick(now)
        ctx.pump(now)
        ctx.send_acks()

    def _majority(self, now: float) -> None:
        """Majority rule: cut off from the others on every path, only a side holding a
        majority of the cluster's members (an even split: the side with the lowest node in
        ring order) keeps and adopts buckets. This node, on the other side, stops forwarding
        every bucket (`attention`) and stays joining until the majority is back, then rejoins
        with a resync. Members gone for certain (closed, offline) are not counted."""
        ctx = self._ctx
        if not ctx.config.majority or ctx.modes.mode not in (Mode.JOINING, Mode.ACTIVE):
            return
        # A side about to lose the majority must let go before the other side adopts: it
        # counts a peer as gone two heartbeats before the failure-detection time fails it.
        margin = 2 * ctx.hb_s if ctx.config.miss_limit >= 3 else 0.0
        fresh = ctx.dead_s - margin
        reachable = {ctx.node, *(p.name for p in ctx.peers.values() if p.up and now - p.last_heard <= fresh)}
        members = sorted(ctx.members | {ctx.node})
        ok = has_majority(members, reachable, ctx.names)
        if ok != ctx.attention:
            return
        ctx.attention = not ok
        ctx.counters["attention" if not ok else "attention-over"] += 1
        if not ok:
            # Only stop forwarding: the state is kept, in case the others are dead rather than
            # cut off. If they formed a view without us, we rejoin when it reaches us.
            log.warning("%s: cut off from the majority of %s (hears %s): fail closed, forwarding nothing",
                        self.node, members, sorted(reachable))
            self._forward_nothing()
        else:
            log.info("%s: the majority is back", self.node)
            if ctx.modes.mode is not Mode.ACTIVE:
                # A joiner goes on with its join: a peer that restarted asks anew (its new
                # incarnation resets our bulk state), a view formed meanwhile makes us ask
                # again (Takeover.adopt), and a stream paused while we were apart goes on.
                # Starting over here restarted a bulk of 1M at every held loop of its answerer.
                pass
            elif ctx.max_epoch_seen > ctx.view.epoch:
                # The majority formed views without us meanwhile: our buckets are theirs now
                # and what we hold may be stale. Rejoin, resync first, as a node that joins.
                self._takeover.rejoin(now)
            else:
                self._takeover.adopt(ctx.view, now)  # nobody moved on: take back what is ours

    @property
    def attention(self) -> bool:
        return self._ctx.attention

    def peer_closed(self, name: str, incarnation: int, now: float) -> bool:
        """The kernel told us that `name`'s process `incarnation` is gone (its authenticated
        liveness connection got FIN or RST, sync/liveness.py). Declares it down at once, as
        a heartbeat timeout would, and proposes the view without it if we lead. Ignored
        (and counted as `peer-closed-stale`) unless `incarnation` is the one we know.
        Returns whether it was taken. Never raises."""
        ctx = self._ctx
        ctx.now = now
        if not ctx.started or ctx.modes.mode is Mode.GONE:
            return False
        try:
            p = self._leader.peer_closed(name, incarnation, self._replicate.peer_down)
            if p is None:
                return False
            # That process sends nothing more; a datagram of it still queued behind the close
            # must not bring it back up, so its frames are stale from now on.
            self._dispatch.end_incarnation(p)
            p.inc = 0
            # Gone for certain: it no longer counts for the majority until a view has it again.
            ctx.members.discard(name)
            self._leader.tick(now)
            self._resync.leaving(now)
            ctx.pump(now)
        except Exception:
            ctx.bad["internal-error"] += 1
            log.exception("%s: internal error on the close of %s", self.node, name)
        return True

    def heard(self, name: str, incarnation: int, now: float) -> bool:
        """A path probe of `name`'s process `incarnation` arrived on some cluster interface
        (sync/paths.py): it is alive, as a heartbeat would say, so a cut sync segment alone
        does not fail it. Only refreshes a peer that is up with that very incarnation (a
        probe carries no mode, epoch or readiness: heartbeats bring a peer up). Returns
        whether it was taken. Never raises."""
        p = self.peers.get(name)
        if p is None or incarnation == 0 or p.inc != incarnation or not p.up:
            return False
        if now > p.last_heard:
            p.last_heard = now
        return True

    @property
    def fenced(self) -> bool:
        return self._ctx.fenced

    def fence(self, on: bool, now: float) -> None:
        """Self-fencing: this node lost a data link (sync/paths.py decides). On: it gives up
        its buckets at once and stays joining, not ready, so the view hands them to its
        backups, which hold its state. Off: it rejoins from scratch, resync first, as a
        node that joins. Never raises."""
        ctx = self._ctx
        ctx.now = now
        if on == ctx.fenced or ctx.modes.mode not in (Mode.JOINING, Mode.ACTIVE):
            return
        try:
            ctx.fenced = on
            ctx.counters["fenced" if on else "unfenced"] += 1
            if on:
                log.warning("%s: fencing itself: a data link is lost; handing its buckets on", self.node)
                if ctx.modes.mode is Mode.ACTIVE:
                    self._takeover.rejoin(now)
                ctx.ready = False
                self._forward_nothing()
            else:
                log.info("%s: data links back; rejoining (resync first)", self.node)
                self._resync.restart(now)
            self._leader.heartbeat(now, force=True)
            self._leader.tick(now)
            ctx.pump(now)
        except Exception:
            ctx.bad["internal-error"] += 1
            log.exception("%s: internal error while fencing", self.node)

    # ---- triggers (claims 2-7, 14-17) -------------------------------------------------

    def changed(self, key: bytes, now: float, trigger: Trigger = Trigger.MODIFIED) -> None:
        """A record changed in the store (claims 2-5): send it now, or queue it for the period."""
        self.changed_many((key,), now, trigger)

    def changed_many(self, keys: Iterable[bytes], now: float, trigger: Trigger = Trigger.MODIFIED) -> None:
        """Several records changed at once (one turn of the node's loop): sent batched, as few
        datagrams as their destinations allow, or queued for the period."""
        self._ctx.now = now
        self._replicate.changed_many(keys, now, trigger)
        self._ctx.pump(now)

    def sync_and_notify(
        self,
        keys: Iterable[bytes],
        now: float,
        timeout_s: float,
        peers: Iterable[str] | None = None,
        trigger: Trigger = Trigger.RELATED,
    ) -> int:
        """Send the records now and emit SyncCompleted(token, acked, peers) once every peer
        acked (acked=True) or at the deadline (acked=False). Returns the token."""
        self._ctx.now = now
        token = self._replicate.sync_and_notify(keys, now, timeout_s, peers, trigger)
        self._ctx.pump(now)
        return token

    def send_turn(
        self,
        holds: Sequence[tuple[Iterable[bytes], float]],
        changed: Iterable[bytes],
        now: float,
    ) -> list[int]:
        """What one turn of the node's loop changed, sent together: a sync-and-notify for the
        records of each hold (`keys`, `timeout_s`), and the records that merely changed.
        Each peer gets them in as few datagrams as they fit in (one, mostly). Returns the
        holds' tokens, in order; each ends in SyncCompleted as `sync_and_notify`'s does."""
        self._ctx.now = now
        tokens = self._replicate.send_turn(holds, changed, now)
        self._ctx.pump(now)
        return tokens

    def request_state(self, key: bytes, now: float, timeout_s: float | None = None) -> None:
        """Claim 14: ask the live nodes for a record this node lacks; StateReply later."""
        self._ctx.now = now
        self._replicate.request_state(key, now, timeout_s)
        self._ctx.pump(now)

    def full_sync(self, now: float) -> None:
        """Claim 6: send all state now."""
        self._ctx.now = now
        self._replicate.send_all(now, Trigger.FULL_SYNC)
        self._ctx.pump(now)

    def set_policy(self, name: str, interval_ms: int, differential: bool) -> None:
        """Switch policy at run time. Changes queued for a period go out on the next tick
        if the new policy sends on demand."""
        ctx = self._ctx
        ctx.policy = make_policy(name, interval_ms, differential, ctx.now)
        if ctx.policy.send_now() and self._replicate.dirty:
            self._replicate.send_dirty(ctx.now, Trigger.MODIFIED)
            ctx.pump(ctx.now)

    def leave(self, now: float) -> None:
        """Claim 13: push everything to the backups, wait for acks, then ask to leave."""
        self._ctx.now = now
        if self._resync.leave(now):
            self._ctx.pump(now)

    # ---- output -------------------------------------------------------------------------

    def _forward_nothing(self) -> None:
        """Attention and fencing: give up every owned bucket at once (the state is kept)."""
        ctx = self._ctx
        if ctx.owned:
            lost = tuple(sorted(ctx.owned))
            ctx.owned = set()
            ctx.events.append(BucketsLost(lost))

    def datagrams(self) -> list[tuple[Address, bytes]]:
        ctx = self._ctx
        out, ctx.out = ctx.out, []
        return out

    def events(self) -> list[SyncEvent]:
        ctx = self._ctx
        ev, ctx.events = ctx.events, []
        return ev

    # ---- step-through -------------------------------------------------------------------

    def freeze(self, frozen: bool) -> None:
        """Step-through: hold new reliable frames (heartbeats and acks keep flowing)."""
        ctx = self._ctx
        ctx.frozen = frozen
        ctx.credit = 0
        if not frozen:
            ctx.pump(ctx.now)

    def step(self) -> int:
        """Release one held reliable frame; returns how many were released (0 or 1)."""
        ctx = self._ctx
        if not ctx.frozen:
            return 0
        ctx.credit += 1
        ctx.stepped = None
        before = ctx.credit
        ctx.pump(ctx.now)
        released = before - ctx.credit
        ctx.credit = 0
        return released

    def stepped(self) -> dict[str, Any] | None:
        """The message the last step released (sync.context.released), None if none."""
        return self._ctx.stepped

    def held(self) -> int:
        """Reliable frames waiting to be sent (held by a freeze or behind a window)."""
        return sum(p.channel.unsent() for p in self.peers.values())

    # ---- observation --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for the daemon and the console. `bad_frames` counts dropped input by
        reason, and malformed payloads also by reason and message type ("bad-payload:records")."""
        ctx = self._ctx
        lat = sorted(self._replicate.latency_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        counters = dict(ctx.counters)
        if ctx.modes.refused:
            counters["mode-change-refused"] = ctx.modes.refused
        return {
            "node": self.node,
            "incarnation": self.incarnation,
            "mode": ctx.modes.mode.name.lower(),
            "epoch": ctx.view.epoch,
            "policy": ctx.policy.name,
            "interval_ms": ctx.policy.interval_ms,
            "differential": ctx.policy.differential,
            "owned_buckets": sorted(ctx.owned),
            "peers": {
                p.name: {
                    "up": p.up,
                    "sent": dict(p.stats.sent),
                    "received": dict(p.stats.received),
                    "acked": p.stats.acked,
                    "retransmitted": p.stats.retransmitted,
                    "bytes_sent": p.stats.bytes_sent,
                    "bytes_received": p.stats.bytes_received,
                    "acked_by_type": dict(p.stats.acked_by_type),
                    "retransmitted_by_type": dict(p.stats.retransmitted_by_type),
                    "bytes_sent_by_type": dict(p.stats.bytes_by_type),
                    "unacked": len(p.channel.unacked),
                    "flaps": p.stats.flaps,
                    "late_ms": p.stats.late_ms,
                    "flap_age_s": None if p.stats.flapped_at is None
                    else round(ctx.now - p.stats.flapped_at, 1),
                }
                for p in self.peers.values()
            },
            "bad_frames": dict(ctx.bad),
            "counters": counters,
            "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(lat)},
            "held": self.held(),
            "frozen": ctx.frozen,
            "fenced": ctx.fenced,
            "attention": ctx.attention,
            "members": sorted(ctx.members),
        }

    def provenance(self, key: bytes) -> dict[str, Any] | None:
        return self._replicate.provenance(key)
