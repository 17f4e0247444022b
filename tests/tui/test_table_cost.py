"""What the console costs (no column re-measured for a cell that cannot widen it, ages and the
timeline once a second, viewers poll once a second) and where its screenshots land."""

from __future__ import annotations

import asyncio
from typing import Any

from textual.app import App, ComposeResult

from app.console.tables import DiffTable

COLUMNS = [("name", "Name"), ("age", "Age"), ("note", "Note")]


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield DiffTable(COLUMNS, widths={"name": 8, "age": 5}, id="t")


def _rows(age: str, note: str, n: int = 50) -> list[tuple[str, Any]]:
    return [(f"r{i}", (f"r{i}", age, note)) for i in range(n)]


def test_changed_cells_re_measure_a_column_only_when_they_may_widen_it() -> None:
    async def main() -> None:
        app = TableApp()
        async with app.run_test(size=(60, 20)) as pilot:
            table = app.query_one(DiffTable)
            table.apply(_rows("10s", "a longer note"))
            await pilot.pause()
            table.apply(_rows("9s", "short"))  # narrower cells: fixed column, and a fitting one
            assert not table._updated_cells, "a narrower cell made DataTable re-measure its column"
            table.apply(_rows("9s", "a much longer note than before"))
            assert table._updated_cells, "a wider cell in a fitting column still widens it"
            await pilot.pause()
            assert table.columns[table.ordered_columns[2].key].content_width >= 30

    asyncio.run(main())


def test_age_only_changes_wait_for_an_apply_that_does_not_defer_them() -> None:
    async def main() -> None:
        app = TableApp()
        async with app.run_test(size=(60, 20)) as pilot:
            table = app.query_one(DiffTable)
            table.apply(_rows("1s", "x"))
            diff = table.apply(_rows("2s", "x"), frozenset({"age"}))
            assert diff.empty and table.on_screen["r0"][1] == "1s"
            diff = table.apply(_rows("2s", "y"), frozenset({"age"}))
            assert table.on_screen["r0"] == ("r0", "2s", "y"), "a row that changed otherwise is shown whole"
            table.apply(_rows("3s", "y"))
            assert table.on_screen["r0"][1] == "3s"
            await pilot.pause()

    asyncio.run(main())


def test_a_viewer_polls_once_a_second_an_operator_four_times(monkeypatch: Any) -> None:
    from app.console import app as console_app
    from app.console.fake import FakeLab

    seen: dict[bool, float | None] = {}

    def run(self: console_app.ConsoleApp) -> str:
        seen[self.viewer] = self.poll_interval_s
        return "keep"

    monkeypatch.setattr(console_app.ConsoleApp, "run", run)
    for viewer in (True, False):
        console_app.run_console(FakeLab(), viewer=viewer)
    assert seen == {True: 1.0, False: 0.25}


def test_the_console_on_a_lab_knows_its_run_folder_for_screenshots(tmp_path: Any) -> None:
    from app.client import DaemonLink
    from app.console.app import ConsoleApp

    app = ConsoleApp(DaemonLink(tmp_path / "control.sock"), poll_interval_s=None)
    assert app.run_dir == tmp_path


def test_a_card_shows_retransmissions_and_drops_by_reason_from_the_agents_stats() -> None:
    from app.console.cards import TROUBLE_WINDOW_S, sync_health_line, sync_totals
    from app.console.model import CounterWindow
    from tests.unit.test_sync_cluster import _cluster

    c = _cluster()
    c.put("n1", b"a", [1])
    c.run(0.01)
    stats = c.agents["n1"].stats()  # the schema the node reports and the daemon passes on
    window = CounterWindow(TROUBLE_WINDOW_S)
    assert sync_health_line(window.observe(100.0, sync_totals(stats))) == "", "a healthy sync says nothing"
    stats["peers"]["n2"]["retransmitted"] = 3
    stats["bad_frames"] = {"bad-hmac": 2, "short": 0}
    assert sync_health_line(window.observe(101.0, sync_totals(stats))) == (
        "[b yellow]retx n2:3 · dropped bad-hmac 2 in 5 s[/b yellow]")


def test_sync_trouble_is_what_grew_in_the_last_seconds_not_the_lifetime_total() -> None:
    from app.console.model import CounterWindow

    w = CounterWindow(5.0)
    assert w.observe(10.0, {"retx:n2": 40}) == {}, "a total seen once says nothing of now"
    assert w.observe(11.0, {"retx:n2": 43, "drop:short": 1}) == {"retx:n2": 3, "drop:short": 1}
    assert w.observe(14.0, {"retx:n2": 45, "drop:short": 1}) == {"retx:n2": 5, "drop:short": 1}
    assert w.observe(16.0, {"retx:n2": 45, "drop:short": 1}) == {"retx:n2": 2}, "since 11.0"
    assert w.observe(19.5, {"retx:n2": 45, "drop:short": 1}) == {}, "healthy again: nothing"
    assert w.observe(20.0, {"retx:n2": 2, "drop:short": 0}) == {}, "restarted: totals from 0"
    assert w.observe(21.0, {"retx:n2": 6, "drop:short": 0}) == {"retx:n2": 4}
    assert w.observe(3.0, {"retx:n2": 9, "drop:short": 0}) == {}, "a replay sought backwards"


def test_a_card_shows_a_peer_that_missed_heartbeats_and_answered_later() -> None:
    from app.console.cards import flap_line, sync_totals
    from tests.unit.test_sync_flaps import _cluster

    c = _cluster()
    c.cut = {"n3"}
    c.run(0.08)
    c.cut = set()
    c.run(0.02)
    stats = c.agents["n1"].stats()  # the schema the node reports and the daemon passes on
    late = stats["peers"]["n3"]["late_ms"]
    assert not any(sync_totals(stats).values())  # no frame was dropped or sent again
    line = flap_line(stats)
    assert f"n3 missed heartbeats, answered {late:.0f} ms later" in line, line
    assert "n2 missed" not in line
    stats["peers"]["n3"].update(flaps=3, late_ms=1500.0)
    assert "answered 1.5 s later \u00d73" in flap_line(stats)
    stats["peers"]["n3"]["flap_age_s"] = 61.0  # a minute on, the card lets it go
    assert flap_line(stats) == ""
