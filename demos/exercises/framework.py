"""The exercises' framework: an exercise is a task for a student on a lab of its own, graded by
criteria that read the lab's real state and real traffic (never what the student typed, except
an observe-only exercise's answer, which is checked against what the lab recorded).

A criterion is graded through the demos' DemoContext (the lab link, a notebook `mem` shared by
the criteria of one check). The notebook also carries what the session knows: `facts` (what the
lab showed when the exercise was set up, e.g. the node that dropped a connection), `answer`
(the student's last `exercise answer`) and `lab_file` (the file the student edits)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from demos.scenarios.framework import Check, DemoContext, DemoError

log = logging.getLogger(__name__)


# A criterion's grade is a demo expectation's check: passed or not, and what was seen.
Grade = Check


# A criterion's reading of a lab snapshot (the control API's `snapshot` reply, which the console
# polls anyway) and of the session's notebook (`facts`, `answer`): pure and cheap, so the console's
# task panel can tick it live. None when the snapshot alone cannot tell.
LiveGrade = Callable[[dict[str, Any], dict[str, Any]], "Grade | None"]


@dataclass(frozen=True, slots=True)
class Criterion:
    """One thing that must hold. `hint` is shown when it fails: it points the way, never the answer.
    `live`, when given, grades the same thing from a snapshot alone (the check still uses `grade`)."""

    text: str
    grade: Callable[[DemoContext], Grade]
    hint: str
    live: LiveGrade | None = None


@dataclass(frozen=True, slots=True)
class Exercise:
    name: str
    title: str
    idea: str  # what it teaches
    task: str  # what the student is asked to do
    lab_name: str
    lab_toml: str  # the starting lab file (the student may edit a copy of it)
    criteria: tuple[Criterion, ...]
    # Plants the starting point on a freshly built lab; returns the facts to remember.
    setup: Callable[[DemoContext], dict[str, Any]] | None = None
    observe: bool = False  # answered through `exercise answer`
    answer_help: str = ""  # what `exercise answer` takes, e.g. "NODE"
    edits_lab_file: bool = False  # `check` rebuilds the lab when the student changed the file


@dataclass(slots=True)
class CriterionResult:
    text: str
    ok: bool
    details: str
    hint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class CheckResult:
    results: list[CriterionResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def first_failure(self) -> CriterionResult | None:
        return next((r for r in self.results if not r.ok), None)


def grade(ex: Exercise, ctx: DemoContext) -> CheckResult:
    """Grade every criterion in order; a criterion that cannot be graded fails with the reason.
    The traffic the criteria started is stopped at the end."""
    out = CheckResult()
    try:
        for c in ex.criteria:
            try:
                g = c.grade(ctx)
            except (DemoError, KeyError, TypeError, ValueError, OSError) as e:
                log.info("exercise %s: criterion %r could not be graded: %r", ex.name, c.text, e)
                g = Grade(False, f"could not grade: {e}")
            out.results.append(CriterionResult(c.text, g.ok, g.details, "" if g.ok else c.hint))
    finally:
        stop_traffic(ctx)
    return out


def stop_traffic(ctx: DemoContext) -> None:
    if ctx.link is None:
        return
    for name in ctx.mem.pop("workloads", []):
        with contextlib.suppress(Exception):
            ctx.link.request({"cmd": "traffic", "action": "stop", "name": name})
    with contextlib.suppress(Exception):
        ctx.link.request({"cmd": "traffic", "action": "clear"})


def needs(ctx: DemoContext, key: str, what: str) -> Any:
    """What an earlier criterion of this check found, or a failure that says it was not reached."""
    if key not in ctx.mem:
        raise DemoError(f"needs {what} first")
    return ctx.mem[key]


def rule_accepts(counters: dict[str, dict[str, int]]) -> dict[str, int]:
    """Per rule name, its rule-accept count summed over the nodes."""
    out: dict[str, int] = {}
    for c in counters.values():
        for k, v in c.items():
            if k.startswith("rule-accept:"):
                name = k.split(":", 1)[1]
                out[name] = out.get(name, 0) + int(v)
    return out


def total(counters: dict[str, dict[str, int]], key: str) -> int:
    return sum(int(c.get(key, 0)) for c in counters.values())
