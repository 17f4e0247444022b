"""The console's link to a running lab daemon; viewer links refuse every action."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.console.link import LinkError
from netns import api
from netns.control import ControlClient, ControlError

READ_ONLY = frozenset(cls.CMD for cls in api.REQUESTS.values() if cls.READ_ONLY)


class DaemonLink:
    def __init__(self, path: Path | str, viewer: bool = False, timeout_s: float = 10.0) -> None:
        self.viewer = viewer
        self.run_dir = Path(path).parent  # the lab's run folder (a screenshot lands there)
        self._client = ControlClient(path, timeout_s)

    def request(self, msg: dict[str, Any] | api.Request) -> dict[str, Any]:
        # Checked here by the daemon's own schema: a bad request is refused in the same words.
        try:
            req = api.as_request(msg)
        except api.RequestError as e:
            return {**api.refused(str(e)), "field": e.field}
        if self.viewer and not req.READ_ONLY:
            return api.refused("viewers cannot act on the lab")
        try:
            return self._client.request(req)
        except ControlError as e:
            raise LinkError(str(e)) from e

    def close(self) -> None:
        self._client.close()
