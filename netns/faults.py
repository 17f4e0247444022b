"""Fault injection: loss and slow input on the sync segment (iptables in node namespaces), a
partition of the sync segment, a cut of any one link of a node (link down in the node's
namespace, or silent: carrier up, frames dropped at the fabric bridge port with ebtables in
the fabric namespace), optionally flapping; heal undoes them all. Never the host namespace."""

from __future__ import annotations

import logging
import threading
from typing import Any

from netns import iptables
from netns.record import LabRecord
from netns.spec import FABRIC, LabError, LabSpec, ns_name

log = logging.getLogger(__name__)

# Where a lab's live faults are kept: in its record, so that what is applied is never only
# in one process's memory (and a `fault heal` after a daemon restart still knows the nodes).
META_KEY = "faults"
# What each fault does to the cluster, shown beside it in `status` and the console.
EFFECTS = {
    "loss": "sync datagrams into {node} dropped at random ({pct}): its peers retransmit "
    "(sync.peers.*.retransmitted), acks and holds take longer; heartbeats lost in a row "
    "can make a peer look failed",
    "partition": "sync segment between {groups} cut (at the fabric and for sync UDP): with "
    "the extra paths on (lab setting paths), probes still arrive on the inside and outside "
    "segments, so nobody is failed and sync datagrams go over a data segment; with them "
    "off, each side declares the other failed and takes its buckets (split brain: the same "
    "bucket owned on both sides, flows forwarded by both); heal merges the views again",
    "cut": "{node}'s {link} link {how}{flap}: {what}",
    "slow": "{node} handles sync input {delay_ms} ms late: acks to it come late, its "
    "peers' held packets wait and retransmissions rise; past the failure-detection "
    "timeout its peers think it failed",
}

CUT_EFFECT_SYNC = ("its peers still hear it on the inside and outside segments, so nobody "
                   "takes over: sync datagrams to and from {node} switch to a data segment "
                   "within ~3 probe intervals (status: paths.peers.*.route)")
CUT_EFFECT_DATA = ("{node} cannot carry its flows on {link}: it sees its carrier go or hears "
                   "no peer there while the others hear each other, fences itself (degraded) "
                   "and its backups take its buckets with its state; back when the link returns")

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
    elif kind == "cut":
        node = _node(req.get("node"), names)
        link = str(req.get("link", ""))
        if link not in CUT_LINKS:
            raise FaultError(f"link must be one of {', '.join(CUT_LINKS)}, not {link!r}")
        flap = req.get("flap_ms")
        state["cut"].setdefault(node, {})[link] = {"silent": bool(req.get("silent")),
                                                   "flap_ms": int(flap) if flap else 0}
        targets = [node]
    elif kind == "heal":
        targets = sorted(set(state["loss"]) | {n for g in state["partition"] for n in g})
        _stop_flappers(spec.name)
        _links_up(spec, record, state)
        state["loss"], state["partition"], state["cut"] = {}, [], {}
    else:
        raise FaultError(f"fault kind must be loss, partition, cut or heal here, not {kind!r}")
    if kind != "cut":
        for t in targets:
            _write_chain(spec, record, t, state)
    if kind in ("partition", "cut", "heal"):
        _write_fabric(spec, record, state)
    if kind == "cut":
        c = state["cut"][targets[0]][str(req.get("link"))]
        if not c["silent"]:
            _set_link(spec, record, targets[0], str(req.get("link")), "down")
        if c["flap_ms"]:
            _start_flapper(spec, record, state, targets[0], str(req.get("link")), c)
    # Kept in the record's memory (saved with its next change); not saved from here, because
    # the daemon calls this from a worker thread while its loop may be saving the record.
    record.meta[META_KEY] = state
    log.info("fault %s applied: %s", kind, state)
    return {"ok": True, "kind": kind, "nodes": targets, "loss": dict(state["loss"]),
            "partition": [list(g) for g in state["partition"]],
            "cut": {n: dict(links) for n, links in state["cut"].items()}}


def _state(record: LabRecord) -> dict[str, Any]:
    cur = record.meta.get(META_KEY) or {}
    return {"loss": dict(cur.get("loss", {})), "partition": [list(g) for g in cur.get("partition", [])],
            "cut": {n: {k: dict(v) for k, v in links.items()} for n, links in cur.get("cut", {}).items()}}


# ---- cuts of one link, at the node or at the fabric ---------------------------------------------

CUT_LINKS = ("sync", "inside", "outside")
CUT_CHAIN = "SW_CUT"
_PORT_SUFFIX = {"sync": "sy", "inside": "in", "outside": "out"}  # as netns/build.py names them
# (lab, node, link) -> [the flapping thread's stop event, whether the link is cut right now]
_flappers: dict[tuple[str, str, str], tuple[threading.Event, list[bool]]] = {}


def _port(node: str, link: str) -> str:
    return f"{node}-{_PORT_SUFFIX[link]}"


