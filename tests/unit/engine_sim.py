"""Bindings (engine + agent) over the simulated cluster: what node.py does, minus the I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.binding import Binding, Release
from engine.core import Decision, Engine
from engine.replay import ReplaySettings
from engine.rules import RuleSet, default_rules
from sync.sim import SimCluster


class SimNodes:
    """A SimCluster whose nodes are Bindings. Handles are strings; the iptables step of a
    bucket change is applied at once unless `apply_buckets` is False."""

    def __init__(
        self,
        n: int = 3,
        *,
        buckets: int = 6,
        hold_timeout_ms: int = 200,
        rules: RuleSet | None = None,
        replay: ReplaySettings | None = None,
        **config: Any,
    ) -> None:
        self.c = SimCluster(n, buckets=buckets, **config)
        self.apply_buckets = True
        self.b: dict[str, Binding[str]] = {}
        self._seen: dict[str, int] = {}
        # node -> (time, release) for every held packet given its verdict
        self.released: dict[str, list[tuple[float, Release[str]]]] = {}
        for x in self.c.names:
            engine = Engine(x, rules if rules is not None else default_rules())
            store: Any = engine.store  # an EngineStore is a StateStore; the simulator's hint says MemoryStore
            self.c.start([x], store=store)
            self.b[x] = Binding(engine, self.c.agents[x], hold_timeout_ms=hold_timeout_ms,
                                replay=replay)
            self._seen[x] = 0
            self.released[x] = []

    @property
    def now(self) -> float:
        return self.c.now

    def engine(self, x: str) -> Engine:
        return self.b[x].engine

    def packet(self, x: str, data: bytes, mark: int, handle: str = "pkt") -> Decision:
        d = self.b[x].packet(data, mark, handle, self.c.now)
        self.b[x].settle(self.c.now)
        return d

    def step(self) -> None:
        c = self.c
        c.step()
        for x in c.alive:
            b = self.b[x]
            evs = c.events[x][self._seen[x]:]
            self._seen[x] += len(evs)
            b.handle_events(evs, c.now)
            b.timers(c.now)
            self.released[x] += [(c.now, r) for r in b.releases()]
            wanted = b.wanted_buckets()
            if wanted is not None and self.apply_buckets:
                b.buckets_applied(wanted, c.now, b.shadow)

    def run(self, duration_s: float) -> None:
        end = self.c.now + duration_s
        while self.c.now < end - 1e-12:
            self.step()

    def run_until(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        end = self.c.now + timeout_s
        while self.c.now < end:
            if pred():
                return True
            self.step()
        return pred()

    def settled(self) -> bool:
        return self.c.all_active() and all(
            self.b[x].applied == self.c.agents[x].owned_buckets and self.b[x].wanted_buckets() is None
            for x in self.c.alive
        )

    def start(self, timeout_s: float = 5.0) -> SimNodes:
        assert self.run_until(self.settled, timeout_s), "the cluster did not form"
        return self

    def kill(self, x: str) -> None:
        self.c.kill(x)

    def owner_of(self, bucket: int) -> str:
        (owner,) = self.c.owners()[bucket]
        return owner

    def bucket_of(self, x: str) -> int:
        return self.c.agents[x].owned_buckets[0]

    def backup_of(self, x: str) -> str:
        return self.c.agents[x].view.backups[x][0]
