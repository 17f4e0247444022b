"""Two lines under the headline: a red banner for the lab's active faults, and who owns each bucket."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.markup import escape
from textual.widgets import Static

from netns.headline import fault_label

NODE_COLOURS = ("#3b82f6", "#22c55e", "#eab308", "#a855f7", "#06b6d4", "#f97316", "#ec4899",
                "#84cc16", "#14b8a6")


def bucket_owners(nodes: Iterable[dict[str, Any]], buckets: int) -> dict[int, list[str]]:
    """Bucket -> the nodes that say they own it (each node's `buckets`), for buckets 1..n.

    Two owners is split brain (a partition: each side took the other's buckets); none is a
    bucket no live node accepts, so its new flows are dropped.
    """
    owners: dict[int, list[str]] = {b: [] for b in range(1, buckets + 1)}
    for node in nodes:
        if node.get("state") in ("failed", "offline"):
            continue
        for b in node.get("buckets") or []:
            if isinstance(b, int) and not isinstance(b, bool):
                owners.setdefault(b, []).append(str(node.get("name")))
    return owners


def strip_markup(owners: dict[int, list[str]], order: Sequence[str]) -> str:
    """One cell per bucket: its number and owner in the owner's colour; two owners in red."""
    colour = {n: NODE_COLOURS[i % len(NODE_COLOURS)] for i, n in enumerate(order)}
    cells: list[str] = []
    for b in sorted(owners):
        who = owners[b]
        if len(who) > 1:
            cells.append(f"[bold white on red] {b}:{'+'.join(who)} [/]")
        elif who:
            cells.append(f"[bold black on {colour.get(who[0], 'white')}] {b}:{who[0]} [/]")
        else:
            cells.append(f"[bold red reverse] {b}:-- [/]")
    return "buckets " + "".join(cells)


def spread_text(nodes: Iterable[dict[str, Any]]) -> str:
    """How evenly the active nodes share the buckets: `4 per node`, or `3-5 per node`."""
    counts = [len(n.get("buckets") or []) for n in nodes if n.get("state") == "active"]
    if not counts:
        return ""
    lo, hi = min(counts), max(counts)
    return f"{lo} per node" if lo == hi else f"{lo}-{hi} per node"


def twice_owned(owners: dict[int, list[str]]) -> list[int]:
    return sorted(b for b, who in owners.items() if len(who) > 1)


class BucketStrip(Static):
    """Who owns what at a glance: a cell per bucket, coloured by its owner."""

    def __init__(self) -> None:
        super().__init__("", id="bucket-strip")
        self._text = ""

    def show(self, nodes: list[dict[str, Any]], buckets: int) -> list[int]:
        """Draw the strip; returns the buckets owned twice."""
        owners = bucket_owners(nodes, buckets)
        text = strip_markup(owners, [str(n.get("name")) for n in nodes])
        doubled = twice_owned(owners)
        if spread := spread_text(nodes):
            text += f" [dim]{spread}[/]"
        if doubled:  # first, so that a narrow screen cuts the cells rather than the warning
            many = f"{len(doubled)} buckets" if len(doubled) > 1 else f"bucket {doubled[0]}"
            text = f"[bold red]SPLIT BRAIN: {many} owned twice[/] " + text
        if text != self._text:
            self._text = text
            self.update(text, layout=False)
        self.set_class(bool(doubled), "-split")
        return doubled


class FaultBanner(Static):
    """The lab's active faults (the daemon's `faults`: kind, parameters, effect), in red."""

    def __init__(self) -> None:
        super().__init__("", id="fault-banner")
        self._text = ""

    def show(self, faults: Sequence[dict[str, Any]]) -> None:
        lines = [f"⚠ FAULT {escape(fault_label(f))}: {escape(str(f.get('effect', '')))}"
                 for f in faults if isinstance(f, dict)]
        text = "\n".join(lines)
        if text != self._text:
            self._text = text
            self.update(text)
        self.set_class(bool(lines), "-active")
