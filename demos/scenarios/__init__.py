"""The demos as data: one module per scenario, each a list of steps run against a lab
(demos.scenarios.framework), gathered here in the order a lesson takes them."""

from __future__ import annotations

from demos.scenarios.backup_groups import BACKUP_GROUPS
from demos.scenarios.basics import BASICS
from demos.scenarios.blocklist import ONE_SEES_ALL_BLOCK
from demos.scenarios.framework import (
    Check,
    DemoContext,
    DemoError,
    Expectation,
    Link,
    Scenario,
    Step,
)
from demos.scenarios.ftp import FTP
from demos.scenarios.join_leave import JOIN_AND_LEAVE
from demos.scenarios.policies import POLICIES
from demos.scenarios.split_brain import SPLIT_BRAIN
from demos.scenarios.takeover import TAKEOVER

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (BASICS, TAKEOVER, FTP, POLICIES, JOIN_AND_LEAVE,
                                                      BACKUP_GROUPS, SPLIT_BRAIN, ONE_SEES_ALL_BLOCK)}

__all__ = ["SCENARIOS", "Check", "DemoContext", "DemoError", "Expectation", "Link", "Scenario", "Step"]
