"""The "split-brain" demo: the same sync-only partition n1/n2,n3, first on a lab with the extra
paths off (`paths = false`: the sync segment alone decides, as before the probes), then on the
demo's own lab with them on. Off: both sides believe the other dead, buckets are owned twice
and UDP datagrams reach the server twice. On: nothing happens but a sync path switch."""

from __future__ import annotations

import time
from typing import Any

from demos.scenarios.framework import DemoContext, Scenario, Step, expect_mem, judge
from netns.control import ControlClient
from netns.record import RUN_ROOT

CUT_S = 3.0
OFF_LAB = "dm-split-off"


def _owners(st: dict[str, Any]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for n in st["nodes"]:
        for b in n["buckets"]:
            out.setdefault(int(b), []).append(n["name"])
    return out


def _dups(flows: list[dict[str, Any]]) -> int:
    return sum(int(f.get("duplicates", (f.get("extra") or {}).get("duplicates", 0)) or 0) for f in flows)


def _partition(ctx: DemoContext, request: Any) -> dict[str, Any]:
    """Cut the sync segment n1/n2,n3 for CUT_S under 4 numbered UDP flows, sampling the status;
    heal. What was seen: the worst sample's doubly-owned buckets, duplicates, route switches."""
    def flows(names: list[str]) -> list[dict[str, Any]]:
        return [f for f in request({"cmd": "snapshot", "max_events": 0}).get("flows", [])
                if f.get("workload") in names]

    udp = [str(request({"cmd": "traffic", "action": "start", "kind": "udp", "client": "c1", "flows": 4,
                        "interval_ms": 20})["name"])]
    ctx.wait_for("4 healthy UDP flows", lambda: len(fl := flows(udp)) >= 4
                 and all(f["health"] == "healthy" for f in fl), 20)
    dups0 = _dups(flows(udp))
    switches0 = sum(int(((n.get("paths") or {}).get("counters") or {}).get("route-switch", 0))
                    for n in request({"cmd": "status"})["nodes"])
    request({"cmd": "fault", "kind": "partition", "groups": [["n1"], ["n2", "n3"]]})
    worst: dict[int, list[str]] = {}
    end = time.monotonic() + CUT_S
    while time.monotonic() < end:
        twice = {b: o for b, o in _owners(request({"cmd": "status"})).items() if len(o) > 1}
        if len(twice) > len(worst):
            worst = twice
        time.sleep(0.05)
    st = request({"cmd": "status"})
    dups = _dups(flows(udp)) - dups0
    switches = sum(int(((n.get("paths") or {}).get("counters") or {}).get("route-switch", 0))
                   for n in st["nodes"]) - switches0
    request({"cmd": "fault", "kind": "heal"})
    request({"cmd": "traffic", "action": "stop"})
    return {"twice": worst, "dups": dups, "switches": switches}


def off_cut(ctx: DemoContext) -> str:
    from demos.runner import own_lab

    with own_lab(OFF_LAB, 'paths = false\n') as name:
        c = ControlClient(RUN_ROOT / name / "control.sock", timeout_s=15.0)
        try:
            ctx.wait_for("every bucket owned once", lambda: (o := _owners(c.request({"cmd": "status"})))
                         and len(o) == 12 and all(len(v) == 1 for v in o.values()), 30)
            seen = _partition(ctx, c.request)
        finally:
            c.close()
    ctx.figures.update(off_owned_twice=len(seen["twice"]), off_duplicates=seen["dups"])
    judge(ctx, "two", bool(seen["twice"]),
          f"{len(seen['twice'])} buckets had two owners, e.g. {dict(list(seen['twice'].items())[:3])}")
    judge(ctx, "dups", seen["dups"] > 0, f"{seen['dups']} datagrams reached the server twice")
    return f"paths off: {len(seen['twice'])} buckets owned twice, {seen['dups']} duplicated datagrams"


def on_cut(ctx: DemoContext) -> str:
    seen = _partition(ctx, ctx.call)
    ctx.figures.update(on_owned_twice=len(seen["twice"]), on_duplicates=seen["dups"],
                       on_route_switches=seen["switches"])
    judge(ctx, "once", not seen["twice"], f"buckets owned twice: {seen['twice'] or 'none'}")
    judge(ctx, "nodup", seen["dups"] == 0, f"{seen['dups']} duplicated datagrams")
    judge(ctx, "switch", seen["switches"] > 0, f"{seen['switches']} sync route switches to a data segment")
    return f"paths on: nothing owned twice, {seen['dups']} duplicates, {seen['switches']} route switches"


SPLIT_BRAIN = Scenario(
    name="split-brain",
    title="Split brain: a cut sync link with and without the extra paths",
    teaches="A cluster that lets the sync link alone decide liveness splits in two when that "
            "link is cut: both sides forward the same buckets and every packet of them goes "
            "out twice. With probes and sync on every cluster interface, the same cut only "
            "moves the sync traffic to a data segment.",
    lab_name="dm-split",
    steps=(
        Step("Paths off (a lab with `paths = false`): cut the sync segment n1 / n2,n3 under UDP flows.",
             off_cut, (expect_mem("buckets are owned by two nodes", "two"),
                       expect_mem("datagrams reach the server twice", "dups"))),
        Step("Paths on (this lab): the same cut.", on_cut,
             (expect_mem("no bucket is owned twice", "once"),
              expect_mem("no datagram is duplicated", "nodup"),
              expect_mem("the sync traffic switched to a data segment", "switch"))),
    ),
)
