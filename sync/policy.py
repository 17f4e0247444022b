"""Sync policies (claims 1-7): on-demand, periodic (full or differential) and hybrid, one
interface chosen by name and switchable at run time."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sync.records import SyncUsageError


class PolicyKind(Enum):
    ON_DEMAND = "on-demand"
    PERIODIC = "periodic"
    HYBRID = "hybrid"


class PeriodicSend(Enum):
    """What a period that fell due asks the agent to send."""

    NOTHING = "nothing"
    CHANGED = "changed"  # differential: the records changed and not yet sent
    ALL = "all"  # full: every record this node is responsible for


@dataclass(slots=True)
class SyncPolicy:
    """When records go out. The agent asks `send_now` on every change and `period_due` on
    every tick; it reports on-demand sends with `sent_on_demand` (hybrid resets its timer)."""

    kind: PolicyKind
    interval_ms: int
    differential: bool
    next_period_s: float = 0.0

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            raise SyncUsageError(f"sync interval must be a positive number of ms, got {self.interval_ms}")

    @property
    def name(self) -> str:
        return self.kind.value

    @property
    def periodic(self) -> bool:
        return self.kind is not PolicyKind.ON_DEMAND

    @property
    def on_demand(self) -> bool:
        return self.kind is not PolicyKind.PERIODIC

    def start(self, now: float) -> None:
        self.next_period_s = now + self.interval_ms / 1000.0

    def send_now(self) -> bool:
        """True: a change is sent at once. False: it waits, queued, for the next period."""
        return self.on_demand

    def sent_on_demand(self, now: float) -> None:
        # Hybrid: an on-demand sync just happened, so the periodic one can wait a full interval.
        if self.kind is PolicyKind.HYBRID:
            self.start(now)

    def period_due(self, now: float) -> PeriodicSend:
        if not self.periodic or now < self.next_period_s:
            return PeriodicSend.NOTHING
        self.start(now)
        return PeriodicSend.CHANGED if self.differential else PeriodicSend.ALL


def make_policy(name: str, interval_ms: int, differential: bool, now: float) -> SyncPolicy:
    """Build a policy from its name ("on-demand", "periodic", "hybrid")."""
    try:
        kind = PolicyKind(name)
    except ValueError:
        choices = ", ".join(k.value for k in PolicyKind)
        raise SyncUsageError(f"unknown sync policy {name!r}; choose one of {choices}") from None
    p = SyncPolicy(kind, interval_ms, differential)
    p.start(now)
    return p
