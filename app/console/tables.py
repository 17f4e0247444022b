"""Live tables refreshed by diff: connections per node and scope, the sync timeline, the flows board."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static, Tab, Tabs
from textual.widgets.data_table import CellDoesNotExist

from app.console import requests
from app.console.model import (
    CONN_COLUMNS,
    CONN_WIDTHS,
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    HEALTH_COLUMN,
    Cells,
    EventRun,
    RowDiff,
    Scope,
    TakeoverStars,
    collapse_events,
    conn_cells,
    conn_layout,
    diff_rows,
    event_cells,
    event_matches,
    flow_cells,
    flow_counts,
    provenance,
)

Renderer = Callable[[str, int, str], "str | Text"]  # (row key, column index, value) -> cell

LIT_STYLE = "bold black on dark_orange"
HEALTH_STYLE = {"healthy": "bold green", "stalled": "bold yellow", "broken": "bold red",
                "done": "dim", "failed": "bold magenta"}


AGES_EVERY_S = 1.0
AGE_ONLY = frozenset({"age"})


def plain(key: str, column: int, value: str) -> str | Text:
    return value


class DiffTable(DataTable[Any]):
    """A DataTable that takes the whole fetched table each tick and applies only the difference.

    Rows keep their keys (and Row objects) across updates; the table is cleared only when the
    view itself changes (another node or scope), never on a tick.
    """

    def __init__(self, columns: Sequence[tuple[str, str]], renderer: Renderer = plain,
                 widths: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._columns = list(columns)
        self._source = list(columns)  # the order of the cells given to apply()
        self._pick: list[int] | None = None  # cells shown, by index into them (relayout)
        # Fixed widths keep a live table from jumping about (and its picture the same whatever
        # order the rows arrived in); columns without one fit their content.
        self._widths = widths or {}
        self.renderer = renderer
        self.on_screen: dict[str, Cells] = {}
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.restyle: set[str] = set()  # keys whose look changed although their values did not
        # How to order a column other than by its text (the timeline's clock wraps at midnight).
        self.sort_keys: dict[str, Callable[[Any], Any]] = {}

    def on_mount(self) -> None:
        self._ensure_columns()

    def _ensure_columns(self) -> None:
        # Rows may arrive (from a poll worker) before the table is mounted; columns must exist
        # first, or the widths are computed from rows without them.
        if not self.columns:
            for key, label in self._columns:
                self.add_column(label, key=key, width=self._widths.get(key))

    def relayout(self, columns: Sequence[tuple[str, str]], widths: dict[str, int]) -> bool:
        """Show other columns (a subset or another order of the cells' columns, by key) or
        widths; the rows come back on the next apply. False when nothing changes."""
        if list(columns) == self._columns and widths == self._widths:
            return False
        keys = [k for k, _ in self._source]
        self._pick = [keys.index(k) for k, _ in columns]
        self._columns, self._widths = list(columns), dict(widths)
        self.clear(columns=True)
        self.on_screen.clear()
        self._ensure_columns()
        return True

    def column_key(self, column: int) -> str:
        return self._columns[column][0]

    def reset(self) -> None:
        """Forget every row: used when the view switches to another node or scope."""
        self.clear()
        self.on_screen.clear()

    def apply(self, rows: Sequence[tuple[str, Cells]], defer: frozenset[str] = frozenset()) -> RowDiff:
        """Show `rows`. Changes only in the `defer` columns (by key) wait for a later apply
        without them: a row's age alone is not worth a redraw at every poll."""
        self._ensure_columns()
        if self._pick is not None:
            pick = self._pick
            rows = [(k, tuple(cells[i] for i in pick)) for k, cells in rows]
        diff = diff_rows(self.on_screen, rows)
        if defer and diff.changed:
            kept = {k: ch for k, ch in diff.changed.items()
                    if any(self._columns[c][0] not in defer for c, _ in ch)}
            diff = RowDiff(diff.removed, kept, diff.added)
        restyle = self.restyle - {k for k, _ in diff.added}
        self.restyle = set()
        if diff.empty and not restyle:
            return diff
        with self.app.batch_update():
            for key in diff.removed:
                self.remove_row(key)
                del self.on_screen[key]
            for key, changes in diff.changed.items():
                now_cells = list(self.on_screen[key])
                for column, value in changes:
                    grows = self._grows(column, now_cells[column], value)
                    now_cells[column] = value
                    self.update_cell(key, self._columns[column][0],
                                     self.renderer(key, column, value), update_width=grows)
                self.on_screen[key] = tuple(now_cells)
            for key in restyle:
                if key in self.on_screen:
                    for column, value in enumerate(self.on_screen[key]):
                        self.update_cell(key, self._columns[column][0],
                                         self.renderer(key, column, value))
            for key, new_cells in diff.added:
                self.add_row(*(self.renderer(key, i, v) for i, v in enumerate(new_cells)),
                             key=key)
                self.on_screen[key] = new_cells
            if self.sort_column and (diff.added or diff.changed):
                self._sort()
        return diff

    def _grows(self, column: int, old: str, new: str) -> bool:
        """Whether a changed cell may widen its column. A column of fixed width never changes;
        one that fits its content only grows: a narrower cell would make DataTable measure
        every cell of that column again (at 500 rows whose ages tick, that was most of the
        console's CPU)."""
        return self._columns[column][0] not in self._widths and cell_len(new) > cell_len(old)

    def cycle_sort(self) -> str:
        """Sort by the next column (ascending, then descending); returns a caption for it."""
        names = [k for k, _ in self._columns]
        if self.sort_column is None:
            self.sort_column, self.sort_reverse = names[0], False
        elif not self.sort_reverse:
            self.sort_reverse = True
        else:
            i = names.index(self.sort_column)
            self.sort_column, self.sort_reverse = names[(i + 1) % len(names)], False
        self._sort()
        return f"sorted by {self.sort_column} {'↓' if self.sort_reverse else '↑'}"

    def sort_by(self, column: str) -> None:
        if self.sort_column == column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._sort()

    def _sort(self) -> None:
        if self.sort_column:
            key = self.sort_keys.get(self.sort_column, str)
            self.sort(self.sort_column, key=key, reverse=self.sort_reverse)

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))


