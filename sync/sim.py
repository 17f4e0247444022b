"""In-memory cluster simulator: N sync agents, a fake clock and links that lose, reorder and
duplicate datagrams. Used by tests, demos and benches; no sockets, no real time."""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sync.agent import Address, SyncAgent, SyncConfig, SyncEvent
from sync.records import NO_BUCKET, MemoryStore, Record, Scope, SyncUsageError, Trigger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """What every link does to a datagram: lose it, duplicate it, delay it out of order."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0  # probability of an extra random delay up to reorder_delay_s
    delay_s: float = 0.0002
    reorder_delay_s: float = 0.005

    def __post_init__(self) -> None:
        for name in ("loss", "dup", "reorder"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SyncUsageError(f"link fault {name} must be a probability in [0, 1], got {v}")


@dataclass(slots=True)
class SimStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    bytes: int = 0
    to_dead: int = 0


@dataclass(order=True, slots=True)
class _InFlight:
    at: float
    n: int
    dst: str = field(compare=False)
    src: Address = field(compare=False)
    data: bytes = field(compare=False)


class SimCluster:
    """A cluster of agents over simulated links. `now` only moves when you step or run."""

    def __init__(
        self,
        n: int = 3,
        *,
        buckets: int = 12,
        seed: int = 0,
        faults: LinkFaults | None = None,
        **config: Any,
    ) -> None:
        if n < 1:
            raise SyncUsageError(f"a cluster needs at least one node, got {n}")
        self.names = [f"n{i}" for i in range(1, n + 1)]
        self.addrs: dict[str, Address] = {x: (f"10.0.0.{i}", 7400) for i, x in enumerate(self.names, 1)}
        self._by_addr = {a: x for x, a in self.addrs.items()}
        self.base = SyncConfig(
            lab_id=config.pop("lab_id", "sim"),
            key=config.pop("key", b"sim-key-0123456789abcdef"),
            node=self.names[0],
            nodes=tuple((x, self.addrs[x]) for x in self.names),
            buckets=buckets,
            **config,
        )
        self.faults = faults or LinkFaults()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.stores: dict[str, MemoryStore] = {}
        self.agents: dict[str, SyncAgent] = {}
        self.events: dict[str, list[SyncEvent]] = {x: [] for x in self.names}
        self.timeline: list[tuple[float, str, SyncEvent]] = []
        self.cut: set[str] = set()
        self.groups: list[set[str]] = []  # a partition: nodes in different groups hear nothing
        self.cut_pairs: set[frozenset[str]] = set()  # pairs of nodes that hear nothing of each other
        self.stats = SimStats()
        # A held loop: node -> when it runs again. Until then it takes no timer and no input;
        # what reaches it waits in its socket's buffer (`_backlog`), read first when it runs.
        self.stalled: dict[str, float] = {}
        self._backlog: dict[str, list[_InFlight]] = {}
        self.tap: Callable[[float, str, str, bytes], None] | None = None
        self._heap: list[_InFlight] = []
        self._n = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def config_for(self, name: str) -> SyncConfig:
        return replace(self.base, node=name)

    def start(self, names: Iterable[str] | None = None, store: MemoryStore | None = None) -> None:
        """Start (or restart with a fresh incarnation and, unless given, an empty store) nodes."""
        for x in self.names if names is None else names:
            self.stores[x] = store if store is not None else MemoryStore()
            a = SyncAgent(self.config_for(x), self.stores[x], self.now)
            self.agents[x] = a
            a.start(self.now)
            self._collect(x)

    def kill(self, name: str, *, closed: bool = False) -> None:
        """Crash: the process is gone with no goodbye; its store is kept for inspection.
        `closed`: the kernel closes its sockets, so every live peer learns it at once
        (SyncAgent.peer_closed, as sync/liveness.py reports it); else only silence tells."""
        a = self.agents.pop(name, None)
        self.stalled.pop(name, None)
        self._backlog.pop(name, None)
        if closed and a is not None:
            for x, b in list(self.agents.items()):
                b.peer_closed(name, a.incarnation, self.now)
                self._collect(x)

    def revive(self, name: str) -> None:
        """Restart a crashed node as a new process with empty state."""
        self.start([name])

    def stall(self, name: str, duration_s: float) -> None:
        """Hold `name`'s loop for `duration_s` (a long status walk, a bulk build, a GC pause):
        its process and sockets live on, it hears and says nothing meanwhile."""
        self.stalled[name] = self.now + duration_s

    @property
    def alive(self) -> list[str]:
        return [x for x in self.names if x in self.agents]

    # ---- time -----------------------------------------------------------------------

    def step(self, dt_s: float = 0.001) -> None:
        self.now += dt_s
        for x, until in list(self.stalled.items()):
            if until <= self.now:  # its loop runs again: it reads what waited, at its clock
                del self.stalled[x]
                for m in self._backlog.pop(x, []):
                    self._deliver(m, self.now)
        while self._heap and self._heap[0].at <= self.now:
            m = heapq.heappop(self._heap)
            if m.dst in self.stalled:
                self._backlog.setdefault(m.dst, []).append(m)
                continue
            self._deliver(m, m.at)
        for x, a in list(self.agents.items()):
            if x not in self.stalled:
                a.tick(self.now)
                self._collect(x)

    def _deliver(self, m: _InFlight, at: float) -> None:
        a = self.agents.get(m.dst)
        if a is None:
            self.stats.to_dead += 1
            return
        self.stats.delivered += 1
        a.receive(m.data, m.src, at)
        self._collect(m.dst)

    def run(self, duration_s: float, dt_s: float = 0.001) -> None:
        end = self.now + duration_s
        while self.now < end - 1e-12:
            self.step(dt_s)

    def run_until(self, pred: Callable[[], bool], timeout_s: float, dt_s: float = 0.001) -> bool:
        """Step until `pred()` holds (True) or `timeout_s` of simulated time passed (False)."""
        end = self.now + timeout_s
        while self.now < end:
            if pred():
                return True
            self.step(dt_s)
        return pred()

    def _collect(self, src: str) -> None:
        a = self.agents.get(src)
        if a is None:
            return
        for ev in a.events():
            self.events[src].append(ev)
            self.timeline.append((self.now, src, ev))
        f = self.faults
        for addr, data in a.datagrams():
            dst = self._by_addr.get(addr)
            self.stats.sent += 1
            self.stats.bytes += len(data)
            if dst is None or src in self.cut or dst in self.cut or self._apart(src, dst):
                self.stats.lost += 1
                continue
            if self.tap is not None:
                self.tap(self.now, src, dst, data)
            copies = 1
            if f.dup and self.rng.random() < f.dup:
                copies = 2
                self.stats.duplicated += 1
            for _ in range(copies):
                if f.loss and self.rng.random() < f.loss:
                    self.stats.lost += 1
                    continue
                delay = f.delay_s
                if f.reorder and self.rng.random() < f.reorder:
                    delay += self.rng.random() * f.reorder_delay_s
                self._n += 1
                heapq.heappush(self._heap, _InFlight(self.now + delay, self._n, dst, self.addrs[src], data))

    def _apart(self, a: str, b: str) -> bool:
        if frozenset((a, b)) in self.cut_pairs:
            return True
        ga = next((i for i, g in enumerate(self.groups) if a in g), None)
        gb = next((i for i, g in enumerate(self.groups) if b in g), None)
        return ga is not None and gb is not None and ga != gb

    def inject(self, dst: str, src: Address, data: bytes) -> None:
        """Deliver an arbitrary datagram now (tests of bad frames)."""
        a = self.agents[dst]
        a.receive(data, src, self.now)
        self._collect(dst)

    # ---- state helpers ----------------------------------------------------------------

    def put(
        self,
        name: str,
        key: bytes,
        data: list[Any] | None = None,
        *,
        scope: Scope = Scope.NODE,
        bucket: int | None = None,
        trigger: Trigger = Trigger.MODIFIED,
    ) -> Record:
        """A local change on `name` (new or updated record), then the trigger call."""
        if bucket is None:
            owned = self.agents[name].owned_buckets
            bucket = owned[0] if owned and scope is Scope.NODE else NO_BUCKET
        old = self.stores[name].get(key)
        rec = Record(key, scope, name, (old.version + 1) if old else 1, bucket, data or [], False)
        self.stores[name].put_local(rec)
        self.agents[name].changed(key, self.now, trigger)
        self._collect(name)
        return rec

    def delete(self, name: str, key: bytes) -> None:
        old = self.stores[name].get(key)
        if old is None:
            return
        tomb = Record(key, old.scope, old.owner, old.version + 1, old.bucket, [], True)
        self.stores[name].put_local(tomb)
        self.agents[name].changed(key, self.now)
        self._collect(name)

    def holders(self, key: bytes) -> list[str]:
        out = []
        for x in self.names:
            s = self.stores.get(x)
            r = s.get(key) if s else None
            if r is not None and not r.deleted:
                out.append(x)
        return out

    def all_active(self) -> bool:
        alive = self.alive
        return all(a.mode.name == "ACTIVE" for a in self.agents.values()) and all(
            self.agents[x].view.state(y).value == "active" for x in alive for y in alive
        )

    def owners(self) -> dict[int, list[str]]:
        """bucket -> the nodes that believe they own it (exactly one each when settled)."""
        out: dict[int, list[str]] = {b: [] for b in range(1, self.base.buckets + 1)}
        for x, a in self.agents.items():
            for b in a.owned_buckets:
                out[b].append(x)
        return out
