"""The cluster view: one card per gateway node, with its state, buckets, backups and sync rate."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Sparkline, Static

from app.console.model import CounterWindow

STATES = ("active", "failed", "offline", "joining", "degraded", "attention")
STATE_MARK = {"active": "●", "failed": "✖", "offline": "○", "joining": "◐", "degraded": "◑", "attention": "!"}
PATH_NAMES = ("sync", "inside", "outside")
HISTORY = 40  # sparkline samples kept per node (10 s at 4 polls/s)
BODY_ROWS = 4  # a card's body without trouble: buckets, backups, counts, held and sync rate
MAX_BODY_ROWS = 7
CARD_TEXT_COLUMNS = 36  # a card's text width at 120 columns, before it is laid out
TROUBLE_WINDOW_S = 5.0  # a card shows the sync trouble of the last seconds, not of the node's life


class NodeCard(Vertical):
    """A node at a glance; the border colour says its state, a heavy border that it is selected."""

    class Selected(Message):
        """The operator clicked this card."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, name: str) -> None:
        super().__init__(id=f"card-{name}", classes="node-card")
        self.node_name = name
        self.state = "active"
        self.node: dict[str, Any] = {}
        self._history: deque[float] = deque([0.0] * HISTORY, maxlen=HISTORY)
        self.border_title = name
        self._body = ""
        self._trouble = CounterWindow(TROUBLE_WINDOW_S)

    def compose(self) -> ComposeResult:
        yield Static("", classes="card-body")
        yield Sparkline([0.0] * HISTORY, classes="card-spark")

    def update_node(self, node: dict[str, Any], twice: dict[int, list[str]] | None = None,
                    lab_now: float | None = None, total_buckets: int = 0) -> None:
        """Show `node`; `twice`: buckets owned by more than one node, with their owners;
        `lab_now`: the snapshot's time (the sync trouble shown is that of the last seconds);
        `total_buckets`: the lab's bucket count, for the node's share ("4 of 12"; 0: unknown)."""
        self.node = node
        state = str(node.get("state", "active"))
        if node.get("health") in ("degraded", "attention"):  # a data link lost, or cut off
            state = str(node["health"])
        if state != self.state:
            self.remove_class(f"-{self.state}")
            self.add_class(f"-{state}")
            self.state = state
        title = f"{self.node_name} {STATE_MARK.get(state, '?')} {state.upper()}"
        if title != self.border_title:  # setting it repaints the card, even to the same text
            self.border_title = title
        # a restarted node's counters start again from zero: the lab's rate dips below zero once
        rate = max(0.0, float(node.get("sync_msgs_per_s", 0.0)))
        lab_history = node.get("sync_rate_history")
        if isinstance(lab_history, list):
            # The lab's own samples: the same on every console and in a replay, and empty for a
            # dead node, whatever this console's poll rate.
            samples = [max(0.0, float(x)) for x in lab_history[-HISTORY:]]
            self._history = deque([0.0] * (HISTORY - len(samples)) + samples, maxlen=HISTORY)
        else:
            self._history.append(rate)
        twice = twice or {}
        owned = node.get("buckets", [])
        buckets = " ".join(
            f"[b red]{b}({'+'.join(o for o in twice[b] if o != self.node_name)})[/b red]" if b in twice
            else str(b) for b in owned) or "none"
        share = share_text(len(owned), total_buckets)
        backs_up = ", ".join(node.get("backs_up", [])) or "-"
        backups = ", ".join(node.get("backups", [])) or "-"
        body = (
            f"buckets {share}[b]{buckets}[/b]\n"
            f"backs up {backs_up} · backed by {backups}\n"
            f"own [b]{node.get('own', 0)}[/b]  backup {node.get('backup', 0)}  "
            f"common {node.get('common', 0)}\n"
            f"held {node.get('held', 0)}  sync {rate:.0f} msg/s"
        )
        sync = node.get("sync")
        grown = {} if not isinstance(sync, dict) else self._trouble.observe(
            time.monotonic() if lab_now is None else lab_now, sync_totals(sync))
        for line in (sync_health_line(grown), flap_line(sync)):
            if line:
                body += "\n" + line
        paths = node.get("paths")
        if isinstance(paths, dict) and paths.get("peers"):
            body += "\n" + paths_line(paths)
        if body != self._body:  # a card's size never depends on its text: skip the layout pass
            self._body = body
            self.query_one(".card-body", Static).update(body, layout=False)
        spark = self.query_one(".card-spark", Sparkline)
        data = list(self._history)
        if data != spark.data:
            spark.data = data

    def body_lines(self) -> int:
        """Rows the body needs at the card's width (sync trouble and paths add lines)."""
        width = self.content_size.width or CARD_TEXT_COLUMNS
        return sum(max(1, -(-Text.from_markup(line).cell_len // width)) for line in self._body.split("\n"))

    def on_click(self) -> None:
        self.post_message(self.Selected(self.node_name))


def share_text(owned: int, total: int) -> str:
    """A node's share of the lab's buckets, before their list: "4 of 12: " ("" when the total is
    unknown or the node owns none, whose list then says "none")."""
    return f"{owned} of {total}: " if total and owned else ""


def sync_totals(sync: Any) -> dict[str, int]:
    """A node's lifetime counters of sync trouble (the agent's stats: sync.agent.SyncAgent.stats),
    flat: `retx:PEER` frames sent again to a peer, `drop:REASON` received frames dropped."""
    if not isinstance(sync, dict):
        return {}
    peers: dict[str, Any] = sync["peers"] if isinstance(sync.get("peers"), dict) else {}
    out = {f"retx:{n}": int(p.get("retransmitted", 0) or 0) for n, p in peers.items() if isinstance(p, dict)}
    given: dict[str, Any] = sync["bad_frames"] if isinstance(sync.get("bad_frames"), dict) else {}
    out.update((f"drop:{k}", int(v or 0)) for k, v in given.items())
    return out


def sync_health_line(grown: dict[str, int], window_s: float = TROUBLE_WINDOW_S) -> str:
    """Sync trouble in one line: of `sync_totals`, those that grew in the last `window_s`
    (CounterWindow), by how much: frames sent again per peer, received frames dropped by
    reason; "" while the sync is healthy (however much trouble the node had before)."""
    retx = {k.removeprefix("retx:"): v for k, v in grown.items() if k.startswith("retx:") and v}
    bad = {k.removeprefix("drop:"): v for k, v in grown.items() if k.startswith("drop:") and v}
    parts = []
    if retx:
        parts.append("retx " + " ".join(f"{n}:{c}" for n, c in sorted(retx.items())))
    if bad:
        parts.append("dropped " + " ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    return f"[b yellow]{' · '.join(parts)} in {window_s:.0f} s[/b yellow]" if parts else ""


FLAP_SHOWN_S = 60.0  # how long a card tells of a peer that answered after it was given up


def flap_line(sync: Any) -> str:
    """Peers this node declared down for missed heartbeats that answered later, the same
    process (sync.context.PeerStats.flaps): how late, and how often; for a minute after.
    "" when none did."""
    if not isinstance(sync, dict) or not isinstance(sync.get("peers"), dict):
        return ""
    parts = flap_parts(sync["peers"])
    return f"[b yellow]{' · '.join(parts)}[/b yellow]" if parts else ""


def flap_parts(peers: dict[str, Any]) -> list[str]:
    out = []
    for name, p in sorted(peers.items()):
        if not isinstance(p, dict) or not p.get("flaps"):
            continue
        age, late = p.get("flap_age_s"), p.get("late_ms")
        if not isinstance(age, (int, float)) or age > FLAP_SHOWN_S or not isinstance(late, (int, float)):
            continue
        when = f"{late:.0f} ms" if late < 1000 else f"{late / 1000:.1f} s"
        times = f" \u00d7{p['flaps']}" if int(p["flaps"]) > 1 else ""
        out.append(f"{name} missed heartbeats, answered {when} later{times}")
    return out


def paths_line(paths: dict[str, Any]) -> str:
    """One line: per peer, heard (●) or not (○) on sync, inside, outside; for each unheard path
    when it was last heard ("inside 1.2 s", "inside never"; "silent 1.2 s" for a peer gone on
    every path at once); the sync route when it is not the sync segment ("via inside");
    refused path frames when there are any."""
    def ago(ms: Any) -> str:
        if not isinstance(ms, (int, float)):
            return "never"
        return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"

    parts = []
    for peer, p in sorted(paths["peers"].items()):
        got = p.get("paths", {})
        marks = "".join("●" if got.get(x, {}).get("heard") else "[red]○[/red]" for x in PATH_NAMES)
        route = p.get("route", "sync")
        unheard = [x for x in PATH_NAMES if x in got and not got[x].get("heard")]
        ages = [f"{x} {ago(got[x].get('ago_ms'))}" for x in unheard]
        if len(unheard) == len(PATH_NAMES) and len({ago(got[x].get("ago_ms")) for x in unheard}) == 1:
            ages = [f"silent {ago(got[unheard[0]].get('ago_ms'))}"]  # a dead peer: once, not three times
        parts.append(f"{peer} {marks}" + (f" [red]{', '.join(ages)}[/red]" if ages else "")
                     + (f" via {route}" if route != "sync" else ""))
    refused = sum(int(v) for v in paths.get("refused", {}).values())
    return "paths " + " ".join(parts) + (f" · [red]refused {refused}[/red]" if refused else "")


class ClusterView(Horizontal):
    """The row of node cards."""

    def __init__(self) -> None:
        super().__init__(id="cluster")
        self.cards: dict[str, NodeCard] = {}
        self.selected = ""
        self._body_rows = BODY_ROWS
        self.total_buckets = 0

    async def update_nodes(self, nodes: list[dict[str, Any]], lab_now: float | None = None,
                           total_buckets: int | None = None) -> None:
        """Show the snapshot's nodes; `lab_now`: the snapshot's time; `total_buckets`: the lab's
        bucket count (None: the last one given)."""
        if total_buckets is not None:
            self.total_buckets = total_buckets
        new = [n for n in nodes if n.get("name") not in self.cards]
        for node in new:
            card = NodeCard(str(node["name"]))
            card.add_class("-active")
            self.cards[card.node_name] = card
            await self.mount(card)
            self._body_rows = 0  # size the new card too
        owners: dict[int, list[str]] = {}
        for node in nodes:
            for b in node.get("buckets", []):
                owners.setdefault(int(b), []).append(str(node["name"]))
        # Should never happen now; if it does, it must be seen: drawn red, with both owners.
        twice = {b: o for b, o in owners.items() if len(o) > 1}
        for node in nodes:
            self.cards[str(node["name"])].update_node(node, twice, lab_now, self.total_buckets)
        self.fit_cards()
        if not self.selected and self.cards:
            self.select(next(iter(self.cards)))

    def fit_cards(self) -> None:
        """Every card as tall as the tallest body needs (4 to 7 rows): a line of sync trouble
        or of paths must not be cut off under the sparkline. Relaid out only when it changes."""
        lines = max([BODY_ROWS, *(c.body_lines() for c in self.cards.values())])
        lines = min(lines, MAX_BODY_ROWS)
        if lines == self._body_rows:
            return
        self._body_rows = lines
        self.styles.height = lines + 3  # the border and the sparkline
        for card in self.cards.values():
            card.styles.height = lines + 3
            card.query_one(".card-body", Static).styles.height = lines

    def select(self, name: str) -> None:
        if name not in self.cards:
            return
        for card in self.cards.values():
            card.set_class(card.node_name == name, "-selected")
        self.selected = name

    @on(NodeCard.Selected)
    def _clicked(self, event: NodeCard.Selected) -> None:
        # bubbles on to the app, which switches the tables to this node
        self.select(event.name)
