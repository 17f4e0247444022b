"""What the parts of one sync agent share: the config, the peer table, the current view, this
node's mode, the clock, the events to hand out, and the outbox that frames what they send."""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from sync.channel import Channel
from sync.config import Address, SyncConfig
from sync.events import SyncEvent
from sync.membership import MemberState, Mode, ModeEvent, ModeMachine, View, compute_view
from sync.policy import SyncPolicy, make_policy
from sync.records import StateStore
from sync.wire import CODE_TRIGGER, BadFrame, Frame, MsgType, encode_frame, records_from_blob

log = logging.getLogger(__name__)


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
    # Flapping: times this peer was declared down for silence and then heard from again, the
    # same process (a false suspicion), how long after the verdict its answer came, and when.
    flaps: int = 0
    late_ms: float | None = None
    flapped_at: float | None = None


@dataclass(slots=True)
class Peer:
    """What this node knows of one other node. `mode`, `ready` and `epoch` are what the peer
    last announced (its own word, not ours to check against a table)."""

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
    # Joining: heard active since the join began, so it holds state we may need; we are not
    # ready until it answered our bulk request, is gone for certain, or stayed silent past
    # our patience (sync/resync.py Resync.joining).
    owes_bulk: bool = False
    stats: PeerStats = field(default_factory=PeerStats)
    down_at: float | None = None  # declared down for silence at (None: up, closed or restarted)


class AgentContext:
    """The state one agent's parts (leader, replicator, resync, takeover, dispatcher) read and
    change together. Each part keeps its own state to itself; what is here is what several
    of them need. The agent facade sets `now` at every entry point."""

    def __init__(self, config: SyncConfig, store: StateStore, now: float, incarnation: int | None) -> None:
        self.config = config
        self.store = store
        self.node = config.node
        self.names = config.names
        self.index = self.names.index(self.node)
        # Random per process start so peers notice a restart; never 0 (0 means "unknown").
        self.incarnation = incarnation or random.SystemRandom().randrange(1, 2**62)
        self.hb_s = config.heartbeat_s
        self.dead_s = config.dead_s
        self.budget = config.record_budget_bytes
        self.peers: dict[str, Peer] = {}
        for i, (name, addr) in enumerate(config.nodes):
            if name != self.node:
                ch = Channel(config.window, config.rto_initial_ms / 1000.0, config.rto_max_ms / 1000.0)
                self.peers[name] = Peer(name, (addr[0], int(addr[1])), i, ch)
        self.policy: SyncPolicy = make_policy(config.policy, config.interval_ms, config.differential, now)
        states = {n: MemberState.OFFLINE for n in self.names}
        states[self.node] = MemberState.JOINING
        self.view: View = compute_view(self.names, states, config.buckets, config.backups, 0)
        self.max_epoch_seen = 0
        self.modes = ModeMachine(Mode.JOINING)
        self.owned: set[int] = set()  # buckets this node forwards (its BucketsGained minus Lost)
        self.ready = False  # joining: bulk resync complete
        self.fenced = False  # a data link lost: hand the buckets on, do not become ready
        # Buckets gained from an owner that stopped without handing them over (BucketsGained's
        # `unplanned`), until the node has replayed what it held of them (Agent.take_unplanned).
        self.unplanned_gain: set[int] = set()
        # Majority rule (sync/agent.py): the nodes of the cluster as this node knows it (seen
        # live in a view, not since gone for certain: closed, or offline), and whether this
        # node is on the minority side of a cut (`attention`: owns nothing, stays joining).
        self.members: set[str] = {self.node}
        self.attention = False
        self.now = now
        self.started = False
        self.events: list[SyncEvent] = []
        self.counters: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()  # dropped input by kind (stats' bad_frames)
        self.out: list[tuple[Address, bytes]] = []
        self.frozen = False
        self.credit = 0
        self.stepped: dict[str, Any] | None = None  # the last frame a step released (released())
        self._useq = 0

    def fire(self, event: ModeEvent) -> Mode:
        """Change this node's mode through the transition table (raises if it refuses)."""
        return self.modes.fire(event)

    def held_back(self) -> bool:
        """Fenced or on the minority side: this node must not become ready to own buckets."""
        return self.fenced or self.attention

    def owning(self) -> bool:
        """Whether this node forwards buckets in its mode (a leaving node does until it goes)."""
        if self.attention:  # the minority side of a cut forwards nothing
            return False
        return self.modes.mode in (Mode.ACTIVE, Mode.LEAVING, Mode.LEFT)

    def live_peers(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.up]

    def hb_payload(self) -> list[Any]:
        """What every heartbeat announces: our mode and whether our resync is complete."""
        return [self.modes.mode.value, self.ready]

    # ---- the outbox: frames for the transport ---------------------------------------------

    def queue(self, p: Peer, mtype: MsgType, payload: Any) -> int:
        """Queue a reliable message under the current view's epoch; returns its seq."""
        return p.channel.queue(mtype, payload, self.view.epoch)

    def send_unreliable(self, p: Peer, mtype: MsgType, payload: Any) -> None:
        self._useq += 1
        self._frame(p, mtype, self._useq, payload)

    def send_acks(self, *, delayed_too: bool = True) -> None:
        """A cumulative ack to every peer owed one. After input (`delayed_too` False) only the
        urgent ones: the acks of plain state changes wait for the timer tick (a few ms, far
        below the 20 ms retransmission timer), so one ack covers a tick's frames."""
        for p in self.peers.values():
            ch = p.channel
            if ch.ack_pending and (delayed_too or ch.ack_now):
                self.send_unreliable(p, MsgType.ACK, None)

    def pump(self, now: float) -> None:
        """Transmit what the channels allow: new frames (unless frozen) and retransmissions."""
        for p in self.peers.values():
            if not p.up or not p.channel.unacked:
                continue
            max_new = self.credit if self.frozen else None
            for o, retransmit in p.channel.due(now, max_new):
                if retransmit:
                    p.stats.retransmitted += 1
                    p.stats.retransmitted_by_type[o.type.name.lower()] += 1
                elif self.frozen:
                    self.credit -= 1
                    self.stepped = released(p.name, o.type, o.seq, o.payload)
                self._frame(p, o.type, o.seq, o.payload, o.epoch)

    def _frame(self, p: Peer, mtype: MsgType, seq: int, payload: Any, epoch: int | None = None) -> None:
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
        p.channel.ack_pending = p.channel.ack_now = False
        p.channel.since_ack = 0
        data = encode_frame(f, self.config.key)
        name = mtype.name.lower()
        p.stats.sent[name] += 1
        p.stats.bytes_sent += len(data)
        p.stats.bytes_by_type[name] += len(data)
        self.out.append((p.addr, data))


def released(peer: str, mtype: MsgType, seq: int, payload: Any) -> dict[str, Any]:
    """What a step-through released, for people: the message type, its peer and, for records,
    how many, the first one's key, owner and version, and what triggered them."""
    out: dict[str, Any] = {"peer": peer, "type": mtype.name.lower(), "seq": seq,
                           "message": f"{peer}#{seq}"}  # as the release note names it
    if mtype is MsgType.RECORDS and isinstance(payload, list) and len(payload) == 2:
        try:
            recs = records_from_blob(payload[1])
        except BadFrame:
            return out
        trigger = CODE_TRIGGER.get(payload[0])
        out["trigger"] = trigger.value if trigger is not None else ""
        out["records"] = len(recs)
        if recs:
            r = recs[0]
            out.update(key=r.key.hex(), owner=r.owner, version=r.version, deleted=r.deleted)
    return out
