"""The lab's headline: one sentence on what last happened to the cluster, built from the events alone.

The daemon's status (netns/handlers.py) and the console's fake lab both call `build`, so there is
one place that says who took over from whom. It reads the events as the daemon keeps them:
`action` (node = the node acted on, `action` = kill/crash/offline/revive), the engines'
`peer-down`/`peer-up` (node = the observer, `peer`), `leave` (node = the leaver), `fault`, and the
daemon's `takeover` (node = the adopter, with `promoted`, `buckets`, `detect_to_accept_ms`, and
optionally `takeover_ms` and `replayed`). An engine's own `takeover` event carries no timing and
is followed by the daemon's, so it is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# How long a headline stays up before it returns to "all nodes in step": long enough to read it
# aloud and point at the cards after a kill (a takeover takes well under a second, the audience
# needs several), short enough that the screen is current again before the next step of a demo.
# The event itself stays in the timeline.
HOLD_S = 30.0
QUIET = "all nodes in step"
FAILING = ("kill", "crash", "offline")
MERGE_S = 5.0  # takeovers of one failed node by several adopters within this read as one
HEAL_S = 10.0  # bucket moves this soon after `fault heal` are the views merging, not a takeover


def _conns(n: int) -> str:
    return f"{n} connection{'' if n == 1 else 's'}"


@dataclass
class Headline:
    kind: str  # quiet, takeover, leave, rejoin, suspicion, fault
    text: str
    t: float | None = None
    nodes: list[str] = field(default_factory=list)  # the adopter(s) first, then whom they took from

    def render(self, now: float) -> str:
        if self.t is None:
            return self.text
        return f"{self.text} · {max(0, int(now - self.t))} s ago"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "t": self.t, "nodes": list(self.nodes)}


def _action(ev: Mapping[str, Any]) -> str:
    return str(ev.get("action") or str(ev.get("text", "")).split(" ")[0]).lower()


def _peer(ev: Mapping[str, Any]) -> str:
    peers = ev.get("peers") or []
    return str(ev.get("peer") or (peers[0] if peers else ""))


def _ms(ev: Mapping[str, Any]) -> float | None:
    ms = ev.get("takeover_ms", ev.get("detect_to_accept_ms"))
    return float(ms) if isinstance(ms, (int, float)) else None


def fault_label(fault: Mapping[str, Any]) -> str:
    """A fault in a few words (`loss 30% on n2`, `partition n1 | n2,n3`); its effect apart."""
    kind = str(fault.get("kind", "fault"))
    if kind == "partition" and fault.get("groups"):
        return "partition " + " | ".join(",".join(map(str, g)) for g in fault["groups"])
    if kind == "loss" and isinstance(fault.get("rate"), (int, float)):
        return f"loss {float(fault['rate']):.0%} into {fault.get('node') or 'all'}"
    if kind == "slow" and fault.get("delay_ms") is not None:
        return f"{fault.get('node', '?')} slow by {fault['delay_ms']} ms"
    if kind == "cut" and fault.get("node") and fault.get("link"):
        how = "cut silently" if fault.get("silent") else "down"
        flap = f", flapping every {fault['flap_ms']} ms" if fault.get("flap_ms") else ""
        return f"{fault['node']}'s {fault['link']} link {how}{flap}"
    rest = " ".join(str(v) for k, v in fault.items()
                    if k not in ("cmd", "kind", "effect") and v not in (None, ""))
    return f"{kind} {rest}".strip()


def _fault_text(faults: Sequence[Mapping[str, Any]]) -> str:
    return "fault active: " + "; ".join(fault_label(f) for f in faults)


def build(events: Iterable[Mapping[str, Any]], now: float, *,
          faults: Sequence[Mapping[str, Any]] | None = None,
          down: Iterable[str] = ()) -> Headline:
    """The headline for the events so far (oldest first, as kept), seen at `now`."""
    last_action: dict[str, tuple[str, float]] = {}
    down_seen: dict[tuple[str, str], tuple[float, bool]] = {}  # (observer, peer) -> (t, closed)
    left: dict[str, float] = {}
    took: dict[tuple[str, str], int] = {}  # (adopter, peer) -> connections, for a false suspicion
    head = Headline("quiet", QUIET)
    healed_at: float | None = None
    for ev in sorted(events, key=lambda e: float(e.get("t", 0.0))):
        t, node, kind = float(ev.get("t", 0.0)), str(ev.get("node", "")), ev.get("kind")
        if kind == "action":
            last_action[node] = (_action(ev), t)
            if _action(ev) == "revive":
                head = Headline("rejoin", f"{node} is rejoining: resyncing state", t, [node])
        elif kind == "peer-down" and _peer(ev):
            down_seen[(node, _peer(ev))] = (t, bool(ev.get("closed")))
        elif kind == "peer-up" and (node, _peer(ev)) in down_seen:
            peer = _peer(ev)
            since, closed = down_seen.pop((node, peer))
            act, at = last_action.get(peer, ("", 0.0))
            if not closed and not (act in (*FAILING, "revive") and at <= t):
                n = took.pop((node, peer), None)
                what = f" and took over {_conns(n)}" if n is not None else ""
                head = Headline("suspicion", f"false suspicion: {node} thought {peer} failed "
                                f"(missed heartbeats){what}; {peer} answered "
                                f"{(t - since) * 1000:.0f} ms later", t, [node, peer])
        elif kind == "leave":
            left[node] = t
            head = Headline("leave", f"{node} left gracefully", t, [node])
        elif kind == "fault":
            head = Headline("fault", str(ev.get("text", "fault")), t, [])
            if str(ev.get("text", "")).startswith("fault heal"):
                healed_at = t
                head = Headline("fault", "faults healed: the nodes merge their views", t, [])
        elif kind == "takeover" and "promoted" in ev and _ms(ev) is not None:
            if healed_at is not None and 0 <= t - healed_at <= HEAL_S:
                buckets = ", ".join(str(b) for b in ev.get("buckets") or []) or "none"
                head = Headline("rejoin", f"after the heal, {node} holds buckets {buckets} "
                                f"({_conns(int(ev.get('promoted') or 0))})", t, [node])
                continue
            head = _takeover(ev, head, last_action, down_seen, left, took)
    if faults:
        return Headline("fault", _fault_text(faults), head.t if head.kind == "fault" else None)
    if head.t is not None and now - head.t > HOLD_S:
        gone = sorted(down)
        head = Headline("quiet", f"{', '.join(gone)} down; the others in step" if gone else QUIET)
    return head


def _takeover(ev: Mapping[str, Any], head: Headline, last_action: dict[str, tuple[str, float]],
              down_seen: dict[tuple[str, str], tuple[float, bool]], left: dict[str, float],
              took: dict[tuple[str, str], int]) -> Headline:
    t, adopter = float(ev["t"]), str(ev.get("node", ""))
    n, ms = int(ev.get("promoted") or 0), _ms(ev)
    replayed = ev.get("replayed")
    tail = (f", replayed {replayed} packet{'' if replayed == 1 else 's'}"
            if isinstance(replayed, int) and replayed else "")
    # Whom from: the peers the adopter itself saw go down, else a node that just left.
    of = sorted({p for (o, p) in down_seen if o == adopter})
    # A leaver stays one until it is revived.
    leavers = sorted(p for p, at in left.items() if at <= t and p != adopter
                     and last_action.get(p, ("", 0.0))[0] != "revive") or sorted(
        p for p, (a, at) in last_action.items() if a == "offline" and at <= t and p != adopter)
    act, _at = last_action.get(adopter, ("", 0.0))
    if not of and act == "revive":
        buckets = ", ".join(str(b) for b in ev.get("buckets") or []) or "none"
        return Headline("rejoin", f"{adopter} rejoined: took back buckets {buckets} with "
                        f"{_conns(n)} in {ms:.0f} ms{tail}", t, [adopter])
    if not of and leavers:
        who = leavers[-1]
        return Headline("leave", f"{who} left gracefully: {adopter} took over its "
                        f"{_conns(n)} in {ms:.0f} ms{tail}", t, [adopter, who])
    who = ", ".join(of) or "a peer"
    for p in of:
        took[(adopter, p)] = took.get((adopter, p), 0) + n
    if (head.kind == "takeover" and head.t is not None and t - head.t <= MERGE_S
            and head.nodes[-1:] == [who] and adopter not in head.nodes):
        # Several adopters of one failed node: one sentence, the counts summed.
        adopters = [*head.nodes[:-1], adopter]
        n += int(head.text.split(" took over ")[1].split(" ")[0])
        return Headline("takeover", f"{' and '.join(adopters)} took over {_conns(n)} of "
                        f"{who} in {ms:.0f} ms{tail}", t, [*adopters, who])
    return Headline("takeover", f"{adopter} took over {_conns(n)} of {who} in {ms:.0f} ms{tail}",
                    t, [adopter, who])


def describe(events: Iterable[Mapping[str, Any]], takeover: Mapping[str, Any]) -> str:
    """The sentence for a new takeover event, to be its text: what the headline will say of it."""
    t = float(takeover["t"])
    return build([*events, {**takeover, "kind": "takeover"}], t).text


def describe_lab(status: Mapping[str, Any]) -> str:
    """The lab in one sentence for people: `3 nodes, 12 buckets, backups n1→n2→n3→n1`."""
    nodes = [n for n in status.get("nodes") or [] if isinstance(n, Mapping)]
    names = [str(n.get("name")) for n in nodes]
    backups = {str(n.get("name")): [str(b) for b in n.get("backups") or []] for n in nodes}
    text = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {status.get('buckets', '?')} buckets"
    if not names or not any(backups.values()):
        return text + ", no backups" if len(names) > 1 else text
    chain, at = [names[0]], names[0]
    while all(len(b) == 1 for b in backups.values()) and len(chain) <= len(names):
        at = backups[at][0]
        chain.append(at)
        if at == names[0]:
            break
    if chain[-1] == names[0] and len(chain) == len(names) + 1:
        return f"{text}, backups {'→'.join(chain)}"  # one ring: each node backed by the next
    groups = "; ".join(f"{n}→{','.join(b) or 'none'}" for n, b in backups.items())
    return f"{text}, backups {groups}"
