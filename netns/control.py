"""The one client of the control sockets (the lab daemon's and the nodes'): JSON lines, sync and async.

`ControlClient(path).request(msg)` (blocking) and `AsyncControlClient(path).request(msg)` send one
request and return the reply object; both keep one connection open and reconnect once when it
drops. `call(req)` also raises `Refused` when the other end answers `ok: false`. A request may be
an `netns.api.Request` or a dict (the node sockets speak their own commands, so dicts are sent
as they are)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netns.api import Request
from syncwall_errors import SyncwallError

MAX_LINE = 64 << 20


class ControlError(SyncwallError):
    """The other end is not there, or did not answer in time."""


class Refused(SyncwallError):
    """The other end answered `{"ok": false, "error": ...}`; its words are the message."""


def encode(msg: Request | Mapping[str, Any]) -> bytes:
    body = msg.to_dict() if isinstance(msg, Request) else dict(msg)
    return json.dumps(body).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as e:
        raise ControlError(f"the reply is not JSON ({e})") from e
    if not isinstance(reply, dict):
        raise ControlError("the reply is not an object")
    return reply


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise Refused(str(reply.get("error") or "refused without giving a reason"))
    return reply


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

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, msg: Request | Mapping[str, Any]) -> dict[str, Any]:
        data = encode(msg)
        for attempt in (1, 2):
            fresh = self._sock is None
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
                return self._read_reply()
            except (OSError, ControlError) as e:
                self.close()
                # Only a connection kept from before may have gone stale: retry on a new one.
                if fresh or attempt == 2 or isinstance(e, TimeoutError):
                    raise ControlError(f"no reply from {self.path}: {e}") from e
        raise ControlError("unreachable")  # pragma: no cover

    def call(self, msg: Request | Mapping[str, Any]) -> dict[str, Any]:
        """`request`, and Refused unless the reply says ok."""
        return checked(self.request(msg))

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
        return decode(line)


class AsyncControlClient:
    """The same client for an asyncio loop; one request at a time per connection."""

    def __init__(self, path: Path | str, timeout_s: float = 2.0) -> None:
        self.path = str(path)
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def request(self, msg: Request | Mapping[str, Any],
                      timeout_s: float | None = None) -> dict[str, Any]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        data = encode(msg)
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._writer is None
                try:
                    if self._writer is None:
                        self._reader, self._writer = await asyncio.wait_for(
                            asyncio.open_unix_connection(self.path, limit=MAX_LINE), timeout)
                    assert self._reader is not None and self._writer is not None
                    self._writer.write(data)
                    await self._writer.drain()
                    line = await asyncio.wait_for(self._reader.readline(), timeout)
                    if not line:
                        raise ControlError("connection closed")
                    return decode(line)
                except (OSError, ControlError, ValueError, asyncio.LimitOverrunError,
                        TimeoutError) as e:
                    self.close()
                    # Only a kept connection may have gone stale; a timeout means busy or stuck.
                    if fresh or attempt == 2 or isinstance(e, TimeoutError):
                        raise ControlError(f"no reply from {self.path}: {e or type(e).__name__}") from e
        raise ControlError("unreachable")  # pragma: no cover

    async def call(self, msg: Request | Mapping[str, Any],
                   timeout_s: float | None = None) -> dict[str, Any]:
        return checked(await self.request(msg, timeout_s))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def request(path: Path | str, msg: Request | Mapping[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One request on a fresh connection."""
    with ControlClient(path, timeout_s) as c:
        return c.request(msg)
