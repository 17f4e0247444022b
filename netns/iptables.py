"""iptables inside lab namespaces: the node rule set, owned buckets, sync fault injection."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable, Sequence

from engine.nat import TRANSLATED_MARK
from engine.nat import hmark_rnd as hmark_rnd  # one definition: the engine computes the same marks
from engine.nfq import OWNED_CHAIN, SHADOW_CHAIN, owned_chain_text, shadow_chain_text
from netns.spec import LabError

log = logging.getLogger(__name__)

SYNC_LOSS_CHAIN = "SW_SYNCLOSS"
DATA_IFACES = ("inside", "outside")
SYNC_IFACE = "sync"
HMARK_TUPLE = "src,dst,sport,dport,proto"


class IptablesError(LabError):
    """An iptables command inside a lab namespace failed."""


def run_in_ns(
    ns: str, argv: Sequence[str], input_text: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a program inside a named namespace (`ip netns exec`), capturing its output."""
    cmd = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise IptablesError(
            f"`{' '.join(argv)}` in namespace {ns} failed ({proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def iptables_restore(ns: str, text: str, noflush: bool = True) -> None:
    """Apply a whole iptables-restore document in one transaction inside `ns`."""
    argv = ["iptables-restore", "--wait"]
    if noflush:
        argv.append("--noflush")
    run_in_ns(ns, argv, input_text=text)


def nat_addresses(rules: Sequence[dict[str, object]]) -> list[str]:
    """The cluster's own addresses that NAT rules use: every `snat` address (replies come back
    to it) and the `dst` of every `dnat` rule when it is one address (a port forward)."""
    from engine.rules import parse_rules

    found: set[str] = set()
    for r in parse_rules([dict(x) for x in rules]).rules:
        if r.snat is not None:
            found.add(str(ipaddress.IPv4Address(r.snat)))
        if r.dnat is not None and r.dst is not None and r.dst.family == 4 and r.dst.mask == 0xFFFFFFFF:
            found.add(str(ipaddress.IPv4Address(r.dst.network)))
    return sorted(found, key=ipaddress.IPv4Address)


def _nat_queue_rules(addrs: Sequence[str], queue_num: int) -> list[str]:
    """mangle PREROUTING: packets addressed to the cluster's NAT addresses go to the engine
    before routing, so that the translated destination is what gets routed (docs/nat.md).
    They come after the owned-bucket chain: only the bucket's owner sees them. ICMP only as
    errors, so a ping of the gateway itself stays the kernel's."""
    out = []
    for i in DATA_IFACES:
        for a in addrs:
            for proto in ("-p tcp", "-p udp", "-p icmp --icmp-type destination-unreachable",
                          "-p icmp --icmp-type time-exceeded"):
                out.append(f"-A PREROUTING -i {i} -d {a}/32 {proto} -j NFQUEUE --queue-num {queue_num}")
    return out


def node_rules(
    buckets: int, rnd: int, queue_num: int, forward: str = "nfqueue", nat_addrs: Sequence[str] = ()
) -> str:
    """The node's whole rule set (DESIGN.md "Active-active distribution"), owning no bucket.

    The sync interface is never hashed or queued: the mangle and raw rules match only the
    data interfaces, and forwarding to or from the sync segment is refused so that the
    data path can never leak into it.

    `nat_addrs`: the cluster addresses NAT rules use (`nat_addresses`). Packets to them are
    queued in PREROUTING; a packet the engine translated there carries TRANSLATED_MARK and
    is not queued a second time in FORWARD.
    """
    if forward not in ("nfqueue", "accept"):
        raise LabError(f"forward: expected 'nfqueue' or 'accept', got {forward!r}")
    hmark = (
        f"-j HMARK --hmark-tuple {HMARK_TUPLE} --hmark-mod {buckets} --hmark-offset 1 --hmark-rnd {rnd:#x}"
    )
    raw = [f"-A PREROUTING -i {i} -j NOTRACK" for i in DATA_IFACES]
    mangle = [f"-A PREROUTING -i {i} {hmark}" for i in DATA_IFACES]
    mangle += [f"-A PREROUTING -i {i} -j {OWNED_CHAIN}" for i in DATA_IFACES]
    nat = bool(nat_addrs) and forward == "nfqueue"
    if nat:
        mangle += _nat_queue_rules(nat_addrs, queue_num)
    # No --queue-bypass: with no engine listening, packets are dropped (fail closed).
    verdict = f"NFQUEUE --queue-num {queue_num}" if forward == "nfqueue" else "ACCEPT"
    filt = [
        f":{SYNC_LOSS_CHAIN} - [0:0]",
        shadow_chain_text(),
        f"-A INPUT -i {SYNC_IFACE} -j {SYNC_LOSS_CHAIN}",
        f"-A FORWARD -i {SYNC_IFACE} -j DROP",
        f"-A FORWARD -o {SYNC_IFACE} -j DROP",
    ]
    if nat:
        filt.append(f"-A FORWARD -m mark --mark {TRANSLATED_MARK:#x}/{TRANSLATED_MARK:#x} -j ACCEPT")
    if forward == "nfqueue":
        filt.append(f"-A FORWARD -j {SHADOW_CHAIN}")  # the backed-up buckets to the shadow queue
    filt.append(f"-A FORWARD -j {verdict}")
    return "\n".join(
        [
            "*raw",
            *raw,
            "COMMIT",
            "*mangle",
            owned_chain_text(()),
            *mangle,
            "COMMIT",
            "*filter",
            *filt,
            "COMMIT",
            "",
        ]
    )


# ICMPv6 that stays on the link: router and neighbour discovery (133-137), multicast listener
# reports and queries (130-132, 143). Every node answers for the shared gateway address, as
# every node answers ARP for the IPv4 one, so these are accepted before the bucket split and
# never reach the queue (the engine has nothing to forward in them).
ICMPV6_LINK_TYPES = (130, 131, 132, 133, 134, 135, 136, 137, 143)


def node_rules6(buckets: int, rnd: int, queue_num: int, forward: str = "nfqueue") -> str:
    """The node's IPv6 rule set for ip6tables-restore: the IPv4 recipe (node_rules) with the same
    HMARK seed and modulus, so a bucket means the same node for both families, and the same
    owned-bucket chain (the node rewrites both). Link-local ICMPv6 (ICMPV6_LINK_TYPES) passes
    before HMARK. No NAT: IPv6 needs none."""
    if forward not in ("nfqueue", "accept"):
        raise LabError(f"forward: expected 'nfqueue' or 'accept', got {forward!r}")
    hmark = (
        f"-j HMARK --hmark-tuple {HMARK_TUPLE} --hmark-mod {buckets} --hmark-offset 1 --hmark-rnd {rnd:#x}"
    )
    raw = [f"-A PREROUTING -i {i} -j NOTRACK" for i in DATA_IFACES]
    mangle = [f"-A PREROUTING -i {i} -p ipv6-icmp --icmpv6-type {t} -j ACCEPT"
              for i in DATA_IFACES for t in ICMPV6_LINK_TYPES]
    mangle += [f"-A PREROUTING -i {i} {hmark}" for i in DATA_IFACES]
    mangle += [f"-A PREROUTING -i {i} -j {OWNED_CHAIN}" for i in DATA_IFACES]
    verdict = f"NFQUEUE --queue-num {queue_num}" if forward == "nfqueue" else "ACCEPT"
    filt = [
        shadow_chain_text(),
        f"-A INPUT -i {SYNC_IFACE} -j DROP",  # the sync segment is IPv4 only
        f"-A FORWARD -i {SYNC_IFACE} -j DROP",
        f"-A FORWARD -o {SYNC_IFACE} -j DROP",
        *([f"-A FORWARD -j {SHADOW_CHAIN}"] if forward == "nfqueue" else []),
        f"-A FORWARD -j {verdict}",
    ]
    return "\n".join(["*raw", *raw, "COMMIT", "*mangle", owned_chain_text(()), *mangle, "COMMIT",
                      "*filter", *filt, "COMMIT", ""])


def install_node_rules(
    ns: str, buckets: int, rnd: int, queue_num: int, forward: str = "nfqueue", nat_addrs: Sequence[str] = ()
) -> None:
    # A node namespace is fresh, so a full (flushing) restore is exact and atomic.
    iptables_restore(ns, node_rules(buckets, rnd, queue_num, forward, nat_addrs), noflush=False)


def set_owned_buckets(ns: str, buckets: Iterable[int], ipv6: bool = False) -> None:
    """Atomically replace the owned-bucket set of the node in `ns` (of both families with `ipv6`).

    Declaring the chain under --noflush empties just that chain, in the same transaction
    that refills it: no packet ever sees a half-written set.
    """
    text = "*mangle\n" + owned_chain_text(buckets) + "\nCOMMIT\n"
    iptables_restore(ns, text)
    if ipv6:
        run_in_ns(ns, ["ip6tables-restore", "--wait", "--noflush"], input_text=text)


def owned_buckets(ns: str) -> list[int]:
    """The buckets the node in `ns` accepts now, read back from its rules."""
    out = run_in_ns(ns, ["iptables", "--wait", "-t", "mangle", "-S", OWNED_CHAIN]).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "--mark" in parts and parts[-1] == "RETURN":
            found.append(int(parts[parts.index("--mark") + 1], 0))
    return sorted(found)


def block_sync(ns: str, probability: float) -> None:
    """Drop a random fraction of the sync datagrams arriving at the node in `ns`."""
    if not 0.0 < probability <= 1.0:
        raise LabError(f"probability: expected 0 < p <= 1, got {probability}")
    match = "" if probability >= 1.0 else f"-m statistic --mode random --probability {probability} "
    text = f"*filter\n:{SYNC_LOSS_CHAIN} - [0:0]\n-A {SYNC_LOSS_CHAIN} {match}-j DROP\nCOMMIT\n"
    iptables_restore(ns, text)


def unblock_sync(ns: str) -> None:
    iptables_restore(ns, f"*filter\n:{SYNC_LOSS_CHAIN} - [0:0]\nCOMMIT\n")
