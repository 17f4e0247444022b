"""The "basics" demo: a rule admits a connection's first packet, the connection table carries the rest."""

from __future__ import annotations

import sys
import time

from demos.scenarios.framework import (
    DemoContext,
    Scenario,
    Step,
    delta,
    expect_mem,
    judge,
    per_node,
)

BASIC_FLOWS = 6


def basics_rules(ctx: DemoContext) -> str:
    from netns.spec import load_lab

    rules = load_lab(None).rules
    lines = []
    for r in rules:
        port = f" port {r['dport']}" if "dport" in r else ""
        lines.append(f"{r['name']}: {r['action']} {r['proto']}{port}")
    return "rules (first match wins, then drop): " + "; ".join(lines)


def basics_open(ctx: DemoContext) -> str:
    ctx.mem["c0"] = ctx.counters()
    ctx.mem["tcp"] = ctx.traffic("tcp", client="c1", flows=BASIC_FLOWS, interval_ms=100)
    fl = ctx.wait_for("the flows to run", lambda: (f := ctx.flows([ctx.mem["tcp"]])) and len(f) >= BASIC_FLOWS
                      and all(x["health"] == "healthy" and x["bytes"] > 300 for x in f) and f, 20)
    judge(ctx, "flows", all(f["health"] == "healthy" for f in fl),
          f"{len(fl)} flows healthy, {sum(f['bytes'] for f in fl)} bytes echoed")
    return f"{len(fl)} connections c1 -> s1:5001 carry data"


def basics_table(ctx: DemoContext) -> str:
    time.sleep(0.5)  # let some more records flow, so the fast path shows
    c1 = ctx.settled_counters(("rule-accept:tcp-services", "new"))
    rule = sum(delta(ctx.mem["c0"], c1, "rule-accept:tcp-services").values())
    est = sum(delta(ctx.mem["c0"], c1, "established").values())
    new = delta(ctx.mem["c0"], c1, "new")
    ctx.figures.update(rule_evaluations=rule, established_fast_path=est)
    judge(ctx, "once", rule == BASIC_FLOWS,
          f"{rule} rule evaluations for {BASIC_FLOWS} connections "
          f"(new connections per node: {per_node(new)})")
    judge(ctx, "fast", est >= 10 * max(rule, 1), f"{est} packets took the established fast path, "
          f"{est / max(rule, 1):.0f} for each rule evaluation")
    ctx.mem["c1"] = c1
    return f"rule set consulted {rule} times; connection table answered {est} times"


def basics_blocked(ctx: DemoContext) -> str:
    before = ctx.settled_counters(("no-rule-match",))
    probe = ("import socket,sys\ns=socket.socket();s.settimeout(2.0)\n"
             "try:\n s.connect(('198.18.2.10',7000));print('connected')\n"
             "except OSError as e:\n print(type(e).__name__)\n")
    p = ctx.exec("c1", [sys.executable, "-c", probe], 10)
    outcome = (p.stdout.strip() or p.stderr.strip()[-200:]) or "no output"
    after = ctx.settled_counters(("no-rule-match",))
    nrm = delta(before, after, "no-rule-match")
    dropped = delta(before, after, "dropped")
    ctx.figures["blocked_packets_dropped"] = sum(dropped.values())
    who = [n for n, v in nrm.items() if v > 0]
    judge(ctx, "refused", outcome != "connected", f"connect to s1:7000 from c1: {outcome}")
    judge(ctx, "counted", sum(nrm.values()) >= 1 and sum(dropped.values()) >= 1,
          f"no-rule-match: {per_node(nrm)}; dropped: {per_node(dropped)}")
    fl = ctx.flows([ctx.mem["tcp"]])
    judge(ctx, "others", all(f["health"] == "healthy" for f in fl),
          f"{sum(f['health'] == 'healthy' for f in fl)} of {len(fl)} allowed flows still healthy")
    ctx.figures["headline"] = (f"{ctx.figures.get('rule_evaluations')} rule evaluations carried "
                               f"{ctx.figures.get('established_fast_path')} fast-path packets; TCP 7000 "
                               f"dropped as no-rule-match on {', '.join(who) or 'no node'}")
    return f"TCP 7000 {'was refused' if outcome != 'connected' else 'got through'}; " \
           f"dropped on {', '.join(who) or 'no node'} as no-rule-match"


BASICS = Scenario(
    name="basics",
    title="Stateful screening: a rule admits the first packet, the table carries the rest",
    teaches="A stateful firewall evaluates its rules once per connection; every later packet is "
            "matched against the connection table. A packet no rule allows is dropped and counted.",
    lab_name="dm-basics",
    steps=(
        Step("The rule set: first match wins; whatever matches no rule is dropped.", basics_rules),
        Step(f"c1 opens {BASIC_FLOWS} long-lived TCP connections to s1 port 5001.", basics_open,
             (expect_mem("every connection carries data", "flows"),)),
        Step("Rules judged only each connection's first packet; the connection table carried the rest.",
             basics_table,
             (expect_mem("exactly one rule evaluation per connection", "once"),
              expect_mem("the established fast path handles at least 10x more packets", "fast"))),
        Step("c1 tries TCP port 7000 on s1: no rule allows it.", basics_blocked,
             (expect_mem("the connection fails", "refused"),
              expect_mem("the SYN is counted as no-rule-match and dropped", "counted"),
              expect_mem("allowed flows are unaffected", "others"))),
    ),
)

