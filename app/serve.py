"""`syncwall serve`: viewer consoles in a browser, through textual-serve, on localhost."""

from __future__ import annotations

import logging
import shlex

log = logging.getLogger(__name__)

VIEWER_FLAG = "--viewer"


def viewer_command(command: str) -> str:
    """The console command each browser session runs, forced into viewer mode.

    A browser tab must never be able to kill nodes, whatever command it was given.
    """
    words = shlex.split(command)
    if not words:
        raise ValueError("serve needs the console command to run, e.g. 'syncwall console'")
    if VIEWER_FLAG not in words:
        words.append(VIEWER_FLAG)
    return shlex.join(words)


def serve(port: int, command: str, host: str = "localhost") -> None:
    """Serve viewer consoles at http://host:port until interrupted (Ctrl+C)."""
    from textual_serve.server import Server  # only this command needs the web server

    run = viewer_command(command)
    log.info("serving %r on http://%s:%d", run, host, port)
    Server(run, host=host, port=port, title="syncwall (viewer)").serve()
