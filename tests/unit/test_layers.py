"""Layers import downward only (sync <- engine <- netns <- demos <- app); every error is a SyncwallError."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import syncwall_errors

ROOT = Path(__file__).resolve().parents[2]
# Lowest first: a package may import those before it, never those after it.
LAYERS = ("sync", "engine", "netns", "demos", "app")
RANK = {name: i for i, name in enumerate(LAYERS)}

# Imports that break the order today, each with the reason it is still tolerated. Keep it tiny:
# `test_every_allowed_violation_still_exists` fails once one is gone, so the entry gets removed.
ALLOWED: dict[tuple[str, str], str] = {}  # (module, import) -> why; empty, and it should stay so

# Exceptions that may stay outside SyncwallError: BaseException subclasses used purely as control
# flow inside one module, never raised to a caller. (module, class name) -> why.
CONTROL_FLOW: dict[tuple[str, str], str] = {
    ("netns.workloads.ftpclient", "_Stopped"): (
        "raised by the SIGTERM handler to leave a blocking ftplib call; a BaseException so that "
        "no `except Exception` in between swallows the stop"
    ),
}


def _package_files() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, at the top or lazily inside a function, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).with_suffix("")
    package = list(rel.parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            # `from app import cli` imports app.cli: name the submodule so the allow-list can be exact.
            names.update(f"{module}.{a.name}" for a in node.names if a.name != "*" and module in LAYERS)
        elif isinstance(node, ast.Call) and (name := _import_module_arg(node)):
            names.add(name)
    return names


def _import_module_arg(call: ast.Call) -> str | None:
    """The module named by `importlib.import_module("x.y")` (a literal name only)."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if called != "import_module" or not call.args:
        return None
    arg = call.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def upward_imports(path: Path, root: Path = ROOT) -> set[str]:
    """The imports of `path` that reach a layer above its own."""
    own = RANK[path.relative_to(root).parts[0]]
    return {m for m in imported_modules(path, root) if RANK.get(m.split(".")[0], -1) > own}


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    bad = {m for m in upward_imports(path) if (rel, m) not in ALLOWED}
    assert not bad, f"{rel} imports {sorted(bad)}, above its layer in {' <- '.join(LAYERS)}"


def test_every_allowed_violation_still_exists() -> None:
    # Empty today; an entry added later must name an import that exists, or be removed.
    gone = [(rel, m) for rel, m in sorted(ALLOWED) if m not in upward_imports(ROOT / rel)]
    assert not gone, f"no longer imported, remove from ALLOWED in {Path(__file__).name}: {gone}"


def test_the_check_sees_upward_imports_even_lazy_and_relative(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    probe = tmp_path / "engine" / "probe.py"
    probe.write_text(
        "import sync.wire\n"
        "from . import rules\n"
        "def later():\n"
        "    from netns.lab import up\n"
        "    import app.cli\n"
        "    from demos import runner\n"
        "    importlib.import_module('app.serve')\n"
    )
    assert upward_imports(probe, tmp_path) == {"netns.lab", "app.cli", "demos", "demos.runner", "app.serve"}
    assert "engine.rules" in imported_modules(probe, tmp_path)


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for path in _package_files():
        module = importlib.import_module(_module_name(path))
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_the_walk_finds_the_project_exceptions() -> None:
    names = {f"{c.__module__}.{c.__qualname__}" for c in _exception_classes()}
    # A few that must be there, one per layer, so an empty walk cannot pass the next test.
    assert {"sync.records.SyncError", "engine.rules.EngineError", "netns.spec.LabError",
            "demos.scenarios.framework.DemoError", "app.cli.CliError"} <= names


def test_every_exception_is_a_syncwall_error() -> None:
    outside = [
        f"{c.__module__}.{c.__qualname__}" for c in _exception_classes()
        if not issubclass(c, syncwall_errors.SyncwallError)
        and (c.__module__, c.__qualname__) not in CONTROL_FLOW
    ]
    assert not outside, f"not subclasses of syncwall_errors.SyncwallError: {outside}"


@pytest.mark.parametrize(("module", "name"), sorted(CONTROL_FLOW), ids=lambda v: str(v))
def test_control_flow_exceptions_stay_inside_their_module(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseException) and not issubclass(cls, Exception), (
        f"{module}.{name} is an Exception: make it a SyncwallError and drop it from CONTROL_FLOW")
    others = [p for p in _package_files() if _module_name(p) != module and name in p.read_text()]
    assert not others, f"{module}.{name} is used outside its module: {others}"


def test_the_error_root_sits_below_every_layer() -> None:
    project = {m.split(".")[0] for m in imported_modules(ROOT / "syncwall_errors.py")} & set(LAYERS)
    assert not project, f"syncwall_errors.py imports {sorted(project)}: every layer must import it"
