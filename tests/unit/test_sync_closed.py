"""SyncAgent.peer_closed in the simulator: the kernel's word that a peer's process is gone
takes it over at once, with no heartbeat missed; a close of another incarnation, or mere
silence (a slow peer), does not."""

from __future__ import annotations

from typing import Any

from sync.agent import BucketsGained, PeerDown, PeerUp, SyncEvent
from sync.sim import SimCluster
from sync.wire import BadFrameKind


def _cluster(n: int = 3, **kw: Any) -> SimCluster:
    c = SimCluster(n, buckets=12, heartbeat_ms=10, miss_limit=5, **kw)
    c.start()
    assert c.run_until(c.all_active, 2.0), "cold start did not end with every node active"
    for x in c.names:
        for i in range(20):
            c.put(x, f"{x}-{i}".encode(), [i])
    c.run(0.05)
    for x in c.names:
        c.events[x].clear()
    return c


def _of(c: SimCluster, node: str, kind: type[SyncEvent]) -> list[Any]:
    return [e for e in c.events[node] if isinstance(e, kind)]


def test_a_closed_peer_is_taken_over_before_a_single_heartbeat_is_missed() -> None:
    c = _cluster()
    t_kill = c.now
    c.kill("n1", closed=True)
    # The takeover is decided in the close itself: no simulated time passes before it.
    assert _of(c, "n2", PeerDown) == _of(c, "n3", PeerDown) == [PeerDown("n1", closed=True)]
    gained = _of(c, "n2", BucketsGained)
    assert gained and gained[0].buckets == (1, 4, 7, 10) and gained[0].promoted == 20
    assert c.now == t_kill
    assert c.agents["n2"].stats()["counters"]["peer-closed"] == 1
    c.run(0.2)  # well past the heartbeat timeout: the same peer is not declared down twice
    assert len(_of(c, "n2", PeerDown)) == 1 and len(_of(c, "n3", PeerDown)) == 1
    owners = c.owners()
    assert all(v in (["n2"], ["n3"]) for v in owners.values()), owners


def test_a_close_of_a_stale_incarnation_kills_nothing() -> None:
    c = _cluster()
    old = c.agents["n1"].incarnation
    c.kill("n1")
    c.revive("n1")  # a new process, heard by the others before the old close arrives
    assert c.run_until(c.all_active, 2.0)
    for x in c.names:
        c.events[x].clear()
    assert c.agents["n2"].peer_closed("n1", old, c.now) is False
    assert c.agents["n2"].peer_closed("n1", old + 1, c.now) is False
    assert c.agents["n2"].peer_closed("nobody", old, c.now) is False
    c.run(0.2)
    assert not _of(c, "n2", PeerDown) and not _of(c, "n3", PeerDown)
    assert c.all_active()
    counters = c.agents["n2"].stats()["counters"]
    assert counters["peer-closed-stale"] == 3 and "peer-closed" not in counters


def test_a_slow_peer_is_not_failed_before_the_heartbeat_timeout() -> None:
    c = _cluster()
    # A paused process keeps its sockets open: the others only hear silence.
    c.cut.add("n1")
    peer = c.agents["n2"].peers["n1"]
    c.step(0.001)
    while c.now - peer.last_heard <= c.base.dead_s:
        silent_ms = (c.now - peer.last_heard) * 1e3
        assert not _of(c, "n2", PeerDown), f"declared down after {silent_ms:.0f} ms of silence"
        c.step(0.001)
    assert c.run_until(lambda: bool(_of(c, "n2", PeerDown)), 0.05)  # then the timeout does it
    assert _of(c, "n2", PeerDown) == [PeerDown("n1", closed=False)]
    assert "peer-closed" not in c.agents["n2"].stats()["counters"]


def test_a_datagram_of_the_closed_process_arriving_late_does_not_bring_it_back() -> None:
    c = _cluster()
    late: list[tuple[str, bytes]] = []
    c.tap = lambda now, src, dst, data: late.append((dst, data)) if src == "n1" else None
    c.run(0.02)  # n1's heartbeats, recorded as they left
    assert late
    c.kill("n1", closed=True)
    for dst, data in late[-4:]:
        c.inject(dst, c.addrs["n1"], data)
    assert not _of(c, "n2", PeerUp) and not _of(c, "n3", PeerUp)
    assert c.agents["n2"].stats()["bad_frames"].get(BadFrameKind.STALE.value, 0) >= 1
    c.run(0.2)
    assert len(_of(c, "n2", PeerDown)) == 1


def test_the_closed_node_restarted_is_welcomed_back() -> None:
    c = _cluster()
    c.kill("n1", closed=True)
    c.run(0.01)
    c.revive("n1")
    assert c.run_until(c.all_active, 2.0)
    assert c.agents["n1"].owned_buckets == [1, 4, 7, 10]
    c.run(0.05)
    assert {x for x in c.holders(b"n2-0")} == {"n2", "n3"}
