"""Keeping the view current: heartbeats announce our mode, silence fails a peer, the elected
leader proposes views from what everyone announces, and every node shares the newest one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sync.context import AgentContext, Peer
from sync.events import PeerDown
from sync.membership import LIVE, MemberState, Mode, View, compute_view
from sync.takeover import Takeover
from sync.wire import MsgType

log = logging.getLogger(__name__)


class Leader:
    """Every node runs one; only the elected one (lowest id, preferring active members)
    proposes views."""

    def __init__(self, ctx: AgentContext, takeover: Takeover) -> None:
        self.ctx = ctx
        self.takeover = takeover
        self._next_hb = ctx.now
        self._behind_since: float | None = None

    # ---- liveness -----------------------------------------------------------------------

    def hello(self, now: float) -> None:
        """Announce this incarnation to every peer."""
        ctx = self.ctx
        for p in ctx.peers.values():
            ctx.send_unreliable(p, MsgType.HELLO, ctx.hb_payload())
        self._next_hb = now + ctx.hb_s

    def heartbeat(self, now: float, force: bool = False) -> None:
        ctx = self.ctx
        if force or now >= self._next_hb:
            self._next_hb = now + ctx.hb_s
            for p in ctx.peers.values():
                ctx.send_unreliable(p, MsgType.HEARTBEAT, ctx.hb_payload())

    def detect_failures(self, now: float, on_down: Callable[[str], None]) -> None:
        """Peers silent for the failure-detection time are down; `on_down(name)` for each."""
        ctx = self.ctx
        view = ctx.view
        # A joiner not active in the view owns no bucket and backs up nobody: its silence
        # costs nothing until it is, so it is given the join patience, not the failure-
        # detection time. Failed at the first held loop, its join began anew under the next
        # view, and a bulk of 1M (seconds long) restarted at every stall of either side.
        # (Its death is still seen at once when its process closes its liveness link.)
        patient = max(ctx.dead_s, ctx.config.join_patience_s)
        for p in ctx.peers.values():
            if not p.up:
                continue
            joining = p.mode is Mode.JOINING and view.state(p.name) is not MemberState.ACTIVE
            if now - p.last_heard > (patient if joining else ctx.dead_s):
                self._down(p, f"silent {(now - p.last_heard) * 1e3:.0f} ms", False, on_down)

    def peer_closed(self, name: str, incarnation: int, on_down: Callable[[str], None]) -> Peer | None:
        """The kernel closed the sync connection of `name`'s process `incarnation`: that
        process is gone. Down at once, as a heartbeat timeout would; returns the peer, or
        None if the close is not of the incarnation we know (an older process, or one that
        has been replaced already: the live one must not pay for it)."""
        ctx = self.ctx
        p = ctx.peers.get(name)
        if p is None or incarnation == 0 or p.inc != incarnation:
            ctx.counters["peer-closed-stale"] += 1
            log.info("%s: ignored a close of %s incarnation %d (we know %s)", ctx.node, name, incarnation,
                     p.inc if p is not None else "no such peer")
            return None
        ctx.counters["peer-closed"] += 1
        if p.up:
            self._down(p, "its process closed its liveness link", True, on_down)
        return p

    def _down(self, p: Peer, why: str, closed: bool, on_down: Callable[[str], None]) -> None:
        ctx = self.ctx
        p.up = False
        p.down_at = None if closed else ctx.now  # a closed process never answers again
        ctx.counters["peer-down"] += 1
        log.info("%s: peer %s down (%s)", ctx.node, p.name, why)
        ctx.events.append(PeerDown(p.name, closed))
        on_down(p.name)

    def answer_hello(self, p: Peer) -> None:
        """A (re)started peer: answer at once so it learns our incarnation."""
        self.ctx.send_unreliable(p, MsgType.HEARTBEAT, self.ctx.hb_payload())

    # ---- views --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.is_leader(now):
            self._lead(now)
        else:
            self._share_view(now)

    def received(self, v: View, now: float) -> None:
        """A view from a peer (checked to be the function of its states): adopt if newer."""
        if self.newer(v):
            self.takeover.adopt(v, now)

    def is_leader(self, now: float) -> bool:
        """Lowest-id live node, preferring nodes active in the current view."""
        ctx = self.ctx
        if ctx.modes.mode not in (Mode.JOINING, Mode.ACTIVE) or ctx.attention:
            return False  # the minority side of a cut proposes nothing
        view = ctx.view
        if ctx.max_epoch_seen > view.epoch:
            # Someone holds a newer view than ours (a node just started, or a view we missed):
            # learn it before proposing, or a stale proposal could outrank the cluster's. Give
            # up waiting if nobody sends it within the failure-detection time.
            if self._behind_since is None:
                self._behind_since = now
            if now - self._behind_since < ctx.dead_s:
                return False
        else:
            self._behind_since = None
        # The candidates: this node and the live peers that are joining or active; the lowest
        # index among those active in the view wins, else the lowest among all of them.
        # (Indexes are positions in the ring, as in view.states.)
        states = view.states
        me = ctx.index
        best_active = me if states[me] is MemberState.ACTIVE else len(states)
        best_any = me
        for p in ctx.peers.values():
            if p.up and p.mode in (Mode.JOINING, Mode.ACTIVE):
                i = p.index
                if i < best_any:
                    best_any = i
                if i < best_active and states[i] is MemberState.ACTIVE:
                    best_active = i
        return (best_active if best_active < len(states) else best_any) == me

    def desired_states(self) -> dict[str, MemberState]:
        """The member states the leader would propose from what every node announced."""
        ctx = self.ctx
        v = ctx.view
        mode = ctx.modes.mode
        out: dict[str, MemberState] = {}
        for name, cur in zip(v.nodes, v.states, strict=True):
            if name == ctx.node:
                ok = mode is Mode.ACTIVE or (mode is Mode.JOINING and ctx.ready)
                out[name] = MemberState.ACTIVE if ok else MemberState.JOINING
                continue
            p = ctx.peers[name]
            if not p.up:
                # A joiner does not fail a silent peer whose state it still waits for (it
                # gains nothing by it, owning nothing; and the peer, whose loop was only held,
                # would take the view for its own failure when it is back).
                waiting = mode is Mode.JOINING and p.owes_bulk
                out[name] = MemberState.FAILED if cur in LIVE and not waiting else cur
            elif p.mode in (Mode.LEFT, Mode.GONE):
                out[name] = MemberState.OFFLINE
            elif p.mode is Mode.LEAVING:
                out[name] = cur
            elif p.mode is Mode.JOINING:
                if cur is MemberState.ACTIVE:
                    # Active in a view it has seen, yet joining: it lost its state (restart,
                    # reset), so its successor must take over first. A lower epoch only means
                    # its heartbeat left before it learned of its activation.
                    out[name] = MemberState.JOINING if p.epoch >= v.epoch else cur
                elif p.ready and p.epoch == v.epoch:
                    out[name] = MemberState.ACTIVE
                else:
                    out[name] = MemberState.JOINING
            else:  # it believes it is active; the view decides, it will learn from it
                out[name] = cur
        return out

    def _lead(self, now: float) -> None:
        ctx = self.ctx
        desired = self.desired_states()
        # (desired holds every node, in ring order: comparing states is comparing members)
        # Behind a view we never received (is_leader waited for it): propose anyway, above it,
        # even with the same states. Left at our lower epoch, a joiner that holds the higher
        # one would announce an epoch that never matches ours and never be activated.
        if tuple(desired.values()) != ctx.view.states or ctx.max_epoch_seen > ctx.view.epoch:
            c = ctx.config
            epoch = max(ctx.view.epoch, ctx.max_epoch_seen) + 1
            v = compute_view(ctx.names, desired, c.buckets, c.backups, epoch, ctx.node)
            log.info("%s: proposing view %d %s", ctx.node, epoch, {k: s.value for k, s in desired.items()})
            self.takeover.adopt(v, now)
        view = ctx.view
        for p in ctx.peers.values():
            if not p.up:
                continue
            # A peer behind us, or one that believes itself active against our view (after a
            # partition healed), gets the view; again now and then while it disagrees.
            disagrees = p.epoch != view.epoch or (
                p.mode is Mode.ACTIVE and view.state(p.name) is not MemberState.ACTIVE
            )
            resend = p.view_sent_epoch < view.epoch or now - p.view_sent_at > 20 * ctx.hb_s
            if disagrees and resend:
                p.view_sent_epoch = view.epoch
                p.view_sent_at = now
                ctx.queue(p, MsgType.VIEW, view.to_wire())

    def _share_view(self, now: float) -> None:
        """Not the leader: still hand our view to peers whose heartbeats show an older one
        (the leader may be the one that is behind)."""
        ctx = self.ctx
        view = ctx.view
        for p in ctx.peers.values():
            if p.up and p.epoch < view.epoch and p.view_sent_epoch < view.epoch:
                p.view_sent_epoch = view.epoch
                p.view_sent_at = now
                ctx.queue(p, MsgType.VIEW, view.to_wire())

    def newer(self, v: View) -> bool:
        """Views are ordered by epoch, then by how many nodes they keep active (after a
        partition heals the side that kept more nodes wins), then by the lower-id proposer.
        A view with our states is newer only by a higher epoch: it changes nothing but the
        epoch, and every node must reach the same one (the leader activates a joiner only
        once the joiner announces the leader's epoch)."""
        names = self.ctx.names
        cur = self.ctx.view
        if v.states == cur.states:
            return v.epoch > cur.epoch

        def rank(x: View) -> tuple[int, int, int]:
            active = sum(1 for st in x.states if st is MemberState.ACTIVE)
            idx = names.index(x.proposer) if x.proposer in names else len(names)
            return (x.epoch, active, -idx)

        return rank(v) > rank(cur)
