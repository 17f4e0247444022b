"""The "policies" demo: periodic, on-demand and hybrid sync under the same traffic and failure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from demos.scenarios.framework import (
    DemoContext,
    Scenario,
    Step,
    delta,
    events_since,
    expect_mem,
    fixed,
    judge,
    judge_flows,
    lost_text,
    note_spurious,
    start_tcp,
    wait_active,
)

POLICY_INTERVAL_MS = 5000
OLD_FLOWS = 12
NEW_FLOWS = 12
POLICY_FTP = 4


# State replication proper: record frames and their acks. Heartbeats (the same under every
# policy), views and bulk resyncs (membership, not traffic) are left out.
STATE_SYNC_TYPES = ("records", "ack")


def sync_cost(st: dict[str, Any]) -> tuple[int, int]:
    """Record frames (and acks) and their bytes sent by all live nodes so far."""
    msgs = nbytes = 0
    for n in st["nodes"]:
        for p in (n.get("sync") or {}).get("peers", {}).values():
            msgs += sum(p.get("sent", {}).get(k, 0) for k in STATE_SYNC_TYPES)
            nbytes += sum(p.get("bytes_sent_by_type", {}).get(k, 0) for k in STATE_SYNC_TYPES)
    return msgs, nbytes


def placement(ctx: DemoContext, st: dict[str, Any]) -> dict[str, str]:
    """'src|dst' -> the node whose own table holds that connection, asked of the nodes right now."""
    where = {}
    for n in st["nodes"]:
        if n["state"] != "active":
            continue
        table = ctx.call({"cmd": "table", "node": n["name"], "scope": "own", "limit": 100000})
        for r in table.get("rows", []):
            where[f"{r.get('src')}|{r.get('dst')}"] = where[f"{r.get('dst')}|{r.get('src')}"] = n["name"]
    return where


def periodic_class(started: float, t_policy: float, t_kill: float) -> str:
    """Was a flow synced by a period before the kill? "synced", "unsynced" or "unsure" (too near a
    period boundary to tell: the timer runs on the node's own clock and ticks)."""
    period_s = POLICY_INTERVAL_MS / 1000
    last = t_policy + period_s * int((t_kill - t_policy) / period_s)  # the last period before the kill
    if last <= t_policy:
        return "unsynced"
    if started > last + 0.1:
        return "unsynced"
    if started < last - 0.5:
        return "synced"
    return "unsure"


def policy_round(policy: str) -> Callable[[DemoContext], str]:
    def run(ctx: DemoContext) -> str:
        t0 = time.time()
        ctx.call({"cmd": "policy", "policy": policy, "interval_ms": POLICY_INTERVAL_MS})
        t_policy = time.time()  # each node restarts its period timer on the policy command
        period_s = POLICY_INTERVAL_MS / 1000
        st = ctx.status()
        cost0 = sync_cost(st)
        c0 = {n["name"]: n.get("counters", {}) for n in st["nodes"]}
        old = start_tcp(ctx, OLD_FLOWS, placed=False)
        # Wait past the next period boundary: the old flows are synced by it (periodic, hybrid).
        next_b = t_policy + period_s * (int((time.time() - t_policy) / period_s) + 1)
        time.sleep(max(0.0, next_b + 0.3 - time.time()))
        ftp = ctx.traffic("ftp", mode="active", sessions=POLICY_FTP, interval_ms=100)
        new = start_tcp(ctx, NEW_FLOWS, placed=False)
        st = ctx.status()
        where = placement(ctx, st)
        flows = {f["name"]: f for f in ctx.flows([*old, *new])}
        node_of = {n: where.get(f"{f['src']}|{f['dst']}", "?") for n, f in flows.items()}
        nodes = sorted(set(node_of.values()) - {"?"})
        counts = {x: sum(1 for n in new if node_of.get(n) == x) for x in nodes}
        victim = max(counts, key=lambda x: counts[x])
        msgs, nbytes = sync_cost(st)
        # Holds before the kill: PORT packets waiting for their expectation's ack. (After it, the
        # backup also holds packets of sessions it does not know while it asks the cluster.)
        held = sum(delta(c0, {n["name"]: n.get("counters", {}) for n in st["nodes"]}, "held").values())
        buckets = set(ctx.nodes(st)[victim]["buckets"])
        t_kill = time.time()
        ctx.call({"cmd": "kill", "node": victim})
        st = ctx.wait_for(f"{victim}'s buckets taken over", lambda: (
            (s := ctx.status())
            and buckets <= {b for n in s["nodes"] if n["name"] != victim for b in n["buckets"]}
            and (s.get("last_takeover") or {}).get("t", 0) > t_kill and s), 10, 0.05)
        t_take = float(st["last_takeover"]["t"])
        _, lost = judge_flows(ctx, [*old, *new], t_take)
        lost_names = {f["name"] for f in lost}
        ftp_fl = ctx.wait_for("the FTP sessions to end", lambda: (
            (f := ctx.flows([ftp])) and len(f) >= POLICY_FTP
            and all(x["health"] in ("done", "failed") for x in f)
            and f), 20, 0.2)
        lat = [float(e["latency_ms"]) for e in events_since(ctx, t0)
               if e.get("kind") == "release" and float(e["t"]) < t_kill and e.get("latency_ms") is not None]
        cls = {n: periodic_class(float(flows[n]["started"]), t_policy, t_kill) for n in flows}
        on_victim = [n for n in flows if node_of[n] == victim]
        row = {
            "policy": policy,
            "victim": victim,
            "victim_flows": len(on_victim),
            "victim_unsynced_flows": sum(cls[n] == "unsynced" for n in on_victim),
            "flows_lost": len(lost),
            "ftp_failed": sum(f["health"] == "failed" for f in ftp_fl),
            "sync_msgs": msgs - cost0[0],
            "sync_bytes": nbytes - cost0[1],
            "held_packets": held,
            "hold_ms_p50": fixed(statistics.median(lat), 2) if lat else None,
            "hold_ms_max": fixed(max(lat), 2) if lat else None,
            "takeover_ms": st["last_takeover"].get("takeover_ms"),
        }
        ctx.mem.setdefault("rows", {})[policy] = row
        note = note_spurious(ctx, t0, {victim})
        ctx.call({"cmd": "revive", "node": victim})
        wait_active(ctx, victim, buckets)
        # The flows keep running: an established flow costs no sync at all, while stopping it
        # would send closes and, 10 s later, deletes into the next round's figures.
        if policy == "periodic":
            # Lost must be exactly the dead node's flows opened since the last period.
            should = {n for n in on_victim if cls[n] == "unsynced"}
            unsure = {n for n in on_victim if cls[n] == "unsure"}
            wrong_lost = lost_names - should - unsure
            wrong_kept = should - lost_names
            judge(ctx, policy, bool(should) and not wrong_lost and not wrong_kept,
                  f"killed {victim}: it carried {len(on_victim)} flows, {len(should)} opened since the last "
                  f"period ({len(unsure)} too near a period to tell); lost {len(lost)}"
                  + (f"; lost though synced: {sorted(wrong_lost)}" if wrong_lost else "")
                  + (f"; survived though never synced: {sorted(wrong_kept)}" if wrong_kept else "")
                  + ("" if should else "; no flow of the victim was opened after the last period "
                     "(the machine is too slow for this timeline)"))
        else:
            judge(ctx, policy, not lost, f"killed {victim} ({len(on_victim)} flows): {lost_text(lost)}")
        return (f"{victim} killed: {len(lost)} of {len(flows)} flows lost, {row['sync_msgs']} sync "
                f"messages ({row['sync_bytes']} B), {held} packets held{note}")

    return run


def policies_table(ctx: DemoContext) -> str:
    rows = ctx.mem.get("rows", {})
    ctx.figures["policies"] = rows
    head = ("policy", "flows lost", "ftp failed", "sync msgs", "sync bytes", "held", "hold p50 ms")
    lines = ["  ".join(f"{h:>11}" for h in head)]
    for p, r in rows.items():
        cells = (p, r["flows_lost"], r["ftp_failed"], r["sync_msgs"], r["sync_bytes"],
                 r["held_packets"], "-" if r["hold_ms_p50"] is None else r["hold_ms_p50"])
        lines.append("  ".join(f"{c:>11}" for c in cells))
    judge(ctx, "table", len(rows) == 3, f"{len(rows)} policies measured")
    ctx.figures["headline"] = "; ".join(f"{p}: {r['flows_lost']} flows lost, {r['sync_msgs']} sync msgs"
                                        for p, r in rows.items())
    return "\n".join(lines)


POLICIES = Scenario(
    name="policies",
    title="Periodic, on-demand and hybrid sync under the same traffic and the same failure",
    teaches="Periodic sync batches changes and sends them every interval: cheap, but a node that "
            "dies loses every connection opened since the last period. On-demand sync sends each "
            "change at once (and holds FTP PORT packets until acked): nothing is lost. Hybrid adds "
            "a periodic safety net to on-demand.",
    lab_name="dm-policies",
    steps=(
        Step(f"Periodic sync every {POLICY_INTERVAL_MS // 1000} s. {OLD_FLOWS} flows start, a period "
             f"passes, {NEW_FLOWS} new flows and {POLICY_FTP} FTP sessions start, then the node with the "
             "most new flows is killed.", policy_round("periodic"),
             (expect_mem("flows synced by the last period survive; the newer flows of the dead node are "
                         "lost", "periodic"),)),
        Step("The same traffic and failure with on-demand sync.", policy_round("on-demand"),
             (expect_mem("no flow is lost", "on-demand"),)),
        Step(f"The same with hybrid sync (on demand, plus every {POLICY_INTERVAL_MS // 1000} s).",
             policy_round("hybrid"), (expect_mem("no flow is lost", "hybrid"),)),
        Step("Side by side.", policies_table, (expect_mem("all three policies were measured", "table"),)),
    ),
)

