"""Rule parsing (errors a person can act on) and first-match-wins screening."""

from __future__ import annotations

import pytest

from engine.core import Engine, Verdict
from engine.rules import (
    DEFAULT_IPV6_RULES,
    DEFAULT_NAT_RULES,
    DEFAULT_RULES,
    Action,
    Proto,
    RuleError,
    default_rules,
    parse_rules,
)
from tests.unit.engine_packets import C1, S1, S2, ping, tcp, udp


def test_default_rules_match_the_default_lab_file() -> None:
    rs = default_rules()
    assert [r.name for r in rs] == ["tcp-services", "ftp-control", "udp-services", "ping"]
    ftp = rs.rules[1]
    assert (ftp.proto, ftp.dport, ftp.helper, ftp.action) == (Proto.TCP, (21, 21), "ftp", Action.ACCEPT)


def test_default_rules_equal_the_lab_file_rules() -> None:
    import tomllib
    from pathlib import Path

    lab = Path(__file__).resolve().parents[2] / "netns" / "default.toml"
    if not lab.exists():
        pytest.skip("netns/default.toml not there yet")
    assert tomllib.loads(lab.read_text())["rules"] == [*DEFAULT_NAT_RULES, *DEFAULT_RULES,
                                                       *DEFAULT_IPV6_RULES]
    assert [r.name for r in default_rules(nat=True)] == [r["name"] for r in tomllib.loads(
        lab.read_text())["rules"]]


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"name": "a", "action": "allow"}, "action", "accept|drop|reject"),
        ({"name": "a"}, "action", "required"),
        ({"name": "a", "action": "accept", "proto": "gre"}, "proto", "tcp|udp|icmp|any"),
        ({"name": "a", "action": "accept", "src": "198.18.1.300/24"}, "src", "CIDR"),
        ({"name": "a", "action": "accept", "proto": "tcp", "dport": "5000-"}, "dport", "lo-hi"),
        ({"name": "a", "action": "accept", "proto": "tcp", "dport": 70000}, "dport", "1-65535"),
        ({"name": "a", "action": "accept", "dport": 80}, "proto", "tcp or udp"),
        ({"name": "a", "action": "accept", "proto": "udp", "helper": "ftp"}, "proto", "tcp"),
        ({"name": "a", "action": "accept", "proto": "tcp", "helper": "sip"}, "helper", "ftp"),
        ({"name": "a", "action": "accept", "log": "yes"}, "log", "true or false"),
        ({"name": "a", "action": "accept", "dprot": 80}, "dprot", "fields"),
        ({"name": "a", "action": "accept", "src": "198.18.1.0/24", "dst": "2001:db8::/32"},
         "dst", "IPv4"),
    ],
)
def test_a_bad_rule_names_rule_field_and_expectation(raw: dict[str, object], field: str, words: str) -> None:
    good = {"name": "ok", "action": "drop"}
    with pytest.raises(RuleError) as err:
        parse_rules([good, raw])
    msg = str(err.value)
    assert msg.startswith("rule 2 ('a')"), msg
    assert repr(field) in msg and words in msg, msg
    assert err.value.index == 2 and err.value.field == field


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(RuleError, match="no other rule"):
        parse_rules([{"name": "x", "action": "drop"}, {"name": "x", "action": "accept"}])


def test_first_match_wins_and_the_rest_is_dropped() -> None:
    rules = parse_rules([
        {"name": "no-c1-ssh", "action": "reject", "proto": "tcp", "src": C1, "dport": 22},
        {"name": "ssh", "action": "accept", "proto": "tcp", "dport": 22, "log": True},
        {"name": "quiet-udp", "action": "drop", "proto": "udp", "dport": "5000-5999"},
    ])
    engine = Engine("n1", rules)
    d = engine.process(tcp(C1, S1, 40000, 22, "S"), 1.0)
    assert (d.verdict, d.reason) == (Verdict.REJECT, "rule-reject:no-c1-ssh")
    assert engine.process(tcp("198.18.1.11", S1, 40000, 22, "S"), 1.0).verdict is Verdict.ACCEPT
    d = engine.process(udp(C1, S1, 4000, 5500), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "rule-drop:quiet-udp")
    d = engine.process(tcp(C1, S1, 40000, 80, "S"), 1.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "no-rule-match")
    c = engine.counters
    assert c["rule-reject:no-c1-ssh"] == 1 and c["rule-accept:ssh"] == 1
    assert c["rule-drop:quiet-udp"] == 1 and c["no-rule-match"] == 1


def test_default_lab_policy() -> None:
    engine = Engine("n1", default_rules())
    accepted = [tcp(C1, S1, 40000, 5001, "S"), tcp(C1, S2, 40001, 21, "S"),
                udp(C1, S1, 4000, 5999), ping(C1, S1)]
    dropped = [tcp(C1, S1, 40002, 6000, "S"), tcp(S1, C1, 5001, 40003, "S"),
               udp(C1, S1, 4000, 53), ping(S1, C1), udp(C1, "198.18.3.1", 4000, 5001)]
    assert [engine.process(p, 1.0).verdict for p in accepted] == [Verdict.ACCEPT] * 4
    assert [engine.process(p, 1.0).verdict for p in dropped] == [Verdict.DROP] * 5
    # The echo request from S1 reuses the id of C1's ping: it is not that exchange's reply.
    assert engine.counters["no-rule-match"] == 4 and engine.counters["no-state"] == 1
