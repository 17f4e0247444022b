"""SyncAgent.heard and SyncAgent.fence in the simulator: a peer heard on any path is not
failed; a node that fences itself hands its buckets to its backups and rejoins after."""

from __future__ import annotations

from sync.agent import PeerDown
from sync.sim import SimCluster


def _cluster() -> SimCluster:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    for x in c.names:
        for i in range(10):
            c.put(x, f"{x}-{i}".encode(), [i])
    c.run(0.05)
    for x in c.names:
        c.events[x].clear()
    return c


def _probes(c: SimCluster, among: list[str]) -> None:
    """Every node of `among` hears every other one on some data path."""
    for x in among:
        for y in among:
            if x != y:
                c.agents[x].heard(y, c.agents[y].incarnation, c.now)


def _run_with_probes(c: SimCluster, among: list[str], seconds: float) -> None:
    for _ in range(int(seconds / 0.01)):
        _probes(c, among)
        c.run(0.01)


def test_a_peer_silent_on_sync_but_heard_on_a_data_path_is_not_failed() -> None:
    c = _cluster()
    c.cut = {"n1"}  # no sync datagram to or from n1
    _run_with_probes(c, c.names, 0.5)
    assert not any(isinstance(e, PeerDown) for x in c.names for e in c.events[x])
    assert c.agents["n2"].owned_buckets == [2, 5, 8, 11]


def test_without_probes_the_same_cut_fails_the_peer() -> None:
    c = _cluster()
    c.cut = {"n1"}
    c.run(0.5)
    assert any(isinstance(e, PeerDown) and e.name == "n1" for e in c.events["n2"])


def test_heard_ignores_an_unknown_incarnation_or_peer() -> None:
    c = _cluster()
    a = c.agents["n2"]
    before = a.peers["n1"].last_heard
    assert not a.heard("n1", 12345, c.now + 1)
    assert not a.heard("n9", c.agents["n1"].incarnation, c.now + 1)
    assert a.peers["n1"].last_heard == before


def test_a_fenced_node_hands_its_buckets_to_its_backup_then_rejoins_resynced() -> None:
    c = _cluster()
    c.agents["n1"].fence(True, c.now)
    assert c.agents["n1"].owned_buckets == []
    assert c.run_until(lambda: c.agents["n2"].owned_buckets == [1, 2, 4, 5, 7, 8, 10, 11], 0.5)
    assert all(len(o) <= 1 for o in c.owners().values())
    # n2 promoted n1's records from its backup copy.
    assert c.stores["n2"].get(b"n1-3") is not None and c.stores["n2"].get(b"n1-3").owner == "n2"
    c.run(0.5)
    assert c.agents["n1"].mode.name == "JOINING", "fenced: it must not become active again"
    c.agents["n1"].fence(False, c.now)
    assert c.run_until(c.all_active, 2.0)
    assert c.agents["n1"].owned_buckets == [1, 4, 7, 10]
    assert all(len(o) == 1 for o in c.owners().values())
