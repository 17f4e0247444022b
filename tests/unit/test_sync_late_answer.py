"""A joiner whose peer answers late (its loop held: a long walk, a bulk build, a GC pause)
waits for it: it never declares its resync complete without the state of a live peer it has
heard active. Only a peer gone for certain, or silent past the joiner's patience, is given up."""

from __future__ import annotations

import pytest

from sync.agent import ResyncComplete
from sync.records import Record, Scope
from sync.sim import SimCluster

N = 3000


def _n1_holds_everything(n: int = N) -> SimCluster:
    """n2 was killed; n1 owns every bucket and holds `n` own records n2 has never seen."""
    sim = SimCluster(2, buckets=8)
    sim.start()
    assert sim.run_until(sim.all_active, 5.0)
    sim.kill("n2", closed=True)
    assert sim.run_until(lambda: len(sim.agents["n1"].owned_buckets) == 8, 5.0)
    owned = sim.agents["n1"].owned_buckets
    for i in range(n):
        sim.stores["n1"].put_local(Record(i.to_bytes(4, "big") + bytes(9), Scope.NODE, "n1", 1,
                                          owned[i % len(owned)], [i], False))
    sim.events["n2"].clear()  # the events of its first process
    return sim


def _completions(sim: SimCluster) -> list[int]:
    return [e.records for e in sim.events["n2"] if isinstance(e, ResyncComplete)]


@pytest.mark.parametrize("when", ["heard", "asked"])
def test_a_joiner_waits_for_a_peer_whose_loop_is_held(when: str) -> None:
    sim = _n1_holds_everything()
    sim.revive("n2")
    p = sim.agents["n2"].peers["n1"]
    # n2 hears n1 (active) or has asked it for the bulk; then n1's loop stops for longer than
    # both the failure-detection time and n2's join wait.
    assert sim.run_until(lambda: p.up if when == "heard" else p.bulk_requested, 1.0)
    sim.stall("n1", 0.4)
    assert sim.run_until(lambda: bool(_completions(sim)) and sim.all_active(), 10.0)
    assert _completions(sim)[0] == N, "n2 went on without n1's state"
    assert len(sim.stores["n2"]) == N


def test_a_joiner_goes_on_once_the_silent_peer_is_gone_for_certain() -> None:
    sim = _n1_holds_everything()
    sim.revive("n2")
    p = sim.agents["n2"].peers["n1"]
    assert sim.run_until(lambda: p.up, 1.0)
    sim.stall("n1", 0.3)
    sim.run(0.1)
    sim.kill("n1", closed=True)  # its process ends: the kernel closes its liveness link
    t0 = sim.now
    assert sim.run_until(lambda: bool(_completions(sim)), 1.0)
    assert sim.now - t0 < 0.2, "a peer closed for certain owes nothing: no patience wait"


def test_a_joiner_gives_up_a_silent_peer_after_its_patience() -> None:
    sim = _n1_holds_everything()
    sim.revive("n2")
    p = sim.agents["n2"].peers["n1"]
    assert sim.run_until(lambda: p.up, 1.0)
    sim.kill("n1")  # silently: a frozen host, a cut link; no close ever comes
    t0 = sim.now
    assert sim.run_until(lambda: bool(_completions(sim)), 5.0), "a joiner must not wait forever"
    patience = sim.agents["n2"].config.join_patience_s
    assert sim.now - t0 >= patience - sim.agents["n2"].config.dead_s
    assert _completions(sim) == [0]


def test_a_joiner_whose_own_loop_is_held_mid_stream_still_gets_all_of_it() -> None:
    """The answerer fails the silent joiner and, when it answers again (the same process),
    goes on with the stream where it was: nothing tells the joiner to ask again."""
    n = 30_000  # more than one window of frames: the stream takes several round trips
    sim = _n1_holds_everything(n)
    sim.revive("n2")
    p = sim.agents["n2"].peers["n1"]
    assert sim.run_until(lambda: p.bulk_received > 0, 1.0, dt_s=0.0001)
    assert p.bulk_received < n
    patience = sim.base.join_patience_s  # how long n1 bears the silence of a joiner
    sim.stall("n2", patience + 0.2)
    sim.run(patience + 0.1)
    assert not sim.agents["n1"].peers["n2"].up, "n1 took n2's silence for a failure"
    assert sim.run_until(lambda: bool(_completions(sim)), 5.0)
    assert _completions(sim)[0] == n


def test_an_answerer_bears_a_joiners_held_loop_without_failing_it() -> None:
    """A joiner owns nothing: its silence for a few failure-detection times (a held loop)
    does not fail it, so its bulk goes on under the same view instead of starting over."""
    n = 30_000
    sim = _n1_holds_everything(n)
    sim.revive("n2")
    p = sim.agents["n2"].peers["n1"]
    assert sim.run_until(lambda: p.bulk_received > 0, 1.0, dt_s=0.0001)
    epoch = sim.agents["n1"].view.epoch
    answered = sim.agents["n1"].stats()["counters"]["bulk-answered"]
    sim.stall("n2", 4 * sim.base.dead_s)
    assert sim.run_until(lambda: bool(_completions(sim)), 5.0)
    assert _completions(sim)[0] == n
    assert sim.agents["n1"].stats()["counters"]["bulk-answered"] == answered, "it started over"
    assert sim.agents["n1"].view.epoch <= epoch + 1  # no view failed n2 (one activates it)
