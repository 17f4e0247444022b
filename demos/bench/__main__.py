"""`python -m demos.bench NAME [--json]`, and `python -m demos.bench sync-peer ...` (one sync agent
of the sync-latency bench, started by the bench itself inside a namespace)."""

from __future__ import annotations

import sys

from demos.bench import run_bench
from demos.bench.sync_latency import sync_peer_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["sync-peer"]:
        sys.exit(sync_peer_main(sys.argv[2:]))
    sys.exit(run_bench(sys.argv[1], as_json="--json" in sys.argv, lab=None, runs=0))
