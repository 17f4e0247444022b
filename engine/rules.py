"""The ordered rule set that screens new connections: first match wins, everything else is dropped."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

# Protocol helpers a rule may attach; engine.ftp implements "ftp".
KNOWN_HELPERS = frozenset({"ftp"})

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58


class EngineError(SyncwallError):
    """Root of the engine's errors; the message says what to fix."""


class RuleError(EngineError):
    """A rule in the lab file is wrong: names the rule (index and name), the field and what was expected."""

    def __init__(self, index: int, name: str, field: str, expected: str, got: object) -> None:
        self.index = index
        self.name = name
        self.field = field
        super().__init__(
            f"rule {index} ({name!r}): field {field!r}: expected {expected}, got {got!r}"
        )


class Proto(Enum):
    """The protocol a rule matches."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ANY = "any"


class Action(Enum):
    """What a matching rule does with a new connection."""

    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Net:
    """An address or CIDR, pre-split into integers so a match is two ANDs and a compare."""

    family: int  # 4 or 6
    network: int
    mask: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Net:
        net = ipaddress.ip_network(text, strict=False)
        bits = net.max_prefixlen
        mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
        return cls(net.version, int(net.network_address), mask, str(net))

    def contains(self, family: int, addr: int) -> bool:
        return family == self.family and (addr & self.mask) == self.network


@dataclass(frozen=True, slots=True)
class Rule:
    """One screening rule. `src`/`dst` None means any address; `dport` None means any port."""

    name: str
    action: Action
    proto: Proto = Proto.ANY
    src: Net | None = None
    dst: Net | None = None
    dport: tuple[int, int] | None = None
    helper: str | None = None
    log: bool = False
    # NAT of an accepted connection (IPv4 TCP/UDP): the source becomes `snat` (the port is
    # chosen by the engine, see engine.nat), the destination `dnat` (port kept when None).
    snat: bytes | None = None
    dnat: tuple[bytes, int | None] | None = None
    # Admit only sources with a user record (engine.auth); others are refused as if dropped.
    auth: bool = False

    @property
    def nat(self) -> bool:
        return self.snat is not None or self.dnat is not None

    def matches(self, family: int, proto: int, src: int, dst: int, dport: int | None) -> bool:
        p = self.proto
        if p is Proto.TCP:
            if proto != IPPROTO_TCP:
                return False
        elif p is Proto.UDP:
            if proto != IPPROTO_UDP:
                return False
        elif p is Proto.ICMP and proto not in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            return False
        if self.src is not None and not self.src.contains(family, src):
            return False
        if self.dst is not None and not self.dst.contains(family, dst):
            return False
        if self.dport is not None:
            if dport is None:
                return False
            lo, hi = self.dport
            if not lo <= dport <= hi:
                return False
        return True


class RuleSet:
    """Ordered rules; `match` returns the first rule that matches or None (the implicit final drop)."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        # How many packets were screened against the rules: proves established flows skip them.
        self.evaluations = 0

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, family: int, proto: int, src: int, dst: int, dport: int | None) -> Rule | None:
        self.evaluations += 1
        for rule in self.rules:
            if rule.matches(family, proto, src, dst, dport):
                return rule
        return None


_FIELDS = frozenset(
    {"name", "action", "proto", "src", "dst", "dport", "helper", "log", "snat", "dnat", "auth"}
)


def _ipv4(i: int, name: str, field: str, text: str, expected: str) -> bytes:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise RuleError(i, name, field, expected, text) from None
    if addr.version != 4 or addr.is_multicast or addr.is_unspecified or addr == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise RuleError(i, name, field, expected, text)
    return addr.packed


def _snat(i: int, name: str, value: object) -> bytes | None:
    if value is None:
        return None
    expected = "one IPv4 unicast address like '198.18.2.1' (the cluster's outside address)"
    if not isinstance(value, str):
        raise RuleError(i, name, "snat", expected, value)
    return _ipv4(i, name, "snat", value, expected)


def _dnat(i: int, name: str, value: object) -> tuple[bytes, int | None] | None:
    if value is None:
        return None
    expected = "an IPv4 address with an optional port, like '198.18.2.10:5000'"
    if not isinstance(value, str):
        raise RuleError(i, name, "dnat", expected, value)
    host, sep, port_text = value.partition(":")
    addr = _ipv4(i, name, "dnat", host, expected)
    if not sep:
        return addr, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RuleError(i, name, "dnat", expected + " (port 1-65535)", value)
    return addr, int(port_text)


