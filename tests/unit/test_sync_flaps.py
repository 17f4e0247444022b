"""Flapping in the simulator: a peer declared down for missed heartbeats that answers later,
the same process, is counted with how late it answered (the node cards show it); a restart
or a closed process is no flap."""

from __future__ import annotations

from typing import Any

from sync.sim import SimCluster


def _cluster() -> SimCluster:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5)
    c.start()
    assert c.run_until(c.all_active, 2.0), "cold start did not end with every node active"
    return c


def _peer(c: SimCluster, node: str, peer: str) -> dict[str, Any]:
    p: dict[str, Any] = c.agents[node].stats()["peers"][peer]
    return p


def test_a_peer_silent_past_the_deadline_that_answers_later_is_a_flap() -> None:
    c = _cluster()
    assert _peer(c, "n1", "n3")["flaps"] == 0 and _peer(c, "n1", "n3")["late_ms"] is None
    c.cut = {"n3"}
    c.run(0.08)  # dead after 50 ms of silence, heard again 30 ms or so later
    assert not c.agents["n1"].peers["n3"].up
    c.cut = set()
    c.run(0.05)
    p = _peer(c, "n1", "n3")
    assert p["flaps"] == 1 and 10 <= p["late_ms"] <= 80, p
    assert 0 <= p["flap_age_s"] < 0.1
    assert c.agents["n1"].stats()["counters"]["peer-flapped"] == 1
    assert _peer(c, "n1", "n2")["flaps"] == 0  # n2 never went quiet
    c.run(1.0)
    assert _peer(c, "n1", "n3")["flap_age_s"] >= 1.0  # it ages, for the card to let it go


def test_a_restarted_or_closed_peer_is_no_flap() -> None:
    c = _cluster()
    c.kill("n3")
    c.run(0.1)
    c.revive("n3")  # a new process: a restart
    assert c.run_until(c.all_active, 3.0)
    assert _peer(c, "n1", "n3")["flaps"] == 0
    c.kill("n2", closed=True)
    c.run(0.05)
    c.revive("n2")
    assert c.run_until(c.all_active, 3.0)
    assert _peer(c, "n1", "n2")["flaps"] == 0
