"""Our own thin ctypes binding over libnetfilter_queue: many packets per system call (recvmmsg),
their verdicts in few messages (nfq_set_verdict_batch, NFQNL_MSG_VERDICT_BATCH).

libnetfilter_queue sets the queue up (bind, copy mode and range, length, GSO flag) and sends
the verdicts; the packets themselves are read with libc's recvmmsg into one preallocated
buffer and their netlink messages parsed here (`parse_message`), so a packet costs no ctypes
call and no object beyond its bytes. Which ids a batch may cover: engine/verdict_plan.py.
No maintained Python binding batches verdicts; NetfilterQueue (one recv and one verdict per
packet) stays the fallback when this library cannot be loaded (engine/queue_io.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from engine.nfq import GSO_COPY_RANGE_BYTES, QueueFlag
from engine.verdict_plan import Op, Planned, VerdictPlan, batch_drop_at
from syncwall_errors import SystemToolError

log = logging.getLogger(__name__)

LIBRARY = "libnetfilter_queue.so.1"
NF_DROP = 0
NF_ACCEPT = 1
NFQNL_COPY_PACKET = 2
MSG_DONTWAIT = 0x40
SO_RCVBUFFORCE = 33
# One read: up to SLOTS datagrams of SLOT_BYTES each. A packet's message is its copy (at most
# GSO_COPY_RANGE_BYTES) plus ~150 bytes of attributes; twice that leaves room for any MTU.
SLOTS = 64
SLOT_BYTES = 8192
RCVBUF_BYTES = 8 << 20

# linux/netlink.h, linux/netfilter/nfnetlink_queue.h
NLMSG_ERROR = 2
NFQNL_MSG_PACKET_TYPE = (3 << 8) | 0  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET
NLMSG_AND_NFGEN_BYTES = 16 + 4
NFQA_PACKET_HDR = 1
NFQA_MARK = 3
NFQA_PAYLOAD = 10
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_LEN_TYPE = struct.Struct("=IH")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct("!I")
_ERRNO = struct.Struct("=i")


class NfqLibError(SystemToolError):
    """libnetfilter_queue could not be loaded or refused a queue setting."""


def parse_message(buf: Any, off: int, end: int) -> tuple[int, int, int, int] | None:
    """(packet id, mark, payload offset, payload length) of the NFQNL_MSG_PACKET message at
    `off` in `buf` (received bytes up to `end`); None when it is another message or cut."""
    length, msg_type = _LEN_TYPE.unpack_from(buf, off)
    if msg_type != NFQNL_MSG_PACKET_TYPE or length < NLMSG_AND_NFGEN_BYTES or off + length > end:
        return None
    stop = off + length
    a = off + NLMSG_AND_NFGEN_BYTES
    pid = mark = poff = 0
    plen = -1
    seen_hdr = False
    while a + 4 <= stop:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4 or a + alen > stop:
            return None
        t = atype & NLA_TYPE_MASK
        if t == NFQA_PAYLOAD:
            poff = a + 4
            plen = alen - 4
        elif t == NFQA_PACKET_HDR:
            pid = _BE32.unpack_from(buf, a + 4)[0]
            seen_hdr = True
        elif t == NFQA_MARK:
            mark = _BE32.unpack_from(buf, a + 4)[0]
        a += (alen + 3) & ~3
    if not seen_hdr or plen < 0:
        return None
    return pid, mark, poff, plen


class Layout:
    """The attribute layout of the last packet message, to parse the next ones in three struct
    calls instead of a walk. Packets from the same interfaces, with or without a mark, carry
    the same attributes in the same order, the payload last; a message matches the layout when
    every attribute header before the payload is the same (length and type, so every offset
    is the same), checked in one unpack. Anything else takes the walk (`parse_message`) and
    becomes the layout."""

    __slots__ = ("_headers", "_ids", "_pay_at", "_want")

    def __init__(self) -> None:
        self._headers: struct.Struct | None = None
        self._want: tuple[int, ...] = ()
        self._ids = _BE32  # packet id (and mark, when the layout has one) in one unpack
        self._pay_at = 0

    def parse(self, buf: Any, off: int, end: int) -> tuple[int, int, int, int] | None:
        """As `parse_message`."""
        h = self._headers
        if h is not None and off + h.size <= end:
            got = h.unpack_from(buf, off)
            # got: nlmsg length, type, then (length, type) of each attribute, the payload's last
            length = got[0]
            if got[1:-2] == self._want and got[-1] == NFQA_PAYLOAD and off + length <= end:
                plen = got[-2] - 4
                poff = off + self._pay_at + 4
                if plen >= 0 and length - 4 < poff - off + plen <= length:
                    ids = self._ids.unpack_from(buf, off)
                    return ids[0], ids[1] if len(ids) > 1 else 0, poff, plen
        r = parse_message(buf, off, end)
        if r is not None:
            self._learn(buf, off, r[2] - 4)
        return r

    def _learn(self, buf: Any, off: int, pay_at_abs: int) -> None:
        """The layout of the message at `off` whose payload attribute starts at `pay_at_abs`."""
        self._headers = None
        fmt = ["=IH14x"]
        want: list[int] = [NFQNL_MSG_PACKET_TYPE]
        mark_at = -1
        a = off + NLMSG_AND_NFGEN_BYTES
        while a < pay_at_abs:
            alen, atype = _NLA.unpack_from(buf, a)
            if atype & NLA_TYPE_MASK == NFQA_MARK:
                mark_at = a + 4 - off
            want += [alen, atype]
            step = (alen + 3) & ~3
            fmt.append(f"HH{step - 4}x" if step > 4 else "HH")
            a += step
        if a != pay_at_abs or want[1:3] != [11, NFQA_PACKET_HDR]:
            return
        fmt.append("HH")
        self._want = tuple(want)
        self._pay_at = pay_at_abs - off
        pid_at = NLMSG_AND_NFGEN_BYTES + 4
        if mark_at > 0:
            self._ids = struct.Struct(f"!{pid_at}xI{mark_at - pid_at - 4}xI")
        else:
            self._ids = struct.Struct(f"!{pid_at}xI")
        self._headers = struct.Struct("".join(fmt))


def cut_packet_id(buf: Any, off: int, got: int) -> int | None:
    """The id of a packet message cut short by the buffer (its header attribute comes first)."""
    if got < NLMSG_AND_NFGEN_BYTES + 8:
        return None
    _length, msg_type = _LEN_TYPE.unpack_from(buf, off)
    alen, atype = _NLA.unpack_from(buf, off + NLMSG_AND_NFGEN_BYTES)
    if msg_type != NFQNL_MSG_PACKET_TYPE or atype & NLA_TYPE_MASK != NFQA_PACKET_HDR or alen < 8:
        return None
    pid: int = _BE32.unpack_from(buf, off + NLMSG_AND_NFGEN_BYTES + 4)[0]
    return pid


def error_code(buf: Any, off: int, got: int) -> int | None:
    """The errno (positive; 0 for an ack) of an NLMSG_ERROR message at `off`, else None."""
    if got < 20:
        return None
    _length, msg_type = _LEN_TYPE.unpack_from(buf, off)
    if msg_type != NLMSG_ERROR:
        return None
    code: int = _ERRNO.unpack_from(buf, off + 16)[0]
    return -code


# ---- ctypes declarations ----------------------------------------------------------------------
class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)
_libs: dict[str, Any] = {}


def load() -> Any:
    """libnetfilter_queue with the prototypes we call; NfqLibError when it is not installed."""
    lib = _libs.get("nfq")
    if lib is not None:
        return lib
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as e:
        raise NfqLibError(f"cannot load {LIBRARY} ({e}); install libnetfilter-queue1") from e
    vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    protos: dict[str, tuple[Any, list[Any]]] = {
        "nfq_open": (vp, []),
        "nfq_close": (i, [vp]),
        "nfq_create_queue": (vp, [vp, ctypes.c_uint16, _CALLBACK, vp]),
        "nfq_destroy_queue": (i, [vp]),
        "nfq_set_mode": (i, [vp, ctypes.c_uint8, ctypes.c_uint]),
        "nfq_set_queue_maxlen": (i, [vp, u32]),
        "nfq_set_queue_flags": (i, [vp, u32, u32]),
        "nfq_fd": (i, [vp]),
        "nfq_get_msg_packet_hdr": (vp, [vp]),
        "nfq_set_verdict": (i, [vp, u32, u32, u32, ctypes.c_char_p]),
        "nfq_set_verdict2": (i, [vp, u32, u32, u32, u32, ctypes.c_char_p]),
        "nfq_set_verdict_batch": (i, [vp, u32, u32]),
    }
    for name, (res, args) in protos.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as e:
            raise NfqLibError(f"{LIBRARY} has no {name} (too old?)") from e
        fn.restype, fn.argtypes = res, args
    libc.recvmmsg.restype = i
    libc.recvmmsg.argtypes = [i, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, i, vp]
    _libs["recvmmsg"] = libc.recvmmsg
    _libs["nfq"] = lib
    return lib


class HeldPacket:
    """A packet kept past its read (a hold, a lossless window): the NetfilterQueue packet's
    interface the node and engine.binding use, a verdict sent on its own when given."""

    __slots__ = ("_new_mark", "_payload", "_queue", "data", "mark", "packet_id")

    def __init__(self, queue: Queue, packet_id: int, mark: int, data: bytes) -> None:
        self._queue = queue
        self.packet_id = packet_id
        self.mark = mark
        self.data = data
        self._payload: bytes | None = None
        self._new_mark: int | None = None

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, payload: bytes) -> None:
        self._payload = payload

    def set_mark(self, mark: int) -> None:
        self._new_mark = mark

    def retain(self) -> None:
        """Kept without a verdict: nothing to do (the queue keeps us until accept or drop)."""

    def accept(self) -> None:
        self._queue.give(self, NF_ACCEPT)

    def drop(self) -> None:
        self._queue.give(self, NF_DROP)


def _bind_time_packet(qh: Any, _msg: Any, nfad: Any, _data: Any) -> int:
    """Packets the library reads while it waits for a config ack (only during setup): dropped,
    fail closed, rather than left without a verdict."""
    lib = _libs["nfq"]
    ph = lib.nfq_get_msg_packet_hdr(nfad)
    if ph:
        pid = _BE32.unpack(ctypes.string_at(ph, 4))[0]
        lib.nfq_set_verdict(qh, pid, NF_DROP, 0, None)
    return 0


_BIND_CALLBACK = _CALLBACK(_bind_time_packet)

Decide = Callable[[bytes, int, int], int]


class Queue:
    """One bound NFQUEUE read by recvmmsg, verdicts planned per read by VerdictPlan.

    `read(decide, budget)` calls `decide(payload, mark, packet_id)` per packet, in order; it
    returns NF_ACCEPT or NF_DROP (a plain verdict, batched where it may be), or -1 when it
    already dealt with the packet through `rewrite`, `hold` or `drop_now`."""

    def __init__(self, queue_num: int, *, copy_range_bytes: int = GSO_COPY_RANGE_BYTES,
                 maxlen: int = 4096, gso: bool = True, slots: int = SLOTS,
                 slot_bytes: int = SLOT_BYTES) -> None:
        lib = load()
        self._lib = lib
        self._recvmmsg = _libs["recvmmsg"]
        self.queue_num = queue_num
        h = lib.nfq_open()
        if not h:
            raise NfqLibError(f"nfq_open failed: {os.strerror(ctypes.get_errno())} (needs CAP_NET_ADMIN)")
        self._h: Any = h
        qh = lib.nfq_create_queue(h, queue_num, _BIND_CALLBACK, None)
        if not qh:
            err = ctypes.get_errno()
            lib.nfq_close(h)
            raise NfqLibError(f"cannot bind NFQUEUE {queue_num}: {os.strerror(err)} "
                              "(is another process bound to it?)")
        self._qh: Any = qh
        try:
            if lib.nfq_set_mode(qh, NFQNL_COPY_PACKET, copy_range_bytes) < 0:
                raise NfqLibError(f"NFQUEUE {queue_num}: copy mode refused: "
                                  f"{os.strerror(ctypes.get_errno())}")
            if lib.nfq_set_queue_maxlen(qh, maxlen) < 0:
                log.warning("NFQUEUE %d: queue length %d refused", queue_num, maxlen)
            self.gso = bool(gso) and lib.nfq_set_queue_flags(qh, QueueFlag.GSO, QueueFlag.GSO) >= 0
            if gso and not self.gso:
                log.warning("NFQUEUE %d: GSO hand-over not enabled", queue_num)
        except NfqLibError:
            self.close()
            raise
        self.copy_range_bytes = copy_range_bytes
        self.fd: int = lib.nfq_fd(h)
        with socket.socket(fileno=os.dup(self.fd)) as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        self._slots = slots
        self._slot_bytes = slot_bytes
        self._buf = bytearray(slots * slot_bytes)
        self._mv = memoryview(self._buf)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        self._iov = (_Iovec * slots)()
        self._msgs = (_Mmsghdr * slots)()
        for k in range(slots):
            self._iov[k].iov_base = base + k * slot_bytes
            self._iov[k].iov_len = slot_bytes
            self._msgs[k].msg_hdr.msg_iov = ctypes.pointer(self._iov[k])
            self._msgs[k].msg_hdr.msg_iovlen = 1
        self.plan = VerdictPlan()
        self.layout = Layout()
        self.held: dict[int, HeldPacket] = {}
        self.counters: dict[str, int] = {
            "nfq_reads": 0, "nfq_packets": 0, "nfq_batches": 0, "nfq_singles": 0,
            "nfq_rewrites": 0, "nfq_verdict_errors": 0, "nfq_kernel_errors": 0, "nfq_cut": 0,
            "nfq_enobufs": 0, "nfq_other_messages": 0, "nfq_batch_drops": 0, "nfq_batch_dropped": 0,
        }

    # ---- packets in --------------------------------------------------------------------------
    def read(self, decide: Decide, budget: int) -> int:
        """Read and decide up to `budget` packets (fewer when the queue runs dry); the count."""
        recvmmsg, fd, msgs, buf, mv = self._recvmmsg, self.fd, self._msgs, self._buf, self._mv
        slot, plan = self._slot_bytes, self.plan
        plain, parse = plan.plain, self.layout.parse
        c = self.counters
        done = 0
        while done < budget:
            want = min(self._slots, budget - done)
            n = recvmmsg(fd, msgs, want, MSG_DONTWAIT, None)
            if n <= 0:
                if n == 0:
                    break
                err = ctypes.get_errno()
                if err == errno.ENOBUFS:  # the kernel dropped messages for a full buffer
                    c["nfq_enobufs"] += 1
                    continue
                if err in (errno.EAGAIN, errno.EINTR):
                    break
                raise OSError(err, f"recvmmsg on NFQUEUE {self.queue_num}: {os.strerror(err)}")
            c["nfq_reads"] += 1
            plan.begin(bool(self.held))
            for k in range(n):
                off = k * slot
                got = msgs[k].msg_len
                r = parse(buf, off, off + got)
                if r is None:
                    self._other(off, got)
                    continue
                pid, mark, poff, plen = r
                v = decide(bytes(mv[poff : poff + plen]), mark, pid)
                if v >= 0:
                    plain(pid, v)
            done += n
            c["nfq_packets"] += n
            self._send(plan.finish())
            if n < want:
                break
        return done

    def _other(self, off: int, got: int) -> None:
        """A message that is not a whole packet: a verdict's error, or a packet cut short."""
        c = self.counters
        code = error_code(self._buf, off, got)
        if code is not None:
            if code:
                c["nfq_kernel_errors"] += 1
                log.debug("NFQUEUE %d: the kernel refused a verdict: %s", self.queue_num, os.strerror(code))
            return
        pid = cut_packet_id(self._buf, off, got)
        if pid is None:
            c["nfq_other_messages"] += 1
            return
        # Never parsed, so never decided: fail closed, but give it its verdict.
        c["nfq_cut"] += 1
        self.plan.plain(pid, NF_DROP)

    # ---- verdicts out ------------------------------------------------------------------------
    def rewrite(self, packet_id: int, mark: int, payload: bytes) -> None:
        """Accept a packet with new bytes and mark (in its place among this read's verdicts)."""
        self.plan.rewrite(packet_id, NF_ACCEPT, mark, payload)

    def hold(self, packet_id: int, mark: int, data: bytes) -> HeldPacket:
        """Keep a packet without a verdict; its handle gives it one later (alone)."""
        h = HeldPacket(self, packet_id, mark, data)
        self.held[packet_id] = h
        self.plan.held(packet_id)
        return h

    def drop_now(self, packet_id: int) -> None:
        """Drop a packet at once, held or not (a failed callback)."""
        h = self.held.pop(packet_id, None)
        self._verdict(packet_id, NF_DROP, None, None)
        if h is not None:
            h._queue = _GIVEN

    def give(self, h: HeldPacket, verdict: int) -> None:
        """A held packet's verdict (with its new bytes and mark, if any), sent now."""
        if self.held.pop(h.packet_id, None) is not h:
            raise NfqLibError(f"packet {h.packet_id} of NFQUEUE {self.queue_num} already has its verdict")
        self._verdict(h.packet_id, verdict, h._new_mark, h._payload)

    def drop_held(self, handles: list[HeldPacket]) -> None:
        """Drop held packets of this queue: one batch verdict when every packet still held with an
        id up to the highest of them is one of them (the kernel's batch verdict takes every queued
        id up to it: nfqnl_recv_verdict_batch), else a verdict each. A backup's expired lossless
        window is such a run: the oldest held packets, in id order."""
        held = self.held
        # dict order is the order held, which is id order (packets are read in id order)
        ids = {h.packet_id for h in handles}
        top = batch_drop_at(held, ids)
        if top is None:
            for h in handles:
                self.give(h, NF_DROP)
            return
        for pid in ids:
            held.pop(pid)._queue = _GIVEN
        self.counters["nfq_batch_drops"] += 1
        self.counters["nfq_batch_dropped"] += len(ids)
        if self._lib.nfq_set_verdict_batch(self._qh, top, NF_DROP) < 0:
            self.counters["nfq_verdict_errors"] += 1

    def _verdict(self, pid: int, verdict: int, mark: int | None, payload: bytes | None) -> None:
        lib = self._lib
        if mark is None and payload is None:
            r = lib.nfq_set_verdict(self._qh, pid, verdict, 0, None)
            self.counters["nfq_singles"] += 1
        else:
            data = payload if payload is not None else b""
            if mark is None:
                r = lib.nfq_set_verdict(self._qh, pid, verdict, len(data), data)
            else:
                r = lib.nfq_set_verdict2(self._qh, pid, verdict, mark, len(data), data or None)
            self.counters["nfq_rewrites"] += 1
        if r < 0:
            self.counters["nfq_verdict_errors"] += 1
            log.debug("NFQUEUE %d: verdict for %d not sent: %s", self.queue_num, pid,
                      os.strerror(ctypes.get_errno()))

    def _send(self, ops: list[Planned]) -> None:
        lib, qh, c = self._lib, self._qh, self.counters
        for p in ops:
            if p.op is Op.BATCH:
                c["nfq_batches"] += 1
                if lib.nfq_set_verdict_batch(qh, p.packet_id, p.verdict) < 0:
                    c["nfq_verdict_errors"] += 1
            else:
                self._verdict(p.packet_id, p.verdict, p.mark, p.payload)

    def close(self) -> None:
        """Unbind; packets still held get no verdict from us (the kernel drops them at unbind)."""
        lib = self._lib
        if self._qh:
            lib.nfq_destroy_queue(self._qh)
            self._qh = None
        if self._h:
            lib.nfq_close(self._h)
            self._h = None


class _Given:
    """Where a handle points once its packet has its verdict: a second one is a bug, not a send."""

    def give(self, h: HeldPacket, _verdict: int) -> None:
        raise NfqLibError(f"packet {h.packet_id} already has its verdict")


_GIVEN: Any = _Given()