class ConnectionsPane(Vertical):
    """One node's connection table, with tabs for own / backup / common state and a filter."""

    class ViewChanged(Message):
        """The scope or filter changed: fetch again now instead of waiting for the next tick."""

    def __init__(self) -> None:
        super().__init__(id="connections-pane")
        self.node = ""
        self.scope = Scope.OWN
        self.filter = ""
        self.stars = TakeoverStars()
        self.takeovers: dict[str, float] = {}  # node -> when it last took over (lab clock)
        self.lab_now = 0.0
        self.now_s = 0.0
        self._caption = ""
        self._ages_at = -AGES_EVERY_S  # when the age column was last brought up to date
        self._last: dict[str, Any] | None = None  # the last reply shown
        self.down: frozenset[str] = frozenset()  # nodes failed or offline: no copy lives there

    def compose(self) -> ComposeResult:
        with Horizontal(id="conn-bar"):
            yield Tabs(*(Tab(s.value, id=f"scope-{s.value}") for s in Scope), id="scope-tabs")
            yield Static("", id="totals")
        yield Input(placeholder="filter rows (Enter to keep, Esc to clear)", id="filter")
        yield Static("", id="empty-hint")
        yield DiffTable(CONN_COLUMNS, self._render_cell, widths=CONN_WIDTHS, id="conn-table")

    @property
    def table(self) -> DiffTable:
        return self.query_one("#conn-table", DiffTable)

    def on_resize(self) -> None:
        self.call_after_refresh(self._relayout)  # not inside the layout pass that resized it

    def hint(self, text: str) -> None:
        """What to do in an empty lab (or nothing): a line above the table."""
        box = self.query_one("#empty-hint", Static)
        if str(box.render()) != text:
            box.update(text)
        box.display = bool(text)

    def _relayout(self) -> None:
        columns, widths = conn_layout(self.size.width)
        if self.table.relayout(columns, widths) and self._last is not None:
            self.apply(self._last, self.now_s)  # refill from the last reply, not a new fetch

    def _render_cell(self, key: str, column: int, value: str) -> str | Text:
        if self.table.column_key(column) == "owner" and self.stars.is_lit(key):
            return Text(f"{value} ★", style=LIT_STYLE)
        return value

    def request(self, limit: int) -> dict[str, Any]:
        """The `table` request for the view on screen ({} before a node is chosen, or with no
        rows wanted: the table is not on screen)."""
        if not self.node or limit <= 0:
            return {}
        return requests.table(self.node, self.scope.value, self.filter, limit).to_dict()

    def show(self, node: str | None = None, scope: Scope | None = None) -> None:
        """Switch the view; the table empties and refills on the next fetch."""
        changed = False
        if node is not None and node != self.node:
            self.node, changed = node, True
        if scope is not None and scope != self.scope:
            self.scope, changed = scope, True
            self.query_one(Tabs).active = f"scope-{scope.value}"
        if changed:
            self._last = None
            self.table.reset()
            self.post_message(self.ViewChanged())

    def apply(self, reply: dict[str, Any], now_s: float,
              asked: dict[str, Any] | None = None) -> RowDiff | None:
        """Show a `table` reply, if it is still the view on screen."""
        view = (self.node, self.scope.value, self.filter)
        if asked is not None and (asked.get("node"), asked.get("scope"), asked.get("filter")) != view:
            return None  # answer to a view the operator has already left
        if reply.get("node") not in (None, self.node) or reply.get("scope") not in (
                None, self.scope.value):
            return None
        self.now_s = now_s
        self._last = reply
        rows = list(reply.get("rows", []))
        total = int(reply.get("total", len(rows)))
        if self.filter:
            # The lab matched every field of a row, the hidden ones too (its key, bucket,
            # version, NAT binding): keep only the rows whose cells on screen match.
            needle = self.filter.lower()
            shown = [r for r in rows if needle in " ".join(conn_cells(r, self.down)).lower()]
            total -= len(rows) - len(shown)
            rows = shown
        lit, dark = self.stars.observe(rows, self.takeovers, self.lab_now)
        table = self.table
        table.restyle |= lit | dark
        # Ages once a second: rows cross whole seconds at different polls, and each poll
        # that changed one cell repainted the whole table.
        ages_due = not 0 <= now_s - self._ages_at < AGES_EVERY_S
        if ages_due:
            self._ages_at = now_s
        diff = table.apply([(str(r["key"]), conn_cells(r, self.down)) for r in rows],
                           frozenset() if ages_due else AGE_ONLY)
        if lit and table.sort_column is None:
            # rows just taken over float to the top, where the operator is looking
            table.sort("owner", key=lambda cell: not isinstance(cell, Text))  # stars first
            table.move_cursor(row=0, animate=False)
        note = reply.get("note")
        caption = f"{self.node} · {self.scope.value} · "
        caption += f"{len(rows)} of {total} rows" if total > len(rows) else f"{total} rows"
        if self.filter:
            caption += f" · filter '{self.filter}'"
        if note:
            caption += f" · {note}"
        if caption != self._caption:
            self._caption = caption
            self.query_one("#totals", Static).update(caption, layout=False)
        return diff

    @on(Tabs.TabActivated, "#scope-tabs")
    def _scope_tab(self, event: Tabs.TabActivated) -> None:
        event.stop()
        if event.tab.id:
            self.show(scope=Scope(event.tab.id.removeprefix("scope-")))

    def open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-open")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter = event.value.strip()
        self.table.reset()
        self.post_message(self.ViewChanged())

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    def close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-open")
        self.table.focus()


