"""The one root of syncwall's errors, below every layer, so the CLI can catch them all at once."""

from __future__ import annotations


class SyncwallError(Exception):
    """Something a person can act on; the message says what to do. Expected failures raise a
    subclass of this and are printed as one line, without a traceback."""


class UsageError(SyncwallError):
    """Bad input from a person: a command-line argument, a lab file, a request's field."""


class NotFoundError(UsageError):
    """A name that does not exist: a node, a host, a lab, a workload."""


class StateError(SyncwallError):
    """The request is valid but the lab is not in a state that allows it (no lab runs, the
    node is already active, ...)."""


class SystemToolError(SyncwallError):
    """The kernel or a system tool refused (netlink, iptables, a queue setting)."""
