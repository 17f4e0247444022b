"""Conn's seldom-read fields (trigger, orig_low, announced, helper, nat, extra, hold) live in a
ConnMeta that plain entries share: each reads back what was set, and a change to one entry
never shows in another."""

from __future__ import annotations

from typing import Any

import pytest

import engine.conntrack as ct
from engine.conntrack import Conn, ConnState
from engine.ftp import make_helper
from engine.nat import NatBinding
from engine.packet import TCP

C, S = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))


def _conn(i: int, orig_low: Any = True, trigger: str = "rule:allow") -> Conn:
    key = bytes((TCP,)) + C + i.to_bytes(2, "big") + S + (80).to_bytes(2, "big")
    return Conn(key, orig_low, ConnState.ESTABLISHED, "n1", 7, 3, 1.5, trigger=trigger)


def _fields(e: Conn) -> dict[str, Any]:
    return {k: getattr(e, k) for k in ("trigger", "orig_low", "announced", "helper", "nat", "extra",
                                       "hold", "key", "state", "owner", "version", "bucket",
                                       "created", "last_seen", "fast", "sched")}


def _values() -> dict[str, Any]:
    return {
        "trigger": "tcp:fin-wait",
        "orig_low": False,
        "announced": False,
        "helper": make_helper("ftp", C, S),
        "nat": NatBinding(TCP, (C, 1024, S, 80), bytes((192, 0, 2, 1)), 40000, S, 80),
        "extra": {"master": "00"},
        "hold": 12,
    }


@pytest.mark.parametrize("name", list(_values()))
def test_each_field_reads_back_what_was_set_and_leaves_the_others(name: str) -> None:
    e, other = _conn(1), _conn(2)
    before, other_before = _fields(e), _fields(other)
    value = _values()[name]
    setattr(e, name, value)
    assert getattr(e, name) is value or getattr(e, name) == value
    assert {k: v for k, v in _fields(e).items() if k != name} == {
        k: v for k, v in before.items() if k != name}
    assert _fields(other) == other_before, "another entry sharing the old ConnMeta is untouched"


@pytest.mark.parametrize("name", list(_values()))
def test_each_field_changed_on_an_entry_with_every_field_set_leaves_the_others(name: str) -> None:
    e = _conn(1)
    values = _values()
    for k, v in values.items():
        setattr(e, k, v)
    assert {k: getattr(e, k) for k in values} == values
    again = _values()
    again["orig_low"], again["announced"], again["hold"] = True, True, 13
    setattr(e, name, again[name])
    assert {k: getattr(e, k) for k in values} == {**values, name: again[name]}


def test_plain_entries_share_one_meta_and_a_private_one_goes_back_to_sharing() -> None:
    a, b = _conn(1), _conn(2, trigger="rule:" + "allow")  # equal triggers, different objects
    assert a.meta is b.meta
    b.hold = 5  # held: its own ConnMeta
    assert a.meta is not b.meta and a.hold == 0
    b.hold = 0
    assert a.meta is b.meta
    a.announced = False
    assert b.announced is True


def test_orig_low_is_a_bool_whatever_it_was_given_as() -> None:
    trigger = "test:orig-low-given-as-an-int"  # a ConnMeta no other test made
    a = _conn(1, orig_low=1, trigger=trigger)
    b = _conn(2, orig_low=True, trigger=trigger)
    c = _conn(3, orig_low=0, trigger=trigger)
    assert a.orig_low is True and b.orig_low is True and c.orig_low is False


def test_past_the_shared_cap_a_new_trigger_still_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ct, "_SHARED_META", {})
    monkeypatch.setattr(ct, "SHARED_META_MAX", 2)
    es = [_conn(i, trigger=f"peer:{i}") for i in range(5)]
    assert [e.trigger for e in es] == [f"peer:{i}" for i in range(5)]
    assert len(ct._SHARED_META) == 2
    es[4].trigger = "peer:0"  # one that is shared
    assert es[4].meta is es[0].meta


@pytest.mark.parametrize("rare", ["helper", "nat", "extra", "hold"])
def test_an_entry_with_one_rare_field_keeps_it_through_other_changes(rare: str) -> None:
    e = _conn(1)
    plain = _conn(2, trigger="tcp:close-wait")  # a shared ConnMeta e must not take
    value = _values()[rare]
    setattr(e, rare, value)
    e.trigger = "tcp:close-wait"
    assert e.meta is not plain.meta
    e.orig_low = False
    e.announced = False
    assert getattr(e, rare) is value or getattr(e, rare) == value
    assert (e.trigger, e.orig_low, e.announced) == ("tcp:close-wait", False, False)
    assert e.meta.full_path is (rare != "extra"), "extra alone leaves the fast path open"
