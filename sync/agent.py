"""The sync agent: one per gateway node, a pure protocol object (bytes and a clock in,
datagrams and events out) that replicates records with triggers, backup groups and views."""

from __future__ import annotations

import logging
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sync.channel import Channel, Outgoing
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
from sync.membership import LIVE, MemberState, View, compute_view, view_from_wire
from sync.policy import PeriodicSend, SyncPolicy, make_policy
from sync.records import Record, Scope, StateStore, SyncUsageError, Trigger
from sync.wire import (
    TRIGGER_CODE,
    UNRELIABLE,
    BadFrame,
    BadFrameKind,
    Frame,
    MsgType,
    batch_records,
    decode_frame,
    encode_frame,
    record_from_wire,
    record_to_wire,
    records_from_blob,
    trigger_from_wire,
)

# The events are defined in sync.events; callers may import them from here too.
__all__ = [
    "BucketsGained",
    "BucketsLost",
    "LeaveComplete",
    "Mode",
    "PeerDown",
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

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Everything a node's agent needs to know about the cluster; identical on every node
    except `node`. The order of `nodes` defines node ids and the cyclic ring."""

    lab_id: str
    key: bytes
    node: str
    nodes: tuple[tuple[str, Address], ...]
    buckets: int
    backups: int = 1
    policy: str = "hybrid"
    interval_ms: int = 1000
    differential: bool = True
    heartbeat_ms: int = 10
    miss_limit: int = 5
    rto_initial_ms: int = 20
    rto_max_ms: int = 400
    window: int = 256
    max_frame_bytes: int = 1400
    join_wait_ms: int = 0  # 0: 2 * heartbeat_ms * miss_limit (time to hear the others)
    request_timeout_ms: int = 500
    provenance_keys: int = 10_000

    def __post_init__(self) -> None:
        names = [n for n, _ in self.nodes]
        if len(set(names)) != len(names):
            raise SyncUsageError(f"node names must be unique, got {names}")
        if self.node not in names:
            raise SyncUsageError(f"this node {self.node!r} is not among the configured nodes {names}")
        if not self.key:
            raise SyncUsageError("the sync HMAC key must not be empty")
        if self.buckets < 1 or self.backups < 0 or self.heartbeat_ms < 1 or self.miss_limit < 1:
            raise SyncUsageError("buckets >= 1, backups >= 0, heartbeat_ms >= 1, miss_limit >= 1 required")
        if self.window < 1 or self.max_frame_bytes < 512:
            raise SyncUsageError("window >= 1 and max_frame_bytes >= 512 required")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.nodes)


class Mode(Enum):
    """This node's own idea of where it stands (announced in every heartbeat)."""

    JOINING = 0
    ACTIVE = 1
    LEAVING = 2  # pushing everything to its backups
    LEFT = 3  # pushed and acked; asks the leader for a view without it
    GONE = 4  # view without it adopted: silent

    @classmethod
    def from_wire(cls, v: Any) -> Mode:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4:
            raise BadFrame(BadFrameKind.BAD_PAYLOAD, f"bad mode {v!r}")
        return cls(v)


# ---- per-peer bookkeeping ---------------------------------------------------------------


@dataclass(slots=True)
class PeerStats:
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    retransmitted: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    acked_by_type: Counter[str] = field(default_factory=Counter)
    retransmitted_by_type: Counter[str] = field(default_factory=Counter)
    bytes_by_type: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Peer:
    name: str
    addr: Address
    index: int
    channel: Channel
    inc: int = 0
    retired: deque[int] = field(default_factory=lambda: deque(maxlen=16))
    up: bool = False
    last_heard: float = 0.0
    last_useq: int = 0
    mode: Mode = Mode.JOINING
    ready: bool = False
    epoch: int = 0
    view_sent_epoch: int = -1
    view_sent_at: float = 0.0
    bulk_requested: bool = False
    bulk_done: bool = False
    bulk_total: int = 0
    bulk_received: int = 0
    stats: PeerStats = field(default_factory=PeerStats)


@dataclass(slots=True)
class _Token:
    deadline: float
    waiting: set[tuple[str, int]]
    peers: tuple[str, ...]


@dataclass(slots=True)
class _Request:
    deadline: float
    waiting: set[str]


class SyncAgent:
    """State replication for one node. Drive it with `start`, `receive`, `tick` and the
    trigger calls; send what `datagrams()` returns; handle what `events()` returns."""

    def __init__(
        self, config: SyncConfig, store: StateStore, now: float, incarnation: int | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.node = config.node
        self.names = config.names
        self.index = self.names.index(self.node)
        # Random per process start so peers notice a restart; never 0 (0 means "unknown").
        self.incarnation = incarnation or random.SystemRandom().randrange(1, 2**62)
        self._hb_s = config.heartbeat_ms / 1000.0
        self._dead_s = self._hb_s * config.miss_limit
        self._join_wait_s = (config.join_wait_ms or 2 * config.heartbeat_ms * config.miss_limit) / 1000.0
        self._budget = config.max_frame_bytes - (
            96 + len(config.lab_id.encode()) + max(len(n.encode()) for n in self.names)
        )
        self.peers: dict[str, Peer] = {}
        for i, (name, addr) in enumerate(config.nodes):
            if name != self.node:
                ch = Channel(config.window, config.rto_initial_ms / 1000.0, config.rto_max_ms / 1000.0)
                self.peers[name] = Peer(name, (addr[0], int(addr[1])), i, ch)
        self.policy: SyncPolicy = make_policy(
            config.policy, config.interval_ms, config.differential, now
        )
        states = {n: MemberState.OFFLINE for n in self.names}
        states[self.node] = MemberState.JOINING
        self.view: View = compute_view(self.names, states, config.buckets, config.backups, 0)
        self.mode = Mode.JOINING
        self._owned: set[int] = set()
        self._behind_since: float | None = None
        self._future_of: View | None = None
        self._futures: dict[str, View] = {}
        self._now = now
        self._started = False
        self._join_started = now
        self._ready = False
        self._next_hb = now
        self._useq = 0
        self._max_epoch_seen = 0
        self._out: list[tuple[Address, bytes]] = []
        self._events: list[SyncEvent] = []
        self._dirty: set[bytes] = set()
        self._tokens: dict[int, _Token] = {}
        self._next_token = 1
        self._seq_tokens: dict[tuple[str, int], list[int]] = {}
        self._seq_keys: dict[tuple[str, int], list[bytes]] = {}
        self._requests: dict[bytes, _Request] = {}
        self._leave_pending: set[tuple[str, int]] = set()
        self._frozen = False
        self._credit = 0
        self._bad: Counter[str] = Counter()
        self._counters: Counter[str] = Counter()
        self._latency_ms: deque[float] = deque(maxlen=1024)
        self._prov: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    # ---- public API -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Announce this incarnation and begin joining (owns no buckets until resynced)."""
        self._now = now
        self._started = True
        self._join_started = now
        self.policy.start(now)
        for p in self.peers.values():
            self._send_unreliable(p, MsgType.HELLO, self._hb_payload())
        self._next_hb = now + self._hb_s

    def receive(self, data: bytes, src: Address, now: float) -> None:
        """Handle one datagram. Never raises: bad input is dropped and counted."""
        self._now = now
        if self.mode is Mode.GONE:
            return
        try:
            self._receive(data, src, now)
        except BadFrame as exc:
            self._bad[exc.kind.value] += 1
            log.debug("%s: dropped frame from %s: %s", self.node, src, exc)
        except Exception:  # a bug of ours must not kill the node's loop
            self._bad["internal-error"] += 1
            log.exception("%s: internal error handling a frame from %s", self.node, src)
        try:
            self._send_acks()
            self._pump(now)
        except Exception:
            self._bad["internal-error"] += 1
            log.exception("%s: internal error after a frame from %s", self.node, src)

    def tick(self, now: float) -> None:
        """Timers: heartbeats, failure detection, membership, periodic sync, retransmits.
        Never raises: a bug of ours must not stop the node's timers."""
        try:
            self._tick(now)
        except Exception:
            self._bad["internal-error"] += 1
            log.exception("%s: internal error in tick", self.node)

    def _tick(self, now: float) -> None:
        self._now = now
        if not self._started or self.mode is Mode.GONE:
            return
        if self.mode is Mode.JOINING:
            self._joining(now)
        if now >= self._next_hb:
            self._next_hb = now + self._hb_s
            for p in self.peers.values():
                self._send_unreliable(p, MsgType.HEARTBEAT, self._hb_payload())
        for p in self.peers.values():
            if p.up and now - p.last_heard > self._dead_s:
                p.up = False
                self._counters["peer-down"] += 1
                log.info("%s: peer %s down (silent %.0f ms)", self.node, p.name, (now - p.last_heard) * 1e3)
                self._events.append(PeerDown(p.name))
                self._request_done_with(p.name)
        if self._is_leader(now):
            self._lead(now)
        else:
            self._share_view(now)
        self._leaving(now)
        due = self.policy.period_due(now)
        if due is PeriodicSend.CHANGED:
            self._send_dirty(now, Trigger.PERIODIC)
        elif due is PeriodicSend.ALL:
            self._send_all(now, Trigger.PERIODIC)
        self._deadlines(now)
        self._pump(now)

    def changed(self, key: bytes, now: float, trigger: Trigger = Trigger.MODIFIED) -> None:
        """A record changed in the store (claims 2-5): send it now, or queue it for the period."""
        self.changed_many((key,), now, trigger)

    def changed_many(self, keys: Iterable[bytes], now: float, trigger: Trigger = Trigger.MODIFIED) -> None:
        """Several records changed at once (one turn of the node's loop): sent batched, as few
        datagrams as their destinations allow, or queued for the period."""
        self._now = now
        recs: list[Record] = []
        for key in keys:
            rec = self.store.get(key)
            if rec is None:
                continue
            if rec.scope is Scope.NODE and rec.owner != self.node:
                self._counters["changed-not-own"] += 1
                continue
            recs.append(rec)
        if not recs:
            return
        if self.policy.send_now():
            self._send_records(self._group_by_targets(recs), trigger, now)
            self.policy.sent_on_demand(now)
        else:
            self._dirty.update(r.key for r in recs)
        self._pump(now)

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
        self._now = now
        token = self._next_token
        self._next_token += 1
        recs = [r for r in (self.store.get(k) for k in keys) if r is not None]
        if peers is None:
            groups = self._group_by_targets(recs)
        else:
            chosen = [self.peers[n] for n in peers if n in self.peers]
            groups = {tuple(p.name for p in chosen): recs} if chosen and recs else {}
        sent = self._send_records(groups, trigger, now, track=True)
        names = tuple(sorted({n for n, _ in sent}))
        if sent:
            self._tokens[token] = _Token(now + timeout_s, set(sent), names)
            for ps in sent:
                self._seq_tokens.setdefault(ps, []).append(token)
            self.policy.sent_on_demand(now)
        else:
            self._events.append(SyncCompleted(token, True, ()))
        self._pump(now)
        return token

    def request_state(self, key: bytes, now: float, timeout_s: float | None = None) -> None:
        """Claim 14: ask the live nodes for a record this node lacks; StateReply later."""
        self._now = now
        if key in self._requests:
            return
        targets = [p for p in self.peers.values() if p.up]
        if not targets:
            self._events.append(StateReply(key, False))
            return
        t = self.config.request_timeout_ms / 1000.0 if timeout_s is None else timeout_s
        self._requests[key] = _Request(now + t, {p.name for p in targets})
        for p in targets:
            self._queue(p, MsgType.STATE_REQUEST, [key])
        self._pump(now)

    def full_sync(self, now: float) -> None:
        """Claim 6: send all state now."""
        self._now = now
        self._send_all(now, Trigger.FULL_SYNC)
        self._pump(now)

    def set_policy(self, name: str, interval_ms: int, differential: bool) -> None:
        """Switch policy at run time. Changes queued for a period go out on the next tick
        if the new policy sends on demand."""
        self.policy = make_policy(name, interval_ms, differential, self._now)
        if self.policy.send_now() and self._dirty:
            self._send_dirty(self._now, Trigger.MODIFIED)
            self._pump(self._now)

    def leave(self, now: float) -> None:
        """Claim 13: push everything to the backups, wait for acks, then ask to leave."""
        self._now = now
        if self.mode in (Mode.LEAVING, Mode.LEFT, Mode.GONE):
            return  # already on its way out
        if self.mode is not Mode.ACTIVE:
            # Nothing is owned: leaving is immediate.
            self.mode = Mode.LEFT
            return
        self.mode = Mode.LEAVING
        self._send_dirty(now, Trigger.LEAVE)
        own = list(self.store.records(owner=self.node, scope=Scope.NODE))
        group = tuple(n for n in self.view.backups_of(self.node) if self.peers[n].up)
        sent = self._send_records({group: own} if group and own else {}, Trigger.LEAVE, now, track=True)
        # Our common records too, to every live node: one sent just before leave() must not
        # be lost because we stopped retransmitting it.
        common = [r for r in self.store.records(scope=Scope.COMMON) if r.owner == self.node]
        everyone = tuple(p.name for p in self.peers.values() if p.up)
        if common and everyone:
            sent += self._send_records({everyone: common}, Trigger.LEAVE, now, track=True)
        self._leave_pending = set(sent)
        log.info("%s: leaving, pushed %d records to %s", self.node, len(own), list(group))
        self._pump(now)

    def datagrams(self) -> list[tuple[Address, bytes]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[SyncEvent]:
        ev, self._events = self._events, []
        return ev

    def freeze(self, frozen: bool) -> None:
        """Step-through: hold new reliable frames (heartbeats and acks keep flowing)."""
        self._frozen = frozen
        self._credit = 0
        if not frozen:
            self._pump(self._now)

    def step(self) -> int:
        """Release one held reliable frame; returns how many were released (0 or 1)."""
        if not self._frozen:
            return 0
        self._credit += 1
        before = self._credit
        self._pump(self._now)
        released = before - self._credit
        self._credit = 0
        return released

    def held(self) -> int:
        """Reliable frames waiting to be sent (held by a freeze or behind a window)."""
        return sum(p.channel.unsent() for p in self.peers.values())

    @property
    def owned_buckets(self) -> list[int]:
        return sorted(self._owned)

    def stats(self) -> dict[str, Any]:
        lat = sorted(self._latency_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {
            "node": self.node,
            "incarnation": self.incarnation,
            "mode": self.mode.name.lower(),
            "epoch": self.view.epoch,
            "policy": self.policy.name,
            "interval_ms": self.policy.interval_ms,
            "differential": self.policy.differential,
            "owned_buckets": sorted(self._owned),
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
                }
                for p in self.peers.values()
            },
            "bad_frames": dict(self._bad),
            "counters": dict(self._counters),
            "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(lat)},
            "held": self.held(),
            "frozen": self._frozen,
        }

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

    # ---- receive path -----------------------------------------------------------------

    def _receive(self, data: bytes, src: Address, now: float) -> None:
        c = self.config
        f = decode_frame(data, c.key, c.lab_id, c.max_frame_bytes)
        p = self.peers.get(f.sender)
        if p is None:
            raise BadFrame(BadFrameKind.UNKNOWN_SENDER, f.sender)
        if (src[0], int(src[1])) != p.addr:
            raise BadFrame(BadFrameKind.WRONG_SOURCE, f"{f.sender} from {src}")
        if f.to_inc not in (0, self.incarnation):
            raise BadFrame(BadFrameKind.STALE, "addressed to an earlier incarnation of this node")
        if f.incarnation != p.inc:
            if f.incarnation in p.retired:
                raise BadFrame(BadFrameKind.STALE, "from an earlier incarnation of the peer")
            if p.inc:
                self._peer_restarted(p)
            p.inc = f.incarnation
            p.last_useq = 0
        if f.type in UNRELIABLE:
            if f.seq <= p.last_useq:
                raise BadFrame(BadFrameKind.STALE, f"unreliable seq {f.seq} <= {p.last_useq}")
            p.last_useq = f.seq
        p.last_heard = now
        if not p.up:
            p.up = True
            log.info("%s: peer %s up", self.node, p.name)
            self._events.append(PeerUp(p.name))
        self._max_epoch_seen = max(self._max_epoch_seen, f.epoch)
        p.stats.received[f.type.name.lower()] += 1
        p.stats.bytes_received += len(data)
        for o in p.channel.on_ack(f.ack):
            self._acked(p, o, now)
        if f.type in UNRELIABLE:
            if f.type is not MsgType.ACK:
                pl = f.payload
                if not isinstance(pl, list) or len(pl) != 2 or not isinstance(pl[1], bool):
                    raise BadFrame(BadFrameKind.BAD_PAYLOAD, "heartbeat")
                # Mode, readiness and epoch come together from one heartbeat, so the leader
                # never pairs a fresh epoch with a stale mode.
                p.mode, p.ready, p.epoch = Mode.from_wire(pl[0]), pl[1], f.epoch
                if f.type is MsgType.HELLO:
                    # A (re)started peer: answer at once so it learns our incarnation.
                    self._send_unreliable(p, MsgType.HEARTBEAT, self._hb_payload())
            return
        # The sender's epoch travels with the message: records sent under an older view than
        # ours may no longer be ours to hold.
        d = p.channel.on_data(f.seq, f.type, (f.epoch, f.payload))
        if d.duplicate:
            raise BadFrame(BadFrameKind.STALE, f"replayed seq {f.seq}")
        if d.beyond_window:
            self._counters["beyond-window"] += 1
        for _, t, (epoch, payload) in d.messages:
            try:
                self._dispatch(p, t, payload, now, epoch)
            except BadFrame as exc:
                self._bad[exc.kind.value] += 1
                log.debug("%s: bad %s payload from %s: %s", self.node, t.name, p.name, exc)

    def _dispatch(self, p: Peer, t: MsgType, pl: Any, now: float, epoch: int) -> None:
        if t is MsgType.RECORDS:
            if not isinstance(pl, list) or len(pl) != 2:
                raise BadFrame(BadFrameKind.BAD_PAYLOAD, "records")
            trig = trigger_from_wire(pl[0])
            recs = records_from_blob(pl[1])
            if epoch < self.view.epoch and self.mode is not Mode.JOINING:
                # Sent under an older view: keep only what we still hold in ours.
                keep = {self.node, *self.view.backed_up_by(self.node)}
                owner_of = self.view.owner
                n = len(recs)
                recs = [
                    r
                    for r in recs
                    if r.scope is Scope.COMMON
                    or (r.owner in keep and owner_of(r.bucket) in (r.owner, None))
                ]
                self._counters["records-outdated"] += n - len(recs)
            apply = self.store.apply
            if trig is Trigger.RESYNC:  # bulk: no per-record events
                applied = sum(1 for r in recs if apply(r))
            else:
                applied = 0
                adopted: list[Record] = []
                for r in recs:
                    if apply(r):
                        applied += 1
                        self._events.append(RecordApplied(r.key, p.name, trig))
                        if r.owner == self.node and r.scope is Scope.NODE:
                            adopted.append(r)
                if adopted and trig is Trigger.REBALANCE:
                    # Offered by a node that rejoins: ours now, so our backups need it too.
                    self._send_records(self._group_by_targets(adopted), Trigger.REBALANCE, now)
            self._counters["records-applied"] += applied
            self._counters["records-stale"] += len(recs) - applied
            if trig is Trigger.RESYNC and self.mode is Mode.JOINING:
                before = p.bulk_received
                p.bulk_received += len(recs)
                if p.bulk_received // 1000 != before // 1000:
                    self._events.append(ResyncProgress(p.name, p.bulk_received, p.bulk_total))
        elif t is MsgType.BULK_REQUEST:
            self._answer_bulk(p, now)
        elif t is MsgType.BULK_START:
            total = pl[0] if isinstance(pl, list) and pl and isinstance(pl[0], int) else 0
            p.bulk_total, p.bulk_received, p.bulk_done = total, 0, False
            self._events.append(ResyncProgress(p.name, 0, total))
        elif t is MsgType.BULK_END:
            p.bulk_done = True
            self._events.append(ResyncProgress(p.name, p.bulk_received, p.bulk_total))
        elif t is MsgType.STATE_REQUEST:
            if not isinstance(pl, list) or len(pl) != 1 or not isinstance(pl[0], bytes):
                raise BadFrame(BadFrameKind.BAD_PAYLOAD, "state request")
            rec = self.store.get(pl[0])
            found = rec is not None and not rec.deleted
            self._queue(p, MsgType.STATE_REPLY, [pl[0], record_to_wire(rec) if rec and found else None])
        elif t is MsgType.STATE_REPLY:
            if not isinstance(pl, list) or len(pl) != 2 or not isinstance(pl[0], bytes):
                raise BadFrame(BadFrameKind.BAD_PAYLOAD, "state reply")
            self._state_reply(p, pl[0], None if pl[1] is None else record_from_wire(pl[1]))
        elif t is MsgType.VIEW:
            v = view_from_wire(pl, self.names, self.config.buckets, self.config.backups)
            if v is None:
                raise BadFrame(BadFrameKind.BAD_VIEW, "view is not the function of its states")
            if self._newer(v):
                self._adopt(v, now)
        elif t is MsgType.LEAVE:
            p.mode = Mode.LEFT

    def _state_reply(self, p: Peer, key: bytes, rec: Record | None) -> None:
        req = self._requests.get(key)
        if req is None:
            return
        if rec is not None:
            self.store.apply(rec)
            del self._requests[key]
            self._events.append(StateReply(key, True))
            return
        req.waiting.discard(p.name)
        if not req.waiting:
            del self._requests[key]
            self._events.append(StateReply(key, False))

    def _request_done_with(self, name: str) -> None:
        """A peer went down: it will not answer our state requests."""
        for key, req in list(self._requests.items()):
            req.waiting.discard(name)
            if not req.waiting:
                del self._requests[key]
                self._events.append(StateReply(key, False))

    def _peer_restarted(self, p: Peer) -> None:
        log.info("%s: peer %s restarted (new incarnation); channel reset", self.node, p.name)
        self._counters["peer-restarted"] += 1
        p.retired.append(p.inc)
        p.channel.reset()
        p.view_sent_epoch = -1
        p.bulk_requested = p.bulk_done = False
        p.bulk_total = p.bulk_received = 0
        # Sequence numbers restart: forget what the old ones meant.
        for d in (self._seq_tokens, self._seq_keys):
            for k in [k for k in d if k[0] == p.name]:
                del d[k]
        self._leave_pending = {k for k in self._leave_pending if k[0] != p.name}
        # What was queued for its old incarnation is gone with the channel. Its bulk resync
        # brings node state back, but only from active nodes: common records go now.
        common = list(self.store.records(scope=Scope.COMMON))
        if common:
            self._send_records({(p.name,): common}, Trigger.REBALANCE, self._now)

    def _acked(self, p: Peer, o: Outgoing, now: float) -> None:
        p.stats.acked += 1
        p.stats.acked_by_type[o.type.name.lower()] += 1
        if o.tries == 1 and o.first_sent is not None:  # Karn: retransmitted ones are ambiguous
            self._latency_ms.append((now - o.first_sent) * 1000.0)
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
                self._events.append(SyncCompleted(token, True, tk.peers))
        self._leave_pending.discard(ps)

    # ---- membership -------------------------------------------------------------------

    def _hb_payload(self) -> list[Any]:
        return [self.mode.value, self._ready]

    def _is_leader(self, now: float) -> bool:
        """Lowest-id live node, preferring nodes active in the current view."""
        if self.mode not in (Mode.JOINING, Mode.ACTIVE):
            return False
        if self._max_epoch_seen > self.view.epoch:
            # Someone holds a newer view than ours (a node just started, or a view we missed):
            # learn it before proposing, or a stale proposal could outrank the cluster's. Give
            # up waiting if nobody sends it within the failure-detection time.
            if self._behind_since is None:
                self._behind_since = now
            if now - self._behind_since < self._dead_s:
                return False
        else:
            self._behind_since = None
        cands = [(self.index, self.node)] + [
            (p.index, p.name)
            for p in self.peers.values()
            if p.up and p.mode in (Mode.JOINING, Mode.ACTIVE)
        ]
        active = [c for c in cands if self.view.state(c[1]) is MemberState.ACTIVE]
        return min(active or cands)[1] == self.node

    def _desired_states(self) -> dict[str, MemberState]:
        v = self.view
        out: dict[str, MemberState] = {}
        for name in self.names:
            cur = v.state(name)
            if name == self.node:
                ok = self.mode is Mode.ACTIVE or (self.mode is Mode.JOINING and self._ready)
                out[name] = MemberState.ACTIVE if ok else MemberState.JOINING
                continue
            p = self.peers[name]
            if not p.up:
                out[name] = MemberState.FAILED if cur in LIVE else cur
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
        desired = self._desired_states()
        if desired != self.view.members:
            epoch = max(self.view.epoch, self._max_epoch_seen) + 1
            v = compute_view(
                self.names, desired, self.config.buckets, self.config.backups, epoch, self.node
            )
            log.info("%s: proposing view %d %s", self.node, epoch, {k: s.value for k, s in desired.items()})
            self._adopt(v, now)
        for p in self.peers.values():
            if not p.up:
                continue
            # A peer behind us, or one that believes itself active against our view (after a
            # partition healed), gets the view; again now and then while it disagrees.
            disagrees = p.epoch != self.view.epoch or (
                p.mode is Mode.ACTIVE and self.view.state(p.name) is not MemberState.ACTIVE
            )
            resend = p.view_sent_epoch < self.view.epoch or now - p.view_sent_at > 20 * self._hb_s
            if disagrees and resend:
                p.view_sent_epoch = self.view.epoch
                p.view_sent_at = now
                self._queue(p, MsgType.VIEW, self.view.to_wire())

    def _share_view(self, now: float) -> None:
        """Not the leader: still hand our view to peers whose heartbeats show an older one
        (the leader may be the one that is behind)."""
        for p in self.peers.values():
            if p.up and p.epoch < self.view.epoch and p.view_sent_epoch < self.view.epoch:
                p.view_sent_epoch = self.view.epoch
                p.view_sent_at = now
                self._queue(p, MsgType.VIEW, self.view.to_wire())

    def _newer(self, v: View) -> bool:
        """Views are ordered by epoch, then by how many nodes they keep active (after a
        partition heals the side that kept more nodes wins), then by the lower-id proposer."""

        def rank(x: View) -> tuple[int, int, int]:
            active = sum(1 for st in x.states if st is MemberState.ACTIVE)
            idx = self.names.index(x.proposer) if x.proposer in self.names else len(self.names)
            return (x.epoch, active, -idx)

        return v.states != self.view.states and rank(v) > rank(self.view)

    def _owning(self) -> bool:
        return self.mode in (Mode.ACTIVE, Mode.LEAVING, Mode.LEFT)

    def _adopt(self, v: View, now: float) -> None:
        old = self.view
        self.view = v
        self._max_epoch_seen = max(self._max_epoch_seen, v.epoch)
        mine = v.state(self.node)
        left = False
        if self.mode is Mode.JOINING and mine is MemberState.ACTIVE and self._ready:
            self.mode = Mode.ACTIVE
            log.info("%s: active in view %d", self.node, v.epoch)
        elif self.mode is Mode.ACTIVE and mine is not MemberState.ACTIVE:
            log.warning("%s: view %d says %s; rejoining", self.node, v.epoch, mine.value)
            self._rejoin(now)
        elif self.mode in (Mode.LEAVING, Mode.LEFT) and mine is MemberState.OFFLINE:
            self.mode = Mode.GONE
            left = True
        self._events.append(ViewChanged(v))
        new_owned = set(v.buckets_of(self.node)) if self._owning() else set()
        lost = sorted(self._owned - new_owned)
        gained = sorted(new_owned - self._owned)
        self._owned = new_owned
        self._reconcile(v)
        if lost:
            self._events.append(BucketsLost(tuple(lost)))
        promoted: list[Record] = []
        if gained:
            # State first, then traffic: promote before the node may accept these buckets.
            promoted = self.store.promote(gained, self.node)
            self._events.append(BucketsGained(tuple(gained), len(promoted)))
            log.info("%s: gained buckets %s, promoted %d records", self.node, gained, len(promoted))
        # Forget copies we no longer need: an active node holds node records of itself and of
        # the nodes it backs up, nothing else (failed nodes' state is promoted by now). A joiner
        # keeps what its bulk resync brought: it will need it once active.
        if self.mode is not Mode.JOINING:
            keep = {self.node, *v.backed_up_by(self.node)}
            for name in self.names:
                if name not in keep:
                    dropped = self.store.drop_owner(name)
                    if dropped:
                        log.info("%s: dropped %d copies of %s's records", self.node, dropped, name)
        failover = any(
            old.state(n) in LIVE and v.state(n) is MemberState.FAILED for n in self.names
        )
        trig = Trigger.FAILOVER if failover else Trigger.REBALANCE
        if self.mode in (Mode.ACTIVE, Mode.LEAVING, Mode.LEFT):
            new_group = set(v.backups_of(self.node))
            was_active = old.state(self.node) is MemberState.ACTIVE
            old_group = set(old.backups_of(self.node)) if was_active else set()
            # New backups get everything (Fig. 7, 702-703), except joiners whose bulk resync,
            # asked under the old view, already brought our records for this very role.
            had_bulk = {j for j, f in self._joiner_futures(old).items() if j in f.backups_of(self.node)}
            added = tuple(sorted(
                n for n in new_group - old_group
                if not (old.state(n) is MemberState.JOINING and n in had_bulk)
            ))
            sent: list[tuple[str, int]] = []
            if added:
                own = list(self.store.records(owner=self.node, scope=Scope.NODE))
                sent += self._send_records({added: own} if own else {}, trig, now, track=True)
            if promoted:
                # To our backups and to joiners that will back us up (their bulk resync may
                # predate this promotion).
                groups = {
                    g: recs
                    for t, recs in self._group_by_targets(promoted).items()
                    if (g := tuple(n for n in t if n not in added))
                }
                sent += self._send_records(groups, trig, now, track=True)
            if self.mode in (Mode.LEAVING, Mode.LEFT):
                # Leaving: acks still awaited from nodes that failed or left will not come;
                # what we just sent our (new) backups must be acked too before we ask to go.
                self._leave_pending = {
                    ps
                    for ps in self._leave_pending
                    if self.peers[ps[0]].up and v.state(ps[0]) in LIVE
                }
                if sent:
                    self._leave_pending.update(sent)
                    self.mode = Mode.LEAVING
        if self.mode is Mode.JOINING:
            # What the peers must send us depends on the view (who owns which bucket now,
            # whom we will back up): ask again under the new one. Versions make it idempotent.
            for p in self.peers.values():
                p.bulk_requested = p.bulk_done = False
            self._joining(now)
        if left:
            log.info("%s: left the cluster (view %d)", self.node, v.epoch)
            self._events.append(LeaveComplete())

    def _reconcile(self, v: View) -> None:
        """Records of buckets that moved between two live nodes (a rebalance) now belong to
        the bucket's new owner. Do locally what its promote does (owner := new owner,
        version + 1), so every copy agrees; copies we do not need are dropped right after
        by owner. (A tombstone here would block the new owner's push of that same version
        should we become its backup later.)"""
        handed: dict[tuple[str, ...], list[Record]] = {}
        for r in list(self.store.records(scope=Scope.NODE)):
            new_owner = v.owner(r.bucket)
            if (
                new_owner is None
                or new_owner == r.owner
                or new_owner == self.node
                or r.owner not in self.names
                or v.state(r.owner) is not MemberState.ACTIVE
            ):
                continue
            moved = Record(r.key, r.scope, new_owner, r.version + 1, r.bucket, list(r.data), r.deleted)
            self.store.apply(moved)
            if r.owner == self.node and self.peers[new_owner].up:
                handed.setdefault((new_owner,), []).append(moved)
        if handed:
            # The new owner has these already if it resynced from us; if it had not (we come
            # back holding state nobody else has), this is how it gets them.
            self._send_records(handed, Trigger.REBALANCE, self._now)

    def _rejoin(self, now: float) -> None:
        """We were declared failed (cut off, or too slow): our buckets went to others, who
        promoted our state. What we hold may have been promoted by us in isolation and
        would shadow newer versions, so reset node state and take the bulk resync.

        Before forgetting, offer each node record to its bucket's current owner, rewritten
        as that owner's (version + 1, what its promote would make): an owner that lacks it
        (a cluster formed without us, which held the only copy) adopts it; an owner with
        the same or a newer version keeps its own."""
        offers: dict[tuple[str, ...], list[Record]] = {}
        for r in self.store.records(scope=Scope.NODE):
            o = self.view.owner(r.bucket)
            if o is not None and o != self.node and self.peers[o].up:
                offers.setdefault((o,), []).append(
                    Record(r.key, r.scope, o, r.version + 1, r.bucket, list(r.data), False)
                )
        if offers:
            self._send_records(offers, Trigger.REBALANCE, now)
        if any(st is MemberState.ACTIVE for st in self.view.states):
            dropped = sum(self.store.drop_owner(n) for n in self.names)
            log.warning("%s: rejoining; dropped %d node records held before", self.node, dropped)
        else:
            # Nobody took over from us: what we hold is the best copy there is; keep it.
            log.warning("%s: rejoining a cluster with no active node; keeping our state", self.node)
        # Common records carry their own versions: offer ours, in case the others lack some
        # (they formed a view without us); a receiver keeps whichever is newer.
        common = list(self.store.records(scope=Scope.COMMON))
        if common:
            self._send_records(self._group_by_targets(common), Trigger.REBALANCE, now)
        self.mode = Mode.JOINING
        self._ready = False
        self._join_started = now
        for p in self.peers.values():
            p.bulk_requested = p.bulk_done = False

    def _joining(self, now: float) -> None:
        """Request bulk resync from every active peer; ready once all of them answered.
        Re-evaluated against each view: a peer that became active since must answer too."""
        actives = [
            p for p in self.peers.values() if p.up and self.view.state(p.name) is MemberState.ACTIVE
        ]
        for p in actives:
            if not p.bulk_requested:
                p.bulk_requested = True
                p.bulk_done = False
                self._queue(p, MsgType.BULK_REQUEST, [])
        # Without the wait a node that has heard nobody yet would think itself alone; once it
        # hears every active member of the view it knows, it need not wait any longer.
        in_view = [p for p in self.peers.values() if self.view.state(p.name) is MemberState.ACTIVE]
        heard_all = bool(in_view) and all(p.up for p in in_view)
        waited = now - self._join_started >= self._join_wait_s
        ready = (waited or heard_all) and all(p.bulk_done for p in actives)
        if ready and not self._ready:
            n = sum(p.bulk_received for p in actives)
            log.info("%s: resync complete, %d records from %s", self.node, n, [p.name for p in actives])
            self._events.append(ResyncComplete(n))
        self._ready = ready

    def _answer_bulk(self, p: Peer, now: float) -> None:
        """Claim 12: common records, our records if the joiner will back us up, and the
        records of buckets we own that will move to it."""
        fut = self._activated(self.view, p.name)
        out: dict[bytes, Record] = {r.key: r for r in self.store.records(scope=Scope.COMMON)}
        if p.name in fut.backups_of(self.node):
            out.update((r.key, r) for r in self.store.records(owner=self.node, scope=Scope.NODE))
        moving = [b for b in self._owned if fut.owner(b) == p.name]
        if moving:
            out.update((r.key, r) for r in self.store.records(scope=Scope.NODE, buckets=moving))
        recs = list(out.values())
        self._queue(p, MsgType.BULK_START, [len(recs)])
        for batch in batch_records(recs, self._budget):
            self._queue(p, MsgType.RECORDS, [TRIGGER_CODE[Trigger.RESYNC], batch.blob])
        self._queue(p, MsgType.BULK_END, [len(recs)])
        self._counters["bulk-answered"] += 1
        log.info("%s: bulk resync to %s: %d records", self.node, p.name, len(recs))

    def _leaving(self, now: float) -> None:
        if self.mode is Mode.LEAVING and not self._leave_pending:
            self.mode = Mode.LEFT
            for p in self.peers.values():
                if p.up:
                    self._queue(p, MsgType.LEAVE, [])
        if self.mode is Mode.LEFT and not any(
            p.up and self.view.state(p.name) is MemberState.ACTIVE for p in self.peers.values()
        ):
            # Nobody left to hand over to: leaving is complete on our own.
            self.mode = Mode.GONE
            self._owned = set()
            self._events.append(LeaveComplete())

    # ---- sending ------------------------------------------------------------------------

    def _targets(self, rec: Record) -> tuple[str, ...]:
        if rec.scope is Scope.COMMON:
            return tuple(p.name for p in self.peers.values() if p.up)
        if rec.owner != self.node:
            return ()
        names = set(self.view.backups_of(self.node))
        # A pending handover: a joiner that would back us up, or own this record's bucket,
        # once activated gets the change now. Joiners are activated one by one or together;
        # the view with that joiner alone activated covers both (anyone activated with it
        # can only take roles from it, never give it new ones).
        for j, fut in self._joiner_futures(self.view).items():
            if j in fut.backups_of(self.node) or fut.owner(rec.bucket) == j:
                names.add(j)
        return tuple(sorted(n for n in names if self.peers[n].up))

    def _joiner_futures(self, v: View) -> dict[str, View]:
        """joiner -> the view with it activated, cached per view (asked for every record)."""
        if self._future_of is not v:
            self._future_of = v
            self._futures = {
                j: self._activated(v, j)
                for j, st in v.members.items()
                if st is MemberState.JOINING and j != self.node
            }
        return self._futures

    def _activated(self, v: View, joiner: str) -> View:
        states = v.members
        states[joiner] = MemberState.ACTIVE
        c = self.config
        return compute_view(self.names, states, c.buckets, c.backups, v.epoch)

    def _group_by_targets(self, recs: Iterable[Record]) -> dict[tuple[str, ...], list[Record]]:
        groups: dict[tuple[str, ...], list[Record]] = {}
        for r in recs:
            t = self._targets(r)
            if t:
                groups.setdefault(t, []).append(r)
        return groups

    def _send_records(
        self,
        groups: dict[tuple[str, ...], list[Record]],
        trigger: Trigger,
        now: float,
        track: bool = False,
    ) -> list[tuple[str, int]]:
        """Queue records, batched, to each group of peers. Returns (peer, seq) sent if track."""
        sent: list[tuple[str, int]] = []
        code = TRIGGER_CODE[trigger]
        keep_prov = trigger is not Trigger.RESYNC
        for names, recs in groups.items():
            for batch in batch_records(recs, self._budget):
                keys = batch.keys
                for n in names:
                    seq = self._queue(self.peers[n], MsgType.RECORDS, [code, batch.blob])
                    if keep_prov:
                        self._seq_keys[(n, seq)] = keys
                    if track:
                        sent.append((n, seq))
                if keep_prov:
                    for k in keys:
                        self._note(k, trigger, names, now)
                self._counters["records-sent"] += len(keys) * len(names)
        return sent

    def _note(self, key: bytes, trigger: Trigger, names: tuple[str, ...], now: float) -> None:
        self._prov[key] = {"trigger": trigger.value, "sent_at": now, "sent_to": set(names), "acked_by": {}}
        self._prov.move_to_end(key)
        while len(self._prov) > self.config.provenance_keys:
            self._prov.popitem(last=False)

    def _send_dirty(self, now: float, trigger: Trigger) -> None:
        if not self._dirty:
            return
        recs = [r for r in (self.store.get(k) for k in self._dirty) if r is not None]
        self._dirty.clear()
        self._send_records(self._group_by_targets(recs), trigger, now)

    def _send_all(self, now: float, trigger: Trigger) -> None:
        recs: list[Record] = list(self.store.records(owner=self.node, scope=Scope.NODE))
        recs += self.store.records(scope=Scope.COMMON)
        recs += [r for r in (self.store.get(k) for k in self._dirty) if r is not None and r.deleted]
        self._dirty.clear()
        self._send_records(self._group_by_targets(recs), trigger, now)

    def _queue(self, p: Peer, mtype: MsgType, payload: Any) -> int:
        return p.channel.queue(mtype, payload, self.view.epoch)

    def _frame(
        self, p: Peer, mtype: MsgType, seq: int, payload: Any, epoch: int | None = None
    ) -> bytes:
        f = Frame(
            self.node,
            self.incarnation,
            p.inc,
            # A reliable message keeps the epoch of the view it was decided under, even when
            # retransmitted later.
            self.view.epoch if epoch is None else epoch,
            seq,
            p.channel.cum_ack,
            mtype,
            payload,
            self.config.lab_id,
        )
        p.channel.ack_pending = False
        data = encode_frame(f, self.config.key)
        p.stats.sent[mtype.name.lower()] += 1
        p.stats.bytes_sent += len(data)
        p.stats.bytes_by_type[mtype.name.lower()] += len(data)
        self._out.append((p.addr, data))
        return data

    def _send_unreliable(self, p: Peer, mtype: MsgType, payload: Any) -> None:
        self._useq += 1
        self._frame(p, mtype, self._useq, payload)

    def _send_acks(self) -> None:
        for p in self.peers.values():
            if p.channel.ack_pending:
                self._send_unreliable(p, MsgType.ACK, None)

    def _pump(self, now: float) -> None:
        """Transmit what the channels allow: new frames (unless frozen) and retransmissions."""
        for p in self.peers.values():
            if not p.up or not p.channel.unacked:
                continue
            max_new = self._credit if self._frozen else None
            for o, retransmit in p.channel.due(now, max_new):
                if retransmit:
                    p.stats.retransmitted += 1
                    p.stats.retransmitted_by_type[o.type.name.lower()] += 1
                elif self._frozen:
                    self._credit -= 1
                self._frame(p, o.type, o.seq, o.payload, o.epoch)

    def _deadlines(self, now: float) -> None:
        for token, tk in list(self._tokens.items()):
            if now >= tk.deadline:
                del self._tokens[token]
                for ps in tk.waiting:
                    lst = self._seq_tokens.get(ps)
                    if lst and token in lst:
                        lst.remove(token)
                        if not lst:
                            del self._seq_tokens[ps]
                self._events.append(SyncCompleted(token, False, tk.peers))
        for key, req in list(self._requests.items()):
            if now >= req.deadline:
                del self._requests[key]
                self._events.append(StateReply(key, False))
