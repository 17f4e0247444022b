"""Build a lab spec into live namespaces, bridges, veths, addresses, routes and node rules."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import config as pr_config
from pyroute2 import netns as pr_netns

from netns import iptables
from netns.record import NETNS_DIR, RECORD_FILE, LabRecord, make_run_dir, teardown
from netns.spec import FABRIC, LabError, LabSpec, spec_to_dict
from netns.spec import ns_name as _ns_name

log = logging.getLogger(__name__)

# pyroute2 forks a child to enter a namespace and stops it with SIGTERM. The child inherits
# the parent's Python signal handlers and asyncio's wakeup fd, so without this the daemon's
# event loop would see every such SIGTERM as its own and shut the lab down.
pr_config.disable_mp_signal = True

FORWARD_MODES = ("nfqueue", "accept")
BRIDGES = {"sync": "br-sync", "inside": "br-in", "outside": "br-out"}
# Fabric-side port suffix per segment; `<node>-out` must fit in 15 bytes.
PORT_SUFFIX = {"sync": "sy", "inside": "in", "outside": "out"}
HOST_IFACE = "eth0"

_NS_SYSCTLS = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
# rp_filter: replies of a flow may leave by another node than the one a client saw;
# send_redirects: every node shares the gateway address, a redirect would only confuse hosts.
_NODE_SYSCTLS = [
    *_NS_SYSCTLS,
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
]


# Dual stack (README "IPv6"), inside the lab's namespaces only. No duplicate address detection:
# every node holds the same gateway address on purpose (as it shares the IPv4 one and the MAC),
# and a host's address is usable at once. No router advertisements: routes are static.
_IPV6_SYSCTLS = [
    "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
]
_IPV6_NODE_SYSCTLS = [*_IPV6_SYSCTLS, "net.ipv6.conf.all.forwarding=1"]


# NAT (docs/nat.md): a node forwards a port-forwarded packet with the cluster's own address
# as its source, which the kernel refuses as a martian unless accept_local is on.
_NAT_NODE_SYSCTLS = ["net.ipv4.conf.all.accept_local=1", "net.ipv4.conf.default.accept_local=1"]
# Turns TX checksum offload off on a host's interface (TSO goes with it), inside its namespace.
_TX_OFF = (
    "from pyroute2.ethtool import Ethtool\n"
    "e = Ethtool()\n"
    "f = e.get_features({ifname!r})\n"
    "f.features['tx-checksum-ip-generic'].enable = False\n"
    "e.set_features({ifname!r}, f)\n"
)


class LabBuildError(LabError):
    """The lab could not be built; whatever was made has been removed again."""


def ns_name(spec: LabSpec | LabRecord | str, host: str) -> str:
    """The namespace of `host` (a node, a host, or "fabric") in a lab given by spec, record or name."""
    lab = spec if isinstance(spec, str) else spec.name if isinstance(spec, LabSpec) else spec.lab
    return _ns_name(lab, host)


def port_name(host: str, segment: str | None = None) -> str:
    """The fabric-side veth of a node (per segment) or of a host (one segment, its own name)."""
    return host if segment is None else f"{host}-{PORT_SUFFIX[segment]}"


def build_lab(spec: LabSpec, run_dir: Path, forward: str = "nfqueue") -> LabRecord:
    """Build the lab; return its record. Every node starts owning no bucket.

    The record is saved after every step, so a crash part-way can be cleaned from it;
    on an exception the partial lab is removed here before the error is raised.
    """
    if forward not in FORWARD_MODES:
        raise LabBuildError(f"forward: expected one of {', '.join(FORWARD_MODES)}, got {forward!r}")
    run_dir = Path(run_dir)
    if (run_dir / RECORD_FILE).exists():
        raise LabBuildError(
            f"lab {spec.name} already has a record in {run_dir}: it runs, or it crashed "
            f"(then run `syncwall clean`)"
        )
    names = [ns_name(spec, FABRIC), *(ns_name(spec, n.name) for n in spec.nodes)]
    names += [ns_name(spec, h.name) for h in spec.hosts]
    taken = [n for n in names if (NETNS_DIR / n).exists()]
    if taken:
        raise LabBuildError(
            f"namespaces {', '.join(taken)} already exist and are not this lab's; "
            f"remove them or choose another lab name"
        )
    t0 = time.monotonic()
    make_run_dir(run_dir)
    record = LabRecord(lab=spec.name, run_dir=run_dir, meta={"forward": forward, "spec": spec_to_dict(spec)})
    record.meta["steps"] = []
    record.save()
    try:
        for name in names:
            pr_netns.create(name)
            record.add_namespace(name)
        _step(record, "namespaces")
        _sysctls(spec)
        _step(record, "sysctls")
        _build_fabric(spec)
        _step(record, "fabric")
        _configure_nodes(spec)
        if spec.ipv6:
            # The sync segment stays IPv4 only (its link came up with the namespace's IPv6 default).
            off = ["sysctl", "-q", "-w", "net.ipv6.conf.sync.disable_ipv6=1"]
            _run_parallel([(ns_name(spec, n.name), off, None) for n in spec.nodes])
        _step(record, "nodes")
        _configure_hosts(spec)
        _step(record, "hosts")
        if nat_hosts(spec):
            _tx_checksum_off(spec)
            _step(record, "offload")
        _install_rules(spec, forward)
        _step(record, "rules")
    except BaseException as e:
        log.error("building lab %s failed (%s); removing what was made", spec.name, e)
        teardown(record)
        if isinstance(e, Exception):
            raise LabBuildError(f"building lab {spec.name} failed: {e}") from e
        raise
    record.meta["build_s"] = round(time.monotonic() - t0, 3)
    record.save()
    log.info("lab %s built in %.2f s", spec.name, record.meta["build_s"])
    return record


def _step(record: LabRecord, name: str) -> None:
    record.meta["steps"].append(name)
    record.save()


def _run_parallel(jobs: Sequence[tuple[str, list[str], str | None]]) -> None:
    """Run one command per namespace at once (each is mostly process start-up time)."""
    procs = []
    for ns, argv, text in jobs:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE if text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((ns, argv, text, p))
    errors = []
    for ns, argv, text, p in procs:
        _, err = p.communicate(text)
        if p.returncode != 0:
            errors.append(f"`{argv[0]}` in {ns} failed ({p.returncode}): {err.strip()}")
    if errors:
        raise iptables.IptablesError("; ".join(errors))


def _sysctls(spec: LabSpec) -> None:
    # Set before any link exists: new interfaces inherit the `default` values.
    node_ns = {ns_name(spec, n.name) for n in spec.nodes}
    jobs: list[tuple[str, list[str], str | None]] = []
    for ns in [ns_name(spec, FABRIC), *node_ns, *(ns_name(spec, h.name) for h in spec.hosts)]:
        values = _NODE_SYSCTLS if ns in node_ns else _NS_SYSCTLS
        if spec.ipv6 and ns != ns_name(spec, FABRIC):
            # The fabric only bridges frames; it keeps IPv6 off, as an IPv4-only lab does everywhere.
            values = [*values, *(_IPV6_NODE_SYSCTLS if ns in node_ns else _IPV6_SYSCTLS)]
        if ns in node_ns and iptables.nat_addresses(spec.rules):
            values = [*values, *_NAT_NODE_SYSCTLS]
        jobs.append((ns, ["sysctl", "-q", "-w", *values], None))
    _run_parallel(jobs)


def _build_fabric(spec: LabSpec) -> None:
    macs = {"inside": spec.gateway_mac_inside, "outside": spec.gateway_mac_outside}
    with IPRoute(netns=ns_name(spec, FABRIC)) as ip:
        _up(ip, "lo")
        bridge_idx = {}
        for seg, br in BRIDGES.items():
            if spec.ipv6:
                # Without snooping a bridge floods multicast (neighbour solicitations) to every port,
                # as it floods the shared MAC: no node misses one for want of a listener report.
                ip.link("add", ifname=br, kind="bridge", br_mcast_snooping=0)
            else:
                ip.link("add", ifname=br, kind="bridge")
            bridge_idx[seg] = ip.link_lookup(ifname=br)[0]
        for node in spec.nodes:
            node_ns = ns_name(spec, node.name)
            for seg in ("sync", "inside", "outside"):
                peer: dict[str, object] = {"ifname": seg, "net_ns_fd": node_ns}
                if seg in macs:
                    # The virtual gateway: every node's data interface has the same MAC.
                    peer["address"] = macs[seg]
                port = port_name(node.name, seg)
                ip.link("add", ifname=port, kind="veth", peer=peer)
                idx = ip.link_lookup(ifname=port)[0]
                ip.link("set", index=idx, master=bridge_idx[seg])
                if seg in macs:
                    # Never learn the shared MAC: frames to it flood to every node.
                    ip.brport("set", index=idx, learning=0, unicast_flood=1)
                ip.link("set", index=idx, state="up")
        for host in spec.hosts:
            port = port_name(host.name)
            peer = {"ifname": HOST_IFACE, "net_ns_fd": ns_name(spec, host.name)}
            ip.link("add", ifname=port, kind="veth", peer=peer)
            idx = ip.link_lookup(ifname=port)[0]
            ip.link("set", index=idx, master=bridge_idx[host.segment], state="up")
        for idx in bridge_idx.values():
            ip.link("set", index=idx, state="up")


def _up(ip: IPRoute, ifname: str) -> int:
    idx: int = ip.link_lookup(ifname=ifname)[0]
    ip.link("set", index=idx, state="up")
    return idx


def _configure_nodes(spec: LabSpec) -> None:
    for node in spec.nodes:
        with IPRoute(netns=ns_name(spec, node.name)) as ip:
            _up(ip, "lo")
            addrs = {
                "sync": (node.sync_ip, spec.sync_net.prefixlen),
                "inside": (spec.gateway_inside_ip, spec.inside_net.prefixlen),
                "outside": (spec.gateway_outside_ip, spec.outside_net.prefixlen),
            }
            for ifname, (addr, plen) in addrs.items():
                idx = ip.link_lookup(ifname=ifname)[0]
                ip.addr("add", index=idx, address=str(addr), prefixlen=plen)
                if spec.ipv6 and ifname != "sync":
                    net6 = spec.network6(ifname)
                    ip.addr("add", index=idx, address=str(spec.gateway_ip6(ifname)), prefixlen=net6.prefixlen)
                ip.link("set", index=idx, state="up")


def _configure_hosts(spec: LabSpec) -> None:
    for host in spec.hosts:
        with IPRoute(netns=ns_name(spec, host.name)) as ip:
            _up(ip, "lo")
            idx = ip.link_lookup(ifname=HOST_IFACE)[0]
            ip.addr("add", index=idx, address=str(host.ip), prefixlen=spec.network(host.segment).prefixlen)
            ip.link("set", index=idx, state="up")
            ip.route("add", dst="0.0.0.0/0", gateway=str(spec.gateway_ip(host.segment)))
            if host.ip6 is not None:
                net6 = spec.network6(host.segment)
                ip.addr("add", index=idx, address=str(host.ip6), prefixlen=net6.prefixlen)
                ip.route("add", dst="::/0", gateway=str(spec.gateway_ip6(host.segment)),
                         family=socket.AF_INET6)


def nat_hosts(spec: LabSpec) -> list[str]:
    """The hosts whose packets a NAT rule may rewrite: in a NAT rule's `src` or `dst`, or its
    `dnat` target (any host when the rule leaves `src` or `dst` open)."""
    from engine.rules import parse_rules

    found = set()
    for r in parse_rules([dict(x) for x in spec.rules]).rules:
        if not r.nat:
            continue
        dnat = r.dnat[0] if r.dnat is not None else None
        for h in spec.hosts:
            a = int(h.ip)
            if (r.src is None or r.src.contains(4, a) or r.dst is None or r.dst.contains(4, a)
                    or dnat == h.ip.packed):
                found.add(h.name)
    return sorted(found)


def _tx_checksum_off(spec: LabSpec) -> None:
    """NAT rewrites a packet with an incremental checksum update, which needs the complete
    checksum of the wire. A local socket's packet over veth carries only a partial one
    (CHECKSUM_PARTIAL), and the queue (with GSO on) hands it over so, with no sign user space
    can read; TSO also makes super-packets the queue cuts at its copy range. So the hosts
    NAT concerns send finished, MSS-sized packets. Inside lab namespaces only."""
    code = _TX_OFF.format(ifname=HOST_IFACE)
    _run_parallel([(ns_name(spec, h), [sys.executable, "-c", code], None) for h in nat_hosts(spec)])


def _install_rules(spec: LabSpec, forward: str) -> None:
    text = iptables.node_rules(spec.buckets, iptables.hmark_rnd(spec.lab_id), spec.queue_num, forward,
                               iptables.nat_addresses(spec.rules))
    # One iptables-restore per node (and one ip6tables-restore in a dual-stack lab), all at once.
    jobs: list[tuple[str, list[str], str | None]] = [
        (ns_name(spec, n.name), ["iptables-restore", "--wait"], text) for n in spec.nodes]
    if spec.ipv6:
        text6 = iptables.node_rules6(spec.buckets, iptables.hmark_rnd(spec.lab_id), spec.queue_num, forward)
        jobs += [(ns_name(spec, n.name), ["ip6tables-restore", "--wait"], text6) for n in spec.nodes]
    _run_parallel(jobs)


def _set_node_links(target: LabSpec | LabRecord, node: str, state: str) -> None:
    # The sync port first: a crashed node must not get to announce anything. Cut last, it stayed
    # up the few ms in which the node saw its data links go, fenced itself and handed its
    # buckets over (a graceful exit, 3-11 ms, not the crash that only heartbeats can detect).
    ports = [port_name(node, seg) for seg in ("sync", "inside", "outside")]
    with IPRoute(netns=ns_name(target, FABRIC)) as ip:
        indexes = []
        for port in ports:
            found = ip.link_lookup(ifname=port)
            if not found:
                raise LabError(f"node {node}: no fabric port {port} in lab {ns_name(target, FABRIC)}")
            indexes.append(found[0])
        # Resolve first, then flip all three back to back: the "crash" is as sudden as we can make it.
        for idx in indexes:
            ip.link("set", index=idx, state=state)


def cut_links(target: LabSpec | LabRecord, node: str) -> None:
    """Take every fabric-side port of `node` down at once: to the others it has crashed."""
    _set_node_links(target, node, "down")


def restore_links(target: LabSpec | LabRecord, node: str) -> None:
    _set_node_links(target, node, "up")
