"""Tiny demos that run against the fake lab in no time, in place of the real ones (which wait on
real traffic): a three-step story on the lab, the last expectation failing, and a lab-less one."""

from __future__ import annotations

import threading

from demos.scenarios import Check, DemoContext, Expectation, Scenario, Step


def _start(ctx: DemoContext) -> str:
    reply = ctx.call({"cmd": "traffic", "action": "start", "kind": "tcp", "flows": 2})
    ctx.mem.setdefault("workloads", []).append(reply["name"])
    ctx.figures["flows"] = reply["options"]["flows"]
    return f"{reply['options']['flows']} flows started"


def _kill(ctx: DemoContext) -> str:
    ctx.call({"cmd": "kill", "node": "n1"})
    ctx.figures["killed"] = "n1"
    return "n1 got SIGKILL"


def _n1_failed(ctx: DemoContext) -> Check:
    state = ctx.nodes()["n1"]["state"]
    return Check(state == "failed", f"n1 is {state}")


def _policy(ctx: DemoContext) -> str:
    ctx.call({"cmd": "policy", "policy": "periodic", "interval_ms": 500})
    ctx.figures["headline"] = "n2 took over n1's buckets"
    return "policy periodic every 500 ms"


def _never(ctx: DemoContext) -> Check:
    return Check(False, "nobody answered the phone")


STORY = Scenario(
    name="story",
    title="A story told on the fake lab",
    teaches="how the demo panel looks",
    lab_name="dm-story",
    steps=(
        Step("Two long-lived TCP flows start.", _start),
        Step("Kill n1: its backup takes over.", _kill, (Expectation("n1 is failed", _n1_failed),)),
        Step("Switch to periodic sync.", _policy, (Expectation("the phone rings", _never),)),
    ),
)


def _groups(ctx: DemoContext) -> str:
    ctx.figures["bytes_per_entry"] = 272
    ctx.figures["groups"] = [
        {"nodes": n, "cyclic": {"entries_per_node": 2 * 100}, "mesh": {"entries_per_node": n * 100},
         "memory_ratio": round(2 / n, 3)} for n in (3, 4, 6)]
    ctx.figures["headline"] = "cyclic / full mesh entries: 3 nodes 0.67"
    return "simulated 3, 4 and 6 nodes"


GROUPS = Scenario(
    name="groups",
    title="Backup groups, simulated (no lab)",
    teaches="figures as a table",
    needs_lab=False,
    steps=(Step("Simulate clusters of 3, 4 and 6 nodes.", _groups),),
)

# A step that runs until the test lets it finish: to close the demo while a step is running.
GATE = threading.Event()


def _wait_for_gate(ctx: DemoContext) -> str:
    ctx.mem.setdefault("workloads", []).append("gated-001")
    if not GATE.wait(10.0):
        raise RuntimeError("the test never opened the gate")
    return "the gate opened"


GATED = Scenario(
    name="gated",
    title="A step that takes its time",
    teaches="closing while a step runs",
    steps=(Step("Wait for the gate.", _wait_for_gate), Step("Never reached.", _start)),
)

FAKE_SCENARIOS = {s.name: s for s in (STORY, GROUPS, GATED)}
