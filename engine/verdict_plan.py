"""Which verdict messages one queue read needs: batched verdicts (NFQNL_MSG_VERDICT_BATCH) where
the kernel's semantics allow them, single verdicts elsewhere. Pure: ids in, operations out.

The kernel applies a batch verdict for id X to EVERY packet still queued with an id up to X
(net/netfilter/nfnetlink_queue.c, nfqnl_recv_verdict_batch). So a batch may only cover ids
whose packets all get that same verdict now. The scheme (engine/nfqlib.py runs it per read):

- Packets come in id order (the kernel numbers them under the queue's lock as it sends them).
- A run of consecutive packets given the same plain verdict (accept or drop, bytes and mark
  unchanged) is one batch verdict at the run's last id.
- A packet whose bytes or mark change (NAT) gets a single verdict with its payload, in its
  place: the run before it is sent first, so verdicts leave in arrival order.
- A held packet (waiting on a sync ack, an FTP PORT hold, a lossless window) gets no verdict
  now; it is a barrier: the run before it is sent, and every later packet of the read gets a
  single verdict, since a batch above the held id would take the held packet with it.
- A held packet still outstanding from an earlier read is below every id of this read: the
  whole read gets single verdicts (`begin(older_held=True)`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Op(enum.IntEnum):
    """One verdict message."""

    BATCH = 1  # NFQNL_MSG_VERDICT_BATCH: every queued id <= packet_id
    SINGLE = 2  # NFQNL_MSG_VERDICT for one id, bytes and mark unchanged
    REWRITE = 3  # NFQNL_MSG_VERDICT for one id, with a new payload and mark


@dataclass(frozen=True, slots=True)
class Planned:
    """A verdict message to send, in the order planned."""

    op: Op
    packet_id: int
    verdict: int
    mark: int | None = None
    payload: bytes | None = None


class VerdictPlan:
    """The verdict messages of one read, built packet by packet in arrival order."""

    __slots__ = ("_run_id", "_run_verdict", "barrier", "ops")

    def __init__(self) -> None:
        self.ops: list[Planned] = []
        self._run_id = -1  # the last id of the pending run, -1 when none
        self._run_verdict = 0
        self.barrier = False  # a held packet is below: no more batches in this read

    def begin(self, older_held: bool) -> None:
        """A new read; `older_held`: a packet of an earlier read still waits for its verdict."""
        self.ops = []
        self._run_id = -1
        self.barrier = older_held

    def plain(self, packet_id: int, verdict: int) -> None:
        """A packet given `verdict` with its bytes and mark unchanged."""
        if self.barrier:
            self.ops.append(Planned(Op.SINGLE, packet_id, verdict))
            return
        if self._run_id >= 0 and verdict != self._run_verdict:
            self.ops.append(Planned(Op.BATCH, self._run_id, self._run_verdict))
        self._run_id = packet_id
        self._run_verdict = verdict

    def rewrite(self, packet_id: int, verdict: int, mark: int, payload: bytes) -> None:
        """A packet given `verdict` with new bytes and mark (a translated packet)."""
        self._flush()
        self.ops.append(Planned(Op.REWRITE, packet_id, verdict, mark, payload))

    def held(self, packet_id: int) -> None:
        """A packet kept without a verdict: nothing above it may be batched in this read."""
        self._flush()
        self.barrier = True

    def finish(self) -> list[Planned]:
        """Every message of the read, in the order to send them."""
        self._flush()
        return self.ops

    def _flush(self) -> None:
        if self._run_id >= 0:
            self.ops.append(Planned(Op.BATCH, self._run_id, self._run_verdict))
            self._run_id = -1


def batch_drop_at(held: Iterable[int], drop: set[int]) -> int | None:
    """The id of ONE batch drop verdict that drops exactly `drop` among the held packets, or None
    when there is none (a packet held for another reason lies below the highest id to drop, or an
    id to drop is not held): then each gets its own verdict. `held`: the ids still held, in id
    order (every id below a held one has had its verdict, so the batch takes only held ones)."""
    if len(drop) < 2:
        return None
    top = max(drop)
    n = 0
    for pid in held:
        if pid > top:
            break
        if pid not in drop:
            return None
        n += 1
    return top if n == len(drop) else None


def plan(packets: list[tuple[int, str]], older_held: bool = False,
         accept: int = 1, drop: int = 0) -> list[Planned]:
    """The messages for one read given as (id, "accept" | "drop" | "rewrite" | "held") pairs,
    in arrival order (tests and docs; the queue feeds `VerdictPlan` as it goes)."""
    p = VerdictPlan()
    p.begin(older_held)
    for pid, what in packets:
        if what == "held":
            p.held(pid)
        elif what == "rewrite":
            p.rewrite(pid, accept, 0, b"")
        else:
            p.plain(pid, accept if what == "accept" else drop)
    return p.finish()
