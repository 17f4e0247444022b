"""engine.nfq's NFQNL_MSG_CONFIG message and ack parsing, byte for byte (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from engine.nfq import (
    GSO_COPY_RANGE_BYTES,
    NfqError,
    QueueFlag,
    config_flags_message,
    find_ack,
)


def test_gso_config_message_layout_matches_libnetfilter_queue() -> None:
    msg = config_flags_message(7, QueueFlag.GSO, QueueFlag.GSO, seq=42)
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) == 16 + 4 + 8 + 8
    assert msg_type == (3 << 8) | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == 0x1 | 0x4  # request, ack
    assert (seq, pid) == (42, 0)
    assert msg[16:20] == bytes([0, 0]) + struct.pack("!H", 7)  # AF_UNSPEC, v0, queue 7 big-endian
    # NFQA_CFG_MASK (4) then NFQA_CFG_FLAGS (5), both big-endian NFQA_CFG_F_GSO (4)
    assert msg[20:28] == struct.pack("=HH", 8, 4) + struct.pack("!I", 4)
    assert msg[28:36] == struct.pack("=HH", 8, 5) + struct.pack("!I", 4)


def test_copy_range_goes_in_a_padded_params_attribute() -> None:
    msg = config_flags_message(0, QueueFlag.GSO, QueueFlag.GSO, seq=1, copy_range_bytes=GSO_COPY_RANGE_BYTES)
    attr_len, attr_type = struct.unpack_from("=HH", msg, 20)
    assert (attr_len, attr_type) == (9, 2)  # NFQA_CFG_PARAMS: 4 + packed {be32 range, u8 mode}
    assert struct.unpack_from("!IB", msg, 24) == (GSO_COPY_RANGE_BYTES, 2)  # NFQNL_COPY_PACKET
    assert len(msg) % 4 == 0 and len(msg) == 16 + 4 + 12 + 8 + 8
    assert GSO_COPY_RANGE_BYTES >= 1500  # a whole MTU-sized packet still reaches the engine


def test_bad_queue_number_or_range_is_refused() -> None:
    with pytest.raises(NfqError, match="queue number"):
        config_flags_message(70000, QueueFlag.GSO, QueueFlag.GSO, seq=1)
    with pytest.raises(NfqError, match="copy range"):
        config_flags_message(0, QueueFlag.GSO, QueueFlag.GSO, seq=1, copy_range_bytes=0)


def _error_msg(seq: int, code: int) -> bytes:
    body = struct.pack("=i", code) + struct.pack("=IHHII", 16, 0x302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 123) + body


def test_find_ack_reads_our_answer_among_other_messages() -> None:
    packet_msg = struct.pack("=IHHII", 24, (3 << 8) | 0, 0, 0, 0) + bytes(8)
    assert find_ack(packet_msg + _error_msg(9, 0), 9) == 0
    assert find_ack(_error_msg(9, -1), 9) == 1  # EPERM: the queue is bound by another socket
    assert find_ack(_error_msg(8, 0), 9) is None
    assert find_ack(packet_msg, 9) is None
    assert find_ack(b"\x01\x02", 9) is None
