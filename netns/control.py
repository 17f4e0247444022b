"""JSON-lines request/reply over Unix sockets: how the CLI, the console and the daemon talk."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from syncwall_errors import SyncwallError

MAX_LINE = 16 << 20


class ControlError(SyncwallError):
    """The other end is not there, or did not answer in time."""


class ControlClient:
    """A blocking client that keeps one connection open and reconnects once when it drops."""

    def __init__(self, path: Path | str, timeout_s: float = 10.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise ControlError(f"cannot reach {self.path}: {e.strerror or e}") from e
        self._buf = b""
        return s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(msg).encode() + b"\n"
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
                return self._read_reply()
            except (OSError, ControlError) as e:
                self.close()
                if attempt == 2 or isinstance(e, TimeoutError):
                    raise ControlError(f"no reply from {self.path}: {e}") from e
        raise ControlError("unreachable")  # pragma: no cover

    def _read_reply(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise ControlError("connection closed")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ControlError("reply too long")
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ControlError("reply is not an object")
        return reply


def request(path: Path | str, msg: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One request on a fresh connection."""
    c = ControlClient(path, timeout_s)
    try:
        return c.request(msg)
    finally:
        c.close()
