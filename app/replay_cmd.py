"""`syncwall record save FILE`, `syncwall replay FILE [--json]` and `syncwall serve --replay FILE`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netns.recorder import FLUSH_FILE, RECORDING_DIR, Recording, pack_folder

FLUSH_WAIT_S = 3.0  # the daemon writes its open segment at its next capture (every 500 ms)

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
    from netns.record import RUN_ROOT

    lab = pick_lab(args.lab)
    folder = RUN_ROOT / lab / RECORDING_DIR
    flush = folder / FLUSH_FILE
    if folder.is_dir():
        flush.touch()
        deadline = time.monotonic() + FLUSH_WAIT_S
        while flush.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a file the daemon removes: nothing to await but the file
    data = pack_folder(folder)
    target = Path(args.file)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)  # a recording is meant to be shared: replay needs no root
    os.replace(tmp, target)
    rec = Recording.from_bytes(data, str(target))
    duration = rec.t_end - rec.t_start
    doc = {"ok": True, "lab": lab, "file": str(target), "bytes": len(data),
           "segments": len(rec.segments), "duration_s": round(duration, 1),
           "partial": bool(flush.exists()), "problem": rec.problem}
    note = "" if not flush.exists() else " (the daemon did not write its last few seconds in time)"
    _out(args, doc, f"saved {duration:.0f} s of lab {lab} to {target} "
                    f"({len(data) / 1e6:.1f} MB, {len(rec.segments)} segments){note}")
    return 0


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
    serve(args.port, f"{shlex.quote(sys.executable)} -m app.cli replay {path}")
    return 0
