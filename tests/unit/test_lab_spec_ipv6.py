"""The dual-stack lab spec and its IPv6 rule set (pure: no namespaces)."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network
from typing import Any

import pytest

from netns import iptables
from netns.spec import LabSpecError, load_lab, spec_to_dict, validate


def test_the_default_lab_is_dual_stack_on_the_benchmarking_range() -> None:
    spec = load_lab(None)
    assert spec.ipv6
    assert (spec.inside_net6, spec.outside_net6) == (IPv6Network("2001:2:0:1::/64"),
                                                     IPv6Network("2001:2:0:2::/64"))
    assert all(n.subnet_of(IPv6Network("2001:2::/48")) for n in (spec.inside_net6, spec.outside_net6))
    assert {h.name: str(h.ip6) for h in spec.hosts} == {
        "c1": "2001:2:0:1::a", "c2": "2001:2:0:1::b", "s1": "2001:2:0:2::a", "s2": "2001:2:0:2::b"}
    assert (spec.gateway_ip6("inside"), spec.gateway_ip6("outside")) == (
        IPv6Address("2001:2:0:1::1"), IPv6Address("2001:2:0:2::1"))
    assert validate(spec_to_dict(spec)) == spec


def test_an_ipv4_only_lab_has_no_ipv6_anywhere() -> None:
    spec = load_lab(None, {"inside_net6": "", "outside_net6": ""})
    assert not spec.ipv6 and all(h.ip6 is None for h in spec.hosts)
    assert validate(spec_to_dict(spec)) == spec
    with pytest.raises(Exception, match="no IPv6"):
        spec.gateway_ip6("inside")


def _with(**changes: Any) -> dict[str, Any]:
    raw = spec_to_dict(load_lab(None))
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("changes", "words"), [
    ({"inside_net6": ""}, "inside_net6: missing"),
    ({"outside_net6": "2001:2:0:2::1/64"}, "outside_net6: expected an IPv6 network"),
    ({"outside_net6": "2001:2:0:1::/80"}, "overlaps inside_net6"),
    ({"inside_net6": "2001:2:0:1::/124"}, "smaller than inside_net"),
])
def test_bad_ipv6_networks_are_refused_by_name(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(LabSpecError, match=words):
        validate(_with(**changes))


def test_a_host_may_name_its_ipv6_address_but_not_the_gateways_or_a_taken_one() -> None:
    raw = _with()
    raw["hosts"][0]["ip6"] = "2001:2:0:1::c1"
    assert validate(raw).host("c1").ip6 == IPv6Address("2001:2:0:1::c1")
    raw["hosts"][0]["ip6"] = "2001:2:0:1::1"
    with pytest.raises(LabSpecError, match=r"hosts\[0\].ip6"):
        validate(raw)
    raw["hosts"][0]["ip6"] = "2001:2:0:1::b"  # c2's
    with pytest.raises(LabSpecError, match="already used by hosts"):
        validate(raw)


def test_the_ipv6_rules_are_the_ipv4_recipe_with_neighbour_discovery_kept_out_of_the_buckets() -> None:
    text6 = iptables.node_rules6(12, 0x1234, 0)
    text4 = iptables.node_rules(12, 0x1234, 0)
    hmark = ("-j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod 12 --hmark-offset 1 "
             "--hmark-rnd 0x1234")
    for text in (text4, text6):
        assert f"-A PREROUTING -i inside {hmark}" in text and "-A PREROUTING -i inside -j NOTRACK" in text
        assert "-A FORWARD -j NFQUEUE --queue-num 0" in text and "--queue-bypass" not in text
    lines = text6.splitlines()
    ns = lines.index("-A PREROUTING -i inside -p ipv6-icmp --icmpv6-type 135 -j ACCEPT")
    assert ns < lines.index(f"-A PREROUTING -i inside {hmark}")
    assert "snat" not in text6.lower() and "-d " not in text6  # no NAT queueing for IPv6


def test_traffic_start_ipv6_is_a_request_field_the_daemon_checks() -> None:
    from app.cli import build_parser, traffic_request
    from netns import api

    argv = ["traffic", "start", "ftp", "--ipv6", "--mode", "active"]
    req = traffic_request(build_parser().parse_args(argv))
    assert isinstance(req, api.TrafficStart) and req.ipv6 and req.mode == "active"
    wire = {"cmd": "traffic", "action": "start", "kind": "tcp", "ipv6": True}
    assert api.parse_request(wire) == api.TrafficStart(kind="tcp", ipv6=True)
    with pytest.raises(api.RequestError, match="ipv6 must be true or false"):
        api.parse_request({"cmd": "traffic", "action": "start", "ipv6": "yes"})
    assert "ipv6" not in api.TrafficStart(ipv6=True).options()  # not passed on to the workload
