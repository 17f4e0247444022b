"""`syncwall bench NAME`: DESIGN.md's "Measurements", repeated, baselines measured in the same run.

One module per bench (demos.bench.failover, ...), the lab link in demos.bench.lab, the
statistics in demos.bench.stats. Each bench prints progress lines on stderr and, with
--json, one JSON object on stdout (figures as {"median", "min", "max", "spread", "p99",
"n", "samples"}). Exit 0 when the bench ran, whatever the figures; 1 when it could not run
(the message says why; with --json stdout still ends with one object, {"bench", "error"}).
Targets are reported beside the figures, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from demos.baselines import BenchError
from demos.bench.block import bench_block
from demos.bench.chaos import bench_chaos
from demos.bench.conn_rate import bench_conn_rate
from demos.bench.console import bench_console
from demos.bench.failover import bench_failover
from demos.bench.false_failover import bench_false_failover
from demos.bench.ftp import bench_ftp
from demos.bench.lab import Progress, machine
from demos.bench.lossless_cost import bench_lossless
from demos.bench.memory import bench_memory
from demos.bench.partition import bench_partition
from demos.bench.peers import bench_peers
from demos.bench.resync import bench_resync
from demos.bench.scale import bench_scale
from demos.bench.stats import median, p99, percentile, ratio, readable, spread, summarize
from demos.bench.sync_latency import bench_sync_latency
from demos.bench.throughput import bench_throughput

Bench = Callable[[int, str | None, Progress], dict[str, Any]]

# name -> (the bench, its default number of runs)
BENCHES: dict[str, tuple[Bench, int]] = {
    "chaos": (bench_chaos, 2),
    "throughput": (bench_throughput, 3),
    "conn-rate": (bench_conn_rate, 3),
    "sync-latency": (bench_sync_latency, 3),
    "failover": (bench_failover, 5),
    "false-failover": (bench_false_failover, 1),
    "lossless": (bench_lossless, 4),
    "ftp": (bench_ftp, 3),
    "resync": (bench_resync, 3),
    "memory": (bench_memory, 3),
    "peers": (bench_peers, 3),
    "scale": (bench_scale, 1),
    "console": (bench_console, 3),
    "partition": (bench_partition, 2),
    "block": (bench_block, 5),
}


def run_bench(name: str, as_json: bool, lab: str | None, runs: int) -> int:
    """Run one bench; print its JSON (or a readable summary) on stdout. 0 when it ran."""
    if name not in BENCHES:
        why = f"no bench {name!r}; benches are {', '.join(BENCHES)}"
        sys.stderr.write(f"syncwall: {why}\n")
        _json_error(as_json, name, why)
        return 2
    fn, default_runs = BENCHES[name]
    runs = runs or default_runs
    progress = Progress(name)
    t0 = time.monotonic()
    info = machine()
    progress(f"{runs} run(s) on {info['cpus']} CPUs ({info['cpu_model']}), load {info['loadavg_at_start']}")
    try:
        result = fn(runs, lab, progress)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        sys.stderr.write(f"syncwall: bench {name} could not run: {e}\n")
        _json_error(as_json, name, str(e))
        return 1
    except Exception as e:  # a bug in the bench: the traceback for us, still one object for a script
        traceback.print_exc()
        _json_error(as_json, name, f"{type(e).__name__}: {e}")
        return 1
    doc = {"bench": name, "runs": runs, "elapsed_s": round(time.monotonic() - t0, 1), "machine": info,
           "command": f"syncwall bench {name} --json --runs {runs}", **result}
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write("\n".join(readable(doc)) + "\n")
    return 0


def _json_error(as_json: bool, name: str, why: str) -> None:
    """With --json, a bench that could not run still ends stdout with one JSON object."""
    if as_json:
        sys.stdout.write(json.dumps({"bench": name, "error": why}) + "\n")


__all__ = ["BENCHES", "BenchError", "median", "p99", "percentile", "ratio", "readable", "run_bench",
           "spread", "summarize"]
