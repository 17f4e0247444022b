"""Flow health reports: what every workload writes to its health file and the lab daemon reads."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

# A flow that made no progress for longer than this, while progress was due, is stalled.
STALL_AFTER_S = 2.0


class WorkloadError(SyncwallError):
    """Root of the errors the workload programs raise; the message says what to fix."""


class HealthFileError(WorkloadError):
    """A health file is missing or is not a health document."""


class FlowHealth(Enum):
    """The state of one flow as the console shows it.

    healthy and stalled come and go (a stall is a pause that may end); broken (the
    connection was lost: reset, EOF, gap, mismatch) and failed (a session that did not
    complete) are final; done means the workload stopped the flow itself.
    """

    HEALTHY = "healthy"
    STALLED = "stalled"
    BROKEN = "broken"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (FlowHealth.BROKEN, FlowHealth.DONE, FlowHealth.FAILED)


class FlowKind(Enum):
    TCP = "tcp"
    UDP = "udp"
    FTP = "ftp"
    BURST = "burst"
    ICMP = "icmp"


def fmt_addr(addr: Any) -> str:
    """A socket address as "ip:port" (IPv6 in brackets); "" when unknown."""
    if not addr:
        return ""
    if isinstance(addr, str):
        return addr
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class Flow:
    """One flow's report. `extra` holds the kind-specific fields, written at the top level."""

    name: str
    kind: FlowKind
    src: str = ""
    dst: str = ""
    health: FlowHealth = FlowHealth.HEALTHY
    bytes: int = 0
    detail: str = ""
    started: float = field(default_factory=time.time)
    last_progress: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def set_health(self, health: FlowHealth, detail: str = "") -> None:
        """Change health, logging transitions; a final state is never left."""
        if self.health.final:
            return
        if health is not self.health:
            level = logging.WARNING if health in (FlowHealth.BROKEN, FlowHealth.FAILED) else (logging.INFO)
            log.log(level, "%s %s -> %s %s", self.name, self.health.value, health.value, detail)
        self.health = health
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            name=self.name,
            kind=self.kind.value,
            src=self.src,
            dst=self.dst,
            health=self.health.value,
            bytes=self.bytes,
            detail=self.detail,
            started=self.started,
            last_progress=self.last_progress,
        )
        return doc


class HealthWriter:
    """Writes a workload's flows to a JSON file, atomically (temp file + rename).

    Readers never see a half-written document. `maybe_write` rate-limits to one write
    per `interval_s`; `write` always writes (use it for the final state).
    """

    def __init__(self, path: str | os.PathLike[str], interval_s: float = 0.25, workload: str = "") -> None:
        if interval_s <= 0:
            raise WorkloadError(f"health interval must be positive, got {interval_s}")
        self.path = Path(path)
        self.interval_s = interval_s
        self.workload = workload
        self._last_write = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkloadError(f"cannot create the folder for health file {self.path}: {exc}") from None

    def document(self, flows: Iterable[Flow]) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "pid": os.getpid(),
            "updated": time.time(),
            "flows": [f.to_dict() for f in flows],
        }

    def write(self, flows: Iterable[Flow]) -> None:
        doc = self.document(flows)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as exc:
            # A full disk must not kill the traffic itself; the daemon sees a stale file.
            log.error("cannot write health file %s: %s", self.path, exc)
            return
        self._last_write = time.monotonic()

    def maybe_write(self, flows: Iterable[Flow]) -> bool:
        if time.monotonic() - self._last_write < self.interval_s:
            return False
        self.write(flows)
        return True


def read_health(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The document a HealthWriter wrote. Raises HealthFileError when it is missing or invalid."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise HealthFileError(f"no health file at {p} (has the workload started?)") from None
    except (OSError, ValueError) as exc:
        raise HealthFileError(f"health file {p} is unreadable: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flows"), list):
        raise HealthFileError(f"health file {p} has no 'flows' list")
    return doc
