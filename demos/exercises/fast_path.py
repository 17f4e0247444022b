"""Exercise "fast-path": admit a new service with one rule, then see the rules judge each
connection's first packet and the connection table carry the rest."""

from __future__ import annotations

import sys
import time

from demos.exercises.framework import Criterion, Exercise, Grade, needs, rule_accepts, total
from demos.scenarios.framework import DemoContext

FLOWS = 3
SERVICE_WAIT_S = 10.0
# No rule took the flows' SYNs: each was dropped (no-rule-match) and retransmitted at least once
# (1 s) with no flow moving; the lab file cannot change during a check, so neither will that.
DROPPED_CERTAIN_S = 2.5

# The default lab without its TCP service rule: c1 cannot reach s1:5001 yet.
LAB_TOML = '''\
# Exercise fast-path: the lab you start from. Add ONE rule so that the inside clients
# (198.18.1.0/24) reach the TCP echo service on s1 (198.18.2.10, port 5001), and nothing
# more. Then run `syncwall exercise check`: it rebuilds the lab from this file.
name = "ex-fast"

[[rules]]
name = "ftp-control"
action = "accept"
proto = "tcp"
src = "198.18.1.0/24"
dst = "198.18.2.0/24"
dport = 21
helper = "ftp"

[[rules]]
name = "udp-services"
action = "accept"
proto = "udp"
src = "198.18.1.0/24"
dst = "198.18.2.0/24"
dport = "5000-5999"

[[rules]]
name = "ping"
action = "accept"
proto = "icmp"
src = "198.18.1.0/24"
dst = "198.18.2.0/24"
'''


def admitted(ctx: DemoContext) -> Grade:
    ctx.mem["c0"] = ctx.counters()
    name = ctx.traffic("tcp", client="c1", flows=FLOWS, interval_ms=50)
    t0 = time.monotonic()
    fl = ctx.flows([name])
    while (waited := time.monotonic() - t0) < SERVICE_WAIT_S:
        fl = ctx.flows([name])
        moving = sum(f["health"] == "healthy" and int(f.get("bytes", 0)) > 300 for f in fl)
        if len(fl) >= FLOWS and moving == len(fl):
            ctx.mem["service"] = name
            return Grade(True, f"{len(fl)} connections c1 -> s1:5001 carry data")
        if waited >= DROPPED_CERTAIN_S and not moving and \
                total(ctx.counters(), "no-rule-match") - total(ctx.mem["c0"], "no-rule-match") >= 2 * FLOWS:
            break
        time.sleep(0.3)
    nrm = total(ctx.counters(), "no-rule-match") - total(ctx.mem["c0"], "no-rule-match")
    moving = sum(f["health"] == "healthy" and int(f.get("bytes", 0)) > 300 for f in fl)
    return Grade(False, f"{moving} of {FLOWS} connections c1 -> s1:5001 carried data within "
                        f"{time.monotonic() - t0:.0f} s; the nodes counted {nrm} packets as no-rule-match")


def first_packet_rule(ctx: DemoContext) -> Grade:
    needs(ctx, "service", "the service admitted")
    time.sleep(0.5)
    # Settled once the connections' first packets are all counted. Not on `established`: the
    # flows keep it moving, so waiting for it to settle only ran out the 5 s.
    keys = {"new", *(k for c in ctx.counters().values() for k in c if k.startswith("rule-accept:"))}
    c1 = ctx.settled_counters(sorted(keys))
    ctx.mem["c1"] = c1
    before, after = rule_accepts(ctx.mem["c0"]), rule_accepts(c1)
    grew = {r: after[r] - before.get(r, 0) for r in after if after[r] > before.get(r, 0)}
    n = sum(grew.values())
    ctx.mem["rule_evaluations"] = n
    said = (", ".join(f"rule-accept:{r} +{v}" for r, v in sorted(grew.items()))
            or "no rule-accept counter moved")
    return Grade(n == FLOWS, f"{n} packets took the rule path for {FLOWS} connections ({said})")


def rest_fast_path(ctx: DemoContext) -> Grade:
    rules = needs(ctx, "rule_evaluations", "the rule path counted")
    est = total(ctx.mem["c1"], "established") - total(ctx.mem["c0"], "established")
    return Grade(est >= 10 * max(rules, 1),
                 f"{est} packets took the connection table (established), "
                 f"{est / max(rules, 1):.0f} for each rule evaluation")


# A dropped SYN shows as a timeout; 1 s is ample for a SYN the firewall lets through (the
# no-rule-match count, not the timeout, is what tells the two apart).
PROBE = ("import socket\ns=socket.socket();s.settimeout(1.0)\n"
         "try:\n s.connect(('198.18.2.10',7000));print('connected')\n"
         "except OSError as e:\n print(type(e).__name__)\n")


def nothing_more(ctx: DemoContext) -> Grade:
    before = ctx.counters()
    p = ctx.exec("c1", [sys.executable, "-c", PROBE], 10)
    outcome = p.stdout.strip() or p.stderr.strip()[-200:] or "no output"
    after = ctx.settled_counters(("no-rule-match",), 3.0)
    nrm = total(after, "no-rule-match") - total(before, "no-rule-match")
    ok = outcome != "connected" and nrm >= 1
    seen = {"connected": "connected", "ConnectionRefusedError": "reached s1 (s1 itself refused it)"}
    return Grade(ok, f"c1 -> s1 TCP port 7000: {seen.get(outcome, outcome)}; the firewall counted "
                     f"{nrm} packets as no-rule-match" + ("" if ok else ": it let the SYN through"))


FAST_PATH = Exercise(
    name="fast-path",
    title="Fast path: admit a service with one rule",
    idea="A stateful firewall consults its rules once per connection: the first packet is matched "
         "against the ordered rule set, every later packet against the connection table.",
    task="The inside clients cannot reach the TCP echo service on s1 (198.18.2.10, port 5001). "
         "Edit the lab file (its path is printed by `exercise start`) and add ONE rule that admits "
         "this service from the inside network and nothing else. `syncwall exercise check` "
         "rebuilds the lab from your file, opens connections and reads the engines' counters.",
    lab_name="ex-fast",
    lab_toml=LAB_TOML,
    edits_lab_file=True,
    criteria=(
        Criterion("c1 reaches the TCP service on s1 port 5001", admitted,
                  "Each connection's first packet is matched against the rules in order; what no "
                  "rule matches is dropped and counted as no-rule-match. Which fields of a rule "
                  "decide what it matches, and which of them fit this service?"),
        Criterion("each connection's first packet took the rule path (one rule-accept per connection)",
                  first_packet_rule,
                  "Compare the rule-accept:NAME counters of the nodes with the number of "
                  "connections: how often should the rule set be consulted per connection?"),
        Criterion("every later packet took the connection table (established fast path)", rest_fast_path,
                  "After the first packet a connection is known to the table; look at the "
                  "`established` counter while the connections run."),
        Criterion("nothing else got in: TCP port 7000 on s1 stays closed", nothing_more,
                  "Your rule admits more than the one service. Which of its fields could be "
                  "narrower?"),
    ),
)
