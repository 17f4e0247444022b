"""Every node reaches the leader's epoch. The leader activates a joiner only once the joiner
announces the leader's epoch, so a joiner that holds the leader's states at another epoch
must catch up (or the leader must): before the fix such a joiner stayed joining for good, as
a node once did on a lab after n2's sync link flapped every 20 ms and was healed."""

from __future__ import annotations

from sync.membership import compute_view
from sync.sim import SimCluster


def _cluster() -> SimCluster:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5, majority=True)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    return c


def _run_with_probes(c: SimCluster, seconds: float) -> None:
    """Path probes on the data segments: every pair that is not cut hears each other."""
    for _ in range(int(seconds / 0.01)):
        for x in c.names:
            for y in c.names:
                if x != y and not {x, y} & c.cut and frozenset((x, y)) not in c.cut_pairs:
                    c.agents[x].heard(y, c.agents[y].incarnation, c.now)
        c.run(0.01)


def _fence_n2(c: SimCluster) -> None:
    """n2 fenced: joining in every view."""
    c.agents["n2"].fence(True, c.now)
    _run_with_probes(c, 0.3)
    assert all(a.view.state("n2").value == "joining" for a in c.agents.values())


def _where(c: SimCluster) -> dict[str, tuple[str, int, list[str]]]:
    return {x: (a.mode.name, a.view.epoch, [s.value for s in a.view.states]) for x, a in c.agents.items()}


def test_a_joiner_failed_and_back_before_the_view_without_it_reached_it_is_activated() -> None:
    """n2, joining, is silent everywhere long enough to be failed (epoch E+1, which it never
    gets); n1 hears it again first and makes it joining again (E+2: the states n2 holds at E),
    n3 only later, once it holds E+2 too. Nobody ever sends n2 a view with other states."""
    c = _cluster()
    _fence_n2(c)
    e = c.agents["n1"].view.epoch
    c.cut = {"n2"}
    # A joiner is failed only after the join patience (1 s here), not the failure-detection time.
    _run_with_probes(c, c.base.join_patience_s + 0.05)
    c.cut = set()
    c.cut_pairs = {frozenset(("n2", "n3"))}
    _run_with_probes(c, 0.1)
    c.cut_pairs = set()
    _run_with_probes(c, 0.3)
    assert c.agents["n1"].view.epoch == e + 2, _where(c)  # the precondition: failed, then back
    c.agents["n2"].fence(False, c.now)
    _run_with_probes(c, 2.0)
    assert c.all_active(), _where(c)
    assert len({a.view.epoch for a in c.agents.values()}) == 1
    assert all(len(o) == 1 for o in c.owners().values())


def test_the_leader_behind_a_joiner_proposes_above_the_epoch_it_announces() -> None:
    """n2 holds the leader's states at epoch + 1 (a view the leader never got) and shares it
    with nobody: the leader, behind the epoch n2's heartbeats announce, proposes above it
    after the failure-detection time."""
    c = _cluster()
    _fence_n2(c)
    n2 = c.agents["n2"]
    v = n2.view
    n2._takeover.adopt(compute_view(v.nodes, v.members, 12, v.k, v.epoch + 1, "n2"), c.now)
    for p in n2.peers.values():
        p.view_sent_epoch = 1 << 30  # as if already shared: n2 sends its view to nobody
    n2.fence(False, c.now)
    _run_with_probes(c, 2.0)
    assert c.all_active(), _where(c)
    assert all(len(o) == 1 for o in c.owners().values())
