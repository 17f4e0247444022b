"""Which gained buckets count as unplanned (their held packets replayed, lossless takeover):
only a gain from an owner that stopped, and only while this node still owns the bucket. A
bucket gained unplanned and lost again before the node replayed (two views in one loop turn)
must not stay marked: its next, planned gain (a handback, a leave) would replay packets the
live owner had already forwarded."""

from __future__ import annotations

from sync.membership import MemberState, View, compute_view
from sync.sim import SimCluster


def _cluster() -> SimCluster:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    return c


def _with(v: View, node: str, state: MemberState, epoch: int) -> View:
    members = dict(v.members)
    members[node] = state
    return compute_view(v.nodes, members, len(v.bucket_owner), v.k, epoch, "n1")


def test_a_bucket_gained_unplanned_then_lost_is_not_replayed_at_its_next_planned_gain() -> None:
    c = _cluster()
    n1 = c.agents["n1"]
    v0 = n1.view
    assert v0.backups_of("n3") == ("n1",), v0.backups  # n1 adopts n3's buckets
    n3s = set(v0.buckets_of("n3"))
    # n3 fails: n1 gains its buckets unplanned (n3 stopped; what it held may be unforwarded).
    n1._takeover.adopt(_with(v0, "n3", MemberState.FAILED, v0.epoch + 1), c.now)
    assert n3s <= set(n1.owned_buckets) and n3s <= n1._ctx.unplanned_gain  # the precondition
    # n3 is back before n1 replayed: the buckets go home.
    n1._takeover.adopt(_with(v0, "n3", MemberState.ACTIVE, v0.epoch + 2), c.now)
    assert not n3s & set(n1.owned_buckets)
    # n3 leaves gracefully: a planned gain, n3 forwarded every packet until the move.
    n1._takeover.adopt(_with(v0, "n3", MemberState.OFFLINE, v0.epoch + 3), c.now)
    assert n3s <= set(n1.owned_buckets)
    assert n1.take_unplanned(n3s) == set(), "a planned gain replayed a stale unplanned mark"


def test_an_unplanned_gain_still_owned_is_replayed_once() -> None:
    c = _cluster()
    n1 = c.agents["n1"]
    v0 = n1.view
    n3s = set(v0.buckets_of("n3"))
    n1._takeover.adopt(_with(v0, "n3", MemberState.FAILED, v0.epoch + 1), c.now)
    # Another view in the same turn that leaves n3's buckets with n1 keeps them unplanned.
    n1._takeover.adopt(_with(v0, "n3", MemberState.FAILED, v0.epoch + 2), c.now)
    assert n1.take_unplanned(n3s) == n3s
    assert n1.take_unplanned(n3s) == set(), "asked once"
