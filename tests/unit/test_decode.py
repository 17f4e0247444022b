"""The capture decoder: pcap/pcapng files written here, frames made by sync.wire's encoder;
every message type decodes, bad input is reported as malformed, nothing raises."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cli import main
from sync.agent import Mode
from sync.decode import (
    MODE_NAMES,
    STATE_NAMES,
    CaptureError,
    decode_capture,
    read_capture,
    udp_pcap,
)
from sync.membership import MemberState, compute_view
from sync.records import NO_BUCKET, Record, Scope, Trigger
from sync.wire import TRIGGER_CODE, Frame, MsgType, batch_records, encode_frame, record_to_wire

Capsys = pytest.CaptureFixture[str]
KEY = bytes(range(32))
LAB_ID = "4242"
PORT = 7400
A, B = ("198.18.0.11", PORT), ("198.18.0.12", PORT)

REC = Record(b"\x06\xc6\x12\x01\x02\x03", Scope.NODE, "n1", 5, 17, [1, "established", b"\xff"], False)
COMMON = Record(b"exp-1", Scope.COMMON, "n2", 2, NO_BUCKET, [21], False)
TOMB = Record(b"gone", Scope.NODE, "n3", 9, 3, [], True)


def _view_payload() -> list[object]:
    states = {"n1": MemberState.ACTIVE, "n2": MemberState.FAILED, "n3": MemberState.ACTIVE}
    return compute_view(("n1", "n2", "n3"), states, 6, 1, 4, "n1").to_wire()


def sample_payloads() -> list[tuple[MsgType, object]]:
    """One payload of every message type, shaped as the agent sends it."""
    blob = next(batch_records([REC, COMMON, TOMB], 1200)).blob
    return [
        (MsgType.HELLO, [Mode.JOINING.value, False]),
        (MsgType.HEARTBEAT, [Mode.ACTIVE.value, True]),
        (MsgType.ACK, None),
        (MsgType.RECORDS, [TRIGGER_CODE[Trigger.MODIFIED], blob]),
        (MsgType.BULK_REQUEST, []),
        (MsgType.BULK_START, [3]),
        (MsgType.BULK_END, [3]),
        (MsgType.STATE_REQUEST, [REC.key]),
        (MsgType.STATE_REPLY, [REC.key, record_to_wire(REC)]),
        (MsgType.STATE_REPLY, [b"missing", None]),
        (MsgType.VIEW, _view_payload()),
        (MsgType.LEAVE, []),
        (MsgType.KEYS, [True, False, [REC.key, b"gone"]]),
        (MsgType.WANT, [REC.key]),
    ]


def sample_frames(key: bytes = KEY, lab: str = LAB_ID) -> list[bytes]:
    return [
        encode_frame(Frame("n1", 1001, 2002, 4, 10 + i, 7 + i, t, pl, lab), key)
        for i, (t, pl) in enumerate(sample_payloads())
    ]


def sample_pcap(key: bytes = KEY, lab: str = LAB_ID) -> bytes:
    return udp_pcap([(A, B, f) for f in sample_frames(key, lab)])


def garbage_datagrams() -> list[tuple[str, bytes]]:
    """(expected reason prefix, datagram) pairs: every way a sync datagram can be wrong."""
    good = sample_frames()[3]
    return [
        ("short", b"\x01\x02\x03"),
        ("undecodable", b"\xc1" * 80),  # 0xc1 is never valid msgpack
        ("undecodable", msgpack.packb([1, 2, 3, "padding to a plausible size"]) + bytes(32)),
        ("bad-version", msgpack.packb([9, LAB_ID, "n1", 1, 0, 0, 1, 0, 2, [1, True]]) + bytes(32)),
        ("unknown-type", msgpack.packb([1, LAB_ID, "n1", 1, 0, 0, 1, 0, 99, None]) + bytes(32)),
        ("undecodable", msgpack.packb([1, LAB_ID, "n1", -1, 0, 0, 1, 0, 2, [1, True]]) + bytes(32)),
        ("bad-payload", msgpack.packb([1, LAB_ID, "n1", 1, 0, 0, 1, 0, 4, [0, b"\x93\x01\x02\x03"]])
         + bytes(32)),
        ("bad-payload", msgpack.packb([1, LAB_ID, "n1", 1, 0, 0, 1, 0, 2, [1]]) + bytes(32)),
        ("bad-view", msgpack.packb([1, LAB_ID, "n1", 1, 0, 0, 1, 0, 10, [1, 2]]) + bytes(32)),
        ("undecodable", good[: len(good) // 2]),  # cut in the middle of the body
    ]


def test_every_message_type_decodes_with_its_fields() -> None:
    frames, problems = decode_capture(sample_pcap(), PORT, KEY, LAB_ID)
    assert problems == []
    sent = sample_payloads()
    assert [f.type for f in frames] == [t.name for t, _ in sent]
    for i, f in enumerate(frames):
        assert not f.malformed, f
        assert (f.hmac, f.other_lab, f.sender, f.lab, f.version) == ("ok", False, "n1", LAB_ID, 1)
        assert (f.incarnation, f.to_inc, f.epoch, f.seq, f.ack) == (1001, 2002, 4, 10 + i, 7 + i)
        assert (f.src, f.dst, f.number) == ("198.18.0.11:7400", "198.18.0.12:7400", i + 1)
    by_type = {f.type: f.payload for f in frames}
    assert by_type["HELLO"] == {"mode": "joining", "ready": False}
    assert by_type["HEARTBEAT"] == {"mode": "active", "ready": True}
    recs = by_type["RECORDS"]
    assert recs["trigger"] == "state-modified"
    assert recs["records"] == [
        {"key": REC.key.hex(), "scope": "node", "owner": "n1", "version": 5, "bucket": 17, "deleted": False,
         "data": [1, "established", "ff"]},
        {"key": b"exp-1".hex(), "scope": "common", "owner": "n2", "version": 2, "bucket": NO_BUCKET,
         "deleted": False, "data": [21]},
        {"key": b"gone".hex(), "scope": "node", "owner": "n3", "version": 9, "bucket": 3, "deleted": True,
         "data": []},
    ]
    assert by_type["BULK_START"] == {"count": 3}
    assert by_type["STATE_REQUEST"] == {"key": REC.key.hex()}
    assert frames[8].payload["record"]["version"] == 5
    assert frames[9].payload == {"key": b"missing".hex(), "record": None}
    view = by_type["VIEW"]
    assert view["view_epoch"] == 4 and view["proposer"] == "n1"
    assert view["states"] == ["active", "failed", "active"]
    assert set(view["bucket_owner"]) == {"n1", "n3"}
    assert by_type["KEYS"] == {"first": True, "last": False, "keys": [REC.key.hex(), b"gone".hex()]}
    assert by_type["WANT"] == {"keys": [REC.key.hex()]}


def test_a_wrong_key_another_lab_and_no_key_are_told_apart() -> None:
    wrong, _ = decode_capture(sample_pcap(), PORT, b"another key", LAB_ID)
    assert {f.hmac for f in wrong} == {"bad"} and not any(f.malformed for f in wrong)
    other, _ = decode_capture(sample_pcap(lab="77"), PORT, KEY, LAB_ID)
    assert all(f.other_lab and f.lab == "77" and f.hmac == "ok" for f in other)
    unchecked, _ = decode_capture(sample_pcap(), PORT)
    assert {f.hmac for f in unchecked} == {"unchecked"} and unchecked[3].type == "RECORDS"


def test_malformed_datagrams_say_why() -> None:
    cases = garbage_datagrams()
    frames, _ = decode_capture(udp_pcap([(A, B, d) for _, d in cases]), PORT, KEY, LAB_ID)
    assert len(frames) == len(cases)
    for (want, _), f in zip(cases, frames, strict=True):
        assert f.malformed.startswith(want), (want, f)
        assert f.hmac in ("bad", "unchecked")


def test_a_datagram_cut_by_the_snap_length_is_malformed() -> None:
    pcap = bytearray(udp_pcap([(A, B, sample_frames()[3])]))
    # Keep the first 60 bytes of the packet, as `tcpdump -s 60` would.
    struct.pack_into("<I", pcap, 24 + 8, 60)
    frames, problems = decode_capture(bytes(pcap[: 24 + 16 + 60]), PORT, KEY)
    assert problems == []
    assert frames[0].malformed.startswith("truncated by the capture")


def test_other_ports_and_protocols_are_skipped() -> None:
    pcap = udp_pcap([(("198.18.1.10", 5000), ("198.18.2.10", 53), b"dns?"), (A, B, sample_frames()[1])])
    frames, _ = decode_capture(pcap, PORT, KEY)
    assert [f.type for f in frames] == ["HEARTBEAT"] and frames[0].number == 2


def test_a_truncated_file_keeps_the_frames_before_the_cut() -> None:
    pcap = sample_pcap()
    frames, problems = decode_capture(pcap[:-40], PORT, KEY)
    assert len(frames) == len(sample_payloads()) - 1
    assert problems and "truncated pcap" in problems[0]


def test_a_file_that_is_no_capture_is_refused() -> None:
    with pytest.raises(CaptureError, match="not a pcap"):
        read_capture(b"hello, this is text\n")
    with pytest.raises(CaptureError, match="0 bytes"):
        read_capture(b"")


def _pcapng(frames: list[bytes], tsresol: int = 9) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    out += block(1, struct.pack("<HHI", 1, 0, 0) + opts)
    for i, packet in enumerate(read_capture(udp_pcap([(A, B, f) for f in frames])).packets):
        pkt = packet.data
        ts = 1_700_000_000 * 10**tsresol + i
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(pkt), len(pkt)) + pkt)
    return out


def test_pcapng_is_read_with_its_timestamp_resolution() -> None:
    frames, problems = decode_capture(_pcapng(sample_frames()[:3]), PORT, KEY, LAB_ID)
    assert problems == []
    assert [f.type for f in frames] == ["HELLO", "HEARTBEAT", "ACK"]
    assert all(f.hmac == "ok" for f in frames)
    assert frames[0].time_s == pytest.approx(1_700_000_000, abs=1e-3)


def test_the_name_tables_agree_with_the_agent() -> None:
    assert tuple(m.name.lower() for m in sorted(Mode, key=lambda m: m.value)) == MODE_NAMES
    view = compute_view(("a", "b", "c", "d"), {"a": MemberState.ACTIVE, "b": MemberState.JOINING,
                                             "c": MemberState.FAILED, "d": MemberState.OFFLINE}, 4, 1, 1)
    assert [STATE_NAMES[c] for c in view.to_wire()[2]] == [s.value for s in view.states]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400))
def test_no_input_makes_the_decoder_raise(junk: bytes, cut: int) -> None:
    decode_capture(udp_pcap([(A, B, junk)]), PORT, KEY, LAB_ID)
    # A mutated frame and a file cut anywhere: CaptureError at worst, never anything else.
    frame = bytearray(sample_frames()[3])
    frame[cut % len(frame)] ^= 0x5A
    decode_capture(udp_pcap([(A, B, bytes(frame))]), PORT, KEY, LAB_ID)
    with contextlib.suppress(CaptureError):
        read_capture(sample_pcap()[:cut])


def test_the_decode_command_prints_frames_and_json(tmp_path: Path, capsys: Capsys) -> None:
    pcap = tmp_path / "sync.pcap"
    pcap.write_bytes(udp_pcap([(A, B, f) for f in sample_frames()] + [(A, B, b"junk")]))
    assert main(["decode", str(pcap), "--key", KEY.hex(), "--lab-id", LAB_ID]) == 0
    out = capsys.readouterr().out
    assert "RECORDS from n1" in out and f"key={REC.key.hex()} owner=n1 version=5" in out
    assert "MALFORMED: short" in out
    assert main(["decode", str(pcap), "--key", KEY.hex(), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["malformed"] == 1 and doc["summary"]["senders"] == ["n1"]
    assert doc["summary"]["types"]["STATE_REPLY"] == 2


def test_the_decode_command_refuses_bad_files_clearly(tmp_path: Path, capsys: Capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a capture")
    assert main(["decode", str(text)]) == 1
    assert "not a pcap or pcapng file" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing.pcap")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["decode", str(text), "--key", "zz-not-hex"]) == 1
    assert "neither a key file nor a key in hex" in capsys.readouterr().err
