"""Files M2GAN derives once and reuses: where they live, how they are keyed, how they are written.

Real-image feature statistics for FID and the shapes judge's weights are expensive to compute and
cheap to keep. Each is stored under :func:`cache_root` by a key that hashes *everything* its
content depends on (a weights file by its content, not its path), and written atomically
(:mod:`m2gan.atomic`) so a crash never leaves a half-written file that a later run would trust.
Processes that need the same file at once (runs started together, DDP ranks, test workers) make it
once: the first holds a lock beside it while it computes, and the others wait for its file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def cache_root() -> Path:
    """``$M2GAN_CACHE``, else ``$XDG_CACHE_HOME/m2gan``, else ``~/.cache/m2gan``."""
    if os.environ.get("M2GAN_CACHE"):
        return Path(os.environ["M2GAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m2gan"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (hex): two files with the same bytes share it, whatever their names."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_digest(fields: dict) -> str:
    """A short stable hash of a JSON-serialisable ``fields`` dict (order of keys does not matter)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def made_once(path: str | os.PathLike, make: Callable[[Path], None]) -> Path:
    """``path``, after ``make(path)`` has written it (atomically) unless it exists already.

    A lock file beside it (``<name>.lock``) makes processes that ask at the same time wait for
    the first one's file instead of each computing it.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():  # another process may have written it while this one waited
            make(path)
    return path
