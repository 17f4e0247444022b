"""`syncwall exercise list | start NAME | check | hint | reset | answer X | report | stop`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from syncwall_errors import StateError


def _say(msg: str) -> None:
    print(f"syncwall: {msg}", file=sys.stderr, flush=True)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise StateError(f"exercise {what} needs root: it builds and drives a lab")


def _print_results(results: list[dict[str, Any]], passed: bool) -> None:
    for r in results:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['text']}: {r['details']}")
    first = next((r for r in results if not r["ok"]), None)
    if first is not None:
        print(f"\nhint: {first['hint']}")
    print("\nPASSED: every criterion holds" if passed else "\nnot yet: see the failing criteria")


def cmd_exercise(args: argparse.Namespace) -> int:
    from demos.exercises import EXERCISES
    from demos.exercises import runner as ex

    act = args.action
    if act == "list":
        if args.json:
            print(json.dumps({"ok": True, "exercises": [
                {"name": e.name, "title": e.title, "idea": e.idea, "observe": e.observe}
                for e in EXERCISES.values()]}))
        else:
            for e in EXERCISES.values():
                print(f"{e.name:12} {e.title}")
        return 0
    if act == "report":
        md, page = ex.report(args.name, Path(args.out))
        print(json.dumps({"ok": True, "markdown": str(md), "html": str(page)}) if args.json
              else f"wrote {md}\nwrote {page}")
        return 0
    if act == "hint":
        s, crit, text = ex.hint(args.name)
        print(json.dumps({"ok": True, "criterion": crit, "hint": text, "hints_used": len(s.hints)})
              if args.json else (f"{crit}:\n  {text}" if crit else text))
        return 0
    _need_root(act)
    say = (lambda _m: None) if args.json else _say
    if act in ("start", "reset"):
        if act == "start":
            if not args.name:
                raise StateError("which exercise? `syncwall exercise list` names them")
            s = ex.start(args.name, say)
        else:
            s = ex.reset(args.name, say)
        e = ex.exercise(s.exercise)
        if args.json:
            print(json.dumps({"ok": True, "exercise": e.name, "lab": s.lab, "lab_file": s.lab_file,
                              "task": e.task, "criteria": [c.text for c in e.criteria]}))
        else:
            print(ex.task_text(e))
            print(f"\nlab: {s.lab}   lab file: {s.lab_file}")
            print(f"console: syncwall console --lab {s.lab}")
        return 0
    if act == "stop":
        s = ex.stop(args.name, say)
        print(json.dumps({"ok": True, "exercise": s.exercise, "lab": s.lab}) if args.json
              else f"lab {s.lab!r} is down; `syncwall exercise report` still has the session")
        return 0
    if act == "answer":
        if not args.value:
            raise StateError("answer what? e.g. `syncwall exercise answer n2`")
        s, res = ex.answer(args.value, args.name, say)
    else:  # check
        s, res = ex.check(args.name, say)
    results = [r.as_dict() for r in res.results]
    if args.json:
        print(json.dumps({"ok": True, "exercise": s.exercise, "passed": res.passed, "criteria": results,
                          "time_to_pass_s": s.time_to_pass_s}))
    else:
        _print_results(results, res.passed)
    return 0 if res.passed else 3


def add_parser(add: Any) -> None:
    """Called by app.cli.build_parser with its `add(name, fn, help)`."""
    p = add("exercise", cmd_exercise, "tasks for students, graded by the lab: list, start NAME, check, "
                                      "hint, reset, answer X, report, stop")
    p.add_argument("action", choices=("list", "start", "check", "hint", "reset", "answer", "report", "stop"))
    p.add_argument("arg", nargs="?", help="start: the exercise; answer: the answer")
    p.add_argument("--name", dest="exercise_name", help="the exercise (default: the one started last)")
    p.add_argument("--out", default=".", help="report: the folder for the Markdown and HTML files")
    p.set_defaults(fn=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    args.name = args.arg if args.action == "start" else args.exercise_name
    args.value = args.arg if args.action == "answer" else None
    if args.arg and args.action not in ("start", "answer"):
        raise StateError(f"exercise {args.action} takes no argument (got {args.arg!r}); "
                         "name an exercise with --name")
    return cmd_exercise(args)