def _recorded_ns(spec: LabSpec, record: LabRecord, host: str) -> str:
    ns = ns_name(spec.name, host)
    if ns not in record.namespace_names():
        # Only namespaces this lab made and recorded are ever touched.
        raise FaultError(f"namespace {ns} of {host} is not in the lab's record")
    return ns


def fabric_rules(spec: LabSpec, state: dict[str, Any]) -> list[list[str]]:
    """The ebtables rules of the fabric's SW_CUT chain: silent cuts (both directions of the
    node's bridge port) and the partition of the sync bridge (between ports of different
    groups). A flapping cut is in it only while it is in its cut phase."""
    rules: list[list[str]] = []
    for node, links in sorted(state["cut"].items()):
        for link, c in sorted(links.items()):
            if not c["silent"]:
                continue
            f = _flappers.get((spec.name, node, link))
            if f is not None and not f[1][0]:
                continue
            port = _port(node, link)
            rules += [["-A", CUT_CHAIN, "-i", port, "-j", "DROP"],
                      ["-A", CUT_CHAIN, "-o", port, "-j", "DROP"]]
    groups = state["partition"]
    for gi, g in enumerate(groups):
        for other in groups[gi + 1:]:
            for a in g:
                for b in other:
                    pa, pb = _port(a, "sync"), _port(b, "sync")
                    rules += [["-A", CUT_CHAIN, "-i", pa, "-o", pb, "-j", "DROP"],
                              ["-A", CUT_CHAIN, "-i", pb, "-o", pa, "-j", "DROP"]]
    return rules


def _write_fabric(spec: LabSpec, record: LabRecord, state: dict[str, Any]) -> None:
    ns = _recorded_ns(spec, record, FABRIC)
    ebt = ["ebtables"]
    if iptables.run_in_ns(ns, [*ebt, "-L", CUT_CHAIN], check=False).returncode != 0:
        iptables.run_in_ns(ns, [*ebt, "-N", CUT_CHAIN])
        iptables.run_in_ns(ns, [*ebt, "-A", "FORWARD", "-j", CUT_CHAIN])
    iptables.run_in_ns(ns, [*ebt, "-F", CUT_CHAIN])
    for rule in fabric_rules(spec, state):
        iptables.run_in_ns(ns, [*ebt, *rule])


def _set_link(spec: LabSpec, record: LabRecord, node: str, link: str, how: str) -> None:
    """`ip link set LINK down|up` of the node's own interface, inside the node's namespace."""
    iptables.run_in_ns(_recorded_ns(spec, record, node), ["ip", "link", "set", link, how])


def _links_up(spec: LabSpec, record: LabRecord, state: dict[str, Any]) -> None:
    for node, links in state["cut"].items():
        for link, c in links.items():
            if not c["silent"]:
                _set_link(spec, record, node, link, "up")


def _start_flapper(spec: LabSpec, record: LabRecord, state: dict[str, Any], node: str, link: str,
                   c: dict[str, Any]) -> None:
    key = (spec.name, node, link)
    old = _flappers.pop(key, None)
    if old is not None:
        old[0].set()
    stop, phase = threading.Event(), [True]
    _flappers[key] = (stop, phase)
    period = c["flap_ms"] / 1000.0

    def flap() -> None:
        while not stop.wait(period):
            try:
                with _lock:
                    if stop.is_set():
                        return
                    phase[0] = not phase[0]
                    if c["silent"]:
                        _write_fabric(spec, record, state)
                    else:
                        _set_link(spec, record, node, link, "down" if phase[0] else "up")
            except (FaultError, iptables.IptablesError) as e:
                log.warning("flapping %s %s: %s", node, link, e)

    threading.Thread(target=flap, name=f"flap-{node}-{link}", daemon=True).start()


def _stop_flappers(lab: str) -> None:
    for key in [k for k in _flappers if k[0] == lab]:
        _flappers.pop(key)[0].set()


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
    elif kind == "cut":
        node, link = str(req.get("node", "")), str(req.get("link", ""))
        silent, flap = bool(req.get("silent")), int(req.get("flap_ms") or 0)
        out = [a for a in out if not (a["kind"] == "cut" and a.get("node") == node and a.get("link") == link)]
        what = (CUT_EFFECT_SYNC if link == "sync" else CUT_EFFECT_DATA).format(node=node, link=link)
        out.append({"kind": "cut", "node": node, "link": link, "silent": silent, "flap_ms": flap,
                    "effect": EFFECTS["cut"].format(
                        node=node, link=link,
                        how="cut silently (carrier up, frames dropped at the fabric)" if silent else "down",
                        flap=f", flapping every {flap} ms" if flap else "", what=what)})
    elif kind == "heal":
        # heal clears what apply_fault undid (loss, partition, cut); a slow node is set back with
        # `fault slow --delay-ms 0`, so it stays listed until then.
        out = [a for a in out if a["kind"] == "slow"]
    return out
