"""Shared test setup: integration tests need root (skipped loudly without); each run names its seed."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (CI runs them as root)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    # pytest-randomly prints its seed only in the header, which -q hides; a failure that depends on
    # the order is only worth something if the order can be replayed, so say it at the end too.
    if not config.pluginmanager.hasplugin("randomly"):
        return
    seed = config.getoption("randomly_seed")
    terminalreporter.write_line(
        f"test order shuffled with seed {seed}: replay with -p randomly --randomly-seed={seed}, "
        "or keep file order with -p no:randomly")
