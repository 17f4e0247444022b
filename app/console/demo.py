"""The demo panel: pick a scripted demo and run it step by step (or auto-play) on the console's lab."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, OptionList, Static
from textual.widgets.option_list import Option

from app.console.link import LabLink

if TYPE_CHECKING:
    from demos.runner import DemoRun, StepResult

log = logging.getLogger(__name__)

AUTO_PAUSE_S = 2.0  # auto-play: time for the audience to read a result before the next step


class LockedLink:
    """Lets the demo's worker thread and the console's pollers share one link: one request at a
    time (the daemon link keeps a single socket, the fake lab a single state)."""

    def __init__(self, link: LabLink, lock: threading.Lock) -> None:
        self.link = link
        self.lock = lock

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.link.request(msg)


def available_demos() -> list[tuple[str, str, bool]]:
    """(name, title, needs_lab) of every demo, in lesson order."""
    from demos.runner import list_demos, scenario

    return [(name, title, scenario(name).needs_lab) for name, title in list_demos()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    return str(value)


def _flatten(item: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in item.items():
        label = f"{prefix}{key.replace('_', ' ')}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{label} "))
        else:
            out[label] = value
    return out


def figure_tables(figures: dict[str, Any]) -> tuple[list[tuple[str, str]],
                                                    list[tuple[str, list[str], list[list[str]]]]]:
    """Split a demo's figures into (name, value) pairs and grids.

    A figure that is a list of dicts (the backup-groups rows) becomes a grid with one column
    per item, labelled by the item's first field, and one row per (flattened) field: narrow
    enough for a side panel however many fields an item has. The headline is shown apart.
    """
    scalars: list[tuple[str, str]] = []
    grids: list[tuple[str, list[str], list[list[str]]]] = []
    for name, value in figures.items():
        if name == "headline":
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = [_flatten(v) for v in value]
            first = next(iter(items[0]), "")
            columns = [f"{_fmt(i.get(first))} {first}" for i in items]
            fields = [f for f in dict.fromkeys(k for i in items for k in i) if f != first]
            rows = [[f, *(_fmt(i.get(f)) for i in items)] for f in fields]
            grids.append((name.replace("_", " "), columns, rows))
        elif isinstance(value, dict):
            scalars.extend((f"{name.replace('_', ' ')} {k}", _fmt(v))
                           for k, v in _flatten(value).items())
        else:
            scalars.append((name.replace("_", " "), _fmt(value)))
    return scalars, grids


class DemoListScreen(ModalScreen[str | None]):
    """Choose a demo; a demo that needs no lab says so."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, demos: list[tuple[str, str, bool]]) -> None:
        super().__init__(classes="dialog-screen")
        self.demos = demos

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog demo-list"):
            yield Label("Run a demo on this lab", classes="dialog-question")
            yield OptionList(*(
                Option(f"[b]{escape(name)}[/b]  {escape(title)}"
                       + ("" if needs_lab else "  [dim](no lab needed)[/dim]"), id=name)
                for name, title, needs_lab in self.demos), id="demo-options")
            yield Static("enter runs the chosen demo · esc cancels", classes="help-extra")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DemoCaption(Static):
    """The current step's caption, across the whole screen, large enough for an audience."""

    def __init__(self) -> None:
        super().__init__("", id="demo-caption")


