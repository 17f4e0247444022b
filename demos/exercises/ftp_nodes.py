"""Exercise "ftp-nodes": active FTP fails across nodes under a planted sync policy; name the node
that dropped the data connection (checked against the counters the lab recorded), then fix it."""

from __future__ import annotations

from typing import Any

from demos.exercises.framework import Criterion, Exercise, Grade
from demos.scenarios.framework import DemoContext, DemoError, delta, per_node
from demos.scenarios.ftp import FAILING_STEP_S, FTP_KEYS, run_ftp

CHECK_SESSIONS = 4
SETUP_TRIES = 8

LAB_TOML = '''\
# Exercise ftp-nodes: the default lab with a planted sync policy.
name = "ex-ftp"
policy = "periodic"
interval_ms = 60000
'''


def plant(ctx: DemoContext) -> dict[str, Any]:
    """Run active FTP sessions one at a time until one fails across nodes; remember which node's
    counters show the dropped data connection."""
    for _ in range(SETUP_TRIES):
        c0 = ctx.settled_counters(FTP_KEYS)
        s = run_ftp(ctx, 1, FAILING_STEP_S)[0]
        c1 = ctx.settled_counters(FTP_KEYS)
        nrm = {n: v for n, v in delta(c0, c1, "no-rule-match").items() if v > 0}
        if s["health"] == "failed" and nrm:
            node = max(nrm, key=lambda n: nrm[n])
            return {"dropped_by": node, "control_node": s.get("node"), "session": s["name"],
                    "no_rule_match": nrm}
    raise DemoError(f"{SETUP_TRIES} FTP sessions in a row did not fail across nodes; reset the exercise")


def named_node(ctx: DemoContext) -> Grade:
    return named_in({}, ctx.mem)


def named_in(_st: dict[str, Any], mem: dict[str, Any]) -> Grade:
    """The answer against what the lab recorded at setup (the session's facts): no lab needed."""
    facts = mem["facts"]
    ans = mem.get("answer")
    if not ans:
        return Grade(False, "no answer yet (`syncwall exercise answer NODE`)")
    right = str(facts["dropped_by"])
    if ans.strip().lower() == right:
        return Grade(True, f"{right} counted the data connection of {facts['session']} as no-rule-match "
                           f"({per_node(facts['no_rule_match'])})")
    return Grade(False, f"you answered {ans!r}; the counters disagree")


def ftp_works(ctx: DemoContext) -> Grade:
    c0 = ctx.settled_counters(FTP_KEYS)
    sessions = run_ftp(ctx, CHECK_SESSIONS)
    ctx.mem["ftp_c"] = (c0, ctx.settled_counters(FTP_KEYS))
    done = [s for s in sessions if s["health"] == "done"]
    crossed = [s for s in done if s.get("data_node") and s.get("node") and s["data_node"] != s["node"]]
    ctx.mem["ftp_done"] = len(done)
    lines = "; ".join(f"control {s.get('node') or '?'} data {s.get('data_node') or '?'} {s['health']}"
                      for s in sessions)
    return Grade(len(done) == CHECK_SESSIONS == len(sessions),
                 f"{len(done)} of {CHECK_SESSIONS} active sessions transferred their file, "
                 f"{len(crossed)} of them across nodes ({lines})")


def held_until_acked(ctx: DemoContext) -> Grade:
    if "ftp_c" not in ctx.mem:
        raise DemoError("needs the FTP sessions run first")
    c0, c1 = ctx.mem["ftp_c"]
    acked = sum(delta(c0, c1, "released_by_ack").values())
    return Grade(acked >= CHECK_SESSIONS,
                 f"{acked} PORT packets were held until the other nodes acknowledged their "
                 f"expectation, for {CHECK_SESSIONS} sessions")


FTP_NODES = Exercise(
    name="ftp-nodes",
    title="FTP across nodes: who dropped the data connection?",
    idea="An active FTP PORT command announces a data connection that may hash to another node. "
         "That node admits it only if it already knows the expectation: on-demand sync holds the "
         "PORT packet until every node has acknowledged it.",
    task="In this lab active FTP from c1 to s2 fails now and then. One session already failed "
         "when the exercise started. Find the node that dropped its data connection (console, or "
         "`syncwall status --json`) and name it with `syncwall exercise answer NODE`. Then change "
         "the lab at run time so that active FTP works whichever node the data connection lands on.",
    lab_name="ex-ftp",
    lab_toml=LAB_TOML,
    setup=plant,
    observe=True,
    answer_help="NODE",
    criteria=(
        Criterion("you named the node that dropped the data connection", named_node,
                  "The data connection's SYN reached a node that knew neither a rule nor an "
                  "expectation for it. Which counter grows on a node for such a packet?",
                  live=named_in),
        Criterion("active FTP works across nodes", ftp_works,
                  "The node that sees the PORT packet learns the expectation at once; the others "
                  "only when it is synced to them. How often does this lab sync?"),
        Criterion("each PORT packet was held until its expectation was acknowledged", held_until_acked,
                  "Look at the held and released_by_ack counters: which sync policies send an "
                  "FTP expectation the moment it is made?"),
    ),
)
