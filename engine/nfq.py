"""NFQUEUE queue flags the NetfilterQueue binding does not expose: GSO hand-over (NFQA_CFG_F_GSO) above all.

NetfilterQueue 1.1.0 never sets NFQA_CFG_F_GSO, so the kernel segments every GSO/GRO
super-packet before queueing it and a TCP bulk flow costs one verdict per MSS-sized
segment (~1 Gbit/s instead of ~13 on this kind of machine). The flag is a per-queue
setting made with an NFQNL_MSG_CONFIG message, and the kernel accepts config messages
for a queue only from the netlink socket that bound it (it checks the port id), so we
send the message on the binding's own socket, through a duplicate of its descriptor.

A verdict without new bytes applies to the whole packet, so it is safe to receive a GSO packet
truncated to the copy range. The one packet the engine rewrites is a translated one (NAT,
engine/nat.py), and it drops a translated packet captured only in part (`nat-truncated`)
rather than cut it: the lab turns TX offload off on the hosts whose traffic is translated, so
such packets do not arrive there. But the binding reads each
netlink message into a 4096-byte buffer and caps the copy range at 4016 bytes, which
leaves only 80 bytes for metadata; a truncated GSO packet carries more (NFQA_CAP_LEN,
NFQA_SKB_INFO, ...), its message is cut, never parsed, never given a verdict, and TCP
stalls (measured: 0.8 Mbit/s). So enable_gso() also lowers the copy range to
GSO_COPY_RANGE_BYTES, in the same config message.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, Protocol

from syncwall_errors import SystemToolError

log = logging.getLogger(__name__)

# The mangle chain that decides which HMARK buckets this node forwards: the lab installs it
# (netns/iptables.py) and the node rewrites it whenever its buckets change.
OWNED_CHAIN = "SW_OWNED"


def owned_chain_text(buckets: Iterable[int], queued: Iterable[int] = ()) -> str:
    """The body of the owned-bucket chain: RETURN (on to the engine) for owned marks, DROP the rest.

    `queued`: the buckets this node backs up with lossless takeover on; they go on to the
    queue as well, where the node holds them without a verdict (engine/replay.py)."""
    lines = [f":{OWNED_CHAIN} - [0:0]"]
    lines += [f"-A {OWNED_CHAIN} -m mark --mark {b} -j RETURN" for b in sorted(set(buckets) | set(queued))]
    lines.append(f"-A {OWNED_CHAIN} -j DROP")
    return "\n".join(lines)


# The filter chain that sends the backed-up buckets to the node's shadow queue (lossless on,
# engine/queue_io.py): FORWARD jumps to it just before its NFQUEUE to the node's own queue.
SHADOW_CHAIN = "SW_SHADOW"


def shadow_chain_text(queued: Iterable[int] = (), queue_num: int | None = None) -> str:
    """The body of the shadow chain: the `queued` buckets to NFQUEUE `queue_num`; empty (every
    packet on to the node's own queue) when the node has no shadow queue."""
    lines = [f":{SHADOW_CHAIN} - [0:0]"]
    if queue_num is not None:
        lines += [f"-A {SHADOW_CHAIN} -m mark --mark {b} -j NFQUEUE --queue-num {queue_num}"
                  for b in sorted(set(queued))]
    return "\n".join(lines)


# linux/netlink.h
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid (host order)
NLA_HDR = struct.Struct("=HH")  # len, type (host order)
NLMSG_ALIGN = 4

# linux/netfilter/nfnetlink.h and nfnetlink_queue.h (libnetfilter_queue's copy agrees)
NFNL_SUBSYS_QUEUE = 3
NFNETLINK_V0 = 0
NFQNL_MSG_CONFIG = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_PARAMS = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFGENMSG = struct.Struct("=BB")  # family, version; res_id follows in network order
CFG_PARAMS = struct.Struct("!IB")  # nfqnl_msg_config_params: copy_range, copy_mode (packed)

# The binding's receive buffer (4096) minus room for every metadata attribute the kernel
# may add (~150 bytes seen at most; 256 leaves a margin). Still more than any MTU-sized
# packet, so only GSO packets are ever truncated.
GSO_COPY_RANGE_BYTES = 4096 - 256


class QueueFlag(enum.IntFlag):
    """NFQA_CFG_F_* flags of a queue."""

    FAIL_OPEN = 1 << 0
    CONNTRACK = 1 << 1
    GSO = 1 << 2
    UID_GID = 1 << 3
    SECCTX = 1 << 4


class NfqError(SystemToolError):
    """A queue setting could not be made; the message says what the kernel answered."""


class BoundQueue(Protocol):
    """The part of netfilterqueue.NetfilterQueue we use."""

    def get_fd(self) -> int: ...

    def run_socket(self, s: Any) -> None: ...


_seq = itertools.count(int(time.time()) & 0x3FFFFFFF or 1)


def _nla(attr_type: int, value: bytes) -> bytes:
    pad = -(NLA_HDR.size + len(value)) % NLMSG_ALIGN
    return NLA_HDR.pack(NLA_HDR.size + len(value), attr_type) + value + b"\0" * pad


def config_flags_message(queue_num: int, flags: int, mask: int, seq: int,
                         copy_range_bytes: int | None = None) -> bytes:
    """The NFQNL_MSG_CONFIG message that sets `flags` (under `mask`) on queue `queue_num`.

    Same layout as libnetfilter_queue's nfq_set_mode() + nfq_set_queue_flags(): nfgenmsg
    with the queue number as res_id, then NFQA_CFG_PARAMS (when a copy range is given),
    NFQA_CFG_MASK and NFQA_CFG_FLAGS as big-endian u32.
    """
    if not 0 <= queue_num <= 0xFFFF:
        raise NfqError(f"queue number must be 0..65535, got {queue_num}")
    params = b""
    if copy_range_bytes is not None:
        if not 0 < copy_range_bytes <= 0xFFFF:
            raise NfqError(f"copy range must be 1..65535 bytes, got {copy_range_bytes}")
        params = _nla(NFQA_CFG_PARAMS, CFG_PARAMS.pack(copy_range_bytes, NFQNL_COPY_PACKET))
    body = (
        NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0)
        + struct.pack("!H", queue_num)
        + params
        + _nla(NFQA_CFG_MASK, struct.pack("!I", mask))
        + _nla(NFQA_CFG_FLAGS, struct.pack("!I", flags))
    )
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def find_ack(datagram: bytes, seq: int) -> int | None:
    """The errno (0 = success) of the NLMSG_ERROR answering `seq` in a datagram, or None if absent."""
    off = 0
    while off + NLMSG_HDR.size <= len(datagram):
        length, msg_type, _flags, msg_seq, _pid = NLMSG_HDR.unpack_from(datagram, off)
        if length < NLMSG_HDR.size:
            break
        if msg_type == NLMSG_ERROR and msg_seq == seq and off + NLMSG_HDR.size + 4 <= len(datagram):
            code: int = struct.unpack_from("=i", datagram, off + NLMSG_HDR.size)[0]
            return -code
        off += (length + NLMSG_ALIGN - 1) & ~(NLMSG_ALIGN - 1)
    return None