class DemoPanel(VerticalScroll):
    """Runs one DemoRun: steps in a thread worker (exclusive group "demo"), ticks and figures."""

    def __init__(self) -> None:
        super().__init__(id="demo-panel")
        self.run: DemoRun | None = None
        self.busy = False  # a worker is starting the demo or running a step
        self.auto = False
        self.auto_pause_s = AUTO_PAUSE_S
        self.error = ""
        self.restored: list[str] = []  # names of the runs put back (for tests and the log)
        self._restore_after: DemoRun | None = None
        self._figures_shown: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="demo-title")
        yield Static("", id="demo-state")
        # side by side when the panel has the width (a demo with no lab to watch), else stacked
        with Container(id="demo-body"):
            with Vertical(id="demo-story"):
                yield Static("", id="demo-steps")
                yield Static("", id="demo-result")
            with Vertical(id="demo-numbers"):
                yield Static("", id="demo-headline")
                yield DataTable(id="demo-figures", show_cursor=False, zebra_stripes=True)
                yield Vertical(id="demo-grids")

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    @property
    def caption(self) -> DemoCaption:
        return self.app.query_one(DemoCaption)

    # ---- what the operator does --------------------------------------------------------------

    def open(self, name: str, link: LabLink, lab: str) -> None:
        """Show the panel and start `name` on the lab behind `link` (closing any demo first)."""
        if self.busy:
            self.app.notify("a demo step is still running; wait for it or press escape",
                            severity="warning")
            return
        old, self.run = self.run, None
        self.auto = False
        self.error = ""
        self._figures_shown = None
        self.set_class(True, "-open")
        self.caption.set_class(True, "-open")
        self.app.refresh_bindings()  # the demo's keys apply now
        self.busy = True
        self._render_all(starting=name)
        self._start(name, link, lab, old)

    def next_step(self) -> None:
        if self.run is None or self.busy:
            if self.busy:
                self.app.notify("a step is running", timeout=2)
            return
        if self.run.done:
            self.app.notify("the demo is over; escape closes it", timeout=3)
            return
        self.busy = True
        self._render_all()
        self._step(self.run)

    def toggle_auto(self) -> None:
        if self.run is None:
            return
        self.auto = not self.auto and not self.run.done
        self.app.notify("auto-play on" if self.auto else "auto-play off", timeout=2)
        self._render_all()
        if self.auto and not self.busy:
            self.next_step()

    def close(self) -> None:
        """Hide the panel; the lab is put back (traffic stopped, policy restored) in a worker."""
        run, self.run = self.run, None
        self.auto = False
        self.set_class(False, "-open")
        self.caption.set_class(False, "-open")
        self.app.refresh_bindings()
        if run is None:
            return
        if self.busy:
            self._restore_after = run  # a thread cannot be interrupted: restore once it ends
            self.app.notify("the demo closes after its running step", timeout=3)
        else:
            self.busy = True
            self._restore(run)

    def finish(self) -> None:
        """The console is closing: put the lab back now (blocking) if a demo is still open."""
        run, self.run = self.run, None
        if run is not None and not self.busy:
            run.restore()

    # ---- workers ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def _start(self, name: str, link: LabLink, lab: str, old: DemoRun | None) -> None:
        from demos.runner import DemoRun

        if old is not None:
            old.restore()
        try:
            run = DemoRun(name, link, lab)
        except Exception as exc:  # any link's errors, a lab that refuses: said in the panel
            log.info("demo %s did not start: %r", name, exc)
            self.app.call_from_thread(self._start_failed, name, str(exc) or repr(exc))
            return
        self.app.call_from_thread(self._started, run)

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def _step(self, run: DemoRun) -> None:
        try:
            result = run.run_next()
        except Exception as exc:  # run_next catches the lab's errors; this is a demo's bug
            log.exception("demo %s: step %d", run.name, run.index + 1)
            run.aborted = True
            self.app.call_from_thread(self._stepped, run, None, f"the step crashed: {exc!r}")
            return
        self.app.call_from_thread(self._stepped, run, result, "")

    @work(thread=True, exclusive=True, group="demo", exit_on_error=False)
    def _restore(self, run: DemoRun) -> None:
        try:
            run.restore()
        except Exception:  # restore() suppresses the lab's errors; log anything else
            log.exception("demo %s: restore", run.name)
        self.app.call_from_thread(self._restored, run)

    # ---- back on the UI thread ---------------------------------------------------------------

    def _start_failed(self, name: str, why: str) -> None:
        self.busy = False
        self.error = f"demo {name} could not start: {why}"
        self.app.notify(self.error, title="demo", severity="error", timeout=8)
        self._render_all()

    def _started(self, run: DemoRun) -> None:
        self.busy = False
        if not self.is_open:  # closed while it was starting
            self.busy = True
            self._restore(run)
            return
        self.run = run
        self.set_class(not run.scenario.needs_lab, "-wide")
        self.app.set_class(not run.scenario.needs_lab, "-demo-wide")
        self._render_all()

    def _stepped(self, run: DemoRun, result: StepResult | None, crash: str) -> None:
        self.busy = False
        if run is self._restore_after:
            self._restore_after = None
            self.busy = True
            self._restore(run)
            return
        if run is not self.run:
            return
        if crash:
            self.error = crash
        self._render_all()
        refresh = getattr(self.app, "poll", None)
        if callable(refresh):
            refresh()  # show what the step did to the lab now, not at the next tick
        if run.done:
            self.auto = False
            self.app.notify("every expectation held" if run.ok else "some expectations failed",
                            title=f"demo {run.name} is over",
                            severity="information" if run.ok else "warning", timeout=6)
            self._render_all()
        elif self.auto:
            self.set_timer(max(self.auto_pause_s, 0.01), self._auto_next)

    def _auto_next(self) -> None:
        if self.auto and not self.busy and self.run is not None and not self.run.done:
            self.next_step()

    def _restored(self, run: DemoRun) -> None:
        self.busy = False
        self.restored.append(run.name)
        self.app.notify(f"demo {run.name} closed: its traffic stopped, the sync policy put back",
                        timeout=3)

    # ---- rendering -------------------------------------------------------------------------

    def _render_all(self, starting: str = "") -> None:
        run = self.run
        title = self.query_one("#demo-title", Static)
        state = self.query_one("#demo-state", Static)
        steps = self.query_one("#demo-steps", Static)
        result = self.query_one("#demo-result", Static)
        headline = self.query_one("#demo-headline", Static)
        if run is None:
            self.border_title = f"demo · {starting}" if starting else "demo"
            title.update(f"[b]starting {escape(starting)}…[/b]" if starting and not self.error
                         else "")
            state.update(f"[red]{escape(self.error)}[/red]" if self.error else "")
            for box in (steps, result, headline):
                box.update("")
            self.caption.update(escape(self.error) if self.error
                                else f"starting demo {escape(starting)}…")
            self.caption.set_class(bool(self.error), "-failed")
            return
        total = len(run.steps)
        self.border_title = f"demo · {run.name}"
        title.update(f"[b]{escape(run.scenario.title)}[/b]")
        state.update(self._state_text(run))
        steps.update("\n".join(self._step_line(run, i) for i in range(total)))
        result.update(self._result_text(run))
        head = str(run.figures.get("headline", ""))
        headline.update(f"[b]{escape(head)}[/b]" if head else "")
        headline.display = bool(head)
        self.caption.update(self._caption_text(run))
        self.caption.set_class(run.done and not run.ok, "-failed")
        self.caption.set_class(run.done and run.ok, "-passed")
        self._render_figures(run.figures)

    def _state_text(self, run: DemoRun) -> str:
        parts = [] if run.done else [f"step {run.index + 1} of {len(run.steps)}"]
        if self.busy:
            parts.append("[b]running…[/b]")
        elif run.done:
            parts.append("[green]every expectation held[/green]" if run.ok
                         else "[red]some expectations failed[/red]")
        else:
            parts.append("enter/n runs it")
        if not run.done:
            parts.append("auto-play [b]on[/b]" if self.auto else "A auto-plays")
        parts.append("esc closes")
        if self.error:
            parts.append(f"[red]{escape(self.error)}[/red]")
        return " · ".join(parts)

    def _step_line(self, run: DemoRun, i: int) -> str:
        caption = escape(run.steps[i].caption)
        if i < len(run.results):
            res = run.results[i]
            if res.skipped:
                return f"[dim]- {i + 1}. {caption} (skipped)[/dim]"
            mark = "[green]✔[/green]" if res.ok else "[red]✘[/red]"
            return f"{mark} {i + 1}. {caption}"
        if i == run.index and not run.done:
            mark = "[b]▶[/b]" if self.busy else "[b]>[/b]"
            return f"{mark} [b]{i + 1}. {caption}[/b]"
        return f"[dim]· {i + 1}. {caption}[/dim]"

    def _result_text(self, run: DemoRun) -> str:
        done = [r for r in run.results if not r.skipped]
        if not done:
            return ""
        last = done[-1]
        lines = [f"[b]step {run.results.index(last) + 1}[/b] ({last.duration_s:.0f} s)"]
        lines.extend(escape(line) for line in last.details.splitlines())
        for check in last.expectations:
            mark = "[green]ok  [/green]" if check.ok else "[b red]FAIL[/b red]"
            lines.append(f"{mark} {escape(check.text)}: {escape(check.details)}")
        if not last.expectations and not last.ok:
            lines.append("[b red]FAIL[/b red]")
        return "\n".join(lines)

    def _caption_text(self, run: DemoRun) -> str:
        total = len(run.steps)
        if run.done:
            verdict = "✔ every expectation held" if run.ok else "✘ some expectations failed"
            head = str(run.figures.get("headline", ""))
            return f"{run.name}: {verdict}" + (f" · {escape(head)}" if head else "")
        i = run.index
        mark = "▶" if self.busy else ">"
        return f"{mark} {i + 1}/{total}  {escape(run.steps[i].caption)}"

    def _render_figures(self, figures: dict[str, Any]) -> None:
        if figures == self._figures_shown:
            return
        self._figures_shown = dict(figures)
        scalars, grids = figure_tables(figures)
        table = self.query_one("#demo-figures", DataTable)
        table.clear(columns=True)
        table.display = bool(scalars)
        if scalars:
            table.add_columns("figure", "value")
            for name, value in scalars:
                table.add_row(name, value)
        box = self.query_one("#demo-grids", Vertical)
        box.remove_children()
        for title, columns, rows in grids:
            grid: DataTable[str] = DataTable(show_cursor=False, zebra_stripes=True,
                                             classes="demo-grid")
            grid.border_title = title
            box.mount(grid)
            grid.add_columns(title, *columns)
            for row in rows:
                grid.add_row(*row)
