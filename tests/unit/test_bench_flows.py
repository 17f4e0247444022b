"""demos.flows, the one judge of flow survival, on scripted flow reports with a fake clock."""

from __future__ import annotations

from typing import Any

from demos.flows import judge, lost_text, moved_since


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def flow(name: str, health: str = "healthy", progress: float = 0.0) -> dict[str, Any]:
    return {"name": name, "health": health, "last_progress": progress, "detail": ""}


def test_a_flow_survives_only_if_healthy_and_moving_after_the_event() -> None:
    assert moved_since(flow("a", progress=11.0), 10.0)
    assert not moved_since(flow("a", progress=9.0), 10.0)
    assert not moved_since(flow("a", "stalled", 11.0), 10.0)
    assert not moved_since(flow("a", "broken", 11.0), 10.0)


def test_judge_waits_for_moving_flows_and_calls_the_rest_lost() -> None:
    clock = Clock(100.0)
    # "a" moves again half a second after the event, "b" broke, "c" never moves again.
    def fetch() -> list[dict[str, Any]]:
        moved = clock.t >= 100.5
        return [flow("a", progress=clock.t if moved else 99.0), flow("b", "broken", 99.0),
                flow("c", progress=99.0)]

    v = judge(fetch, 100.0, 3.0, clock=clock, sleep=clock.sleep)
    assert v.survived_names == {"a"} and v.lost_names == {"b", "c"} and not v.ok
    assert clock.t >= 103.0  # "c" was given the whole window
    assert lost_text(v.lost).startswith("2 lost: b (broken")


def test_judge_ends_early_once_all_decided_but_watches_at_least_watch_s() -> None:
    clock = Clock(100.0)
    v = judge(lambda: [flow("a", progress=clock.t)], 99.9, 10.0, watch_s=1.0, clock=clock, sleep=clock.sleep)
    assert v.ok and v.survived_names == {"a"}
    assert 100.9 <= clock.t < 101.5


def test_a_named_flow_missing_from_the_lab_is_lost() -> None:
    clock = Clock(0.0)
    v = judge(lambda: [flow("a", progress=5.0)], 1.0, 0.5, names=["a", "gone"], clock=clock,
              sleep=clock.sleep)
    assert v.survived_names == {"a"} and v.lost[0]["health"] == "gone"
    assert lost_text([]) == "none lost"
