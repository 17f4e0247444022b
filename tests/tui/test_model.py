"""The console's pure helpers: row diffs, formatting, which rows light up after a takeover."""

from __future__ import annotations

from app.console.model import OwnerTracker, diff_rows, fmt_age, fmt_bytes, provenance


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


def test_rows_light_up_when_their_owner_changes_and_then_fade() -> None:
    tracker = OwnerTracker(hold_s=3.0)
    rows = [{"key": "a", "owner": "n1", "trigger": "state-modified"}]
    assert tracker.observe(rows, 0.0, fresh_view=True) == set()
    assert tracker.observe([{"key": "a", "owner": "n2", "trigger": "node-failed"}], 1.0,
                           fresh_view=False) == {"a"}
    assert tracker.is_lit("a", 2.0)
    assert tracker.expire(4.5) == {"a"} and not tracker.is_lit("a", 4.5)


def test_rows_arriving_by_takeover_light_up_but_not_on_a_fresh_view() -> None:
    tracker = OwnerTracker()
    taken = [{"key": "b", "owner": "n2", "trigger": "node-failed"}]
    assert tracker.observe(taken, 0.0, fresh_view=True) == set()
    more = [{"key": "c", "owner": "n2", "trigger": "node-failed"},
            {"key": "d", "owner": "n2", "trigger": "state-modified"}]
    assert tracker.observe(more, 1.0, fresh_view=False) == {"c"}


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
