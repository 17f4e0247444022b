"""The lab spec: the default lab loads as DESIGN.md describes it; every bad field names itself."""

from __future__ import annotations

import signal
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from netns.iptables import hmark_rnd, node_rules, owned_chain_text
from netns.record import LabRecord, ProcEntry, labs_running, proc_start_time, teardown
from netns.spec import LabSpecError, load_lab, spec_to_dict, validate
from sync.membership import MemberState, compute_view


def test_the_default_lab_is_the_one_in_the_design() -> None:
    spec = load_lab(None)
    assert spec.name == "default"
    assert [(n.name, str(n.sync_ip)) for n in spec.nodes] == [
        ("n1", "198.18.0.11"),
        ("n2", "198.18.0.12"),
        ("n3", "198.18.0.13"),
    ]
    hosts = {h.name: (h.segment, str(h.ip), h.role) for h in spec.hosts}
    assert hosts == {
        "c1": ("inside", "198.18.1.10", "client"),
        "c2": ("inside", "198.18.1.11", "client"),
        "s1": ("outside", "198.18.2.10", "server"),
        "s2": ("outside", "198.18.2.11", "ftp"),
    }
    assert spec.sync_net == IPv4Network("198.18.0.0/24")
    assert spec.gateway_inside_ip == IPv4Address("198.18.1.1")
    assert spec.gateway_outside_ip == IPv4Address("198.18.2.1")
    assert (spec.buckets, spec.backups, spec.policy, spec.interval_ms) == (12, 1, "hybrid", 1000)
    assert (spec.heartbeat_ms, spec.miss_limit, spec.sync_port, spec.hold_timeout_ms) == (
        10,
        10,
        7400,
        200,
    )
    assert spec.ns_name("n1") == "swdefault-n1"
    kinds = [(r["proto"], r.get("dport"), r.get("helper")) for r in spec.rules]
    assert kinds == [
        ("tcp", "5000-5999", None),  # c2, translated (docs/nat.md)
        ("udp", "5000-5999", None),
        ("tcp", 8080, None),  # the port forward to s1
        ("tcp", "5000-5999", None),
        ("tcp", 21, "ftp"),
        ("udp", "5000-5999", None),
        ("icmp", None, None),
        ("tcp", "5000-5999", None),  # the same services over IPv6
        ("tcp", 21, "ftp"),
        ("udp", "5000-5999", None),
        ("icmp", None, None),
    ]


def test_a_lab_file_only_says_what_differs(tmp_path: Path) -> None:
    f = tmp_path / "lab.toml"
    f.write_text(
        'name = "class1"\npolicy = "periodic"\ninside_net = "10.9.0.0/24"\n'
        '[[hosts]]\nname = "pc"\nsegment = "inside"\nip = "10.9.0.5"\nrole = "client"\n'
    )
    spec = load_lab(f)
    assert (spec.name, spec.policy, spec.buckets) == ("class1", "periodic", 12)
    assert spec.gateway_inside_ip == IPv4Address("10.9.0.1")  # follows the network
    assert [h.name for h in spec.hosts] == ["pc"]
    assert spec.lab_id != load_lab(None).lab_id


def test_overrides_apply_last_and_nodes_may_be_a_count() -> None:
    spec = load_lab(None, {"nodes": 5, "backups": 2, "policy": "on-demand", "name": "big"})
    assert spec.node_names == ("n1", "n2", "n3", "n4", "n5")
    assert str(spec.nodes[4].sync_ip) == "198.18.0.15"
    assert (spec.backups, spec.policy) == (2, "on-demand")


@pytest.mark.parametrize("count", [3, 5, 8, 16])
def test_the_default_bucket_count_gives_every_node_an_even_share(count: int) -> None:
    spec = load_lab(None, {"nodes": count, "name": f"even{count}"})
    assert spec.buckets == 4 * count
    view = compute_view(spec.node_names, {n: MemberState.ACTIVE for n in spec.node_names},
                        spec.buckets, spec.backups, epoch=1)
    shares = [len(view.buckets_of(n)) for n in spec.node_names]
    assert max(shares) == min(shares) == 4, shares