def _net(i: int, name: str, field: str, value: object) -> Net | None:
    if value is None or value == "any":
        return None
    if not isinstance(value, str):
        raise RuleError(i, name, field, "an address or CIDR string like '198.18.1.0/24'", value)
    try:
        return Net.parse(value)
    except ValueError:
        raise RuleError(
            i, name, field, "an address or CIDR like '198.18.1.0/24' or 'any'", value
        ) from None


def _port(i: int, name: str, value: object) -> tuple[int, int] | None:
    if value is None or value == "any":
        return None
    lo: int
    hi: int
    if isinstance(value, bool):
        raise RuleError(i, name, "dport", "a port 1-65535 or a range 'lo-hi'", value)
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        parts = value.split("-")
        try:
            if len(parts) == 1:
                lo = hi = int(parts[0])
            elif len(parts) == 2:
                lo, hi = int(parts[0]), int(parts[1])
            else:
                raise ValueError(value)
        except ValueError:
            raise RuleError(
                i, name, "dport", "a port 1-65535 or a range 'lo-hi' like '5000-5999'", value
            ) from None
    else:
        raise RuleError(i, name, "dport", "a port 1-65535 or a range 'lo-hi'", value)
    if not (1 <= lo <= hi <= 65535):
        raise RuleError(i, name, "dport", "ports within 1-65535 with lo <= hi", value)
    return (lo, hi)


def _enum(i: int, name: str, field: str, cls: type[Proto] | type[Action], value: object) -> Any:
    choices = "|".join(m.value for m in cls)
    if not isinstance(value, str):
        raise RuleError(i, name, field, f"one of {choices}", value)
    try:
        return cls(value.lower())
    except ValueError:
        raise RuleError(i, name, field, f"one of {choices}", value) from None


def parse_rule(i: int, raw: Mapping[str, Any]) -> Rule:
    """One rule from its lab-file table; `i` is its position (1-based, as a person counts)."""
    if not isinstance(raw, Mapping):
        raise RuleError(i, f"rule-{i}", "(rule)", "a table of fields", raw)
    name = raw.get("name", f"rule-{i}")
    if not isinstance(name, str) or not name:
        raise RuleError(i, str(name), "name", "a non-empty string", name)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise RuleError(i, name, unknown[0], f"one of the fields {sorted(_FIELDS)}", unknown[0])
    if "action" not in raw:
        raise RuleError(i, name, "action", "accept|drop|reject (the field is required)", None)
    action = _enum(i, name, "action", Action, raw["action"])
    proto = _enum(i, name, "proto", Proto, raw.get("proto", "any"))
    src = _net(i, name, "src", raw.get("src"))
    dst = _net(i, name, "dst", raw.get("dst"))
    if src is not None and dst is not None and src.family != dst.family:
        raise RuleError(i, name, "dst", f"an IPv{src.family} address like src", raw.get("dst"))
    dport = _port(i, name, raw.get("dport"))
    if dport is not None and proto not in (Proto.TCP, Proto.UDP):
        raise RuleError(i, name, "proto", "tcp or udp when dport is given", raw.get("proto", "any"))
    helper = raw.get("helper")
    if helper is not None:
        if helper not in KNOWN_HELPERS:
            raise RuleError(i, name, "helper", f"one of {sorted(KNOWN_HELPERS)}", helper)
        if proto is not Proto.TCP:
            raise RuleError(i, name, "proto", f"tcp for helper {helper!r}", raw.get("proto"))
        if action is not Action.ACCEPT:
            raise RuleError(i, name, "helper", "no helper on a rule that does not accept", helper)
    log_flag = raw.get("log", False)
    if not isinstance(log_flag, bool):
        raise RuleError(i, name, "log", "true or false", log_flag)
    snat = _snat(i, name, raw.get("snat"))
    dnat = _dnat(i, name, raw.get("dnat"))
    if snat is not None or dnat is not None:
        field = "snat" if snat is not None else "dnat"
        if action is not Action.ACCEPT:
            raise RuleError(i, name, field, "no NAT on a rule that does not accept", raw.get(field))
        if proto not in (Proto.TCP, Proto.UDP):
            raise RuleError(i, name, "proto", f"tcp or udp for {field}", raw.get("proto", "any"))
        if helper is not None:
            raise RuleError(i, name, "helper", f"no helper with {field} (the helper does not "
                            "rewrite payloads)", helper)
        for f, net in (("src", src), ("dst", dst)):
            if net is not None and net.family != 4:
                raise RuleError(i, name, f, f"an IPv4 network with {field} (NAT is IPv4 only)",
                                raw.get(f))
    auth = raw.get("auth", False)
    if not isinstance(auth, bool):
        raise RuleError(i, name, "auth", "true or false", auth)
    if auth and action is not Action.ACCEPT:
        raise RuleError(i, name, "auth", "auth only on a rule that accepts", auth)
    return Rule(name, action, proto, src, dst, dport, helper, log_flag, snat, dnat, auth)


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> RuleSet:
    """The rule set from the lab file's `[[rules]]` tables, in order; RuleError on the first bad one."""
    rules = [parse_rule(i, r) for i, r in enumerate(raw, start=1)]
    names = [r.name for r in rules]
    for i, r in enumerate(rules, start=1):
        if names.count(r.name) > 1:
            raise RuleError(i, r.name, "name", "a name no other rule uses", r.name)
    return RuleSet(rules)


