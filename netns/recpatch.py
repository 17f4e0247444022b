"""A recording's patches: what changed between two captures of the console's view, and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Lists of rows patched row by row, by this field. Most rows change every capture (their age),
# so a changed row is stored as its changed fields only.
ROW_KEYS = {"rows": "key", "flows": "name", "nodes": "name"}
ROWS_TAG = "~rows"
DEL_TAG = "~del"

State = dict[str, dict[str, Any]]  # channel ("snapshot", "table n1 own") -> the reply


def diff_rows(old: list[dict[str, Any]], new: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Rows added (`set`), fields changed (`upd`), keys removed (`del`), and the new order only
    if patching would not give it. Raises KeyError or TypeError if a row has no key."""
    old_by = {r[key]: r for r in old}
    new_keys = [r[key] for r in new]
    if len(old_by) != len(old) or len(set(new_keys)) != len(new_keys):
        raise KeyError(key)  # duplicate keys: not a keyed table, store it whole
    present = set(new_keys)
    whole: list[dict[str, Any]] = []
    upd: dict[Any, dict[str, Any]] = {}
    for r in new:
        o = old_by.get(r[key])
        if o is None or not o.keys() <= r.keys():
            whole.append(r)
        elif o != r:
            upd[r[key]] = {f: v for f, v in r.items() if f not in o or o[f] != v}
    out: dict[str, Any] = {"set": whole}
    if upd:
        out["upd"] = upd
    gone = [k for k in old_by if k not in present]
    if gone:
        out["del"] = gone
    patched = [k for k in old_by if k in present] + [k for k in new_keys if k not in old_by]
    if patched != new_keys:
        out["order"] = new_keys
    return out


def patch_rows(old: list[dict[str, Any]], delta: dict[str, Any], key: str) -> list[dict[str, Any]]:
    by = {r[key]: r for r in old}
    for k in delta.get("del", []):
        by.pop(k, None)
    for r in delta.get("set", []):
        by[r[key]] = r
    for k, fields in delta.get("upd", {}).items():
        by[k] = {**by[k], **fields}
    order = delta.get("order")
    if order is not None:
        return [by[k] for k in order if k in by]
    return list(by.values())


def diff_reply(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Fields of `new` that differ from `old` (row lists as row patches), and fields removed."""
    out: dict[str, Any] = {}
    for k, v in new.items():
        if k in old and old[k] == v:
            continue
        rk = ROW_KEYS.get(k)
        if rk and isinstance(old.get(k), list) and isinstance(v, list):
            try:
                out[k] = {ROWS_TAG: diff_rows(old[k], v, rk)}
                continue
            except (KeyError, TypeError, AttributeError):
                pass  # not rows with keys after all
        out[k] = v
    gone = [k for k in old if k not in new]
    if gone:
        out[DEL_TAG] = gone
    return out


def patch_reply(old: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    new = dict(old)
    for k in delta.get(DEL_TAG, []):
        new.pop(k, None)
    for k, v in delta.items():
        if k == DEL_TAG:
            continue
        if isinstance(v, dict) and ROWS_TAG in v and len(v) == 1:
            new[k] = patch_rows(old.get(k) or [], v[ROWS_TAG], ROW_KEYS[k])
        else:
            new[k] = v
    return new


def diff_state(old: State, new: State) -> dict[str, Any]:
    """A capture as a patch: channels whole (`set`), patched (`patch`) or gone (`drop`)."""
    out: dict[str, Any] = {}
    whole = {ch: r for ch, r in new.items() if ch not in old}
    patches = {ch: d for ch, r in new.items() if ch in old and (d := diff_reply(old[ch], r))}
    drop = [ch for ch in old if ch not in new]
    if whole:
        out["set"] = whole
    if patches:
        out["patch"] = patches
    if drop:
        out["drop"] = drop
    return out


def patch_state(old: State, delta: dict[str, Any]) -> State:
    new = {ch: r for ch, r in old.items() if ch not in set(delta.get("drop", []))}
    for ch, d in delta.get("patch", {}).items():
        new[ch] = patch_reply(new.get(ch, {}), d)
    new.update(delta.get("set", {}))
    return new


def table_channel(node: str, scope: str) -> str:
    return f"table {node} {scope}"


# Every row's age grows every capture, which would make every row change every time. A row keeps
# its birth time instead, to the second (the console shows ages in whole seconds), and its age
# is worked out again on reading.
AGE, BORN = "age_s", "~born"


def _map_rows(state: State, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> State:
    out: State = {}
    for ch, reply in state.items():
        reply = dict(reply)
        for f in ROW_KEYS:
            rows = reply.get(f)
            if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                reply[f] = [fn(r) if isinstance(r, dict) else r for r in rows]
        out[ch] = reply
    return out


def freeze_ages(t: float, state: State) -> State:
    def one(r: dict[str, Any]) -> dict[str, Any]:
        age = r.get(AGE)
        if not isinstance(age, (int, float)) or isinstance(age, bool):
            return r
        r = {k: v for k, v in r.items() if k != AGE}
        r[BORN] = round(t - age)
        return r

    return _map_rows(state, one)


def thaw_ages(t: float, state: State) -> State:
    def keep(r: dict[str, Any]) -> dict[str, Any]:
        if BORN not in r:
            return r
        out = {k: v for k, v in r.items() if k != BORN}
        out[AGE] = round(max(0.0, t - float(r[BORN])), 1)
        return out

    return _map_rows(state, keep)
