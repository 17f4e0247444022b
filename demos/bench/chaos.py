"""`syncwall bench chaos`: minutes of random kills, crashes and leaves under traffic (demos.chaos)."""

from __future__ import annotations

import time
from typing import Any

from demos.bench.lab import Progress, bench_lab


def bench_chaos(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    """Issue 7's chaos run: `runs` is the number of minutes of random kills, crashes and leaves."""
    from demos.chaos import run_chaos

    with bench_lab(lab, progress) as name:
        result = run_chaos(name, minutes=float(runs), seed=int(time.time()) % 10000, progress=progress)
    return {"what": f"{runs} minute(s) of random kill/crash/offline + revive under 100 TCP flows "
                    "and FTP sessions; a node is broken only while its backup is alive", **result}
