"""Pure helpers for the console: row diffs, cell formatting, takeover tracking (no Textual here)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from netns.api import FlowReport

Cells = tuple[str, ...]

# Triggers that mean "this row arrived here because a node went away or came back".
# The engines' own words for an adopted copy ("promoted", "adopted": engine/backups.py) and the
# sync triggers it is re-sent under (sync/records.py Trigger).
TAKEOVER_TRIGGERS = frozenset({"node-failed", "graceful-leave", "rebalance", "promoted", "adopted"})


class Scope(Enum):
    OWN = "own"
    BACKUP = "backup"
    COMMON = "common"


@dataclass(frozen=True, slots=True)
class RowDiff:
    """What changed between two versions of a table, keyed by row key."""

    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # key -> (column, value)
    added: list[tuple[str, Cells]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.removed or self.changed or self.added)


def diff_rows(old: dict[str, Cells], new: Iterable[tuple[str, Cells]]) -> RowDiff:
    """Compare the rows on screen with the rows just fetched; only the differences come back."""
    diff = RowDiff()
    seen: set[str] = set()
    for key, cells in new:
        if key in seen:
            continue  # a key twice in one reply: keep the first, DataTable keys must be unique
        seen.add(key)
        before = old.get(key)
        if before is None:
            diff.added.append((key, cells))
        elif before != cells:
            diff.changed[key] = [(i, v) for i, (a, v) in enumerate(zip(before, cells, strict=True)) if a != v]
    diff.removed.extend(k for k in old if k not in seen)
    return diff


def fmt_age(age_s: float) -> str:
    """Whole seconds, so that the age cell changes at most once a second."""
    s = int(age_s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


CONN_COLUMNS: Sequence[tuple[str, str]] = (
    ("proto", "Proto"),
    ("endpoints", "Endpoints"),
    ("state", "State"),
    ("owner", "Owner"),
    ("synced_to", "Synced to"),
    ("age", "Age"),
    ("trigger", "Last trigger"),
)
# Wide enough for IPv4 endpoints, TCP states and the sync triggers.
CONN_WIDTHS: dict[str, int] = {"proto": 5, "endpoints": 38, "state": 11, "owner": 6,
                               "synced_to": 10, "age": 5, "trigger": 18}
OWNER_COLUMN = 3
# At 100 columns: short headers and narrower cells, so that the last column is not cut off.
CONN_NARROW: Sequence[tuple[str, str]] = (
    ("proto", "P"), ("endpoints", "Endpoints"), ("state", "State"), ("owner", "Owner"),
    ("synced_to", "Synced"), ("age", "Age"), ("trigger", "Trigger"))
CONN_NARROW_WIDTHS: dict[str, int] = {"proto": 3, "endpoints": 36, "state": 11, "owner": 6,
                                      "synced_to": 6, "age": 5, "trigger": 14}
# Beside the demo panel: the owner first, where the panel cannot hide it.
CONN_TIGHT: Sequence[tuple[str, str]] = (
    ("owner", "Owner"), ("state", "State"), ("endpoints", "Endpoints"), ("proto", "P"),
    ("synced_to", "Synced"), ("age", "Age"), ("trigger", "Trigger"))
WIDE_MIN = 108  # a pane at least this wide shows CONN_COLUMNS whole
NARROW_MIN = 90


def conn_layout(width: int) -> tuple[Sequence[tuple[str, str]], dict[str, int]]:
    """The connection table's columns for a pane `width` cells wide."""
    if width >= WIDE_MIN:
        return CONN_COLUMNS, CONN_WIDTHS
    if width >= NARROW_MIN:
        return CONN_NARROW, CONN_NARROW_WIDTHS
    return CONN_TIGHT, CONN_NARROW_WIDTHS


def conn_cells(row: dict[str, Any], down: frozenset[str] = frozenset()) -> Cells:
    """One connection row; `synced_to` without the nodes that are down (`down`): the engines'
    provenance names every peer a record was sent to, dead ones included, but a copy on a dead
    node is no copy."""
    synced = [p for p in row.get("synced_to") or [] if str(p) not in down]
    return (
        str(row.get("proto", "")),
        f"{row.get('src', '')} → {row.get('dst', '')}" + (f" nat {row['nat']}" if row.get("nat") else ""),
        str(row.get("state", "")),
        str(row.get("owner", "")),
        ",".join(map(str, synced)) if synced else "-",
        fmt_age(float(row.get("age_s", 0.0))),
        str(row.get("trigger", "")),
    )


FLOW_COLUMNS: Sequence[tuple[str, str]] = (
    ("name", "Flow"),
    ("kind", "Kind"),
    ("path", "Client → server"),
    ("health", "Health"),
    ("bytes", "Bytes"),
    ("pause", "Longest pause"),
    ("node", "Node"),
    ("age", "Age"),
    ("detail", "Detail"),
)
HEALTH_COLUMN = 3


