"""The lab spec: a TOML lab file (or the default lab) validated into frozen plain data."""

from __future__ import annotations

import logging
import re
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

POLICIES = ("on-demand", "periodic", "hybrid")
SEGMENTS = ("inside", "outside")
ROLES = ("client", "server", "ftp")
FABRIC = "fabric"
# Namespaces are `sw<lab>-<host>`; fabric ports are `<node>-out`: both must stay short
# (interface names are limited to 15 bytes by the kernel).
LAB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_BUCKETS = 1024
# The default bucket count follows the node count: with 4 each, the busiest node of any count
# holds exactly as many as the least busy (a lab file's own count may not divide evenly, and a
# node that takes over a failed one's buckets holds twice its share until it returns).
BUCKETS_PER_NODE = 4
# Lossless takeover (engine/replay.py): backups queue the buckets they back up, hold them a
# window and replay them when they adopt. Held packets count against the NFQUEUE's length
# (4096, engine/node.py), so the packet cap stays well below it.
# On by default: with the held packets on a queue of their own (the shadow queue) it costs 0.92
# of the 64-byte packets/s and 0.91 of the TCP throughput at 1.18x the nodes' CPU per packet
# (`syncwall bench lossless`, docs/benchmarks.md), and a kill then loses no segment. A lab that
# wants every last packet per second turns it off (`lossless = false`, `syncwall up --no-lossless`).
LOSSLESS_DEFAULT = True
# How long a plain change (no packet waits on it) may wait so that one sync datagram carries
# many connections' changes (engine/binding.py `batch_ms`); 0 sends each loop turn's at once.
SYNC_BATCH_MS = 0
# A lab file's `traffic` (or `syncwall up --traffic`): what `up` starts once the lab runs.
# "demo": a few long-lived TCP flows, a UDP flow and an FTP session (app/cli.py lab_traffic).
LAB_TRAFFIC = ("none", "demo")


class LabError(SyncwallError):
    """Root of the lab's errors; the message says what to fix."""


