"""The console's only way to the lab: an object with one blocking `request` (the daemon link or a fake)."""

from __future__ import annotations

from typing import Any, Protocol

from syncwall_errors import SyncwallError


class ConsoleError(SyncwallError):
    """Root of the console's errors; the message is meant for the operator."""


class LinkError(ConsoleError):
    """The lab could not be reached or answered with something that is not a reply.

    The real link (`app/client.py`) raises this (or a subclass) when the daemon's socket is gone
    or a reply is not JSON; the console shows it as an error notification and keeps running.
    """


class RequestRefused(ConsoleError):
    """The lab answered `{"ok": false, "error": ...}`; the lab's own words are the message."""


class LabLink(Protocol):
    """What the console needs from the lab: send one control request, get one reply."""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:  # blocking; may raise LinkError
        ...


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    """Return a reply that says ok, or raise RequestRefused with the lab's reason."""
    if not isinstance(reply, dict):
        raise LinkError(f"the lab sent {type(reply).__name__} instead of a reply object")
    if not reply.get("ok", False):
        raise RequestRefused(str(reply.get("error") or "the lab refused without giving a reason"))
    return reply
