"""Throughput baselines on real namespaces, tiny durations: figures present, nothing left behind."""

from __future__ import annotations

import subprocess

import pytest

from demos import baselines

pytestmark = pytest.mark.integration


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_baselines_measure_every_mode_and_remove_their_topology() -> None:
    before = netns_names()
    lines: list[str] = []
    out = baselines.measure(duration_s=0.5, runs=1, modes=("kernel", "c", "python", "python-gso"),
                            progress=lines.append)
    made = set(out["namespaces"])
    assert len(made) == 3 and all(n.startswith("swb") for n in made)
    assert not made & before, "the bench reused a namespace it did not create"
    # Others may create namespaces meanwhile: check that ours are gone.
    after = netns_names()
    assert not made & after, "the bench left namespaces behind"
    assert not list(baselines.RECORD_DIR.glob("*.json")) or all(
        n not in p.read_text() for p in baselines.RECORD_DIR.glob("*.json") for n in made)
    c_skipped = any(n.startswith("C NFQUEUE loop skipped") for n in out["notes"])
    expected = {"kernel", "python", "python-gso"} | (set() if c_skipped else {"c"})
    assert set(out["samples"]) == expected, out["notes"]
    for mode, s in out["samples"].items():
        assert len(s["pps"]) == 1 and s["pps"][0] > 0, mode
        assert len(s["mbps"]) == 1 and s["mbps"][0] > 0, mode
    assert any("python-gso" in line for line in lines), "progress is reported while it runs"


def test_topology_is_removed_even_when_the_measurement_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), baselines.Topology() as topo:
        assert {topo.sender, topo.gateway, topo.receiver} <= netns_names()
        raise RuntimeError("boom")
    assert not {topo.sender, topo.gateway, topo.receiver} & netns_names()
    assert not topo.record_path.exists()
