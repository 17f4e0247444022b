"""Authenticated users as common state (no I/O): one record per logged-in source address.

`syncwall auth login USER --host c1` makes one node write the record (key USER_TAG + address);
every node that holds it lets that source through rules with `auth = true`. Logout deletes it
(a common tombstone every node hears)."""

from __future__ import annotations

from sync.records import NO_BUCKET, Record, Scope

USER_TAG = b"U"  # 85: not a protocol we track, so user keys never collide with connection keys


def user_key(addr: bytes) -> bytes:
    return USER_TAG + addr


def user_record(user: str, addr: bytes, owner: str, version: int, since: float) -> Record:
    """User record data (positional): user name, source address, logged in at."""
    if not user or not user.isprintable() or len(user) > 64:
        raise ValueError(f"a user name is 1-64 printable characters, got {user!r}")
    if len(addr) not in (4, 16):
        raise ValueError(f"a user's host is an IPv4 or IPv6 address, got {addr.hex()}")
    return Record(user_key(addr), Scope.COMMON, owner, version, NO_BUCKET, [user, addr, since])


def check_user_record(r: Record) -> None:
    """ValueError unless `r` is a well-formed user record."""
    if r.key[:1] != USER_TAG or len(r.data) < 3 or bytes(r.data[1]) != r.key[1:]:
        raise ValueError(f"not a user record: {r.key.hex()}")
    if not isinstance(r.data[0], str):
        raise ValueError("a user record's name is a string")
