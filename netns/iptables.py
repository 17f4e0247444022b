"""iptables inside lab namespaces: the node rule set, owned buckets, sync fault injection."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Iterable, Sequence

from engine.nfq import OWNED_CHAIN, owned_chain_text
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


def hmark_rnd(lab_id: int) -> int:
    """The HMARK hash seed of a lab: the same on every node, different between labs."""
    digest = hashlib.blake2b(lab_id.to_bytes(8, "big"), digest_size=4, person=b"sw-hmark").digest()
    return int.from_bytes(digest, "big") or 1


def node_rules(buckets: int, rnd: int, queue_num: int, forward: str = "nfqueue") -> str:
    """The node's whole rule set (DESIGN.md "Active-active distribution"), owning no bucket.

    The sync interface is never hashed or queued: the mangle and raw rules match only the
    data interfaces, and forwarding to or from the sync segment is refused so that the
    data path can never leak into it.
    """
    if forward not in ("nfqueue", "accept"):
        raise LabError(f"forward: expected 'nfqueue' or 'accept', got {forward!r}")
    hmark = (
        f"-j HMARK --hmark-tuple {HMARK_TUPLE} --hmark-mod {buckets} --hmark-offset 1 --hmark-rnd {rnd:#x}"
    )
    raw = [f"-A PREROUTING -i {i} -j NOTRACK" for i in DATA_IFACES]
    mangle = [f"-A PREROUTING -i {i} {hmark}" for i in DATA_IFACES]
    mangle += [f"-A PREROUTING -i {i} -j {OWNED_CHAIN}" for i in DATA_IFACES]
    # No --queue-bypass: with no engine listening, packets are dropped (fail closed).
    verdict = f"NFQUEUE --queue-num {queue_num}" if forward == "nfqueue" else "ACCEPT"
    filt = [
        f":{SYNC_LOSS_CHAIN} - [0:0]",
        f"-A INPUT -i {SYNC_IFACE} -j {SYNC_LOSS_CHAIN}",
        f"-A FORWARD -i {SYNC_IFACE} -j DROP",
        f"-A FORWARD -o {SYNC_IFACE} -j DROP",
        f"-A FORWARD -j {verdict}",
    ]
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


def install_node_rules(ns: str, buckets: int, rnd: int, queue_num: int, forward: str = "nfqueue") -> None:
    # A node namespace is fresh, so a full (flushing) restore is exact and atomic.
    iptables_restore(ns, node_rules(buckets, rnd, queue_num, forward), noflush=False)


def set_owned_buckets(ns: str, buckets: Iterable[int]) -> None:
    """Atomically replace the owned-bucket set of the node in `ns`.

    Declaring the chain under --noflush empties just that chain, in the same transaction
    that refills it: no packet ever sees a half-written set.
    """
    iptables_restore(ns, "*mangle\n" + owned_chain_text(buckets) + "\nCOMMIT\n")


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
