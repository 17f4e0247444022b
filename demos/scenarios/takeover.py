"""The "takeover" demo: kill a node; its backup takes over and no connection drops; revive it."""

from __future__ import annotations

import time

from demos.scenarios.framework import (
    DemoContext,
    Scenario,
    Step,
    backup_of,
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

TAKEOVER_FLOWS = 24
VICTIM = "n1"


def takeover_start(ctx: DemoContext) -> str:
    ctx.mem["names"] = start_tcp(ctx, TAKEOVER_FLOWS)
    by = flows_by_node(ctx, ctx.mem["names"])
    judge(ctx, "spread", all(by.get(n) for n in ("n1", "n2", "n3")),
          "flows per node: " + per_node({n: len(v) for n, v in by.items()}))
    return f"{TAKEOVER_FLOWS} flows, a sequence-checked record every 100 ms each"


def takeover_kill(ctx: DemoContext) -> str:
    st = ctx.status()
    ctx.mem["backup"] = backup = backup_of(st, VICTIM)
    ctx.mem["buckets"] = buckets = set(ctx.nodes(st)[VICTIM]["buckets"])
    ctx.mem["victim_flows"] = flows_by_node(ctx, ctx.mem["names"]).get(VICTIM, [])
    ctx.mem["t_kill"] = t0 = time.time()
    ctx.call({"cmd": "kill", "node": VICTIM})
    st = ctx.wait_for(f"{backup} to take {VICTIM}'s buckets", lambda: (
        (s := ctx.status()) and ctx.nodes(s)[VICTIM]["state"] == "failed"
        and buckets <= set(ctx.nodes(s)[backup]["buckets"])
        and (s.get("last_takeover") or {}).get("t", 0) > t0
        and s), 10, 0.05)
    take = st["last_takeover"]
    ms = take.get("takeover_ms", take.get("detect_to_accept_ms"))
    ctx.mem["t_take"] = float(take["t"])
    ctx.figures.update(takeover_ms=ms, promoted=take.get("promoted"), headline=st.get("headline", ""))
    judge(ctx, "moved", take.get("node") == backup and buckets <= set(take.get("buckets", [])),
          f"{take.get('node')} now accepts buckets {sorted(buckets)} "
          f"({take.get('promoted')} connections promoted)")
    judge(ctx, "headline", "took over" in st.get("headline", "") and ms is not None,
          f"headline: {st.get('headline')!r}")
    return f"{st.get('headline')}{note_spurious(ctx, t0, {VICTIM})}"


def takeover_survive(ctx: DemoContext) -> str:
    survived, lost = judge_flows(ctx, ctx.mem["names"], ctx.mem["t_take"])
    mine = [f for f in ctx.flows(ctx.mem["names"]) if f["name"] in ctx.mem["victim_flows"]]
    pause = max((float(f.get("longest_pause_ms") or 0) for f in mine), default=0.0)
    ctx.figures.update(flows=TAKEOVER_FLOWS, flows_lost=len(lost), longest_pause_ms=pause)
    judge(ctx, "none", not lost and len(survived) == TAKEOVER_FLOWS,
          f"{len(survived)} of {TAKEOVER_FLOWS} flows moved again after the takeover; {lost_text(lost)}")
    judge(ctx, "victim", bool(ctx.mem["victim_flows"]),
          f"{VICTIM} carried {len(ctx.mem['victim_flows'])} of them; their longest pause {pause:.0f} ms")
    return f"{len(survived)}/{TAKEOVER_FLOWS} flows alive; {VICTIM}'s flows paused at most {pause:.0f} ms"


def takeover_revive(ctx: DemoContext) -> str:
    t0, seen, n = revive_and_watch(ctx, VICTIM)
    want = ctx.mem["buckets"]
    judge_joined_first(ctx, seen)
    judge(ctx, "back", set(n["buckets"]) == want and n["own"] > 0,
          f"{VICTIM} accepts buckets {sorted(n['buckets'])} again and owns {n['own']} connections")
    return f"{VICTIM} resynced and took its buckets back in {time.time() - t0:.1f} s" \
           f"{note_spurious(ctx, t0, set())}"


def takeover_after(ctx: DemoContext) -> str:
    survived, lost = judge_flows(ctx, ctx.mem["names"], ctx.mem["t_back"])
    ctx.figures["flows_lost_on_handback"] = len(lost)
    judge(ctx, "none2", not lost, f"{len(survived)} of {TAKEOVER_FLOWS} moved after the handback; "
                                 f"{lost_text(lost)}")
    return f"{len(survived)}/{TAKEOVER_FLOWS} flows alive after the handback"


TAKEOVER = Scenario(
    name="takeover",
    title="Kill a firewall: its backup takes over and no connection drops",
    teaches="Each node's connections are replicated to its backup as they change (on demand). "
            "When a node dies, the backup promotes that copy and only then accepts the dead node's "
            "traffic, so established connections continue. A revived node resyncs before it takes "
            "its share back.",
    lab_name="dm-takeover",
    steps=(
        Step(f"{TAKEOVER_FLOWS} long-lived TCP flows from c1 and c2, spread over n1, n2 and n3.",
             takeover_start, (expect_mem("every node carries flows", "spread"),)),
        Step(f"kill -9 {VICTIM}'s engine. Its backup holds a copy of each of its connections.",
             takeover_kill, (expect_mem(f"the backup takes {VICTIM}'s buckets", "moved"),
                             expect_mem("the headline reports the takeover and its time", "headline"))),
        Step("Every flow keeps going, including the dead node's.", takeover_survive,
             (expect_mem(f"{VICTIM} carried flows before the kill", "victim"),
              expect_mem("no flow is lost", "none"))),
        Step(f"Revive {VICTIM}: it joins with no buckets, resyncs, then takes its buckets back.",
             takeover_revive, (expect_mem("it was joining (with no buckets) first", "joining"),
                               expect_mem("it owns its buckets and connections again", "back"))),
        Step("The handback loses nothing either.", takeover_after,
             (expect_mem("no flow is lost", "none2"),)),
    ),
)