class LabSpecError(LabError):
    """A lab file (or override) is wrong; the message names the field."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A gateway node: its name and its unique address on the sync segment."""

    name: str
    sync_ip: IPv4Address


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A client or server on the inside or outside segment."""

    name: str
    segment: str
    ip: IPv4Address
    role: str
    # Its IPv6 address in a dual-stack lab (None: IPv4 only).
    ip6: IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class LabSpec:
    """Everything needed to build a lab and configure its nodes."""

    name: str
    lab_id: int
    sync_net: IPv4Network
    inside_net: IPv4Network
    outside_net: IPv4Network
    nodes: tuple[NodeSpec, ...]
    hosts: tuple[HostSpec, ...]
    rules: tuple[dict[str, Any], ...]
    policy: str
    interval_ms: int
    differential: bool
    backups: int
    buckets: int
    heartbeat_ms: int
    miss_limit: int
    sync_port: int
    hold_timeout_ms: int
    sync_batch_ms: int
    lossless: bool
    lossless_window_ms: int
    lossless_cap_packets: int
    lossless_cap_bytes: int
    # Probes and sync failover on every cluster interface (sync/paths.py); off: the sync
    # segment alone decides who is alive, as before (the split-brain lesson shows why not).
    paths: bool
    gateway_inside_ip: IPv4Address
    gateway_outside_ip: IPv4Address
    gateway_mac_inside: str
    gateway_mac_outside: str
    queue_num: int
    # Dual stack (README "IPv6"): the segments' IPv6 networks, None for an IPv4-only lab. The
    # sync segment stays IPv4: node-to-node traffic is not what the lab shows over IPv6.
    inside_net6: IPv6Network | None = None
    outside_net6: IPv6Network | None = None
    # What `up` starts once the lab runs (LAB_TRAFFIC): "demo" a small mixed workload, so that
    # a first screen moves; "none" nothing (the default).
    traffic: str = "none"

    @property
    def ipv6(self) -> bool:
        return self.inside_net6 is not None and self.outside_net6 is not None

    def network6(self, segment: str) -> IPv6Network:
        net = self.inside_net6 if segment == "inside" else self.outside_net6
        if net is None:
            raise LabError(f"lab {self.name!r} has no IPv6 (set inside_net6 and outside_net6)")
        return net

    def gateway_ip6(self, segment: str) -> IPv6Address:
        """The virtual gateway's IPv6 address on a segment: its network's first host, as for IPv4."""
        return next(self.network6(segment).hosts())
    # The intrusion blocklist (engine/blocklist.py): this many distinct refused ports from one
    # source within scan_window_ms make a scan (0: off); the source is blocked for block_s.
    scan_ports: int = 0  # off unless the lab file sets it (docs/guards.md says why)
    scan_window_ms: int = 2000
    block_s: int = 10
    # The benches' own labs only: a node fills its table with synthetic connections on request
    # (the `fill` control command, engine/synthetic.py), so a resync of 1M entries can be timed.
    bench_fill: bool = False

    def ns_name(self, host: str) -> str:
        """The namespace of a node, a host or the fabric (`sw<lab>-<host>`)."""
        return ns_name(self.name, host)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no node {name!r} in lab {self.name!r} (nodes: {self.node_names})")

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name!r} in lab {self.name!r}")

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def network(self, segment: str) -> IPv4Network:
        return self.inside_net if segment == "inside" else self.outside_net

    def gateway_ip(self, segment: str) -> IPv4Address:
        return self.gateway_inside_ip if segment == "inside" else self.gateway_outside_ip


def ns_name(lab: str, host: str) -> str:
    return f"sw{lab}-{host}"


# ---- loading -----------------------------------------------------------------------------

_SCALARS: dict[str, type] = {
    "name": str,
    "lab_id": int,
    "sync_net": str,
    "inside_net": str,
    "outside_net": str,
    "policy": str,
    "interval_ms": int,
    "differential": bool,
    "backups": int,
    "buckets": int,
    "heartbeat_ms": int,
    "miss_limit": int,
    "sync_port": int,
    "hold_timeout_ms": int,
    "sync_batch_ms": int,
    "lossless": bool,
    "lossless_window_ms": int,
    "lossless_cap_packets": int,
    "lossless_cap_bytes": int,
    "paths": bool,
    "gateway_inside_ip": str,
    "gateway_outside_ip": str,
    "gateway_mac_inside": str,
    "gateway_mac_outside": str,
    "queue_num": int,
    "inside_net6": str,
    "outside_net6": str,
    "scan_ports": int,
    "scan_window_ms": int,
    "block_s": int,
    "bench_fill": bool,
    "traffic": str,
}
_LISTS = ("nodes", "hosts", "rules")
_NODE_KEYS = {"name": str, "sync_ip": str}
_HOST_KEYS = {"name": str, "segment": str, "ip": str, "role": str}
_HOST_OPTIONAL = {"ip6": str}
# Derived from the networks when a file leaves them out, so that changing a network alone works.
_DERIVED = ("lab_id", "gateway_inside_ip", "gateway_outside_ip")


def default_lab_text() -> str:
    # Next to this module (package data); importlib.resources trips over editable installs.
    return (Path(__file__).parent / "default.toml").read_text()


def load_lab(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> LabSpec:
    """Load a lab file (None: the default lab), apply overrides, validate.

    A lab file may leave keys out; they take the default lab's values. `overrides` are
    top-level keys applied last (e.g. from the command line); `nodes` may be given as a
    count, which makes nodes n1..nN with sync addresses .11, .12, ... of the sync network.
    """
    base = _parse_toml(default_lab_text(), "the default lab")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise LabSpecError(f"cannot read lab file {path}: {e.strerror}") from e
        raw = _parse_toml(text, str(path))
        merged = {k: v for k, v in base.items() if k not in _DERIVED}
        merged.update(raw)
    else:
        merged = dict(base)
    if overrides:
        merged.update({k: v for k, v in overrides.items() if v is not None})
    return validate(merged)


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LabSpecError(f"{where}: not valid TOML: {e}") from e


def _typed(field: str, value: Any, want: type) -> Any:
    # bool is an int in Python; a lab file saying `buckets = true` is still wrong.
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        raise LabSpecError(f"{field}: expected {want.__name__}, got {value!r}")
    return value


def _net(field: str, value: str) -> IPv4Network:
    try:
        return IPv4Network(value, strict=True)
    except ValueError as e:
        raise LabSpecError(f"{field}: expected an IPv4 network like 198.18.0.0/24, got {value!r}") from e


def _addr(field: str, value: str, net: IPv4Network) -> IPv4Address:
    try:
        a = IPv4Address(value)
    except ValueError:
        a = None
    usable = a is not None and a in net and a not in (net.network_address, net.broadcast_address)
    if a is None or not usable:
        raise LabSpecError(f'{field}: expected an IPv4 address inside {net}, got "{value}"')
    return a


def _int_range(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise LabSpecError(f"{field}: expected {lo}..{hi}, got {value}")
    return value


def _nodes_from_count(count: Any, sync_net: IPv4Network) -> list[dict[str, Any]]:
    n = _int_range("nodes", _typed("nodes", count, int), 1, 64)
    hosts = list(sync_net.hosts())
    if len(hosts) < 10 + n:
        raise LabSpecError(f"nodes: {n} nodes do not fit in sync_net {sync_net}")
    return [{"name": f"n{i}", "sync_ip": str(hosts[9 + i])} for i in range(1, n + 1)]


def validate(raw: Mapping[str, Any]) -> LabSpec:
    """Turn a merged dict into a LabSpec, or raise LabSpecError naming the first bad field."""
    unknown = sorted(set(raw) - set(_SCALARS) - set(_LISTS))
    if unknown:
        raise LabSpecError(f"{unknown[0]}: unknown key (known: {', '.join(sorted([*_SCALARS, *_LISTS]))})")
    for key in ("name", "sync_net", "inside_net", "outside_net", "nodes", "hosts"):
        if key not in raw:
            raise LabSpecError(f"{key}: missing")
    v: dict[str, Any] = {}
    for key, want in _SCALARS.items():
        if key in raw:
            v[key] = _typed(key, raw[key], want)

    name = v["name"]
    if not LAB_NAME_RE.match(name):
        raise LabSpecError(
            f"name: expected 1-12 characters of a-z, 0-9 and '-' (namespace names derive "
            f"from it), got {name!r}"
        )
    nets = {k: _net(k, v[k]) for k in ("sync_net", "inside_net", "outside_net")}
    keys = list(nets)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if nets[a].overlaps(nets[b]):
                raise LabSpecError(f"{b}: {nets[b]} overlaps {a} {nets[a]}")

    nets6 = _nets6(v, nets)
    gw = {}
    for seg in SEGMENTS:
        key = f"gateway_{seg}_ip"
        net = nets[f"{seg}_net"]
        gw[seg] = _addr(key, v[key], net) if key in v else next(net.hosts())
        mkey = f"gateway_mac_{seg}"
        mac = v.get(mkey, "02:53:57:00:01:01" if seg == "inside" else "02:53:57:00:02:01").lower()
        # A multicast MAC (odd first octet) cannot be an interface's own address.
        if not MAC_RE.match(mac) or int(mac[:2], 16) & 1:
            raise LabSpecError(f"{mkey}: expected a unicast MAC like 02:53:57:00:01:01, got {mac!r}")
        v[mkey] = mac

    raw_nodes = raw["nodes"]
    if isinstance(raw_nodes, int) and not isinstance(raw_nodes, bool):
        raw_nodes = _nodes_from_count(raw_nodes, nets["sync_net"])
    nodes = tuple(_node(i, n, nets["sync_net"]) for i, n in enumerate(_list("nodes", raw_nodes)))
    if not nodes:
        raise LabSpecError("nodes: a lab needs at least 1 node")
    hosts = tuple(_host(i, h, nets, gw, nets6) for i, h in enumerate(_list("hosts", raw["hosts"])))
    rules = tuple(_rule(i, r) for i, r in enumerate(_list("rules", raw.get("rules", []))))
    # The engine owns what a rule means; ask it now, so a bad rule is refused when the lab
    # file is read, not when the nodes fail to start.
    from engine.rules import RuleError, parse_rules

    try:
        parsed = parse_rules([dict(r) for r in rules])
    except RuleError as e:
        raise LabSpecError(f"rules: {e}") from e
    for i, r in enumerate(parsed.rules):
        # A translated reply is addressed to the snat address: only a gateway address reaches
        # the nodes (docs/nat.md).
        if r.snat is not None and IPv4Address(r.snat) not in (gw["inside"], gw["outside"]):
            raise LabSpecError(
                f"rules[{i}].snat: {IPv4Address(r.snat)} is not a gateway address "
                f"({gw['inside']} or {gw['outside']}); replies to it would never reach the nodes"
            )

    seen: dict[str, str] = {FABRIC: "reserved for the fabric namespace"}
    named: list[tuple[str, list[str]]] = [
        ("nodes", [n.name for n in nodes]),
        ("hosts", [h.name for h in hosts]),
    ]
    for kind, names in named:
        for i, item_name in enumerate(names):
            if item_name in seen:
                raise LabSpecError(f'{kind}[{i}].name: "{item_name}" is already used ({seen[item_name]})')
            seen[item_name] = f"{kind}[{i}]"
    used: dict[IPv4Address, str] = {
        gw["inside"]: "gateway_inside_ip",
        gw["outside"]: "gateway_outside_ip",
    }
    for kind, field, items in (("nodes", "sync_ip", nodes), ("hosts", "ip", hosts)):
        for i, item in enumerate(items):
            a = getattr(item, field)
            if a in used:
                raise LabSpecError(f"{kind}[{i}].{field}: {a} is already used by {used[a]}")
            used[a] = f"{kind}[{i}]"

    used6: dict[IPv6Address, str] = {}
    for i, h in enumerate(hosts):
        if h.ip6 is not None:
            if h.ip6 in used6:
                raise LabSpecError(f"hosts[{i}].ip6: {h.ip6} is already used by {used6[h.ip6]}")
            used6[h.ip6] = f"hosts[{i}]"

    policy = v.get("policy", "hybrid")
    if policy not in POLICIES:
        raise LabSpecError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    buckets = _int_range("buckets", v.get("buckets", BUCKETS_PER_NODE * len(nodes)), 1, MAX_BUCKETS)
    if buckets < len(nodes):
        raise LabSpecError(f"buckets: {buckets} buckets for {len(nodes)} nodes; need at least one per node")
    backups = v.get("backups", 1)
    if not 0 <= backups < len(nodes):
        raise LabSpecError(
            f"backups: expected 0..{len(nodes) - 1} (fewer than the {len(nodes)} nodes), got {backups}"
        )
    traffic = v.get("traffic", "none")
    if traffic not in LAB_TRAFFIC:
        raise LabSpecError(f"traffic: expected one of {', '.join(LAB_TRAFFIC)} (what `up` starts), "
                           f"got {traffic!r}")
    lab_id = v.get("lab_id", zlib.crc32(name.encode()))
    return LabSpec(
        name=name,
        lab_id=_int_range("lab_id", lab_id, 0, 2**32 - 1),
        sync_net=nets["sync_net"],
        inside_net=nets["inside_net"],
        outside_net=nets["outside_net"],
        nodes=nodes,
        hosts=hosts,
        rules=rules,
        policy=policy,
        interval_ms=_int_range("interval_ms", v.get("interval_ms", 1000), 1, 3_600_000),
        differential=v.get("differential", True),
        backups=backups,
        buckets=buckets,
        heartbeat_ms=_int_range("heartbeat_ms", v.get("heartbeat_ms", 10), 1, 60_000),
        miss_limit=_int_range("miss_limit", v.get("miss_limit", 5), 1, 1000),
        sync_port=_int_range("sync_port", v.get("sync_port", 7400), 1, 65535),
        hold_timeout_ms=_int_range("hold_timeout_ms", v.get("hold_timeout_ms", 200), 1, 60_000),
        sync_batch_ms=_int_range("sync_batch_ms", v.get("sync_batch_ms", SYNC_BATCH_MS), 0, 1000),
        lossless=v.get("lossless", LOSSLESS_DEFAULT),
        lossless_window_ms=_int_range("lossless_window_ms", v.get("lossless_window_ms", 50), 1, 10_000),
        lossless_cap_packets=_int_range("lossless_cap_packets", v.get("lossless_cap_packets", 2048),
                                        1, 3000),
        lossless_cap_bytes=_int_range("lossless_cap_bytes", v.get("lossless_cap_bytes", 4 << 20),
                                      1500, 256 << 20),
        paths=v.get("paths", True),
        gateway_inside_ip=gw["inside"],
        gateway_outside_ip=gw["outside"],
        gateway_mac_inside=v["gateway_mac_inside"],
        gateway_mac_outside=v["gateway_mac_outside"],
        queue_num=_int_range("queue_num", v.get("queue_num", 0), 0, 65535),
        inside_net6=nets6.get("inside"),
        outside_net6=nets6.get("outside"),
        scan_ports=_int_range("scan_ports", v.get("scan_ports", 0), 0, 65535),
        scan_window_ms=_int_range("scan_window_ms", v.get("scan_window_ms", 2000), 1, 3_600_000),
        block_s=_int_range("block_s", v.get("block_s", 10), 1, 86_400),
        bench_fill=v.get("bench_fill", False),
        traffic=traffic,
    )


def _nets6(v: Mapping[str, Any], nets: Mapping[str, IPv4Network]) -> dict[str, IPv6Network]:
    """The segments' IPv6 networks: both or neither ("" or left out: IPv4 only)."""
    given = {seg: v.get(f"{seg}_net6", "") for seg in SEGMENTS}
    if not any(given.values()):
        return {}
    out: dict[str, IPv6Network] = {}
    for seg, text in given.items():
        field = f"{seg}_net6"
        if not text:
            other = next(s for s in SEGMENTS if s != seg)
            raise LabSpecError(f"{field}: missing; a dual-stack lab needs it with {other}_net6")
        try:
            net = IPv6Network(text, strict=True)
        except ValueError as e:
            raise LabSpecError(f"{field}: expected an IPv6 network like 2001:2:0:1::/64, got {text!r}") from e
        # Host addresses derive from the IPv4 ones (.10 -> ::a): the IPv4 host part must fit.
        if net.num_addresses < nets[f"{seg}_net"].num_addresses:
            raise LabSpecError(f"{field}: {net} is smaller than {seg}_net {nets[f'{seg}_net']}")
        out[seg] = net
    if out["inside"].overlaps(out["outside"]):
        raise LabSpecError(f"outside_net6: {out['outside']} overlaps inside_net6 {out['inside']}")
    return out


