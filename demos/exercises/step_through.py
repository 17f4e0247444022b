"""Exercise "step-through": freeze the sync channel, release its messages one at a time until a
held FTP PORT goes, and name the message whose acknowledgement released it. Graded against the
lab's own record: the nodes note each message a step sends ("n1>n2#7": from n1 to n2, sequence
7) and, on a release, the message whose ack completed the hold."""

from __future__ import annotations

from typing import Any

from demos.exercises.framework import Criterion, Exercise, Grade, needs
from demos.scenarios.framework import DemoContext

LAB_TOML = '''\
# Exercise step-through: on-demand sync, and a PORT may be held up to 60 s (the default is
# 200 ms, too short to step by hand).
name = "ex-step"
policy = "on-demand"
hold_timeout_ms = 60000
'''


def _norm(label: str) -> str:
    return "".join(label.lower().split()).replace("->", ">")


def stepped_releases(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Release events whose completing message a step sent: (release event, step event)."""
    events = snapshot.get("events", [])
    stepped = {_norm(str(e["message"])): e for e in events
               if e.get("kind") == "step" and e.get("message") and e.get("node") != "lab"}
    return [{"release": e, "step": stepped[_norm(str(e["message"]))]} for e in events
            if e.get("kind") == "release" and e.get("message") and _norm(str(e["message"])) in stepped]


def released_in(snapshot: dict[str, Any], _mem: dict[str, Any]) -> Grade:
    found = stepped_releases(snapshot)
    if not found:
        return Grade(False, "no held packet was released by a message a step sent (the lab's events "
                            "show no release whose message came from a step)")
    return Grade(True, f"{len(found)} held packet release(s) completed by a stepped message")


def port_released_by_step(ctx: DemoContext) -> Grade:
    snap = ctx.snapshot()
    ctx.mem["releases"] = stepped_releases(snap)
    return released_in(snap, ctx.mem)


def named_message(ctx: DemoContext) -> Grade:
    return named_in(needs(ctx, "releases", "a release by a stepped message"), ctx.mem)


def named_live(snapshot: dict[str, Any], mem: dict[str, Any]) -> Grade | None:
    found = stepped_releases(snapshot)
    return named_in(found, mem) if found else None  # the check says "could not grade"


def named_in(found: list[dict[str, Any]], mem: dict[str, Any]) -> Grade:
    ans = mem.get("answer")
    if not found:
        raise KeyError("no stepped release")
    if not ans:
        return Grade(False, "no answer yet (`syncwall exercise answer n1>n2#7`)")
    right = {_norm(str(f["release"]["message"])) for f in found}
    if _norm(ans) in right:
        return Grade(True, f"{ans}: its ack released the held PORT "
                           f"({found[-1]['release'].get('text', '')})")
    return Grade(False, f"you answered {ans!r}; the ack of that message released no held packet")


STEP_THROUGH = Exercise(
    name="step-through",
    title="Step-through: which sync message releases a held PORT?",
    idea="On-demand sync holds an FTP PORT packet until every other node has acknowledged the "
         "expectation it creates. Frozen, the sync channel sends nothing new until stepped: the "
         "PORT goes at the acknowledgement of the expectation's last copy, not before.",
    task="Freeze the sync channel (console: z), start one active FTP session "
         "(`syncwall traffic start ftp --mode active --sessions 1 --lab ex-step`), then release the "
         "sync messages one at a time (console: n) and watch the events. Each step names the "
         "message it sent, e.g. n1>n2#7 (from n1 to n2, sequence 7). When the held PORT is "
         "released, name the message that released it: `syncwall exercise answer n1>n2#7`. "
         "Resume the channel afterwards (z).",
    lab_name="ex-step",
    lab_toml=LAB_TOML,
    observe=True,
    answer_help="MESSAGE (as a step names it, e.g. n1>n2#7)",
    criteria=(
        Criterion("a held PORT was released by a message you stepped", port_released_by_step,
                  "Nothing new goes out while the channel is frozen, and a PORT is held only while "
                  "its expectation is not yet acknowledged. Was the channel frozen before the FTP "
                  "session began, and did you step until a release event appeared?",
                  live=released_in),
        Criterion("you named the message whose ack released it", named_message,
                  "A PORT waits for every other node. Which of the messages you stepped carried the "
                  "expectation to the last node that had not acknowledged it yet?", live=named_live),
    ),
)
