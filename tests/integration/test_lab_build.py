"""The lab builder on real namespaces: forwarding, bucket ownership, NFQUEUE fail-closed, exact teardown."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns as pr_netns

from netns import iptables
from netns.build import LabBuildError, build_lab, cut_links, ns_name, restore_links
from netns.record import (
    NETNS_DIR,
    LabRecord,
    alive,
    labs_running,
    ns_inode,
    run_dir_for,
    stop_processes,
    teardown,
)
from netns.spec import LabSpec, load_lab

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("labprobe.py")
ROOT = Path(__file__).resolve().parents[2]
ECHO_PORT = 5001
ALL_BUCKETS = range(1, 13)


def netns_list() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def host_snapshot() -> tuple[str, str]:
    """The host namespace's links and firewall, READ only, without counters and timestamps."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    save = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    save += subprocess.run(["ip6tables-save"], capture_output=True, text=True, check=True).stdout
    rules = "\n".join(
        re.sub(r"\[\d+:\d+\]", "", line) for line in save.splitlines() if not line.startswith("#")
    )
    return links, rules


def probe(ns: str, *args: str, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_probe(record: LabRecord, ns: str, role: str, name: str, *args: str) -> int:
    """Start a long-running probe in `ns`, wait until it is ready, and record it in the lab."""
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(PROBE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # `ip netns exec` execs the program, so this pid is the probe itself.
    record.add_process(p.pid, role, name)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready", f"{name} did not start in {ns}"
    return p.pid


def ping(spec: LabSpec, src: str, dst: str, count: int = 1) -> bool:
    return probe(ns_name(spec, src), "ping", str(spec.host(dst).ip), "--count", str(count)).returncode == 0


def own(spec: LabSpec, owners: dict[str, range | list[int]]) -> None:
    for node in spec.node_names:
        iptables.set_owned_buckets(ns_name(spec, node), owners.get(node, []))


def unique_name() -> str:
    # Unique per run: never collides with a lab someone else runs on this machine.
    return "t" + secrets.token_hex(3)


@pytest.fixture(scope="module")
def host_before() -> tuple[str, str]:
    return host_snapshot()


def built_lab() -> Iterator[tuple[LabSpec, LabRecord]]:
    spec = load_lab(None, {"name": unique_name()})
    record = build_lab(spec, run_dir_for(spec.name), forward="accept")
    try:
        own(spec, {"n1": ALL_BUCKETS})
        start_probe(record, ns_name(spec, "s1"), "workload", "echo", "echo-server", str(ECHO_PORT))
        yield spec, record
    finally:
        teardown(record)


@pytest.fixture(scope="module")
def lab(host_before: tuple[str, str]) -> Iterator[tuple[LabSpec, LabRecord]]:
    """One lab shared by the tests that only look at it (none of them tears it down)."""
    yield from built_lab()


@pytest.fixture
def own_lab(host_before: tuple[str, str]) -> Iterator[tuple[LabSpec, LabRecord]]:
    """A lab of the test's own, for a test that tears it down."""
    yield from built_lab()


def test_every_node_starts_owning_no_bucket_and_is_recorded(
    lab: tuple[LabSpec, LabRecord],
) -> None:
    spec, record = lab
    assert spec.name in labs_running()
    assert LabRecord.load(record.run_dir).namespace_names() == record.namespace_names()
    assert set(record.namespace_names()) <= netns_list()
    assert iptables.owned_buckets(ns_name(spec, "n2")) == []
    assert oct(record.run_dir.stat().st_mode & 0o777) == "0o700"
    n1 = ns_name(spec, "n1")
    keys = ["net.ipv4.ip_forward", "net.ipv4.conf.inside.rp_filter"]
    keys += ["net.ipv4.conf.outside.send_redirects", "net.ipv6.conf.sync.disable_ipv6"]
    values = iptables.run_in_ns(n1, ["sysctl", "-n", *keys]).stdout.split()
    assert values == ["1", "0", "0", "1"]
    # Dual stack (the default lab): IPv6 on the data segments only, never in the fabric.
    assert iptables.run_in_ns(ns_name(spec, "fabric"), ["ip", "-6", "-o", "addr"]).stdout == ""
    n1_addrs = iptables.run_in_ns(n1, ["ip", "-6", "-o", "addr"]).stdout
    assert f"inet6 {spec.gateway_ip6('inside')}/64" in n1_addrs and " sync " not in n1_addrs
    c1_addrs = iptables.run_in_ns(ns_name(spec, "c1"), ["ip", "-6", "-o", "addr"]).stdout
    assert f"inet6 {spec.host('c1').ip6}/64" in c1_addrs
    assert iptables.run_in_ns(n1, ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "1"


def test_an_ipv4_only_lab_has_no_ipv6_in_any_namespace(host_before: tuple[str, str]) -> None:
    spec = load_lab(None, {"name": unique_name(), "inside_net6": "", "outside_net6": ""})
    record = build_lab(spec, run_dir_for(spec.name), forward="accept")
    try:
        for ns in record.namespace_names():
            assert iptables.run_in_ns(ns, ["ip", "-6", "-o", "addr"]).stdout == "", ns
        n1 = ns_name(spec, "n1")
        assert "HMARK" not in iptables.run_in_ns(n1, ["ip6tables-save"]).stdout
    finally:
        teardown(record)
    assert host_snapshot() == host_before


def test_c1_pings_s1_through_the_cluster(lab: tuple[LabSpec, LabRecord]) -> None:
    spec, _ = lab
    assert ping(spec, "c1", "s1", count=2)


def test_tcp_from_c1_to_s1_carries_data(lab: tuple[LabSpec, LabRecord]) -> None:
    spec, _ = lab
    r = probe(ns_name(spec, "c1"), "tcp-clients", str(spec.host("s1").ip), str(ECHO_PORT), "20001")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ip_netns_exec_runs_inside_a_lab_host(lab: tuple[LabSpec, LabRecord]) -> None:
    spec, _ = lab
    out = subprocess.run(
        ["ip", "netns", "exec", ns_name(spec, "c1"), "ip", "-o", "-4", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "198.18.1.10/24" in out


def _counting_rules(sports: list[int]) -> str:
    lines = ["*filter", ":SW_TEST - [0:0]", "-I FORWARD 1 -j SW_TEST"]
    for sp in sports:
        lines.append(f"-A SW_TEST -i inside -p tcp --sport {sp}")
        lines.append(f"-A SW_TEST -i outside -p tcp --dport {sp}")
    return "\n".join([*lines, "COMMIT", ""])


def _forwarded(ns: str) -> dict[tuple[str, int], int]:
    save = iptables.run_in_ns(ns, ["iptables-save", "-c", "-t", "filter"]).stdout
    counts = {}
    for m in re.finditer(r"^\[(\d+):\d+\] -A SW_TEST -i (\w+) .*--[sd]port (\d+)", save, re.M):
        counts[(m.group(2), int(m.group(3)))] = int(m.group(1))
    return counts


def test_split_buckets_each_flow_is_forwarded_by_exactly_one_node(
    lab: tuple[LabSpec, LabRecord],
) -> None:
    spec, _ = lab
    sports = list(range(21000, 21030))
    for node in spec.node_names:
        iptables.iptables_restore(ns_name(spec, node), _counting_rules(sports))
    own(spec, {"n1": range(1, 5), "n2": range(5, 9), "n3": range(9, 13)})
    try:
        assert iptables.owned_buckets(ns_name(spec, "n2")) == [5, 6, 7, 8]
        r = probe(
            ns_name(spec, "c2"),
            "tcp-clients",
            str(spec.host("s1").ip),
            str(ECHO_PORT),
            ",".join(map(str, sports)),
        )
        assert r.returncode == 0, r.stdout + r.stderr
        counts = {n: _forwarded(ns_name(spec, n)) for n in spec.node_names}
        used = set()
        for sp in sports:
            both_ways = [
                n for n in spec.node_names if counts[n][("inside", sp)] and counts[n][("outside", sp)]
            ]
            any_way = [n for n in spec.node_names if counts[n][("inside", sp)] or counts[n][("outside", sp)]]
            assert both_ways == any_way and len(both_ways) == 1, f"port {sp}: {counts}"
            used.add(both_ways[0])
        # 30 flows over 3 nodes: all three carry some (a miss has odds of about 1e-5).
        assert used == set(spec.node_names)
    finally:
        own(spec, {"n1": ALL_BUCKETS})


def test_cut_links_isolates_a_node_and_restore_brings_it_back(
    lab: tuple[LabSpec, LabRecord],
) -> None:
    spec, record = lab
    cut_links(record, "n1")
    try:
        assert not ping(spec, "c1", "s1")
    finally:
        restore_links(record, "n1")
    assert ping(spec, "c1", "s1", count=2)


def test_sync_segment_connects_nodes_and_block_sync_drops_on_it(
    lab: tuple[LabSpec, LabRecord],
) -> None:
    spec, _ = lab
    n1, n2 = ns_name(spec, "n1"), ns_name(spec, "n2")
    n2_sync = str(spec.node("n2").sync_ip)
    assert probe(n1, "ping", n2_sync, "--count", "2").returncode == 0
    iptables.block_sync(n2, 1.0)
    try:
        assert probe(n1, "ping", n2_sync).returncode != 0
    finally:
        iptables.unblock_sync(n2)
    assert probe(n1, "ping", n2_sync, "--count", "2").returncode == 0


def test_teardown_removes_exactly_the_record(
    own_lab: tuple[LabSpec, LabRecord], host_before: tuple[str, str]
) -> None:
    spec, record = own_lab
    decoy = ns_name(spec, "zz")  # lab-like name, not in the record
    pr_netns.create(decoy)
    decoy_inode = ns_inode(decoy)
    try:
        echo = record.processes[0]
        before = netns_list()
        teardown(record)
        after = netns_list()
        # Relative to our own names: other people's namespaces come and go meanwhile.
        assert set(record.namespace_names()) <= before
        assert not set(record.namespace_names()) & after
        assert decoy in after and ns_inode(decoy) == decoy_inode
        assert not alive(echo)  # the recorded server was stopped (a zombie until reaped counts as gone)
        assert not record.run_dir.exists()
        assert spec.name not in labs_running()
        teardown(record)  # a second teardown is harmless
        assert decoy in netns_list()
    finally:
        if ns_inode(decoy) == decoy_inode:
            pr_netns.remove(decoy)
    assert host_snapshot() == host_before


def test_a_build_that_crashed_midway_is_cleaned_from_its_record() -> None:
    name = unique_name()
    # A real crash: the builder process dies without running any cleanup of its own.
    script = textwrap.dedent(
        f"""
        import os
        from netns import build
        from netns.record import run_dir_for
        from netns.spec import load_lab
        build._configure_hosts = lambda spec: os._exit(3)
        spec = load_lab(None, {{"name": "{name}"}})
        build.build_lab(spec, run_dir_for(spec.name))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    record = LabRecord.load(run_dir_for(name))
    try:
        assert len(record.namespace_names()) == 8
        assert set(record.namespace_names()) <= netns_list()
        assert record.meta["steps"] == ["namespaces", "sysctls", "fabric", "nodes"]
    finally:
        teardown(record)
    assert not set(record.namespace_names()) & netns_list()
    assert not record.run_dir.exists()


def test_a_build_that_fails_midway_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    from netns import build

    def fail(spec: LabSpec, forward: str) -> None:
        raise iptables.IptablesError("simulated failure")

    monkeypatch.setattr(build, "_install_rules", fail)
    spec = load_lab(None, {"name": unique_name()})
    ours = {ns_name(spec, h) for h in ("fabric", *spec.node_names, *(h.name for h in spec.hosts))}
    with pytest.raises(LabBuildError, match="simulated failure"):
        build_lab(spec, run_dir_for(spec.name))
    assert not ours & netns_list()
    assert not run_dir_for(spec.name).exists()


def _queue_stats(ns: str) -> list[int]:
    # /proc/net is per namespace: read inside the node. id_sequence (next to last) counts
    # every packet ever queued.
    text = iptables.run_in_ns(ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    return [int(line.split()[-2]) for line in text.splitlines() if line.strip()]


def test_nfqueue_forwarding_passes_through_the_queue_and_fails_closed() -> None:
    spec = load_lab(None, {"name": unique_name()})
    record = build_lab(spec, run_dir_for(spec.name), forward="nfqueue")
    try:
        own(spec, {"n1": range(1, 5), "n2": range(5, 9), "n3": range(9, 13)})
        assert not ping(spec, "c1", "s1"), "forwarded with no engine listening"
        loops = [
            start_probe(record, ns_name(spec, n), "node", n, "nfq-accept", str(spec.queue_num))
            for n in spec.node_names
        ]
        assert ping(spec, "c1", "s1", count=3)
        assert ping(spec, "c2", "s1", count=3)
        queued = sum(sum(_queue_stats(ns_name(spec, n))) for n in spec.node_names)
        assert queued == 12  # 6 echo requests and 6 replies, each queued on one node only
        for pid in loops:
            os.kill(pid, signal.SIGKILL)
        stop_processes([p for p in record.processes if p.pid in loops])
        for pid in loops:
            record.remove_process(pid)
        assert not ping(spec, "c1", "s1")
        assert not ping(spec, "c2", "s1")
    finally:
        teardown(record)
    assert not set(record.namespace_names()) & netns_list()
