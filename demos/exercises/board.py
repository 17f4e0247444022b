"""What the console's task panel shows for the exercise running on a lab: each criterion ticked
from the lab's snapshot where a snapshot can tell (a criterion's `live` reading: pure and cheap),
else as the student's last `exercise check` graded it. The panel never runs a check itself: a
check starts traffic and crashes nodes, which is the student's call, not a screen refresh's."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demos.exercises import EXERCISES
from demos.exercises.framework import Exercise
from demos.exercises.session import EX_ROOT, Session

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    text: str
    ok: bool | None  # None: not graded yet
    source: str  # "live" (from the snapshot), "check N" (the student's Nth check) or ""
    details: str


@dataclass(frozen=True, slots=True)
class Board:
    exercise: Exercise
    ticks: tuple[Tick, ...]
    checks: int
    hints: int
    passed_at: float | None

    @property
    def all_ticked(self) -> bool:
        return all(t.ok for t in self.ticks)


def board(ex: Exercise, s: Session, snapshot: dict[str, Any]) -> Board:
    """Tick each criterion of `ex` from `snapshot` (live) or from the session's last check."""
    last = {str(r["text"]): r for r in s.last_results}
    mem = {"facts": dict(s.facts), "answer": s.answer, "lab_file": s.lab_file}
    ticks = []
    for c in ex.criteria:
        g = None
        if c.live is not None and snapshot.get("nodes"):
            try:
                g = c.live(snapshot, mem)
            except (KeyError, TypeError, ValueError) as e:  # a snapshot it cannot read: say so below
                log.debug("live grade of %r: %r", c.text, e)
        if g is not None:
            ticks.append(Tick(c.text, g.ok, "live", g.details))
        elif c.text in last:
            r = last[c.text]
            ticks.append(Tick(c.text, bool(r["ok"]), f"check {len(s.checks)}", str(r["details"])))
        else:
            ticks.append(Tick(c.text, None, "", "not checked yet: `syncwall exercise check`"))
    return Board(ex, tuple(ticks), len(s.checks), len(s.hints), s.passed_at)


class SessionWatch:
    """Finds the session of the exercise running on a lab. Files are parsed again only when
    they change (their mtime), so asking once a second costs a few stat calls."""

    def __init__(self, root: Path = EX_ROOT) -> None:
        self.root = root
        self._cache: dict[Path, tuple[int, Session | None]] = {}

    def find(self, lab: str) -> Session | None:
        """The newest session on `lab` that was not stopped, if its exercise is known."""
        best: Session | None = None
        try:
            paths = sorted(self.root.glob("*.json"))
        except OSError:
            return None
        for p in paths:
            s = self._load(p)
            if s is None or s.lab != lab or s.stopped is not None or s.exercise not in EXERCISES:
                continue
            if best is None or s.started > best.started:
                best = s
        return best

    def _load(self, p: Path) -> Session | None:
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            return None
        hit = self._cache.get(p)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        try:
            s: Session | None = Session(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as e:  # half-written or foreign: not a session
            log.debug("%s: not a session: %r", p, e)
            s = None
        self._cache[p] = (mtime, s)
        return s
