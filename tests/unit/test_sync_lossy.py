"""Replication over bad links: with loss, reordering and duplication (hypothesis chooses the
links and the workload) every backup converges to its owner's latest versions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.channel import Channel
from sync.records import Scope
from sync.sim import LinkFaults, SimCluster
from sync.wire import MsgType


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.5),
    n=st.integers(1, 120),
)
def test_channel_delivers_everything_once_in_order_over_a_bad_link(seed: int, loss: float, n: int) -> None:
    import random

    rng = random.Random(seed)
    a, b = Channel(16, 0.02, 0.2), Channel(16, 0.02, 0.2)
    for i in range(n):
        a.queue(MsgType.RECORDS, i)
    got: list[int] = []
    in_flight: list[tuple[float, str, int, object]] = []  # (arrival, kind, seq/ack, payload)
    now = 0.0
    while now < 60.0 and len(got) < n:
        now += 0.005
        for o, _ in a.due(now, None):
            for _copy in range(2 if rng.random() < 0.1 else 1):
                if rng.random() >= loss:
                    in_flight.append((now + rng.random() * 0.03, "data", o.seq, o.payload))
        arrived = sorted(m for m in in_flight if m[0] <= now)
        in_flight = [m for m in in_flight if m[0] > now]
        for _, kind, num, payload in arrived:
            if kind == "data":
                for _, _, p in b.on_data(num, MsgType.RECORDS, payload).messages:
                    got.append(p)  # type: ignore[arg-type]
            else:
                a.on_ack(num)
        if b.ack_pending and rng.random() >= loss:
            b.ack_pending = False
            in_flight.append((now + rng.random() * 0.03, "ack", b.cum_ack, None))
    assert got == list(range(n))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["n1", "n2", "n3"]),
            st.integers(0, 14),
            st.sampled_from(["put", "put", "del"]),
            st.booleans(),
        ),
        min_size=5,
        max_size=60,
    ),
)
def test_backups_converge_with_20pct_loss_reordering_and_duplication(
    seed: int, ops: list[tuple[str, int, str, bool]]
) -> None:
    faults = LinkFaults(loss=0.2, dup=0.1, reorder=0.3, delay_s=0.0003, reorder_delay_s=0.004)
    # A generous miss limit: at 20% loss five silent heartbeats in a row happen now and then,
    # and this test is about convergence, not about failure detection.
    c = SimCluster(3, seed=seed, faults=faults, miss_limit=25)
    c.start()
    assert c.run_until(c.all_active, 5.0)
    for node, k, op, common in ops:
        key = f"{node}-{'c' if common else 'n'}-{k}".encode()
        if op == "del":
            c.delete(node, key)
        else:
            c.put(node, key, [k, c.now], scope=Scope.COMMON if common else Scope.NODE)
        c.run(0.002)
    c.run(3.0)
    assert c.all_active(), "a false failover happened"
    view = c.agents["n1"].view
    for owner in c.names:
        mine = {r.key: r for r in c.stores[owner]._records.values() if r.owner == owner}
        for key, rec in mine.items():
            targets = c.names if rec.scope is Scope.COMMON else view.backups_of(owner)
            for t in targets:
                got = c.stores[t].get(key)
                assert got is not None, (key, t)
                assert (got.version, got.deleted, got.data) == (rec.version, rec.deleted, rec.data), (key, t)
    assert c.stats.lost > 0 and c.stats.duplicated > 0
    total = {}
    for x in c.names:
        total.update(c.agents[x].stats()["bad_frames"])
    assert "internal-error" not in total and "bad-hmac" not in total


def test_window_backoff_and_acks_that_cover_unsent_messages() -> None:
    ch = Channel(window=4, rto_initial_s=0.02, rto_max_s=0.08)
    for i in range(10):
        ch.queue(MsgType.RECORDS, i)
    assert [o.seq for o, re in ch.due(0.0, None)] == [1, 2, 3, 4]  # the window
    assert ch.due(0.01, None) == []
    assert [(o.seq, re) for o, re in ch.due(0.02, None)] == [(1, True), (2, True), (3, True), (4, True)]
    assert ch.due(0.05, None) == []  # backed off to 40 ms
    assert len(ch.due(0.061, None)) == 4
    assert [o.seq for o in ch.on_ack(9)] == [1, 2, 3, 4]  # only what was sent can be acked
    assert [o.seq for o, _ in ch.due(0.07, 1)] == [5]  # a freeze releases one at a time
    assert ch.unsent() == 5
