"""The connection table (patent Fig. 3) and expectation table: TCP/UDP/ICMP tracking, expiry."""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.ftp import FtpHelper
from engine.nat import NatBinding
from engine.packet import ACK, FIN, ICMP, ICMPV6, RST, SYN, TCP, UDP
from engine.rules import EngineError
from sync.records import Scope, Trigger

log = logging.getLogger(__name__)


class ConnState(Enum):
    """Tracked state of a connection. TCP follows both directions; UDP and ICMP echo have pseudo-states."""

    SYN_SENT = "syn-sent"
    SYN_RECV = "syn-recv"
    ESTABLISHED = "established"
    FIN_WAIT = "fin-wait"  # the originator closed its half
    CLOSE_WAIT = "close-wait"  # the responder closed its half
    LAST_ACK = "last-ack"  # both halves closed, waiting for the last ACK
    TIME_WAIT = "time-wait"
    CLOSED = "closed"  # reset
    UDP_UNREPLIED = "unreplied"
    UDP_ASSURED = "assured"
    ICMP_REQUEST = "echo-request"
    ICMP_REPLIED = "echo-replied"


S = ConnState
# TCP states a connection passes through on its way in and out. A cluster may choose not to
# announce them (Engine(quiet_states=...)): a connection is then synced once established and
# once deleted, instead of at every step of its handshake and teardown.
TRANSIENT_TCP_STATES = frozenset({S.SYN_SENT, S.SYN_RECV, S.FIN_WAIT, S.CLOSE_WAIT, S.LAST_ACK,
                                  S.TIME_WAIT, S.CLOSED})
# States in which an ordinary packet changes nothing, so the engine's fast path may take it.
FAST_STATES = frozenset({S.ESTABLISHED, S.UDP_ASSURED})
# Expiry is filed in slots of 1/8 s (ConnTable._wheel): what is due is still expired at its
# deadline exactly, the slot only says where to look.
WHEEL_SLOTS_PER_S = 8
_FAST_KEY_LENGTHS = (13, 37)  # IPv4 and IPv6 connection keys
INITIAL_STATE = {TCP: S.SYN_SENT, UDP: S.UDP_UNREPLIED, ICMP: S.ICMP_REQUEST, ICMPV6: S.ICMP_REQUEST}


class Flag(Enum):
    """The one TCP flag that drives a transition (RST > SYN/ACK > SYN > FIN > ACK)."""

    RST = "rst"
    SYNACK = "synack"
    SYN = "syn"
    FIN = "fin"
    ACK = "ack"
    NONE = "none"


def flag_class(flags: int) -> Flag:
    if flags & RST:
        return Flag.RST
    if flags & SYN:
        return Flag.SYNACK if flags & ACK else Flag.SYN
    if flags & FIN:
        return Flag.FIN
    if flags & ACK:
        return Flag.ACK
    return Flag.NONE


F = Flag
ORIG, REPLY = True, False
# (state, from the originator?, flag) -> next state. Anything absent leaves the state as it is;
# RST from either side closes in any state (handled before the table).
TCP_TRANSITIONS: dict[tuple[ConnState, bool, Flag], ConnState] = {
    (S.SYN_SENT, REPLY, F.SYNACK): S.SYN_RECV,
    (S.SYN_SENT, REPLY, F.SYN): S.SYN_RECV,  # simultaneous open
    (S.SYN_RECV, ORIG, F.ACK): S.ESTABLISHED,
    (S.SYN_RECV, ORIG, F.FIN): S.FIN_WAIT,
    (S.ESTABLISHED, ORIG, F.FIN): S.FIN_WAIT,
    (S.ESTABLISHED, REPLY, F.FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT, REPLY, F.FIN): S.LAST_ACK,
    (S.CLOSE_WAIT, ORIG, F.FIN): S.LAST_ACK,
    (S.LAST_ACK, ORIG, F.ACK): S.TIME_WAIT,
    (S.LAST_ACK, REPLY, F.ACK): S.TIME_WAIT,
}