def fmt_pause(pause_ms: Any) -> str:
    """A flow's longest pause: `-` when its workload does not measure one (FTP, bursts)."""
    if not isinstance(pause_ms, (int, float)) or isinstance(pause_ms, bool):
        return "-"
    return f"{pause_ms:.0f} ms" if pause_ms < 10_000 else f"{pause_ms / 1000:.1f} s"


def flow_cells(flow: FlowReport | dict[str, Any]) -> Cells:
    """One row of the flows board from a flow report (netns.api.FlowReport: src is the client)."""
    return (
        str(flow.get("name", "")),
        str(flow.get("kind", "")),
        f"{flow.get('src') or '?'} → {flow.get('dst') or '?'}",
        str(flow.get("health", "")),
        fmt_bytes(float(flow.get("bytes") or 0)),
        fmt_pause(flow.get("longest_pause_ms")),
        str(flow.get("node") or "-"),
        fmt_age(float(flow.get("age_s") or 0.0)),
        str(flow.get("detail", "")),
    )


FLOW_HEALTHS = ("healthy", "stalled", "broken", "done", "failed")


def flow_counts(flows: Iterable[FlowReport | dict[str, Any]]) -> dict[str, int]:
    """How many flows are in each health (netns/workloads/health.py FlowHealth), all five."""
    counts = dict.fromkeys(FLOW_HEALTHS, 0)
    for flow in flows:
        health = str(flow.get("health", ""))
        if health in counts:
            counts[health] += 1
    return counts


REPEAT = "\u00d7"  # the multiplication sign: a timeline row that stands for 3 events says so
EVENT_COLUMNS: Sequence[tuple[str, str]] = (
    ("t", "Time"),
    ("count", REPEAT),
    ("node", "Node"),
    ("kind", "Kind"),
    ("peers", "Peers"),
    ("latency", "Ack ms"),
    ("text", "What happened"),
)


def fmt_clock(t: float) -> str:
    """A lab time (the daemon's clock: epoch seconds) as the local wall clock to the
    millisecond, `14:03:07.250`: what an operator compares with a watch or a capture."""
    ms = round(t * 1000)
    try:
        stamp = datetime.fromtimestamp(ms // 1000)
    except (OverflowError, OSError, ValueError):
        return f"{t:.3f}"
    return f"{stamp:%H:%M:%S}.{ms % 1000:03d}"


def event_key(event: dict[str, Any]) -> str:
    """The daemon numbers its events; without an id, the event's content identifies it."""
    if "id" in event:
        return str(event["id"])
    return f"{event.get('t')}|{event.get('node')}|{event.get('kind')}|{event.get('text')}"


@dataclass(frozen=True, slots=True)
class EventRun:
    """Events in a row that say the same thing (node, kind and text): one timeline row, with the count."""

    events: tuple[dict[str, Any], ...]  # oldest first

    @property
    def key(self) -> str:
        # the first event's: a repeat that joins the run changes the row, not its key
        return event_key(self.events[0])

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def count(self) -> int:
        return len(self.events)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(f) == b.get(f) for f in ("node", "kind", "text"))


def collapse_events(events: Iterable[dict[str, Any]]) -> list[EventRun]:
    """The events (the lab's order: oldest first) with each run of identical ones as one."""
    runs: list[list[dict[str, Any]]] = []
    for event in events:
        if runs and _same(runs[-1][-1], event):
            runs[-1].append(event)
        else:
            runs.append([event])
    return [EventRun(tuple(run)) for run in runs]


def event_matches(event: dict[str, Any], needle: str) -> bool:
    """The timeline's filter: every word of `needle` begins the event's node or its kind
    (`n2`, `takeover`, `n1 sync`); an empty needle matches every event."""
    fields = (str(event.get("node", "")).lower(), str(event.get("kind", "")).lower())
    return all(any(f.startswith(word) for f in fields) for word in needle.lower().split())


def event_cells(run: EventRun | dict[str, Any]) -> Cells:
    """One timeline row: the newest event of a run, with how many it stands for."""
    if isinstance(run, dict):
        run = EventRun((run,))
    event = run.last
    latency = event.get("latency_ms")
    return (
        fmt_clock(float(event.get("t", 0.0))),
        f"{REPEAT}{run.count}" if run.count > 1 else "",
        str(event.get("node", "")),
        str(event.get("kind", "")),
        ",".join(event.get("peers") or []) or "-",
        "-" if latency is None else f"{float(latency):.2f}",
        str(event.get("text", "")),
    )


