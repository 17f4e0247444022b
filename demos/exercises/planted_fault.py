"""Exercise "planted-fault": a fault on the sync path (every sync datagram into one node lost);
find it with the console and heal it. Passes when every connection has its copy again.

Not a cut sync link: with the extra liveness paths (on by default) the lab routes sync around
a cut, every copy still arrives and the check would pass the starting lab (tried: `fault cut
--node N --link sync` planted, `exercise check` passed)."""

from __future__ import annotations

import random
import time
from typing import Any

from demos.exercises.framework import Criterion, Exercise, Grade
from demos.scenarios.framework import DemoContext, start_tcp

FLOWS = 9

LAB_TOML = '''\
# Exercise planted-fault: the default lab; `exercise start` plants a fault on its sync path.
name = "ex-fault"
'''


def plant(ctx: DemoContext) -> dict[str, Any]:
    node = random.choice(sorted(ctx.nodes()))
    ctx.call({"cmd": "fault", "kind": "loss", "node": node, "rate": 1.0})
    return {"node": node, "kind": "loss", "rate": 1.0}


def missing_copies(nodes: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per node, (copies held, copies it should hold) where it holds fewer: a node should hold
    a copy of each connection owned by a node that names it a backup. Where the copies are
    missing is where the sync datagrams stop arriving."""
    want = dict.fromkeys(nodes, 0)
    for v in nodes.values():
        for b in v.get("backups") or []:
            if b in want:
                want[b] += int(v.get("own", 0))
    have = {n: int(v.get("backup", 0)) for n, v in nodes.items()}
    return {n: (have[n], want[n]) for n in sorted(nodes) if have[n] < want[n]}


def backed_up_in(st: dict[str, Any], _mem: dict[str, Any]) -> Grade:
    alone = sorted(n["name"] for n in st["nodes"] if n["state"] == "active" and not n.get("backups"))
    return Grade(not alone, "every node has a backup" if not alone
                 else f"without a backup: {', '.join(alone)}")


def every_node_backed_up(ctx: DemoContext) -> Grade:
    return backed_up_in(ctx.status(), ctx.mem)


def copies_complete(ctx: DemoContext) -> Grade:
    names = start_tcp(ctx, FLOWS, placed=False)
    time.sleep(1.5)  # the daemon polls the nodes every 250 ms; copies follow within a few ms
    nodes = ctx.nodes()
    own = sum(int(v.get("own", 0)) for v in nodes.values())
    copies = sum(int(v.get("backup", 0)) for v in nodes.values())
    healthy = sum(f["health"] == "healthy" for f in ctx.flows(names))
    per = ", ".join(f"{n} own {v.get('own', 0)} copies {v.get('backup', 0)}"
                    for n, v in sorted(nodes.items()))
    missing = missing_copies(nodes)
    where = ("; copies missing at: " + ", ".join(f"{n} ({h} of {w})" for n, (h, w) in missing.items())
             if missing else "")
    return Grade(copies >= own > 0 and healthy == FLOWS,
                 f"{healthy} of {FLOWS} flows healthy; {own} connections owned, {copies} copies held "
                 f"({per}){where}")


PLANTED_FAULT = Exercise(
    name="planted-fault",
    title="A planted fault: find what breaks the sync path and heal it",
    idea="State sync runs on its own segment; a fault there does not stop traffic at first, it "
         "silently removes the copies a takeover would need. Knowing where sync traffic stops is "
         "how an operator finds it before a failure does.",
    task="Something is wrong on this lab's sync path, although the flows still run. Find it with "
         "the console (sync rates, backups, events) or `syncwall status`, and heal it. `check` "
         "passes when every node has a backup and every connection has its copy again.",
    lab_name="ex-fault",
    lab_toml=LAB_TOML,
    setup=plant,
    criteria=(
        Criterion("every node has a backup", every_node_backed_up,
                  "A node whose peers hear nothing from it is left out of the backup groups. "
                  "Which node's sync rate is near zero, and what does the lab say about its "
                  "sync segment?", live=backed_up_in),
        Criterion("every connection has its copy at a backup while the flows run", copies_complete,
                  "Copies travel as sync datagrams. Compare owned and copied connections per node: "
                  "where do the datagrams stop arriving, and what on the sync segment makes that so?"),
    ),
)
