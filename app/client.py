"""The console's link to a running lab daemon; viewer links refuse every action."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.console.link import LinkError
from netns.control import ControlClient, ControlError

READ_ONLY = frozenset({"status", "snapshot", "table"})


class DaemonLink:
    def __init__(self, path: Path | str, viewer: bool = False, timeout_s: float = 10.0) -> None:
        self.viewer = viewer
        self._client = ControlClient(path, timeout_s)

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.viewer and msg.get("cmd") not in READ_ONLY:
            return {"ok": False, "error": "viewers cannot act on the lab"}
        try:
            return self._client.request(msg)
        except ControlError as e:
            raise LinkError(str(e)) from e

    def close(self) -> None:
        self._client.close()
