"""The receive path: frame checks (sender, source, incarnation, freshness), acks, in-order
delivery, and a table from message type to payload check and handler (pfsync's shape).

A payload that fails its check is dropped before its handler runs, so it changes nothing,
and it is counted twice in `bad_frames`: by reason (`bad-payload`, `bad-view`, as every
other dropped frame) and by reason and type (`bad-payload:bulk_start`, `bad-view:view`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sync.channel import Outgoing
from sync.config import Address
from sync.context import AgentContext, Peer
from sync.events import PeerUp
from sync.leader import Leader
from sync.membership import Mode, View, view_from_wire
from sync.records import Record, Trigger
from sync.replicate import Replicator
from sync.resync import Resync
from sync.sweep import KeySweep, check_keys_part, check_want
from sync.wire import (
    MAX_WIRE_INT,
    TRIGGER_CODE,
    UNRELIABLE,
    BadFrame,
    BadFrameKind,
    MsgType,
    decode_frame,
    record_from_wire,
    rows_from_blob,
    trigger_from_wire,
)

log = logging.getLogger(__name__)


# Records of these triggers are acked at the next tick, cumulatively; nobody waits on their
# ack at once (a held packet's sync-and-notify uses RELATED, acked in the same turn). Every
# other reliable message is acked in the turn it arrives. Keyed by the wire's trigger code.
_DELAYED_ACK = frozenset(TRIGGER_CODE[t] for t in (Trigger.MODIFIED, Trigger.PERIODIC, Trigger.RESYNC,
                                                  Trigger.FULL_SYNC))
# A bulk resync's records are also acked in the turn once this many messages arrived since our
# last ack: their sender queues more as acks come (sync/resync.py, BULK_INFLIGHT_FRAMES), and
# acks held to the tick (5 ms in a node) paced the stream; one per datagram would double the
# frames the joiner sends and its sender reads.
BULK_ACK_EVERY = 16
_RESYNC_CODE = TRIGGER_CODE[Trigger.RESYNC]


# ---- payload checks: what each sender sends, or BadFrame ---------------------------------


def _bad(what: str) -> BadFrame:
    return BadFrame(BadFrameKind.BAD_PAYLOAD, what)


def check_announce(pl: Any) -> tuple[Mode, bool]:
    """HELLO, HEARTBEAT: [mode, ready]."""
    if not isinstance(pl, list) or len(pl) != 2 or not isinstance(pl[1], bool):
        raise _bad("heartbeat")
    return Mode.from_wire(pl[0]), pl[1]


def check_nothing(pl: Any) -> None:
    """ACK: no payload (the cumulative ack is in the header)."""
    if pl is not None:
        raise _bad("ack with a payload")


def check_empty(pl: Any) -> None:
    """BULK_REQUEST, LEAVE: []."""
    if type(pl) is not list or pl:
        raise _bad("expected an empty array")


def check_count(pl: Any) -> int:
    """BULK_START, BULK_END: [number of records in the bulk resync]."""
    if type(pl) is not list or len(pl) != 1 or type(pl[0]) is not int or not 0 <= pl[0] < MAX_WIRE_INT:
        raise _bad("expected [count]")
    n: int = pl[0]
    return n


def check_records(pl: Any) -> tuple[Trigger, Sequence[Sequence[Any]]]:
    """RECORDS: [trigger code, packed array of records], as checked record arrays (the
    replicator makes Records of them only where it needs them; a bulk resync's are decoded
    as tuples, the quickest to build)."""
    if not isinstance(pl, list) or len(pl) != 2:
        raise _bad("records")
    trig = trigger_from_wire(pl[0])
    return trig, rows_from_blob(pl[1], tuples=trig is Trigger.RESYNC)


def check_key(pl: Any) -> bytes:
    """STATE_REQUEST: [key]."""
    if not isinstance(pl, list) or len(pl) != 1 or not isinstance(pl[0], bytes):
        raise _bad("state request")
    key: bytes = pl[0]
    return key


def check_state_reply(pl: Any) -> tuple[bytes, Record | None]:
    """STATE_REPLY: [key, record or None (not found)]."""
    if not isinstance(pl, list) or len(pl) != 2 or not isinstance(pl[0], bytes):
        raise _bad("state reply")
    return pl[0], None if pl[1] is None else record_from_wire(pl[1])


@dataclass(frozen=True, slots=True)
class Route:
    """How one message type is read: `check` turns the payload into the handler's argument
    (or raises BadFrame); `handle(peer, argument, now, epoch)` acts on it."""

    check: Callable[[Any], Any]
    handle: Callable[[Peer, Any, float, int], None]


class Dispatcher:
    """Decodes and checks received frames and hands each message to its route."""

    def __init__(
        self, ctx: AgentContext, rep: Replicator, resync: Resync, leader: Leader, sweep: KeySweep
    ) -> None:
        self.ctx = ctx
        self.sweep = sweep
        self.rep = rep
        self.resync = resync
        self.leader = leader
        self.routes: dict[MsgType, Route] = {
            MsgType.HELLO: Route(check_announce, self._on_hello),
            MsgType.HEARTBEAT: Route(check_announce, self._on_heartbeat),
            MsgType.ACK: Route(check_nothing, self._on_ack),
            MsgType.RECORDS: Route(check_records, self._on_records),
            MsgType.BULK_REQUEST: Route(check_empty, self._on_bulk_request),
            MsgType.BULK_START: Route(check_count, self._on_bulk_start),
            MsgType.BULK_END: Route(check_count, self._on_bulk_end),
            MsgType.STATE_REQUEST: Route(check_key, self._on_state_request),
            MsgType.STATE_REPLY: Route(check_state_reply, self._on_state_reply),
            MsgType.VIEW: Route(self._check_view, self._on_view),
            MsgType.LEAVE: Route(check_empty, self._on_leave),
            MsgType.KEYS: Route(check_keys_part, self._on_keys),
            MsgType.WANT: Route(check_want, self._on_want),
        }

    def receive(self, data: bytes, src: Address, now: float) -> None:
        """One datagram. Raises BadFrame if the frame itself must be dropped (the caller
        counts it); a bad payload inside a good frame is counted here."""
        ctx = self.ctx
        c = ctx.config
        f = decode_frame(data, c.key, c.lab_id, c.max_frame_bytes)
        p = ctx.peers.get(f.sender)
        if p is None:
            raise BadFrame(BadFrameKind.UNKNOWN_SENDER, f.sender)
        if (src[0], int(src[1])) != p.addr:
            raise BadFrame(BadFrameKind.WRONG_SOURCE, f"{f.sender} from {src}")
        if f.to_inc not in (0, ctx.incarnation):
            raise BadFrame(BadFrameKind.STALE, "addressed to an earlier incarnation of this node")
        if f.incarnation != p.inc:
            if f.incarnation in p.retired:
                raise BadFrame(BadFrameKind.STALE, "from an earlier incarnation of the peer")
            if p.inc:
                self._peer_restarted(p)
            p.inc = f.incarnation
            p.last_useq = 0
        unreliable = f.type in UNRELIABLE
        if unreliable:
            if f.seq <= p.last_useq:
                raise BadFrame(BadFrameKind.STALE, f"unreliable seq {f.seq} <= {p.last_useq}")
            p.last_useq = f.seq
        p.last_heard = now
        if not p.up:
            p.up = True
            if p.down_at is not None:  # the same process, silent past the deadline: a flap
                p.stats.flaps += 1
                p.stats.late_ms = round((now - p.down_at) * 1000.0, 1)
                p.stats.flapped_at = now
                ctx.counters["peer-flapped"] += 1
                log.info("%s: peer %s answered %.0f ms after it was declared down", ctx.node, p.name,
                         p.stats.late_ms)
                p.down_at = None
            log.info("%s: peer %s up", ctx.node, p.name)
            ctx.events.append(PeerUp(p.name))
        ctx.max_epoch_seen = max(ctx.max_epoch_seen, f.epoch)
        p.stats.received[f.type.name.lower()] += 1
        p.stats.bytes_received += len(data)
        for o in p.channel.on_ack(f.ack):
            self._acked(p, o, now)
        if unreliable:
            self._deliver(p, f.type, f.payload, now, f.epoch)
            return
        # The sender's epoch travels with the message: records sent under an older view than
        # ours may no longer be ours to hold.
        d = p.channel.on_data(f.seq, f.type, (f.epoch, f.payload))
        if d.duplicate:
            raise BadFrame(BadFrameKind.STALE, f"replayed seq {f.seq}")
        if d.beyond_window:
            ctx.counters["beyond-window"] += 1
        for _, t, (epoch, payload) in d.messages:
            code = payload[0] if t is MsgType.RECORDS and type(payload) is list and payload else None
            if (type(code) is not int or code not in _DELAYED_ACK
                    or (code == _RESYNC_CODE and p.channel.since_ack >= BULK_ACK_EVERY)):
                p.channel.ack_now = True
            self._deliver(p, t, payload, now, epoch)

    def _deliver(self, p: Peer, t: MsgType, payload: Any, now: float, epoch: int) -> None:
        route = self.routes[t]
        try:
            arg = route.check(payload)
        except BadFrame as exc:
            bad = self.ctx.bad
            bad[exc.kind.value] += 1
            bad[f"{exc.kind.value}:{t.name.lower()}"] += 1
            log.debug("%s: bad %s payload from %s: %s", self.ctx.node, t.name, p.name, exc)
            return
        route.handle(p, arg, now, epoch)

    def _check_view(self, pl: Any) -> View:
        c = self.ctx.config
        v = view_from_wire(pl, self.ctx.names, c.buckets, c.backups)
        if v is None:
            raise BadFrame(BadFrameKind.BAD_VIEW, "view is not the function of its states")
        return v

    def _peer_restarted(self, p: Peer) -> None:
        log.info("%s: peer %s restarted (new incarnation); channel reset", self.ctx.node, p.name)
        self.ctx.counters["peer-restarted"] += 1
        self.end_incarnation(p)

    def end_incarnation(self, p: Peer) -> None:
        """The peer's current incarnation is over (it restarted, or its process is gone):
        its frames are stale from now on, and what its channel carried is forgotten."""
        p.retired.append(p.inc)
        p.down_at = None  # a new process answering is a restart, not a flap
        p.channel.reset()
        p.view_sent_epoch = -1
        self.resync.peer_restarted(p)
        self.rep.peer_restarted(p)
        self.sweep.peer_restarted(p)

    def _acked(self, p: Peer, o: Outgoing, now: float) -> None:
        p.stats.acked += 1
        p.stats.acked_by_type[o.type.name.lower()] += 1
        self.rep.acked(p, o, now)
        self.resync.acked((p.name, o.seq))

    # ---- handlers ---------------------------------------------------------------------

    def _on_hello(self, p: Peer, arg: tuple[Mode, bool], now: float, epoch: int) -> None:
        self._on_heartbeat(p, arg, now, epoch)
        self.leader.answer_hello(p)

    def _on_heartbeat(self, p: Peer, arg: tuple[Mode, bool], now: float, epoch: int) -> None:
        # Mode, readiness and epoch come together from one heartbeat, so the leader never
        # pairs a fresh epoch with a stale mode.
        p.mode, p.ready, p.epoch = arg[0], arg[1], epoch

    def _on_ack(self, p: Peer, arg: None, now: float, epoch: int) -> None:
        pass  # its cumulative ack was taken from the header above

    def _on_records(self, p: Peer, arg: tuple[Trigger, Sequence[Sequence[Any]]], now: float,
                    epoch: int) -> None:
        trig, rows = arg
        n = len(rows)
        self.rep.apply_rows(p, trig, rows, now, epoch)
        if trig is Trigger.RESYNC and self.ctx.modes.mode is Mode.JOINING:
            self.resync.bulk_records(p, n)

    def _on_bulk_request(self, p: Peer, arg: None, now: float, epoch: int) -> None:
        # If it will back us up, it may hold copies from before (a false failover) whose
        # deletes never reached it: a key sweep follows the bulk's last record (Resync.bulk_done).
        self.resync.answer_bulk(p)

    def _on_bulk_start(self, p: Peer, total: int, now: float, epoch: int) -> None:
        self.resync.bulk_started(p, total)

    def _on_bulk_end(self, p: Peer, total: int, now: float, epoch: int) -> None:
        self.resync.bulk_ended(p)

    def _on_state_request(self, p: Peer, key: bytes, now: float, epoch: int) -> None:
        self.rep.answer_state_request(p, key)

    def _on_state_reply(self, p: Peer, arg: tuple[bytes, Record | None], now: float, epoch: int) -> None:
        self.rep.state_reply(p, arg[0], arg[1])

    def _on_view(self, p: Peer, v: View, now: float, epoch: int) -> None:
        self.leader.received(v, now)

    def _on_leave(self, p: Peer, arg: None, now: float, epoch: int) -> None:
        self.resync.peer_left(p)

    def _on_keys(self, p: Peer, arg: tuple[bool, bool, list[bytes]], now: float, epoch: int) -> None:
        self.sweep.received(p, *arg)

    def _on_want(self, p: Peer, keys: list[bytes], now: float, epoch: int) -> None:
        self.sweep.wanted(p, keys)
