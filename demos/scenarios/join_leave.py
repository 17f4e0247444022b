"""The "join-and-leave" demo: a graceful leave with zero loss, then a rejoin that resyncs first."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from demos.scenarios.framework import (
    DemoContext,
    DemoError,
    Scenario,
    Step,
    backup_of,
    delta,
    events_since,
    expect_mem,
    flows_by_node,
    judge,
    judge_flows,
    judge_joined_first,
    lost_text,
    note_spurious,
    per_node,
    revive_and_watch,
    start_tcp,
)

LEAVER = "n2"
JOIN_FLOWS = 18


def jl_start(ctx: DemoContext) -> str:
    ctx.mem["names"] = start_tcp(ctx, JOIN_FLOWS)
    by = flows_by_node(ctx, ctx.mem["names"])
    ctx.mem["leaver_flows"] = by.get(LEAVER, [])
    judge(ctx, "spread", bool(by.get(LEAVER)),
          "flows per node: " + per_node({n: len(v) for n, v in by.items()}))
    return f"{JOIN_FLOWS} flows running"


def jl_offline(ctx: DemoContext) -> str:
    st = ctx.status()
    ctx.mem["backup"] = backup = backup_of(st, LEAVER)
    ctx.mem["buckets"] = buckets = set(ctx.nodes(st)[LEAVER]["buckets"])
    ctx.mem["c0"] = ctx.counters()
    ctx.mem["t_off"] = t0 = time.time()
    ctx.call({"cmd": "offline", "node": LEAVER})
    st = ctx.wait_for(f"{LEAVER} offline and its buckets at {backup}", lambda: (
        (s := ctx.status()) and ctx.nodes(s)[LEAVER]["state"] == "offline"
        and buckets <= set(ctx.nodes(s)[backup]["buckets"]) and s), 10, 0.05)
    owned = sorted(b for n in st["nodes"] for b in n["buckets"])
    judge(ctx, "handed", owned == list(range(1, st["buckets"] + 1)),
          f"{backup} accepts {sorted(buckets)}; every bucket owned exactly once: {owned}")
    st = ctx.wait_for("the lab to report the hand-over", lambda: (
        (s := ctx.status()) and (s.get("last_takeover") or {}).get("t", 0) > t0 and s), 5)
    take = st["last_takeover"]
    ms = take.get("takeover_ms", take.get("detect_to_accept_ms"))
    ctx.figures.update(leave_handover_ms=ms, leave_headline=st.get("headline", ""))
    # A graceful leave waits on no failure detection: from the leave to the backup accepting
    # the buckets is a few sync round trips and one iptables update.
    judge(ctx, "timed", ms is not None and take.get("node") == backup and float(ms) < 1000,
          f"headline: {st.get('headline')!r} (node figures: {take})")
    return f"{LEAVER} pushed its state to {backup}, handed over buckets {sorted(buckets)} and left" \
           f"{note_spurious(ctx, t0, {LEAVER})}"


def jl_zero_loss(ctx: DemoContext) -> str:
    survived, lost = judge_flows(ctx, ctx.mem["names"], ctx.mem["t_off"] + 0.3)
    c1 = ctx.settled_counters(("no-state",))
    unknown = delta(ctx.mem["c0"], c1, "no-state")
    mine = [f for f in ctx.flows(ctx.mem["names"]) if f["name"] in ctx.mem["leaver_flows"]]
    pause = max((float(f.get("longest_pause_ms") or 0) for f in mine), default=0.0)
    ctx.figures.update(leave_flows_lost=len(lost), leave_longest_pause_ms=pause)
    judge(ctx, "zero", not lost, f"{len(survived)} of {JOIN_FLOWS} flows kept moving; {lost_text(lost)}")
    judge(ctx, "known", unknown.get(ctx.mem["backup"], 0) == 0,
          f"packets of unknown sessions: {per_node({n: v for n, v in unknown.items() if n != LEAVER})}")
    return f"zero loss: {len(mine)} flows of {LEAVER} paused at most {pause:.0f} ms"


def jl_join(ctx: DemoContext) -> str:
    t0, seen, n = revive_and_watch(ctx, LEAVER)
    want = ctx.mem["buckets"]

    def node_events() -> list[dict[str, Any]]:
        return [e for e in events_since(ctx, t0) if e.get("node") == LEAVER]

    def both(evs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        return ([e["t"] for e in evs if e.get("kind") == "sync" and e.get("step") == "resync-complete"],
                [e["t"] for e in evs if e.get("kind") == "buckets" and e.get("buckets")])

    # The daemon fetches each node's events a moment after its status: wait for them.
    with contextlib.suppress(DemoError):
        ctx.wait_for(f"{LEAVER}'s resync and bucket events", lambda: all(both(node_events())), 3)
    evs = node_events()
    resynced, accepting = both(evs)
    ctx.figures["join_s"] = round(ctx.mem["t_back"] - t0, 2)
    judge_joined_first(ctx, seen)
    judge(ctx, "order", bool(resynced and accepting) and min(resynced) < min(accepting),
          (f"resync complete {1000 * (min(resynced) - t0):.0f} ms after revive, first buckets accepted "
           f"{1000 * (min(accepting) - t0):.0f} ms after") if resynced and accepting
          else f"events seen: {[(e.get('kind'), e.get('text')) for e in evs][:12]}")
    judge(ctx, "back", set(n["buckets"]) == want and n["own"] > 0,
          f"{LEAVER} accepts {sorted(n['buckets'])} and owns {n['own']} connections")
    return f"{LEAVER} rejoined in {ctx.figures['join_s']} s{note_spurious(ctx, t0, set())}"


def jl_after(ctx: DemoContext) -> str:
    survived, lost = judge_flows(ctx, ctx.mem["names"], ctx.mem["t_back"])
    ctx.figures["join_flows_lost"] = len(lost)
    ctx.figures["headline"] = (f"{LEAVER} left with {ctx.figures.get('leave_flows_lost')} flows lost and "
                               f"rejoined in {ctx.figures.get('join_s')} s with {len(lost)} lost")
    judge(ctx, "zero2", not lost, f"{len(survived)} of {JOIN_FLOWS} flows kept moving; {lost_text(lost)}")
    return f"{len(survived)}/{JOIN_FLOWS} flows alive"


JOIN_AND_LEAVE = Scenario(
    name="join-and-leave",
    title="A node leaves gracefully with zero loss, rejoins, resyncs, then takes traffic",
    teaches="Going offline gracefully, a node first pushes its state to its backups and hands "
            "over its buckets, then leaves: no packet ever meets a node that does not know its "
            "connection. A joining node asks for a bulk resync and takes buckets only when it "
            "holds their state.",
    lab_name="dm-join",
    steps=(
        Step(f"{JOIN_FLOWS} long-lived TCP flows over all three nodes.", jl_start,
             (expect_mem(f"{LEAVER} carries flows", "spread"),)),
        Step(f"Take {LEAVER} offline gracefully.", jl_offline,
             (expect_mem("its backup accepts its buckets; every bucket has one owner", "handed"),
              expect_mem("the lab reports the hand-over time, well under a second", "timed"))),
        Step("Zero loss: the backup knew every connection before it got the first packet.", jl_zero_loss,
             (expect_mem("no flow is lost", "zero"),
              expect_mem("the backup met no packet of an unknown session", "known"))),
        Step(f"Bring {LEAVER} back: it joins with no buckets and resyncs before it takes traffic.", jl_join,
             (expect_mem("it was joining, with no buckets, first", "joining"),
              expect_mem("its resync completed before it accepted buckets", "order"),
              expect_mem("it gets its buckets and connections back", "back"))),
        Step("Still no flow lost.", jl_after, (expect_mem("no flow is lost", "zero2"),)),
    ),
)

