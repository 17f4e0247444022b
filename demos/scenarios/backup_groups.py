"""The "backup-groups" demo: cyclic backup groups against a full mesh, in the sync simulator (no lab)."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

from demos.scenarios.framework import (
    Check,
    DemoContext,
    DemoError,
    Expectation,
    Scenario,
    Step,
)

GROUP_SIZES = (3, 4, 6)
RECORDS_PER_NODE = 200
COMMON_RECORDS = 10


def bytes_per_record() -> float:
    """Measured here: what one replicated record costs in a MemoryStore."""
    from sync.records import MemoryStore, Record, Scope

    n = 2000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = MemoryStore()
        for i in range(n):
            store.apply(Record(f"n1-{i:06d}".encode(), Scope.NODE, "n1", 1, 1, [i, 6, 1], False))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del store
    return used / n


def simulate(nodes: int, backups: int) -> dict[str, Any]:
    """A settled cluster, then RECORDS_PER_NODE connections per node and some common state."""
    from sync.records import Scope
    from sync.sim import SimCluster

    c = SimCluster(nodes, buckets=12, seed=7, backups=backups, miss_limit=10)
    c.start()
    if not c.run_until(c.all_active, 5.0):
        raise DemoError(f"the simulated {nodes}-node cluster did not settle")
    c.run(0.3)
    b0, s0 = c.stats.bytes, c.stats.sent
    c.run(0.5)  # the same idle time afterwards measures heartbeats, left out below
    idle_b, idle_s = c.stats.bytes - b0, c.stats.sent - s0
    b1, s1 = c.stats.bytes, c.stats.sent
    for name in c.names:
        for i in range(RECORDS_PER_NODE):
            c.put(name, f"{name}-{i:05d}".encode(), [i, 6, 1])
    for i in range(COMMON_RECORDS):
        c.put(c.names[0], f"common-{i}".encode(), [i], scope=Scope.COMMON)
    c.run(0.5)
    held = {x: sum(1 for _ in c.stores[x].records()) for x in c.names}
    return {"entries_per_node": max(held.values()), "entries_total": sum(held.values()),
            "sync_bytes": c.stats.bytes - b1 - idle_b, "sync_datagrams": c.stats.sent - s1 - idle_s}


def groups_run(ctx: DemoContext) -> str:
    per_rec = bytes_per_record()
    rows = []
    for n in GROUP_SIZES:
        cyc, mesh = simulate(n, 1), simulate(n, n - 1)
        for r in (cyc, mesh):
            r["memory_bytes_per_node"] = round(r["entries_per_node"] * per_rec)
        rows.append({"nodes": n, "cyclic": cyc, "mesh": mesh,
                     "memory_ratio": round(cyc["entries_total"] / mesh["entries_total"], 3),
                     "traffic_ratio": round(cyc["sync_bytes"] / mesh["sync_bytes"], 3)})
    ctx.mem["rows"] = rows
    ctx.figures["bytes_per_entry"] = round(per_rec)
    ctx.figures["headline"] = "cyclic / full mesh entries: " + ", ".join(
        f"{r['nodes']} nodes {r['memory_ratio']:.2f}" for r in rows)
    ctx.figures["groups"] = rows
    lines = [f"{'nodes':>5} {'entries/node cyclic':>20} {'full mesh':>10} {'memory':>7} "
             f"{'sync KiB cyclic':>16} {'full mesh':>10} {'traffic':>8}"]
    for r in rows:
        c, m = r["cyclic"], r["mesh"]
        lines.append(f"{r['nodes']:>5} {c['entries_per_node']:>20} {m['entries_per_node']:>10} "
                     f"{r['memory_ratio']:>7.2f} {c['sync_bytes'] / 1024:>16.1f} "
                     f"{m['sync_bytes'] / 1024:>10.1f} "
                     f"{r['traffic_ratio']:>8.2f}")
    lines.append(f"(one entry ~{per_rec:.0f} B in memory; {RECORDS_PER_NODE} connections per node "
                 f"+ {COMMON_RECORDS} common records)")
    return "\n".join(lines)


def groups_memory(ctx: DemoContext) -> Check:
    rows = ctx.mem.get("rows", [])
    bad = []
    for r in rows:
        # cyclic with one backup holds own + one peer's (2R) where a mesh holds everyone's (nR);
        # common state is held everywhere either way: the "small constant".
        bound = 2 / r["nodes"] + COMMON_RECORDS / RECORDS_PER_NODE
        if r["memory_ratio"] > bound:
            bad.append(f"{r['nodes']} nodes: {r['memory_ratio']} > {bound:.2f}")
    text = "; ".join(f"{r['nodes']} nodes: {r['memory_ratio']:.2f} of a full mesh" for r in rows)
    return Check(bool(rows) and not bad, text + (f"; over the bound: {bad}" if bad else ""))


def groups_traffic(ctx: DemoContext) -> Check:
    rows = ctx.mem.get("rows", [])
    ratios = [r["traffic_ratio"] for r in rows]
    falling = all(a > b for a, b in itertools.pairwise(ratios))
    return Check(bool(rows) and all(x < 1 for x in ratios) and falling,
                 "; ".join(f"{r['nodes']} nodes: {r['traffic_ratio']:.2f} of the mesh's bytes" for r in rows))


BACKUP_GROUPS = Scenario(
    name="backup-groups",
    title="Cyclic backup groups against a full mesh: memory and sync traffic for 3, 4 and 6 nodes",
    teaches="With cyclic backup groups each node's connections go to one backup, so every node "
            "holds its own share and one peer's, whatever the cluster size; a full mesh sends "
            "every change to every node and holds everything everywhere. Common state (FTP "
            "expectations, blocklists) goes to all nodes either way.",
    needs_lab=False,
    steps=(
        Step(f"Simulate clusters of {', '.join(map(str, GROUP_SIZES))} nodes (sync/sim.py, real agents, "
             "simulated links): cyclic groups (one backup) and a full mesh, the same connections.",
             groups_run,
             (Expectation("cyclic holds at most 2/n of the mesh's entries (+ common state)", groups_memory),
              Expectation("cyclic sends fewer sync bytes, and the saving grows with the cluster",
                          groups_traffic))),
    ),
)
