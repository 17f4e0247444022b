"""Capture and decode, two ways: `syncwall capture` on a real lab, then `syncwall decode` and
tshark with our Lua dissector must read the same frames; bad input is reported, never fatal."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns.lab import load_lab_of
from netns.record import RUN_ROOT
from sync.decode import DecodedFrame, decode_capture, udp_pcap
from sync.wire import MsgType
from tests.integration.labtools import nodes, running_lab, status, sw, wait_for
from tests.unit.test_decode import KEY, LAB_ID, A, B, garbage_datagrams, sample_frames, sample_pcap

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tools" / "wireshark" / "syncwall.lua"
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
integration = pytest.mark.integration

FIELDS = ["frame.number", "syncwall.type_name", "syncwall.sender", "syncwall.incarnation", "syncwall.epoch",
          "syncwall.seq", "syncwall.ack", "syncwall.hmac_status", "syncwall.malformed",
          "syncwall.record.key", "syncwall.record.owner", "syncwall.record.version"]
# The frames themselves, not the copies quoted in ICMP errors (a killed node's port is unreachable).
ONLY_SYNC = "syncwall && !icmp"
HMAC_WORDS = {"ok": "ok", "bad": "bad", "unchecked": "not checked"}


# ---- tshark and the dissector -------------------------------------------------------------


def _tshark(pcap: Path, *extra: str, key: bytes | None = None, port: int = 7400) -> str:
    assert TSHARK is not None
    argv = [TSHARK, "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-o", f"syncwall.port:{port}"]
    if key is not None:
        argv += ["-o", f"syncwall.key:{key.hex()}"]
    p = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Lua Error" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    return p.stdout


def tshark_fields(pcap: Path, key: bytes | None = None, port: int = 7400) -> dict[int, dict[str, list[str]]]:
    """Per frame number, each field's values as tshark shows them (several for records)."""
    args = ["-Y", ONLY_SYNC, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
            "-E", "aggregator=|"]
    for fld in FIELDS:
        args += ["-e", fld]
    out: dict[int, dict[str, list[str]]] = {}
    for line in _tshark(pcap, *args, key=key, port=port).splitlines():
        cols = line.split("\t")
        row = {fld: (c.split("|") if c else []) for fld, c in zip(FIELDS, cols, strict=True)}
        out[int(row["frame.number"][0])] = row
    return out


