"""`python -m app.console --fake`: the console against the in-memory fake lab, to try by hand."""

from __future__ import annotations

import argparse
import sys

from app.console.app import ConsoleApp
from app.console.fake import FakeLab, WallClock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.console", description=__doc__)
    parser.add_argument("--fake", action="store_true", help="use the fake lab (required for now)")
    parser.add_argument("--viewer", action="store_true", help="watch only: no actions")
    parser.add_argument("--present", action="store_true", help="presentation mode")
    parser.add_argument("--connections", type=int, default=300, help="fake lab size")
    args = parser.parse_args(argv)
    if not args.fake:
        parser.error("only --fake is wired here; `syncwall console` attaches to a real lab")
    lab = FakeLab(WallClock(), connections=args.connections)
    result = ConsoleApp(lab, viewer=args.viewer, present=args.present).run()
    sys.stdout.write(f"console quit: {result or 'keep'} the lab\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
