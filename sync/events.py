"""What a sync agent tells its node: typed facts, consumed with `match` (never by class name)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync.membership import View
from sync.records import Trigger


@dataclass(frozen=True, slots=True)
class PeerUp:
    name: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    name: str
    # True: its process is gone (its liveness link closed, SyncAgent.peer_closed); False: it
    # fell silent for the failure-detection time (crashed, cut off, or too slow).
    closed: bool = False


@dataclass(frozen=True, slots=True)
class ViewChanged:
    view: View


@dataclass(frozen=True, slots=True)
class BucketsGained:
    """The agent has already promoted the state of these buckets to this node. `unplanned`:
    those whose owner stopped forwarding without handing them over (it failed, restarted or
    fenced itself): what a backup held of them may never have been forwarded, so it is
    replayed; the others were handed over by a live owner that forwarded them all."""

    buckets: tuple[int, ...]
    promoted: int
    unplanned: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BucketsLost:
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SyncCompleted:
    token: int
    acked: bool
    peers: tuple[str, ...]
    # The message whose ack completed it, "PEER#SEQ" (step-through names it); "" when none did.
    last: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class StateReply:
    key: bytes
    found: bool


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    peer: str
    received: int
    total: int


@dataclass(frozen=True, slots=True)
class ResyncComplete:
    records: int


@dataclass(frozen=True, slots=True)
class LeaveComplete:
    pass


@dataclass(frozen=True, slots=True)
class RecordApplied:
    key: bytes
    sender: str
    trigger: Trigger


SyncEvent = (
    PeerUp
    | PeerDown
    | ViewChanged
    | BucketsGained
    | BucketsLost
    | SyncCompleted
    | StateReply
    | ResyncProgress
    | ResyncComplete
    | LeaveComplete
    | RecordApplied
)
