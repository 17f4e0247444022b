"""The demos' framework: a scenario is a list of steps (caption, action, expectations) run against
a lab through a DemoContext; the helpers here are what several scenarios' steps share."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from demos import flows as flow_judge
from netns.spec import ns_name
from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

# A lost flow makes no progress after the takeover; a surviving one moves again within
# a few TCP retransmissions (200 ms, then 400 ms ...). Three seconds is many of those.
SURVIVE_WITHIN_S = 3.0
ACTION_TIMEOUT_S = 15.0


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
    lab_settings: str = ""  # TOML lines added to the default lab's file for that lab


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


def start_tcp(ctx: DemoContext, flows: int, clients: tuple[str, ...] = ("c1", "c2"),
              placed: bool = True) -> list[str]:
    """Long-lived, sequence-checked TCP flows split over the clients, all healthy and (unless
    `placed` is False) placed on nodes by the daemon. Returns the workload names."""
    names = []
    share = flows // len(clients)
    for i, c in enumerate(clients):
        n = share + (flows - share * len(clients) if i == 0 else 0)
        names.append(ctx.traffic("tcp", client=c, flows=n, interval_ms=100))

    def ready() -> list[dict[str, Any]] | None:
        fl = ctx.flows(names)
        if len(fl) >= flows and all(f["health"] == "healthy" and (f.get("node") or not placed)
                                    for f in fl):
            return fl
        if any(flow_judge.broke(f) for f in fl):
            bad = [f"{f['name']}: {f['detail']}" for f in fl if flow_judge.broke(f)]
            raise DemoError(f"flows broke before anything was done to the lab: {bad[:3]}")
        return None

    ctx.wait_for(f"{flows} healthy TCP flows" + (" placed on nodes" if placed else ""), ready, 20)
    return names


def flows_by_node(ctx: DemoContext, names: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in ctx.flows(names):
        out.setdefault(f.get("node") or "?", []).append(f["name"])
    return out


def judge_flows(ctx: DemoContext, names: Iterable[str],
                since_t: float) -> tuple[list[str], list[dict[str, Any]]]:
    """The flows of workloads `names` that moved again after `since_t` (wall clock) and never
    broke, judged by demos.flows: (survivor names, lost flows)."""
    workloads = list(names)
    verdict = flow_judge.judge(lambda: ctx.flows(workloads), since_t, SURVIVE_WITHIN_S)
    return [str(f["name"]) for f in verdict.survived], list(verdict.lost)


lost_text = flow_judge.lost_text


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

