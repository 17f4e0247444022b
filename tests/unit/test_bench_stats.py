"""The bench's statistics helpers and its JSON contract, on pure inputs (no root, no lab)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from demos.bench import (
    BENCHES,
    BenchError,
    median,
    p99,
    percentile,
    ratio,
    readable,
    run_bench,
    spread,
    summarize,
)
from demos.bench.lab import Progress


def test_median_of_odd_and_even_counts() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5


def test_p99_is_a_measured_value_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert p99(values) == 99
    assert p99([5.0]) == 5.0
    assert percentile([10, 20, 30, 40], 50) == 20
    assert percentile([10, 20, 30, 40], 100) == 40
    # with fewer than 100 samples p99 is the largest one
    assert p99([1, 2, 3, 1000]) == 1000


def test_spread_is_max_minus_min() -> None:
    assert spread([5, 9, 7]) == 4
    assert spread([3]) == 0


def test_empty_inputs_are_refused_with_a_clear_error() -> None:
    for fn in (median, p99, spread):
        with pytest.raises(ValueError, match="no values"):
            fn([])
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1], 101)


def test_summarize_gives_every_figure_and_keeps_samples() -> None:
    s = summarize([120.0, 100.0, 140.0], digits=1)
    assert s == {"median": 120.0, "p99": 140.0, "min": 100.0, "max": 140.0, "spread": 40.0, "n": 3,
                 "samples": [120.0, 100.0, 140.0]}
    empty = summarize([])
    assert empty["n"] == 0 and empty["median"] is None


def test_ratio_pairs_values_of_the_same_run() -> None:
    r = ratio([150.0, 90.0], [200.0, 100.0])
    assert r["samples"] == [0.75, 0.9]
    assert r["median"] == pytest.approx(0.825)
    assert ratio([1.0], [0.0])["n"] == 0  # a zero baseline gives no ratio, not a crash


def test_unknown_bench_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench("nope", as_json=True, lab=None, runs=1) == 2
    out, err = capsys.readouterr()
    assert "throughput" in err and "failover" in err
    doc = json.loads(out)
    assert doc["bench"] == "nope" and "throughput" in doc["error"]


@pytest.mark.parametrize("exc", [BenchError("no iperf3 in the lab's hosts"), ValueError("a bug")])
def test_a_bench_that_fails_still_ends_with_one_json_object(
        exc: Exception, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
        progress("run 1/1 started")
        raise exc

    monkeypatch.setitem(BENCHES, "throughput", (failing, 1))
    assert run_bench("throughput", as_json=True, lab=None, runs=1) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"bench": "throughput", "error": str(exc) if isinstance(exc, BenchError)
                               else "ValueError: a bug"}
    assert "run 1/1 started" in err
    # Without --json the reason goes to stderr only.
    assert run_bench("throughput", as_json=False, lab=None, runs=1) == 1
    assert capsys.readouterr().out == ""


def test_resync_bench_prints_one_json_object_and_progress(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWBENCH_RESYNC_SIM_SIZES", "500")
    monkeypatch.setenv("SWBENCH_RESYNC_LAB", "0")  # the lab part needs root and a lab of its own
    assert run_bench("resync", as_json=True, lab=None, runs=2) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["bench"] == "resync" and doc["runs"] == 2 and "lab" not in doc
    fig = doc["simulator"]["sizes"]["500"]
    assert fig["records_received"]["median"] == 500
    assert fig["wall_s"]["n"] == 2 and fig["wall_s"]["median"] > 0
    assert doc["machine"]["cpus"] >= 1
    assert "run 2/2" in err


def test_readable_output_names_each_figure_with_median_and_range() -> None:
    doc = {"bench": "x", "machine": {"cpus": 2}, "takeover_ms": summarize([130.0, 152.0, 159.0], 1),
           "modes": {"c": {"pps": summarize([1.0, 3.0], 0)}, "none": {"pps": summarize([])}}}
    lines = readable(doc)
    assert "bench: x" in lines
    assert "takeover_ms: 152 [130-159] p99 159 (3 samples)" in lines
    assert "modes.c.pps: 2 [1-3] p99 3 (2 samples)" in lines
    assert "modes.none.pps: no samples" in lines
    assert not any("cpus" in line for line in lines)


def test_conn_rate_prints_ratios_only_when_the_kernel_baseline_is_steady() -> None:
    from demos.bench.conn_rate import STABLE_SPREAD, _relative_spread

    # The collapse the TIME_WAIT ports caused (issue 13): 21.6k -> 434 conn/s in one run.
    assert (_relative_spread([21600, 20900, 434]) or 0) > STABLE_SPREAD
    assert _relative_spread([12154, 11656, 11684]) == 0.043
    assert _relative_spread([1.0, 2.0, 3.0, 4.0]) == 1.2  # (4 - 1) / median 2.5
    assert _relative_spread([]) is None


def test_the_kernel_baseline_is_steady_only_over_enough_samples() -> None:
    from demos.bench.conn_rate import MIN_KERNEL_SAMPLES, kernel_stable

    # One sample has a spread of 0: `--runs 1` used to count as steady and print ratios.
    ok, why = kernel_stable([12154])
    assert not ok and "only 1 kernel sample" in why and f"at least {MIN_KERNEL_SAMPLES}" in why
    assert not kernel_stable([12154, 11656])[0]
    ok, why = kernel_stable([12154, 11656, 434])  # a collapse in the third run
    assert not ok and "spread" in why and "above 0.15" in why
    assert kernel_stable([12154, 11656, 11684]) == (True, "")
    assert not kernel_stable([])[0]


def test_the_block_bench_says_whether_every_apply_was_within_its_target() -> None:
    from demos.bench.block import within_target
    ok, line = within_target([0.4, 0.9, 4.99])
    assert ok and line.startswith("within the 5 ms target: yes") and "4.99 ms" in line and "3 applies" in line
    ok, line = within_target([0.4, 5.2])
    assert not ok and "target: NO" in line and "5.20 ms" in line
    assert within_target([])[0] is False  # no other node applied it: not within
    # The text summary (`syncwall bench block` without --json) prints the verdict line.
    doc = {"bench": "block", "block_ms": summarize([0.4, 0.9]), "within_target": ok, "notes": [line]}
    assert f"notes: {line}" in readable(doc)
