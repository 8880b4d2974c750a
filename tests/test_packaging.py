"""What the package imports is what pyproject.toml declares, and every module imports in this environment (which
CI builds from pyproject.toml alone)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import re
import sys

import pytest

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
SRC = ROOT / "src"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# versions the code needs, with what needs them: the floors in pyproject.toml may not be lower
NEEDED_FLOORS = {
    "photutils": ("3.0", "DAOStarFinder's sharpness_range / roundness_range keywords (src/data/psf/stars.py)"),
    "torchvision": ("0.21", "v2.Transform.make_params, public from 0.21 (src/data/training/galaxies.py)"),
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _floors(requirements: list[str]) -> dict[str, str]:
    out = {}
    for r in requirements:
        m = re.search(r">=\s*([0-9][0-9a-zA-Z.]*)", r)
        if m:
            out[_canonical(_name(r))] = m.group(1)
    return out


MAIN = {_canonical(_name(r)) for r in PYPROJECT["dependencies"]}
OPTIONAL = {_canonical(_name(r)) for extra in PYPROJECT["optional-dependencies"].values() for r in extra}


def _third_party_imports(*folders) -> dict[str, dict[str, set[str]]]:
    """{top-level module: {"module": files importing it at module level, "lazy": files importing it in a function}}
    over the .py files of `folders` (default: the package)."""
    out: dict[str, dict[str, set[str]]] = {}
    for path in sorted(p for folder in (folders or (SRC,)) for p in folder.rglob("*.py")):
        tree = ast.parse(path.read_text())
        lazy_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top in sys.stdlib_module_names or top in ("scorelens", "src", "tests", "benchmarks", "__future__"):
                    continue
                kind = "lazy" if id(node) in lazy_nodes else "module"
                out.setdefault(top, {"module": set(), "lazy": set()})[kind].add(str(path.relative_to(ROOT)))
    return out


def test_every_imported_package_is_declared():
    dists = metadata.packages_distributions()
    problems = []
    for top, where in sorted(_third_party_imports().items()):
        names = {_canonical(d) for d in dists.get(top, [])}
        if not names:
            problems.append(f"{top}: no installed distribution provides it ({sorted(where['module'] | where['lazy'])})")
        elif where["module"] and not names & MAIN:
            problems.append(f"{top} ({sorted(names)}) imported at module level by {sorted(where['module'])} but not in "
                            "[project] dependencies")
        elif not names & (MAIN | OPTIONAL):
            problems.append(f"{top} ({sorted(names)}) imported by {sorted(where['lazy'])} but declared nowhere")
    assert not problems, "\n".join(problems)


def test_tests_and_benchmarks_import_only_declared_packages():
    dists = metadata.packages_distributions()
    undeclared = {}
    for top, where in _third_party_imports(ROOT / "tests", ROOT / "benchmarks").items():
        # an optional package not installed here (caustics, of the bench extra) goes by its module's name
        names = {_canonical(d) for d in dists.get(top, [])} or {_canonical(top)}
        if not names & (MAIN | OPTIONAL):
            undeclared[top] = sorted(where["module"] | where["lazy"])
    assert not undeclared, f"imported by tests or benchmarks but in no dependency list of pyproject.toml: {undeclared}"


def test_floors_are_at_least_what_the_code_needs():
    from packaging.version import Version

    floors = _floors(PYPROJECT["dependencies"])
    for name, (need, why) in NEEDED_FLOORS.items():
        assert name in floors, f"{name} has no floor in pyproject.toml (needs >= {need}: {why})"
        assert Version(floors[name]) >= Version(need), f"{name} >= {floors[name]}, but {why} needs {need}"


def test_installed_versions_meet_the_floors():
    from packaging.version import Version

    for name, floor in _floors(PYPROJECT["dependencies"]).items():
        assert Version(metadata.version(name)) >= Version(floor), name


@pytest.mark.parametrize("module", sorted(
    ".".join(["scorelens", *p.relative_to(SRC).with_suffix("").parts]).removesuffix(".__init__")
    for p in SRC.rglob("*.py")))
def test_every_module_imports(module):
    importlib.import_module(module)