def provenance(events: Sequence[dict[str, Any]], selected: dict[str, Any],
               run: EventRun | None = None, lab_now: float | None = None) -> list[str]:
    """Lines telling where a sync event came from: the event, then everything about its key.
    `run`: the repeats the row stands for; `lab_now`: the snapshot's time, for the event's age."""
    t = float(selected.get("t", 0.0))
    age = f" ({lab_now - t:.1f} s ago)" if lab_now is not None and lab_now >= t else ""
    lines = [
        f"[b]{selected.get('kind', '')}[/b] at {fmt_clock(t)}{age} on {selected.get('node', '')}",
        f"  {selected.get('text', '')}",
    ]
    if run is not None and run.count > 1:
        first = fmt_clock(float(run.events[0].get("t", 0.0)))
        lines.append(f"  {REPEAT}{run.count} in a row: first at {first}, last at {fmt_clock(t)}")
    if selected.get("trigger"):
        lines.append(f"  trigger: {selected['trigger']}")
    if selected.get("peers"):
        lines.append(f"  sent to: {', '.join(selected['peers'])}")
    if selected.get("latency_ms") is not None:
        lines.append(f"  acked after {float(selected['latency_ms']):.2f} ms")
    key = selected.get("key")
    if key:
        chain = [e for e in events if e.get("key") == key]
        lines.append(f"  record {key}: {len(chain)} event(s) in the timeline")
        for e in chain[-8:]:
            mark = "▶" if event_key(e) == event_key(selected) else " "
            when = fmt_clock(float(e.get("t", 0.0)))
            lines.append(f"  {mark} {when} {e.get('kind', '')}: {e.get('text', '')}")
    return lines


class CounterWindow:
    """Lifetime totals (counters that only grow, as a node reports them) turned into how much
    each grew over the last `window_s` seconds, so that trouble that is over stops showing.

    `now_s` is the lab's clock (the snapshot's time), the same on every console and in a
    replay. A total that went down is a restarted process, and time that went back a replay
    sought backwards: the history starts again, and shows nothing until a total grows."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def observe(self, now_s: float, totals: dict[str, int]) -> dict[str, int]:
        """The counters that grew within the window, and by how much."""
        if self._samples:
            t, last = self._samples[-1]
            if now_s < t or any(k in totals and totals[k] < v for k, v in last.items()):
                self._samples.clear()
        self._samples.append((now_s, dict(totals)))
        # the base: the newest sample at least a window old, else the oldest there is
        while len(self._samples) > 1 and self._samples[1][0] <= now_s - self.window_s:
            self._samples.popleft()
        base = self._samples[0][1]
        return {k: v - base.get(k, 0) for k, v in totals.items() if v > base.get(k, 0)}


def takeover_times(nodes: Iterable[dict[str, Any]]) -> dict[str, float]:
    """When each node last took buckets over, in the lab's clock (the node's `last_takeover.t`)."""
    out: dict[str, float] = {}
    for node in nodes:
        take = node.get("last_takeover")
        t = take.get("t") if isinstance(take, dict) else None
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            out[str(node.get("name"))] = float(t)
    return out


class TakeoverStars:
    """Which rows wear a star: those the lab says were adopted in a takeover that is still recent.

    A row is starred when its own trigger says it arrived by a takeover and its owner took
    buckets over less than `hold_s` ago (by the lab's clock): the same rows on every console,
    whichever node was on screen before, and none after `hold_s`.
    """

    def __init__(self, hold_s: float = 10.0) -> None:
        self.hold_s = hold_s
        self.lit: set[str] = set()

    def observe(self, rows: Iterable[dict[str, Any]], takeovers: dict[str, float],
                lab_now: float) -> tuple[set[str], set[str]]:
        """The rows of one fetch; returns (keys that lit up, keys that went dark)."""
        recent = {n for n, t in takeovers.items() if 0 <= lab_now - t < self.hold_s}
        # A starred row keeps its star while its owner's takeover is recent, even when a later
        # change (a TCP state moving on) gives it another trigger.
        lit = {str(r.get("key")) for r in rows if str(r.get("owner", "")) in recent and (
            r.get("trigger") in TAKEOVER_TRIGGERS or str(r.get("key")) in self.lit)}
        before, self.lit = self.lit, lit
        return lit - before, before - lit

    def is_lit(self, key: str) -> bool:
        return key in self.lit


def empty_hint(snapshot: dict[str, Any], *, viewer: bool) -> str:
    """What to press in a lab with no connections and no flows ("" when there is traffic)."""
    nodes = snapshot.get("nodes") or []
    if not nodes or snapshot.get("flows") or any(int(n.get("own") or 0) for n in nodes):
        return ""
    if viewer:
        return "The lab is quiet: no connections yet. The operator starts the traffic."
    return ("The lab is quiet: no connections yet. Press [b]a[/b] to start traffic, "
            "[b]d[/b] for a guided demo, [b]?[/b] for every key.")


def takeover_to_follow(head: dict[str, Any], selected: str, state_of: Callable[[str], str],
                       followed: Any) -> list[str] | None:
    """The adopters to move the table to after `selected` failed or left, per the headline
    (adopters first, then whom they took from); None to do nothing yet.

    The headline comes from the adopter and the node's state from the lab, so the headline can
    arrive a snapshot before the lab marks the node down: then nothing is done, and the next
    snapshot asks again (the headline's time tells one takeover from the next)."""
    nodes = [str(n) for n in head.get("nodes") or []]
    if head.get("kind") not in ("takeover", "leave") or len(nodes) < 2 or head.get("t") is None:
        return None
    if head["t"] == followed or nodes[-1] != selected:
        return None
    if state_of(selected) not in ("failed", "offline"):
        return None
    return [n for n in nodes[:-1] if state_of(n) == "active"]
