"""What a file holds, as a key: the SHA-256 of its bytes, computed once and cached.

A sampling run is identified by the content of the checkpoints it uses (not their path or mtime: a
checkpoint copied to another disk still resumes its runs, one retrained in place does not), and cached
reference statistics by the content of the reference batch. Hashing a multi-GB checkpoint takes seconds,
so the digest is cached in a JSON file beside the run, keyed by the file's resolved path, size, modification
time, inode and change time: a file that is written, replaced or moved is hashed again, one left alone is not.
The change time (``st_ctime``) cannot be set back by a program (``os.utime`` sets only the access and
modification times), so a file rewritten in place with its size and modification time restored is still
hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from .atomic import atomic_write_json

CHUNK = 1 << 22  # 4 MiB reads
#: Name of the JSON file caching the digests of the files a run (or a cache directory) reads.
FINGERPRINTS = "fingerprints.json"


def fingerprint_cache(directory: Optional[str | os.PathLike]) -> Optional[Path]:
    """``directory/fingerprints.json``, the digest cache kept in a directory (``None``: no cache)."""
    return None if directory is None else Path(directory) / FINGERPRINTS


def sha256_of(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes (read in 4 MiB chunks, never whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def text_digest(text: str) -> str:
    """The hex SHA-256 of a text (a key made of settings)."""
    return hashlib.sha256(text.encode()).hexdigest()


def _stat_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}"


def content_hash(path: str | os.PathLike, cache: Optional[str | os.PathLike] = None) -> str:
    """The file's :func:`sha256_of`, read from / written to the JSON ``cache`` (``None``: no cache).

    The cache maps ``resolved path|size|mtime_ns|inode|ctime_ns`` to the digest; a cache that does not read back is
    rebuilt (it is only a shortcut), and it is written atomically, so an interrupted write loses nothing.
    """
    path = Path(path)
    if cache is None:
        return sha256_of(path)
    cache, key = Path(cache), _stat_key(path)
    known = _read_cache(cache)
    if key not in known:
        known[key] = sha256_of(path)
        if key == _stat_key(path):  # the file did not change while it was read
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache, known)
    return known[key]


def _read_cache(cache: Path) -> dict[str, str]:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in known.items() if isinstance(value, str)} if isinstance(known, dict) else {}
