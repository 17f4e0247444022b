"""Membership views, backup groups and what they cost in memory: three nodes in a cycle hold
2/3 of what a full mesh holds."""

from __future__ import annotations

import math

import pytest

from netns.spec import load_lab
from sync.membership import MemberState, compute_view, home_node, view_from_wire
from sync.policy import PeriodicSend, make_policy
from sync.records import Scope, SyncUsageError
from sync.sim import SimCluster

A, F, J, OFF = MemberState.ACTIVE, MemberState.FAILED, MemberState.JOINING, MemberState.OFFLINE
NODES = ("n1", "n2", "n3")


def test_default_lab_is_cyclic_and_buckets_start_at_one() -> None:
    v = compute_view(NODES, dict.fromkeys(NODES, A), 6, 1, 1)
    assert v.backups == {"n1": ["n2"], "n2": ["n3"], "n3": ["n1"]}
    assert v.bucket_owner == ("n1", "n2", "n3", "n1", "n2", "n3")
    assert [home_node(b, NODES) for b in (1, 2, 3, 4)] == ["n1", "n2", "n3", "n1"]
    assert v.backed_up_by("n1") == ["n3"]


def test_a_failed_node_is_replaced_by_its_successor_and_no_node_is_left_unbacked() -> None:
    v = compute_view(NODES, {"n1": F, "n2": A, "n3": A}, 6, 1, 2)
    assert v.bucket_owner == ("n2", "n2", "n3", "n2", "n2", "n3")
    assert v.backups == {"n1": [], "n2": ["n3"], "n3": ["n2"]}
    v = compute_view(NODES, {"n1": A, "n2": A, "n3": F}, 6, 1, 2)
    assert v.owner(3) == "n1" and v.backups["n2"] == ["n1"]


def test_joining_nodes_own_nothing_and_k_backups_are_configurable() -> None:
    v = compute_view(NODES, {"n1": A, "n2": J, "n3": A}, 6, 2, 3)
    assert v.buckets_of("n2") == [] and v.backups["n2"] == []
    assert v.with_joiners_active().buckets_of("n2") == [2, 5]
    v4 = compute_view(("a", "b", "c", "d"), dict.fromkeys("abcd", A), 8, 2, 1)
    assert v4.backups == {"a": ["b", "c"], "b": ["c", "d"], "c": ["d", "a"], "d": ["a", "b"]}
    none = compute_view(NODES, dict.fromkeys(NODES, OFF), 3, 1, 0)
    assert none.bucket_owner == (None, None, None)


def test_views_are_checked_on_receipt() -> None:
    v = compute_view(NODES, {"n1": A, "n2": F, "n3": A}, 6, 1, 5, "n1")
    assert view_from_wire(v.to_wire(), NODES, 6, 1) == v
    forged = v.to_wire()
    forged[3][0] = "n3"  # an owner map that does not follow from the states
    assert view_from_wire(forged, NODES, 6, 1) is None
    assert view_from_wire("junk", NODES, 6, 1) is None


def test_bad_configuration_is_refused_with_a_message() -> None:
    with pytest.raises(SyncUsageError, match="buckets"):
        compute_view(NODES, {}, 0, 1, 0)
    with pytest.raises(SyncUsageError, match="unknown sync policy"):
        make_policy("sometimes", 100, True, 0.0)


def test_policy_timers() -> None:
    p = make_policy("hybrid", 100, True, 0.0)
    assert p.send_now() and p.period_due(0.05) is PeriodicSend.NOTHING
    p.sent_on_demand(0.09)
    assert p.period_due(0.15) is PeriodicSend.NOTHING  # reset by the on-demand send
    assert p.period_due(0.19) is PeriodicSend.CHANGED
    q = make_policy("periodic", 100, False, 0.0)
    assert not q.send_now() and q.period_due(0.1) is PeriodicSend.ALL
    assert make_policy("on-demand", 100, False, 0.0).period_due(10.0) is PeriodicSend.NOTHING


def _held(backups: int, per_node: int) -> dict[str, int]:
    c = SimCluster(3, backups=backups)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    for x in c.names:
        for i in range(per_node):
            c.put(x, f"{x}-{i}".encode(), [i, 0, 0, 0, 0])
    c.run(0.1)
    return {x: sum(1 for _ in c.stores[x].records(scope=Scope.NODE)) for x in c.names}


def test_three_nodes_in_a_cycle_hold_two_thirds_of_a_full_mesh() -> None:
    cyclic = _held(backups=1, per_node=90)
    mesh = _held(backups=2, per_node=90)  # with three nodes, two backups each is a full mesh
    assert mesh == {"n1": 270, "n2": 270, "n3": 270}
    assert cyclic == {"n1": 180, "n2": 180, "n3": 180}
    assert sum(cyclic.values()) / sum(mesh.values()) == pytest.approx(2 / 3)


def _moved(a: tuple[str | None, ...], b: tuple[str | None, ...]) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True), start=1) if x != y}


@pytest.mark.parametrize("n", range(3, 17))
def test_default_buckets_spread_evenly_and_a_leave_moves_only_the_leavers(n: int) -> None:
    """Issue 13, Build 4: with the default lab's bucket count every node of 3 to
    16 holds an even share; a failure or a leave moves only the leaver's buckets (at most
    ceil(B/N)) and its return moves that same set back (Maglev's minimal disruption)."""
    lab = load_lab(None, {"nodes": n})  # the default lab of n nodes, with its default bucket count
    nodes, b = tuple(x.name for x in lab.nodes), lab.buckets
    full = compute_view(nodes, dict.fromkeys(nodes, A), b, 1, 1)
    held = [len(full.buckets_of(x)) for x in nodes]
    assert min(held) >= 1 and max(held) / min(held) <= 1.25
    for gone in (F, OFF):
        for leaver in nodes:
            states = dict.fromkeys(nodes, A) | {leaver: gone}
            after = compute_view(nodes, states, b, 1, 2)
            moved = _moved(full.bucket_owner, after.bucket_owner)
            assert moved == set(full.buckets_of(leaver))
            assert len(moved) <= math.ceil(b / n)
            assert after.buckets_of(leaver) == [] and None not in after.bucket_owner
            # The leaver's buckets all go to its ring successor (its backup, which holds their
            # state): that one node holds twice its share until the leaver returns (README,
            # "Buckets"). The others keep theirs.
            successor = nodes[(nodes.index(leaver) + 1) % n]
            survivors = [len(after.buckets_of(x)) for x in nodes if x != leaver]
            assert len(after.buckets_of(successor)) == 2 * len(full.buckets_of(successor))
            assert max(survivors) / min(survivors) == 2
            joining = compute_view(nodes, states | {leaver: J}, b, 1, 3)
            assert joining.bucket_owner == after.bucket_owner  # a joiner owns nothing until active
            back = joining.with_active(leaver)
            assert _moved(after.bucket_owner, back.bucket_owner) == moved
            assert back.bucket_owner == full.bucket_owner
