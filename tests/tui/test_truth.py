"""The console tells the truth (issue 15): no dead node named as a copy, stars for every adopted
row, a filter on what is shown, faults in red, keys that apply."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from app.console.app import ConsoleApp
from app.console.banner import (
    BucketStrip,
    FaultBanner,
    bucket_owners,
    spread_text,
    strip_markup,
    twice_owned,
)
from app.console.fake import FakeLab
from app.console.model import conn_cells
from netns.headline import fault_label
from tests.tui.snap_app import SIZE, advance, build_app, settle
from tests.tui.test_console import column, conn_table, drive

pytestmark = pytest.mark.tui


def test_synced_to_never_names_a_node_that_is_down() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await advance(pilot, 1.0)
        assert any("n2" in c for c in column(conn_table(app), "synced_to"))  # n1's backup
        lab.request({"cmd": "kill", "node": "n2"})
        await advance(pilot, 0.5)
        # The lab, as the engines' provenance does, still names n2 for some rows...
        rows = lab.request({"cmd": "table", "node": "n1", "scope": "own", "limit": 500})["rows"]
        assert any("n2" in r["synced_to"] for r in rows)
        # ...but no copy lives on a dead node: the console does not say so.
        cells = column(conn_table(app), "synced_to")
        assert cells and not any("n2" in c for c in cells)

    drive(scenario)


def test_conn_cells_drop_only_the_nodes_that_are_down() -> None:
    row = {"proto": "tcp", "src": "a:1", "dst": "b:2", "synced_to": ["n2", "n3"], "age_s": 1}
    assert conn_cells(row)[4] == "n2,n3"
    assert conn_cells(row, frozenset({"n2"}))[4] == "n3"
    assert conn_cells(row, frozenset({"n2", "n3"}))[4] == "-"


@pytest.mark.parametrize("watch_first", ["n1", "n3"])
def test_every_adopted_row_is_starred_whichever_node_was_on_screen(watch_first: str) -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press(watch_first[-1])
        await advance(pilot, 0.5)
        n2_keys = {k for k, c in lab.conns.items() if c.owner == "n2" and not c.common}
        lab.request({"cmd": "kill", "node": "n2"})
        await advance(pilot, 0.5)
        await pilot.press("3")  # n2's backup
        await advance(pilot, 0.25)
        adopted = {k for k in n2_keys if k in lab.conns and lab.conns[k].owner == "n3"}
        table = conn_table(app)
        starred = {str(k.value) for k in table.rows if "★" in str(table.get_cell(str(k.value), "owner"))}
        assert adopted and starred == adopted
        await advance(pilot, 10.0)
        assert not any("★" in c for c in column(table, "owner"))

    # No churn: a row whose state changed after the takeover carries another trigger, and the lab
    # then no longer says it was adopted.
    drive(scenario, churn=False)


def test_stars_last_longer_in_present_mode() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        lab.request({"cmd": "kill", "node": "n2"})
        await pilot.press("3")
        await advance(pilot, 12.0)
        assert any("★" in c for c in column(conn_table(app), "owner"))
        await advance(pilot, 20.0)
        assert not any("★" in c for c in column(conn_table(app), "owner"))

    drive(scenario, present=True)


def test_the_filter_matches_only_what_is_on_screen() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        key = next(str(k.value) for k in conn_table(app).rows)  # keys are not shown
        reply = lab.request({"cmd": "table", "node": "n1", "scope": "own", "filter": key})
        assert reply["rows"], "the lab, as the engines do, matches hidden fields too"
        await pilot.press("slash", *key)
        await advance(pilot, 0.25)
        assert conn_table(app).row_count == 0
        assert "0 rows" in str(app.query_one("#totals").render())
        await pilot.press("escape", "slash", *"198.18.1.11")  # c2's address: shown
        await advance(pilot, 0.25)
        ends = column(conn_table(app), "endpoints")
        assert ends and all("198.18.1.11" in e for e in ends)

    drive(scenario)


def test_a_screenshot_without_downloads_goes_to_the_run_dir_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.console import settings

    monkeypatch.setattr(settings, "user_downloads_path", lambda: tmp_path / "Downloads")
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def main() -> list[str]:
        app = build_app(connections=20)
        app.run_dir = run_dir
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            app.deliver_screenshot()  # what the palette's Screenshot entry calls
            for _ in range(100):
                await pilot.pause(0.02)
                if list(run_dir.glob("*.svg")):
                    break
            await pilot.pause(0.1)
            return [str(n.message) for n in app._notifications]

    said = asyncio.run(main())
    assert len(list(run_dir.glob("*.svg"))) == 1
    assert any(str(run_dir) in s for s in said), said


def test_bucket_owners_and_the_strip_show_a_bucket_owned_twice_in_red() -> None:
    nodes = [{"name": "n1", "state": "active", "buckets": [1, 2, 3]},
             {"name": "n2", "state": "active", "buckets": [3, 4]},
             {"name": "n3", "state": "failed", "buckets": [5]}]  # a dead node owns nothing
    owners = bucket_owners(nodes, 5)
    assert owners == {1: ["n1"], 2: ["n1"], 3: ["n1", "n2"], 4: ["n2"], 5: []}
    assert twice_owned(owners) == [3]
    markup = strip_markup(owners, ["n1", "n2", "n3"])
    assert "[bold white on red] 3:n1+n2 [/]" in markup and " 5:-- " in markup
    assert spread_text(nodes) == "2-3 per node"  # the failed node is no share
    assert spread_text([{"state": "active", "buckets": [1, 2]}] * 3) == "2 per node"
    assert spread_text([]) == ""


def test_active_faults_show_a_red_banner_with_the_daemons_effect_text() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        banner = app.query_one(FaultBanner)
        assert not banner.display
        lab.request({"cmd": "fault", "kind": "loss", "rate": 0.3})
        await advance(pilot, 0.25)
        assert banner.display and banner.has_class("-active")
        text = str(banner.render())
        assert "FAULT loss 30% into all" in text and "its peers retransmit" in text
        head = app.query_one("#headline")
        assert head.has_class("-fault") and "fault active: loss 30% into all" in str(head.render())
        lab.request({"cmd": "fault", "kind": "partition", "groups": [["n1"], ["n2", "n3"]]})
        await advance(pilot, 0.25)
        strip = app.query_one(BucketStrip)
        assert strip.has_class("-split") and "owned twice" in str(strip.render())
        assert "3:n1+n3" in str(strip.render())
        lab.request({"cmd": "fault", "kind": "heal"})
        await advance(pilot, 0.25)
        assert not banner.display and not strip.has_class("-split")

    drive(scenario)


def test_the_banner_reads_the_daemons_own_fault_list() -> None:
    """What netns/faults.py puts in `status`, read by the banner (not the fake's copy of it)."""
    from netns.faults import describe_active

    active = describe_active([], {"cmd": "fault", "kind": "partition", "groups": [["n1"], ["n2"]]})
    active = describe_active(active, {"cmd": "fault", "kind": "slow", "node": "n2", "delay_ms": 80})
    assert [fault_label(f) for f in active] == ["partition n1 | n2", "n2 slow by 80 ms"]
    assert all(f["effect"] for f in active)
    # A cut in words, not its raw fields ("cut n2 sync True 0" before).
    cut = describe_active([], {"cmd": "fault", "kind": "cut", "node": "n2", "link": "sync", "silent": True})
    cut = describe_active(cut, {"cmd": "fault", "kind": "cut", "node": "n1", "link": "inside",
                                "flap_ms": 200})
    assert [fault_label(f) for f in cut] == ["n2's sync link cut silently",
                                             "n1's inside link down, flapping every 200 ms"]


def _footer_keys(app: ConsoleApp) -> list[tuple[str, int]]:
    from textual.widgets import Footer
    from textual.widgets._footer import FooterKey

    footer = app.query_one(Footer)
    keys = [k for k in footer.query(FooterKey) if k.display]
    spans = sorted((k.region.x, k.region.right) for k in keys)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"footer keys overlap: {spans}"  # the palette key sits on top
    return [(k.key_display or k.key, k.region.right) for k in keys]


def test_the_footer_shows_only_keys_that_apply_and_fits_100_columns() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        keys = _footer_keys(app)
        shown = {k for k, _ in keys}
        assert {"k", "a", "d"} <= shown and "r" not in shown and "n" not in shown
        assert max(right for _, right in keys) <= 100
        lab.request({"cmd": "kill", "node": "n1"})
        lab.request({"cmd": "freeze"})
        await advance(pilot, 0.5)
        await pilot.press("1")  # the table followed the takeover: back to the dead node
        await advance(pilot, 0.25)
        keys = _footer_keys(app)
        shown = {k for k, _ in keys}
        assert "r" in shown and "n" in shown and "k" not in shown
        assert max(right for _, right in keys) <= 100

    drive(scenario, size=(100, 30))


def _owner_fits(app: ConsoleApp) -> bool:
    table = conn_table(app)
    right = 0
    for col in table.ordered_columns:
        right += col.get_render_width(table)
        if col.key.value == "owner":
            return right <= table.scrollable_content_region.width
    return False


@pytest.mark.parametrize(("present", "demo"), [(True, "takeover"), (False, None), (True, None)])
def test_the_owner_column_stays_on_screen_at_100x30(present: bool, demo: str | None) -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.pause()
        assert _owner_fits(app)
        assert conn_table(app).row_count > 0  # refilled after the columns changed
        headers = [str(c.label) for c in conn_table(app).ordered_columns]
        assert "Last trigger" not in headers  # abbreviated

    drive(scenario, size=(100, 30), present=present, demo=demo)


def test_after_a_kill_the_table_follows_the_takeover_to_the_backup() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert app.selected_node == "n1"
        n1_keys = {k for k, c in lab.conns.items() if c.owner == "n1" and not c.common}
        lab.request({"cmd": "kill", "node": "n1"})
        await advance(pilot, 0.5)
        await advance(pilot, 0.25)  # the view switched: its rows arrive with the next fetch
        heirs = {lab.conns[k].owner for k in n1_keys if k in lab.conns}
        assert app.selected_node in heirs and app.selected_node != "n1"
        table = conn_table(app)
        starred = {str(k.value) for k in table.rows if "★" in str(table.get_cell(str(k.value), "owner"))}
        assert starred == {k for k in n1_keys if lab.conns[k].owner == app.selected_node}
        app.action_select_node(1)  # going back to the dead node by hand: no second jump
        await advance(pilot, 0.25)
        assert app.selected_node == "n1"

    drive(scenario, churn=False)


@pytest.mark.parametrize("viewer", [False, True])
def test_an_empty_lab_says_what_to_press(viewer: bool) -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        hint = app.query_one("#empty-hint")
        assert not hint.display  # the fake lab starts with flows
        lab.request({"cmd": "traffic", "action": "stop"})
        await advance(pilot, 0.5)
        assert hint.display
        text = str(hint.render())
        assert ("Press a to start traffic" in text) != viewer
        lab.request({"cmd": "traffic", "action": "start", "kind": "tcp", "flows": 1})
        await advance(pilot, 0.5)
        assert not hint.display

    drive(scenario, connections=0, viewer=viewer)


def test_the_footer_fits_100_columns_with_a_demo_open_in_present_mode() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.pause()
        keys = _footer_keys(app)
        assert {"n", "A", "esc"} <= {k for k, _ in keys}, keys
        assert max(right for _, right in keys) <= 100

    drive(scenario, size=(100, 30), present=True, demo="takeover")


def test_the_flows_board_redraws_once_a_second_unless_a_flow_changes_health() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("f")
        await settle(pilot)
        table = app.query_one("#flow-table")
        drawn: list[float] = []
        original = table.apply  # type: ignore[attr-defined]

        def spy(rows: Any) -> Any:
            drawn.append(app.clock())
            return original(rows)

        table.apply = spy  # type: ignore[attr-defined]
        for _ in range(8):  # two seconds of polls, four a second
            await advance(pilot, 0.25)
        assert 2 <= len(drawn) <= 3, drawn
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(drawn))
        await pilot.press("c", "f")  # switching to the board draws it at once
        await settle(pilot)
        before = len(drawn)
        await advance(pilot, 0.25)
        lab.request({"cmd": "kill", "node": "n1"})  # its flows stall: shown at the next poll
        await advance(pilot, 0.05)
        assert len(drawn) == before + 1

    drive(scenario, churn=False)
