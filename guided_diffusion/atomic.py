"""Atomic file writes: a crash or a kill never leaves a half-written checkpoint, shard or report.

Everything the project writes goes to a temporary file in the destination directory, is flushed
to disk, and is then renamed into place with ``os.replace`` (atomic on POSIX and Windows).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets what open() would give
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda file: torch.save(obj, file))


def atomic_savez(path: PathLike, **arrays) -> Path:
    """``numpy.savez`` to ``path`` atomically (the name is kept exactly; numpy adds no suffix to a file object)."""
    import numpy as np

    return atomic_write(path, lambda file: np.savez(file, **arrays))


def atomic_write_json(path: PathLike, payload: Mapping[str, Any]) -> Path:
    """``payload`` as indented JSON to ``path`` atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda file: file.write(text.encode()))


def check_output_directory(path: PathLike, what: str = "output") -> Path:
    """Check that ``path`` is, or can become, a directory that holds files; create nothing.

    Called before any expensive work starts (models loading, sampling), so that a bad output fails
    first. Raises ``ValueError`` naming the problem: ``path`` is a file, lies under a file, or
    cannot be written (permission, read-only file system). Writing into the nearest existing
    directory is probed with a temporary file (removed at once); as root, permissions always pass.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {str(path)!r} lies under {str(existing)!r}, which is a file")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{what} {str(path)!r} cannot be written ({reason.lower()})") from None
    return path
