"""Throughput baselines on real namespaces, tiny durations: figures present, nothing left behind."""

from __future__ import annotations

import subprocess

import pytest

from demos import baselines
from netns.record import RUN_ROOT

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
    # Its lab record (RUN_ROOT/swb<pid>, as the main lab keeps one) went with it.
    (prefix,) = {n.rsplit("-", 1)[0] for n in made}
    assert not (RUN_ROOT / prefix).exists(), "the bench left its record behind"
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
    assert not topo.record_path.exists() and not topo.record_path.parent.exists()


def test_a_crashed_topology_is_removed_by_its_record() -> None:
    """What a bench killed mid-run leaves behind, `syncwall clean` removes by the record alone."""
    from netns.lab import clean

    topo = baselines.Topology()
    topo.build()
    try:
        made = {topo.sender, topo.gateway, topo.receiver}
        assert made <= netns_names() and topo.record_path.exists()
        clean(topo.name)  # as `syncwall clean --lab swb<pid>` does
        assert not made & netns_names()
        assert not topo.record_path.parent.exists()
    finally:
        topo.close()  # harmless when already clean
