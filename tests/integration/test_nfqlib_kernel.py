"""Our libnetfilter_queue binding against the real kernel, in a private network namespace
(`unshare -n`, gone with its process): one system call reads many packets, batched verdicts
pass them, a held packet stays queued while later ones pass, and its own verdict releases it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import json, socket, subprocess, time
from engine.nfqlib import Queue, NF_ACCEPT
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9999",
                "-j", "NFQUEUE", "--queue-num", "3"], check=True)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 9999))
rx.settimeout(0.3)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q = Queue(3, gso=False)
held = []
def decide(data, mark, pid):
    if data[-1:] == b"3":
        held.append(q.hold(pid, mark, data))
        return -1
    return NF_ACCEPT
def got():
    out = []
    try:
        while True:
            out.append(rx.recv(100).decode())
    except OSError:
        return out
sent = [f"p{i}" for i in range(10)]
for s in sent:
    tx.sendto(s.encode(), ("127.0.0.1", 9999))
done, deadline = 0, time.monotonic() + 3
while done < 10 and time.monotonic() < deadline:
    done += q.read(decide, 256)
before = got()
held[0].accept()
after = got()
first, held_left = dict(q.counters), len(q.held)
# A second burst with nothing held (no name ends in 3): a read's verdicts may go out as one batch.
for i in range(10):
    tx.sendto(f"q{i}.".encode(), ("127.0.0.1", 9999))
done2, deadline = 0, time.monotonic() + 3
while done2 < 10 and time.monotonic() < deadline:
    done2 += q.read(decide, 256)
second = {k: v - first[k] for k, v in q.counters.items()}
print(json.dumps({"read": done, "before": before, "after": after, "counters": first,
                  "held_left": held_left, "read2": done2, "got2": got(), "second": second}))
q.close()
'''


def test_batched_verdicts_pass_packets_and_never_take_a_held_one() -> None:
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", CHILD], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["read"] == 10
    assert sorted(out["before"]) == [f"p{i}" for i in range(10) if i != 3]
    assert out["after"] == ["p3"]
    first = out["counters"]
    assert first["nfq_batches"] >= 1
    assert first["nfq_verdict_errors"] == 0 and out["held_left"] == 0
    # Many packets per system call: the 10 were queued before the first read, and recvmmsg took
    # them in one call (two at most); a read per packet would be 10.
    assert first["nfq_packets"] == 10 and first["nfq_reads"] <= 2, first
    # With nothing held, a read's verdicts go out as one batch message each: no single verdicts.
    second = out["second"]
    assert out["read2"] == 10 and sorted(out["got2"]) == [f"q{i}." for i in range(10)]
    assert second["nfq_packets"] == 10 and second["nfq_reads"] <= 2, second
    assert 1 <= second["nfq_batches"] <= second["nfq_reads"] and second["nfq_singles"] == 0, second
    assert second["nfq_verdict_errors"] == 0
