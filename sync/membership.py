"""Membership: this node's own mode and its transition table, and views (member states ->
bucket owners and cyclic backup groups, claims 8-13).

A view is a pure function of the member states, so every node can recompute and check it.
A node's mode changes only through TRANSITIONS, so an illegal change is refused, not made."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sync.records import SyncUsageError
from sync.wire import BadFrame, BadFrameKind

log = logging.getLogger(__name__)


class MemberState(Enum):
    ACTIVE = "active"
    JOINING = "joining"
    FAILED = "failed"
    OFFLINE = "offline"


_STATE_CODE = {MemberState.ACTIVE: 0, MemberState.JOINING: 1, MemberState.FAILED: 2, MemberState.OFFLINE: 3}
_CODE_STATE = {v: k for k, v in _STATE_CODE.items()}
LIVE = frozenset({MemberState.ACTIVE, MemberState.JOINING})


class Mode(Enum):
    """A node's own idea of where it stands (announced in every heartbeat). Where the cluster
    says it stands is its MemberState in the view; the two meet in the transition table."""

    JOINING = 0
    ACTIVE = 1
    LEAVING = 2  # pushing everything to its backups
    LEFT = 3  # pushed and acked; asks the leader for a view without it
    GONE = 4  # view without it adopted: silent

    @classmethod
    def from_wire(cls, v: Any) -> Mode:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4:
            raise BadFrame(BadFrameKind.BAD_PAYLOAD, f"bad mode {v!r}")
        return cls(v)


class ModeEvent(Enum):
    """What may change this node's mode: the inputs of the transition table."""

    LEAVE = "leave"  # the node was asked to leave the cluster
    ACTIVATED = "activated"  # a view made us active, and our resync is complete
    DEMOTED = "demoted"  # a view says we are not active (we were declared failed): rejoin
    MORE_TO_PUSH = "more-to-push"  # leaving: a new view gave us records to push and have acked
    PUSHED = "pushed"  # leaving: everything we pushed was acked
    REMOVED = "removed"  # a view without us was adopted
    ALONE = "alone"  # left, and no active node remains to hand over to


# (mode, event) -> the new mode. Anything else is refused: the agent's own bug.
TRANSITIONS: Mapping[tuple[Mode, ModeEvent], Mode] = {
    (Mode.JOINING, ModeEvent.ACTIVATED): Mode.ACTIVE,
    (Mode.JOINING, ModeEvent.LEAVE): Mode.LEFT,  # owns nothing: nothing to push
    (Mode.ACTIVE, ModeEvent.LEAVE): Mode.LEAVING,
    (Mode.ACTIVE, ModeEvent.DEMOTED): Mode.JOINING,
    (Mode.LEAVING, ModeEvent.MORE_TO_PUSH): Mode.LEAVING,
    (Mode.LEFT, ModeEvent.MORE_TO_PUSH): Mode.LEAVING,
    (Mode.LEAVING, ModeEvent.PUSHED): Mode.LEFT,
    (Mode.LEAVING, ModeEvent.REMOVED): Mode.GONE,
    (Mode.LEFT, ModeEvent.REMOVED): Mode.GONE,
    (Mode.LEFT, ModeEvent.ALONE): Mode.GONE,
}


class IllegalModeChange(SyncUsageError):
    """The agent tried a mode change the transition table does not allow: a bug of ours
    (never a peer's doing: peers' messages are checked before they reach the table)."""

    def __init__(self, mode: Mode, event: ModeEvent) -> None:
        super().__init__(f"mode {mode.name} cannot take event {event.value!r}; this is a sync agent bug")
        self.mode = mode
        self.event = event


class ModeMachine:
    """This node's mode, changed only by `fire`. Refusals are counted (and raised)."""

    __slots__ = ("mode", "refused")

    mode: Mode  # read freely; assigning it raises: change it with fire()
    refused: int

    def __init__(self, mode: Mode = Mode.JOINING) -> None:
        object.__setattr__(self, "mode", mode)
        self.refused = 0

    def __setattr__(self, name: str, value: Any) -> None:
        # `mode` is a plain slot, not a property, because every tick and frame reads it; the
        # price is this check on the rare writes.
        if name == "mode":
            raise SyncUsageError("a node's mode changes only through ModeMachine.fire(event)")
        object.__setattr__(self, name, value)

    def allows(self, event: ModeEvent) -> bool:
        return (self.mode, event) in TRANSITIONS

    def fire(self, event: ModeEvent) -> Mode:
        """Apply `event`; raises IllegalModeChange (and counts it) if the table refuses it."""
        old = self.mode
        new = TRANSITIONS.get((old, event))
        if new is None:
            self.refused += 1
            raise IllegalModeChange(old, event)
        if new is not old:
            log.debug("mode %s -> %s on %s", old.name, new.name, event.value)
        object.__setattr__(self, "mode", new)
        return new


