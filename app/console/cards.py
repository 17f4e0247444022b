"""The cluster view: one card per gateway node, with its state, buckets, backups and sync rate."""

from __future__ import annotations

from collections import deque
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Sparkline, Static

STATES = ("active", "failed", "offline", "joining")
STATE_MARK = {"active": "●", "failed": "✖", "offline": "○", "joining": "◐"}
HISTORY = 40  # sparkline samples kept per node (10 s at 4 polls/s)


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

    def compose(self) -> ComposeResult:
        yield Static("", classes="card-body")
        yield Sparkline([0.0] * HISTORY, classes="card-spark")

    def update_node(self, node: dict[str, Any]) -> None:
        self.node = node
        state = str(node.get("state", "active"))
        if state != self.state:
            self.remove_class(f"-{self.state}")
            self.add_class(f"-{state}")
            self.state = state
        self.border_title = f"{self.node_name} {STATE_MARK.get(state, '?')} {state.upper()}"
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
        buckets = " ".join(str(b) for b in node.get("buckets", [])) or "none"
        backs_up = ", ".join(node.get("backs_up", [])) or "-"
        backups = ", ".join(node.get("backups", [])) or "-"
        body = (
            f"buckets [b]{buckets}[/b]\n"
            f"backs up {backs_up} · backed by {backups}\n"
            f"own [b]{node.get('own', 0)}[/b]  backup {node.get('backup', 0)}  "
            f"common {node.get('common', 0)}\n"
            f"held {node.get('held', 0)}  sync {rate:.0f} msg/s"
        )
        if body != self._body:  # a card's size never depends on its text: skip the layout pass
            self._body = body
            self.query_one(".card-body", Static).update(body, layout=False)
        self.query_one(".card-spark", Sparkline).data = list(self._history)

    def on_click(self) -> None:
        self.post_message(self.Selected(self.node_name))


class ClusterView(Horizontal):
    """The row of node cards."""

    def __init__(self) -> None:
        super().__init__(id="cluster")
        self.cards: dict[str, NodeCard] = {}
        self.selected = ""

    async def update_nodes(self, nodes: list[dict[str, Any]]) -> None:
        new = [n for n in nodes if n.get("name") not in self.cards]
        for node in new:
            card = NodeCard(str(node["name"]))
            card.add_class("-active")
            self.cards[card.node_name] = card
            await self.mount(card)
        for node in nodes:
            self.cards[str(node["name"])].update_node(node)
        if not self.selected and self.cards:
            self.select(next(iter(self.cards)))

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
