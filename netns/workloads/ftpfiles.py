"""The files the lab's FTP server serves: names, sizes and deterministic content both ends can compute."""

from __future__ import annotations

import hashlib

from netns.workloads.health import WorkloadError

# name -> size in bytes; the content of each is file_content(name).
FILES: dict[str, int] = {
    "small.bin": 1024,
    "medium.bin": 100 * 1024,
    "large.bin": 1024 * 1024,
}


def file_content(name: str) -> bytes:
    """The deterministic bytes of served file `name` (one of FILES)."""
    if name not in FILES:
        raise WorkloadError(f"unknown file {name!r}; the server serves {', '.join(FILES)}")
    size = FILES[name]
    blocks = []
    seed = name.encode()
    for i in range((size + 63) // 64):
        blocks.append(hashlib.blake2b(seed + i.to_bytes(8, "big"), digest_size=64).digest())
    return b"".join(blocks)[:size]
