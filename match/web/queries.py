"""Query images the UI keeps for a little while, so a search has a URL.

A search is a POST with an image; the UI keeps the bytes under an unguessable key and
redirects to ``/ui/?q=<key>&cutoff=...`` (POST/redirect/GET). That page can then be
reloaded, bookmarked for the hour, re-run at another cutoff by the slider without
uploading again, and its top matches sent to the crowd, all without the browser
sending the image a second time.

Files live in ``<MATCH_DATA_DIR>/ui-queries/<key>`` (shared by every worker process);
the key is an HMAC of the image's SHA-256 under the UI secret, so the same image is
kept once and nobody can derive a key from an image. Files older than :data:`TTL`
are pruned when a new one is kept, and at most :data:`MAX_FILES` are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from match.web import csrf

__all__ = ["TTL", "MAX_FILES", "keep", "load", "is_key"]

#: Seconds a kept query image lives.
TTL = 3600
#: Most query images kept at once (the oldest go first).
MAX_FILES = 500


def _directory(settings: Mapping[str, Any]) -> Path:
    return Path(str(settings["MATCH_DATA_DIR"])) / "ui-queries"


def is_key(key: object) -> bool:
    """Whether ``key`` looks like a query key (32 hex characters)."""
    return isinstance(key, str) and len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def keep(settings: Mapping[str, Any], data: bytes) -> str:
    """Keep ``data``; returns its key."""
    digest = hashlib.sha256(data).hexdigest()
    key = hmac.new(csrf.secret(settings), f"query:{digest}".encode(), hashlib.sha256).hexdigest()[:32]
    directory = _directory(settings)
    directory.mkdir(parents=True, exist_ok=True)
    _prune(directory)
    target = directory / key
    temp = directory / f".{key}.{os.getpid()}.tmp"
    temp.write_bytes(data)
    temp.replace(target)  # also refreshes the mtime of an image kept before
    return key


def load(settings: Mapping[str, Any], key: str) -> bytes | None:
    """The kept bytes of ``key``, or None when unknown or expired."""
    if not is_key(key):
        return None
    path = _directory(settings) / key
    try:
        if path.stat().st_mtime < time.time() - TTL:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _prune(directory: Path) -> None:
    now = time.time()
    entries = []
    for path in directory.iterdir():
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime < now - TTL:
            path.unlink(missing_ok=True)
        else:
            entries.append((mtime, path))
    entries.sort()
    for _, path in entries[: max(0, len(entries) - MAX_FILES + 1)]:
        path.unlink(missing_ok=True)
