"""netns/faults.py, the pure parts of `fault cut`: the fabric's ebtables rules for silent cuts
and the sync-bridge partition, what status says a cut does, and refused requests."""

from __future__ import annotations

from pathlib import Path

from netns import faults
from netns.record import LabRecord
from netns.spec import load_lab


def test_fabric_rules_drop_a_silent_cut_both_ways_and_split_the_sync_bridge() -> None:
    spec = load_lab(None)
    state = {"loss": {}, "partition": [["n1"], ["n2", "n3"]],
             "cut": {"n2": {"inside": {"silent": True, "flap_ms": 0},
                            "outside": {"silent": False, "flap_ms": 0}}}}
    rules = faults.fabric_rules(spec, state)
    assert ["-A", "SW_CUT", "-i", "n2-in", "-j", "DROP"] in rules
    assert ["-A", "SW_CUT", "-o", "n2-in", "-j", "DROP"] in rules
    assert not any("n2-out" in r for r in rules), "a link-down cut is done in the node, not the fabric"
    assert ["-A", "SW_CUT", "-i", "n1-sy", "-o", "n3-sy", "-j", "DROP"] in rules
    assert ["-A", "SW_CUT", "-i", "n3-sy", "-o", "n1-sy", "-j", "DROP"] in rules
    assert not any("-i" in r and "n2-sy" in r and "n3-sy" in r for r in rules), "one side stays whole"
    assert faults.fabric_rules(spec, {"loss": {}, "partition": [], "cut": {}}) == []


def test_describe_active_says_what_a_cut_does_and_heal_clears_it() -> None:
    active = faults.describe_active([], {"kind": "cut", "node": "n1", "link": "sync", "silent": True})
    active = faults.describe_active(active, {"kind": "cut", "node": "n1", "link": "inside", "flap_ms": 200})
    got = [(a["link"], a["silent"], a["flap_ms"]) for a in active]
    assert got == [("sync", True, 0), ("inside", False, 200)]
    assert "data segment" in active[0]["effect"] and "silently" in active[0]["effect"]
    assert "fences itself" in active[1]["effect"] and "every 200 ms" in active[1]["effect"]
    assert faults.describe_active(active, {"kind": "heal"}) == []


def test_bad_cut_requests_are_refused_and_touch_nothing(tmp_path: Path) -> None:
    spec = load_lab(None)
    record = LabRecord(lab=spec.name, run_dir=tmp_path)
    for req, words in (({"kind": "cut", "node": "n9", "link": "sync"}, "no node 'n9'"),
                       ({"kind": "cut", "node": "n1", "link": "wan"}, "link must be"),
                       ({"kind": "cut", "node": "n1", "link": "sync", "silent": True},
                        "not in the lab's record")):
        reply = faults.apply_fault(spec, record, req)
        assert reply["ok"] is False and words in reply["error"], (req, reply)
