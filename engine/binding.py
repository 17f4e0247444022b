"""The engine bound to its sync agent, with no I/O: packets and a clock in; verdicts, releases
of held packets, bucket changes and datagrams out. engine/node.py does the I/O around it."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.core import Decision, Engine, SyncKind, SyncRequest, Verdict
from engine.replay import ReplayQueue, ReplaySettings
from sync.agent import Address, SyncAgent
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
from sync.records import Trigger

log = logging.getLogger(__name__)

H = TypeVar("H")  # the node's handle of a queued packet (a NetfilterQueue packet; anything in tests)

EXPIRE_EVERY_S = 1.0
_HOLD = Verdict.HOLD
LATENCIES_KEPT = 1000
# Plain changes waiting (`batch_ms`) go out once this many are waiting: about a datagram of them.
BATCH_MAX_CHANGES = 20


@dataclass(frozen=True, slots=True)
class Release(Generic[H]):
    """A held packet's verdict, given once its sync finished (acked or timed out)."""

    handle: H
    accept: bool
    payload: bytes | None = None  # a translated packet's new bytes (NAT), to set before accepting


@dataclass(frozen=True, slots=True)
class Note:
    """A fact for the node's timeline (the node stamps the wall-clock time)."""

    kind: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)


class _Hold(Generic[H]):
    """Packets waiting on one sync. Its id is the engine's sync id: the only id of a hold."""

    __slots__ = ("deadline", "kind", "packets", "started")

    def __init__(self, kind: SyncKind, started: float, deadline: float) -> None:
        self.kind = kind
        self.started = started
        self.deadline = deadline
        self.packets: list[tuple[H, bytes, int]] = []


