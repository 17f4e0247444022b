"""The node's packet path: NFQUEUE packets to the engine and its verdicts back, through our own
binding (engine/nfqlib.py: recvmmsg, batched verdicts) or NetfilterQueue as the fallback; the
REJECT replies' raw sockets."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from engine.binding import Binding
from engine.core import Engine, Verdict
from engine.nat import TRANSLATED_MARK
from engine.nfq import GSO_COPY_RANGE_BYTES

log = logging.getLogger(__name__)

NFQ_BUDGET = 256  # queue messages per event-loop turn, so that timers and sync input get their turn
# Which binding reads the queue: "lib" (engine/nfqlib.py), "netfilterqueue", or "auto" (lib
# when libnetfilter_queue loads, else NetfilterQueue). Measured: `syncwall bench throughput`.
BACKENDS = ("auto", "lib", "netfilterqueue")
DEFAULT_BACKEND = "auto"

_ACCEPT = Verdict.ACCEPT
_HOLD = Verdict.HOLD
HANDLED = -1  # nfqlib.Queue.read: the packet's verdict is already planned
SHADOW_QUEUE_OFFSET = 1  # the backed-up buckets' queue: the node's queue number + this


class BudgetSocket:
    """The queue's netlink socket, read at most `budget` messages per event-loop turn.

    NetfilterQueue's own loop reads until the queue is empty; under a flood that starves the
    heartbeats and the node is declared failed while it works. `run_socket` stops at the
    first EAGAIN, so running out of budget is reported as one."""

    def __init__(self, fd: int, budget: int) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(False)
        self.budget_per_turn = budget
        self.left = budget

    def recv(self, bufsize: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "budget for this turn used")
        self.left -= 1
        return self.sock.recv(bufsize)

    def close(self) -> None:
        self.sock.close()


class PacketPath:
    """Packets of one queue through the engine and `binding`; `after_turn` runs after each read
    (the node settles the binding and sends what changed)."""

    def __init__(self, engine: Engine, binding: Binding[Any], counters: dict[str, int],
                 after_turn: Callable[[], None]) -> None:
        self.engine = engine
        self.binding = binding
        self.counters = counters
        self.after_turn = after_turn
        self._process = engine.process  # bound once: the packet path
        self._replay = binding.replay  # read per packet: which marks are held for replay
        self.raw: dict[int, socket.socket] = {}  # address family -> raw socket for REJECT replies
        self.backend = ""
        self._nfq: Any = None  # NetfilterQueue, or nfqlib.Queue
        self._shadow: Any = None  # nfqlib.Queue of the backed-up buckets (our binding only)
        self.shadow_queue: int | None = None  # its number, when bound
        self._reading: Any = None  # the nfqlib.Queue being read now
        self.watching_shadow = False  # the shadow queue read on its readiness (watch_shadow)
        self._sock: BudgetSocket | None = None
        self._fd = -1

    # ---- open / close -----------------------------------------------------------------------
    def open(self, queue_num: int, backend: str, loop: Any) -> str:
        """Bind the queue and read it from `loop`; the backend used ("lib" or "netfilterqueue")."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown NFQUEUE backend {backend!r}; one of {', '.join(BACKENDS)}")
        if backend in ("auto", "lib"):
            from engine.nfqlib import NfqLibError, Queue

            try:
                q = Queue(queue_num, copy_range_bytes=GSO_COPY_RANGE_BYTES)
            except NfqLibError as e:
                if backend == "lib":
                    raise
                log.warning("own NFQUEUE binding unavailable (%s); NetfilterQueue instead", e)
            else:
                if q.gso:
                    self.engine.capture_bytes = GSO_COPY_RANGE_BYTES
                self._nfq, self.backend, self._fd = q, "lib", q.fd
                loop.add_reader(q.fd, self.on_lib_readable)
                if os.environ.get("SYNCWALL_SHADOW_QUEUE", "1") != "0":  # 0: shared, to compare
                    self._open_shadow(queue_num + SHADOW_QUEUE_OFFSET, loop)
                return self.backend
        from netfilterqueue import NetfilterQueue

        from engine.nfq import enable_gso

        nfq = NetfilterQueue()
        nfq.bind(queue_num, self.on_packet, max_len=4096)
        # TCP bulk needs GSO packets queued whole; they then arrive cut at the copy range.
        if enable_gso(nfq, queue_num):
            self.engine.capture_bytes = GSO_COPY_RANGE_BYTES
        self._sock = BudgetSocket(nfq.get_fd(), NFQ_BUDGET)
        self._nfq, self.backend, self._fd = nfq, "netfilterqueue", self._sock.sock.fileno()
        loop.add_reader(self._fd, self.on_nfq_readable)
        return self.backend

    def _open_shadow(self, queue_num: int, loop: Any) -> None:
        """The backed-up buckets' own queue (lossless on): their packets are all held, so the
        owned queue keeps batching its verdicts (a held packet below would make every later one
        a single verdict), and a window's expired packets leave in one batch drop. Without it
        (it cannot be bound) they share the owned queue, as before."""
        from engine.nfqlib import NfqLibError, Queue

        try:
            q = Queue(queue_num, copy_range_bytes=GSO_COPY_RANGE_BYTES)
        except NfqLibError as e:
            log.warning("no shadow NFQUEUE %d (%s); backed-up buckets share the owned queue", queue_num, e)
            return
        # Not read on its own readiness: its packets are held anyway, so they wait in the kernel
        # until the next read of the owned queue or the next tick (`poll_shadow`, every 5 ms),
        # and leave many per read rather than one loop turn each.
        self._shadow, self.shadow_queue = q, queue_num

    def close(self, loop: Any) -> None:
        """Stop reading; held packets get a verdict before we go (fail closed)."""
        self.watch_shadow(False, loop)
        if self._nfq is not None:
            loop.remove_reader(self._fd)
            if self._sock is not None:
                self._sock.close()
            for pkt in self.binding.drop_all():
                with contextlib.suppress(Exception):
                    pkt.drop()
            if self.backend == "lib":
                self._nfq.close()
            else:
                self._nfq.unbind()
            self._nfq = None
        if self._shadow is not None:
            self._shadow.close()
            self._shadow = None
        for raw in self.raw.values():
            raw.close()
        self.raw.clear()

    def drop_many(self, handles: list[Any]) -> None:
        """Drop held packets: those of our binding's queues in one batch verdict per queue where
        the kernel's batch semantics allow it (engine/nfqlib.py Queue.drop_held), the rest one by one."""
        by_queue: dict[int, tuple[Any, list[Any]]] = {}
        for h in handles:
            q = getattr(h, "_queue", None)
            if q is not None and hasattr(q, "drop_held"):
                by_queue.setdefault(id(q), (q, []))[1].append(h)
            else:
                with contextlib.suppress(Exception):  # a packet the kernel forgot must not stop the rest
                    h.drop()
        for q, hs in by_queue.values():
            try:
                q.drop_held(hs)
            except Exception:  # fall back to a verdict each
                log.exception("batch drop failed")
                for h in hs:
                    with contextlib.suppress(Exception):
                        h.drop()

    def stats(self) -> dict[str, Any]:
        """The backend and, for our binding, its read and verdict counters."""
        out: dict[str, Any] = {"backend": self.backend}
        if self.backend == "lib":
            out.update(self._nfq.counters)
            out["held"] = len(self._nfq.held)
        if self._shadow is not None:
            out["shadow_queue"] = self.shadow_queue
            out.update({f"shadow_{k}": v for k, v in self._shadow.counters.items()})
            out["shadow_held"] = len(self._shadow.held)
        return out

    # ---- our binding --------------------------------------------------------------------------
    def on_lib_readable(self) -> None:
        if self._shadow is not None:
            # The shadow queue first: when iptables moves an adopted bucket from it to ours, its
            # older packets must leave before the newer ones read here (no reordering in a flow).
            self._read_shadow()
        self._reading = self._nfq
        try:
            self._nfq.read(self.decide, NFQ_BUDGET)
        except OSError as e:
            log.warning("nfqueue read failed: %s", e)
        self.after_turn()

    def _read_shadow(self) -> None:
        self._reading = self._shadow
        try:
            for _ in range(4):  # until empty, within a bound (a flood must not starve the loop)
                if self._shadow.read(self.decide, NFQ_BUDGET) < NFQ_BUDGET:
                    break
        except OSError as e:
            log.warning("shadow nfqueue read failed: %s", e)

    def watch_shadow(self, on: bool, loop: Any) -> None:
        """Read the shadow queue on its own readiness too (`on`: it carries packets of buckets we
        own, between a takeover and its iptables-restore), or only when polled."""
        if self._shadow is None or on == self.watching_shadow:
            return
        if on:
            loop.add_reader(self._shadow.fd, self.on_shadow_readable)
        else:
            loop.remove_reader(self._shadow.fd)
        self.watching_shadow = on

    def on_shadow_readable(self) -> None:
        self._read_shadow()
        self.after_turn()

    def poll_shadow(self) -> None:
        """Read what waits in the shadow queue (the node's tick; the caller settles the binding).
        The same decision as the owned queue's: between a view change and iptables-restore a
        bucket just adopted still comes here, and one just backed up still goes there."""
        if self._shadow is not None:
            self._read_shadow()

    def decide(self, data: bytes, mark: int, pid: int) -> int:
        """One packet read by engine/nfqlib.py: NF_ACCEPT (1) or NF_DROP (0) for a plain verdict,
        HANDLED when it was rewritten, held or dropped here."""
        q = self._reading
        try:
            self.counters["packets"] += 1
            if mark in self._replay.buckets:
                now = time.monotonic()
                h = q.hold(pid, mark, data)
                if not self.binding.shadow_packet(data, mark, h, now):
                    h.drop()
                return HANDLED
            now = time.monotonic()
            d = self._process(data, now, mark)
            v = d.verdict
            if v is _ACCEPT:
                if d.payload is None:
                    return 1
                q.rewrite(pid, mark | TRANSLATED_MARK, d.payload)  # not queued again in FORWARD
                return HANDLED
            if v is _HOLD:
                h = q.hold(pid, mark, data)
                if self.binding.held(d, data, mark, h, now).verdict is not _HOLD:
                    h.drop()
                return HANDLED
            if d.reply:
                self.send_reply(d.reply)
            return 0
        except Exception:  # a packet must never kill the loop: fail closed and count
            self.counters["callback_errors"] += 1
            log.exception("packet callback failed")
            with contextlib.suppress(Exception):
                q.drop_now(pid)
            return HANDLED

    # ---- NetfilterQueue -----------------------------------------------------------------------
    def on_nfq_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.left = sock.budget_per_turn
        try:
            self._nfq.run_socket(sock)
        except OSError as e:
            log.warning("nfqueue recv failed: %s", e)
        self.after_turn()

    def on_packet(self, pkt: Any) -> None:
        try:
            self.counters["packets"] += 1
            now = time.monotonic()
            data = pkt.get_payload()
            mark = pkt.mark
            if mark in self._replay.buckets:
                # A bucket we back up (lossless on): held without a verdict, replayed if we adopt it.
                if self.binding.shadow_packet(data, mark, pkt, now):
                    pkt.retain()
                else:
                    pkt.drop()
                return
            # The engine first, the binding only for a hold: one call less per accepted packet.
            d = self._process(data, now, mark)
            v = d.verdict
            if v is _ACCEPT:
                if d.payload is not None:  # a translated packet (NAT): pass the rewritten bytes
                    pkt.set_payload(d.payload)
                    pkt.set_mark(mark | TRANSLATED_MARK)  # not queued again in FORWARD
                pkt.accept()
            elif v is _HOLD:
                if self.binding.held(d, data, mark, pkt, now).verdict is _HOLD:
                    pkt.retain()
                else:
                    pkt.drop()
            else:
                pkt.drop()
                if d.reply:
                    self.send_reply(d.reply)
        except Exception:  # a packet must never kill the loop: fail closed and count
            self.counters["callback_errors"] += 1
            log.exception("packet callback failed")
            with contextlib.suppress(Exception):
                pkt.drop()

    # ---- REJECT replies -----------------------------------------------------------------------
    def send_reply(self, data: bytes) -> None:
        """Send a REJECT's reply (TCP RST or ICMP unreachable, built by the engine) as it is."""
        family = socket.AF_INET if data[0] >> 4 == 4 else socket.AF_INET6
        try:
            sock = self.raw.get(family)
            if sock is None:
                # IPPROTO_RAW: the packet carries its own IP header (source: the rejected
                # packet's destination), in both families.
                sock = self.raw[family] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                sock.setblocking(False)
            dst = socket.inet_ntop(family, data[16:20] if family == socket.AF_INET else data[24:40])
            sock.sendto(data, (dst, 0))
            self.counters["rejects_sent"] += 1
        except OSError as e:  # the original is dropped anyway: the reply is a courtesy
            log.debug("reject reply not sent: %s", e)