# The default lab's NAT (docs/nat.md): c2's services traffic leaves as the outside gateway
# address, and the outside reaches s1's echo service through a port forward.
DEFAULT_NAT_RULES: list[dict[str, Any]] = [
    {"name": "c2-snat-tcp", "action": "accept", "proto": "tcp", "src": "198.18.1.11/32",
     "dst": "198.18.2.0/24", "dport": "5000-5999", "snat": "198.18.2.1"},
    {"name": "c2-snat-udp", "action": "accept", "proto": "udp", "src": "198.18.1.11/32",
     "dst": "198.18.2.0/24", "dport": "5000-5999", "snat": "198.18.2.1"},
    {"name": "web-forward", "action": "accept", "proto": "tcp", "src": "198.18.2.0/24",
     "dst": "198.18.2.1", "dport": 8080, "dnat": "198.18.2.10:5001", "snat": "198.18.2.1"},
]

# The default lab (DESIGN.md), after its NAT rules: inside may open TCP 5000-5999 and FTP
# (with the helper), UDP 5000-5999 and ping towards outside; everything else is dropped by
# the implicit final rule. These alone are the filter without NAT (`default_rules`).
DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "tcp-services", "action": "accept", "proto": "tcp",
     "src": "198.18.1.0/24", "dst": "198.18.2.0/24", "dport": "5000-5999"},
    {"name": "ftp-control", "action": "accept", "proto": "tcp",
     "src": "198.18.1.0/24", "dst": "198.18.2.0/24", "dport": 21, "helper": "ftp"},
    {"name": "udp-services", "action": "accept", "proto": "udp",
     "src": "198.18.1.0/24", "dst": "198.18.2.0/24", "dport": "5000-5999"},
    {"name": "ping", "action": "accept", "proto": "icmp",
     "src": "198.18.1.0/24", "dst": "198.18.2.0/24"},
]


# The same services over IPv6, last (the default lab is dual-stack; IPv6 has no NAT).
DEFAULT_IPV6_RULES: list[dict[str, Any]] = [
    {"name": "tcp-services-v6", "action": "accept", "proto": "tcp",
     "src": "2001:2:0:1::/64", "dst": "2001:2:0:2::/64", "dport": "5000-5999"},
    {"name": "ftp-control-v6", "action": "accept", "proto": "tcp",
     "src": "2001:2:0:1::/64", "dst": "2001:2:0:2::/64", "dport": 21, "helper": "ftp"},
    {"name": "udp-services-v6", "action": "accept", "proto": "udp",
     "src": "2001:2:0:1::/64", "dst": "2001:2:0:2::/64", "dport": "5000-5999"},
    {"name": "ping-v6", "action": "accept", "proto": "icmp",
     "src": "2001:2:0:1::/64", "dst": "2001:2:0:2::/64"},
]


def default_rules(nat: bool = False) -> RuleSet:
    """The default lab's IPv4 filter rules, parsed; with `nat`, its whole rule set (NAT first,
    IPv6 last)."""
    return parse_rules([*DEFAULT_NAT_RULES, *DEFAULT_RULES, *DEFAULT_IPV6_RULES] if nat else DEFAULT_RULES)
