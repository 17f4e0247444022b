"""Replication: who gets a changed record (targets), batching, sync-and-notify tokens,
provenance, applying received records, and state requests for unknown entries (claim 14)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sync.channel import Outgoing
from sync.context import AgentContext, Peer
from sync.events import RecordApplied, StateReply, SyncCompleted
from sync.membership import MemberState, Mode, View
from sync.policy import PeriodicSend
from sync.records import Record, Scope, Trigger
from sync.wire import TRIGGER_CODE, MsgType, pack_array, record_of_row, record_to_wire

log = logging.getLogger(__name__)

Groups = dict[tuple[str, ...], list[Record]]
Sent = list[tuple[str, int]]  # (peer, seq) of reliable messages to watch for acks
# Records to send together: to these peers, under this trigger (what provenance says), in a
# message of that wire trigger (how urgently the receiver acks it).
Lot = tuple[tuple[str, ...], list[Record], Trigger, Trigger]


@dataclass(slots=True)
class _Prov:
    """Provenance of the records of one lot: shared by all of them (one object per send, not
    a dict and a set per record). A peer is in `acked_by` once every message that carried
    the lot to it was acked (`pending` counts those still out)."""

    trigger: str
    sent_at: float
    sent_to: tuple[str, ...]
    acked_by: dict[str, float] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)


class _Box:
    """One peer's RECORDS message being filled: packed records, their size, and the lots
    (by index) whose records it carries."""

    __slots__ = ("lots", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.lots: list[int] = []


@dataclass(slots=True)
class _Token:
    deadline: float
    waiting: set[tuple[str, int]]
    peers: tuple[str, ...]


@dataclass(slots=True)
class _Request:
    deadline: float
    waiting: set[str]


class Replicator:
    """Sends records to the nodes that must hold them and tracks what they acked."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.dirty: set[bytes] = set()  # changed, waiting for the period
        self._tokens: dict[int, _Token] = {}
        self._next_token = 1
        self._seq_tokens: dict[tuple[str, int], list[int]] = {}
        self._seq_prov: dict[tuple[str, int], list[_Prov]] = {}
        self._requests: dict[bytes, _Request] = {}
        # Provenance, per lot sent (its keys and their one _Prov), newest last; indexed by key
        # only when someone asks (`provenance`), not on the send path.
        self._lots: deque[tuple[list[bytes], _Prov]] = deque()
        self._lot_keys = 0
        self._prov_index: dict[bytes, _Prov] | None = None
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.latency_ms: deque[float] = deque(maxlen=1024)
        self._future_of: View | None = None
        self._futures: dict[str, View] = {}

    # ---- triggers ---------------------------------------------------------------------

    def changed_many(self, keys: Iterable[bytes], now: float, trigger: Trigger) -> None:
        recs = self._changed(keys)
        if not recs:
            return
        ctx = self.ctx
        if ctx.policy.send_now():
            self.send_records(self.group_by_targets(recs), trigger, now)
            ctx.policy.sent_on_demand(now)
        else:
            self.dirty.update(r.key for r in recs)

    def _changed(self, keys: Iterable[bytes]) -> list[Record]:
        """The records of changed keys this node may send (its own, and common ones)."""
        ctx = self.ctx
        recs: list[Record] = []
        get = ctx.store.get
        me = ctx.node
        node = Scope.NODE
        for key in keys:
            rec = get(key)
            if rec is None:
                continue
            if rec.scope is node and rec.owner != me:
                ctx.counters["changed-not-own"] += 1
                continue
            recs.append(rec)
        return recs

    def sync_and_notify(
        self,
        keys: Iterable[bytes],
        now: float,
        timeout_s: float,
        peers: Iterable[str] | None,
        trigger: Trigger,
    ) -> int:
        ctx = self.ctx
        if peers is None:
            return self.send_turn([(keys, timeout_s)], (), now, trigger)[0]
        recs = [r for r in (ctx.store.get(k) for k in keys) if r is not None]
        chosen = tuple(n for n in peers if n in ctx.peers)
        lots: list[Lot] = [(chosen, recs, trigger, trigger)] if chosen and recs else []
        return self._tokens_for(lots, [[0] if lots else []], [timeout_s], now)[0]

    def send_turn(
        self,
        holds: Sequence[tuple[Iterable[bytes], float]],
        changed: Iterable[bytes],
        now: float,
        trigger: Trigger = Trigger.RELATED,
    ) -> list[int]:
        """One turn of the node's loop: the records of each hold (`keys`, `timeout_s`: a
        sync-and-notify each, tokens returned in order) and the records that merely changed,
        sent together: as few messages per peer as the datagram budget allows. The changed
        records ride in the holds' messages, under their trigger (acked at once: someone
        waits), and keep their own (MODIFIED) in provenance."""
        ctx = self.ctx
        get = ctx.store.get
        lots: list[Lot] = []
        of_hold: list[list[int]] = []
        for keys, _ in holds:
            recs = [r for r in map(get, keys) if r is not None]
            first = len(lots)
            lots += [(t, rs, trigger, trigger) for t, rs in self.group_by_targets(recs).items()]
            of_hold.append(list(range(first, len(lots))))
        recs = self._changed(changed)
        if recs:
            if ctx.policy.send_now():
                wire = trigger if holds else Trigger.MODIFIED
                lots += [(t, rs, Trigger.MODIFIED, wire) for t, rs in self.group_by_targets(recs).items()]
                if not holds:
                    ctx.policy.sent_on_demand(now)
            else:
                self.dirty.update(r.key for r in recs)
        return self._tokens_for(lots, of_hold, [t for _, t in holds], now)

    def _tokens_for(self, lots: list[Lot], of_hold: list[list[int]], timeouts: list[float],
                    now: float) -> list[int]:
        """Send `lots`; a token per hold, completed when every message carrying one of its
        lots is acked (at once when there is none)."""
        ctx = self.ctx
        sent = self._send(lots, now) if lots else []
        tokens: list[int] = []
        for idx, timeout_s in zip(of_hold, timeouts, strict=True):
            token = self._next_token
            self._next_token += 1
            tokens.append(token)
            waiting = {ps for i in idx for ps in sent[i]}
            if waiting:
                names = tuple(sorted({n for n, _ in waiting}))
                self._tokens[token] = _Token(now + timeout_s, waiting, names)
                for ps in waiting:
                    self._seq_tokens.setdefault(ps, []).append(token)
                ctx.policy.sent_on_demand(now)
            else:
                ctx.events.append(SyncCompleted(token, True, ()))
        return tokens

    def period(self, now: float) -> None:
        """Periodic and hybrid policies: what the timer says is due (claim 7)."""
        due = self.ctx.policy.period_due(now)
        if due is PeriodicSend.CHANGED:
            self.send_dirty(now, Trigger.PERIODIC)
        elif due is PeriodicSend.ALL:
            self.send_all(now, Trigger.PERIODIC)

    def send_dirty(self, now: float, trigger: Trigger) -> None:
        if not self.dirty:
            return
        store = self.ctx.store
        recs = [r for r in (store.get(k) for k in self.dirty) if r is not None]
        self.dirty.clear()
        self.send_records(self.group_by_targets(recs), trigger, now)

    def send_all(self, now: float, trigger: Trigger) -> None:
        ctx = self.ctx
        recs: list[Record] = list(ctx.store.records(owner=ctx.node, scope=Scope.NODE))
        recs += ctx.store.records(scope=Scope.COMMON)
        recs += [r for r in (ctx.store.get(k) for k in self.dirty) if r is not None and r.deleted]
        self.dirty.clear()
        self.send_records(self.group_by_targets(recs), trigger, now)

    # ---- targets and batching -----------------------------------------------------------

    def targets(self, rec: Record) -> tuple[str, ...]:
        ctx = self.ctx
        if rec.scope is Scope.COMMON:
            return tuple(p.name for p in ctx.peers.values() if p.up)
        if rec.owner != ctx.node:
            return ()
        names = set(ctx.view.backups_of(ctx.node))
        # A pending handover: a joiner that would back us up, or own this record's bucket,
        # once activated gets the change now. Joiners are activated one by one or together;
        # the view with that joiner alone activated covers both (anyone activated with it
        # can only take roles from it, never give it new ones).
        for j, fut in self.joiner_futures(ctx.view).items():
            if j in fut.backups_of(ctx.node) or fut.owner(rec.bucket) == j:
                names.add(j)
        return tuple(sorted(n for n in names if ctx.peers[n].up))

    def joiner_futures(self, v: View) -> dict[str, View]:
        """joiner -> the view with it activated, cached per view (asked for every record)."""
        if self._future_of is not v:
            self._future_of = v
            self._futures = {
                j: v.with_active(j)
                for j, st in v.members.items()
                if st is MemberState.JOINING and j != self.ctx.node
            }
        return self._futures

    def group_by_targets(self, recs: Iterable[Record]) -> Groups:
        """Records by the peers that must get them. The targets of this node's records
        depend only on their bucket (and of common records on nothing), within one call:
        computed once per bucket, not per record."""
        ctx = self.ctx
        me = ctx.node
        node = Scope.NODE
        groups: Groups = {}
        nowhere: list[Record] = []  # records with no target land here, and are dropped
        by_bucket: dict[int, list[Record]] = {}
        common: list[Record] | None = None
        for r in recs:
            if r.scope is node:
                if r.owner != me:
                    continue
                g = by_bucket.get(r.bucket)
                if g is None:
                    t = self.targets(r)
                    g = by_bucket[r.bucket] = groups.setdefault(t, []) if t else nowhere
            else:
                if common is None:
                    t = self.targets(r)
                    common = groups.setdefault(t, []) if t else nowhere
                g = common
            g.append(r)
        return groups

    def send_records(self, groups: Groups, trigger: Trigger, now: float, track: bool = False) -> Sent:
        """Queue records, batched, to each group of peers. Returns (peer, seq) sent if track."""
        sent = self._send([(names, recs, trigger, trigger) for names, recs in groups.items()], now)
        return [ps for lot in sent for ps in lot] if track else []

    def _send(self, lots: list[Lot], now: float) -> list[Sent]:
        """Queue the lots' records: to each peer, all the records it gets of the lots of one
        wire trigger in as few RECORDS messages as the budget allows (each record packed
        once, whatever its number of peers). Returns, per lot, the (peer, seq) that carry it."""
        ctx = self.ctx
        budget = ctx.budget - 3
        pack = self._pack
        out: list[Sent] = [[] for _ in lots]
        boxes: dict[tuple[str, Trigger], _Box] = {}
        provs: list[_Prov | None] = []
        sent_records = 0
        for i, (names, recs, trigger, wire) in enumerate(lots):
            prov = _Prov(trigger.value, now, names) if trigger is not Trigger.RESYNC else None
            provs.append(prov)
            keys: list[bytes] = []
            mine = [boxes.get((n, wire)) or boxes.setdefault((n, wire), _Box()) for n in names]
            for r in recs:
                b = pack(record_to_wire(r))
                size = len(b)
                if size > budget:
                    log.error("record %r is %d bytes, more than a datagram can carry; not sent", r.key, size)
                    continue
                for n, box in zip(names, mine, strict=True):
                    if box.parts and (box.size + size > budget or len(box.parts) == 65535):
                        self._queue_box(n, wire, box, provs, out)
                    box.parts.append(b)
                    box.size += size
                    if not box.lots or box.lots[-1] != i:
                        box.lots.append(i)
                keys.append(r.key)
                sent_records += len(names)
            if prov is not None and keys:
                self._remember(keys, prov)
        for (n, wire), box in boxes.items():
            if box.parts:
                self._queue_box(n, wire, box, provs, out)
        ctx.counters["records-sent"] += sent_records
        return out

    def _remember(self, keys: list[bytes], prov: _Prov) -> None:
        """Keep the provenance of the last `provenance_keys` records sent (repeats counted)."""
        lots = self._lots
        lots.append((keys, prov))
        self._lot_keys += len(keys)
        cap = self.ctx.config.provenance_keys
        while self._lot_keys - len(lots[0][0]) >= cap:
            self._lot_keys -= len(lots.popleft()[0])
        self._prov_index = None

    def _queue_box(self, n: str, wire: Trigger, box: _Box, provs: list[_Prov | None],
                   out: list[Sent]) -> None:
        ctx = self.ctx
        seq = ctx.queue(ctx.peers[n], MsgType.RECORDS, [TRIGGER_CODE[wire], pack_array(box.parts)])
        ps = (n, seq)
        watched: list[_Prov] = []
        for i in box.lots:
            out[i].append(ps)
            prov = provs[i]
            if prov is not None:
                prov.pending[n] = prov.pending.get(n, 0) + 1
                watched.append(prov)
        if watched:
            self._seq_prov[ps] = watched
        box.parts = []
        box.size = 0
        box.lots = []

    def provenance(self, key: bytes) -> dict[str, Any] | None:
        """How `key` was last sent: trigger, when, to whom, acked by whom (None: not among the
        records sent lately). The index is built at the first question after a send."""
        index = self._prov_index
        if index is None:
            index = self._prov_index = {k: prov for keys, prov in self._lots for k in keys}
        p = index.get(key)
        if p is None:
            return None
        return {
            "trigger": p.trigger,
            "sent_at": p.sent_at,
            "sent_to": sorted(p.sent_to),
            "acked_by": dict(p.acked_by),
        }

    # ---- received records -----------------------------------------------------------------

    def apply_rows(self, p: Peer, trig: Trigger, rows: Sequence[Sequence[Any]], now: float,
                   epoch: int) -> None:
        """Received record arrays (checked: sync.wire.check_row). A joiner's bulk resync, and
        any records that need no event and no pruning by view, go to the store as they are
        (StateStore.apply_rows: no Record per entry); the others as Records (apply_records)."""
        ctx = self.ctx
        quiet = trig is Trigger.RESYNC or (not ctx.config.record_events and trig is not Trigger.REBALANCE)
        if not quiet or (epoch <= ctx.view.epoch and ctx.modes.mode is not Mode.JOINING):
            self.apply_records(p, trig, [record_of_row(a) for a in rows], now, epoch)
            return
        applied = ctx.store.apply_rows(rows)
        ctx.counters["records-applied"] += applied
        ctx.counters["records-stale"] += len(rows) - applied

    def apply_records(self, p: Peer, trig: Trigger, recs: list[Record], now: float, epoch: int) -> None:
        ctx = self.ctx
        view = ctx.view
        if epoch <= view.epoch and ctx.modes.mode is not Mode.JOINING:
            # Sent under an older view: keep only what we still hold in ours. Under our own
            # epoch too, keep no copy of a node we do not back up: nothing would ever delete
            # it (its owner's deletes go to its backups), and our next view would drop it
            # anyway. Such a copy does arrive: after a split brain both sides made views of
            # the same epoch, and a rejoiner's offers forwarded under one side's view reach a
            # node that follows the other's. (A record sent under a newer view than ours is
            # kept: it may be for the role that view gives us; adopting the view prunes it.)
            keep = {ctx.node, *view.backed_up_by(ctx.node)}
            owner_of = view.owner
            older = epoch < view.epoch
            n = len(recs)
            recs = [
                r
                for r in recs
                if r.scope is Scope.COMMON
                or (r.owner in keep and (not older or owner_of(r.bucket) in (r.owner, None)))
            ]
            ctx.counters["records-outdated"] += n - len(recs)
        apply = ctx.store.apply
        me = ctx.node
        # A bulk resync never has per-record events; other records have them unless the
        # config turns them off (a rebalance's still takes the path that adopts ours).
        quiet = trig is Trigger.RESYNC or (not ctx.config.record_events and trig is not Trigger.REBALANCE)
        if quiet:
            applied = sum(1 for r in recs if apply(r))
        else:
            applied = 0
            adopted: list[Record] = []
            events = ctx.events
            for r in recs:
                if apply(r):
                    applied += 1
                    if ctx.config.record_events:
                        events.append(RecordApplied(r.key, p.name, trig))
                    if r.owner == me and r.scope is Scope.NODE:
                        adopted.append(r)
            if adopted and trig is Trigger.REBALANCE:
                # Offered by a node that rejoins: ours now, so our backups need it too.
                self.send_records(self.group_by_targets(adopted), Trigger.REBALANCE, now)
        ctx.counters["records-applied"] += applied
        ctx.counters["records-stale"] += len(recs) - applied

    # ---- acks and deadlines ---------------------------------------------------------------

    def acked(self, p: Peer, o: Outgoing, now: float) -> None:
        if o.tries == 1 and o.first_sent is not None:  # Karn: retransmitted ones are ambiguous
            self.latency_ms.append((now - o.first_sent) * 1000.0)
        ps = (p.name, o.seq)
        for prov in self._seq_prov.pop(ps, ()):
            left = prov.pending.get(p.name, 1) - 1
            prov.pending[p.name] = left
            if left <= 0:
                prov.acked_by[p.name] = now
        for token in self._seq_tokens.pop(ps, ()):
            tk = self._tokens.get(token)
            if tk is None:
                continue
            tk.waiting.discard(ps)
            if not tk.waiting:
                del self._tokens[token]
                self.ctx.events.append(SyncCompleted(token, True, tk.peers, f"{p.name}#{o.seq}"))

    def deadlines(self, now: float) -> None:
        events = self.ctx.events
        for token, tk in list(self._tokens.items()):
            if now >= tk.deadline:
                del self._tokens[token]
                for ps in tk.waiting:
                    lst = self._seq_tokens.get(ps)
                    if lst and token in lst:
                        lst.remove(token)
                        if not lst:
                            del self._seq_tokens[ps]
                events.append(SyncCompleted(token, False, tk.peers))
        for key, req in list(self._requests.items()):
            if now >= req.deadline:
                del self._requests[key]
                events.append(StateReply(key, False))

    def peer_restarted(self, p: Peer) -> None:
        """Its sequence numbers restart: forget what the old ones meant. What was queued for
        its old incarnation is gone with the channel. Its bulk resync brings node state
        back, but only from active nodes: common records go now."""
        for d in (self._seq_tokens, self._seq_prov):
            for k in [k for k in d if k[0] == p.name]:
                del d[k]
        common = list(self.ctx.store.records(scope=Scope.COMMON))
        if common:
            self.send_records({(p.name,): common}, Trigger.REBALANCE, self.ctx.now)

    # ---- state requests (claim 14) -----------------------------------------------------

    def request_state(self, key: bytes, now: float, timeout_s: float | None) -> None:
        ctx = self.ctx
        if key in self._requests:
            return
        targets = ctx.live_peers()
        if not targets:
            ctx.events.append(StateReply(key, False))
            return
        t = ctx.config.request_timeout_ms / 1000.0 if timeout_s is None else timeout_s
        self._requests[key] = _Request(now + t, {p.name for p in targets})
        for p in targets:
            ctx.queue(p, MsgType.STATE_REQUEST, [key])

    def answer_state_request(self, p: Peer, key: bytes) -> None:
        rec = self.ctx.store.get(key)
        found = rec is not None and not rec.deleted
        self.ctx.queue(p, MsgType.STATE_REPLY, [key, record_to_wire(rec) if rec and found else None])

    def state_reply(self, p: Peer, key: bytes, rec: Record | None) -> None:
        req = self._requests.get(key)
        if req is None:
            return
        if rec is not None:
            self.ctx.store.apply(rec)
            del self._requests[key]
            self.ctx.events.append(StateReply(key, True))
            return
        req.waiting.discard(p.name)
        if not req.waiting:
            del self._requests[key]
            self.ctx.events.append(StateReply(key, False))

    def peer_down(self, name: str) -> None:
        """A peer went down: it will not answer our state requests."""
        for key, req in list(self._requests.items()):
            req.waiting.discard(name)
            if not req.waiting:
                del self._requests[key]
                self.ctx.events.append(StateReply(key, False))
