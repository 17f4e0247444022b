"""`syncwall record save FILE`, `syncwall replay FILE [--json]` and `syncwall serve --replay FILE`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netns.recorder import Recording, save_recording

Add = Callable[[str, Any, str], argparse.ArgumentParser]


def add_commands(add: Add, serve_parser: argparse.ArgumentParser) -> None:
    """Add `record` and `replay` to the CLI, and `--replay FILE` to `serve`."""
    p = add("record", cmd_record, "save the running lab's recording to a file (to replay anywhere)")
    p.add_argument("action", choices=["save"])
    p.add_argument("file", help="where to write the recording, e.g. lab.swrec")
    p = add("replay", cmd_replay, "open the console on a recording: no root, no lab needed")
    p.add_argument("file", help="a file written by `syncwall record save`")
    p.add_argument("--at", type=float, default=None, help="start at this many seconds in")
    p.add_argument("--present", action="store_true", help="high contrast, large captions")
    p.add_argument("--compare", nargs=2, type=float, metavar=("A", "B"),
                   help="what each node's tables gained and lost from A to B seconds in")
    p.add_argument("--viewer", action="store_true", help=argparse.SUPPRESS)  # replays only watch
    serve_parser.add_argument("--replay", metavar="FILE", help="serve a recording instead of a lab")
    live = serve_parser.get_default("fn")

    def serve_either(args: argparse.Namespace) -> int:
        return cmd_serve_replay(args) if args.replay else int(live(args))

    serve_parser.set_defaults(fn=serve_either)


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    sys.stdout.write((json.dumps(doc) if args.json else text) + "\n")


def cmd_record(args: argparse.Namespace) -> int:
    from netns.lab import pick_lab

    lab = pick_lab(args.lab)
    doc = save_lab_recording(lab, Path(args.file))
    _out(args, doc, saved_text(doc))
    return 0


def save_lab_recording(lab: str, target: Path) -> dict[str, Any]:
    """`record save`, `down --record` and `demo --record`: the lab's recording into `target`."""
    from netns.record import RUN_ROOT

    return {"lab": lab, **save_recording(RUN_ROOT / lab, target)}


def saved_text(doc: dict[str, Any]) -> str:
    note = " (the daemon did not write its last few seconds in time)" if doc["partial"] else ""
    return (f"saved {doc['duration_s']:.0f} s of lab {doc['lab']} to {doc['file']} "
            f"({doc['bytes'] / 1e6:.1f} MB, {doc['segments']} segments){note}")


def cmd_replay(args: argparse.Namespace) -> int:
    rec = Recording.open(args.file)
    if args.compare:
        return _compare(args, rec)
    if args.json:
        from app.replay import summarize

        sys.stdout.write(json.dumps({"ok": True, **summarize(rec)}) + "\n")
        return 0
    if rec.problem:
        sys.stderr.write(f"syncwall: {rec.problem}\n")
    from app.replay import ReplayApp, ReplayLink

    link = ReplayLink(rec)
    if args.at is not None:
        link.seek(link.t_start + args.at)
    ReplayApp(link, present=args.present).run()
    return 0


def _compare(args: argparse.Namespace, rec: Recording) -> int:
    from rich.text import Text

    from app.replay import compare, compare_lines

    a_s, b_s = sorted(args.compare)
    _t, a = rec.state_at(rec.t_start + a_s)
    _t, b = rec.state_at(rec.t_start + b_s)
    result = compare(a, b)
    if args.json:
        doc = {"ok": True, "from_s": a_s, "to_s": b_s, "moved": result["moved"],
               "nodes": result["nodes"]}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        lines = [f"from {a_s:g} s to {b_s:g} s", *compare_lines(result)]
        sys.stdout.write("\n".join(Text.from_markup(line).plain for line in lines) + "\n")
    return 0


def cmd_serve_replay(args: argparse.Namespace) -> int:
    from app.serve import serve

    Recording.open(args.replay)  # a bad file is refused here, not in every browser tab
    path = shlex.quote(str(Path(args.replay).resolve()))
    serve(args.port, f"{shlex.quote(sys.executable)} -m app.cli replay {path}", args.host)
    return 0