def test_a_lab_files_own_bucket_count_is_kept(tmp_path: Path) -> None:
    f = tmp_path / "odd.toml"
    f.write_text('name = "odd"\nbuckets = 10\n')
    assert load_lab(f, {"nodes": 4}).buckets == 10
    assert validate(spec_to_dict(load_lab(None, {"nodes": 8}))).buckets == 32  # as written, not recounted


def test_spec_round_trips_through_a_plain_dict() -> None:
    spec = load_lab(None)
    assert validate(spec_to_dict(spec)) == spec


BAD = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"buckets": "12"}, "buckets: expected int"),
    ({"buckets": True}, "buckets: expected int"),
    ({"differential": 1}, "differential: expected bool"),
    ({"name": "Big Lab"}, "name: expected 1-12 characters"),
    ({"name": "a-very-long-lab-name"}, "name: expected 1-12 characters"),
    ({"policy": "sometimes"}, "policy: expected one of on-demand, periodic, hybrid"),
    ({"sync_net": "198.18.0.1/24"}, "sync_net: expected an IPv4 network"),
    ({"outside_net": "198.18.1.128/25"}, "outside_net: 198.18.1.128/25 overlaps inside_net"),
    ({"gateway_inside_ip": "198.18.2.1"}, "gateway_inside_ip: expected an IPv4 address inside"),
    ({"gateway_mac_inside": "01:00:5e:00:00:01"}, "gateway_mac_inside: expected a unicast MAC"),
    ({"nodes": []}, "nodes: a lab needs at least 1 node"),
    ({"nodes": 0}, "nodes: expected 1..64"),
    ({"buckets": 2}, "buckets: 2 buckets for 3 nodes"),
    ({"backups": 3}, "backups: expected 0..2"),
    ({"sync_port": 70000}, "sync_port: expected 1..65535"),
    ({"interval_ms": 0}, "interval_ms: expected 1..3600000"),
    ({"rules": [1]}, "rules[0]: expected a table"),
    ({"hosts": {"name": "c1"}}, "hosts: expected a list of tables"),
    ({"traffic": "lots"}, "traffic: expected one of none, demo (what `up` starts), got 'lots'"),
    ({"traffic": True}, "traffic: expected str, got True"),
]


def test_a_lab_file_may_ask_for_demo_traffic(tmp_path: Path) -> None:
    assert load_lab(None).traffic == "none"
    f = tmp_path / "lab.toml"
    f.write_text('traffic = "demo"\n')
    assert load_lab(f).traffic == "demo"
    assert validate(spec_to_dict(load_lab(f))).traffic == "demo"


