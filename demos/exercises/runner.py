"""Runs an exercise on a lab of its own: start, check, hint, reset, answer, report, stop.

`start` writes the starting lab file where the student can edit it, builds the lab from it and
plants the exercise's starting point; `check` grades every criterion on the lab (rebuilding it
first when the student changed the lab file); every step is kept in the session record."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from demos.exercises import EXERCISES
from demos.exercises.framework import CheckResult, Exercise, grade, stop_traffic
from demos.exercises.session import EX_ROOT, Session, write_report
from demos.scenarios.framework import DemoContext, DemoError, Link
from netns import lab as lab_life
from netns.control import ControlClient
from netns.spec import LabSpecError, load_lab
from syncwall_errors import NotFoundError, StateError

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def exercise(name: str) -> Exercise:
    try:
        return EXERCISES[name]
    except KeyError:
        raise NotFoundError(f"no exercise {name!r}; exercises are {', '.join(EXERCISES)}") from None


def current(name: str | None = None, root: Path = EX_ROOT) -> Session:
    """The named exercise's session, or the one started last."""
    if name is None:
        cur = root / "current"
        if not cur.exists():
            raise StateError("no exercise was started; see `syncwall exercise list`")
        name = cur.read_text().strip()
    exercise(name)
    try:
        return Session.load(name, root)
    except FileNotFoundError:
        raise StateError(f"exercise {name!r} was not started; `syncwall exercise start {name}`") from None


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def context(s: Session, link: Link) -> DemoContext:
    ctx = DemoContext(link, s.lab)
    ctx.mem.update(facts=dict(s.facts), answer=s.answer, lab_file=s.lab_file)
    return ctx


def _link(lab: str) -> ControlClient:
    return ControlClient(lab_life.control_socket(lab), timeout_s=15.0)


def _build(ex: Exercise, s: Session, say: Say) -> None:
    """(Re)build the exercise's lab from the session's lab file and plant the starting point."""
    path = Path(s.lab_file)
    try:
        spec = load_lab(path)
    except (LabSpecError, OSError) as e:
        raise StateError(f"your lab file {path} is refused: {e}") from e
    if spec.name != ex.lab_name:
        raise StateError(f"the lab file must keep name = \"{ex.lab_name}\" (it says {spec.name!r})")
    if lab_life.daemon_pid(ex.lab_name):
        say(f"taking lab {ex.lab_name!r} down ...")
        lab_life.down(ex.lab_name, say)
    say(f"building lab {ex.lab_name!r} from {path} ...")
    lab_life.up(ex.lab_name, path, {}, say)
    s.built_hash = file_hash(path)
    if ex.setup is not None:
        with _link(ex.lab_name) as link:
            ctx = context(s, link)
            try:
                s.facts = ex.setup(ctx)
            finally:
                stop_traffic(ctx)


def start(name: str, say: Say = _quiet, root: Path = EX_ROOT) -> Session:
    ex = exercise(name)
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    lab_file = root / f"{ex.name}.toml"
    lab_file.write_text(ex.lab_toml)
    s = Session(ex.name, ex.lab_name, str(lab_file))
    _build(ex, s, say)
    s.save(root)
    return s


def reset(name: str | None = None, say: Say = _quiet, root: Path = EX_ROOT) -> Session:
    """Back to the starting point: the starting lab file, a fresh lab, the fault planted again.
    The session goes on (its checks and hints are kept; resets are counted)."""
    s = current(name, root)
    ex = exercise(s.exercise)
    Path(s.lab_file).write_text(ex.lab_toml)
    _build(ex, s, say)
    s.resets += 1
    s.save(root)
    return s


def check(name: str | None = None, say: Say = _quiet, root: Path = EX_ROOT) -> tuple[Session, CheckResult]:
    s = current(name, root)
    ex = exercise(s.exercise)
    if ex.edits_lab_file and Path(s.lab_file).exists() and file_hash(Path(s.lab_file)) != s.built_hash:
        say("your lab file changed: rebuilding the lab from it")
        _build(ex, s, say)
        s.save(root)
    if not lab_life.daemon_pid(s.lab):
        raise StateError(f"lab {s.lab!r} is not running; `syncwall exercise reset` builds it again")
    with _link(s.lab) as link:
        res = grade(ex, context(s, link))
    s.add_check([r.as_dict() for r in res.results], res.passed)
    s.save(root)
    return s, res


def answer(value: str, name: str | None = None, say: Say = _quiet,
           root: Path = EX_ROOT) -> tuple[Session, CheckResult]:
    """Record the student's answer, then grade (the answer's criterion reads it)."""
    s = current(name, root)
    if not exercise(s.exercise).observe:
        raise StateError(f"exercise {s.exercise!r} takes no answer: its criteria read the lab; "
                         "run `syncwall exercise check`")
    s.add_answer(value.strip(), False)
    s.save(root)
    s, res = check(s.exercise, say, root)
    s.answers[-1]["ok"] = all(r.ok for r in res.results if r.text.startswith("you named"))
    s.save(root)
    return s, res


def hint(name: str | None = None, root: Path = EX_ROOT) -> tuple[Session, str, str]:
    """The hint of the first criterion the last check failed: (session, criterion, hint)."""
    s = current(name, root)
    if not s.checks:
        raise StateError("run `syncwall exercise check` first: a hint is for a criterion that failed")
    bad = next((r for r in s.last_results if not r["ok"]), None)
    if bad is None:
        return s, "", "every criterion passed at the last check: nothing to hint"
    s.add_hint(str(bad["text"]))
    s.save(root)
    return s, str(bad["text"]), str(bad["hint"])


def report(name: str | None, out_dir: Path, root: Path = EX_ROOT) -> tuple[Path, Path]:
    s = current(name, root)
    return write_report(s, exercise(s.exercise).title, out_dir)


def stop(name: str | None = None, say: Say = _quiet, root: Path = EX_ROOT) -> Session:
    s = current(name, root)
    if lab_life.daemon_pid(s.lab):
        lab_life.down(s.lab, say)
    s.stopped = time.time()
    s.save(root)
    return s


def task_text(ex: Exercise) -> str:
    lines = [ex.title, "", f"Idea: {ex.idea}", "", f"Task: {ex.task}", "", "Criteria:"]
    lines += [f"  [ ] {c.text}" for c in ex.criteria]
    if ex.observe:
        lines += ["", f"Answer with: syncwall exercise answer {ex.answer_help}"]
    return "\n".join(lines)


__all__ = ["DemoError", "answer", "check", "context", "current", "exercise", "hint", "report", "reset",
           "start", "stop", "task_text"]