def tshark_verbose(pcap: Path, key: bytes | None = None, port: int = 7400) -> dict[int, str]:
    """`tshark -V` split per frame."""
    text = _tshark(pcap, "-V", "-Y", ONLY_SYNC, key=key, port=port)
    parts = re.split(r"^Frame (\d+): ", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _records(f: DecodedFrame) -> list[dict[str, Any]]:
    if "records" in f.payload:
        return list(f.payload["records"])
    rec = f.payload.get("record")
    return [rec] if rec else []


def assert_tshark_agrees(pcap: Path, key: bytes | None, lab_id: str | None = None,
                         port: int = 7400) -> set[str]:
    """tshark's view of every sync frame equals `syncwall decode`'s; returns the types seen."""
    frames, _ = decode_capture(pcap.read_bytes(), port, key, lab_id)
    assert frames, "no sync frames in the capture"
    rows = tshark_fields(pcap, key, port)
    verbose = tshark_verbose(pcap, key, port)
    assert sorted(rows) == [f.number for f in frames]
    for f in frames:
        row, text = rows[f.number], verbose[f.number]
        where = f"frame {f.number} ({f.type}, {f.malformed or 'well formed'})"
        if f.malformed:
            assert row["syncwall.malformed"], where
            kind = lambda s: s.split(":")[0]  # noqa: E731 - the reason's kind; details differ by decoder
            assert kind(row["syncwall.malformed"][0]) == kind(f.malformed), (where, row["syncwall.malformed"])
            assert "Expert Info (Error/Malformed)" in text, where
            continue
        assert not row["syncwall.malformed"], (where, row["syncwall.malformed"])
        got = {k: row[f"syncwall.{k}"] for k in ("sender", "incarnation", "epoch", "seq", "ack")}
        want = {k: [str(getattr(f, k))] for k in got}
        assert (row["syncwall.type_name"], got) == ([f.type], want), where
        assert row["syncwall.hmac_status"] == [HMAC_WORDS[f.hmac]], where
        recs = _records(f)
        assert row["syncwall.record.key"] == [r["key"] for r in recs], where
        assert row["syncwall.record.owner"] == [r["owner"] for r in recs], where
        assert row["syncwall.record.version"] == [str(r["version"]) for r in recs], where
        # The same fields, as a person reads them in `tshark -V`.
        assert (f"syncwall {f.type} from {f.sender} seq={f.seq} ack={f.ack} epoch={f.epoch} "
                f"hmac={HMAC_WORDS[f.hmac]}") in text, where
        for r in recs:
            assert f"Record key={r['key']} owner={r['owner']} version={r['version']}" in text, where
    return {f.type for f in frames if f.type and not f.malformed}


@needs_tshark
def test_the_dissector_decodes_every_message_type_like_decode(tmp_path: Path) -> None:
    pcap = tmp_path / "all-types.pcap"
    pcap.write_bytes(sample_pcap())
    seen = assert_tshark_agrees(pcap, KEY, LAB_ID)
    assert len(seen) == len(MsgType)  # every MsgType
    rows = tshark_fields(pcap)  # without the key: shown, not checked
    assert {r["syncwall.hmac_status"][0] for r in rows.values()} == {"not checked"}


@needs_tshark
def test_the_dissector_marks_garbage_and_truncated_frames_malformed(tmp_path: Path) -> None:
    pcap = tmp_path / "garbage.pcap"
    good = sample_frames()[3]
    data = bytearray(udp_pcap([(A, B, d) for _, d in garbage_datagrams()] + [(A, B, good)]))
    # Cut the last packet as `tcpdump -s 80` would: caplen 80 of a longer datagram.
    last = len(data) - (14 + 20 + 8 + len(good)) - 16
    data[last + 8 : last + 12] = (80).to_bytes(4, "little")
    pcap.write_bytes(bytes(data[: last + 16 + 80]))
    rows = tshark_fields(pcap, KEY)
    assert len(rows) == len(garbage_datagrams()) + 1
    assert all(r["syncwall.malformed"] for r in rows.values()), rows
    assert "truncated by the capture" in rows[len(rows)]["syncwall.malformed"][0]
    assert_tshark_agrees(pcap, KEY, LAB_ID)


@needs_tshark
def test_the_dissector_flags_a_wrong_key_and_follows_the_port_preference(tmp_path: Path) -> None:
    pcap = tmp_path / "port.pcap"
    pcap.write_bytes(udp_pcap([(("198.18.0.1", 9999), ("198.18.0.2", 9999), f) for f in sample_frames()[:3]]))
    assert tshark_fields(pcap, KEY) == {}  # not the default port: not ours
    rows = tshark_fields(pcap, b"the wrong key", port=9999)
    assert [r["syncwall.hmac_status"] for r in rows.values()] == [["bad"]] * 3
    assert "HMAC does not match" in "".join(tshark_verbose(pcap, b"the wrong key", port=9999).values())


# ---- a real lab ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    with running_lab() as up:
        yield up


def _tcpdumps_writing(path: Path) -> list[int]:
    """Pids of tcpdump processes writing `path` (ours only: matched by the file we gave it)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"tcpdump") and str(path).encode() in argv:
                pids.append(int(d.name))
    return pids


def lab_ip(node: str) -> str:
    return str(load_lab_of("default").node(node).sync_ip) + ":"


def _decode_json(pcap: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sw("decode", str(pcap), "--json").stdout)
    return doc


@integration
def test_capture_of_the_sync_segment_decodes_with_valid_hmac(lab: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sync.pcap"
    p = sw("capture", "--segment", "sync", "-w", str(out), "--seconds", "2")
    assert "capturing the sync bridge br-sync" in p.stderr and "captured" in p.stderr
    assert not _tcpdumps_writing(out)
    doc = _decode_json(out)
    frames = doc["frames"]
    assert frames and doc["summary"]["hmac_checked"]
    assert [f for f in frames if f["hmac"] != "ok" or f["malformed"] or f["other_lab"]] == []
    assert {f["sender"] for f in frames} == set(nodes(status()))
    if TSHARK:
        assert_tshark_agrees(out, (RUN_ROOT / "default" / "sync.key").read_bytes())


@integration
def test_a_kill_and_a_revive_decode_the_same_in_tshark_and_syncwall(lab: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "failover.pcap"
    sw("traffic", "start", "tcp", "--flows", "6", "--client", "c1", "--interval-ms", "100")
    argv = ["--lab", "default", "capture", "--segment", "sync", "-w", str(out), "--seconds", "60"]
    # Started with SIGINT ignored, as from a background job (CI, nohup, `cmd &` in a script):
    # Ctrl-C must stop the capture all the same (it ran on for its 60 s, and CI failed).
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *argv], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stderr is not None
        assert "capturing" in proc.stderr.readline()
        wait_for("connections owned", lambda: sum(n["own"] for n in nodes(status()).values()) >= 6, 15)
        sw("kill", "n2")
        wait_for("n2 failed", lambda: nodes(status())["n2"]["state"] == "failed", 10)
        sw("revive", "n2")
        wait_for("n2 active with buckets again", lambda: (
            (n := nodes(status())["n2"])["state"] == "active" and n["buckets"]), 15)
        # The capture file grows as packets arrive: stop once it holds the end of the resync.
        wait_for("the revived node's resync in the capture", lambda: any(
            f.type == "BULK_END" and f.dst.startswith(lab_ip("n2"))
            for f in decode_capture(out.read_bytes())[0]), 10)
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the capture stops, keeps what it saw
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()  # and its tcpdump stops with it: the capture reaps it in a finally
            proc.wait()
            raise AssertionError("the capture did not stop on SIGINT within 20 s") from None
        err = proc.stderr.read() if proc.stderr else ""
        sw("traffic", "stop", "tcp", check=False)
    assert rc == 0, err
    assert "captured" in err and not _tcpdumps_writing(out)
    doc = _decode_json(out)
    assert doc["summary"]["malformed"] == 0 and doc["summary"]["hmac_bad"] == 0
    seen = set(doc["summary"]["types"])
    # A revived node says hello, asks for a bulk resync and gets it; the leader sends views.
    want = {"HELLO", "HEARTBEAT", "ACK", "RECORDS", "VIEW", "BULK_REQUEST", "BULK_START", "BULK_END"}
    assert want <= seen, seen
    if TSHARK:
        assert assert_tshark_agrees(out, (RUN_ROOT / "default" / "sync.key").read_bytes()) == seen


@integration
def test_capture_on_a_node_and_clear_errors(lab: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "n1-sync.pcap"
    p = sw("capture", "--segment", "sync", "--node", "n1", "-w", str(out), "--seconds", "1")
    assert "node n1's sync" in p.stderr
    senders = {f["sender"] for f in _decode_json(out)["frames"]}
    assert "n1" in senders and len(senders) == len(nodes(status()))
    # The bad captures, on a real one: another lab's frames, a wrong key, a cut file.
    other = sw("decode", str(out), "--lab-id", "999").stdout
    assert "OTHER LAB" in other and "from another lab" in other.splitlines()[-1]
    wrong = subprocess.run([sys.executable, "-m", "app.cli", "decode", str(out), "--key", "00" * 32],
                           capture_output=True, text=True, check=True).stdout
    assert "hmac=bad" in wrong and "with a bad HMAC (wrong key" in wrong.splitlines()[-1]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(out.read_bytes()[:-7])
    p = sw("decode", str(cut))
    assert "truncated pcap" in p.stderr and "sync frames" in p.stdout
    bad = sw("capture", "--segment", "sync", "--node", "n9", "-w", str(out), check=False)
    assert bad.returncode == 1 and "no node 'n9'" in bad.stderr
    bad = sw("capture", "--segment", "dmz", "-w", str(out), check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = sw("--lab", "nolab", "capture", "--segment", "sync", "-w", str(out), check=False)
    assert bad.returncode == 1 and "'nolab' is not running" in bad.stderr
    bad = sw("capture", "--segment", "sync", "-w", str(tmp_path / "no" / "dir.pcap"), check=False)
    assert bad.returncode == 1 and "no folder" in bad.stderr
    bad = sw("--lab", "nolab", "decode", str(out), check=False)
    assert bad.returncode == 1 and "has no key" in bad.stderr
    assert os.path.getsize(out) > 24
