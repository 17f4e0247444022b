"""The pure cores import no I/O: no sockets, asyncio, pyroute2, NetfilterQueue or Textual."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"socket", "asyncio", "pyroute2", "netfilterqueue", "textual", "selectors", "subprocess"}
# The modules that bind the pure cores to the outside world.
IMPURE = {"engine/node.py", "engine/nfq.py", "engine/nfqlib.py", "engine/queue_io.py", "sync/transport.py",
          "sync/liveness.py", "sync/pathio.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0].lower() for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0].lower())
    return names


def _core_files() -> list[Path]:
    files = []
    for pkg in ("engine", "sync"):
        for p in sorted((ROOT / pkg).glob("*.py")):
            if str(p.relative_to(ROOT)) not in IMPURE:
                files.append(p)
    return files


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_io(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import asyncio\nfrom pyroute2 import IPRoute\n")
    assert _imports(probe) & FORBIDDEN == {"asyncio", "pyroute2"}


def test_sync_core_knows_nothing_of_the_engine() -> None:
    for p in sorted((ROOT / "sync").glob("*.py")):
        assert "engine" not in _imports(p), f"{p.name} imports the engine"
