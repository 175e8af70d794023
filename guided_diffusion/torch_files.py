"""Reading ``torch.save`` files a user names: always ``weights_only=True``, every failure one clear line.

:func:`load_torch_file` is the one place the project reads a checkpoint, network file or feature
weights from a path it was given. It never executes code from the file (``weights_only=True``:
only tensors and plain containers are rebuilt) and it turns every way a file can be wrong into a
``ValueError`` / ``FileNotFoundError`` whose message names the file and says what it is not:

* missing, a directory, or empty;
* not a PyTorch file at all (text, random bytes): the first bytes are neither a zip archive
  (``torch.save`` since 1.6) nor a pickle (the legacy format);
* truncated or corrupt (cut during a copy, a full disk): the archive or pickle does not read back;
* holding Python objects other than tensors and plain containers (a pickle that would run code):
  refused, naming the offending global. PyTorch's own message suggests retrying with
  ``weights_only=False``; that advice is never passed on.

Nothing here imports Lightning.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

PathLike = str | os.PathLike

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80  # first byte of a pickle of protocol >= 2 (torch.save's legacy format)
_GLOBAL = re.compile(r"(?:Unsupported global|global):?\s*(?:GLOBAL\s+)?([\w.]+)")


def check_torch_file(path: PathLike, what: str = "checkpoint") -> Path:
    """``path`` as a ``Path`` if it exists, is a file, is not empty and starts like a ``torch.save`` file.

    Cheap (reads 4 bytes): commands call it on every file they were given before any model loads.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: it is a directory, empty, or not a PyTorch file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory, not a file")
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except PermissionError:
        raise ValueError(f"{what} {str(path)!r} is not readable (permission denied)") from None
    if not head:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes): not a PyTorch file")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTOCOL:
        raise ValueError(f"{what} {str(path)!r} is not a PyTorch file (torch.save writes a zip archive; "
                         f"this file starts with {head!r})")
    return path


def load_torch_file(path: PathLike, what: str = "checkpoint", map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``path`` (see the module doc).

    Args:
        path: the file a user named.
        what: what the file should be, for the messages (``"checkpoint"``, ``"network file"``...).
        map_location: passed to ``torch.load``.
        mmap: memory-map the tensors (zip files): cheap when only a few small entries are read.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: anything else that makes the file unreadable or unsafe.
    """
    path = check_torch_file(path, what)
    if mmap:  # only zip archives can be memory-mapped
        with open(path, "rb") as file:
            mmap = file.read(4) == _ZIP_MAGIC
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as error:
        if not _is_refusal(error):  # a pickle cut short, not one refused by the safe unpickler
            raise ValueError(_corrupt(path, what, error)) from None
        found = _GLOBAL.search(str(error))
        culprit = f" ({found.group(1)})" if found else ""
        raise ValueError(f"refusing to load {what} {str(path)!r}: it holds Python objects other than tensors and "
                         f"plain containers{culprit}, and a safe load never runs code from a file") from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError, IndexError, TypeError) as error:
        raise ValueError(_corrupt(path, what, error)) from None


def _is_refusal(error: BaseException) -> bool:
    text = str(error)
    return "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text


def _corrupt(path: Path, what: str, error: BaseException) -> str:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "weights_only" in reason:  # never pass on PyTorch's advice to load unsafely
        reason = type(error).__name__
    return (f"{what} {str(path)!r} is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{_strip_advice(reason)})")


def _strip_advice(message: str) -> str:
    """Drop PyTorch's hint to retry with ``weights_only=False`` from a message."""
    return re.split(r"\s*(?:\(\d+\)\s*)?(?:In PyTorch|Re-running|If you)", message)[0][:200] or "unreadable"
