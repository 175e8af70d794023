"""Build script: the metadata is in setup.cfg; this adds the bundled configs to the built package.

``build_py`` also copies every file of the top-level ``configs/`` (the ``gd fit`` recipes that
``gd demo`` and the presets use) into the build as ``guided_diffusion/configs/``, so the wheel, and
a package installed from it, carries them (found by :mod:`guided_diffusion.recipes`). An editable
install copies nothing: the package reads the checkout's ``configs/`` in place.
"""
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: The source folder (relative to this file, where builds run) and its place in the built package.
CONFIGS_SOURCE = "configs"
CONFIGS_TARGET = ("guided_diffusion", "configs")


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``configs/**`` into the build as ``guided_diffusion/configs/**``."""

    def config_files(self) -> dict[str, str]:
        """Build-directory target -> source file, for every file under ``configs/``.

        Raises:
            FileNotFoundError: ``configs/`` is missing or empty (the package would be broken).
        """
        root = Path(CONFIGS_SOURCE)
        sources = sorted(path for path in root.rglob("*")
                         if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."))
        if not sources:
            raise FileNotFoundError(f"no config files under {root.resolve()}: the package would ship without them")
        return {os.path.join(self.build_lib, *CONFIGS_TARGET, *path.relative_to(root).parts): str(path)
                for path in sources}

    def run(self) -> None:
        """Build the packages, then copy the configs (not in editable mode, which builds nothing).

        The copy of an earlier build is removed first, so a config deleted from ``configs/`` is not shipped.
        """
        super().run()
        if not self.editable_mode:
            shutil.rmtree(os.path.join(self.build_lib, *CONFIGS_TARGET), ignore_errors=True)
            for target, source in self.config_files().items():
                self.mkpath(os.path.dirname(target))
                self.copy_file(source, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """The files the build writes, the copied configs included."""
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + list(self.config_files())

    def get_output_mapping(self) -> dict[str, str]:
        """Target -> source of the built files, the copied configs included."""
        return {**super().get_output_mapping(), **self.config_files()}


setup(cmdclass={"build_py": BuildPyWithConfigs})
