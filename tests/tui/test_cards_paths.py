"""A node card's paths line (who is heard where, and since when for a path gone silent) and its
`degraded` and `attention` health, from statuses in the real schema: the paths part is made by
sync/paths.py's own status, the node part has the fields the daemon's node view gives."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult

from app.console.cards import NodeCard, paths_line
from sync.paths import Paths

NAMES = ["n1", "n2", "n3"]
KEY = b"lab-key-0123456789abcdef"


def _paths_status() -> dict[str, Any]:
    """n1's paths at t=2.0: n2 heard on sync and outside, never on inside; n3 heard on inside
    and outside, last heard on sync 1.5 s before (its sync route switched to inside)."""
    n1, n2, n3 = (Paths("lab", KEY, n, NAMES, i + 1, 0.0, grace_s=0.0) for i, n in enumerate(NAMES))
    n1.receive("sync", n3.probe("sync", 0.5), 0.5)
    for t in (1.97, 1.99):
        for path in ("sync", "outside"):
            n1.receive(path, n2.probe(path, t), t)
        for path in ("inside", "outside"):
            n1.receive(path, n3.probe(path, t), t)
    assert n1.route("n3", 2.0) == "inside"
    return n1.status(2.0)


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def test_the_paths_line_marks_each_path_and_tells_how_long_an_unheard_one_was_silent() -> None:
    line = _plain(paths_line(_paths_status()))
    assert line.startswith("paths n2 ●○● inside never n3 ○●● sync 1.5 s via inside"), line
    assert "refused" not in line


def test_the_paths_line_gives_ms_below_a_second_and_counts_refused_frames() -> None:
    st = _paths_status()
    st["peers"]["n2"]["paths"]["inside"].update(heard=False, ago_ms=42.4)
    st["refused"]["forged"] = 2
    st["refused"]["replayed"] = 1
    line = _plain(paths_line(st))
    assert "n2 ●○● inside 42 ms" in line and line.endswith("· refused 3"), line


def test_a_peer_silent_on_every_path_is_told_once() -> None:
    st = _paths_status()
    for x in ("sync", "inside", "outside"):
        st["peers"]["n2"]["paths"][x].update(heard=False, ago_ms=1830.0)
    line = _plain(paths_line(st))
    assert "n2 ○○○ silent 1.8 s n3" in line, line


def _node(health: str) -> dict[str, Any]:
    """A node as the daemon's status lists it (netns/daemon.py node_view), fields the card reads."""
    return {"name": "n1", "state": "active" if health != "attention" else "joining",
            "buckets": [] if health != "ok" else [1, 4, 7, 10], "backs_up": ["n3"], "backups": ["n2"],
            "own": 0, "backup": 12, "common": 0, "held": 0, "sync_msgs_per_s": 40.0,
            "sync_rate_history": [40.0, 41.0], "sync": {"peers": {}, "bad_frames": {}},
            "paths": {**_paths_status(), "degraded": health == "degraded",
                      "carrier": {"inside": True, "outside": health != "degraded"},
                      "fenced": "outside link down" if health == "degraded" else None},
            "health": health}


class _CardApp(App[None]):
    def compose(self) -> ComposeResult:
        yield NodeCard("n1")


def test_a_card_shows_degraded_and_attention_health_over_its_state_and_back() -> None:
    async def run() -> None:
        app = _CardApp()
        async with app.run_test(size=(60, 20)) as pilot:
            card = app.query_one(NodeCard)
            seen = []
            for health in ("ok", "degraded", "attention", "ok"):
                card.update_node(_node(health))
                await pilot.pause()
                seen.append((str(card.border_title), card.has_class(f"-{card.state}"), card.state))
            assert seen[1] == ("n1 ◑ DEGRADED", True, "degraded"), seen
            assert seen[2] == ("n1 ! ATTENTION", True, "attention"), seen
            assert seen[3] == ("n1 ● ACTIVE", True, "active") and not card.has_class("-attention"), seen
            assert "paths n2 ●○● inside never" in _plain(card._body), card._body
            assert "buckets none" in _plain(_body_of(card, _node("degraded")))

    asyncio.run(run())


def _body_of(card: NodeCard, node: dict[str, Any]) -> str:
    card.update_node(node)
    return card._body
