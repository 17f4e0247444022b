"""Majority rule in the simulator: cut on every path, only the side holding a majority of the
cluster (an even split: the side with the lowest node) adopts buckets; the other side fails
closed (`attention`: it forwards no bucket at all); at no step is a bucket owned twice."""

from __future__ import annotations

from sync.membership import has_majority
from sync.sim import SimCluster


def _cluster(n: int) -> SimCluster:
    c = SimCluster(n, buckets=12, heartbeat_ms=10, miss_limit=5, majority=True)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    for x in c.names:
        for i in range(5):
            c.put(x, f"{x}-{i}".encode(), [i])
    c.run(0.05)
    return c


def _run_checking_owners(c: SimCluster, seconds: float) -> None:
    for _ in range(int(seconds / 0.001)):
        c.step(0.001)
        twice = {b: o for b, o in c.owners().items() if len(o) > 1}
        assert not twice, f"at {c.now:.3f} s buckets owned twice: {twice}"


def test_has_majority() -> None:
    ring = ["n1", "n2", "n3", "n4"]
    assert has_majority(ring[:3], {"n2", "n3"}, ring)
    assert not has_majority(ring[:3], {"n1"}, ring)
    assert has_majority(ring, {"n1", "n4"}, ring) and not has_majority(ring, {"n2", "n3"}, ring)
    assert has_majority(["n3"], {"n3"}, ring)


def test_an_isolated_node_fails_closed_and_the_majority_adopts_its_buckets() -> None:
    c = _cluster(3)
    c.cut = {"n1"}
    _run_checking_owners(c, 0.5)
    n1 = c.agents["n1"]
    assert n1.attention and n1.owned_buckets == [] and n1.stats()["attention"]
    assert sorted(c.agents["n2"].owned_buckets + c.agents["n3"].owned_buckets) == list(range(1, 13))
    c.cut = set()
    _run_checking_owners(c, 1.0)
    assert c.run_until(c.all_active, 2.0)
    assert not n1.attention and n1.owned_buckets == [1, 4, 7, 10]
    assert all(len(o) == 1 for o in c.owners().values())


def test_an_even_split_leaves_the_buckets_to_the_side_of_the_lowest_node() -> None:
    c = _cluster(4)
    c.groups = [{"n1", "n4"}, {"n2", "n3"}]
    _run_checking_owners(c, 0.5)
    assert c.agents["n2"].attention and c.agents["n3"].attention
    assert not c.agents["n1"].attention and not c.agents["n4"].attention
    assert sorted(c.agents["n1"].owned_buckets + c.agents["n4"].owned_buckets) == list(range(1, 13))
    c.groups = []
    _run_checking_owners(c, 1.0)
    assert c.run_until(c.all_active, 2.0)
    assert all(len(o) == 1 for o in c.owners().values())


def test_a_node_whose_peers_died_for_certain_keeps_forwarding_alone() -> None:
    c = _cluster(3)
    c.kill("n1", closed=True)
    c.kill("n2", closed=True)
    _run_checking_owners(c, 0.3)
    assert not c.agents["n3"].attention and c.agents["n3"].owned_buckets == list(range(1, 13))


def test_without_the_rule_an_isolated_node_takes_every_bucket() -> None:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    c.cut = {"n1"}
    c.run(0.5)
    assert c.agents["n1"].owned_buckets == list(range(1, 13)), "the split brain the rule prevents"
