"""The console's pure helpers: row diffs, formatting, which rows light up after a takeover."""

from __future__ import annotations

import time

import pytest

from app.console.model import (
    TakeoverStars,
    collapse_events,
    diff_rows,
    event_cells,
    event_matches,
    fmt_age,
    fmt_bytes,
    fmt_clock,
    provenance,
    takeover_times,
    takeover_to_follow,
)


def test_diff_reports_only_what_changed() -> None:
    old = {"a": ("tcp", "1s"), "b": ("udp", "1s"), "c": ("tcp", "9s")}
    new = [("a", ("tcp", "1s")), ("b", ("udp", "2s")), ("d", ("tcp", "0s"))]
    diff = diff_rows(old, new)
    assert diff.removed == ["c"]
    assert diff.changed == {"b": [(1, "2s")]}
    assert diff.added == [("d", ("tcp", "0s"))]
    assert diff_rows({"a": ("x",)}, [("a", ("x",))]).empty


def test_a_key_twice_in_one_reply_is_added_once() -> None:
    diff = diff_rows({}, [("a", ("1",)), ("a", ("2",))])
    assert diff.added == [("a", ("1",))]


def test_formatting() -> None:
    assert [fmt_age(s) for s in (0.4, 59.9, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]
    assert fmt_bytes(999) == "999 B" and fmt_bytes(250_000) == "250.0 kB"


def test_rows_adopted_by_a_recent_takeover_wear_a_star_until_it_ages() -> None:
    stars = TakeoverStars(hold_s=3.0)
    rows = [{"key": "a", "owner": "n2", "trigger": "node-failed"},
            {"key": "b", "owner": "n2", "trigger": "promoted"},  # the engine's own word
            {"key": "c", "owner": "n2", "trigger": "state-modified"},
            {"key": "d", "owner": "n1", "trigger": "node-failed"}]
    assert stars.observe(rows, {}, 5.0) == (set(), set())
    taken = takeover_times([{"name": "n2", "last_takeover": {"t": 10.0, "promoted": 2}},
                            {"name": "n1", "last_takeover": {"t": 1.0, "promoted": 0}},
                            {"name": "n3", "last_takeover": None}])
    assert taken == {"n2": 10.0, "n1": 1.0}
    assert stars.observe(rows, taken, 10.5) == ({"a", "b"}, set())
    assert stars.is_lit("a") and not stars.is_lit("c") and not stars.is_lit("d")
    assert stars.observe(rows, taken, 12.9) == (set(), set())
    assert stars.observe(rows, taken, 13.0) == (set(), {"a", "b"})


def test_provenance_follows_the_record_through_the_timeline() -> None:
    events = [
        {"id": 1, "t": 1.0, "node": "n1", "kind": "queued", "key": "k1", "text": "waits"},
        {"id": 2, "t": 1.5, "node": "n1", "kind": "step", "key": "k1", "text": "released",
         "peers": ["n2"], "latency_ms": 500.2, "trigger": "state-modified"},
        {"id": 3, "t": 1.6, "node": "n2", "kind": "sync", "key": "k9", "text": "other"},
    ]
    lines = provenance(events, events[1])
    text = "\n".join(lines)
    assert "sent to: n2" in text and "acked after 500.20 ms" in text
    assert "record k1: 2 event(s)" in text and "other" not in text
    assert any(line.lstrip().startswith("▶") and "released" in line for line in lines)


def test_the_table_follows_a_takeover_only_once_the_lab_marks_the_node_down() -> None:
    # The adopter's headline can arrive a snapshot before the lab's state of the dead node.
    head = {"kind": "takeover", "nodes": ["n2", "n1"], "t": 12.5}
    states = {"n1": "active", "n2": "active"}
    assert takeover_to_follow(head, "n1", states.__getitem__, None) is None
    states["n1"] = "failed"
    assert takeover_to_follow(head, "n1", states.__getitem__, None) == ["n2"]
    assert takeover_to_follow(head, "n1", states.__getitem__, 12.5) is None, "followed once"
    assert takeover_to_follow(head, "n3", states.__getitem__, None) is None, "not the node on screen"


def test_timeline_times_are_the_wall_clock_and_repeats_collapse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert fmt_clock(1_764_763_200.25) == "12:00:00.250"
        assert fmt_clock(1_764_763_259.9996) == "12:01:00.000"  # rounded, not cut, to the ms
    finally:
        monkeypatch.undo()
        time.tzset()
    beat = {"node": "n1", "kind": "peer", "text": "n2 missed a heartbeat"}
    events = [{"id": 1, "t": 1.0, **beat}, {"id": 2, "t": 2.0, **beat}, {"id": 3, "t": 3.0, **beat},
              {"id": 4, "t": 3.5, "node": "n2", "kind": "peer", "text": "n2 missed a heartbeat"},
              {"id": 5, "t": 4.0, **beat}]
    runs = collapse_events(events)
    assert [r.count for r in runs] == [3, 1, 1], "only consecutive repeats of node, kind and text"
    assert runs[0].key == "1" and runs[0].last["id"] == 3
    assert event_cells(runs[0])[1] == "\u00d73" and event_cells(runs[1])[1] == ""
    assert event_cells(runs[0])[0] == fmt_clock(3.0), "the newest of the run"
    assert "\u00d73 in a row" in "\n".join(provenance(events, runs[0].last, runs[0]))


def test_the_timeline_filter_matches_the_node_and_the_kind_only() -> None:
    event = {"node": "n2", "kind": "takeover", "text": "n2 took over n1's buckets 1 4"}
    assert event_matches(event, "") and event_matches(event, "n2") and event_matches(event, "TAKE")
    assert event_matches(event, "n2 takeover") and not event_matches(event, "n1")
    assert not event_matches(event, "buckets"), "not the text"
    assert not event_matches(event, "n2 sync")
