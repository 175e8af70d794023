"""The wheel holds what an installed ``gd`` needs, and nothing of the checkout that it does not.

The wheel is built (PEP 517, ``setuptools.build_meta``, offline, about a second) from a copy of the
checkout, so the build leaves no ``build/`` or ``*.egg-info`` in it, both straight from the tree (as
``pip install .`` does) and from the sdist (as ``python -m build`` does). :func:`wheel_problems`
lists what is wrong with a wheel: a config of ``configs/`` missing or different, a module of the
packages missing, no ``gd`` console script or one whose function is not in the wheel, a requirement
missing, or files outside the packages (``tests/``, ``benchmarks/``, ...). The last test unpacks the
wheel as an install would and checks that ``gd demo``'s recipes resolve to the copy inside the
package, from an unrelated folder.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guided_diffusion", "classifiers")
CONFIGS_IN_WHEEL = "guided_diffusion/configs"
#: The module of ``gd demo``, whose ``CONFIGS`` is the folder of its recipes.
DEMO_MODULE = "guided_diffusion.commands.demo"
#: Console scripts the wheel must install (their targets must be functions of its modules).
CONSOLE_SCRIPTS = ("gd",)
#: Top-level entries of the checkout that a build neither needs nor may leave behind.
NOT_COPIED = {".git", ".venv", "build", "dist", "outputs", "wandb", "lightning_logs", ".pytest_cache"}
BUILD = ("import sys; from setuptools import build_meta; "
         "print(getattr(build_meta, sys.argv[1])(sys.argv[2]))")


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == ROOT
    return {name for name in names
            if name == "__pycache__" or (top and (name in NOT_COPIED or name.endswith(".egg-info")))}


def _build(hook: str, source: Path, out: Path) -> Path:
    """Run ``setuptools.build_meta.<hook>`` in ``source`` (a subprocess) and return the file it made in ``out``."""
    result = subprocess.run([sys.executable, "-c", BUILD, hook, str(out)], cwd=source, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, f"{hook} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out / result.stdout.strip().splitlines()[-1]


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def wheel_problems(wheel: Path) -> list[str]:
    """What the wheel lacks for an installed ``gd`` (or holds that it should not), one line each."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = {name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")}
        if len(dist_info) != 1:
            return [f"expected one .dist-info folder, found {sorted(dist_info)}"]
        meta = dist_info.pop()

        for source in sorted(path for path in (ROOT / "configs").rglob("*") if path.is_file()):
            name = f"{CONFIGS_IN_WHEEL}/{source.relative_to(ROOT / 'configs').as_posix()}"
            if name not in names:
                problems.append(f"config missing: {name}")
            elif archive.read(name) != source.read_bytes():
                problems.append(f"config differs from the checkout's: {name}")

        for package in PACKAGES:
            for source in sorted((ROOT / package).rglob("*.py")):
                name = source.relative_to(ROOT).as_posix()
                if "__pycache__" not in name and name not in names:
                    problems.append(f"module missing: {name}")

        entry_points = configparser.ConfigParser(delimiters=("=",))
        if f"{meta}/entry_points.txt" in names:
            entry_points.read_string(archive.read(f"{meta}/entry_points.txt").decode())
        scripts = dict(entry_points["console_scripts"]) if entry_points.has_section("console_scripts") else {}
        for script in CONSOLE_SCRIPTS:
            target = scripts.get(script)
            if target is None:
                problems.append(f"console script {script} missing (found {scripts})")
                continue
            module, _, function = target.partition(":")
            files = [f"{module.replace('.', '/')}{suffix}" for suffix in (".py", "/__init__.py")]
            code = next((archive.read(name).decode() for name in files if name in names), None)
            if code is None or not re.search(rf"^def {re.escape(function)}\(", code, re.MULTILINE):
                problems.append(f"console script {script} = {target}: no function {function} in {files[0]}")

        metadata = archive.read(f"{meta}/METADATA").decode() if f"{meta}/METADATA" in names else ""
        required = _requirement_names([line[len("Requires-Dist:"):] for line in metadata.splitlines()
                                       if line.startswith("Requires-Dist:")])
        wanted = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
        problems += [f"requirement missing from the metadata: {name}" for name in sorted(wanted - required)]

        top_level = {name.split("/", 1)[0] for name in names}
        problems += [f"not part of the packages: {name}/" for name in sorted(top_level - set(PACKAGES) - {meta})]
    return problems


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout (its sources, tests and benchmarks; no build output, venv or git)."""
    source = tmp_path_factory.mktemp("checkout") / "guided-diffusion"
    shutil.copytree(ROOT, source, ignore=_ignore)
    return source


@pytest.fixture(scope="module")
def tree_wheel(checkout, tmp_path_factory) -> Path:
    """The wheel built straight from the checkout's tree, as ``pip install .`` does."""
    return _build("build_wheel", checkout, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def sdist_wheel(checkout, tmp_path_factory) -> Path:
    """The wheel built from the checkout's sdist, as ``python -m build`` does."""
    sdist = _build("build_sdist", checkout, tmp_path_factory.mktemp("sdist"))
    unpacked = tmp_path_factory.mktemp("sdist-unpacked")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (source,) = unpacked.iterdir()
    return _build("build_wheel", source, tmp_path_factory.mktemp("sdist-wheel"))


@pytest.mark.parametrize("built", ["tree_wheel", "sdist_wheel"])
def test_wheel_holds_configs_packages_and_gd_and_nothing_else(built, request):
    assert wheel_problems(request.getfixturevalue(built)) == []


def test_wheel_problems_finds_a_broken_wheel(tree_wheel, tmp_path):
    """A wheel without a config and the ``gd`` script, with a test file added, is reported on each count."""
    broken = tmp_path / tree_wheel.name
    with zipfile.ZipFile(tree_wheel) as good, zipfile.ZipFile(broken, "w") as bad:
        for name in good.namelist():
            if name == f"{CONFIGS_IN_WHEEL}/mnist/diffusion.yaml":
                continue
            data = good.read(name)
            if name.endswith("/entry_points.txt"):
                data = data.replace(b"gd = ", b"gd-old = ")
            bad.writestr(name, data)
        bad.writestr("tests/test_demo.py", b"")
    new = set(wheel_problems(broken)) - set(wheel_problems(tree_wheel))
    assert f"config missing: {CONFIGS_IN_WHEEL}/mnist/diffusion.yaml" in new
    assert "not part of the packages: tests/" in new
    assert any(problem.startswith("console script gd missing") for problem in new)
    assert len(new) == 3, new


def test_installed_demo_finds_its_recipes_inside_the_package(tree_wheel, tmp_path):
    """Unpacked as pip installs a pure-Python wheel, the demo's ``CONFIGS`` is the packaged copy,
    whatever the working directory (the checkout's ``configs/`` is not reachable from there)."""
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(tree_wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (f"import {DEMO_MODULE} as demo, guided_diffusion.recipes as recipes; "
              "print(demo.__file__); print(demo.CONFIGS); print(recipes.config_path('mnist/classifier.yaml'))")
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    module, configs, classifier = map(Path, result.stdout.strip().splitlines()[-3:])
    assert module == site.joinpath(*DEMO_MODULE.split(".")).with_suffix(".py")
    assert configs == site / CONFIGS_IN_WHEEL / "mnist"
    assert classifier == configs / "classifier.yaml" and classifier.is_file()
    assert sorted(path.name for path in configs.iterdir()) == sorted(
        path.name for path in (ROOT / "configs" / "mnist").iterdir())
