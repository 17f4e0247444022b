"""Key sweeps in the simulator: a backup's copies converge on what their owner holds. A copy
whose delete was lost goes, a record that never arrived comes back, and a copy the owner still
has is never dropped, even with records in flight behind the sweep."""

from __future__ import annotations

import random
from typing import Any

from sync.records import Record, Scope
from sync.sim import LinkFaults, SimCluster


def _cluster(**kw: Any) -> SimCluster:
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=5, **kw)
    c.start()
    assert c.run_until(c.all_active, 2.0), "cold start did not end with every node active"
    for x in c.names:
        for i in range(20):
            c.put(x, f"{x}-{i}".encode(), [i])
    c.run(0.05)
    return c


def _copies(c: SimCluster, holder: str, owner: str) -> set[bytes]:
    return set(c.stores[holder].sweep_keys(owner))


def _diverged(c: SimCluster) -> list[str]:
    """Every way a node's copies differ from what their owner holds ([] when converged)."""
    out = []
    for h in c.alive:
        view = c.agents[h].view
        for o in c.alive:
            if o == h:
                continue
            have, own = _copies(c, h, o), _copies(c, o, o)
            if h in view.backups_of(o):
                if have != own:
                    out.append(f"{h} backs {o}: {len(have - own)} stale, {len(own - have)} missing")
            elif have:
                out.append(f"{h} holds {len(have)} of {o} without backing it up")
    return out


def test_a_copy_whose_delete_was_lost_is_dropped_by_the_next_sweep() -> None:
    c = _cluster(keys_interval_ms=200)
    assert c.agents["n2"].view.backups_of("n1") == ("n2",)
    # The delete of n1-99 never reached n2 (as when it went while n2 was thought down).
    owned = c.agents["n1"].owned_buckets[0]
    c.stores["n2"].apply(Record(b"n1-99", Scope.NODE, "n1", 5, owned, [99]))
    assert len(_copies(c, "n2", "n1")) == 21
    c.run(0.25)
    assert _copies(c, "n2", "n1") == _copies(c, "n1", "n1") and len(_copies(c, "n1", "n1")) == 20
    assert c.agents["n2"].stats()["counters"].get("copies-forgotten", 0) == 1
    assert _diverged(c) == []


def test_a_record_that_never_arrived_is_asked_for_and_sent_again() -> None:
    c = _cluster(keys_interval_ms=200)
    assert c.stores["n3"].forget("n2", [b"n2-3", b"n2-4"]) == 2
    c.run(0.3)
    assert {b"n2-3", b"n2-4"} <= _copies(c, "n3", "n2")
    assert c.agents["n3"].stats()["counters"]["copies-wanted"] == 2
    assert c.agents["n2"].stats()["counters"]["sweep-resent"] == 2
    assert _diverged(c) == []


def test_a_sweep_sends_no_change_the_periodic_policy_still_holds() -> None:
    # Under periodic sync a new connection reaches its backup at the period's end, not at the
    # next sweep (the periodic-interval exercise and the policies demo count on it).
    c = _cluster(keys_interval_ms=100)
    for x in c.names:
        c.agents[x].set_policy("periodic", 60_000, False)
    c.put("n2", b"n2-new", [1])
    c.run(0.5)  # several sweeps
    backup = c.agents["n2"].view.backups_of("n2")[0]
    assert b"n2-new" not in _copies(c, backup, "n2")
    assert c.agents[backup].stats()["counters"].get("copies-wanted", 0) >= 1  # it did ask
    for x in c.names:
        c.agents[x].set_policy("periodic", 100, False)
    c.run(0.3)
    assert b"n2-new" in _copies(c, backup, "n2")


def test_no_sweep_no_repair() -> None:
    """The same lost delete with sweeps off stays: the sweep is what repairs it."""
    c = _cluster(keys_interval_ms=0)
    owned = c.agents["n1"].owned_buckets[0]
    c.stores["n2"].apply(Record(b"n1-99", Scope.NODE, "n1", 5, owned, [99]))
    c.run(1.0)
    assert b"n1-99" in _copies(c, "n2", "n1")


def test_records_created_behind_a_sweep_are_kept() -> None:
    """Churn while sweeps run every 20 ms: each races new records and deletes; none drops a
    copy (every delete arrives as a record), and the backups end as their owners."""
    c = _cluster(keys_interval_ms=20)
    rng = random.Random(3)
    n = 0
    for _ in range(400):
        x = rng.choice(c.names)
        mine = sorted(_copies(c, x, x))
        if mine and rng.random() < 0.4:
            c.delete(x, rng.choice(mine))
        else:
            n += 1
            c.put(x, f"{x}-new-{n}".encode(), [n])
        c.step(0.001)
    c.run(0.05)
    assert _diverged(c) == []
    assert sum(c.agents[x].stats()["counters"].get("copies-forgotten", 0) for x in c.names) == 0


def _chaos(seed: int, keys_interval_ms: int) -> list[str]:
    """Inserts and deletes under 40% sync loss with a 30 ms failure detection: false failovers,
    rejoins, deletes sent while a backup was thought down. Then the links heal."""
    rng = random.Random(seed)
    c = SimCluster(3, buckets=12, heartbeat_ms=10, miss_limit=3, seed=seed, keys_interval_ms=keys_interval_ms)
    c.start()
    assert c.run_until(c.all_active, 2.0)
    c.faults = LinkFaults(loss=0.4)
    n = 0
    for _ in range(2000):
        x = rng.choice(c.alive)
        if c.agents[x].mode.name == "ACTIVE" and c.agents[x].owned_buckets:
            mine = sorted(_copies(c, x, x))
            if mine and rng.random() < 0.45:
                c.delete(x, rng.choice(mine))
            else:
                n += 1
                c.put(x, f"{x}-{n}".encode(), [n])
        c.step(0.001)
    c.faults = LinkFaults()
    assert c.run_until(c.all_active, 5.0)
    c.run(1.5)
    return _diverged(c)


def test_after_false_failovers_every_backup_converges_on_its_owner() -> None:
    # The first chaos run that leaves a stale copy when nothing sweeps (about 1 seed in 6;
    # which one moves with every change to the sync layer's timing), then the same with sweeps.
    stale = next((seed for seed in range(1, 31) if _chaos(seed, 0)), None)
    assert stale is not None, "no run left a stale copy without sweeps: this test proves nothing"
    assert _chaos(stale, 500) == []
