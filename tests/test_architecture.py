"""The layering of docs/ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported).

A *unit* is a direct child of a top-level package: ``guided_diffusion.sampling`` (a subpackage) or
``guided_diffusion.atomic`` (a module), ``classifiers.module``. Every import statement counts,
also those inside functions (a lazy import that hides a cycle is still a cycle), and
``importlib.import_module("a.b")`` / ``__import__("a.b")`` of a literal name. The tests fail on
a cycle between units, on an import from a lower layer to a higher one, on a unit no layer
declares, on Lightning or W&B imported by the plain-PyTorch layers, and on an import between the
top-level packages against :data:`PACKAGE_ORDER` (``guided_diffusion`` never imports ``classifiers``).
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guided_diffusion", "classifiers")
#: The top-level packages, bottom to top: ``classifiers`` stands on ``guided_diffusion``, never the reverse.
PACKAGE_ORDER: dict[str, tuple[str, ...]] = {"guided_diffusion": ("guided_diffusion",), "classifiers": ("classifiers",)}

#: bottom to top; a unit may import units of its own layer or of layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("guided_diffusion", "guided_diffusion.atomic", "guided_diffusion.content_hash",
                   "guided_diffusion.torch_files",
                   "guided_diffusion.tensor_checks", "guided_diffusion.philox",
                   "guided_diffusion.images", "guided_diffusion.mixture", "guided_diffusion.sampler_protocol",
                   "guided_diffusion.noise",
                   "guided_diffusion.option_groups", "guided_diffusion.recipes"),
    "core": ("guided_diffusion.diffusion", "guided_diffusion.nets", "guided_diffusion.guidance"),
    "families": ("guided_diffusion.sde", "guided_diffusion.sampling"),
    "catalogue": ("guided_diffusion.presets", "guided_diffusion.checkpoints", "guided_diffusion.evaluation"),
    "lightning": ("guided_diffusion.data", "guided_diffusion.training", "classifiers", "classifiers.module"),
    "products": ("guided_diffusion.launch", "guided_diffusion.tracking", "guided_diffusion.generation",
                 "guided_diffusion.commands", "guided_diffusion.__main__"),
}
#: The layers that are plain PyTorch: no Lightning, no W&B (docs/ARCHITECTURE.md).
PLAIN_LAYERS = ("foundation", "core", "families", "catalogue")
FORBIDDEN_IN_PLAIN = ("lightning", "pytorch_lightning", "wandb")

Edge = tuple[str, str, str]  # (importing unit, imported unit, "file:line")


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, module: Optional[str] = None) -> Iterable[tuple[str, int]]:
    """Absolute names of every module ``path`` imports (relative imports resolved), with line numbers.

    ``module``: the dotted name of ``path`` (default: from its place under the repository).
    """
    if module is None:
        module, is_package = _module_name(path)
    else:
        is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and _dynamic_import_name(node):
            yield _dynamic_import_name(node), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target, node.lineno
            for alias in node.names:  # ``from . import x`` may import a submodule
                if _is_module(f"{target}.{alias.name}"):
                    yield f"{target}.{alias.name}", node.lineno


def _dynamic_import_name(call: ast.Call) -> Optional[str]:
    """The literal absolute name of ``importlib.import_module("a.b")`` / ``import_module`` / ``__import__``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
        return arg.value
    return None


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def project_edges(files: Iterable[Path]) -> tuple[list[Edge], dict[str, list[tuple[str, str]]]]:
    """Unit -> unit edges, and each unit's imports of outside packages (name, where)."""
    edges, external = [], defaultdict(list)
    for path in files:
        module, _ = _module_name(path)
        source = unit_of(module)
        for target, line in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.split(".")[0] in PACKAGES:
                if unit_of(target) != source:
                    edges.append((source, unit_of(target), where))
            else:
                external[source].append((target, where))
    return edges, external


def find_cycle(edges: Iterable[Edge]) -> Optional[list[str]]:
    """A cycle of units as ``["a", "b (where a imports b)", ..., "a (where ...)"]``, or None."""
    graph: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for a, b, where in edges:
        graph[a].append((b, where))
    done: set[str] = set()

    def visit(node: str, path: list[str], via: list[str]) -> Optional[list[str]]:
        for nxt, where in graph.get(node, ()):
            if nxt in path:
                start = path.index(nxt)
                return [nxt] + [f"{n} ({w})" for n, w in zip(path[start + 1:] + [nxt], via[start:] + [where])]
            if nxt not in done:
                found = visit(nxt, path + [nxt], via + [where])
                if found:
                    return found
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node, [node], [])
            if found:
                return found
    return None


def layer_of(unit: str, layers: Mapping[str, tuple[str, ...]] = LAYERS) -> Optional[int]:
    for rank, units in enumerate(layers.values()):
        if unit in units:
            return rank
    return None


def upward_imports(edges: Iterable[Edge], layers: Mapping[str, tuple[str, ...]] = LAYERS) -> list[str]:
    names = list(layers)
    found = []
    for a, b, where in edges:
        la, lb = layer_of(a, layers), layer_of(b, layers)
        if la is not None and lb is not None and lb > la:
            found.append(f"{where}: {a} ({names[la]}) imports {b} ({names[lb]})")
    return found


def package_edges(edges: Iterable[Edge]) -> list[Edge]:
    """The unit edges that cross top-level packages, as package -> package edges."""
    return [(a.split(".")[0], b.split(".")[0], where) for a, b, where in edges if a.split(".")[0] != b.split(".")[0]]


#: A string that names a module (or ``module:attribute``) of the package, e.g. a ``class_path``.
_NAMES_A_MODULE = r"{package}(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?"


