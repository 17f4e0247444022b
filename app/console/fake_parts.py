"""The fake lab's pieces: its clocks, its nodes, connections, flows and queued sync messages."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from syncwall_errors import SyncwallError

# The daemon's clock is the epoch (netns/daemon.py: time.time()), and so is the fake lab's: a
# console that showed raw seconds looked fine on a clock that starts at 0. A fixed moment, so
# that snapshots show the same times: 2025-12-03 12:00:00 UTC.
LAB_EPOCH_S = 1_764_763_200.0


class FakeClock:
    """A clock that only moves when told to (tests), from a fixed moment in epoch seconds."""

    def __init__(self, start_s: float = LAB_EPOCH_S) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


class WallClock:
    """Epoch seconds, as the daemon's, moving with the monotonic clock (the fake lab tried by hand)."""

    def __init__(self) -> None:
        self._epoch = time.time()
        self._start = time.monotonic()

    def __call__(self) -> float:
        return self._epoch + time.monotonic() - self._start


class NodeState(Enum):
    ACTIVE = "active"
    FAILED = "failed"
    OFFLINE = "offline"
    JOINING = "joining"


class Policy(Enum):
    ON_DEMAND = "on-demand"
    PERIODIC = "periodic"
    HYBRID = "hybrid"


class FlowKind(Enum):
    TCP = "tcp"
    UDP = "udp"
    FTP = "ftp"
    BURST = "burst"


@dataclass(slots=True)
class FakeNode:
    name: str
    index: int
    state: NodeState = NodeState.ACTIVE
    held: int = 0
    failed_at_s: float | None = None
    sent: deque[float] = field(default_factory=deque)  # send times of sync messages
    counters: dict[str, int] = field(default_factory=dict)
    # The lab's own rate history (the daemon's `sync_rate_history`): one sample per half second
    # of the lab's clock, however often it is asked.
    rate_hist: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    rate_at: float = float("-inf")
    last_takeover: dict[str, Any] | None = None  # the engine's own (engine/binding.py), with `t`


@dataclass(slots=True)
class FakeConn:
    key: str
    proto: str
    src: str
    dst: str
    state: str
    bucket: int
    owner: str
    created_s: float
    trigger: str = "state-modified"
    version: int = 1
    copies: dict[str, int] = field(default_factory=dict)  # backup node -> version it holds
    common: bool = False
    expires_s: float | None = None
    flow: str | None = None


@dataclass(slots=True)
class FakeFlow:
    name: str
    kind: FlowKind
    client: str
    server: str
    src: str
    dst: str
    conn_key: str
    started_s: float
    rate_bps: float
    bytes: int = 0
    health: str = "healthy"
    detail: str = ""
    workload: str = ""
    longest_pause_s: float = 0.0
    stalled_since_s: float | None = None


@dataclass(slots=True)
class QueuedMessage:
    key: str
    version: int
    to: list[str]
    trigger: str
    queued_s: float
    sender: str
    holds_packet: bool = False


CLIENTS = {"c1": "198.18.1.10", "c2": "198.18.1.11"}
SERVERS = {"s1": "198.18.2.10", "s2": "198.18.2.11"}
TCP_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT")


class Refused(SyncwallError):
    """A request the lab turns down; becomes `{"ok": false, "error": ...}`."""
