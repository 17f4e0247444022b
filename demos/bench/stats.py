"""Statistics of repeated measurements and their readable form: median, nearest-rank p99, spread, ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually measured."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def spread(values: Sequence[float]) -> float:
    """max - min: how far apart the repeated runs landed."""
    if not values:
        raise ValueError("spread of no values")
    return float(max(values) - min(values))


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, p99, min, max and spread of repeated measurements (None figures when there are none)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "p99": None, "min": None, "max": None, "spread": None, "n": 0,
                "samples": []}
    return {
        "median": round(median(vals), digits),
        "p99": round(p99(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "spread": round(spread(vals), digits),
        "n": len(vals),
        "samples": [round(v, digits) for v in vals],
    }


def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """Run-by-run ratios (each pair measured in the same run), summarized."""
    pairs = [a / b for a, b in zip(num, den, strict=False) if b]
    return summarize(pairs, 3)


def readable(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """The figures of a bench result as lines: `path: median [min-max] p99 (n runs)`."""
    lines: list[str] = []
    for k, v in doc.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and "median" in v and "samples" in v:
            if v["n"]:
                lines.append(f"{path}: {v['median']:g} [{v['min']:g}-{v['max']:g}] p99 {v['p99']:g} "
                             f"({v['n']} samples)")
            else:
                lines.append(f"{path}: no samples")
        elif isinstance(v, dict) and k != "machine":
            lines += readable(v, f"{path}.")
        elif prefix == "" and k in ("bench", "command", "what", "elapsed_s"):
            lines.append(f"{path}: {v}")
        elif isinstance(v, list) and k == "notes":
            lines += [f"{path}: {n}" for n in v]
    return lines
