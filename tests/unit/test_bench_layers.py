"""demos/ sits below app/: no demo, bench or chaos module imports app (it is handed what it needs)."""

from __future__ import annotations

import ast
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[2] / "demos"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_demos_module_imports_app() -> None:
    files = sorted(DEMOS.rglob("*.py"))
    assert len(files) > 10
    bad = {str(p.relative_to(DEMOS)): sorted(m for m in imported(p) if m == "app" or m.startswith("app."))
           for p in files}
    assert not {k: v for k, v in bad.items() if v}
