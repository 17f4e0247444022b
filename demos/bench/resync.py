"""`syncwall bench resync`: a joining node's bulk resync of N entries, in the sync simulator."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from demos.baselines import BenchError
from demos.bench.lab import Progress
from demos.bench.stats import summarize


def fill_store(store: Any, owner: str, n: int, buckets: Sequence[int]) -> None:
    from sync.records import Record, Scope

    for i in range(n):
        key = i.to_bytes(4, "big") + owner.encode().ljust(4, b"\0") + bytes(5)  # 13-byte 5-tuple key
        store.put_local(Record(key, Scope.NODE, owner, 1, buckets[i % len(buckets)],
                               [6, 3, 1000 + i, 5001, 1_700_000_000, 0], False))


def bench_resync(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    """A joining node's bulk resync of N entries, in the sync simulator (real agents, simulated links)."""
    from sync.agent import ResyncComplete
    from sync.sim import SimCluster

    sizes = [int(x) for x in os.environ.get("SWBENCH_RESYNC_SIZES", "10000,100000").split(",")]
    out: dict[str, Any] = {"what": "n2 rejoins a 2-node cluster where n1 owns N entries that n2 backs up: "
                                   "wall time (all agents' CPU, one process) and simulated time from "
                                   "n2's start to its ResyncComplete",
                           "where": "sync/sim.py SimCluster: real SyncAgent code and wire codec, "
                                    "in-memory links (0.2 ms delay), not the lab",
           "notes": ["both times include any wait of the joining agent to hear its peers "
                     "before it asks for state"],
           "sizes": {}}
    for n in sizes:
        walls: list[float] = []
        sims: list[float] = []
        got: list[float] = []
        for i in range(runs):
            sim = SimCluster(2, seed=i)
            sim.start()
            if not sim.run_until(sim.all_active, 5.0):
                raise BenchError("the simulated cluster did not settle")
            sim.kill("n2")
            sim.run_until(lambda s=sim: len(s.agents["n1"].owned_buckets) == s.base.buckets, 5.0)  # type: ignore[misc]
            fill_store(sim.stores["n1"], "n1", n, sim.agents["n1"].owned_buckets)
            t_sim = sim.now
            t0 = time.perf_counter()
            sim.revive("n2")

            def done(s: SimCluster = sim) -> bool:
                return any(isinstance(e, ResyncComplete) for e in s.events["n2"])

            sim.events["n2"].clear()
            if not sim.run_until(done, 60.0):
                raise BenchError(f"n2 did not finish resyncing {n} entries in 60 s of simulated time")
            walls.append(time.perf_counter() - t0)
            sims.append(sim.now - t_sim)
            ev = next(e for e in sim.events["n2"] if isinstance(e, ResyncComplete))
            got.append(ev.records)
            progress(f"{n} entries, run {i + 1}/{runs}: {walls[-1]:.2f} s wall, {sims[-1]:.3f} s simulated, "
                     f"{ev.records} received")
        out["sizes"][str(n)] = {"wall_s": summarize(walls), "simulated_s": summarize(sims),
                                "records_received": summarize(got, 0)}
    out["targets"] = {"100000": "wall_s <= 1"}
    return out
