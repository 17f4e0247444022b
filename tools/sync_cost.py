"""Sync's cost per record and per loop turn, in-process (no lab): three bindings over the
simulated cluster (tests/unit/engine_sim.py), real engines, agents and wire.

  bulk N   n1 opens N connections in one turn; time its flush (flush_engine -> datagrams)
           and its backup's receive_many, per record; blocks kept after the flush
  turns K  3000 turns of K new connections each (the lab's case: a turn holds a few), each
           acked as the lab would (the backup's tick); time per turn

Run from the repository: `.venv/bin/python tools/sync_cost.py bulk 2000` or `turns 1`.
Alternate it with a checkout of the code before a change (fresh process each) to compare."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.config import SyncConfig
from tests.unit.engine_packets import C1, S1, tcp
from tests.unit.engine_sim import SimNodes


def _sim() -> SimNodes:
    # As the lab's nodes: no RecordApplied per record (where the field exists; older code has none).
    fields = SyncConfig.__dataclass_fields__
    kw: dict[str, Any] = {"record_events": False} if "record_events" in fields else {}
    return SimNodes(3, buckets=6, **kw).start()


def _turn_of(n: int) -> tuple[SimNodes, float]:
    """A cluster whose n1 has `n` new connections waiting for its flush."""
    sim = _sim()
    b = sim.b["n1"]
    mark = sim.bucket_of("n1")
    for i in range(n):
        b.engine.process(tcp(C1, S1, 1024 + i % 60000, 5001 + i // 60000, "S"), sim.now, mark)
    gc.collect()
    return sim, sim.now


def bulk(n: int) -> str:
    # Memory, on one cluster (tracemalloc slows what it traces) ...
    sim, now = _turn_of(n)
    tracemalloc.start()
    sim.b["n1"].flush_engine(now)
    sim.b["n1"].datagrams()
    ours = [tracemalloc.Filter(True, "*/sync/*"), tracemalloc.Filter(True, "*/engine/*")]
    kept = sum(s.count for s in tracemalloc.take_snapshot().filter_traces(ours).statistics("filename"))
    tracemalloc.stop()
    # ... time, on another.
    sim, now = _turn_of(n)
    b = sim.b["n1"]
    t0 = time.perf_counter()
    b.flush_engine(now)
    out = b.datagrams()
    t1 = time.perf_counter()
    by_dst: dict[str, list[tuple[bytes, tuple[str, int]]]] = {}
    for addr, data in out:
        dst = next(x for x, a in sim.c.addrs.items() if a == addr)
        by_dst.setdefault(dst, []).append((data, sim.c.addrs["n1"]))
    t2 = time.perf_counter()
    for dst, dgs in by_dst.items():
        sim.b[dst].receive_many(dgs, now)
    t3 = time.perf_counter()
    return (f"bulk N={n}: send {(t1 - t0) / n * 1e6:.2f} us/record, receive {(t3 - t2) / n * 1e6:.2f} "
            f"us/record, {len(out)} datagrams, {kept} blocks kept ({kept / n:.2f} per record)")


def turns(k: int, count: int = 3000) -> str:
    sim = _sim()
    b1 = sim.b["n1"]
    backup = sim.backup_of("n1")
    b2 = sim.b[backup]
    a1, a2 = sim.c.addrs["n1"], sim.c.addrs[backup]
    mark = sim.bucket_of("n1")
    now = sim.now
    send = recv = 0.0
    port = 1024
    for _ in range(count):
        for _ in range(k):
            b1.engine.process(tcp(C1, S1, port % 60000 + 1024, 5001 + port // 60000, "S"), now, mark)
            port += 1
        t0 = time.perf_counter()
        b1.flush_engine(now)
        out = b1.datagrams()
        t1 = time.perf_counter()
        dgs = [(d, a1) for addr, d in out if addr == a2]
        t2 = time.perf_counter()
        b2.receive_many(dgs, now)
        t3 = time.perf_counter()
        send += t1 - t0
        recv += t3 - t2
        now += 0.001
        b2.tick(now)  # the delayed, cumulative ack
        b1.receive_many([(d, a2) for addr, d in b2.datagrams() if addr == a1], now)
        b1.datagrams()
    return f"turns K={k}: send {send / count * 1e6:.1f} us/turn, receive {recv / count * 1e6:.1f} us/turn"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "bulk"
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else (2000 if what == "bulk" else 1)
    print(bulk(arg) if what == "bulk" else turns(arg))
