"""The gateway engine core: packets in, verdicts out, state changes and sync requests aside; no I/O."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

from engine.backups import Backups
from engine.conntrack import (
    INITIAL_STATE,
    Conn,
    ConnState,
    ConnTable,
    EventKind,
    Expectation,
    StateEvent,
    Timeouts,
    next_version,
    tcp_next,
)
from engine.decision import (
    NAT_NO_PORT,
    NAT_TRUNCATED,
    VERDICT_COUNTERS,
    Decision,
    SyncKind,
    SyncRequest,
    Verdict,
)
from engine.ftp import Anomaly, Expect, Refuse, make_helper
from engine.guards import Guards
from engine.nat import PortPlan, make_binding, rewrite, rewrite_icmp_error
from engine.packet import (
    ACK,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    RST,
    SYN,
    TCP,
    UDP,
    Packet,
    Reason,
    addr_text,
    endpoint_text,
    parse,
)
from engine.reject import reject_reply
from engine.rows import PROTO_NAMES, conn_row
from engine.rows import rows as engine_rows
from engine.rules import Action, EngineError, RuleSet
from engine.store import EngineStore
from sync.records import Scope

log = logging.getLogger(__name__)

__all__ = [
    "NAT_NO_PORT",
    "Decision",
    "Engine",
    "EngineError",
    "EventKind",
    "StateEvent",
    "SyncKind",
    "SyncRequest",
    "Timeouts",
    "Verdict",
]


class _Pending:
    __slots__ = ("conn_key", "deadline", "keys", "kind")

    def __init__(
        self, kind: SyncKind, keys: tuple[bytes, ...], conn_key: bytes | None, deadline: float
    ) -> None:
        self.kind = kind
        self.keys = keys
        self.conn_key = conn_key
        self.deadline = deadline


_ACCEPT_ESTABLISHED = Decision(Verdict.ACCEPT, str(Reason.ESTABLISHED))
_REOPENABLE = frozenset({ConnState.TIME_WAIT, ConnState.CLOSED})
_ACCEPT = Verdict.ACCEPT
BLOCKLISTED = "blocklisted-source"  # a source some node saw scanning (engine.blocklist)
AUTH_REQUIRED = "auth-required:"  # + the rule's name: its source is not logged in (engine.auth)
NOT_OWNED = "no-state-not-owned"  # mid-stream, unknown, in another node's bucket: not pulled


class Engine:
    """One node's packet-screening core (the patent's first software entity).

    `process` decides each packet; state changes pile up as events (`drain_events`) and syncs
    the engine needs before releasing held packets as requests (`drain_sync_requests`)."""

    def __init__(
        self,
        node: str,
        rules: RuleSet,
        timeouts: Timeouts | None = None,
        hold_related: bool = True,
        pull_unknown: bool = True,
        *,
        hold_timeout_s: float = 0.2,
        max_held_syncs: int = 256,
        quiet_states: frozenset[ConnState] = frozenset(),
        nat_ports: PortPlan | None = None,
    ) -> None:
        if not node:
            raise EngineError("Engine needs the node's name (e.g. 'n1')")
        self.node = node
        self.rules = rules
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.hold_related = hold_related
        self.pull_unknown = pull_unknown
        self.hold_timeout_s = hold_timeout_s
        self.max_held_syncs = max_held_syncs
        # The queue's copy range when GSO packets are handed over whole (cut to this size);
        # 0 when every packet arrives complete.
        self.capture_bytes = 0
        # The buckets this node forwards (set by the node from its view); None: all of them.
        self.owned_buckets: frozenset[int] | None = None
        self.table = ConnTable(node, self.timeouts)
        self.table.quiet_states = quiet_states
        self._conns = self.table.conns  # the same dict, bound once for the full path
        self._fast_tcp = self.table.fast[TCP]  # the fast path's index (ConnTable.refresh keeps it)
        self._fast_udp = self.table.fast[UDP]
        self._nat_keys = self.table.nat_keys
        # How NAT source ports are chosen: the lab's HMARK parameters make replies hash into
        # the connection's own bucket (engine.nat.PortPlan).
        self.nat_ports = nat_ports if nat_ports is not None else PortPlan()
        # Peers' connections wait here, outside the packet path's table, until promoted.
        self.backups = Backups()
        self._backups = self.backups.copies
        self._now = 0.0
        self.store = EngineStore(self.table, self.backups, lambda: self._now)
        self._common = self.store.common
        # The intrusion blocklist and authenticated users (common records, engine.guards).
        self.guards = Guards(node, self.store, self.table)
        self._counts: dict[str, int] = {}
        self._n_fast = 0
        self._decisions: dict[tuple[Verdict, str], Decision] = {}
        self._requests: list[SyncRequest] = []
        self._pending: dict[int, _Pending] = {}
        self._pulls: dict[bytes, int] = {}
        self._no_state: dict[bytes, float] = {}
        self._no_state_queue: deque[tuple[float, bytes]] = deque()
        self._next_sync = 1

    # ---- the packet path ----------------------------------------------------------------
    def process(self, data: bytes, now: float, mark: int = 0) -> Decision:
        """Decide one raw IP packet. Never raises: a bad packet is a counted drop."""
        self._now = now
        try:
            # Fast path: an IPv4 packet without options or fragmentation, or an IPv6 one without
            # extension headers, of an own established flow, that changes no state: one slice
            # (addresses and ports) and one dict lookup in the table's fast index. Anything
            # unusual falls through to the full path.
            if len(data) >= 28 and data[0] == 0x45 and not (data[6] & 0x3F or data[7]):
                proto = data[9]
                if proto == 6:
                    total = (data[2] << 8) | data[3]
                    if (
                        total >= 40
                        and (total <= len(data) or len(data) == self.capture_bytes)
                        and data[33] & 0x17 == 0x10  # ACK, no SYN/FIN/RST
                        and data[32] >= 0x50
                        and (data[32] >> 4) * 4 + 20 <= total
                    ):
                        e = self._fast_tcp.get(data[12:24])
                        if e is not None and e.fast:
                            e.last_seen = now
                            self._n_fast += 1
                            return _ACCEPT_ESTABLISHED
                elif proto == 17:
                    total = (data[2] << 8) | data[3]
                    if 28 <= total <= len(data) and 8 <= ((data[24] << 8) | data[25]) <= total - 20:
                        e = self._fast_udp.get(data[12:24])
                        if e is not None and e.fast:
                            e.last_seen = now
                            self._n_fast += 1
                            return _ACCEPT_ESTABLISHED
            elif len(data) >= 48 and data[0] >> 4 == 6:
                # IPv6 whose next header is TCP or UDP itself (no extension header): addresses
                # and ports are bytes 8..44, one slice again.
                end = 40 + ((data[4] << 8) | data[5])
                if end <= len(data):
                    nh = data[6]
                    if nh == 6:
                        if (
                            end >= 60
                            and data[53] & 0x17 == 0x10  # ACK, no SYN/FIN/RST
                            and data[52] >= 0x50
                            and (data[52] >> 4) * 4 + 40 <= end
                        ):
                            e = self._fast_tcp.get(data[8:44])
                            if e is not None and e.fast:
                                e.last_seen = now
                                self._n_fast += 1
                                return _ACCEPT_ESTABLISHED
                    elif nh == 17 and 8 <= ((data[44] << 8) | data[45]) <= end - 40:
                        e = self._fast_udp.get(data[8:44])
                        if e is not None and e.fast:
                            e.last_seen = now
                            self._n_fast += 1
                            return _ACCEPT_ESTABLISHED
            return self._full(data, now, mark)
        except Exception:
            log.exception("engine failed on a packet; dropped it (counted as engine-error)")
            return self._decide(Verdict.DROP, Reason.ENGINE_ERROR)

    def _decide(self, verdict: Verdict, reason: str) -> Decision:
        reason = str(reason)  # a Reason member counts under its plain name
        c = self._counts
        c[reason] = c.get(reason, 0) + 1
        vk = VERDICT_COUNTERS[verdict]
        c[vk] = c.get(vk, 0) + 1
        d = self._decisions.get((verdict, reason))
        if d is None:
            d = self._decisions[(verdict, reason)] = Decision(verdict, str(reason))
        return d

    def _hold(self, sync_id: int, reason: Reason) -> Decision:
        c = self._counts
        for k in (str(reason), "held"):
            c[k] = c.get(k, 0) + 1
        return Decision(Verdict.HOLD, str(reason), sync_id)

    def _count(self, name: str) -> None:
        self._counts[name] = self._counts.get(name, 0) + 1

    def _full(self, data: bytes, now: float, mark: int) -> Decision:
        p = parse(data, self.capture_bytes)
        if not isinstance(p, Packet):
            return self._decide(Verdict.DROP, p)
        if p.inner_key is not None:
            # An ICMP error about a packet of a connection we carry belongs to that connection.
            ie = self._conns.get(p.inner_key)
            if ie is not None and ie.nat is None:
                return self._decide(Verdict.ACCEPT, Reason.RELATED_ICMP)
            if self._nat_keys:
                return self._icmp_error_nat(ie, p, data)
            return self._decide(Verdict.DROP, Reason.ICMP_ERROR_NO_STATE)
        if self._common and self.guards.blocked(p.src, now):
            return self._decide(Verdict.DROP, BLOCKLISTED)
        e = self._conns.get(p.key)
        if e is None and self._nat_keys:
            k = self._nat_keys.get(p.key)  # a reply to a translated tuple
            if k is not None:
                e = self._conns.get(k)
        if e is not None:
            d = self._tracked(e, p, data, now)
            if d is not None:
                if e.meta.nat is not None and d.verdict is _ACCEPT:
                    return self._translated(e, p, data, d)
                return d
        return self._untracked(p, data, now, mark)

    def _icmp_error_nat(self, e: Conn | None, p: Packet, data: bytes) -> Decision:
        """An ICMP error quoting a translated connection's packet (`e`: the entry under the
        quoted packet's original tuple, else looked up under its translated one), rewritten to
        the other side; dropped when no binding explains it."""
        to_translated = e is not None
        if e is None:
            k = self._nat_keys.get(p.inner_key or b"")
            e = self._conns.get(k) if k is not None else None
        if e is None or e.nat is None:
            return self._decide(Verdict.DROP, Reason.ICMP_ERROR_NO_STATE)
        out = rewrite_icmp_error(data, p.l4_off, p.end, e.nat, to_translated)
        if out is None:
            return self._decide(Verdict.DROP, Reason.ICMP_ERROR_NO_STATE)
        d = self._decide(Verdict.ACCEPT, Reason.RELATED_ICMP)
        self._count("nat-translated")
        return Decision(_ACCEPT, d.reason, None, None, out)

    def _translated(self, e: Conn, p: Packet, data: bytes, d: Decision) -> Decision:
        """The accepted packet of a translated connection, rewritten: the original direction
        to the translated tuple, replies to the translated tuple back to the original one."""
        n = e.nat
        assert n is not None
        if (data[2] << 8 | data[3]) > len(data):
            # A GSO packet cut at the copy range: its rewritten copy would cut the packet.
            return self._decide(Verdict.DROP, NAT_TRUNCATED)
        if p.key == e.key and p.low == e.orig_low:
            out = rewrite(data, p.l4_off, p.proto, n.src, n.sport, n.dst, n.dport)
        else:
            out = rewrite(data, p.l4_off, p.proto, n.odst, n.odport, n.osrc, n.osport)
        self._count("nat-translated")
        return Decision(_ACCEPT, d.reason, None, None, out)

    def _tracked(self, e: Conn, p: Packet, data: bytes, now: float) -> Decision | None:
        """A packet of a known connection: track its state; the rules are not consulted.
        None when the packet starts a new connection on a closed entry's 5-tuple."""
        table = self.table
        m = e.meta  # (its nat, orig_low and helper in one read: Conn's properties cost calls)
        n = m.nat
        # Under the translated tuple (a reply), the originator is the translated source.
        from_orig = p.low == (m.orig_low if n is None or p.key == e.key else n.low)
        proto = p.proto
        held: Decision | None = None
        if proto == TCP:
            flags = p.flags
            if from_orig and flags & (SYN | ACK) == SYN and e.state in _REOPENABLE:
                table.delete(e, "reopened", now)
                return None
            if m.helper is not None and p.payload_off < p.end:
                held = self._help(e, p, data, from_orig, now)
                if held is not None and held.verdict is not Verdict.HOLD:
                    return held
            e.last_seen = now
            new = tcp_next(e.state, from_orig, flags)
            if new is not e.state:
                e.state = new
                table.changed(e, "tcp:" + new.value, now)
        elif proto == UDP:
            e.last_seen = now
            if not from_orig and e.state is ConnState.UDP_UNREPLIED:
                e.state = ConnState.UDP_ASSURED
                table.changed(e, "udp:assured", now)
        else:
            # Requests go one way and replies the other: a request from the responder (same id)
            # is not part of this exchange and must pass the rules, which it cannot share a key with.
            if (p.icmp_type == ICMP_ECHO_REPLY[proto]) == from_orig:
                return self._decide(Verdict.DROP, Reason.NO_STATE)
            e.last_seen = now
            if not from_orig and e.state is ConnState.ICMP_REQUEST:
                e.state = ConnState.ICMP_REPLIED
                table.changed(e, "icmp:replied", now)
        if held is not None:
            return held
        hold = e.meta.hold  # (e.meta again: the helper may have set a hold)
        if hold:
            return self._hold(hold, Reason.HELD)
        return self._decide(Verdict.ACCEPT, Reason.ESTABLISHED)

    def _help(self, e: Conn, p: Packet, data: bytes, from_orig: bool, now: float) -> Decision | None:
        """Run the connection's helper on this segment: a drop, a hold, or None (go on)."""
        h = e.helper
        if h is None:
            return None
        snap = h.snapshot()
        expects: list[Expect] = []
        for f in h.feed(from_orig, p.seq, data[p.payload_off : p.end]):
            if isinstance(f, Refuse):
                h.restore(snap)  # its retransmission must be refused too
                log.warning("%s: %s on %s; dropped", self.node, f.reason, self._describe(e))
                return self._decide(Verdict.DROP, f.reason)
            if isinstance(f, Anomaly):
                self._count(str(f.reason))
            else:
                expects.append(f)
        if not expects:
            return None
        if self.hold_related and len(self._pending) >= self.max_held_syncs:
            h.restore(snap)
            return self._decide(Verdict.DROP, Reason.HOLD_CAP)
        keys = []
        for f in expects:
            x = Expectation(
                f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port, e.key, self.node, 0,
                now, self.timeouts.expectation_s, h.name, f.reason,
            )
            self.table.expect(x, now)
            keys.append(x.key)
            self._count(f.reason)
            self._count("expectations")
        if not self.hold_related:
            return None
        sync_id = self._new_sync(SyncKind.PUSH, tuple(keys), Scope.COMMON, now, e.key)
        e.hold = sync_id
        self.table.refresh(e)
        return self._hold(sync_id, Reason.HOLD_RELATED)

    def _untracked(self, p: Packet, data: bytes, now: float, mark: int) -> Decision:
        """A packet no entry knows: an expected related connection, a pull, or the rules."""
        table = self.table
        if self._backups:
            bk: bytes | None = p.key if p.key in self._backups else self._nat_keys.get(p.key)
            if bk is not None and bk in self._backups:
                d = self._backup_copy(bk, p, data, now)
                if d is not None:
                    return d
        proto = p.proto
        is_tcp = proto == TCP
        opens = not is_tcp or p.flags & (SYN | ACK) == SYN
        if opens and table.expects:
            x = table.find_expect(proto, p.src, p.sport, p.dst, p.dport)
            if x is not None:
                table.unexpect(x, "used", now)  # it admits exactly one connection
                e = Conn(
                    p.key, p.low, INITIAL_STATE[proto], self.node,
                    next_version(table.version_floor(p.key), now), mark, now,
                    trigger="related:" + x.trigger,
                )
                e.extra = {"master": x.master.hex()}
                table.add(e, now)
                return self._decide(Verdict.ACCEPT, Reason.RELATED)
        if not opens:
            return self._unknown_tcp(p, now, mark)
        if proto != UDP and proto != TCP and p.icmp_type != ICMP_ECHO_REQUEST[proto]:
            return self._decide(Verdict.DROP, Reason.NO_STATE)  # an echo reply nobody asked for
        rule = self.rules.match(
            p.family,
            proto,
            int.from_bytes(p.src, "big"),
            int.from_bytes(p.dst, "big"),
            p.dport if is_tcp or proto == UDP else None,
        )
        if rule is None or rule.action is not Action.ACCEPT or (
            rule.auth and not self.guards.authed(p.src)
        ):
            self._refused(p, now)
        if rule is None:
            return self._decide(Verdict.DROP, Reason.NO_RULE_MATCH)
        if rule.auth and not self.guards.authed(p.src):
            return self._decide(Verdict.DROP, AUTH_REQUIRED + rule.name)
        if rule.log:
            log.info(
                "%s: rule %s %s %s %s -> %s", self.node, rule.name, rule.action.value,
                PROTO_NAMES.get(proto, proto), endpoint_text(p.src, p.sport),
                endpoint_text(p.dst, p.dport),
            )
        if rule.action is Action.DROP:
            return self._decide(Verdict.DROP, "rule-drop:" + rule.name)
        if rule.action is Action.REJECT:
            d = self._decide(Verdict.REJECT, "rule-reject:" + rule.name)
            return Decision(Verdict.REJECT, d.reason, None, reject_reply(p, data))
        nat = None
        if rule.snat is not None or rule.dnat is not None:
            nat = make_binding(self.nat_ports, p.proto, (p.src, p.sport, p.dst, p.dport),
                               rule.snat, rule.dnat, mark, self._nat_in_use)
            if nat is None:
                log.warning("%s: rule %s: no free NAT port for %s -> %s; dropped", self.node,
                            rule.name, endpoint_text(p.src, p.sport), endpoint_text(p.dst, p.dport))
                return self._decide(Verdict.DROP, NAT_NO_PORT)
        helper = make_helper(rule.helper, p.src, p.dst) if rule.helper else None
        e = Conn(
            p.key, p.low, INITIAL_STATE[proto], self.node,
            next_version(table.version_floor(p.key), now), mark, now, helper,
            trigger="rule:" + rule.name,
        )
        if nat is None:
            table.add(e, now)
            self._count("rule-accept:" + rule.name)
            return self._decide(Verdict.ACCEPT, Reason.NEW)
        e.nat = nat
        table.add(e, now)
        self._count("rule-accept:" + rule.name)
        self._count("nat-bindings")
        return self._translated(e, p, data, self._decide(Verdict.ACCEPT, Reason.NEW))

    def _refused(self, p: Packet, now: float) -> None:
        """A new connection was refused: feed the scan detector; a scan blocklists the source."""
        r = self.guards.refused(p.src, p.dport, now)
        if r is not None:
            self._count("blocklisted")
            log.warning("%s: port scan from %s (%s ports); blocklisted for %.0f s", self.node,
                        addr_text(p.src), r.data[3],
                        self.guards.scan.settings.block_s)

    def _nat_in_use(self, key: bytes) -> bool:
        """Is a translated tuple with this key taken (by any connection this node knows)?"""
        return key in self._nat_keys or key in self._conns or key in self._backups

    def _backup_copy(self, key: bytes, p: Packet, data: bytes, now: float) -> Decision | None:
        """A packet of a connection we hold only as a peer's copy (`key`: its entry's key). In
        a bucket we own, we carry it now (claim 14): the copy moves into our table. Outside our
        buckets it is the brief overlap of a handover, when the old owner still forwards: it
        passes (translated as its owner does), the copy stays."""
        e = self._backups[key]
        if self.owned_buckets is not None and e.bucket not in self.owned_buckets:
            d = self._decide(Verdict.ACCEPT, Reason.ESTABLISHED)
            return self._translated(e, p, data, d) if e.nat is not None else d
        self.backups.adopt_one(self.table, key, now)
        self._count("adopted")
        d2 = self._tracked(e, p, data, now)
        if d2 is not None and e.nat is not None and d2.verdict is _ACCEPT:
            return self._translated(e, p, data, d2)
        return d2

    def _unknown_tcp(self, p: Packet, now: float, mark: int) -> Decision:
        """Mid-stream TCP with no entry: maybe another node carries it; ask once, then drop.
        Never for a bucket we do not own (a packet the queue let through while iptables
        caught up with a view change): the reply would leave us a copy of a connection we do
        not back up, which no delete would ever reach, and its owner forwards the packet."""
        key = p.key
        if not self.pull_unknown or p.flags & RST:
            return self._decide(Verdict.DROP, Reason.NO_STATE)
        if self.owned_buckets is not None and mark not in self.owned_buckets:
            return self._decide(Verdict.DROP, NOT_OWNED)
        until = self._no_state.get(key)
        if until is not None and until > now:
            return self._decide(Verdict.DROP, Reason.NO_STATE)
        sync_id = self._pulls.get(key)
        if sync_id is not None:
            return self._hold(sync_id, Reason.HELD)
        if len(self._pending) >= self.max_held_syncs:
            return self._decide(Verdict.DROP, Reason.HOLD_CAP)
        sync_id = self._new_sync(SyncKind.PULL, (key,), Scope.NODE, now, None)
        self._pulls[key] = sync_id
        return self._hold(sync_id, Reason.HOLD_PULL)

    def _new_sync(
        self, kind: SyncKind, keys: tuple[bytes, ...], scope: Scope, now: float, conn_key: bytes | None
    ) -> int:
        sync_id = self._next_sync
        self._next_sync += 1
        deadline = now + self.hold_timeout_s
        self._pending[sync_id] = _Pending(kind, keys, conn_key, deadline)
        self._requests.append(SyncRequest(sync_id, keys, scope, deadline, kind))
        return sync_id

    # ---- the node's side ----------------------------------------------------------------
    def drain_events(self) -> list[StateEvent]:
        events = self.table.events
        self.table.events = []
        return events

    def drain_sync_requests(self) -> list[SyncRequest]:
        reqs = self._requests
        self._requests = []
        return reqs

    def sync_done(self, sync_id: int, acked: bool, now: float) -> None:
        """The sync `sync_id` finished (acked, or not by its deadline): release what waits on it.
        For a pull, a key still unknown afterwards is dropped ("no-state") for a while."""
        self._now = now
        p = self._pending.pop(sync_id, None)
        if p is None:
            self._count("sync-done-unknown")
            return
        self._count("released-by-ack" if acked else "released-by-timeout")
        if p.kind is SyncKind.PUSH:
            e = self._conns.get(p.conn_key) if p.conn_key is not None else None
            if e is not None and e.hold == sync_id:
                e.hold = 0
                self.table.refresh(e)
            return
        for key in p.keys:
            if self._pulls.get(key) == sync_id:
                del self._pulls[key]
            if key in self._backups and (
                self.owned_buckets is None or self._backups[key].bucket in self.owned_buckets
            ):
                # The reply brought a peer's copy of the session our packets wait on: ours now.
                self.backups.adopt_one(self.table, key, now)
                self._count("adopted")
            if key not in self._conns:
                until = now + self.timeouts.no_state_s
                self._no_state[key] = until
                self._no_state_queue.append((until, key))

    def expire(self, now: float) -> None:
        """Delete what timed out by `now` (DELETE events for own entries and own expectations)."""
        self._now = now
        gone = self.table.expire(now)
        if self._common:
            self.guards.expire(now)
        if gone:
            self._counts["expired"] = self._counts.get("expired", 0) + gone
        q = self._no_state_queue
        while q and q[0][0] <= now:
            until, key = q.popleft()
            if self._no_state.get(key) == until:
                del self._no_state[key]

    @property
    def held_syncs(self) -> int:
        """Syncs that packets are waiting on now."""
        return len(self._pending)

    @property
    def counters(self) -> dict[str, int]:
        c = dict(self._counts)
        if self._n_fast:
            c["established"] = c.get("established", 0) + self._n_fast
            c["accepted"] = c.get("accepted", 0) + self._n_fast
        return c

    # ---- the console's view (engine.rows) ----------------------------------------------
    def rows(self, scope: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Rows for the console: scope "own" (this node's connections), "backup" (copies of other
        nodes' connections) or "common" (expectations and other cluster-wide records); the first
        `limit` of them when given."""
        return engine_rows(self, scope, limit)

    def _describe(self, e: Conn) -> str:
        r = conn_row(e, self._now)
        return f"{r['proto']} {r['src']} -> {r['dst']}"
