"""Atomic file writes: a crash or a kill never leaves a half-written checkpoint, shard or report.

Everything the project writes goes to a temporary file in the destination directory, is flushed
to disk, and is then renamed into place with ``os.replace`` (atomic on POSIX and Windows).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Optional

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
    except OSError as error:  # no space left, a read-only disk...: named by the file being written
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, f"{error.strerror or error} writing", str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (torch reports a failed write, e.g. a full disk, as a
    ``RuntimeError``: it becomes an ``OSError`` naming ``path``)."""
    import torch

    try:
        return atomic_write(path, lambda file: torch.save(obj, file))
    except RuntimeError as error:
        if "write" not in str(error).lower():
            raise
        raise OSError(0, f"torch.save failed ({' '.join(str(error).split())[:160]}) writing", str(path)) from None


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


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same existing file (also through links or ``..``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: PathLike, option: str, inputs: Mapping[str, Optional[PathLike]] = {}, *,
                      ours: Optional[Callable[[Path], bool]] = None, overwrite: bool = False) -> Path:
    """A file a command is about to write, checked before any work: never one of the command's ``inputs``
    (``{"the sample batch": path, ...}``), and an existing file only if the command wrote it (``ours(path)``)
    or ``overwrite`` is set. Creates nothing; raises ``ValueError`` naming ``option`` and what to do.
    ``ours=lambda path: True`` keeps only the input check (the library functions; a command checks the rest)."""
    path = Path(path)
    for what, source in inputs.items():
        if source is not None and (same_file(path, source) or path.resolve() == Path(source).resolve()):
            raise ValueError(f"{option} {str(path)!r} is {what}: it would be overwritten; write to another file")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a directory, not a file")
    check_output_directory(path.parent, option)
    if path.exists() and not overwrite and not (ours is not None and ours(path)):
        raise ValueError(f"{option} {str(path)!r} exists and was not written by this command; remove it, choose "
                         "another file or give --overwrite true")
    return path


def check_own_directory(path: PathLike, option: str, names: tuple[str, ...], marker: str, *,
                        overwrite: bool = False) -> Path:
    """A directory a command writes its files into, checked before any work: if it already holds files of the
    names the command writes (``names``: glob patterns) but not the ``marker`` file the command leaves in its own
    directories, they are someone else's and are not written over (unless ``overwrite``)."""
    path = check_output_directory(path, option)
    if overwrite or not path.is_dir() or (path / marker).exists():
        return path
    foreign = sorted({found.name for pattern in names for found in path.glob(pattern)})
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"{option} {str(path)!r} holds {shown} but no {marker}: files this command did not write "
                         "are never written over; choose another directory or give --overwrite true")
    return path