class _Replay:
    """A socket-like object that hands buffered datagrams to NetfilterQueue.run_socket()."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self._datagrams = list(datagrams)

    def recv(self, _bufsize: int) -> bytes:
        if not self._datagrams:
            raise BlockingIOError(errno.EAGAIN, "no more buffered datagrams")
        return self._datagrams.pop(0)


def set_queue_flags(nfq: BoundQueue, queue_num: int, flags: QueueFlag, mask: QueueFlag,
                    copy_range_bytes: int | None = None, timeout_s: float = 1.0) -> None:
    """Set queue flags on a bound NetfilterQueue; raises NfqError with the kernel's answer.

    Call it right after `bind()`. Packets the kernel queued before our acknowledgement
    arrive on the same socket; they are handed back to the binding (its callback runs)
    so that none is left without a verdict.
    """
    seq = next(_seq)
    sock = socket.socket(fileno=os.dup(nfq.get_fd()))
    others: list[bytes] = []
    result: int | None = None
    try:
        # The descriptor is shared with the binding: never change its blocking mode,
        # use MSG_DONTWAIT and select instead.
        msg = config_flags_message(queue_num, int(flags), int(mask), seq, copy_range_bytes)
        sock.sendto(msg, (0, 0))
        deadline = time.monotonic() + timeout_s
        while result is None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                break
            readable, _, _ = select.select([sock], [], [], left_s)
            if not readable:
                continue
            try:
                data = sock.recv(1 << 17, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped queued packets; ours may follow
                    continue
                raise
            result = find_ack(data, seq)
            if result is None:
                others.append(data)
    finally:
        sock.close()
        if others:
            nfq.run_socket(_Replay(others))
    if result is None:
        raise NfqError(f"no answer from the kernel to the queue {queue_num} config within {timeout_s} s")
    if result != 0:
        raise NfqError(f"the kernel refused flags {flags!r} on queue {queue_num}: "
                       f"{os.strerror(result)} (errno {result}); is the queue bound by this process?")


def enable_gso(nfq: BoundQueue, queue_num: int, copy_range_bytes: int = GSO_COPY_RANGE_BYTES) -> bool:
    """Ask the kernel to queue GSO packets whole on `queue_num`; True when it agreed.

    Call right after `nfq.bind(queue_num, ...)`. Also sets the copy range (packet copy
    mode) to `copy_range_bytes`, small enough that a truncated GSO packet's message fits
    the binding's buffer. False (and a warning) when the kernel refused: the queue still
    works as bound, TCP bulk is just slower.
    """
    try:
        set_queue_flags(nfq, queue_num, QueueFlag.GSO, QueueFlag.GSO, copy_range_bytes)
    except (NfqError, OSError) as e:
        log.warning("NFQUEUE %d: GSO hand-over not enabled: %s", queue_num, e)
        return False
    log.info("NFQUEUE %d: GSO packets are queued whole (NFQA_CFG_F_GSO)", queue_num)
    return True