class Stamp(str):
    """A timeline time cell: it shows the wall clock, and sorts by the lab's time and event
    number (the text wraps at midnight, and events of one instant keep the lab's order)."""

    order: tuple[float, int]

    def __new__(cls, text: str, order: tuple[float, int]) -> Stamp:
        cell = super().__new__(cls, text)
        cell.order = order
        return cell


def stamp_order(cell: Any) -> tuple[float, int]:
    return cell.order if isinstance(cell, Stamp) else (0.0, 0)


class TimelinePane(Vertical):
    """The sync timeline: every trigger and message, newest first, repeats collapsed into one
    row with their count, filtered by node and kind; the selected row's provenance below."""

    REFRESH_S = 1.0  # a busy sync re-sorts the whole table at every poll: once a second is readable

    def __init__(self) -> None:
        super().__init__(id="timeline-pane")
        self.events: list[dict[str, Any]] = []
        self.filter = ""
        self.lab_now: float | None = None  # the snapshot's time, for the selected event's age
        self._runs: dict[str, EventRun] = {}
        self._at: float | None = None  # when the table was last redrawn (the console's clock)
        self._caption = ""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter by node or kind: n2, takeover, n1 sync (Enter keeps, Esc clears)",
                    id="timeline-filter")
        yield Static("", id="timeline-caption")
        table = DiffTable(EVENT_COLUMNS, self._render_cell, id="event-table")
        table.sort_column, table.sort_reverse = "t", True
        table.sort_keys["t"] = stamp_order
        yield table
        with VerticalScroll(id="provenance-box"):
            yield Static("Select an event to see where it came from.", id="provenance")

    @property
    def table(self) -> DiffTable:
        return self.query_one("#event-table", DiffTable)

    def apply(self, events: list[dict[str, Any]], now_s: float | None = None,
              lab_now: float | None = None) -> RowDiff | None:
        """Show the events; with `now_s`, at most once per REFRESH_S (always without it)."""
        if now_s is not None:
            if self._at is not None and 0 <= now_s - self._at < self.REFRESH_S:
                return None
            self._at = now_s
        self.events = events
        self.lab_now = lab_now
        shown = [e for e in events if event_matches(e, self.filter)] if self.filter else events
        runs = collapse_events(shown)
        self._runs = {r.key: r for r in runs}
        rows = [(r.key, event_cells(r)) for r in runs]
        caption = f"filter '{self.filter}': {len(shown)} of {len(events)} events" if self.filter else ""
        if caption != self._caption:
            self._caption = caption
            box = self.query_one("#timeline-caption", Static)
            box.update(caption)
            box.display = bool(caption)
        diff = self.table.apply(rows)
        if not diff.empty:
            self._show_provenance()  # the row under the cursor may be another, or have grown a repeat
        return diff

    def _render_cell(self, key: str, column: int, value: str) -> str | Text:
        run = self._runs.get(key)
        if column == 0 and run is not None:
            last = run.last
            number = last.get("id")
            return Stamp(value, (float(last.get("t", 0.0)), number if isinstance(number, int) else 0))
        return value

    def _show_provenance(self) -> None:
        table = self.table
        if not table.row_count:
            return
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return
        run = self._runs.get(str(key))
        if run is not None:
            text = "\n".join(provenance(self.events, run.last, run, self.lab_now))
            self.query_one("#provenance", Static).update(text)

    @on(DataTable.RowHighlighted, "#event-table")
    def _highlighted(self) -> None:
        # the row under the cursor now: a highlight posted before the table re-sorted names
        # the row that was there then
        self._show_provenance()

    def open_filter(self) -> None:
        box = self.query_one("#timeline-filter", Input)
        box.add_class("-open")
        box.focus()

    def close_filter(self) -> None:
        box = self.query_one("#timeline-filter", Input)
        box.value = ""
        box.remove_class("-open")
        self.table.focus()

    @on(Input.Changed, "#timeline-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.value.strip() == self.filter:
            return
        self.filter = event.value.strip()
        self.table.reset()  # other rows, other runs: start the table again
        self.apply(self.events, lab_now=self.lab_now)  # the events are here: no fetch needed

    @on(Input.Submitted, "#timeline-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()


def _flow_render(key: str, column: int, value: str) -> str | Text:
    if column == HEALTH_COLUMN:
        return Text(value, style=HEALTH_STYLE.get(value, ""), justify="left")
    return value


class FlowsPane(Vertical):
    """Every traffic flow: health, bytes moved, and the node carrying it now."""

    REFRESH_S = 1.0  # bytes and ages move every poll; people read the board once a second

    def __init__(self) -> None:
        super().__init__(id="flows-pane")
        self._summary = ""
        self._at: float | None = None  # when the board was last redrawn (the console's clock)
        self._news: tuple[tuple[Any, Any, Any], ...] = ()  # each flow's name, health, node

    def compose(self) -> ComposeResult:
        yield Static("", id="flow-summary")
        yield DiffTable(FLOW_COLUMNS, _flow_render, id="flow-table")

    def apply(self, flows: list[dict[str, Any]], now_s: float | None = None) -> RowDiff | None:
        """Redraw the board when a flow's health or node changed, else at most once per
        REFRESH_S of `now_s` (always without it): bytes and ages can wait, a stall cannot."""
        news = tuple((f.get("name"), f.get("health"), f.get("node")) for f in flows)
        if now_s is not None:
            if (news == self._news and self._at is not None
                    and 0 <= now_s - self._at < self.REFRESH_S):
                return None
            self._at = now_s
        self._news = news
        summary = "  ".join(f"[{HEALTH_STYLE[h]}]{n} {h}[/]" for h, n in flow_counts(flows).items())
        text = f"{len(flows)} flows  {summary}"
        if text != self._summary:
            self._summary = text
            self.query_one("#flow-summary", Static).update(text, layout=False)
        return self.query_one(DiffTable).apply([(str(f.get("name")), flow_cells(f)) for f in flows])
