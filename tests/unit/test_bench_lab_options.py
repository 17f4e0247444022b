"""The bench lab's start options: SWBENCH_NODES sets the node count of our own lab, a bench's
own count (resync's 2 nodes) wins, and a count that is not a number is refused with its name."""

from __future__ import annotations

import pytest

from demos.baselines import BenchError
from demos.bench.lab import up_options


def test_swbench_nodes_sets_the_count_unless_the_bench_sets_its_own() -> None:
    assert up_options(None, {}) == {}
    assert up_options(None, {"SWBENCH_NODES": "16"}) == {"nodes": 16}
    assert up_options({"nodes": 2}, {"SWBENCH_NODES": "16"}) == {"nodes": 2}
    given = {"backups": 1}
    assert up_options(given, {"SWBENCH_NODES": " 8 "}) == {"backups": 1, "nodes": 8}
    assert given == {"backups": 1}  # the caller's dict is left alone
    with pytest.raises(BenchError, match="SWBENCH_NODES"):
        up_options(None, {"SWBENCH_NODES": "many"})
