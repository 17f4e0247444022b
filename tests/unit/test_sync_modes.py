"""A node's mode changes only through its transition table: every illegal change is refused
and counted, and the legal life of a node (join, active, leaving, left, gone) works, alone and
in a simulated cluster."""

from __future__ import annotations

import itertools

import pytest

from sync.agent import LeaveComplete, Mode, ModeEvent, SyncAgent
from sync.membership import TRANSITIONS, IllegalModeChange, ModeMachine
from sync.records import MemoryStore, SyncError, SyncUsageError
from sync.sim import SimCluster
from syncwall_errors import SyncwallError

ILLEGAL = [(m, e) for m, e in itertools.product(Mode, ModeEvent) if (m, e) not in TRANSITIONS]


def test_the_table_allows_exactly_the_documented_changes() -> None:
    assert TRANSITIONS == {
        (Mode.JOINING, ModeEvent.ACTIVATED): Mode.ACTIVE,
        (Mode.JOINING, ModeEvent.LEAVE): Mode.LEFT,
        (Mode.ACTIVE, ModeEvent.LEAVE): Mode.LEAVING,
        (Mode.ACTIVE, ModeEvent.DEMOTED): Mode.JOINING,
        (Mode.LEAVING, ModeEvent.MORE_TO_PUSH): Mode.LEAVING,
        (Mode.LEFT, ModeEvent.MORE_TO_PUSH): Mode.LEAVING,
        (Mode.LEAVING, ModeEvent.PUSHED): Mode.LEFT,
        (Mode.LEAVING, ModeEvent.REMOVED): Mode.GONE,
        (Mode.LEFT, ModeEvent.REMOVED): Mode.GONE,
        (Mode.LEFT, ModeEvent.ALONE): Mode.GONE,
    }
    assert not any(m is Mode.GONE for m, _ in TRANSITIONS)  # gone is final


@pytest.mark.parametrize(("mode", "event"), ILLEGAL, ids=[f"{m.name}-{e.name}" for m, e in ILLEGAL])
def test_each_illegal_change_is_refused_counted_and_leaves_the_mode(mode: Mode, event: ModeEvent) -> None:
    m = ModeMachine(mode)
    assert not m.allows(event)
    with pytest.raises(IllegalModeChange) as exc:
        m.fire(event)
    assert m.mode is mode
    assert m.refused == 1
    assert (exc.value.mode, exc.value.event) == (mode, event)
    assert mode.name in str(exc.value) and event.value in str(exc.value)
    # A local bug, under the sync layer's and the project's error roots.
    assert isinstance(exc.value, SyncUsageError) and isinstance(exc.value, SyncError)
    assert isinstance(exc.value, SyncwallError)


def test_the_mode_cannot_be_assigned_around_the_table() -> None:
    m = ModeMachine()
    with pytest.raises(SyncUsageError):
        m.mode = Mode.GONE
    assert m.mode is Mode.JOINING


def test_the_legal_life_of_a_node_join_active_leaving_left_gone() -> None:
    m = ModeMachine()
    seen = [m.mode]
    for event in (ModeEvent.ACTIVATED, ModeEvent.LEAVE, ModeEvent.PUSHED, ModeEvent.REMOVED):
        seen.append(m.fire(event))
    assert seen == [Mode.JOINING, Mode.ACTIVE, Mode.LEAVING, Mode.LEFT, Mode.GONE]
    assert m.refused == 0


def _modes_until(c: SimCluster, name: str, final: Mode, timeout_s: float) -> list[Mode]:
    """Run the cluster and note each mode `name` passes through until `final`."""
    seen = [c.agents[name].mode]
    end = c.now + timeout_s
    while c.now < end and seen[-1] is not final:
        c.step()
        if c.agents[name].mode is not seen[-1]:
            seen.append(c.agents[name].mode)
    return seen


def test_a_node_in_a_cluster_joins_serves_leaves_and_goes() -> None:
    c = SimCluster(3)
    c.start()
    assert _modes_until(c, "n3", Mode.ACTIVE, 2.0) == [Mode.JOINING, Mode.ACTIVE]
    assert c.run_until(c.all_active, 2.0)
    c.put("n3", b"conn", [1])
    c.agents["n3"].leave(c.now)
    assert c.agents["n3"].mode is Mode.LEAVING
    assert _modes_until(c, "n3", Mode.GONE, 3.0) == [Mode.LEAVING, Mode.LEFT, Mode.GONE]
    assert LeaveComplete() in c.events["n3"]
    assert c.holders(b"conn") != ["n3"]  # handed over before going
    assert "mode-change-refused" not in c.agents["n3"].stats()["counters"]


def test_leaving_while_joining_is_immediate() -> None:
    c = SimCluster(3)
    c.start()
    a = c.agents["n2"]
    assert a.mode is Mode.JOINING
    a.leave(c.now)
    assert a.mode is Mode.LEFT
    a.leave(c.now)  # already on its way out: nothing to refuse
    assert a.mode is Mode.LEFT
    assert "mode-change-refused" not in a.stats()["counters"]


def test_a_left_node_with_nobody_active_to_hand_over_to_goes_on_its_own() -> None:
    c = SimCluster(2)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    c.agents["n1"].leave(c.now)
    assert c.run_until(lambda: c.agents["n1"].mode is Mode.LEFT, 1.0)
    c.cut = {"n2"}  # n2 is never heard again: no view without n1 can arrive
    assert _modes_until(c, "n1", Mode.GONE, 1.0) == [Mode.LEFT, Mode.GONE]
    assert c.agents["n1"].owned_buckets == []
    assert LeaveComplete() in c.events["n1"]


def test_a_refused_change_inside_the_agent_is_counted_in_its_stats() -> None:
    c = SimCluster(3)
    agent = SyncAgent(c.config_for("n1"), MemoryStore(), 0.0)
    with pytest.raises(IllegalModeChange):
        agent._ctx.fire(ModeEvent.PUSHED)  # a joining node has pushed nothing
    assert agent.mode is Mode.JOINING
    assert agent.stats()["counters"]["mode-change-refused"] == 1
