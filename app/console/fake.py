"""A fake lab for the console: the whole control API in memory, driven by a clock tests advance.

It behaves like the default lab seen from the daemon's socket: three nodes with cyclic backups,
12 buckets, a few hundred connections, flows, a sync timeline; killing a node marks it failed at
once and, one detection time later, its backup takes over its buckets and connections with an
event and a headline. Everything is a function of the clock and a seeded RNG, so tests and
snapshots see the same lab every time.
"""

from __future__ import annotations

import logging
from typing import Any

from app.console.fake_parts import FakeClock, NodeState, Policy, Refused, WallClock
from app.console.fake_sim import Simulation
from netns import api, faults, headline
from sync.membership import MemberState

__all__ = ["FakeClock", "FakeLab", "WallClock"]  # what the console and its tests import from here

log = logging.getLogger(__name__)

EVENTS_IN_SNAPSHOT = 120


class FakeLab(Simulation):
    """Implements `request(msg) -> reply` for every command of the lab daemon's control API."""

    # ---- the control API -------------------------------------------------------------------

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One request, parsed by the daemon's own schema: what the daemon refuses, so does this."""
        self.requests.append(dict(msg))
        now = self.clock()
        self._advance(now)
        try:
            req = api.parse_request(msg)
        except api.RequestError as exc:
            return {"ok": False, "error": str(exc), "field": exc.field}
        name = req.CMD if not req.ACTION else f"{req.CMD}_{req.ACTION}"
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            return {"ok": False, "error": f"the fake lab does not simulate {name!r}"}
        try:
            reply: dict[str, Any] = handler(req, now)
        except Refused as exc:
            return {"ok": False, "error": str(exc)}
        return reply

    def _cmd_status(self, req: api.Status, now: float) -> dict[str, Any]:
        snap = self._cmd_snapshot(api.Snapshot(), now)
        snap.pop("events")
        snap.pop("flows")
        return snap

    def _cmd_snapshot(self, req: api.Snapshot, now: float) -> dict[str, Any]:
        return {
            "ok": True,
            "lab": self.name,
            "daemon_pid": 4242,
            "policy": self.policy.value,
            "interval_ms": self.interval_ms,
            "sync_port": 7400,
            "buckets": self.buckets,
            "time": round(now, 3),
            **self._headline(now),
            "faults": self.faults,
            "frozen": self.frozen,
            "queued": len(self.queue),
            "nodes": [self._node_dict(n, now) for n in self.nodes.values()],
            "flows": [self._flow_dict(f, now) for f in self.flows.values()],
            "events": [e for e in self.events if not req.since or e["t"] > req.since][
                -min(req.max_events, EVENTS_IN_SNAPSHOT):] if req.max_events else [],
        }

    def _headline(self, now: float) -> dict[str, Any]:
        down = [n.name for n in self.nodes.values() if n.state in (NodeState.FAILED, NodeState.OFFLINE)]
        head = headline.build(self.events, now, faults=self.faults, down=down)
        return {"headline": head.render(now), "headline_event": head.to_dict()}

    def _cmd_table(self, req: api.Table, now: float) -> dict[str, Any]:
        node = self._node(req.node)
        scope, limit, needle = req.scope, req.limit, req.filter.lower()
        reply: dict[str, Any] = {"ok": True, "node": node.name, "scope": scope}
        if node.state in (NodeState.FAILED, NodeState.OFFLINE):
            reply.update(rows=[], total=0, note=f"{node.name} is {node.state.value}: no tables")
            return reply
        rows = [self._row(c, node.name, scope, now) for c in self._scope_conns(node.name, scope)]
        if needle:
            rows = [r for r in rows if needle in _haystack(r)]
        reply.update(rows=rows[:limit], total=len(rows))
        return reply

    def _cmd_kill(self, req: api.Kill, now: float) -> dict[str, Any]:
        return self._fail(req, now, "killed (SIGKILL to the node process)")

    def _cmd_crash(self, req: api.Crash, now: float) -> dict[str, Any]:
        return self._fail(req, now, "crashed (links cut, process frozen)")

    def _fail(self, req: api.NodeAction, now: float, how: str) -> dict[str, Any]:
        node = self._node(req.node)
        if node.state is not NodeState.ACTIVE:
            raise Refused(f"{node.name} is {node.state.value}; only an active node can fail")
        node.state = NodeState.FAILED
        node.failed_at_s = now
        node.held = 0
        self._event(now, node.name, "action", f"{node.name} {how}", action=req.CMD)
        self._schedule(now + self.detect_s, lambda: self._take_over(node.name, graceful=False))
        return {"ok": True}

    def _cmd_offline(self, req: api.Offline, now: float) -> dict[str, Any]:
        node = self._node(req.node)
        if node.state is not NodeState.ACTIVE:
            raise Refused(f"{node.name} is {node.state.value}; only an active node can leave")
        node.failed_at_s = now
        self._event(now, node.name, "action", f"{node.name} leaving: pushing all state first",
                    action="offline")
        node.state = NodeState.OFFLINE
        self._take_over(node.name, graceful=True)
        return {"ok": True}

    def _cmd_revive(self, req: api.Revive, now: float) -> dict[str, Any]:
        node = self._node(req.node)
        if node.state not in (NodeState.FAILED, NodeState.OFFLINE):
            raise Refused(
                f"{node.name} is {node.state.value}; only a failed or offline node can be revived"
            )
        node.state = NodeState.JOINING
        self.members[node.name] = MemberState.JOINING
        self._event(now, node.name, "action", f"{node.name} restarted: hello, asking for bulk state",
                    action="revive")
        self._schedule(now + self.join_s, lambda: self._join(node.name, now))
        return {"ok": True}

    def _cmd_policy(self, req: api.SetPolicy, now: float) -> dict[str, Any]:
        policy = Policy(req.policy)
        interval_ms = self.interval_ms if req.interval_ms is None else req.interval_ms
        self.policy, self.interval_ms = policy, interval_ms
        self._next_period_s = now + interval_ms / 1000
        self._event(now, "n1", "policy", f"sync policy {policy.value}, every {interval_ms} ms")
        return {"ok": True, "policy": policy.value, "interval_ms": interval_ms}

    def _cmd_full_sync(self, req: api.FullSync, now: float) -> dict[str, Any]:
        sent = 0
        for conn in self.conns.values():
            if self.nodes[conn.owner].state is NodeState.ACTIVE:
                conn.trigger = "full-sync"
                self._send(conn, now, "full-sync", quiet=True)
                sent += 1
        self._event(now, "n1", "full-sync", f"full sync: {sent} records sent to backups")
        return {"ok": True, "records": sent}

    def _cmd_traffic_start(self, req: api.TrafficStart, now: float) -> dict[str, Any]:
        return self._start_workload(req, now)


    def _cmd_traffic_stop(self, req: api.TrafficStop, now: float) -> dict[str, Any]:
        if req.name is not None and req.name not in self.workloads:
            raise Refused(f"no traffic workload {req.name!r} runs; running: "
                           f"{', '.join(self.workloads) or 'none'}")
        names = [req.name] if req.name is not None else list(self.workloads)
        for name in names:
            for flow_name in self.workloads.pop(name):
                flow = self.flows.pop(flow_name, None)
                if flow is not None:
                    self._drop_conn(flow.conn_key, now)
        return {"ok": True, "stopped": names}

    def _cmd_traffic_clear(self, req: api.TrafficClear, now: float) -> dict[str, Any]:
        return {"ok": True}

    def _cmd_freeze(self, req: api.Freeze, now: float) -> dict[str, Any]:
        self.frozen = True
        self._event(now, "n1", "freeze", "sync channel frozen: messages wait for a step")
        return {"ok": True, "queued": len(self.queue)}

    def _cmd_step(self, req: api.Step, now: float) -> dict[str, Any]:
        if not self.queue:
            raise Refused("no sync message is waiting; make a change first (or resume)")
        released = self._deliver(self.queue.popleft(), now, how="stepped")
        return {"ok": True, "released": released, "queued": len(self.queue)}

    def _cmd_resume(self, req: api.Resume, now: float) -> dict[str, Any]:
        count = len(self.queue)
        while self.queue:
            self._deliver(self.queue.popleft(), now, how="released")
        self.frozen = False
        self._event(now, "n1", "freeze", f"sync channel resumed: {count} messages released")
        return {"ok": True, "released": count}

    def _cmd_fault(self, req: api.Fault, now: float) -> dict[str, Any]:
        """Faults as the daemon lists them (netns.faults.describe_active); a partition splits
        the bucket view: each side owns the other side's buckets too (split brain)."""
        if req.node is not None:
            self._node(req.node)
        self.faults = faults.describe_active(self.faults, req.to_dict())
        given = {k: v for k, v in req.to_dict().items() if k != "cmd"}
        self._event(now, "lab", "fault", f"fault {req.kind}: {given}")
        return {"ok": True}

    def _cmd_down(self, req: api.Down, now: float) -> dict[str, Any]:
        return {"ok": True, "daemon_pid": 4242}


def _haystack(row: dict[str, Any]) -> str:
    # As engine/node.py's table filter: every field of the row, shown on screen or not.
    return " ".join(str(v) for v in row.values()).lower()