@dataclass(frozen=True, slots=True)
class View:
    """Who is in the cluster, who owns each bucket (index b-1 for bucket b) and who backs up whom."""

    epoch: int
    nodes: tuple[str, ...]
    states: tuple[MemberState, ...]
    bucket_owner: tuple[str | None, ...]
    backup_groups: tuple[tuple[str, ...], ...]
    proposer: str = ""
    k: int = 1  # configured backup count, needed to derive future views

    @property
    def members(self) -> dict[str, MemberState]:
        return dict(zip(self.nodes, self.states, strict=True))

    @property
    def backups(self) -> dict[str, list[str]]:
        """node -> its backup group (empty for nodes that are not active)."""
        return {n: list(g) for n, g in zip(self.nodes, self.backup_groups, strict=True)}

    def state(self, node: str) -> MemberState:
        return self.states[self.nodes.index(node)]

    def backups_of(self, node: str) -> tuple[str, ...]:
        return self.backup_groups[self.nodes.index(node)]

    def backed_up_by(self, node: str) -> list[str]:
        """The nodes whose backup group contains `node` (what it backs up)."""
        return [n for n, g in zip(self.nodes, self.backup_groups, strict=True) if node in g]

    def owner(self, bucket: int) -> str | None:
        if 1 <= bucket <= len(self.bucket_owner):
            return self.bucket_owner[bucket - 1]
        return None

    def buckets_of(self, node: str) -> list[int]:
        return [b for b, o in enumerate(self.bucket_owner, start=1) if o == node]

    def with_joiners_active(self) -> View:
        """The view that will hold once every joining node is activated (rebalance target)."""
        states = {
            n: (MemberState.ACTIVE if s is MemberState.JOINING else s)
            for n, s in self.members.items()
        }
        return compute_view(self.nodes, states, len(self.bucket_owner), self.k, self.epoch)

    def with_active(self, joiner: str) -> View:
        """The view that will hold once `joiner` alone is activated (a pending handover)."""
        states = self.members
        states[joiner] = MemberState.ACTIVE
        return compute_view(self.nodes, states, len(self.bucket_owner), self.k, self.epoch)

    def to_wire(self) -> list[Any]:
        return [
            self.epoch,
            self.proposer,
            [_STATE_CODE[s] for s in self.states],
            list(self.bucket_owner),
            [list(g) for g in self.backup_groups],
        ]


def home_node(bucket: int, nodes: Sequence[str]) -> str:
    """The node a bucket belongs to when everyone is active: nodes[(b-1) % N]."""
    return nodes[(bucket - 1) % len(nodes)]


def compute_view(
    nodes: Sequence[str],
    states: Mapping[str, MemberState],
    buckets: int,
    backups: int,
    epoch: int,
    proposer: str = "",
) -> View:
    """Derive bucket owners and backup groups from member states.

    A bucket goes to its home node if active, else to the first active node after it in ring
    order (its backup, which holds its state). A node's backup group is the next `backups`
    active nodes after it in ring order (empty unless it is active itself)."""
    if not nodes:
        raise SyncUsageError("a view needs at least one configured node")
    if buckets < 1:
        raise SyncUsageError(f"buckets must be >= 1, got {buckets}")
    n = len(nodes)
    st = tuple(states.get(x, MemberState.OFFLINE) for x in nodes)
    active = [s is MemberState.ACTIVE for s in st]
    owners: list[str | None] = []
    for b in range(1, buckets + 1):
        home = (b - 1) % n
        owner = None
        for step in range(n):
            i = (home + step) % n
            if active[i]:
                owner = nodes[i]
                break
        owners.append(owner)
    groups: list[tuple[str, ...]] = []
    for i in range(n):
        g: list[str] = []
        if active[i]:
            for step in range(1, n):
                j = (i + step) % n
                if active[j] and len(g) < backups:
                    g.append(nodes[j])
        groups.append(tuple(g))
    return View(epoch, tuple(nodes), st, tuple(owners), tuple(groups), proposer, backups)


def view_from_wire(
    a: Any, nodes: Sequence[str], buckets: int, backups: int
) -> View | None:
    """Rebuild a received view and check it is the function of its states; None if not."""
    if not isinstance(a, list) or len(a) != 5:
        return None
    epoch, proposer, codes, owners, groups = a
    if (
        not isinstance(epoch, int)
        or isinstance(epoch, bool)
        or epoch < 0
        or not isinstance(proposer, str)
        or not isinstance(codes, list)
        or len(codes) != len(nodes)
        or not all(isinstance(c, int) and not isinstance(c, bool) and c in _CODE_STATE for c in codes)
    ):
        return None
    states = {x: _CODE_STATE[c] for x, c in zip(nodes, codes, strict=True)}
    v = compute_view(nodes, states, buckets, backups, epoch, proposer)
    if owners != list(v.bucket_owner) or groups != [list(g) for g in v.backup_groups]:
        return None
    return v


def has_majority(members: Sequence[str], reachable: set[str], ring: Sequence[str]) -> bool:
    """Majority rule for a cut on every path: a side may adopt buckets only if it holds more
    than half of the cluster's `members`, or exactly half including the member lowest in
    ring order. Exactly one side of any split can hold it, so at most one side adopts."""
    if not members:
        return True
    held = sum(1 for m in members if m in reachable)
    if 2 * held != len(members):
        return 2 * held > len(members)
    lowest = min(members, key=ring.index)
    return lowest in reachable
