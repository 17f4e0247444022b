"""The demos as data: each scenario is a list of steps (caption, action, expectations) run against a lab."""

from __future__ import annotations

import contextlib
import itertools
import logging
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from netns.spec import ns_name
from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

# A lost flow makes no progress after the takeover; a surviving one moves again within
# a few TCP retransmissions (200 ms, then 400 ms ...). Three seconds is many of those.
SURVIVE_WITHIN_S = 3.0
ACTION_TIMEOUT_S = 15.0
WATCH_S = 1.0


class DemoError(SyncwallError):
    """A demo could not go on: the lab did not do what a step needs (the message says what)."""


class Link(Protocol):
    """Anything that answers the lab daemon's control requests (ControlClient, the console's link)."""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    details: str = ""


@dataclass(frozen=True, slots=True)
class Expectation:
    """What must hold after a step's action; `check` reads the lab (or what the action noted)."""

    text: str
    check: Callable[[DemoContext], Check]


@dataclass(frozen=True, slots=True)
class Step:
    caption: str
    action: Callable[[DemoContext], str]  # returns what it saw, for the audience
    expect: tuple[Expectation, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    teaches: str
    steps: tuple[Step, ...]
    needs_lab: bool = True
    lab_name: str = ""  # the lab a demo starts for itself (never "default": tests use that one)


@dataclass(slots=True)
class DemoContext:
    """What a step sees: the lab link, a notebook shared by the steps, and the headline figures."""

    link: Link | None
    lab: str
    mem: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    # ---- the lab ---------------------------------------------------------------------------
    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.link is None:
            raise DemoError("this step needs a lab and none is attached")
        try:
            reply = self.link.request(msg)
        except Exception as e:  # each kind of link has its own errors (ControlError, LinkError ...)
            raise DemoError(f"the lab did not answer {msg.get('cmd')}: {e}") from e
        if not reply.get("ok"):
            raise DemoError(f"the lab refused {msg.get('cmd')}: {reply.get('error', 'no reason given')}")
        return reply

    def snapshot(self) -> dict[str, Any]:
        return self.call({"cmd": "snapshot", "max_events": 5000})

    def status(self) -> dict[str, Any]:
        return self.call({"cmd": "status"})

    def nodes(self, st: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in (st or self.status())["nodes"]}

    def counters(self) -> dict[str, dict[str, int]]:
        return {name: dict(n.get("counters", {})) for name, n in self.nodes().items()}

    def settled_counters(self, keys: Iterable[str], timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
        """Node counters once `keys` stop moving: the daemon polls the nodes every 250 ms, so a
        packet handled just now shows up a little later."""
        keys = tuple(keys)

        def pick(c: dict[str, dict[str, int]]) -> dict[str, tuple[int, ...]]:
            return {n: tuple(v.get(k, 0) for k in keys) for n, v in c.items()}

        last = self.counters()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.6)
            now = self.counters()
            if pick(now) == pick(last):
                return now
            last = now
        return last

    def traffic(self, kind: str, **kw: Any) -> str:
        reply = self.call({"cmd": "traffic", "action": "start", "kind": kind, **kw})
        self.mem.setdefault("workloads", []).append(str(reply["name"]))
        return str(reply["name"])

    def flows(self, workloads: Iterable[str], snap: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        wanted = set(workloads)
        snap = snap or self.snapshot()
        return [f for f in snap.get("flows", []) if f.get("workload") in wanted]

    def exec(self, host: str, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run a program inside a lab host's namespace (as `syncwall exec` does)."""
        return subprocess.run(["ip", "netns", "exec", ns_name(self.lab, host), *argv],
                              capture_output=True, text=True, timeout=timeout_s, check=False)

    def wait_for(self, what: str, pred: Callable[[], Any], timeout_s: float = ACTION_TIMEOUT_S,
                 every_s: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() >= deadline:
                raise DemoError(f"waited {timeout_s:g} s for {what}; it did not happen")
            time.sleep(every_s)


# ---- helpers shared by the steps --------------------------------------------------------------
def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], key: str) -> dict[str, int]:
    """Per node, how much a counter grew (a revived node starts again from zero)."""
    out = {}
    for node, c in after.items():
        b = before.get(node, {}).get(key, 0)
        now = c.get(key, 0)
        out[node] = now - b if now >= b else now
    return out


def per_node(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for n, v in sorted(counts.items())) or "none"


def start_tcp(ctx: DemoContext, flows: int, clients: tuple[str, ...] = ("c1", "c2")) -> list[str]:
    """Long-lived, sequence-checked TCP flows split over the clients, all healthy and placed on nodes."""
    names = []
    share = flows // len(clients)
    for i, c in enumerate(clients):
        n = share + (flows - share * len(clients) if i == 0 else 0)
        names.append(ctx.traffic("tcp", client=c, flows=n, interval_ms=100))

    def placed() -> list[dict[str, Any]] | None:
        fl = ctx.flows(names)
        if len(fl) >= flows and all(f["health"] == "healthy" and f.get("node") for f in fl):
            return fl
        if any(f["health"] in ("broken", "failed") for f in fl):
            bad = [f"{f['name']}: {f['detail']}" for f in fl if f["health"] in ("broken", "failed")]
            raise DemoError(f"flows broke before anything was done to the lab: {bad[:3]}")
        return None

    ctx.wait_for(f"{flows} healthy TCP flows placed on nodes", placed, 20)
    return names


def flows_by_node(ctx: DemoContext, names: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in ctx.flows(names):
        out.setdefault(f.get("node") or "?", []).append(f["name"])
    return out


def judge_flows(ctx: DemoContext, names: Iterable[str],
                since_t: float) -> tuple[list[str], list[dict[str, Any]]]:
    """Which flows moved again after `since_t` (wall clock) and never broke: (survivors, lost).
    Flows are watched for at least WATCH_S after `since_t`: a sequence gap shows as broken on
    the next echoes, not at once."""
    names = list(names)

    def moved(f: dict[str, Any]) -> bool:
        return f["health"] not in ("broken", "failed") and float(f.get("last_progress") or 0) > since_t

    end = time.monotonic() + SURVIVE_WITHIN_S
    fl = ctx.flows(names)
    while time.monotonic() < end:
        fl = ctx.flows(names)
        if all(moved(f) for f in fl) and time.time() >= since_t + WATCH_S:
            break
        time.sleep(0.1)
    survived = [f["name"] for f in fl if moved(f)]
    lost = [f for f in fl if not moved(f)]
    return survived, lost


def lost_text(lost: list[dict[str, Any]]) -> str:
    if not lost:
        return "none lost"
    shown = (f"{f['name']} ({f['health']}: {f.get('detail') or 'no progress'})" for f in lost[:4])
    return f"{len(lost)} lost: " + "; ".join(shown)


def backup_of(st: dict[str, Any], node: str) -> str:
    for n in st["nodes"]:
        if node in n.get("backs_up", []):
            return str(n["name"])
    raise DemoError(f"no node backs up {node}: {[(n['name'], n.get('backs_up')) for n in st['nodes']]}")


def wait_active(ctx: DemoContext, node: str, buckets: Iterable[int] | None = None) -> dict[str, Any]:
    want = set(buckets) if buckets is not None else None

    def ok() -> dict[str, Any] | None:
        st = ctx.status()
        n = ctx.nodes(st)[node]
        if n["state"] == "active" and n["buckets"] and (want is None or set(n["buckets"]) == want):
            return st
        return None

    result: dict[str, Any] = ctx.wait_for(f"{node} active with its buckets", ok, 15, 0.05)
    return result


def watch_states(ctx: DemoContext, node: str, until: Callable[[dict[str, Any]], bool],
                 timeout_s: float) -> list[tuple[str, tuple[int, ...]]]:
    """The distinct (state, buckets) a node went through, polled every 20 ms until `until`."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = ctx.status()
        n = ctx.nodes(st)[node]
        cur = (str(n["state"]), tuple(n["buckets"]))
        if not seen or seen[-1] != cur:
            seen.append(cur)
        if until(st):
            return seen
        time.sleep(0.02)
    raise DemoError(f"{node} went through {seen} and did not settle within {timeout_s:g} s")


def events_since(ctx: DemoContext, t: float, snap: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    snap = snap or ctx.snapshot()
    return [e for e in snap.get("events", []) if float(e.get("t", 0)) >= t]


def note_spurious(ctx: DemoContext, t0: float, expected_down: set[str]) -> str:
    """Failure detections the demo did not cause (a node silent for 100 ms on a busy machine)."""
    odd = sorted({str(e.get("peer")) for e in events_since(ctx, t0) if e.get("kind") == "peer-down"}
                 - expected_down)
    if odd:
        ctx.mem.setdefault("spurious", []).extend(odd)
        return f" NOTE: the cluster also declared {', '.join(odd)} failed, which the demo did not do."
    return ""


def fixed(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def expect_mem(text: str, key: str) -> Expectation:
    """An expectation the action already judged: it stores (ok, details) under `key`."""

    def check(ctx: DemoContext) -> Check:
        ok, details = ctx.mem.get(key, (False, "the step did not get far enough to judge this"))
        return Check(bool(ok), str(details))

    return Expectation(text, check)


def judge(ctx: DemoContext, key: str, ok: bool, details: str) -> None:
    ctx.mem[key] = (ok, details)


# ---- basics ------------------------------------------------------------------------------------
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


# ---- takeover ----------------------------------------------------------------------------------
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


def revive_and_watch(ctx: DemoContext, node: str) -> tuple[float, list[Any], dict[str, Any]]:
    """Revive `node`, watch its states until it is active with its buckets back, then wait until
    it owns connections again. Returns (when revived, states seen, its last status)."""
    t0 = time.time()
    ctx.call({"cmd": "revive", "node": node})
    want = ctx.mem["buckets"]
    seen = watch_states(ctx, node, lambda s: (n := ctx.nodes(s)[node])["state"] == "active"
                        and set(n["buckets"]) == want, 15)
    ctx.mem["t_back"] = time.time()
    n = ctx.wait_for(f"{node} to own connections again",
                     lambda: (x := ctx.nodes()[node])["own"] > 0 and x, 5)
    return t0, seen, n


def judge_joined_first(ctx: DemoContext, seen: list[Any]) -> None:
    """A revived node is `joining` (no buckets) before it is active: state first, then traffic."""
    judge(ctx, "joining", bool(seen) and seen[0][0] == "joining" and not seen[0][1],
          "states: " + " -> ".join(f"{s}{list(b) if b else ''}" for s, b in seen))


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


# ---- ftp ----------------------------------------------------------------------------------------
FTP_SESSIONS = 8


def run_ftp(ctx: DemoContext, sessions: int) -> list[dict[str, Any]]:
    """Active FTP sessions to completion; each with the node of its control and data connections."""
    name = ctx.traffic("ftp", mode="active", sessions=sessions)
    placed: dict[str, dict[str, str]] = {}

    def finished() -> list[dict[str, Any]] | None:
        fl = ctx.flows([name])
        for f in fl:  # remember placements: they vanish once the nodes expire the connections
            p = placed.setdefault(f["name"], {})
            for k in ("node", "data_node"):
                if f.get(k):
                    p.setdefault(k, f[k])
        done = [f for f in fl if f["health"] in ("done", "failed")]
        return done if len(done) >= sessions else None

    ctx.wait_for(f"{sessions} FTP sessions to end", finished, 40, 0.2)
    end = time.monotonic() + 2.0  # the daemon maps connections to nodes once a second
    while time.monotonic() < end:
        fl = finished() or []
        if all(placed.get(f["name"], {}).get("node") for f in fl) and all(
                placed[f["name"]].get("data_node") for f in fl if f["health"] == "done"):
            break
        time.sleep(0.2)
    out = []
    for f in ctx.flows([name]):
        out.append({**f, **placed.get(f["name"], {})})
    return out


def release_latencies(ctx: DemoContext, t0: float) -> list[float]:
    return [float(e["latency_ms"]) for e in events_since(ctx, t0)
            if e.get("kind") == "release" and e.get("latency_ms") is not None]


def session_line(s: dict[str, Any]) -> str:
    num = s["name"].rsplit("-", 1)[-1]
    return f"{num}: control {s.get('node') or '?'} data {s.get('data_node') or '?'} {s['health']}"


FTP_KEYS = ("released_by_ack", "released_by_timeout", "held", "no-rule-match")


def ftp_on_demand(ctx: DemoContext) -> str:
    ctx.call({"cmd": "policy", "policy": "hybrid", "interval_ms": 1000})
    ctx.mem["c0"] = ctx.settled_counters(FTP_KEYS)
    ctx.mem["t0"] = time.time()
    sessions = run_ftp(ctx, FTP_SESSIONS)
    ctx.mem["c1"] = ctx.settled_counters(FTP_KEYS)
    failed = [s for s in sessions if s["health"] != "done"]
    crossed = [s for s in sessions if s.get("node") and s.get("data_node") and s["node"] != s["data_node"]]
    ctx.figures["hybrid_sessions_ok"] = len(sessions) - len(failed)
    ctx.figures["hybrid_cross_node"] = len(crossed)
    judge(ctx, "all", not failed and len(sessions) == FTP_SESSIONS,
          f"{len(sessions) - len(failed)} of {FTP_SESSIONS} sessions transferred and verified their file"
          + (f"; failed: {[s.get('detail') for s in failed][:3]}" if failed else ""))
    judge(ctx, "crossed", bool(crossed), "; ".join(session_line(s) for s in sessions))
    return f"{len(crossed)} of {len(sessions)} data connections landed on another node than their control"


def ftp_held(ctx: DemoContext) -> str:
    c0, c1 = ctx.mem["c0"], ctx.mem["c1"]
    acked = delta(c0, c1, "released_by_ack")
    timed_out = delta(c0, c1, "released_by_timeout")
    lat = release_latencies(ctx, ctx.mem["t0"])
    ctx.figures["hold_ms_p50"] = fixed(statistics.median(lat), 2) if lat else None
    ctx.figures["hold_ms_max"] = fixed(max(lat), 2) if lat else None
    judge(ctx, "held", sum(acked.values()) >= FTP_SESSIONS,
          f"PORT packets released by ack: {per_node(acked)}")
    judge(ctx, "no-timeout", sum(timed_out.values()) == 0, f"released by timeout: {per_node(timed_out)}")
    if not lat:
        return "no release events were recorded"
    return f"{len(lat)} holds, median {statistics.median(lat):.2f} ms, longest {max(lat):.2f} ms"


def ftp_periodic(ctx: DemoContext) -> str:
    ctx.call({"cmd": "policy", "policy": "periodic", "interval_ms": 60000})
    ctx.mem["p0"] = ctx.settled_counters(FTP_KEYS)
    t0 = time.time()
    sessions = run_ftp(ctx, FTP_SESSIONS)
    ctx.mem["p1"] = ctx.settled_counters(FTP_KEYS)
    failed = [s for s in sessions if s["health"] == "failed"]
    ok = [s for s in sessions if s["health"] == "done"]
    ctx.mem["p_failed"] = failed
    ctx.figures["periodic_sessions_failed"] = len(failed)
    strays = [s for s in ok if s.get("data_node") and s["data_node"] != s.get("node")]
    judge(ctx, "fails", bool(failed), "; ".join(session_line(s) for s in sessions))
    judge(ctx, "same-node", not strays,
          f"{len(ok)} sessions worked, all with their data connection on the control connection's node"
          if not strays else f"these worked across nodes without a synced expectation: "
                             f"{[session_line(s) for s in strays]}")
    held = delta(ctx.mem["p0"], ctx.mem["p1"], "released_by_ack")
    judge(ctx, "no-hold", sum(held.values()) == 0, f"packets released by ack: {per_node(held)}")
    return f"{len(failed)} of {len(sessions)} sessions failed{note_spurious(ctx, t0, set())}"


def ftp_who(ctx: DemoContext) -> str:
    nrm = delta(ctx.mem["p0"], ctx.mem["p1"], "no-rule-match")
    failed = ctx.mem.get("p_failed", [])
    fig = ctx.figures
    fig["headline"] = (f"hybrid: {fig.get('hybrid_sessions_ok')}/{FTP_SESSIONS} sessions ok "
                       f"({fig.get('hybrid_cross_node')} across nodes), PORT held "
                       f"{fig.get('hold_ms_p50')} ms median; periodic: {len(failed)}/{FTP_SESSIONS} failed")
    ctx.figures["periodic_no_rule_match"] = nrm
    judge(ctx, "dropped", sum(nrm.values()) >= len(failed) > 0,
          f"no-rule-match drops: {per_node(nrm)} for {len(failed)} failed sessions")
    return "the data connection's SYN met a node with no expectation: " + per_node(
        {n: v for n, v in nrm.items() if v})


FTP = Scenario(
    name="ftp",
    title="FTP across nodes: the PORT packet waits until its expectation is synced",
    teaches="An FTP PORT command announces a data connection the server will open back to the "
            "client; that connection may hash to another node. On-demand sync holds the PORT "
            "packet until every node knows the expectation, so the data connection is admitted "
            "anywhere. With periodic-only sync it is not known in time and is dropped.",
    lab_name="dm-ftp",
    steps=(
        Step(f"Hybrid sync. {FTP_SESSIONS} active-mode FTP sessions from c1 to s2; each data "
             "connection hashes to its own node.", ftp_on_demand,
             (expect_mem("every session transfers its file", "all"),
              expect_mem("some data connections land on another node", "crossed"))),
        Step("Each PORT packet was held until the other nodes acknowledged its expectation.", ftp_held,
             (expect_mem("every PORT packet was released by an ack", "held"),
              expect_mem("none had to be released by the timeout", "no-timeout"))),
        Step("Periodic-only sync every 60 s: the PORT goes on at once; the expectation waits for "
             "the next period.", ftp_periodic,
             (expect_mem("sessions whose data connection lands elsewhere fail", "fails"),
              expect_mem("only same-node sessions work", "same-node"),
              expect_mem("nothing is held", "no-hold"))),
        Step("The node that got the data connection had no expectation and no rule for it.", ftp_who,
             (expect_mem("it dropped the data connection as no-rule-match", "dropped"),)),
    ),
)


# ---- policies ---------------------------------------------------------------------------------------
POLICY_INTERVAL_MS = 5000
OLD_FLOWS = 12
NEW_FLOWS = 12
POLICY_FTP = 4


# State replication proper: record frames and their acks. Heartbeats (the same under every
# policy), views and bulk resyncs (membership, not traffic) are left out.
STATE_SYNC_TYPES = ("records", "ack")


def sync_cost(st: dict[str, Any]) -> tuple[int, int]:
    """Record frames (and acks) and their bytes sent by all live nodes so far."""
    msgs = nbytes = 0
    for n in st["nodes"]:
        for p in (n.get("sync") or {}).get("peers", {}).values():
            msgs += sum(p.get("sent", {}).get(k, 0) for k in STATE_SYNC_TYPES)
            nbytes += sum(p.get("bytes_sent_by_type", {}).get(k, 0) for k in STATE_SYNC_TYPES)
    return msgs, nbytes


def start_healthy(ctx: DemoContext, flows: int, clients: tuple[str, ...] = ("c1", "c2")) -> list[str]:
    """Like start_tcp, without waiting for the daemon to place the flows on nodes."""
    names = []
    share = flows // len(clients)
    for i, c in enumerate(clients):
        n = share + (flows - share * len(clients) if i == 0 else 0)
        names.append(ctx.traffic("tcp", client=c, flows=n, interval_ms=100))
    ctx.wait_for(f"{flows} healthy TCP flows", lambda: (f := ctx.flows(names)) and len(f) >= flows
                 and all(x["health"] == "healthy" for x in f), 20)
    return names


def placement(ctx: DemoContext, st: dict[str, Any]) -> dict[str, str]:
    """'src|dst' -> the node whose own table holds that connection, asked of the nodes right now."""
    where = {}
    for n in st["nodes"]:
        if n["state"] != "active":
            continue
        table = ctx.call({"cmd": "table", "node": n["name"], "scope": "own", "limit": 100000})
        for r in table.get("rows", []):
            where[f"{r.get('src')}|{r.get('dst')}"] = where[f"{r.get('dst')}|{r.get('src')}"] = n["name"]
    return where


def periodic_class(started: float, t_policy: float, t_kill: float) -> str:
    """Was a flow synced by a period before the kill? "synced", "unsynced" or "unsure" (too near a
    period boundary to tell: the timer runs on the node's own clock and ticks)."""
    period_s = POLICY_INTERVAL_MS / 1000
    last = t_policy + period_s * int((t_kill - t_policy) / period_s)  # the last period before the kill
    if last <= t_policy:
        return "unsynced"
    if started > last + 0.1:
        return "unsynced"
    if started < last - 0.5:
        return "synced"
    return "unsure"


def policy_round(policy: str) -> Callable[[DemoContext], str]:
    def run(ctx: DemoContext) -> str:
        t0 = time.time()
        ctx.call({"cmd": "policy", "policy": policy, "interval_ms": POLICY_INTERVAL_MS})
        t_policy = time.time()  # each node restarts its period timer on the policy command
        period_s = POLICY_INTERVAL_MS / 1000
        st = ctx.status()
        cost0 = sync_cost(st)
        c0 = {n["name"]: n.get("counters", {}) for n in st["nodes"]}
        old = start_healthy(ctx, OLD_FLOWS)
        # Wait past the next period boundary: the old flows are synced by it (periodic, hybrid).
        next_b = t_policy + period_s * (int((time.time() - t_policy) / period_s) + 1)
        time.sleep(max(0.0, next_b + 0.3 - time.time()))
        ftp = ctx.traffic("ftp", mode="active", sessions=POLICY_FTP, interval_ms=100)
        new = start_healthy(ctx, NEW_FLOWS)
        st = ctx.status()
        where = placement(ctx, st)
        flows = {f["name"]: f for f in ctx.flows([*old, *new])}
        node_of = {n: where.get(f"{f['src']}|{f['dst']}", "?") for n, f in flows.items()}
        nodes = sorted(set(node_of.values()) - {"?"})
        counts = {x: sum(1 for n in new if node_of.get(n) == x) for x in nodes}
        victim = max(counts, key=lambda x: counts[x])
        msgs, nbytes = sync_cost(st)
        # Holds before the kill: PORT packets waiting for their expectation's ack. (After it, the
        # backup also holds packets of sessions it does not know while it asks the cluster.)
        held = sum(delta(c0, {n["name"]: n.get("counters", {}) for n in st["nodes"]}, "held").values())
        buckets = set(ctx.nodes(st)[victim]["buckets"])
        t_kill = time.time()
        ctx.call({"cmd": "kill", "node": victim})
        st = ctx.wait_for(f"{victim}'s buckets taken over", lambda: (
            (s := ctx.status())
            and buckets <= {b for n in s["nodes"] if n["name"] != victim for b in n["buckets"]}
            and (s.get("last_takeover") or {}).get("t", 0) > t_kill and s), 10, 0.05)
        t_take = float(st["last_takeover"]["t"])
        _, lost = judge_flows(ctx, [*old, *new], t_take)
        lost_names = {f["name"] for f in lost}
        ftp_fl = ctx.wait_for("the FTP sessions to end", lambda: (
            (f := ctx.flows([ftp])) and len(f) >= POLICY_FTP
            and all(x["health"] in ("done", "failed") for x in f)
            and f), 20, 0.2)
        lat = [float(e["latency_ms"]) for e in events_since(ctx, t0)
               if e.get("kind") == "release" and float(e["t"]) < t_kill and e.get("latency_ms") is not None]
        cls = {n: periodic_class(float(flows[n]["started"]), t_policy, t_kill) for n in flows}
        on_victim = [n for n in flows if node_of[n] == victim]
        row = {
            "policy": policy,
            "victim": victim,
            "victim_flows": len(on_victim),
            "victim_unsynced_flows": sum(cls[n] == "unsynced" for n in on_victim),
            "flows_lost": len(lost),
            "ftp_failed": sum(f["health"] == "failed" for f in ftp_fl),
            "sync_msgs": msgs - cost0[0],
            "sync_bytes": nbytes - cost0[1],
            "held_packets": held,
            "hold_ms_p50": fixed(statistics.median(lat), 2) if lat else None,
            "hold_ms_max": fixed(max(lat), 2) if lat else None,
            "takeover_ms": st["last_takeover"].get("takeover_ms"),
        }
        ctx.mem.setdefault("rows", {})[policy] = row
        note = note_spurious(ctx, t0, {victim})
        ctx.call({"cmd": "revive", "node": victim})
        wait_active(ctx, victim, buckets)
        # The flows keep running: an established flow costs no sync at all, while stopping it
        # would send closes and, 10 s later, deletes into the next round's figures.
        if policy == "periodic":
            # Lost must be exactly the dead node's flows opened since the last period.
            should = {n for n in on_victim if cls[n] == "unsynced"}
            unsure = {n for n in on_victim if cls[n] == "unsure"}
            wrong_lost = lost_names - should - unsure
            wrong_kept = should - lost_names
            judge(ctx, policy, bool(should) and not wrong_lost and not wrong_kept,
                  f"killed {victim}: it carried {len(on_victim)} flows, {len(should)} opened since the last "
                  f"period ({len(unsure)} too near a period to tell); lost {len(lost)}"
                  + (f"; lost though synced: {sorted(wrong_lost)}" if wrong_lost else "")
                  + (f"; survived though never synced: {sorted(wrong_kept)}" if wrong_kept else "")
                  + ("" if should else "; no flow of the victim was opened after the last period "
                     "(the machine is too slow for this timeline)"))
        else:
            judge(ctx, policy, not lost, f"killed {victim} ({len(on_victim)} flows): {lost_text(lost)}")
        return (f"{victim} killed: {len(lost)} of {len(flows)} flows lost, {row['sync_msgs']} sync "
                f"messages ({row['sync_bytes']} B), {held} packets held{note}")

    return run


def policies_table(ctx: DemoContext) -> str:
    rows = ctx.mem.get("rows", {})
    ctx.figures["policies"] = rows
    head = ("policy", "flows lost", "ftp failed", "sync msgs", "sync bytes", "held", "hold p50 ms")
    lines = ["  ".join(f"{h:>11}" for h in head)]
    for p, r in rows.items():
        cells = (p, r["flows_lost"], r["ftp_failed"], r["sync_msgs"], r["sync_bytes"],
                 r["held_packets"], "-" if r["hold_ms_p50"] is None else r["hold_ms_p50"])
        lines.append("  ".join(f"{c:>11}" for c in cells))
    judge(ctx, "table", len(rows) == 3, f"{len(rows)} policies measured")
    ctx.figures["headline"] = "; ".join(f"{p}: {r['flows_lost']} flows lost, {r['sync_msgs']} sync msgs"
                                        for p, r in rows.items())
    return "\n".join(lines)


POLICIES = Scenario(
    name="policies",
    title="Periodic, on-demand and hybrid sync under the same traffic and the same failure",
    teaches="Periodic sync batches changes and sends them every interval: cheap, but a node that "
            "dies loses every connection opened since the last period. On-demand sync sends each "
            "change at once (and holds FTP PORT packets until acked): nothing is lost. Hybrid adds "
            "a periodic safety net to on-demand.",
    lab_name="dm-policies",
    steps=(
        Step(f"Periodic sync every {POLICY_INTERVAL_MS // 1000} s. {OLD_FLOWS} flows start, a period "
             f"passes, {NEW_FLOWS} new flows and {POLICY_FTP} FTP sessions start, then the node with the "
             "most new flows is killed.", policy_round("periodic"),
             (expect_mem("flows synced by the last period survive; the newer flows of the dead node are "
                         "lost", "periodic"),)),
        Step("The same traffic and failure with on-demand sync.", policy_round("on-demand"),
             (expect_mem("no flow is lost", "on-demand"),)),
        Step(f"The same with hybrid sync (on demand, plus every {POLICY_INTERVAL_MS // 1000} s).",
             policy_round("hybrid"), (expect_mem("no flow is lost", "hybrid"),)),
        Step("Side by side.", policies_table, (expect_mem("all three policies were measured", "table"),)),
    ),
)


# ---- join and leave -----------------------------------------------------------------------------------
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
        return ([e["t"] for e in evs if e.get("kind") == "sync" and e.get("text") == "ResyncComplete"],
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


# ---- backup groups (pure simulation) ---------------------------------------------------------------
GROUP_SIZES = (3, 4, 6)
RECORDS_PER_NODE = 200
COMMON_RECORDS = 10


def bytes_per_record() -> float:
    """Measured here: what one replicated record costs in a MemoryStore."""
    from sync.records import MemoryStore, Record, Scope

    n = 2000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = MemoryStore()
        for i in range(n):
            store.apply(Record(f"n1-{i:06d}".encode(), Scope.NODE, "n1", 1, 1, [i, 6, 1], False))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del store
    return used / n


def simulate(nodes: int, backups: int) -> dict[str, Any]:
    """A settled cluster, then RECORDS_PER_NODE connections per node and some common state."""
    from sync.records import Scope
    from sync.sim import SimCluster

    c = SimCluster(nodes, buckets=12, seed=7, backups=backups, miss_limit=10)
    c.start()
    if not c.run_until(c.all_active, 5.0):
        raise DemoError(f"the simulated {nodes}-node cluster did not settle")
    c.run(0.3)
    b0, s0 = c.stats.bytes, c.stats.sent
    c.run(0.5)  # the same idle time afterwards measures heartbeats, left out below
    idle_b, idle_s = c.stats.bytes - b0, c.stats.sent - s0
    b1, s1 = c.stats.bytes, c.stats.sent
    for name in c.names:
        for i in range(RECORDS_PER_NODE):
            c.put(name, f"{name}-{i:05d}".encode(), [i, 6, 1])
    for i in range(COMMON_RECORDS):
        c.put(c.names[0], f"common-{i}".encode(), [i], scope=Scope.COMMON)
    c.run(0.5)
    held = {x: sum(1 for _ in c.stores[x].records()) for x in c.names}
    return {"entries_per_node": max(held.values()), "entries_total": sum(held.values()),
            "sync_bytes": c.stats.bytes - b1 - idle_b, "sync_datagrams": c.stats.sent - s1 - idle_s}


def groups_run(ctx: DemoContext) -> str:
    per_rec = bytes_per_record()
    rows = []
    for n in GROUP_SIZES:
        cyc, mesh = simulate(n, 1), simulate(n, n - 1)
        for r in (cyc, mesh):
            r["memory_bytes_per_node"] = round(r["entries_per_node"] * per_rec)
        rows.append({"nodes": n, "cyclic": cyc, "mesh": mesh,
                     "memory_ratio": round(cyc["entries_total"] / mesh["entries_total"], 3),
                     "traffic_ratio": round(cyc["sync_bytes"] / mesh["sync_bytes"], 3)})
    ctx.mem["rows"] = rows
    ctx.figures["bytes_per_entry"] = round(per_rec)
    ctx.figures["headline"] = "cyclic / full mesh entries: " + ", ".join(
        f"{r['nodes']} nodes {r['memory_ratio']:.2f}" for r in rows)
    ctx.figures["groups"] = rows
    lines = [f"{'nodes':>5} {'entries/node cyclic':>20} {'full mesh':>10} {'memory':>7} "
             f"{'sync KiB cyclic':>16} {'full mesh':>10} {'traffic':>8}"]
    for r in rows:
        c, m = r["cyclic"], r["mesh"]
        lines.append(f"{r['nodes']:>5} {c['entries_per_node']:>20} {m['entries_per_node']:>10} "
                     f"{r['memory_ratio']:>7.2f} {c['sync_bytes'] / 1024:>16.1f} "
                     f"{m['sync_bytes'] / 1024:>10.1f} "
                     f"{r['traffic_ratio']:>8.2f}")
    lines.append(f"(one entry ~{per_rec:.0f} B in memory; {RECORDS_PER_NODE} connections per node "
                 f"+ {COMMON_RECORDS} common records)")
    return "\n".join(lines)


def groups_memory(ctx: DemoContext) -> Check:
    rows = ctx.mem.get("rows", [])
    bad = []
    for r in rows:
        # cyclic with one backup holds own + one peer's (2R) where a mesh holds everyone's (nR);
        # common state is held everywhere either way: the "small constant".
        bound = 2 / r["nodes"] + COMMON_RECORDS / RECORDS_PER_NODE
        if r["memory_ratio"] > bound:
            bad.append(f"{r['nodes']} nodes: {r['memory_ratio']} > {bound:.2f}")
    text = "; ".join(f"{r['nodes']} nodes: {r['memory_ratio']:.2f} of a full mesh" for r in rows)
    return Check(bool(rows) and not bad, text + (f"; over the bound: {bad}" if bad else ""))


def groups_traffic(ctx: DemoContext) -> Check:
    rows = ctx.mem.get("rows", [])
    ratios = [r["traffic_ratio"] for r in rows]
    falling = all(a > b for a, b in itertools.pairwise(ratios))
    return Check(bool(rows) and all(x < 1 for x in ratios) and falling,
                 "; ".join(f"{r['nodes']} nodes: {r['traffic_ratio']:.2f} of the mesh's bytes" for r in rows))


BACKUP_GROUPS = Scenario(
    name="backup-groups",
    title="Cyclic backup groups against a full mesh: memory and sync traffic for 3, 4 and 6 nodes",
    teaches="With cyclic backup groups each node's connections go to one backup, so every node "
            "holds its own share and one peer's, whatever the cluster size; a full mesh sends "
            "every change to every node and holds everything everywhere. Common state (FTP "
            "expectations, blocklists) goes to all nodes either way.",
    needs_lab=False,
    steps=(
        Step(f"Simulate clusters of {', '.join(map(str, GROUP_SIZES))} nodes (sync/sim.py, real agents, "
             "simulated links): cyclic groups (one backup) and a full mesh, the same connections.",
             groups_run,
             (Expectation("cyclic holds at most 2/n of the mesh's entries (+ common state)", groups_memory),
              Expectation("cyclic sends fewer sync bytes, and the saving grows with the cluster",
                          groups_traffic))),
    ),
)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (BASICS, TAKEOVER, FTP, POLICIES, JOIN_AND_LEAVE,
                                                      BACKUP_GROUPS)}
