"""Takeover: adopt a new view (claims 10-11: promote a failed node's state before taking its
buckets, hand on backup duties), reconcile records of moved buckets, and rejoin after this
node was declared failed."""

from __future__ import annotations

import logging

from sync.context import AgentContext
from sync.events import BucketsGained, BucketsLost, LeaveComplete, ViewChanged
from sync.membership import LIVE, MemberState, Mode, ModeEvent, View
from sync.records import Record, Scope, Trigger
from sync.replicate import Groups, Replicator, Sent
from sync.resync import Resync

log = logging.getLogger(__name__)


def _handed_over(old: View, new: View, bucket: int) -> bool:
    """Whether `bucket` moves from a live owner that forwards it until the move (a join's
    rebalance, a handback, a graceful leave), rather than from one that stopped (failed,
    restarted, fenced itself)."""
    owner = old.owner(bucket)
    if owner is None or owner not in new.nodes:
        return owner is None
    return new.state(owner) in (MemberState.ACTIVE, MemberState.OFFLINE)


class Takeover:
    """Turns an adopted view into this node's mode, buckets, state and sends."""

    def __init__(self, ctx: AgentContext, rep: Replicator, resync: Resync) -> None:
        self.ctx = ctx
        self.rep = rep
        self.resync = resync

    def adopt(self, v: View, now: float) -> None:
        ctx = self.ctx
        old = ctx.view
        ctx.view = v
        ctx.max_epoch_seen = max(ctx.max_epoch_seen, v.epoch)
        # The cluster's members for the majority rule: live in a view; gone when offline.
        for name, st in zip(v.nodes, v.states, strict=True):
            if st in LIVE:
                ctx.members.add(name)
            elif st is MemberState.OFFLINE and name != ctx.node:
                ctx.members.discard(name)
        left = self._change_mode(v, now)
        ctx.events.append(ViewChanged(v))
        new_owned = set(v.buckets_of(ctx.node)) if ctx.owning() else set()
        lost = sorted(ctx.owned - new_owned)
        gained = sorted(new_owned - ctx.owned)
        ctx.owned = new_owned
        self._reconcile(v)
        if lost:
            ctx.events.append(BucketsLost(tuple(lost)))
        # An unplanned mark lasts while the bucket stays ours: one gained unplanned and lost
        # again before the node replayed (two views in one loop turn), or gained again from a
        # live owner, must not replay at that later gain what the owner already forwarded.
        ctx.unplanned_gain -= set(lost) | set(gained)
        promoted: list[Record] = []
        if gained:
            # State first, then traffic: promote before the node may accept these buckets.
            promoted = ctx.store.promote(gained, ctx.node)
            unplanned = tuple(b for b in gained if not _handed_over(old, v, b))
            ctx.unplanned_gain |= set(unplanned)
            ctx.events.append(BucketsGained(tuple(gained), len(promoted), unplanned))
            log.info("%s: gained buckets %s, promoted %d records", ctx.node, gained, len(promoted))
        # Forget copies we no longer need: an active node holds node records of itself and of
        # the nodes it backs up, nothing else. A joiner keeps what its bulk resync brought: it
        # will need it once active.
        if ctx.modes.mode is not Mode.JOINING:
            keep = {ctx.node, *v.backed_up_by(ctx.node)}
            backed = self._backed_buckets(v)
            for name in ctx.names:
                if name not in keep:
                    # A failed node's copies stay in the buckets we back up: its adopter
                    # promoted its own copies, and its hand-on replaces ours, but if the adopter
                    # fails too before that reaches us (a double failure), ours are the only
                    # copies left, and we or a fellow backup adopt them next.
                    spare = backed if v.state(name) is MemberState.FAILED else frozenset()
                    dropped = ctx.store.drop_owner(name, spare)
                    if dropped:
                        log.info("%s: dropped %d copies of %s's records", ctx.node, dropped, name)
        if ctx.owning():
            sent = self._hand_on(old, v, promoted, now)
            if ctx.modes.mode in (Mode.LEAVING, Mode.LEFT):
                self.resync.pushed_under(v, sent)
        if ctx.modes.mode is Mode.JOINING and v.states != old.states:
            # (the same states at a new epoch: the same owners and groups, nothing to ask anew)
            self.resync.ask_again(now)
        if left:
            log.info("%s: left the cluster (view %d)", ctx.node, v.epoch)
            ctx.events.append(LeaveComplete())

    def _backed_buckets(self, v: View) -> frozenset[int]:
        """The buckets whose owner in `v` has this node in its backup group."""
        me = self.ctx.node
        return frozenset(b for b, o in enumerate(v.bucket_owner, start=1)
                         if o is not None and o != me and me in v.backups_of(o))

    def _change_mode(self, v: View, now: float) -> bool:
        """What the view means for our mode. Returns True if it completes our leave."""
        ctx = self.ctx
        mine = v.state(ctx.node)
        mode = ctx.modes.mode
        if mode is Mode.JOINING and mine is MemberState.ACTIVE and ctx.ready:
            ctx.fire(ModeEvent.ACTIVATED)
            log.info("%s: active in view %d", ctx.node, v.epoch)
        elif mode is Mode.ACTIVE and mine is not MemberState.ACTIVE:
            log.warning("%s: view %d says %s; rejoining", ctx.node, v.epoch, mine.value)
            self._rejoin(now)
        elif mode in (Mode.LEAVING, Mode.LEFT) and mine is MemberState.OFFLINE:
            ctx.fire(ModeEvent.REMOVED)
            return True
        return False

    def _hand_on(self, old: View, v: View, promoted: list[Record], now: float) -> Sent:
        """Send what the new view asks of an owning node: everything to new backups, the
        promoted records to the backups. Returns what was sent, to watch for acks."""
        ctx = self.ctx
        rep = self.rep
        failover = any(old.state(n) in LIVE and v.state(n) is MemberState.FAILED for n in ctx.names)
        trig = Trigger.FAILOVER if failover else Trigger.REBALANCE
        new_group = set(v.backups_of(ctx.node))
        was_active = old.state(ctx.node) is MemberState.ACTIVE
        old_group = set(old.backups_of(ctx.node)) if was_active else set()
        # New backups get everything (Fig. 7, 702-703), except joiners whose bulk resync,
        # asked under the old view, already brought our records for this very role.
        had_bulk = {j for j, f in rep.joiner_futures(old).items() if j in f.backups_of(ctx.node)}
        added = tuple(sorted(
            n for n in new_group - old_group
            if not (old.state(n) is MemberState.JOINING and n in had_bulk)
        ))
        sent: Sent = []
        if added:
            own = list(ctx.store.records(owner=ctx.node, scope=Scope.NODE))
            sent += rep.send_records({added: own} if own else {}, trig, now, track=True)
        if promoted:
            # To our backups and to joiners that will back us up (their bulk resync may
            # predate this promotion).
            groups = {
                g: recs
                for t, recs in rep.group_by_targets(promoted).items()
                if (g := tuple(n for n in t if n not in added))
            }
            sent += rep.send_records(groups, trig, now, track=True)
        return sent

    def _reconcile(self, v: View) -> None:
        """Records of buckets that moved between two live nodes (a rebalance) now belong to
        the bucket's new owner. Do locally what its promote does (owner := new owner,
        version + 1), so every copy agrees; copies we do not need are dropped right after
        by owner. (A tombstone here would block the new owner's push of that same version
        should we become its backup later.)"""
        ctx = self.ctx
        handed: Groups = {}
        # Only a record in a bucket another node owns, and not owned by that node, can need
        # it: found by its key, per owner, and only those records built. Building every record
        # to find them took 0.6 s at 1M entries (2 s on a loaded host), at every view: the
        # answerer stalled in the middle of the bulk it sent, the joiner at each view of it.
        by_owner: dict[str, list[int]] = {}
        for b, o in enumerate(v.bucket_owner, start=1):
            if o is not None and o != ctx.node:
                by_owner.setdefault(o, []).append(b)
        candidates = [r for o, bs in by_owner.items()
                      for k in ctx.store.keys(scope=Scope.NODE, buckets=bs, not_owner=o)
                      if (r := ctx.store.get(k)) is not None and not r.deleted]
        for r in candidates:
            new_owner = v.owner(r.bucket)
            if (
                new_owner is None
                or new_owner == r.owner
                or new_owner == ctx.node
                or r.owner not in ctx.names
                or v.state(r.owner) is not MemberState.ACTIVE
            ):
                continue
            moved = Record(r.key, r.scope, new_owner, r.version + 1, r.bucket, list(r.data), r.deleted)
            ctx.store.apply(moved)
            if r.owner == ctx.node and ctx.peers[new_owner].up:
                handed.setdefault((new_owner,), []).append(moved)
        if handed:
            # The new owner has these already if it resynced from us; if it had not (we come
            # back holding state nobody else has), this is how it gets them.
            self.rep.send_records(handed, Trigger.REBALANCE, ctx.now)

    def rejoin(self, now: float) -> None:
        """Give up being active and join again (a node that fences itself)."""
        self._rejoin(now)

    def _rejoin(self, now: float) -> None:
        """We were declared failed (cut off, or too slow): our buckets went to others, who
        promoted our state. What we hold may have been promoted by us in isolation and
        would shadow newer versions, so reset node state and take the bulk resync.

        Before forgetting, offer each node record to its bucket's current owner, rewritten
        as that owner's (version + 1, what its promote would make): an owner that lacks it
        (a cluster formed without us, which held the only copy) adopts it; an owner with
        the same or a newer version keeps its own."""
        ctx = self.ctx
        rep = self.rep
        offers: Groups = {}
        for r in ctx.store.records(scope=Scope.NODE):
            o = ctx.view.owner(r.bucket)
            if o is not None and o != ctx.node and ctx.peers[o].up:
                offers.setdefault((o,), []).append(
                    Record(r.key, r.scope, o, r.version + 1, r.bucket, list(r.data), False)
                )
        if offers:
            rep.send_records(offers, Trigger.REBALANCE, now)
        if any(st is MemberState.ACTIVE for st in ctx.view.states):
            dropped = sum(ctx.store.drop_owner(n) for n in ctx.names)
            log.warning("%s: rejoining; dropped %d node records held before", ctx.node, dropped)
        else:
            # Nobody took over from us: what we hold is the best copy there is; keep it.
            log.warning("%s: rejoining a cluster with no active node; keeping our state", ctx.node)
        # Common records carry their own versions: offer ours, in case the others lack some
        # (they formed a view without us); a receiver keeps whichever is newer.
        common = list(ctx.store.records(scope=Scope.COMMON))
        if common:
            rep.send_records(rep.group_by_targets(common), Trigger.REBALANCE, now)
        ctx.fire(ModeEvent.DEMOTED)
        self.resync.restart(now)
