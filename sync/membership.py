"""Membership views: member states -> bucket owners and cyclic backup groups (claims 8-13).

A view is a pure function of the member states, so every node can recompute and check it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sync.records import SyncUsageError

log = logging.getLogger(__name__)


class MemberState(Enum):
    ACTIVE = "active"
    JOINING = "joining"
    FAILED = "failed"
    OFFLINE = "offline"


_STATE_CODE = {MemberState.ACTIVE: 0, MemberState.JOINING: 1, MemberState.FAILED: 2, MemberState.OFFLINE: 3}
_CODE_STATE = {v: k for k, v in _STATE_CODE.items()}
LIVE = frozenset({MemberState.ACTIVE, MemberState.JOINING})


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
