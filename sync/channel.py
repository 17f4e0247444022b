"""Reliable in-order delivery to one peer: sequence numbers, cumulative acks, retransmission
with backoff and a window. Pure: the clock is passed in and frames are built by the agent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sync.wire import MsgType

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outgoing:
    """A reliable message waiting for its ack."""

    seq: int
    type: MsgType
    payload: Any
    rto_s: float
    epoch: int = 0
    first_sent: float | None = None
    last_sent: float = 0.0
    tries: int = 0


@dataclass(slots=True)
class Delivery:
    """What one received reliable frame produced: messages now deliverable in order."""

    messages: list[tuple[int, MsgType, Any]]
    duplicate: bool = False
    beyond_window: bool = False


class Channel:
    """Both directions of the reliable stream with one peer incarnation."""

    def __init__(self, window: int, rto_initial_s: float, rto_max_s: float) -> None:
        self.window = window
        self.rto_initial_s = rto_initial_s
        self.rto_max_s = rto_max_s
        self.reset()

    def reset(self) -> None:
        """Forget both directions: the peer restarted, its stream starts again at 1."""
        self.next_seq = 1
        self.unacked: dict[int, Outgoing] = {}
        self.next_unsent = 1
        self.rto_due_s = float("inf")  # earliest time a retransmission may be due
        self.recv_next = 1
        self.recv_buf: dict[int, tuple[MsgType, Any]] = {}
        self.ack_pending = False
        # Whether the pending ack must go this turn (someone may wait on it, or it repeats a
        # lost one) or may wait for the next timer tick, cumulative (sync/context.py).
        self.ack_now = False
        self.since_ack = 0  # messages delivered since our last frame (each carries our ack)

    @property
    def cum_ack(self) -> int:
        """Highest sequence number received with nothing missing before it."""
        return self.recv_next - 1

    def queue(self, mtype: MsgType, payload: Any, epoch: int = 0) -> int:
        """Queue a message for reliable delivery; returns its sequence number."""
        seq = self.next_seq
        self.next_seq += 1
        self.unacked[seq] = Outgoing(seq, mtype, payload, self.rto_initial_s, epoch)
        return seq

    def on_ack(self, ack: int) -> list[Outgoing]:
        """Process a cumulative ack; returns the messages it acknowledged (in order)."""
        done: list[Outgoing] = []
        # An ack can only cover what was sent; a larger one (a confused peer) must not
        # silently drop messages that never left.
        ack = min(ack, self.next_unsent - 1)
        # unacked is in seq order (insertion order), so stop at the first one not covered.
        while self.unacked:
            seq = next(iter(self.unacked))
            if seq > ack:
                break
            done.append(self.unacked.pop(seq))
        return done

    def on_data(self, seq: int, mtype: MsgType, payload: Any) -> Delivery:
        """Accept a reliable message; deliver everything now contiguous, in order."""
        self.ack_pending = True  # always (re)ack: our previous ack may have been lost
        if seq < self.recv_next or seq in self.recv_buf:
            self.ack_now = True  # a retransmission: the sender is waiting already
            return Delivery([], duplicate=True)
        if seq >= self.recv_next + self.window:
            return Delivery([], beyond_window=True)
        self.recv_buf[seq] = (mtype, payload)
        out: list[tuple[int, MsgType, Any]] = []
        while self.recv_next in self.recv_buf:
            t, p = self.recv_buf.pop(self.recv_next)
            out.append((self.recv_next, t, p))
            self.recv_next += 1
        self.since_ack += len(out)
        return Delivery(out)

    def due(self, now: float, max_new: int | None) -> list[tuple[Outgoing, bool]]:
        """Messages to transmit now, with a flag telling retransmissions apart.

        Only the first `window` unacked messages may be in flight. `max_new` caps first
        transmissions (the agent's freeze/step); retransmissions of sent ones are not capped."""
        out: list[tuple[Outgoing, bool]] = []
        unacked = self.unacked
        if not unacked:
            return out
        first = next(iter(unacked))
        self.next_unsent = max(self.next_unsent, first)
        if now >= self.rto_due_s:
            # Scan what is in flight only when some retransmission timer may have expired.
            soonest = float("inf")
            for seq in range(first, self.next_unsent):
                o = unacked.get(seq)
                if o is None:
                    continue
                if now - o.last_sent >= o.rto_s:
                    o.last_sent = now
                    o.tries += 1
                    o.rto_s = min(o.rto_s * 2, self.rto_max_s)
                    out.append((o, True))
                soonest = min(soonest, o.last_sent + o.rto_s)
            self.rto_due_s = soonest
        limit = min(self.next_seq, first + self.window)
        if max_new is not None:
            # Frozen: keep order, nothing behind a held message goes first.
            limit = min(limit, self.next_unsent + max_new)
        while self.next_unsent < limit:
            o = unacked[self.next_unsent]
            self.next_unsent += 1
            o.first_sent = o.last_sent = now
            o.tries = 1
            self.rto_due_s = min(self.rto_due_s, now + o.rto_s)
            out.append((o, False))
        return out

    def unsent(self) -> int:
        """Messages queued and never transmitted (behind the window or held by a freeze)."""
        return self.next_seq - max(self.next_unsent, next(iter(self.unacked), self.next_seq))
