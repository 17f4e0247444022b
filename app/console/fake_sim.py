"""The fake lab's simulation: nodes, buckets, connections, flows and sync messages over a clock.

app/console/fake.py answers the control API on top of it; this module holds the cluster itself:
who owns which bucket, what each node holds, what sync messages are sent, queued and delivered,
and what happens when a node fails, leaves or comes back.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from app.console.fake_parts import (
    CLIENTS,
    SERVERS,
    TCP_STATES,
    FakeClock,
    FakeConn,
    FakeFlow,
    FakeNode,
    FlowKind,
    NodeState,
    Policy,
    QueuedMessage,
    Refused,
)
from netns import api, headline
from sync.membership import MemberState, View, compute_view, home_node

STEP_S = 0.25  # the fake lab's simulation tick: churn, flow bytes, periodic sync
MAX_CATCH_UP_S = 30.0  # a clock jump longer than this is not simulated tick by tick
EVENTS_KEPT = 400


class Simulation:
    """The simulated cluster, advanced to the clock's time before every request."""

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        *,
        connections: int = 300,
        nodes: int = 3,
        buckets: int = 12,
        seed: int = 7,
        detect_ms: float = 120.0,
        join_ms: float = 400.0,
        churn: bool = True,
    ) -> None:
        self.clock: Callable[[], float] = clock or FakeClock()
        self._rng = random.Random(seed)
        self.name = "default"
        self.policy = Policy.HYBRID
        self.interval_ms = 1000
        self.buckets = buckets
        self.detect_s = detect_ms / 1000
        self.join_s = join_ms / 1000
        self.churn = churn
        self.frozen = False
        self.queue: deque[QueuedMessage] = deque()
        self.faults: list[dict[str, Any]] = []  # as the daemon's status lists them
        self.requests: list[dict[str, Any]] = []  # every request seen, for tests
        self.nodes = {f"n{i + 1}": FakeNode(f"n{i + 1}", i) for i in range(nodes)}
        self._order = list(self.nodes)
        # Who owns which bucket and who backs up whom: the simulated cluster's own rule
        # (sync.membership.compute_view), recomputed whenever a node is detected gone or back.
        self.members = dict.fromkeys(self.nodes, MemberState.ACTIVE)
        self.view: View = compute_view(self._order, self.members, buckets, 1, 0)
        self.bucket_owner: dict[int, str | None] = {}
        self.backups: dict[str, list[str]] = {}
        self.conns: dict[str, FakeConn] = {}
        self.flows: dict[str, FakeFlow] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._event_id = 0
        self._conn_id = 0
        self._port = 40000
        self._flow_seq: dict[FlowKind, int] = dict.fromkeys(FlowKind, 0)
        self._scheduled: list[tuple[float, int, Callable[[], None]]] = []
        self._sched_seq = 0
        self._dirty: set[str] = set()  # periodic policy: keys changed since the last period
        self._next_period_s = 0.0
        now = self.clock()
        self._sim_s = now
        self._regroup()
        for _ in range(connections):
            self._new_conn(now, sync=False)
        for conn in self.conns.values():
            conn.copies = dict.fromkeys(self.backups[conn.owner], conn.version)
        self._add_common("ruleset", "rule-set v3", now)
        self._add_common("blocklist", "blocked 203.0.113.66", now)
        self.workloads: dict[str, list[str]] = {}  # workload name -> its flows
        self._workload_seq = 0
        for req in (api.TrafficStart(kind="tcp", flows=2), api.TrafficStart(kind="tcp", client="c2", flows=1),
                    api.TrafficStart(kind="udp", flows=1)):
            self._start_workload(req, now)
        self._event(now, "n1", "lab", "lab up: 3 nodes, hybrid sync every 1000 ms")

    def _start_workload(self, req: api.TrafficStart, now: float) -> dict[str, Any]:
        if req.client not in CLIENTS:
            raise Refused(f"client must be an inside host ({', '.join(CLIENTS)}), "
                           f"not {req.client!r}")
        kind, options = FlowKind(req.kind), req.options()
        self._workload_seq += 1
        name = f"{req.kind}-{req.client}-{self._workload_seq}"
        if kind is FlowKind.BURST:
            flows = [self._burst(int(options["count"]), now, name, req.client)]
        elif kind is FlowKind.FTP:
            flows = [self._start_flow(kind, now, name, req.client, mode=str(options["mode"]))]
        else:
            flows = [self._start_flow(kind, now, name, req.client)
                     for _ in range(int(options["flows"]))]
        self.workloads[name] = flows
        return {"ok": True, "name": name, "health_file": f"/run/fake/flows/{name}.json",
                "options": options}
    # ---- simulation ------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now - self._sim_s > MAX_CATCH_UP_S:
            self._sim_s = now - MAX_CATCH_UP_S
        while self._sim_s + STEP_S <= now:
            self._sim_s += STEP_S
            self._run_due(self._sim_s)
            self._tick(self._sim_s)
        self._run_due(now)

    def _schedule(self, due_s: float, action: Callable[[], None]) -> None:
        self._sched_seq += 1
        self._scheduled.append((due_s, self._sched_seq, action))
        self._scheduled.sort(key=lambda item: (item[0], item[1]))

    def _run_due(self, upto_s: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= upto_s:
            due_s, _, action = self._scheduled.pop(0)
            saved = self._sim_s
            self._sim_s = due_s  # actions see the time they were due, not the poll time
            action()
            self._sim_s = max(saved, due_s)

    def _tick(self, now: float) -> None:
        for flow in self.flows.values():
            self._update_flow(flow, now)
        for key in [k for k, c in self.conns.items() if c.expires_s and c.expires_s <= now]:
            self._drop_conn(key, now)
        if self.churn:
            live = [c for c in self.conns.values() if not c.common and self._alive(c.owner)]
            for conn in self._rng.sample(live, min(len(live), 2)):
                self._modify(conn, now)
        if self.policy is not Policy.ON_DEMAND and now >= self._next_period_s:
            self._next_period_s = now + self.interval_ms / 1000
            self._periodic(now)

    def _modify(self, conn: FakeConn, now: float) -> None:
        if conn.proto == "tcp":
            i = TCP_STATES.index(conn.state) if conn.state in TCP_STATES else 2
            conn.state = TCP_STATES[min(i + 1, 2) if i < 2 else 2]
        conn.version += 1
        conn.trigger = "state-modified"
        if self.policy is Policy.PERIODIC:
            self._dirty.add(conn.key)
        else:
            self._send(conn, now, "state-modified")

    def _periodic(self, now: float) -> None:
        keys = sorted(self._dirty)
        self._dirty.clear()
        for key in keys:
            conn = self.conns.get(key)
            if conn is not None and self._alive(conn.owner):
                conn.trigger = "periodic"
                self._send(conn, now, "periodic", quiet=True)
        if keys:
            self._event(now, "n1", "periodic", f"periodic sync: {len(keys)} changed records sent")

    def _send(self, conn: FakeConn, now: float, trigger: str, *, quiet: bool = False,
              holds_packet: bool = False) -> None:
        peers = self._peers_of(conn)
        if not peers:
            return
        self.nodes[conn.owner].sent.append(now)
        msg = QueuedMessage(conn.key, conn.version, peers, trigger, now, conn.owner, holds_packet)
        if self.frozen:
            self.queue.append(msg)
            if holds_packet:
                self.nodes[conn.owner].held += 1
            self._event(now, conn.owner, "queued",
                        f"{trigger}: {conn.key} v{conn.version} waits (channel frozen)",
                        key=conn.key, peers=peers, trigger=trigger)
            return
        self._deliver(msg, now, how="sent", quiet=quiet)

    def _deliver(self, msg: QueuedMessage, now: float, *, how: str, quiet: bool = False
                 ) -> dict[str, Any]:
        conn = self.conns.get(msg.key)
        acked = [p for p in msg.to if self._alive(p)]
        if conn is not None:
            for peer in acked:
                conn.copies[peer] = max(conn.copies.get(peer, 0), msg.version)
        if msg.holds_packet and how != "sent":  # "sent" never queued, so never counted held
            sender = self.nodes[msg.sender]
            sender.held = max(0, sender.held - 1)
        latency_ms = round((now - msg.queued_s) * 1000 + 0.2 + self._rng.random() * 0.4, 2)
        verb = {"sent": "sync", "stepped": "step", "released": "release"}[how]
        text = f"{msg.trigger}: {msg.key} v{msg.version} -> {', '.join(msg.to)}"
        if msg.holds_packet:
            text += " (held packet released on ack)"
        event = {"kind": verb, "node": msg.sender, "key": msg.key, "peers": acked,
                 "latency_ms": latency_ms, "trigger": msg.trigger, "text": text}
        if not quiet:
            self._event(now, msg.sender, verb, text, key=msg.key, peers=acked,
                        latency_ms=latency_ms, trigger=msg.trigger)
        return event

    def _take_over(self, failed: str, *, graceful: bool) -> None:
        now = self._sim_s
        node = self.nodes[failed]
        if node.state not in (NodeState.FAILED, NodeState.OFFLINE):
            return  # revived before anyone noticed
        moved = [c for c in self.conns.values() if c.owner == failed and not c.common]
        buckets = sorted(b for b, o in self.bucket_owner.items() if o == failed)
        took_ms = (now - (now if node.failed_at_s is None else node.failed_at_s)) * 1000
        self.members[failed] = MemberState.OFFLINE if graceful else MemberState.FAILED
        self._regroup()
        new_owner = {c.key: self.bucket_owner.get(c.bucket) for c in moved}
        heirs = {self.bucket_owner.get(b) for b in buckets} | set(new_owner.values())
        successors = sorted(o for o in heirs if o is not None)
        if not successors:
            for conn in moved:
                self._drop_conn(conn.key, now)
            self._event(now, failed, "lost", f"no live backup for {failed}: {len(moved)} "
                        "connections lost")
            return
        if graceful:
            self._event(now, failed, "leave", "left the cluster gracefully")
        else:
            for s in successors:  # as the engines say it: the observer, the peer, how
                self._event(now, s, "peer-down", f"{failed} its process is gone (link closed)",
                            peers=[failed], peer=failed, closed=True)
        trigger = "graceful-leave" if graceful else "node-failed"
        for conn in moved:
            conn.owner = new_owner[conn.key] or successors[0]
            flow = self.flows.get(conn.flow or "")
            if flow is not None:  # its packets waited from the failure to the takeover
                flow.longest_pause_s = max(flow.longest_pause_s, took_ms / 1000)
            conn.version += 1
            conn.trigger = trigger
            conn.copies = {}
        # The copies the failed node got stay listed, as the engines' provenance (`sent_to`)
        # keeps naming a peer that has since died: the console, not the lab, must leave it out.
        for conn in moved:
            self._send(conn, now, trigger, quiet=True)
        # claim 11: backup duties are handed on, so new backups get their copies at once
        for conn in self.conns.values():
            if not conn.common and conn.owner not in successors and any(
                    p not in conn.copies for p in self._peers_of(conn)):
                self._send(conn, now, trigger, quiet=True)
        for s in successors:  # the daemon's takeover event, one per adopter
            mine = [b for b in buckets if self.bucket_owner.get(b) == s]
            fields = {"node": s, "t": round(now, 3), "buckets": mine,
                      "detect_to_accept_ms": round(took_ms, 1),
                      "promoted": sum(1 for c in moved if c.owner == s)}
            self.nodes[s].last_takeover = {k: v for k, v in fields.items() if k != "node"}
            self._event(now, s, "takeover", headline.describe(self.events, fields), peers=[failed],
                        latency_ms=round(took_ms, 1), trigger=trigger, buckets=mine,
                        promoted=sum(1 for c in moved if c.owner == s),
                        detect_to_accept_ms=round(took_ms, 1), takeover_ms=round(took_ms, 1))

    def _join(self, name: str, started_s: float) -> None:
        now = self._sim_s
        node = self.nodes[name]
        if node.state is not NodeState.JOINING:
            return
        node.state = NodeState.ACTIVE
        node.failed_at_s = None
        before = dict(self.bucket_owner)
        self.members[name] = MemberState.ACTIVE
        self._regroup()
        resynced = 0
        for conn in self.conns.values():
            if name in self._peers_of(conn):
                conn.copies[name] = conn.version
                resynced += 1
        self._event(now, name, "resync", f"{name} received {resynced} records in bulk",
                    trigger="resync-request")
        back = sorted(b for b, o in self.bucket_owner.items() if o == name and before.get(b) != name)
        moved = 0
        for conn in self.conns.values():
            if not conn.common and conn.bucket in back:
                conn.owner = name
                conn.version += 1
                conn.trigger = "rebalance"
                conn.copies = {}
                self._send(conn, now, "rebalance", quiet=True)
                moved += 1
        took_ms = (now - started_s) * 1000
        for other in self._order:
            if other != name and self._alive(other):
                self._event(now, other, "peer-up", f"{name} is talking", peer=name)
        fields = {"node": name, "t": round(now, 3), "buckets": back, "promoted": moved,
                  "detect_to_accept_ms": round(took_ms, 1)}
        node.last_takeover = {k: v for k, v in fields.items() if k != "node"}
        self._event(now, name, "takeover", headline.describe(self.events, fields), buckets=back,
                    promoted=moved, latency_ms=round(took_ms, 1), trigger="rebalance",
                    detect_to_accept_ms=round(took_ms, 1))

    # ---- building blocks -------------------------------------------------------------------

    def _alive(self, name: str) -> bool:
        return self.nodes[name].state is NodeState.ACTIVE

    def _regroup(self) -> None:
        """Bucket owners and backup groups from the member states, by sync.membership's rule."""
        self.view = compute_view(self._order, self.members, self.buckets, 1, self.view.epoch + 1)
        self.bucket_owner = dict(enumerate(self.view.bucket_owner, start=1))
        self.backups = self.view.backups

    def _buckets_seen_by(self, name: str) -> list[int]:
        """The buckets `name` accepts: under a partition, its side's view, where the nodes
        across the cut look failed (each side then owns the other's buckets too)."""
        cut = next((f for f in self.faults if f["kind"] == "partition"), None)
        if cut is None or not self._alive(name):
            return sorted(b for b, o in self.bucket_owner.items() if o == name)
        side = next((g for g in cut["groups"] if name in g), [name])
        members = {n: (s if n in side else MemberState.FAILED) for n, s in self.members.items()}
        view = compute_view(self._order, members, self.buckets, 1, self.view.epoch)
        return [b for b, o in enumerate(view.bucket_owner, start=1) if o == name]

    def _backs_up(self, name: str) -> list[str]:
        return [n for n, group in self.backups.items() if name in group]

    def _peers_of(self, conn: FakeConn) -> list[str]:
        if conn.common:
            return [n for n in self._order if n != conn.owner and self._alive(n)]
        return [p for p in self.backups.get(conn.owner, []) if self._alive(p)]

    def _scope_conns(self, name: str, scope: str) -> list[FakeConn]:
        if scope == "own":
            return [c for c in self.conns.values() if c.owner == name and not c.common]
        if scope == "backup":
            return [c for c in self.conns.values() if not c.common and name in c.copies]
        return [c for c in self.conns.values() if c.common and (c.owner == name or name in c.copies)]

    def _row(self, conn: FakeConn, node: str, scope: str, now: float) -> dict[str, Any]:
        version = conn.copies.get(node, conn.version) if scope != "own" else conn.version
        return {
            "key": conn.key,
            "proto": conn.proto,
            "src": conn.src,
            "dst": conn.dst,
            "state": conn.state,
            "owner": conn.owner,
            "synced_to": sorted(p for p, v in conn.copies.items() if v == conn.version),
            "age_s": round(now - conn.created_s, 1),
            "trigger": conn.trigger,
            "version": version,
            "bucket": conn.bucket,
        }

    def _next_key(self) -> str:
        self._conn_id += 1
        return f"k{self._conn_id:05d}"

    def _new_conn(self, now: float, *, sync: bool = True, proto: str | None = None,
                  server: str | None = None, dport: int | None = None,
                  expires_s: float | None = None, flow: str | None = None,
                  client: str | None = None) -> FakeConn:
        proto = proto or ("tcp" if self._rng.random() < 0.75 else "udp")
        picked = self._rng.choice(list(CLIENTS))  # drawn always: the same lab for every seed
        client = client or picked
        server = server or "s1"
        self._port = 40000 + (self._port - 39999) % 20000
        dport = dport or (5001 if proto == "tcp" else 5002)
        key = self._next_key()
        bucket = self._rng.randint(1, self.buckets)
        owner = self.bucket_owner.get(bucket) or home_node(bucket, self._order)
        if not self._alive(owner):
            owner = next((n for n in self._order if self._alive(n)), owner)
        conn = FakeConn(
            key=key, proto=proto, src=f"{CLIENTS[client]}:{self._port}",
            dst=f"{SERVERS[server]}:{dport}", state="ESTABLISHED" if proto == "tcp" else "ASSURED",
            bucket=bucket, owner=owner, created_s=now, expires_s=expires_s, flow=flow,
        )
        self.conns[key] = conn
        if sync:
            conn.state = "SYN_SENT" if proto == "tcp" else "NEW"
            if self.policy is Policy.PERIODIC:
                self._dirty.add(key)
            else:
                self._send(conn, now, "state-modified", quiet=expires_s is not None)
        return conn

    def _add_common(self, kind: str, text: str, now: float, owner: str = "n1") -> FakeConn:
        key = self._next_key()
        conn = FakeConn(key=key, proto=kind, src=text, dst="*", state="active", bucket=-1,
                        owner=owner, created_s=now, common=True)
        conn.copies = {n: 1 for n in self._order if n != owner and self._alive(n)}
        self.conns[key] = conn
        return conn

    def _drop_conn(self, key: str, now: float) -> None:
        conn = self.conns.pop(key, None)
        self._dirty.discard(key)
        if conn is not None and conn.flow in self.flows and conn.expires_s is None:
            self.flows[conn.flow].health = "broken"
            self.flows[conn.flow].detail = "connection state lost"

    def _start_flow(self, kind: FlowKind, now: float, workload: str, client: str,
                    mode: str = "passive") -> str:
        self._flow_seq[kind] += 1
        name = f"{kind.value}-{self._flow_seq[kind]:03d}"
        if kind is FlowKind.FTP:
            ctrl = self._new_conn(now, proto="tcp", server="s2", dport=21, flow=name, client=client)
            owner = ctrl.owner
            expect = self._add_common("expectation", f"ftp-data {SERVERS['s2']}:20 -> {ctrl.src}",
                                      now, owner=owner)
            expect.copies = {}
            expect.trigger = "related-connection"
            # claim 15: the PORT/227 packet waits until every node knows the expectation
            self._send(expect, now, "related-connection", holds_packet=True)
            conn, rate, detail = ctrl, 250_000.0, f"{mode} RETR big.bin"
        else:
            conn = self._new_conn(now, proto=kind.value, flow=name, client=client)
            rate = 125_000.0 if kind is FlowKind.TCP else 12_500.0
            detail = "sequence-checked stream" if kind is FlowKind.TCP else "echo every 100 ms"
        client = next(c for c, ip in CLIENTS.items() if conn.src.startswith(ip + ":"))
        server = next(s for s, ip in SERVERS.items() if conn.dst.startswith(ip + ":"))
        self.flows[name] = FakeFlow(name, kind, client, server, conn.src, conn.dst, conn.key,
                                    now, rate, detail=detail, workload=workload)
        return name

    def _burst(self, count: int, now: float, workload: str, client: str) -> str:
        self._flow_seq[FlowKind.BURST] += 1
        name = f"burst-{self._flow_seq[FlowKind.BURST]:03d}"
        first = None
        for i in range(count):
            conn = self._new_conn(now, proto="tcp", client=client,
                                  expires_s=now + 2.0 + (i % 12) * 0.25,
                                  flow=name)
            first = first or conn
        assert first is not None or count == 0
        self._event(now, "n1", "traffic", f"burst {name}: {count} short connections",
                    trigger="state-modified")
        self.flows[name] = FakeFlow(name, FlowKind.BURST, client, "s1", first.src if first else "",
                                    first.dst if first else "", first.key if first else "",
                                    now, 0.0, detail=f"{count} short connections",
                                    workload=workload)
        return name

    def _update_flow(self, flow: FakeFlow, now: float) -> None:
        if flow.kind is FlowKind.BURST:
            left = sum(1 for c in self.conns.values() if c.flow == flow.name)
            flow.detail = f"{left} of the burst still open" if left else "burst finished"
            return
        conn = self.conns.get(flow.conn_key)
        if conn is None:
            flow.health = "broken"
            return
        if self._alive(conn.owner):
            flow.health = "healthy"
            flow.bytes += int(flow.rate_bps * STEP_S)
            flow.stalled_since_s = None
        else:
            flow.health = "stalled"
            if flow.stalled_since_s is None:
                flow.stalled_since_s = now - STEP_S  # it last moved one tick ago
            flow.longest_pause_s = max(flow.longest_pause_s, now - flow.stalled_since_s)

    def _flow_dict(self, flow: FakeFlow, now: float) -> dict[str, Any]:
        conn = self.conns.get(flow.conn_key)
        if flow.kind is FlowKind.BURST:
            owners = {c.owner for c in self.conns.values() if c.flow == flow.name}
            node = ",".join(sorted(owners)) or "-"
        else:
            node = conn.owner if conn is not None else "-"
        health = flow.health
        if flow.kind is not FlowKind.BURST:
            health = "broken" if conn is None else health if self._alive(conn.owner) else "stalled"
        return {
            # the daemon's flow report (netns.api.FlowReport): src is the client's side
            "name": flow.name, "kind": flow.kind.value, "workload": flow.workload,
            "src": flow.src, "dst": flow.dst, "health": health,
            "bytes": flow.bytes, "node": node, "age_s": round(now - flow.started_s, 1),
            "detail": flow.detail, "started": flow.started_s,
            **({} if flow.kind in (FlowKind.BURST, FlowKind.FTP)
               else {"longest_pause_ms": round(flow.longest_pause_s * 1000, 1)}),
        }

    def _node_dict(self, node: FakeNode, now: float) -> dict[str, Any]:
        while node.sent and node.sent[0] < now - 1.0:
            node.sent.popleft()
        dead = node.state in (NodeState.FAILED, NodeState.OFFLINE)
        rate = 0.0 if dead else float(sum(1 for t in node.sent if t <= now))
        if now >= node.rate_at + 0.5:
            node.rate_hist.append(rate)
            node.rate_at = now
        own = backup = common = 0
        if not dead:
            for conn in self.conns.values():
                if conn.common:
                    common += conn.owner == node.name or node.name in conn.copies
                elif conn.owner == node.name:
                    own += 1
                elif node.name in conn.copies:
                    backup += 1
        return {
            "name": node.name,
            "state": node.state.value,
            "buckets": self._buckets_seen_by(node.name),
            "backs_up": self._backs_up(node.name),
            "backups": list(self.backups.get(node.name, [])),
            "sync_address": f"198.18.0.{11 + node.index}",
            "own": own,
            "backup": backup,
            "common": common,
            "held": node.held,
            "sync_msgs_per_s": rate,
            "sync_rate_history": [] if dead else list(node.rate_hist),
            "pid": None if dead else 1000 + node.index,
            "counters": {"accepted": own * 7, "held": node.held},
            "last_takeover": node.last_takeover,
        }

    def _node(self, name: Any) -> FakeNode:
        if name not in self.nodes:
            raise Refused(f"no node {name!r}; nodes are {', '.join(self.nodes)}")
        return self.nodes[name]

    def _event(self, now: float, node: str, kind: str, text: str, *, key: str = "",
               peers: list[str] | None = None, latency_ms: float | None = None,
               trigger: str = "", **extra: Any) -> None:
        self._event_id += 1
        self.events.append({
            "id": self._event_id, "t": round(now, 3), "node": node, "kind": kind, "text": text,
            "key": key, "peers": list(peers or []), "latency_ms": latency_ms, "trigger": trigger,
            **extra,
        })