def _list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise LabSpecError(f"{field}: expected a list of tables ([[{field}]]), got {value!r}")
    return value


def _table(field: str, value: Any, keys: Mapping[str, type],
           optional: Mapping[str, type] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LabSpecError(f"{field}: expected a table, got {value!r}")
    optional = optional or {}
    for k in value:
        if k not in keys and k not in optional:
            raise LabSpecError(f"{field}.{k}: unknown key (known: {', '.join([*keys, *optional])})")
    for k, want in keys.items():
        if k not in value:
            raise LabSpecError(f"{field}.{k}: missing")
        _typed(f"{field}.{k}", value[k], want)
    for k, want in optional.items():
        if k in value:
            _typed(f"{field}.{k}", value[k], want)
    return value


def _name(field: str, value: str) -> str:
    if not HOST_NAME_RE.match(value):
        raise LabSpecError(
            f"{field}: expected a letter then up to 7 letters or digits (interface names "
            f"derive from it), got {value!r}"
        )
    return value


def _node(i: int, raw: Any, sync_net: IPv4Network) -> NodeSpec:
    f = f"nodes[{i}]"
    t = _table(f, raw, _NODE_KEYS)
    return NodeSpec(name=_name(f"{f}.name", t["name"]), sync_ip=_addr(f"{f}.sync_ip", t["sync_ip"], sync_net))


def _host(i: int, raw: Any, nets: Mapping[str, IPv4Network], gw: Mapping[str, IPv4Address],
          nets6: Mapping[str, IPv6Network]) -> HostSpec:
    f = f"hosts[{i}]"
    t = _table(f, raw, _HOST_KEYS, _HOST_OPTIONAL)
    seg = t["segment"]
    if seg not in SEGMENTS:
        raise LabSpecError(f"{f}.segment: expected one of {', '.join(SEGMENTS)}, got {seg!r}")
    role = t["role"]
    if role not in ROLES:
        raise LabSpecError(f"{f}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    ip = _addr(f"{f}.ip", t["ip"], nets[f"{seg}_net"])
    return HostSpec(
        name=_name(f"{f}.name", t["name"]),
        segment=seg,
        ip=ip,
        role=role,
        ip6=_host_ip6(f, t.get("ip6", ""), ip, nets[f"{seg}_net"], nets6.get(seg)),
    )


def _host_ip6(f: str, text: str, ip: IPv4Address, net: IPv4Network,
              net6: IPv6Network | None) -> IPv6Address | None:
    """A host's IPv6 address: as given, or its IPv4 host part in the segment's IPv6 network
    (198.18.1.10 -> 2001:2:0:1::a); never the gateway's (the network's first host)."""
    if net6 is None:
        if text:
            raise LabSpecError(f"{f}.ip6: the lab has no IPv6 networks (inside_net6, outside_net6)")
        return None
    if not text:
        return net6.network_address + (int(ip) - int(net.network_address))
    try:
        a = IPv6Address(text)
    except ValueError:
        a = None
    if a is None or a not in net6 or a in (net6.network_address, next(net6.hosts())):
        raise LabSpecError(f'{f}.ip6: expected an IPv6 address inside {net6} (not its first), got "{text}"')
    return a


def _rule(i: int, raw: Any) -> dict[str, Any]:
    # Only the shape is checked here; engine.rules.parse_rules owns the meaning.
    if not isinstance(raw, dict):
        raise LabSpecError(f"rules[{i}]: expected a table, got {raw!r}")
    return dict(raw)


def spec_to_dict(spec: LabSpec) -> dict[str, Any]:
    """A JSON/TOML-friendly dict that `validate` turns back into the same spec."""
    out: dict[str, Any] = {}
    for f in LabSpec.__dataclass_fields__:
        val = getattr(spec, f)
        if f == "nodes":
            out[f] = [{"name": n.name, "sync_ip": str(n.sync_ip)} for n in val]
        elif f == "hosts":
            out[f] = [{"name": h.name, "segment": h.segment, "ip": str(h.ip), "role": h.role,
                       **({"ip6": str(h.ip6)} if h.ip6 is not None else {})} for h in val]
        elif f == "rules":
            out[f] = [dict(r) for r in val]
        elif isinstance(val, IPv4Address | IPv4Network | IPv6Network):
            out[f] = str(val)
        elif val is None and f.endswith("_net6"):
            out[f] = ""
        else:
            out[f] = val
    return out


__all__ = [
    "LAB_TRAFFIC",
    "HostSpec",
    "LabError",
    "LabSpec",
    "LabSpecError",
    "NodeSpec",
    "default_lab_text",
    "load_lab",
    "ns_name",
    "spec_to_dict",
    "validate",
]
