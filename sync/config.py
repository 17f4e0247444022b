"""The sync agent's configuration: the cluster as every node sees it, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from sync.records import SyncUsageError

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Everything a node's agent needs to know about the cluster; identical on every node
    except `node`. The order of `nodes` defines node ids and the cyclic ring."""

    lab_id: str
    key: bytes
    node: str
    nodes: tuple[tuple[str, Address], ...]
    buckets: int
    backups: int = 1
    policy: str = "hybrid"
    interval_ms: int = 1000
    differential: bool = True
    heartbeat_ms: int = 10
    miss_limit: int = 5
    rto_initial_ms: int = 20
    rto_max_ms: int = 400
    window: int = 256
    max_frame_bytes: int = 1400
    join_wait_ms: int = 0  # 0: 2 * heartbeat_ms * miss_limit (time to hear the others)
    # How long a joiner waits for a peer it heard active that fell silent before answering its
    # bulk resync (a held loop, not a death: a closed process is given up at once). 0: 10 join
    # waits.
    join_patience_ms: int = 0
    request_timeout_ms: int = 500
    provenance_keys: int = 10_000
    # Majority rule (sync/agent.py): cut off from the others, only the side with a majority
    # adopts; the other forwards nothing. On in every lab node (engine/node.py); off here by
    # default, because under it a silent crash of half the cluster stops the other half too,
    # and the simulator's tests of arbitrary silent crashes expect the survivors to go on.
    majority: bool = False
    # Key sweeps (sync/sweep.py): how often an owner tells its backups every key it owns, so
    # that a copy whose delete was lost goes, and a record that never arrived comes. 0: never.
    keys_interval_ms: int = 5000
    # A RecordApplied event for every record received (not for a bulk resync's). The node's
    # binding reads none of them, so the lab's nodes turn it off: a record costs no event.
    record_events: bool = True

    def __post_init__(self) -> None:
        names = [n for n, _ in self.nodes]
        if len(set(names)) != len(names):
            raise SyncUsageError(f"node names must be unique, got {names}")
        if self.node not in names:
            raise SyncUsageError(f"this node {self.node!r} is not among the configured nodes {names}")
        if not self.key:
            raise SyncUsageError("the sync HMAC key must not be empty")
        if self.buckets < 1 or self.backups < 0 or self.heartbeat_ms < 1 or self.miss_limit < 1:
            raise SyncUsageError("buckets >= 1, backups >= 0, heartbeat_ms >= 1, miss_limit >= 1 required")
        if self.join_wait_ms < 0 or self.join_patience_ms < 0:
            raise SyncUsageError("join_wait_ms >= 0 and join_patience_ms >= 0 required (0: the default)")
        if self.keys_interval_ms < 0:
            raise SyncUsageError("keys_interval_ms >= 0 required (0 turns key sweeps off)")
        if self.window < 1 or self.max_frame_bytes < 512:
            raise SyncUsageError("window >= 1 and max_frame_bytes >= 512 required")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.nodes)

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_ms / 1000.0

    @property
    def dead_s(self) -> float:
        """Silence after which a peer is failed."""
        return self.heartbeat_s * self.miss_limit

    @property
    def join_wait_s(self) -> float:
        """How long a joiner listens before it may believe it is alone."""
        return (self.join_wait_ms or 2 * self.heartbeat_ms * self.miss_limit) / 1000.0

    @property
    def join_patience_s(self) -> float:
        """How long a joiner waits for the state of a silent peer it heard active."""
        return (self.join_patience_ms or 10 * self.join_wait_s * 1000) / 1000.0

    @property
    def record_budget_bytes(self) -> int:
        """Room for a batch of records in one frame, after the header and the HMAC tag."""
        header = 96 + len(self.lab_id.encode()) + max(len(n.encode()) for n in self.names)
        return self.max_frame_bytes - header
