"""Pilot tests: a node card shows the sync trouble of the last seconds, from the lab's snapshots."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from app.console.app import ConsoleApp
from app.console.cards import NodeCard
from app.console.fake import FakeLab
from tests.tui.snap_app import advance
from tests.tui.test_console import drive

pytestmark = pytest.mark.tui


def card_body(app: ConsoleApp, name: str) -> str:
    return str(app.query_one(f"#card-{name}", NodeCard).query_one(".card-body", Static).render())


def test_a_card_shows_retransmissions_while_they_happen_and_not_after() -> None:
    """n1 reports its agent's lifetime counters (the stats schema, as a node does); the card
    shows what grew in the last 5 s of the lab's clock, and nothing once the sync is healthy,
    whatever the total."""
    from tests.unit.test_sync_cluster import _cluster

    c = _cluster()
    c.put("n1", b"a", [1])
    c.run(0.01)
    stats = c.agents["n1"].stats()
    stats["peers"]["n2"]["retransmitted"] = 40  # trouble before the console started

    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        node_dict = lab._node_dict

        def with_sync(node: Any, now: float) -> dict[str, Any]:
            out = node_dict(node, now)
            return {**out, "sync": stats} if out["name"] == "n1" else out

        lab._node_dict = with_sync  # type: ignore[method-assign]
        await advance(pilot, 0.25)
        assert "retx" not in card_body(app, "n1"), "a lifetime total says nothing of now"
        stats["peers"]["n2"]["retransmitted"] = 52
        stats["bad_frames"] = {"bad-hmac": 2}
        await advance(pilot, 1.0)
        body = card_body(app, "n1")
        assert "retx n2:12 · dropped bad-hmac 2 in 5 s" in body, body
        await advance(pilot, 2.0)
        assert "retx n2:12" in card_body(app, "n1"), "still within the window"
        await advance(pilot, 5.0)
        assert "retx" not in card_body(app, "n1") and "dropped" not in card_body(app, "n1")
        assert stats["peers"]["n2"]["retransmitted"] == 52, "the total is still 52: healthy now"

    drive(scenario)
