"""Every node reaches the leader's epoch: a joiner that holds a view with the same states as the
leader's but a higher epoch (it learned or made one the leader never got) announces an epoch
the leader's never matches, and the leader activates a joiner only at its own epoch. Before
the fix such a joiner stayed joining for good (seen on a lab after n2's sync link flapped
every 20 ms, then healed)."""

from __future__ import annotations

from sync.membership import compute_view
from sync.sim import SimCluster


def _joiner_ahead_of_the_leader() -> SimCluster:
    """n2 fenced (so joining in every view), then holding that same view at epoch + 1."""
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5, majority=True)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    n2 = c.agents["n2"]
    n2.fence(True, c.now)
    assert c.run_until(lambda: all(c.agents[x].view.state("n2").value == "joining" for x in c.names), 1.0)
    c.run(0.1)
    v = n2.view
    assert {c.agents[x].view.epoch for x in c.names} == {v.epoch}
    ahead = compute_view(v.nodes, v.members, 12, v.k, v.epoch + 1, "n2")
    n2._takeover.adopt(ahead, c.now)  # the view the leader never got: same states, epoch + 1
    return c


def test_a_joiner_one_epoch_ahead_with_the_same_states_is_activated() -> None:
    c = _joiner_ahead_of_the_leader()
    c.agents["n2"].fence(False, c.now)
    assert c.run_until(c.all_active, 3.0), {
        x: (a.mode.name, a.view.epoch, [s.value for s in a.view.states]) for x, a in c.agents.items()}
    assert len({a.view.epoch for a in c.agents.values()}) == 1
    assert all(len(o) == 1 for o in c.owners().values())


def test_the_leader_catches_up_from_heartbeats_alone() -> None:
    """The joiner's view never reaches the leader (n2 does not share it): the leader, behind
    the epoch n2's heartbeats announce, proposes above it after the failure-detection time."""
    c = _joiner_ahead_of_the_leader()
    n2 = c.agents["n2"]
    for p in n2.peers.values():
        p.view_sent_epoch = 1 << 30  # as if already shared: n2 sends its view to nobody
    n2.fence(False, c.now)
    assert c.run_until(c.all_active, 3.0), {
        x: (a.mode.name, a.view.epoch, [s.value for s in a.view.states]) for x, a in c.agents.items()}
    assert all(len(o) == 1 for o in c.owners().values())
