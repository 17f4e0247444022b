"""The false-failover bench's count and the failover bench's UDP reading, on events and iperf3
output in their real shapes (no lab)."""

from __future__ import annotations

from typing import Any

from demos.bench.failover import _udp_end
from demos.bench.false_failover import false_declarations


def ev(t: float, node: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"t": t, "node": node, "kind": kind, "text": kind, **extra}


def test_a_peer_down_nobody_caused_is_false_and_one_after_a_kill_is_not() -> None:
    events = [ev(1, "n2", "peer-down", peer="n1", closed=False),
              ev(1.1, "n2", "takeover", promoted=4, detect_to_accept_ms=110.0, buckets=[1]),
              ev(1.2, "n2", "takeover", promoted=4, buckets=[1]),  # the engine's own: counted once
              ev(5, "n3", "action", action="kill"),
              ev(5.01, "n1", "peer-down", peer="n3", closed=True),
              ev(5.02, "n1", "takeover", promoted=3, detect_to_accept_ms=9.0, buckets=[3]),
              ev(9, "n3", "action", action="revive"),
              ev(12, "n1", "peer-down", peer="n3", closed=True)]
    down, take = false_declarations(events)
    assert [(e["node"], e["peer"], e["t"]) for e in down] == [("n2", "n1", 1), ("n1", "n3", 12)]
    assert [e["t"] for e in take] == [1.1]


def test_udp_loss_is_the_receivers_count_and_out_of_order_sums_the_streams() -> None:
    doc = {"end": {"sum": {"packets": 6900, "lost_packets": 12, "lost_percent": 0.17},
                   "streams": [{"udp": {"out_of_order": 2}}, {"udp": {"out_of_order": 1}}]}}
    assert _udp_end(doc) == {"packets": 6900, "lost": 12, "out_of_order": 3}
    newer = {"end": {"sum_sent": {"packets": 7000}, "sum_received": {"packets": 6990, "lost_packets": 10},
                     "streams": []}}
    assert _udp_end(newer) == {"packets": 7000, "lost": 10, "out_of_order": 0}