def tcp_next(state: ConnState, from_orig: bool, flags: int) -> ConnState:
    """The TCP state after a packet with `flags` from the originator (True) or responder."""
    fc = flag_class(flags)
    if fc is Flag.RST:
        return S.CLOSED
    return TCP_TRANSITIONS.get((state, from_orig, fc), state)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds an entry may stay idle in each state (lab defaults: short, so expiry is visible)."""

    syn_s: float = 10.0
    established_s: float = 300.0
    half_closed_s: float = 60.0
    closing_s: float = 10.0
    udp_s: float = 30.0
    udp_assured_s: float = 120.0
    icmp_s: float = 10.0
    expectation_s: float = 30.0
    # How long a deleted key's version is remembered against late inserts. Short, because new
    # connections on a reused 5-tuple get clock-based versions anyway (next_version), and at
    # high connection rates every second of retention costs memory.
    tombstone_s: float = 30.0
    no_state_s: float = 5.0  # how long a key pulled in vain is dropped without asking again

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise EngineError(
                    f"Timeouts.{name} must be more than 0 seconds, got {getattr(self, name)}"
                )

    def by_state(self) -> dict[ConnState, float]:
        return {
            S.SYN_SENT: self.syn_s,
            S.SYN_RECV: self.syn_s,
            S.ESTABLISHED: self.established_s,
            S.FIN_WAIT: self.half_closed_s,
            S.CLOSE_WAIT: self.half_closed_s,
            S.LAST_ACK: self.closing_s,
            S.TIME_WAIT: self.closing_s,
            S.CLOSED: self.closing_s,
            S.UDP_UNREPLIED: self.udp_s,
            S.UDP_ASSURED: self.udp_assured_s,
            S.ICMP_REQUEST: self.icmp_s,
            S.ICMP_REPLIED: self.icmp_s,
        }


class ConnMeta:
    """What a connection entry seldom reads on its packet path, in one object that entries with
    the same values share (Conn.meta). Its trigger, orig_low and announced come from small sets,
    and helper, nat, extra and hold are unset in almost every entry, so most entries hold one
    of a few shared ConnMetas instead of seven slots of their own (56 B each). Never changed
    in place: a change finds or makes another one (conn_meta)."""

    __slots__ = ("announced", "extra", "full_path", "helper", "hold", "nat", "orig_low", "trigger")

    def __init__(
        self,
        trigger: str,
        orig_low: bool,
        announced: bool,
        helper: FtpHelper | None,
        nat: NatBinding | None,
        extra: dict[str, Any] | None,
        hold: int,
    ) -> None:
        self.trigger = trigger
        self.orig_low = orig_low
        self.announced = announced
        self.helper = helper
        self.nat = nat
        self.extra = extra
        self.hold = hold
        # Its packets take the engine's full path whatever the state: a helper reads them, a
        # translation rewrites them, or they wait on a sync (ConnTable.refresh).
        self.full_path = helper is not None or nat is not None or hold != 0


# The shared ConnMetas (those without helper, nat, extra or hold), by (trigger, orig_low,
# announced). Triggers are a handful of names per rule and state, but some come from peers'
# records: past this many, a new one is an entry's own (correct, just not shared).
_SHARED_META: dict[tuple[str, bool, bool], ConnMeta] = {}
SHARED_META_MAX = 4096


def conn_meta(
    trigger: str,
    orig_low: bool,
    announced: bool,
    helper: FtpHelper | None = None,
    nat: NatBinding | None = None,
    extra: dict[str, Any] | None = None,
    hold: int = 0,
) -> ConnMeta:
    """The ConnMeta with these values: a shared one unless helper, nat, extra or hold is set.
    orig_low and announced must be bools (1 and True would share a key)."""
    if helper is None and nat is None and extra is None and not hold:
        k = (trigger, orig_low, announced)
        m = _SHARED_META.get(k)
        if m is None:
            m = ConnMeta(trigger, orig_low, announced, None, None, None, 0)
            if len(_SHARED_META) < SHARED_META_MAX:
                _SHARED_META[k] = m
        return m
    return ConnMeta(trigger, orig_low, announced, helper, nat, extra, hold)


class Conn:
    """One connection entry. `orig_low` says the originator is the key's lower endpoint.

    Memory (issue 13): what the fast path and the table's bookkeeping read are plain slots;
    trigger, orig_low, announced, helper, nat, extra and hold are properties over one shared
    ConnMeta (meta), read and set like attributes."""

    __slots__ = (
        "bucket",
        "created",
        "fast",
        "key",
        "last_seen",
        "meta",
        "owner",
        "sched",
        "state",
        "version",
    )

    def __init__(
        self,
        key: bytes,
        orig_low: bool,
        state: ConnState,
        owner: str,
        version: int,
        bucket: int,
        now: float,
        helper: FtpHelper | None = None,
        trigger: str = "new",
    ) -> None:
        self.key = key
        self.state = state
        self.owner = owner
        self.version = version
        self.bucket = bucket
        self.created = now
        self.last_seen = now
        # announced: peers have heard of it (False while it stays in a quiet state).
        self.meta = conn_meta(trigger, bool(orig_low), True, helper)
        # The expiry wheel slot it is queued in (ConnTable._file), -1 when not queued.
        self.sched = -1
        self.fast = False  # may take the engine's fast path (kept up to date by ConnTable.refresh)

    @property
    def trigger(self) -> str:
        return self.meta.trigger

    @trigger.setter
    def trigger(self, trigger: str) -> None:
        m = self.meta
        if not m.full_path and m.extra is None:  # set at every change: the shared case inline
            shared = _SHARED_META.get((trigger, m.orig_low, m.announced))
            if shared is not None:
                self.meta = shared
                return
        self.meta = conn_meta(trigger, m.orig_low, m.announced, m.helper, m.nat, m.extra, m.hold)

    @property
    def orig_low(self) -> bool:
        return self.meta.orig_low

    @orig_low.setter
    def orig_low(self, orig_low: bool) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, bool(orig_low), m.announced, m.helper, m.nat, m.extra, m.hold)

    @property
    def announced(self) -> bool:
        return self.meta.announced

    @announced.setter
    def announced(self, announced: bool) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, m.orig_low, bool(announced), m.helper, m.nat, m.extra, m.hold)

    @property
    def helper(self) -> FtpHelper | None:
        return self.meta.helper

    @helper.setter
    def helper(self, helper: FtpHelper | None) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, m.orig_low, m.announced, helper, m.nat, m.extra, m.hold)

    @property
    def nat(self) -> NatBinding | None:
        """Its translation, when a NAT rule admitted it."""
        return self.meta.nat

    @nat.setter
    def nat(self, nat: NatBinding | None) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, m.orig_low, m.announced, m.helper, nat, m.extra, m.hold)

    @property
    def extra(self) -> dict[str, Any] | None:
        """Additional information (NAT details, the master of a related connection...). None
        until something is stored: most entries never need it, and an empty dict costs 64 B."""
        return self.meta.extra

    @extra.setter
    def extra(self, extra: dict[str, Any] | None) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, m.orig_low, m.announced, m.helper, m.nat, extra, m.hold)

    @property
    def hold(self) -> int:
        """The sync id its packets wait on, 0 when none."""
        return self.meta.hold

    @hold.setter
    def hold(self, hold: int) -> None:
        m = self.meta
        self.meta = conn_meta(m.trigger, m.orig_low, m.announced, m.helper, m.nat, m.extra, hold)

    @property
    def proto(self) -> int:
        return self.key[0]

    def __repr__(self) -> str:
        return f"Conn({self.key.hex()}, {self.state.value}, owner={self.owner}, v{self.version})"


class Expectation:
    """A related connection that may open once: src_port 0 means any source port."""

    __slots__ = (
        "created",
        "deadline",
        "dst_ip",
        "dst_port",
        "helper",
        "key",
        "master",
        "owner",
        "proto",
        "sched",
        "src_ip",
        "src_port",
        "timeout_s",
        "trigger",
        "version",
    )

    def __init__(
        self,
        proto: int,
        src_ip: bytes,
        src_port: int,
        dst_ip: bytes,
        dst_port: int,
        master: bytes,
        owner: str,
        version: int,
        now: float,
        timeout_s: float,
        helper: str = "",
        trigger: str = "",
    ) -> None:
        self.proto = proto
        self.src_ip = src_ip
        self.src_port = src_port
        self.dst_ip = dst_ip
        self.dst_port = dst_port
        self.key = expectation_key(proto, src_ip, src_port, dst_ip, dst_port)
        self.master = master
        self.owner = owner
        self.version = version
        self.created = now
        self.timeout_s = timeout_s
        self.deadline = now + timeout_s
        self.helper = helper
        self.trigger = trigger
        self.sched = -1  # its expiry wheel slot, as Conn.sched


def directional_keys(key: bytes) -> tuple[bytes, bytes]:
    """A connection key's two fast-index keys, as the low and as the high endpoint sends: the
    source and destination addresses followed by the TCP/UDP ports, which is what an IPv4
    packet holds in its bytes 12..24 and an IPv6 packet without extension headers in 8..44."""
    n = (len(key) - 5) // 2  # the address length: 4 or 16
    la, lp, ha, hp = key[1:1 + n], key[1 + n:3 + n], key[3 + n:3 + 2 * n], key[3 + 2 * n:5 + 2 * n]
    return la + ha + lp + hp, ha + la + hp + lp


EXPECT_TAG = b"E"  # 69: not a protocol we track, so expectation keys never collide with connection keys


def expectation_key(proto: int, src_ip: bytes, src_port: int, dst_ip: bytes, dst_port: int) -> bytes:
    """Directional: the expected first packet goes from src to dst."""
    return (
        EXPECT_TAG
        + bytes((proto,))
        + src_ip
        + src_port.to_bytes(2, "big")
        + dst_ip
        + dst_port.to_bytes(2, "big")
    )


class EventKind(Enum):
    NEW = "new"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class StateEvent:
    """A change the sync layer must hear about; the store already holds the new version/tombstone."""

    kind: EventKind
    key: bytes
    scope: Scope
    trigger: Trigger = Trigger.MODIFIED


@dataclass(slots=True)
class Tombstone:
    version: int
    owner: str
    scope: Scope
    bucket: int


def next_version(old: int, now: float) -> int:
    """A version above `old` that is also above any this key had before (clock-based floor), so a
    reused 5-tuple beats a tombstone a peer still keeps even after ours was forgotten."""
    return max(old + 1, int(now * 1000), 1)


class _Due(list[Conn | Expectation]):
    """What is due in one expiry wheel slot. `slot` is the one int object every entry filed
    here holds as its `sched`: a queued entry pays for no deadline of its own (a float was
    24 B per entry)."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot


