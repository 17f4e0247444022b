"""Key sweeps: an owner tells each of its backups, now and then, every key it owns, so that the
backup's copies converge on the owner's table whatever was lost on the way.

A delete can miss a backup for good: it was sent while the backup was thought down (a false
failover), or under a view that no longer made it a backup. A copy then stays forever, since
its owner will never speak of it again; a timer cannot tell such a copy from one of an idle
connection, and one made the backups diverge from their owners. The owner knows, so it says:
every `keys_interval_ms` (and right after it answered a bulk resync) it sends each backup the
keys it owns, in KEYS parts over the reliable channel, which delivers in order. When the last
part arrives, the backup has applied everything the owner sent before the sweep began, so:

- a copy of that owner whose key is not in the sweep is one the owner no longer has: dropped;
- a key of the sweep with no copy here is one whose record never reached us: asked for (WANT),
  and the owner sends it again. A key the owner has not announced yet is in no sweep.

A copy the owner still has is never dropped: its key is in the sweep, and a record sent after
the sweep began arrives after its last part."""

from __future__ import annotations

import logging
from typing import Any

from sync.context import AgentContext, Peer
from sync.membership import Mode
from sync.records import Scope, Trigger
from sync.replicate import Replicator
from sync.wire import BadFrame, BadFrameKind, MsgType

log = logging.getLogger(__name__)

# msgpack framing of one key in a KEYS array (a bin header) and of the payload around them.
_KEY_OVERHEAD = 3
_PAYLOAD_OVERHEAD = 16


class KeySweep:
    """The owner's side (sending sweeps, answering WANT) and the backup's (comparing)."""

    def __init__(self, ctx: AgentContext, rep: Replicator) -> None:
        self.ctx = ctx
        self.rep = rep
        self.interval_s = ctx.config.keys_interval_ms / 1000.0
        self.next_at = ctx.now + self.interval_s
        self._incoming: dict[str, set[bytes]] = {}  # peer -> keys of its sweep so far

    # ---- the owner --------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Sweep to every live backup when the interval is up (only an active owner)."""
        if self.interval_s <= 0 or now < self.next_at:
            return
        self.next_at = now + self.interval_s
        ctx = self.ctx
        if ctx.modes.mode is not Mode.ACTIVE:
            return
        for name in ctx.view.backups_of(ctx.node):
            p = ctx.peers.get(name)
            if p is not None and p.up:
                self.send(p)

    def send(self, p: Peer) -> int:
        """Queue one sweep of our keys to `p`; returns how many parts."""
        ctx = self.ctx
        keys = list(ctx.store.sweep_keys(ctx.node))
        budget = ctx.budget - _PAYLOAD_OVERHEAD
        parts: list[list[bytes]] = [[]]
        size = 0
        for k in keys:
            n = len(k) + _KEY_OVERHEAD
            if parts[-1] and size + n > budget:
                parts.append([])
                size = 0
            parts[-1].append(k)
            size += n
        for i, part in enumerate(parts):
            ctx.queue(p, MsgType.KEYS, [i == 0, i == len(parts) - 1, part])
        ctx.counters["sweeps-sent"] += 1
        return len(parts)

    def wanted(self, p: Peer, keys: list[bytes]) -> None:
        """A backup lacks these of our keys: send their records again (those still ours)."""
        ctx = self.ctx
        # A change the periodic policy still holds for its period is not sent early: the
        # sweep would otherwise sync every new connection within one sweep, whatever the policy.
        waiting = self.rep.dirty
        recs = []
        for k in keys:
            if k in waiting:
                continue
            r = ctx.store.get(k)
            if r is not None and not r.deleted and r.scope is Scope.NODE and r.owner == ctx.node:
                recs.append(r)
        if recs:
            ctx.counters["sweep-resent"] += len(recs)
            self.rep.send_records({(p.name,): recs}, Trigger.RESYNC, ctx.now)

    # ---- the backup -------------------------------------------------------------------

    def received(self, p: Peer, first: bool, last: bool, keys: list[bytes]) -> None:
        """A part of `p`'s sweep. On the last part: drop the copies of `p` it did not name,
        and ask for the named keys we hold nothing of (if we back `p` up)."""
        if first:
            self._incoming[p.name] = set()
        got = self._incoming.get(p.name)
        if got is None:
            return  # the start of this sweep went with an earlier channel of the peer
        got.update(keys)
        if not last:
            return
        del self._incoming[p.name]
        ctx = self.ctx
        store = ctx.store
        have = set(store.sweep_keys(p.name))
        gone = [k for k in have if k not in got]
        if gone:
            n = store.forget(p.name, gone)
            ctx.counters["copies-forgotten"] += n
            log.info("%s: %d copies of %s were no longer %s's; forgotten", ctx.node, n, p.name, p.name)
        if ctx.node not in ctx.view.backups_of(p.name):
            return
        # A key we hold a copy of is not missing: only the others are looked up (a lookup
        # builds a record; after a 1M bulk resync, 1M of them held this loop for seconds).
        missing = [k for k in got if k not in have and store.get(k) is None]
        if missing:
            ctx.counters["copies-wanted"] += len(missing)
            budget = ctx.budget - _PAYLOAD_OVERHEAD
            part: list[bytes] = []
            size = 0
            for k in missing:
                n = len(k) + _KEY_OVERHEAD
                if part and size + n > budget:
                    ctx.queue(p, MsgType.WANT, part)
                    part, size = [], 0
                part.append(k)
                size += n
            ctx.queue(p, MsgType.WANT, part)

    def peer_restarted(self, p: Peer) -> None:
        self._incoming.pop(p.name, None)


def check_keys_part(pl: Any) -> tuple[bool, bool, list[bytes]]:
    """KEYS: [first part, last part, [key, ...]]."""
    if (
        type(pl) is not list
        or len(pl) != 3
        or type(pl[0]) is not bool
        or type(pl[1]) is not bool
        or type(pl[2]) is not list
        or not all(type(k) is bytes for k in pl[2])
    ):
        raise _bad("keys")
    return pl[0], pl[1], pl[2]


def check_want(pl: Any) -> list[bytes]:
    """WANT: [key, ...] (at least one)."""
    if type(pl) is not list or not pl or not all(type(k) is bytes for k in pl):
        raise _bad("want")
    return pl


def _bad(what: str) -> BadFrame:
    return BadFrame(BadFrameKind.BAD_PAYLOAD, what)
