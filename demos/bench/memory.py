"""`syncwall bench memory`: entries per node, cyclic backup groups vs full mesh, and bytes per entry."""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

from demos.baselines import BenchError
from demos.bench.lab import Progress
from demos.bench.resync import fill_store
from demos.bench.stats import summarize


def _store_bytes(n: int) -> float:
    """Bytes per entry of MemoryStore holding n connection records (tracemalloc)."""
    from sync.records import MemoryStore

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = MemoryStore()
        fill_store(store, "n1", n, [1, 2, 3])
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del store
    return used / n


def bench_memory(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    from sync.records import Scope
    from sync.sim import SimCluster

    per_node_conns = int(os.environ.get("SWBENCH_CONNS_PER_NODE", "2000"))
    out: dict[str, Any] = {"what": f"each node owns {per_node_conns} connections; entries each node holds "
                                   "(own + backup copies) once synced, cyclic backup groups (1 backup) "
                                   "vs full mesh (every other node backs up)",
                           "where": "sync/sim.py SimCluster (real agents, in-memory links)",
                           "nodes": {}}
    for n in (3, 4, 6):
        row: dict[str, Any] = {}
        for label, backups in (("cyclic", 1), ("full_mesh", n - 1)):
            sim = SimCluster(n, backups=backups, seed=1)
            sim.start()
            if not sim.run_until(sim.all_active, 10.0):
                raise BenchError(f"the simulated {n}-node cluster did not settle")
            for name in sim.names:
                owned = sim.agents[name].owned_buckets
                for i in range(per_node_conns):
                    sim.put(name, f"{name}-{i}".encode().ljust(13, b"\0"), [6, 1, i],
                            bucket=owned[i % len(owned)])
                    if i % 200 == 0:
                        sim.step()
            sim.run(2.0)
            held = [sum(1 for r in sim.stores[x].records() if not r.deleted and r.scope is Scope.NODE)
                    for x in sim.names]
            row[label] = {"entries_per_node": summarize(held, 0), "backups": backups,
                          "sync_bytes": sim.stats.bytes, "sync_datagrams": sim.stats.sent}
            progress(f"{n} nodes {label}: entries per node {held}, {sim.stats.bytes:,} sync bytes")
        row["cyclic_vs_full_mesh"] = round(row["cyclic"]["entries_per_node"]["median"]
                                           / row["full_mesh"]["entries_per_node"]["median"], 3)
        out["nodes"][str(n)] = row
    sizes = [_store_bytes(20000) for _ in range(max(1, runs))]
    out["bytes_per_entry"] = {"store": "sync.records.MemoryStore, 13-byte key, 6-field record",
                              **summarize(sizes, 0)}
    per_entry = out["bytes_per_entry"]["median"]
    for row in out["nodes"].values():
        for label in ("cyclic", "full_mesh"):
            row[label]["bytes_per_node_est"] = int(row[label]["entries_per_node"]["median"] * per_entry)
    out["targets"] = {"3 nodes cyclic_vs_full_mesh": "<= 2/3 + a small constant"}
    return out
