"""The Textual console: a client of the lab daemon that talks to it only through a LabLink."""

from app.console.link import ConsoleError, LabLink, LinkError, RequestRefused

__all__ = ["ConsoleError", "LabLink", "LinkError", "RequestRefused", "run_console"]


def run_console(link: LabLink, viewer: bool = False, present: bool = False,
                demo: str | None = None) -> str:
    """Open the console on `link` (with `demo`: on that demo's panel); returns "keep" or "stop"
    (what the operator chose on quit)."""
    # imported here so that `import app.console` (for LinkError) does not load Textual
    from app.console.app import run_console as run

    return run(link, viewer=viewer, present=present, demo=demo)
