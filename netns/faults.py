"""Fault injection on the sync segment: loss, partition (split brain), heal; iptables in node namespaces."""

from __future__ import annotations

import logging
import threading
from typing import Any

from netns import iptables
from netns.record import LabRecord
from netns.spec import LabError, LabSpec, ns_name

log = logging.getLogger(__name__)

# Where a lab's live faults are kept: in its record, so that what is applied is never only
# in one process's memory (and a `fault heal` after a daemon restart still knows the nodes).
META_KEY = "faults"
# What each fault does to the cluster, shown beside it in `status` and the console.
EFFECTS = {
    "loss": "sync datagrams into {node} dropped at random ({pct}): its peers retransmit "
    "(sync.peers.*.retransmitted), acks and holds take longer; heartbeats lost in a row "
    "can make a peer look failed",
    "partition": "sync between {groups} cut: each side misses the other's heartbeats, "
    "declares it failed and takes its buckets (split brain: the same bucket owned on "
    "both sides, flows forwarded by both); heal merges the views again",
    "slow": "{node} handles sync input {delay_ms} ms late: acks to it come late, its "
    "peers' held packets wait and retransmissions rise; past the failure-detection "
    "timeout its peers think it failed",
}

_lock = threading.Lock()


class FaultError(LabError):
    """A fault request names an unknown node, a bad rate or bad groups."""


def apply_fault(spec: LabSpec, record: LabRecord, req: dict[str, Any]) -> dict[str, Any]:
    """Apply a loss / partition / heal request inside the lab's node namespaces.

    Reply `{"ok": True, ...}` with what is now in force, or `{"ok": False, "error": ...}`;
    never raises for a bad request. The node's SW_SYNCLOSS chain (jumped to from INPUT on
    the sync interface) is rewritten whole each time from the recorded faults, so a loss
    rate and a partition can be in force together and heal leaves it empty.
    """
    try:
        with _lock:
            return _apply(spec, record, req)
    except (FaultError, iptables.IptablesError) as e:
        return {"ok": False, "error": str(e)}


def _apply(spec: LabSpec, record: LabRecord, req: dict[str, Any]) -> dict[str, Any]:
    kind = str(req.get("kind", ""))
    names = [n.name for n in spec.nodes]
    state = _state(record)
    if kind == "loss":
        rate = _rate(req.get("rate"))
        node = req.get("node")
        targets = [_node(node, names)] if node else names
        for t in targets:
            if rate > 0:
                state["loss"][t] = rate
            else:
                state["loss"].pop(t, None)
    elif kind == "partition":
        state["partition"] = _groups(req.get("groups"), names)
        targets = names
    elif kind == "heal":
        targets = sorted(set(state["loss"]) | {n for g in state["partition"] for n in g})
        state["loss"], state["partition"] = {}, []
    else:
        raise FaultError(f"fault kind must be loss, partition or heal here, not {kind!r}")
    for t in targets:
        _write_chain(spec, record, t, state)
    # Kept in the record's memory (saved with its next change); not saved from here, because
    # the daemon calls this from a worker thread while its loop may be saving the record.
    record.meta[META_KEY] = state
    log.info("fault %s applied: %s", kind, state)
    return {"ok": True, "kind": kind, "nodes": targets, "loss": dict(state["loss"]),
            "partition": [list(g) for g in state["partition"]]}


def _state(record: LabRecord) -> dict[str, Any]:
    cur = record.meta.get(META_KEY) or {}
    return {"loss": dict(cur.get("loss", {})), "partition": [list(g) for g in cur.get("partition", [])]}


def _rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultError(f"loss needs a rate between 0 and 1 (e.g. 0.2), got {v!r}")
    rate = float(v)
    if not 0.0 <= rate <= 1.0:
        raise FaultError(f"loss rate is a fraction between 0 and 1, got {rate}")
    return rate


def _node(v: Any, names: list[str]) -> str:
    if v not in names:
        raise FaultError(f"no node {v!r}; nodes are {', '.join(names)}")
    return str(v)


def _groups(v: Any, names: list[str]) -> list[list[str]]:
    if not isinstance(v, list) or len(v) < 2 or not all(isinstance(g, list) and g for g in v):
        raise FaultError("partition needs at least two non-empty groups of nodes, e.g. n1/n2,n3")
    seen: set[str] = set()
    groups = []
    for g in v:
        group = [_node(n, names) for n in g]
        if seen & set(group):
            raise FaultError(f"node(s) {', '.join(sorted(seen & set(group)))} are in two groups")
        seen |= set(group)
        groups.append(group)
    return groups


def chain_text(node: str, spec: LabSpec, state: dict[str, Any]) -> str:
    """The whole SW_SYNCLOSS chain of `node`: partition drops first, then the random loss."""
    ips = {n.name: str(n.sync_ip) for n in spec.nodes}
    chain = iptables.SYNC_LOSS_CHAIN
    lines = ["*filter", f":{chain} - [0:0]"]
    for group in state["partition"]:
        if node in group:
            continue
        if any(node in g for g in state["partition"]):
            # Nodes in no group stay connected to everyone; only named groups are split.
            for peer in group:
                lines.append(f"-A {chain} -s {ips[peer]}/32 -p udp --dport {spec.sync_port} -j DROP")
    rate = state["loss"].get(node)
    if rate:
        match = "" if rate >= 1.0 else f"-m statistic --mode random --probability {rate:.4f} "
        lines.append(f"-A {chain} {match}-j DROP")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def _write_chain(spec: LabSpec, record: LabRecord, node: str, state: dict[str, Any]) -> None:
    ns = ns_name(spec.name, node)
    if ns not in record.namespace_names():
        # Only namespaces this lab made and recorded are ever touched.
        raise FaultError(f"namespace {ns} of node {node} is not in the lab's record")
    iptables.iptables_restore(ns, chain_text(node, spec, state))


def describe_active(active: list[dict[str, Any]], req: dict[str, Any]) -> list[dict[str, Any]]:
    """The list of faults in force after `req` succeeded, each with what it does (for `status`)."""
    kind = str(req.get("kind", ""))
    out = [dict(a) for a in active]
    if kind == "loss":
        rate = float(req.get("rate", 0))
        node = req.get("node")
        out = [a for a in out if not (a["kind"] == "loss" and (not node or a.get("node") == node))]
        if rate > 0:
            who = str(node) if node else "all"
            out.append({"kind": "loss", "node": who, "rate": rate,
                        "effect": EFFECTS["loss"].format(node=who if node else "every node",
                                                         pct=f"{rate:.0%}")})
    elif kind == "partition":
        groups = [list(g) for g in req.get("groups", [])]
        out = [a for a in out if a["kind"] != "partition"]
        text = " | ".join(",".join(g) for g in groups)
        out.append({"kind": "partition", "groups": groups,
                    "effect": EFFECTS["partition"].format(groups=text)})
    elif kind == "slow":
        node = str(req.get("node", ""))
        delay_ms = int(req.get("delay_ms", 0))
        out = [a for a in out if not (a["kind"] == "slow" and a.get("node") == node)]
        if delay_ms > 0:
            out.append({"kind": "slow", "node": node, "delay_ms": delay_ms,
                        "effect": EFFECTS["slow"].format(node=node, delay_ms=delay_ms)})
    elif kind == "heal":
        # heal clears what apply_fault undid (loss, partition); a slow node is set back with
        # `fault slow --delay-ms 0`, so it stays listed until then.
        out = [a for a in out if a["kind"] == "slow"]
    return out