@pytest.mark.parametrize(("override", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_field_names_itself(override: dict[str, object], message: str) -> None:
    with pytest.raises(LabSpecError) as e:
        load_lab(None, override)
    assert message in str(e.value)


def _nodes(*items: dict[str, object]) -> dict[str, object]:
    return {"nodes": list(items)}


BAD_ITEMS = [
    (
        _nodes(
            {"name": "n1", "sync_ip": "198.18.0.11"},
            {"name": "n2", "sync_ip": "198.18.0.12"},
            {"name": "n3", "sync_ip": "10.0.0.1"},
        ),
        'nodes[2].sync_ip: expected an IPv4 address inside 198.18.0.0/24, got "10.0.0.1"',
    ),
    (_nodes({"name": "n1", "sync_ip": "198.18.0.0"}), "nodes[0].sync_ip: expected an IPv4 address"),
    (_nodes({"name": "n1", "sync_ip": "nope"}), "nodes[0].sync_ip: expected an IPv4 address"),
    (_nodes({"name": "n1"}), "nodes[0].sync_ip: missing"),
    (_nodes({"name": "n1", "sync_ip": "198.18.0.11", "cpu": 2}), "nodes[0].cpu: unknown key"),
    (_nodes({"name": "N-1", "sync_ip": "198.18.0.11"}), "nodes[0].name: expected a letter"),
    (_nodes({"name": "n1", "sync_ip": 5}), "nodes[0].sync_ip: expected str"),
    (
        _nodes({"name": "n1", "sync_ip": "198.18.0.11"}, {"name": "n1", "sync_ip": "198.18.0.12"}),
        'nodes[1].name: "n1" is already used (nodes[0])',
    ),
    (
        _nodes({"name": "n1", "sync_ip": "198.18.0.11"}, {"name": "n2", "sync_ip": "198.18.0.11"}),
        "nodes[1].sync_ip: 198.18.0.11 is already used by nodes[0]",
    ),
    (_nodes({"name": "c1", "sync_ip": "198.18.0.11"}), 'hosts[0].name: "c1" is already used'),
    (_nodes({"name": "fabric", "sync_ip": "198.18.0.11"}), 'nodes[0].name: "fabric" is already'),
    (
        {"hosts": [{"name": "c1", "segment": "middle", "ip": "198.18.1.10", "role": "client"}]},
        "hosts[0].segment: expected one of inside, outside",
    ),
    (
        {"hosts": [{"name": "c1", "segment": "inside", "ip": "198.18.2.10", "role": "client"}]},
        "hosts[0].ip: expected an IPv4 address inside 198.18.1.0/24",
    ),
    (
        {"hosts": [{"name": "c1", "segment": "inside", "ip": "198.18.1.1", "role": "client"}]},
        "hosts[0].ip: 198.18.1.1 is already used by gateway_inside_ip",
    ),
    (
        {"hosts": [{"name": "c1", "segment": "inside", "ip": "198.18.1.9", "role": "hacker"}]},
        "hosts[0].role: expected one of client, server, ftp",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_ITEMS, ids=[m.split(":")[0] for _, m in BAD_ITEMS])
def test_a_bad_node_or_host_field_names_itself(override: dict[str, object], message: str) -> None:
    with pytest.raises(LabSpecError) as e:
        load_lab(None, override)
    assert message in str(e.value)


def test_a_lab_file_that_is_not_toml_says_where(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("name = \n")
    with pytest.raises(LabSpecError, match=r"broken\.toml: not valid TOML"):
        load_lab(f)
    with pytest.raises(LabSpecError, match="cannot read lab file"):
        load_lab(tmp_path / "missing.toml")


def test_node_rules_follow_the_recipe() -> None:
    text = node_rules(buckets=12, rnd=hmark_rnd(7), queue_num=3)
    assert "-A PREROUTING -i inside -j NOTRACK" in text
    assert "--hmark-tuple src,dst,sport,dport,proto --hmark-mod 12 --hmark-offset 1" in text
    assert "-A FORWARD -j NFQUEUE --queue-num 3" in text
    assert "queue-bypass" not in text
    # The sync interface is never hashed or queued, and the node starts owning nothing.
    assert not [ln for ln in text.splitlines() if "-i sync" in ln and ("HMARK" in ln or "NOTRACK" in ln)]
    assert "-A SW_OWNED -j DROP" in text and "RETURN" not in text
    assert "-A FORWARD -j ACCEPT" in node_rules(12, 1, 0, forward="accept")


def test_owned_chain_returns_each_owned_mark_then_drops() -> None:
    assert owned_chain_text([3, 1, 3]).splitlines() == [
        ":SW_OWNED - [0:0]",
        "-A SW_OWNED -m mark --mark 1 -j RETURN",
        "-A SW_OWNED -m mark --mark 3 -j RETURN",
        "-A SW_OWNED -j DROP",
    ]


def test_hmark_seed_is_stable_per_lab_and_differs_between_labs() -> None:
    assert hmark_rnd(42) == hmark_rnd(42)
    assert hmark_rnd(42) != hmark_rnd(43)
    assert 0 < hmark_rnd(0) < 2**32


def test_a_record_survives_a_round_trip_through_its_file(tmp_path: Path) -> None:
    import os

    run_root = tmp_path / "run"
    run_dir = run_root / "x"
    run_dir.mkdir(parents=True)
    rec = LabRecord(lab="x", run_dir=run_dir)
    rec.add_process(os.getpid(), "test", "me")
    rec.meta["steps"] = ["namespaces"]
    rec.save()
    back = LabRecord.load(run_dir)
    assert back == rec
    assert back.processes[0].start_time == proc_start_time(os.getpid())
    back.remove_process(os.getpid())
    assert LabRecord.load(run_dir).processes == []
    assert labs_running(run_root) == ["x"]


def test_teardown_stops_recorded_processes_but_not_a_reused_pid(tmp_path: Path) -> None:
    import subprocess

    mine = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        rec = LabRecord(lab="x", run_dir=tmp_path / "x")
        rec.run_dir.mkdir()
        rec.add_process(mine.pid, "workload", "sleep")
        start = proc_start_time(other.pid)
        assert start is not None
        # Same pid, other start time: a process that merely reuses a recorded pid.
        rec.processes.append(ProcEntry(other.pid, start + 1, "workload", "stale"))
        rec.save()
        teardown(rec)
        assert mine.wait(timeout=5) == -signal.SIGTERM
        assert other.poll() is None
        assert not rec.run_dir.exists()
        teardown(rec)  # harmless the second time
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_teardown_never_removes_a_folder_without_the_record(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.write_text("not the lab's")
    teardown(LabRecord(lab="x", run_dir=tmp_path))
    assert keep.exists()


def test_a_record_keeps_a_process_labelled_by_its_path_but_refuses_a_namespace_path(tmp_path: Path) -> None:
    # The throughput and conn-rate benches label their programs by path: that must round-trip,
    # while a namespace name with a slash would become a path outside /run/netns at teardown.
    from netns.record import NsEntry

    rec = LabRecord("t", tmp_path)
    rec.processes.append(ProcEntry(1, 2, "bench", "/tmp/swbench-x/conn_rate"))
    rec.save()
    assert LabRecord.load(tmp_path).processes[0].name == "/tmp/swbench-x/conn_rate"
    with pytest.raises(TypeError, match="plain name"):
        NsEntry("../etc", 1)


def test_the_default_lab_queues_its_nat_address_and_skips_translated_packets_in_forward() -> None:
    from netns.build import nat_hosts
    from netns.iptables import nat_addresses

    spec = load_lab(None)
    assert nat_addresses(spec.rules) == ["198.18.2.1"]
    # c1 is in no NAT rule: it keeps its checksum offload
    assert nat_hosts(spec) == ["c2", "s1", "s2"]
    text = node_rules(buckets=12, rnd=hmark_rnd(7), queue_num=3, nat_addrs=nat_addresses(spec.rules))
    lines = text.splitlines()
    owned = lines.index("-A PREROUTING -i outside -j SW_OWNED")
    queued = lines.index("-A PREROUTING -i outside -d 198.18.2.1/32 -p tcp -j NFQUEUE --queue-num 3")
    assert owned < queued  # only the bucket's owner queues a packet to the cluster address
    skip = lines.index("-A FORWARD -m mark --mark 0x40000000/0x40000000 -j ACCEPT")
    assert skip < lines.index("-A FORWARD -j NFQUEUE --queue-num 3")
    # without NAT, or without a queue, the rule set is as before
    assert "0x40000000" not in node_rules(buckets=12, rnd=1, queue_num=3)
    assert "NFQUEUE" not in node_rules(buckets=12, rnd=1, queue_num=3, forward="accept",
                                       nat_addrs=["198.18.2.1"])


def test_a_snat_address_that_is_no_gateway_address_is_refused(tmp_path: Path) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text('name = "t"\n[[rules]]\nname = "x"\naction = "accept"\nproto = "tcp"\n'
                   'snat = "198.18.2.99"\n')
    with pytest.raises(LabSpecError, match=r"rules\[0\]\.snat: 198\.18\.2\.99 is not a gateway address"):
        load_lab(lab)


def test_backed_up_buckets_go_to_the_shadow_queue_before_the_node_queue() -> None:
    from engine.nfq import shadow_chain_text

    text = node_rules(12, 0x1234, 0)
    lines = text.splitlines()
    # The lab's rules: an empty shadow chain, jumped to just before the NFQUEUE to the node's queue.
    assert ":SW_SHADOW - [0:0]" in lines
    assert lines.index("-A FORWARD -j SW_SHADOW") + 1 == lines.index("-A FORWARD -j NFQUEUE --queue-num 0")
    assert "-A FORWARD -j SW_SHADOW" not in node_rules(12, 0x1234, 0, forward="accept")
    # The node's rewrite: its backed-up buckets to its shadow queue, or none without one.
    assert shadow_chain_text([5, 2], 1).splitlines() == [
        ":SW_SHADOW - [0:0]",
        "-A SW_SHADOW -m mark --mark 2 -j NFQUEUE --queue-num 1",
        "-A SW_SHADOW -m mark --mark 5 -j NFQUEUE --queue-num 1",
    ]
    assert shadow_chain_text([5, 2], None) == ":SW_SHADOW - [0:0]"
