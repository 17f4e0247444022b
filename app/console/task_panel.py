"""The task panel: while an exercise runs on the console's lab, its task and criteria, ticked live.

Cost: the live criteria read the snapshot the console polls anyway (4 times a second; pure dict
reads, no request of their own), and the panel is redrawn only when what it says changed. The
session file (the last `exercise check`, answers, hints) is looked at once a second and parsed
again only when it changed. The panel never runs a check: that starts traffic and crashes nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from demos.exercises import EXERCISES
from demos.exercises.board import Board, SessionWatch, board
from demos.exercises.session import EX_ROOT, Session

SESSION_EVERY_S = 1.0  # how often the session file is looked at (the console's clock)

MARK = {True: ("✓", "bold green"), False: ("✗", "bold red"), None: ("·", "dim")}


def render(b: Board) -> tuple[str, RenderableType, str]:
    """(border title, what the panel shows, the same as plain text) for `b`. The criteria come
    before the task: what ticks must be on screen without scrolling."""
    ex = b.exercise
    done = sum(1 for t in b.ticks if t.ok)
    said = f"Criteria {done} of {len(b.ticks)} · checks {b.checks} · hints {b.hints}"
    if b.passed_at is not None:
        said += " · passed"
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=1, no_wrap=True)
    grid.add_column(ratio=1)
    plain = [ex.title, said]
    for t in b.ticks:
        mark, style = MARK[t.ok]
        where = f" ({t.source})" if t.source else ""
        grid.add_row(Text(mark, style=style), Text.assemble(t.text, (where, "dim")))
        grid.add_row("", Text(t.details, style="dim"))
        plain += [f"{mark} {t.text}{where}", f"  {t.details}"]
    verbs = "check · hint" + (f" · answer {ex.answer_help}" if ex.observe else "")
    tail = [Text(""), Text("Task", style="bold"), Text(ex.task), Text(""),
            Text(f"syncwall exercise {verbs}", style="dim")]
    plain += ["Task", ex.task, f"syncwall exercise {verbs}"]
    head = Text.assemble((ex.title, "bold"), "\n", (said, "green" if b.passed_at is not None else ""))
    return f"exercise {ex.name}", Group(head, grid, *tail), "\n".join(plain)


class TaskPanel(VerticalScroll):
    """Hidden unless an exercise's session runs on the lab the console shows."""

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(id="task-panel")
        self.watch_sessions = SessionWatch(root or EX_ROOT)
        self._session: Session | None = None
        self._looked_at: float | None = None
        self._lab = ""
        self.plain = ""  # what the panel says, as text (tests read it)

    def compose(self) -> ComposeResult:
        yield Static("", id="task-body")

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    def show(self, snapshot: dict[str, Any], now_s: float) -> None:
        """Called with every snapshot the console applies."""
        lab = str(snapshot.get("lab") or "")
        if lab != self._lab or self._looked_at is None or now_s - self._looked_at >= SESSION_EVERY_S:
            self._lab, self._looked_at = lab, now_s
            self._session = self.watch_sessions.find(lab) if lab else None
        s = self._session
        if s is None:
            self.set_class(False, "-open")
            return
        title, shown, plain = render(board(EXERCISES[s.exercise], s, snapshot))
        if plain != self.plain:  # redrawn only when what it says changed
            self.plain = plain
            self.border_title = title
            self.query_one("#task-body", Static).update(shown)
        self.set_class(True, "-open")