class Binding(Generic[H]):
    """One node's engine and sync agent, glued: holds, their one deadline, takeover timing.

    Every hold waits at most `hold_timeout_ms` (the lab's), for pushes (FTP expectations,
    claims 15-17) and pulls (state requests, claim 14) alike; the engine and the agent are
    given that same deadline, and `tick` enforces it."""

    def __init__(self, engine: Engine, agent: SyncAgent, *, hold_timeout_ms: int,
                 replay: ReplaySettings | None = None, batch_ms: float = 0.0) -> None:
        self.engine = engine
        self.agent = agent
        self.hold_timeout_s = hold_timeout_ms / 1000
        # Plain changes (no packet waits on them) may wait up to batch_ms, so that one datagram
        # carries the changes of many connections rather than one loop turn's one or two: a
        # datagram's fixed cost (frame, HMAC, syscalls, the peer's receive) is most of what a
        # connection's sync costs. 0: each turn's changes go at its end. A hold never waits.
        self.batch_s = batch_ms / 1000
        self._batch_since: float | None = None  # when the oldest waiting change was made
        engine.hold_timeout_s = self.hold_timeout_s
        self.holds: dict[int, _Hold[H]] = {}
        self._tokens: dict[int, int] = {}  # the agent's token of a push -> hold id
        self._pulls: dict[bytes, int] = {}  # a pulled key -> hold id
        self._pushes: list[SyncRequest] = []  # this turn's pushes, sent by flush_engine
        self._releases: list[Release[H]] = []
        self._notes: list[Note] = []
        self.counters: dict[str, int] = {
            "held": 0,
            "released_by_ack": 0,
            "released_by_timeout": 0,
            "held_dropped": 0,
        }
        self.hold_latencies_ms: deque[float] = deque(maxlen=LATENCIES_KEPT)
        # Buckets: what the agent says we own, and what the node has put in iptables.
        self.owned: list[int] = []
        self.applied: list[int] = []
        # Lossless takeover: the buckets we back up are queued too, held a short window, and
        # replayed when we adopt them (engine/replay.py).
        self.replay: ReplayQueue[H] = ReplayQueue(replay or ReplaySettings())
        self.shadow: list[int] = []  # the buckets we back up and queue (empty when lossless is off)
        self._shadow_set: frozenset[int] = frozenset()
        self.applied_shadow: list[int] = []
        self.owned_in_shadow = False  # see _route_shadow
        self.left = False  # a graceful leave completed: the node may stop
        # Takeover timing: from the first peer-down to the gained buckets being accepted.
        self.down_at: dict[str, float] = {}
        self.pending_gain: tuple[list[int], int, float] | None = None
        self.pending_replayed = 0  # packets replayed for the pending gain
        self.pending_replayed_udp = 0  # of them UDP: each may duplicate a datagram the dead node sent
        self.pending_too_old = 0  # held for the pending gain but older than the window at replay
        self.pending_refused = 0  # replayed, and the engine dropped them
        self.last_takeover: dict[str, Any] | None = None
        self._last_expire: float | None = None
        self.engine.owned_buckets = frozenset()  # nothing until the view gives us buckets
        self._process = engine.process  # bound once: the packet path

    # ---- packets --------------------------------------------------------------------------
    def packet(self, data: bytes, mark: int, handle: H, now: float) -> Decision:
        """Decide one packet. HOLD: the binding keeps `handle` and releases it later (see
        `releases`); any other verdict is the node's to give now."""
        d = self._process(data, now, mark)
        if d.verdict is not _HOLD:
            return d
        return self.held(d, data, mark, handle, now)

    def held(self, d: Decision, data: bytes, mark: int, handle: H, now: float) -> Decision:
        """The rest of `packet` for a HOLD decision the caller got from `engine.process` itself
        (the node does, to spend one call less on every accepted packet). Its sync is started
        here, and sent with the rest of the turn (`flush_engine`, at `settle`)."""
        self._take_requests(now)
        hold = self.holds.get(d.sync_id) if d.sync_id is not None else None
        if hold is None:
            # The sync already finished (or was never registered): do not strand the packet.
            self.counters["held_dropped"] += 1
            return Decision(Verdict.DROP, "hold-finished")
        hold.packets.append((handle, data, mark))
        self.counters["held"] += 1
        return d

    def flush_engine(self, now: float) -> None:
        """Start the syncs the engine asked for and tell the agent what changed. Everything one
        loop turn changed goes out together: the records of its holds and the changed ones
        share their datagrams (one per peer, as long as they fit)."""
        self._take_requests(now)
        self._batch_since = None
        events = self.engine.drain_events()
        pushes, self._pushes = self._pushes, []
        if not pushes:
            if events:
                self.agent.changed_many([ev.key for ev in events], now, Trigger.MODIFIED)
            return
        pushed = {k for req in pushes for k in req.keys}
        keys = [ev.key for ev in events if ev.key not in pushed]
        # One deadline: the engine's, from the lab's hold timeout; the agent waits as long.
        holds = [(list(req.keys), max(0.0, req.deadline - now)) for req in pushes]
        tokens = self.agent.send_turn(holds, keys, now)
        for req, token in zip(pushes, tokens, strict=True):
            self._tokens[token] = req.sync_id
            first = req.keys[0].hex() if req.keys else ""
            self._note("trigger", f"related connection: sync {len(req.keys)} record(s) before "
                       "releasing the packet", key=first, trigger=Trigger.RELATED.value)

    def _take_requests(self, now: float) -> None:
        """The engine's new syncs become holds at once (a held packet waits on its own); a
        pull asks now, a push waits for the turn's end (`flush_engine`)."""
        for req in self.engine.drain_sync_requests():
            if req.kind is SyncKind.PUSH:
                self.holds[req.sync_id] = _Hold(req.kind, now, req.deadline)
                self._pushes.append(req)
            else:
                self._pull(req, now)

    def _pull(self, req: SyncRequest, now: float) -> None:
        timeout_s = max(0.0, req.deadline - now)
        self.holds[req.sync_id] = _Hold(req.kind, now, req.deadline)
        for key in req.keys:
            self._pulls[key] = req.sync_id
            self.agent.request_state(key, now, timeout_s)
        first = req.keys[0].hex() if req.keys else ""
        self._note("trigger", "unknown session: asking the cluster for its state",
                   key=first, trigger=Trigger.STATE_REQUEST.value)

    def _finish(self, hold_id: int, acked: bool, now: float, by: str = "") -> None:
        """`by`: the sync message whose ack completed the hold ("n1>n2#7"), when one did."""
        hold = self.holds.pop(hold_id, None)
        self.engine.sync_done(hold_id, acked, now)
        if hold is None:
            return
        waited_ms = (now - hold.started) * 1000
        if hold.kind is SyncKind.PUSH:
            self._releases.extend(Release(h, True) for h, _, _ in hold.packets)
            self.counters["released_by_ack" if acked else "released_by_timeout"] += len(hold.packets)
            self._note("release", f"{len(hold.packets)} held packet(s) released "
                       f"{'on ack' if acked else 'by timeout'}" + (f" of {by}" if by else "")
                       + f" after {waited_ms:.2f} ms", latency_ms=round(waited_ms, 3), message=by)
        else:
            # The state arrived (or not): the packets now meet the table as it is.
            for h, data, mark in hold.packets:
                d = self.engine.process(data, now, mark)
                self._releases.append(Release(h, d.verdict is Verdict.ACCEPT, d.payload))
        self.hold_latencies_ms.append(waited_ms)

    def releases(self) -> list[Release[H]]:
        """Held packets whose verdict is due, oldest first (each handle exactly once)."""
        out, self._releases = self._releases, []
        return out

    def drop_all(self) -> list[H]:
        """The node is stopping: every held handle, to be dropped (fail closed)."""
        out = [h for hold in self.holds.values() for h, _, _ in hold.packets]
        for hold in self.holds.values():
            hold.packets.clear()
        return out + self.replay.drain()

    def shadow_packet(self, data: bytes, mark: int, handle: H, now: float) -> bool:
        """A packet of a bucket we back up (its mark is in `replay.buckets`): held without a
        verdict. False when the cap refuses it (it alone exceeds the byte cap): the node drops it
        now. Handles that expired or were evicted by the cap on the way are in `releases`."""
        if mark not in self._shadow_set:
            # A bucket we no longer back up that iptables still queues to us (the view moved
            # on, iptables-restore has not yet): its owner forwards it; so does iptables, soon.
            self.replay.counters["dropped_not_backed_up"] += 1
            return False
        out = self.replay.put(mark, handle, data, mark, now)
        if out and out[-1] is handle:
            out.pop()
            self._releases.extend(Release(h, False) for h in out)
            return False
        if out:
            self._releases.extend(Release(h, False) for h in out)
        return True

    def set_lossless(self, on: bool, now: float) -> None:
        """Switch lossless takeover on or off (the queued buckets follow at the next view step)."""
        s = self.replay.settings
        self.replay.settings = ReplaySettings(on, s.window_ms, s.cap_packets, s.cap_bytes)
        self._follow_view(now)

    @property
    def held_packets(self) -> int:
        return sum(len(h.packets) for h in self.holds.values())

    # ---- sync input and time --------------------------------------------------------------
    def start(self, now: float) -> None:
        self._last_expire = now
        self.agent.start(now)
        self._events(now)

    def receive(self, data: bytes, src: Address, now: float) -> None:
        self.agent.receive(data, src, now)
        self._events(now)

    def receive_many(self, datagrams: list[tuple[bytes, Address]], now: float) -> None:
        """What one turn of the loop read from the sync socket: acked once per peer."""
        self.agent.receive_many(datagrams, now)
        self._events(now)

    def tick(self, now: float) -> None:
        """Timers: the agent's, then ours (`timers`)."""
        self.agent.tick(now)
        self._events(now)
        self.timers(now)

    def batching(self, now: float) -> bool:
        """Whether this turn's plain changes may wait for a later one (`batch_ms`): no hold is
        to go out, the oldest waiting change is younger than batch_ms, and they fill less than
        a datagram."""
        if self.batch_s <= 0:
            return False
        self._take_requests(now)
        if self._pushes:
            return False
        waiting = len(self.engine.table.events)
        if not waiting:
            return True
        if self._batch_since is None:
            self._batch_since = now
        return now - self._batch_since < self.batch_s and waiting < BATCH_MAX_CHANGES

    def timers(self, now: float) -> None:
        """The holds' one deadline and the engine's expiry (a simulator that ticks the agent
        itself calls this alone)."""
        if not self.batching(now):
            self.flush_engine(now)
        for hold_id in [i for i, h in self.holds.items() if now >= h.deadline]:
            self._finish(hold_id, False, now)
        if self.replay.packets:
            self._releases.extend(Release(h, False) for h in self.replay.expire(now))
        if self._last_expire is None:
            self._last_expire = now
        if now - self._last_expire >= EXPIRE_EVERY_S:
            self.engine.expire(now)
            self.flush_engine(now)
            self._last_expire = now

    def settle(self, now: float) -> None:
        """After a batch of packets: send what they changed (or let it wait, `batching`), and
        handle what the agent said."""
        if not self.batching(now):
            self.flush_engine(now)
        self._events(now)

    def datagrams(self) -> list[tuple[Address, bytes]]:
        return self.agent.datagrams()

    def handle_events(self, events: Iterable[SyncEvent], now: float) -> None:
        """Act on the agent's events (`_events` reads them from the agent; a simulator that
        collects them itself hands them in here)."""
        for ev in events:
            self._event(ev, now)

    def _events(self, now: float) -> None:
        self.handle_events(self.agent.events(), now)

    def _event(self, ev: SyncEvent, now: float) -> None:
        match ev:
            case SyncCompleted(token=token, acked=acked, last=by):
                hold_id = self._tokens.pop(token, None)
                if hold_id is not None:
                    self._finish(hold_id, acked, now, f"{self.agent.node}>{by}" if by else "")
            case StateReply(key=key, found=found):
                hold_id = self._pulls.pop(key, None)
                if hold_id is not None and hold_id in self.holds:
                    # Other keys of the same pull keep their entry; one reply ends the hold.
                    self._finish(hold_id, found, now)
            case PeerDown(name=name, closed=closed):
                self.down_at[name] = now
                why = "its process is gone (link closed)" if closed else "missed its heartbeats"
                self._note("peer-down", f"{name} {why}", peer=name, closed=closed)
            case PeerUp(name=name):
                self.down_at.pop(name, None)  # its failure is over; never time a later takeover from it
                self._note("peer-up", f"{name} is talking", peer=name)
            case ViewChanged(view=view):
                self._note("view", f"view epoch {view.epoch}", epoch=view.epoch)
                self._follow_view(now)
            case BucketsGained(buckets=buckets, promoted=promoted):
                # The agent promoted the copies before telling us: state first, then traffic
                # (the held packets of those buckets are replayed in _follow_view).
                self.pending_gain = (sorted(buckets), promoted, now)
                self._follow_view(now)
                # Timed already (the buckets were queued for replay), or still waiting on iptables.
                last = self.last_takeover or {}
                pending = self.pending_gain is not None
                replayed = self.pending_replayed if pending else int(last.get("replayed", 0))
                udp = self.pending_replayed_udp if pending else int(last.get("replayed_udp", 0))
                dup = f" ({udp} UDP: possible duplicates)" if udp else ""
                self._note("takeover", f"took buckets {sorted(buckets)}, promoted {promoted} "
                           f"connection(s), replayed {replayed} packet(s){dup}",
                           buckets=sorted(buckets), promoted=promoted, replayed=replayed,
                           replayed_udp=udp)
            case BucketsLost(buckets=buckets):
                self._note("handover", f"gave up buckets {sorted(buckets)}", buckets=sorted(buckets))
                self._follow_view(now)
            case LeaveComplete():
                self._note("leave", "left the cluster gracefully")
                self.left = True
            case RecordApplied():
                pass
            case ResyncProgress(peer=peer, received=received, total=total):
                self._note("sync", f"resync from {peer}: {received}/{total} record(s)", peer=peer)
            case ResyncComplete(records=records):
                self._note("sync", f"resync complete: {records} record(s)", records=records,
                           step="resync-complete")

    # ---- buckets and takeover -------------------------------------------------------------
    def _follow_view(self, now: float) -> None:
        # The agent's own set, not the view's: a restarted node still listed active in the view
        # owns nothing until it has resynced.
        owned = list(self.agent.owned_buckets)
        if owned != self.owned:
            self.owned = owned
            self.engine.owned_buckets = frozenset(owned)  # state was promoted: the engine owns them
        self._follow_shadow(now)
        self._route_shadow()
        self._time_takeover(now)

    def _follow_shadow(self, now: float) -> None:
        """Queue the buckets we back up (lossless on); replay the held packets of the ones we
        just adopted, drop those of the ones we no longer back up."""
        shadow: list[int] = []
        if self.replay.settings.enabled:
            me = self.agent.node
            view = self.agent.view
            mine = set(self.owned)
            groups = view.backups
            shadow = sorted(b for b, o in enumerate(view.bucket_owner, start=1)
                            if o is not None and o != me and b not in mine and me in groups.get(o, ()))
        if shadow == self.shadow:
            return
        gone = set(self.shadow) - set(shadow)
        self.shadow = shadow
        self._shadow_set = frozenset(shadow)
        adopted = gone & set(self.owned)
        # Replayed only what a stopped owner may not have forwarded: from a live owner that
        # handed the buckets over (a handback, a join's rebalance, a leave), every held packet
        # was forwarded already, and a replay would duplicate its UDP datagrams.
        unplanned = self.agent.take_unplanned(adopted) if adopted else set()
        if unplanned:
            self._replay(unplanned, now)
        if gone - unplanned:
            self._releases.extend(Release(h, False) for h in self.replay.forget(gone - unplanned))

    def _replay(self, buckets: set[int], now: float) -> None:
        """The held packets of adopted buckets meet the engine now, in their order of arrival."""
        for h, data, mark in self.replay.take(buckets, now):
            if mark < 0:  # older than the window
                self._releases.append(Release(h, False))
                self.pending_too_old += 1
                continue
            d = self.engine.process(data, now, mark)
            if d.verdict is _HOLD:
                if self.held(d, data, mark, h, now).verdict is not _HOLD:
                    self._releases.append(Release(h, False))
                continue
            ok = d.verdict is Verdict.ACCEPT
            self._releases.append(Release(h, ok, d.payload))
            if not ok:
                self.pending_refused += 1
            else:
                if self.replay.replayed(data):
                    self.pending_replayed_udp += 1
                self.pending_replayed += 1
        self.flush_engine(now)  # what the replayed packets changed or hold on goes out now

    def _route_shadow(self) -> None:
        """The marks the node hands to `shadow_packet`: the buckets we back up, and those that
        iptables still queues to us though we no longer back them up nor own them (dropped
        there). Without these, such a packet would reach the engine, which would pass it as a
        handover's overlap or pull its state, leaving us a copy nobody maintains."""
        applied = frozenset(self.applied_shadow)
        self.replay.buckets = self._shadow_set | (applied - frozenset(self.owned))
        # Buckets we own that iptables still sends to the shadow queue (a takeover, until its
        # iptables-restore): their packets are forwarded, so that queue is read at once meanwhile.
        self.owned_in_shadow = bool(applied & frozenset(self.owned))

    def wanted_buckets(self) -> list[int] | None:
        """The buckets the node should accept in iptables, when that (or the queued backed-up
        set, `shadow`) differs from what it applied."""
        if self.owned != self.applied or self.shadow != self.applied_shadow:
            return list(self.owned)
        return None

    def buckets_applied(self, buckets: list[int], now: float, shadow: list[int] | None = None) -> None:
        """The node's iptables now accept exactly `buckets` (and queue `shadow`)."""
        self.applied = list(buckets)
        self.applied_shadow = list(shadow or [])
        self._route_shadow()
        self._note("buckets", f"accepting buckets {self.applied}", buckets=self.applied,
                   queued=self.applied_shadow)
        self._time_takeover(now)

    def _time_takeover(self, now: float) -> None:
        """Once the gained buckets reach the engine, the takeover is complete: time it. They
        do once iptables accepts them, or at once when they were queued for replay already."""
        gain = self.pending_gain
        if gain is None:
            return
        g = set(gain[0])
        queued = g <= set(self.owned) and g <= set(self.applied_shadow)
        accepted = self.applied == self.owned and g <= set(self.applied)
        if not (queued or accepted):
            return
        self.pending_gain = None
        since = min(self.down_at.values()) if self.down_at else gain[2]
        self.last_takeover = {
            "buckets": gain[0],
            "promoted": gain[1],
            "detect_to_accept_ms": round((now - since) * 1000, 1),
            "apply_ms": round((now - gain[2]) * 1000, 1),
            "replayed": self.pending_replayed,
            # UDP has no sequence numbers: a replayed datagram the dead node had already
            # forwarded reaches the receiver twice; this counts the possible duplicates.
            "replayed_udp": self.pending_replayed_udp,
            # Held, but older than the lossless window when the takeover came: dropped, so any
            # the dead node had not forwarded are lost (a takeover slower than the window).
            "too_old": self.pending_too_old,
            "refused": self.pending_refused,
        }
        self.pending_replayed = 0
        self.pending_replayed_udp = 0
        self.pending_too_old = 0
        self.pending_refused = 0
        self.down_at.clear()

    # ---- control --------------------------------------------------------------------------
    def set_policy(self, policy: str, interval_ms: int, differential: bool) -> None:
        self.agent.set_policy(policy, interval_ms, differential)
        # Periodic sync never holds related packets: their expectation waits for the period.
        self.engine.hold_related = policy != "periodic"

    def notes(self) -> list[Note]:
        out, self._notes = self._notes, []
        return out

    def _note(self, kind: str, text: str, **extra: Any) -> None:
        self._notes.append(Note(kind, text, extra))