class ConnTable:
    """Own connections, backup copies of other nodes' connections, expectations and tombstones.

    Only this node's own entries expire here; a backup copy lives until its owner deletes it or
    it is promoted (then it gets a fresh idle period)."""

    def __init__(self, node: str, timeouts: Timeouts) -> None:
        self.node = node
        self.timeouts = timeouts
        self.timeout_by_state = timeouts.by_state()
        self.conns: dict[bytes, Conn] = {}
        # The fast path's index: per protocol (TCP, UDP), a packet's addresses and ports (one
        # slice: an IPv4 packet's bytes 12..24, 12 bytes; an IPv6 one's 8..44, 36 bytes) -> its
        # own fast entry, both directions filed. Kept by refresh() and unfast(); holds only
        # entries with e.fast.
        self.fast: dict[int, dict[bytes, Conn]] = {TCP: {}, UDP: {}}
        # The translated tuple's key -> the entry's key, for every translated connection this
        # node knows (own and backup copies): a reply arrives under the translated tuple.
        self.nat_keys: dict[bytes, bytes] = {}
        self.expects: dict[bytes, Expectation] = {}
        self.tombs: dict[bytes, Tombstone] = {}
        self._tomb_queue: deque[tuple[float, bytes, int]] = deque()
        # Expiry: a wheel of 1/WHEEL_SLOTS_PER_S s slots (slot -> what is due in it) and a heap
        # of the slots in use. A (deadline, seq, entry) heap item cost ~100 B per entry, a
        # fifth of an entry's memory; a slot costs one list item, and the entry's `sched` is
        # the slot's own int (_Due.slot), so being queued costs an entry no number of its own.
        self._wheel: dict[int, _Due] = {}
        self._slots: list[int] = []
        self.events: list[StateEvent] = []
        # States in which an own connection's changes are not announced to peers (see
        # TRANSIENT_TCP_STATES); empty: every change is an event.
        self.quiet_states: frozenset[ConnState] = frozenset()

    # ---- bookkeeping --------------------------------------------------------------------
    def refresh(self, e: Conn) -> None:
        """Recompute whether the fast path may handle this entry, and file it (or not) in the
        fast index."""
        was = e.fast
        e.fast = e.owner == self.node and not e.meta.full_path and e.state in FAST_STATES
        if e.fast:
            idx = self.fast.get(e.key[0]) if len(e.key) in _FAST_KEY_LENGTHS else None
            if idx is not None:
                fwd, rev = directional_keys(e.key)
                idx[fwd] = idx[rev] = e
        elif was:
            self._unindex_fast(e)

    def unfast(self, e: Conn) -> None:
        """An entry leaves the table: out of the fast index too."""
        if e.fast:
            e.fast = False
            self._unindex_fast(e)

    def _unindex_fast(self, e: Conn) -> None:
        idx = self.fast.get(e.key[0]) if len(e.key) in _FAST_KEY_LENGTHS else None
        if idx is not None:
            for k in directional_keys(e.key):
                if idx.get(k) is e:
                    del idx[k]

    def deadline(self, e: Conn) -> float:
        return e.last_seen + self.timeout_by_state[e.state]

    def schedule(self, e: Conn) -> None:
        """Queue an own entry for expiry, unless it is already queued in its deadline's slot or
        an earlier one (expire() looks at its deadline again when that slot comes)."""
        slot = int(self.deadline(e) * WHEEL_SLOTS_PER_S)
        if e.sched < 0 or slot < e.sched:
            self._file(slot, e)

    def _schedule_expect(self, x: Expectation) -> None:
        self._file(int(x.deadline * WHEEL_SLOTS_PER_S), x)

    def _file(self, slot: int, obj: Conn | Expectation) -> None:
        due = self._wheel.get(slot)
        if due is None:
            self._wheel[slot] = due = _Due(slot)
            heapq.heappush(self._slots, slot)
        due.append(obj)
        obj.sched = due.slot

    def version_floor(self, key: bytes) -> int:
        t = self.tombs.get(key)
        return t.version if t is not None else 0

    def bury(self, key: bytes, version: int, owner: str, scope: Scope, bucket: int, now: float) -> None:
        self.tombs[key] = Tombstone(version, owner, scope, bucket)
        self._tomb_queue.append((now + self.timeouts.tombstone_s, key, version))

    def emit(self, kind: EventKind, key: bytes, scope: Scope, trigger: Trigger = Trigger.MODIFIED) -> None:
        self.events.append(StateEvent(kind, key, scope, trigger))

    # ---- NAT index ----------------------------------------------------------------------
    def index_nat(self, e: Conn) -> None:
        """File the entry under its translated tuple too (own entries and copies alike)."""
        if e.nat is not None:
            self.nat_keys[e.nat.key] = e.key

    def unindex_nat(self, e: Conn) -> None:
        if e.nat is not None and self.nat_keys.get(e.nat.key) == e.key:
            del self.nat_keys[e.nat.key]

    # ---- connections --------------------------------------------------------------------
    def add(self, e: Conn, now: float) -> None:
        """A new own connection: NEW event."""
        self.tombs.pop(e.key, None)
        self.conns[e.key] = e
        if e.nat is not None:
            self.nat_keys[e.nat.key] = e.key
        self.refresh(e)
        self.schedule(e)
        if e.state in self.quiet_states:
            e.announced = False
            return
        self.emit(EventKind.NEW, e.key, Scope.NODE)

    def changed(self, e: Conn, trigger: str, now: float) -> None:
        """An own connection changed in a way peers must learn: new version, UPDATE event."""
        e.version = next_version(e.version, now)
        e.trigger = trigger
        self.refresh(e)
        if e.owner == self.node:
            self.schedule(e)
        if e.state in self.quiet_states and trigger != "adopted":
            return
        if not e.meta.announced:
            e.announced = True
            self.emit(EventKind.NEW, e.key, Scope.NODE)
            return
        self.emit(EventKind.UPDATE, e.key, Scope.NODE)

    def delete(self, e: Conn, trigger: str, now: float, *, event: bool = True) -> None:
        """Remove an entry, leaving a tombstone with a higher version (DELETE event if `event`)."""
        if self.conns.get(e.key) is not e:
            return
        del self.conns[e.key]
        self.unindex_nat(e)
        self.unfast(e)
        e.trigger = trigger
        e.version = next_version(e.version, now) if event else e.version
        self.bury(e.key, e.version, e.owner, Scope.NODE, e.bucket, now)
        if event and e.meta.announced:  # nobody heard of a connection that never left a quiet state
            self.emit(EventKind.DELETE, e.key, Scope.NODE)

    # ---- expectations -------------------------------------------------------------------
    def expect(self, x: Expectation, now: float) -> None:
        """Store an own expectation (replacing an identical one): NEW or UPDATE event, COMMON scope."""
        old = self.expects.get(x.key)
        floor = old.version if old is not None else self.version_floor(x.key)
        x.version = next_version(floor, now)
        self.tombs.pop(x.key, None)
        self.expects[x.key] = x
        self._schedule_expect(x)
        kind = EventKind.NEW if old is None else EventKind.UPDATE
        self.emit(kind, x.key, Scope.COMMON, Trigger.RELATED)

    def put_expect(self, x: Expectation) -> None:
        """A remote expectation (already versioned): no event."""
        self.tombs.pop(x.key, None)
        self.expects[x.key] = x
        self._schedule_expect(x)

    def find_expect(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> Expectation | None:
        if not self.expects:
            return None
        x = self.expects.get(expectation_key(proto, src, sport, dst, dport))
        if x is None:
            x = self.expects.get(expectation_key(proto, src, 0, dst, dport))
        return x

    def unexpect(self, x: Expectation, trigger: str, now: float, *, event: bool = True) -> None:
        """Remove an expectation; with `event`, a DELETE every node hears (it admitted its one connection
        or it timed out at its creator)."""
        if self.expects.get(x.key) is not x:
            return
        del self.expects[x.key]
        x.trigger = trigger
        if event:
            x.version = next_version(x.version, now)
        self.bury(x.key, x.version, x.owner, Scope.COMMON, -1, now)
        if event:
            self.emit(EventKind.DELETE, x.key, Scope.COMMON, Trigger.RELATED)

    # ---- time ---------------------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Delete what timed out by `now`; returns how many entries and expectations went."""
        gone = 0
        slots = self._slots
        wheel = self._wheel
        cur = int(now * WHEEL_SLOTS_PER_S)
        later: list[Conn | Expectation] = []  # in the current slot, not due yet
        while slots and slots[0] <= cur:
            slot = heapq.heappop(slots)
            for obj in wheel.pop(slot):
                if obj.sched != slot:
                    continue  # superseded: filed again (earlier) or no longer queued
                obj.sched = -1
                gone += self._expire_one(obj, now, later)
        for obj in later:
            if obj.sched < 0:
                self._file(cur, obj)
        q = self._tomb_queue
        while q and q[0][0] <= now:
            _, key, version = q.popleft()
            t = self.tombs.get(key)
            if t is not None and t.version == version:
                del self.tombs[key]
        return gone

    def _expire_one(self, obj: Conn | Expectation, now: float, later: list[Conn | Expectation]) -> int:
        """One entry whose slot came: gone (1), or queued again or not ours (0). One due later
        in the current slot goes to `later`: expire() files it there once that slot is done."""
        if isinstance(obj, Conn):
            if self.conns.get(obj.key) is not obj or obj.owner != self.node:
                return 0
            d = self.deadline(obj)  # its last_seen may have moved since it was queued
            if d <= now:
                self.delete(obj, "expired", now)
                return 1
        else:
            if self.expects.get(obj.key) is not obj:
                return 0
            d = obj.deadline
            if d <= now:
                # Every node drops a stale expectation; only its creator tells the others.
                self.unexpect(obj, "expired", now, event=obj.owner == self.node)
                return 1
        slot = int(d * WHEEL_SLOTS_PER_S)
        if slot <= int(now * WHEEL_SLOTS_PER_S):
            later.append(obj)
        else:
            self._file(slot, obj)
        return 0
