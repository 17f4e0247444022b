"""Replication: who gets a changed record (targets), batching, sync-and-notify tokens,
provenance, applying received records, and state requests for unknown entries (claim 14)."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sync.channel import Outgoing
from sync.context import AgentContext, Peer
from sync.events import RecordApplied, StateReply, SyncCompleted
from sync.membership import MemberState, Mode, View
from sync.policy import PeriodicSend
from sync.records import Record, Scope, Trigger
from sync.wire import TRIGGER_CODE, MsgType, batch_records, record_to_wire

log = logging.getLogger(__name__)

Groups = dict[tuple[str, ...], list[Record]]
Sent = list[tuple[str, int]]  # (peer, seq) of reliable messages to watch for acks


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
        self._seq_keys: dict[tuple[str, int], list[bytes]] = {}
        self._requests: dict[bytes, _Request] = {}
        self._prov: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self.latency_ms: deque[float] = deque(maxlen=1024)
        self._future_of: View | None = None
        self._futures: dict[str, View] = {}

    # ---- triggers ---------------------------------------------------------------------

    def changed_many(self, keys: Iterable[bytes], now: float, trigger: Trigger) -> None:
        ctx = self.ctx
        recs: list[Record] = []
        for key in keys:
            rec = ctx.store.get(key)
            if rec is None:
                continue
            if rec.scope is Scope.NODE and rec.owner != ctx.node:
                ctx.counters["changed-not-own"] += 1
                continue
            recs.append(rec)
        if not recs:
            return
        if ctx.policy.send_now():
            self.send_records(self.group_by_targets(recs), trigger, now)
            ctx.policy.sent_on_demand(now)
        else:
            self.dirty.update(r.key for r in recs)

    def sync_and_notify(
        self,
        keys: Iterable[bytes],
        now: float,
        timeout_s: float,
        peers: Iterable[str] | None,
        trigger: Trigger,
    ) -> int:
        ctx = self.ctx
        token = self._next_token
        self._next_token += 1
        recs = [r for r in (ctx.store.get(k) for k in keys) if r is not None]
        if peers is None:
            groups = self.group_by_targets(recs)
        else:
            chosen = [ctx.peers[n] for n in peers if n in ctx.peers]
            groups = {tuple(p.name for p in chosen): recs} if chosen and recs else {}
        sent = self.send_records(groups, trigger, now, track=True)
        names = tuple(sorted({n for n, _ in sent}))
        if sent:
            self._tokens[token] = _Token(now + timeout_s, set(sent), names)
            for ps in sent:
                self._seq_tokens.setdefault(ps, []).append(token)
            ctx.policy.sent_on_demand(now)
        else:
            ctx.events.append(SyncCompleted(token, True, ()))
        return token

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
        groups: Groups = {}
        for r in recs:
            t = self.targets(r)
            if t:
                groups.setdefault(t, []).append(r)
        return groups

    def send_records(self, groups: Groups, trigger: Trigger, now: float, track: bool = False) -> Sent:
        """Queue records, batched, to each group of peers. Returns (peer, seq) sent if track."""
        ctx = self.ctx
        sent: Sent = []
        code = TRIGGER_CODE[trigger]
        keep_prov = trigger is not Trigger.RESYNC
        for names, recs in groups.items():
            for batch in batch_records(recs, ctx.budget):
                keys = batch.keys
                for n in names:
                    seq = ctx.queue(ctx.peers[n], MsgType.RECORDS, [code, batch.blob])
                    if keep_prov:
                        self._seq_keys[(n, seq)] = keys
                    if track:
                        sent.append((n, seq))
                if keep_prov:
                    for k in keys:
                        self._note(k, trigger, names, now)
                ctx.counters["records-sent"] += len(keys) * len(names)
        return sent

    def _note(self, key: bytes, trigger: Trigger, names: tuple[str, ...], now: float) -> None:
        self._prov[key] = {"trigger": trigger.value, "sent_at": now, "sent_to": set(names), "acked_by": {}}
        self._prov.move_to_end(key)
        while len(self._prov) > self.ctx.config.provenance_keys:
            self._prov.popitem(last=False)

    def provenance(self, key: bytes) -> dict[str, Any] | None:
        p = self._prov.get(key)
        if p is None:
            return None
        return {
            "trigger": p["trigger"],
            "sent_at": p["sent_at"],
            "sent_to": sorted(p["sent_to"]),
            "acked_by": dict(p["acked_by"]),
        }

    # ---- received records -----------------------------------------------------------------

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
        if trig is Trigger.RESYNC:  # bulk: no per-record events
            applied = sum(1 for r in recs if apply(r))
        else:
            applied = 0
            adopted: list[Record] = []
            events = ctx.events
            for r in recs:
                if apply(r):
                    applied += 1
                    events.append(RecordApplied(r.key, p.name, trig))
                    if r.owner == ctx.node and r.scope is Scope.NODE:
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
        for key in self._seq_keys.pop(ps, ()):
            prov = self._prov.get(key)
            if prov is not None:
                prov["acked_by"][p.name] = now
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
        for d in (self._seq_tokens, self._seq_keys):
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
