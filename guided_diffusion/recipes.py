"""Where the bundled ``gd fit`` configs (the recipes of ``configs/<name>/*.yaml``) are.

An installed package holds them as ``guided_diffusion/configs`` (``setup.py`` copies the top-level
``configs/`` there when it builds the wheel); a source checkout or an editable install reads the
top-level ``configs/`` of the checkout itself. :func:`configs_root` picks the first that exists.
"""
from __future__ import annotations

from pathlib import Path

#: The copy inside an installed package.
INSTALLED = Path(__file__).resolve().parent / "configs"
#: The top-level ``configs/`` of a source checkout (this file's package sits beside it).
SOURCE = Path(__file__).resolve().parents[1] / "configs"


def configs_root() -> Path:
    """The folder holding the bundled configs: the installed copy if present, else the checkout's ``configs/``.

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    for root in (INSTALLED, SOURCE):
        if root.is_dir():
            return root
    raise FileNotFoundError(f"the bundled configs are missing: neither {INSTALLED} nor {SOURCE} exists "
                            f"(reinstall the package)")


def config_path(name: str | Path) -> Path:
    """Path of a bundled config file or folder, e.g. ``config_path("mnist/diffusion.yaml")``.

    Raises:
        FileNotFoundError: no such file or folder among the bundled configs.
    """
    path = configs_root() / name
    if not path.exists():
        raise FileNotFoundError(f"the bundled config {str(name)!r} is missing: {path} does not exist")
    return path
