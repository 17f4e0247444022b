"""The one judge of whether flows survived an event (a kill, a leave, a fault): used by demos,
benches, the chaos run and the integration tests alike.

A flow survived when, after the event, it is healthy and its workload saw it make progress
again (`last_progress`, the workload's wall clock, later than the event). A flow is lost when
it broke or failed (final), vanished from the lab's flow list, or did not move again within
the caller's window. Every flow is watched for at least `watch_s` after the event: a sequence
gap shows as broken on the next echoes, not at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Flow = dict[str, Any]

# A flow whose state survived moves again within a few TCP retransmissions (200 ms, then
# 400 ms ...); one whose state is gone never does. The callers choose the window.
WATCH_S = 1.0
FINAL_BAD = ("broken", "failed")


def moved_since(flow: Flow, since_t: float) -> bool:
    """Healthy, and made progress after `since_t` (wall clock)."""
    return flow.get("health") == "healthy" and float(flow.get("last_progress") or 0) > since_t


def broke(flow: Flow) -> bool:
    return flow.get("health") in FINAL_BAD


@dataclass(frozen=True, slots=True)
class Verdict:
    """The flows judged, split in two; each flow as the lab last reported it."""

    survived: tuple[Flow, ...]
    lost: tuple[Flow, ...]

    @property
    def ok(self) -> bool:
        return not self.lost

    @property
    def survived_names(self) -> set[str]:
        return {str(f["name"]) for f in self.survived}

    @property
    def lost_names(self) -> set[str]:
        return {str(f["name"]) for f in self.lost}

    def text(self) -> str:
        return lost_text(self.lost)


def judge(fetch: Callable[[], Iterable[Flow]], since_t: float, within_s: float, *,
          names: Iterable[str] | None = None, watch_s: float = WATCH_S, every_s: float = 0.1,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Poll `fetch()` (the lab's flows) until every judged flow survived or broke, and at
    least `watch_s` passed since `since_t`, or `within_s` passed from now; then split them.

    `names`: the flows to judge (by flow name); by default every flow of the first fetch.
    A flow of `names` missing from the lab's list counts as lost ("gone").
    """
    start = clock()
    current = {str(f["name"]): f for f in fetch()}
    wanted = list(names) if names is not None else list(current)
    while True:
        decided = all(n in current and (moved_since(current[n], since_t) or broke(current[n]))
                      for n in wanted)
        now = clock()
        if (decided and now >= since_t + watch_s) or now - start >= within_s:
            break
        sleep(every_s)
        current = {str(f["name"]): f for f in fetch()}
    survived = tuple(current[n] for n in wanted if n in current and moved_since(current[n], since_t))
    lost = tuple(current.get(n) or {"name": n, "health": "gone", "detail": "no longer reported"}
                 for n in wanted if not (n in current and moved_since(current[n], since_t)))
    return Verdict(survived, lost)


def lost_text(lost: Iterable[Flow]) -> str:
    """`none lost`, or how many and the first few with why."""
    lost = list(lost)
    if not lost:
        return "none lost"
    shown = (f"{f['name']} ({f.get('health')}: {f.get('detail') or 'no progress'})" for f in lost[:4])
    return f"{len(lost)} lost: " + "; ".join(shown)