def module_names_in_strings(path: Path, package: str) -> list[tuple[str, int]]:
    """String literals of ``path`` that are a dotted name in ``package`` (an import hidden in data)."""
    pattern = re.compile(_NAMES_A_MODULE.format(package=re.escape(package)))
    return sorted((node.value, node.lineno) for node in ast.walk(ast.parse(path.read_text(), str(path)))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.fullmatch(node.value))


_ALL_UNITS = {unit for units in LAYERS.values() for unit in units}


@pytest.fixture(scope="module")
def graph():
    return project_edges(source_files())


def test_every_unit_has_a_layer(graph):
    edges, external = graph
    units = {unit_of(_module_name(p)[0]) for p in source_files()}
    assert units - _ALL_UNITS == set(), "add the new unit to a layer of LAYERS (and to docs/ARCHITECTURE.md)"
    assert _ALL_UNITS - units == set(), "LAYERS names units that do not exist"


def test_no_cycle_between_units(graph):
    edges, _ = graph
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_point_down(graph):
    edges, _ = graph
    assert upward_imports(edges) == []


def test_no_cycle_between_top_level_packages(graph):
    """``classifiers`` stands on ``guided_diffusion``; nothing in ``guided_diffusion`` imports ``classifiers``."""
    edges, _ = graph
    between = package_edges(edges)
    assert upward_imports(between, PACKAGE_ORDER) == []
    cycle = find_cycle(between)
    assert cycle is None, "import cycle between top-level packages: " + " -> ".join(cycle)
    assert any(a == "classifiers" and b == "guided_diffusion" for a, b, _ in between)  # the one direction


def test_guided_diffusion_names_no_classifiers_module_in_strings():
    """Not by a string either (a ``class_path`` default, a table fed to ``import_module``)."""
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in (ROOT / "guided_diffusion").rglob("*.py")
             for value, line in module_names_in_strings(path, "classifiers")]
    assert found == []


def test_plain_layers_import_no_lightning_or_wandb(graph):
    _, external = graph
    plain = {unit for name in PLAIN_LAYERS for unit in LAYERS[name]}
    offending = [f"{where}: {unit} imports {name}" for unit in sorted(plain) for name, where in external.get(unit, ())
                 if name.split(".")[0] in FORBIDDEN_IN_PLAIN]
    assert offending == []


def test_the_checks_see_a_cycle_an_upward_import_and_a_lazy_import(tmp_path):
    """The checkers themselves: an added cycle, an upward edge and a function-level import are caught."""
    edges = [("guided_diffusion.sde", "guided_diffusion.guidance", "sde/x.py:1"),
             ("guided_diffusion.guidance", "guided_diffusion.diffusion", "guidance.py:2")]
    assert find_cycle(edges) is None and upward_imports(edges) == []
    edges.append(("guided_diffusion.diffusion", "guided_diffusion.sde", "diffusion/y.py:3"))
    assert find_cycle(edges) == ["guided_diffusion.diffusion", "guided_diffusion.sde (diffusion/y.py:3)",
                                 "guided_diffusion.guidance (sde/x.py:1)", "guided_diffusion.diffusion (guidance.py:2)"]
    assert upward_imports(edges) == ["diffusion/y.py:3: guided_diffusion.diffusion (core) imports "
                                     "guided_diffusion.sde (families)"]
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\n\n\ndef f():\n    from ..training import base\n    import lightning\n")
    found = list(imports_of(probe, module="guided_diffusion.sampling.probe"))
    assert ("guided_diffusion.training", 5) in found and ("guided_diffusion.training.base", 5) in found
    assert ("lightning", 6) in found and ("torch", 1) in found


def test_the_package_check_sees_an_import_from_guided_diffusion_to_classifiers(tmp_path):
    """An import of ``classifiers`` from ``guided_diffusion``, even one inside a function, by a string, or one
    the unit layering allows (a product importing a Lightning unit), is caught."""
    edges = [("classifiers.module", "guided_diffusion.training", "classifiers/module.py:21"),
             ("classifiers", "guided_diffusion.nets", "classifiers/__init__.py:12"),
             ("guided_diffusion.commands", "guided_diffusion.training", "guided_diffusion/commands/fit.py:24")]
    between = package_edges(edges)
    assert find_cycle(between) is None and upward_imports(between, PACKAGE_ORDER) == []
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\n\n\ndef register():\n"
                     "    from classifiers.module import NoisyClassifierModule\n"
                     "    importlib.import_module('classifiers.module')\n"
                     "    return 'classifiers.module:NoisyClassifierModule'\n")
    found = list(imports_of(probe, module="guided_diffusion.commands.fit"))
    assert ("classifiers.module", 5) in found and ("classifiers.module", 6) in found
    assert module_names_in_strings(probe, "classifiers") == [
        ("classifiers.module", 6), ("classifiers.module:NoisyClassifierModule", 7)]
    added = [("guided_diffusion.commands", unit_of(name), f"probe.py:{line}") for name, line in found
             if name.split(".")[0] in PACKAGES]
    assert find_cycle(edges + added) is None and upward_imports(edges + added) == []  # the unit checks pass it
    between = package_edges(edges + added)
    assert upward_imports(between, PACKAGE_ORDER) == [
        "probe.py:5: guided_diffusion (guided_diffusion) imports classifiers (classifiers)",
        "probe.py:6: guided_diffusion (guided_diffusion) imports classifiers (classifiers)"]
    assert find_cycle(between) == ["classifiers", "guided_diffusion (classifiers/module.py:21)",
                                   "classifiers (probe.py:5)"]
