"""What the engine core answers: a packet's verdict and decision, and the syncs it asks the cluster for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sync.records import Scope

NAT_NO_PORT = "nat-no-port"  # a NAT rule matched but no translated tuple was free
NAT_TRUNCATED = "nat-truncated"  # a translated packet captured only in part (GSO): not rewritable


class Verdict(Enum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"
    HOLD = "hold"  # keep the packet until sync_done(sync_id) (NetfilterQueue retain())


class SyncKind(Enum):
    PUSH = "push"  # send these keys to the cluster and tell me when they are acked (claims 15-17)
    PULL = "pull"  # ask the cluster for these unknown keys (claim 14)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    sync_id: int | None = None
    reply: bytes | None = None  # REJECT: the packet to send back (TCP RST, ICMP unreachable)
    payload: bytes | None = None  # ACCEPT of a translated packet: the bytes to pass on instead


@dataclass(frozen=True, slots=True)
class SyncRequest:
    sync_id: int
    keys: tuple[bytes, ...]
    scope: Scope
    deadline: float
    kind: SyncKind = SyncKind.PUSH


# Totals by verdict, beside the counters by reason.
VERDICT_COUNTERS = {
    Verdict.ACCEPT: "accepted",
    Verdict.DROP: "dropped",
    Verdict.REJECT: "rejected",
    Verdict.HOLD: "held",
}
