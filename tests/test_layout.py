"""The package's shape: its installed name and contents, imports flowing one way, no config read by path, small
modules and folders (README, "Layout" and "Architecture")."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import CONF, ROOT

SRC = ROOT / "src"
MODULES = sorted(SRC.rglob("*.py"))
# what each part of the package may import (DESIGN.md: lensing imports nothing of ours; data may use lensing; priors
# may use data; inference uses all three; the command line uses everything and nothing imports it)
LAYERS = {
    "lensing": set(),
    "data": {"lensing"},
    "priors": {"data", "lensing"},
    "inference": {"data", "lensing", "priors"},
    "cli": {"data", "lensing", "priors", "inference"},
}
SHARED = {"errors", "atomic"}  # plain helpers every part may use


def dotted(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["scorelens", *parts])


def imported(path: Path) -> set[str]:
    """The scorelens modules that `path` imports, as absolute dotted names."""
    package = dotted(path).split(".") if path.name == "__init__.py" else dotted(path).split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in ("scorelens", "src")}
    return out


def test_the_package_is_listed_whole_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {dotted(p) for p in SRC.rglob("__init__.py")} | {"scorelens.conf"}
    assert listed == folders


def test_code_inside_the_package_imports_it_relatively():
    absolute = {str(p.relative_to(ROOT)): sorted(n for n in imported(p) if n.split(".")[0] == "src")
                for p in MODULES}
    assert {p: n for p, n in absolute.items() if n} == {}
    # and never by its installed name either: the same modules must work as `src.` from a checkout
    by_name = {}
    for p in MODULES:
        tree = ast.parse(p.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        if any(n.split(".")[0] == "scorelens" for n in names):
            by_name[str(p.relative_to(ROOT))] = names
    assert by_name == {}


def test_imports_flow_one_way():
    wrong = []
    for path in MODULES:
        part = dotted(path).split(".")[1] if dotted(path).count(".") else ""
        if part not in LAYERS:
            continue
        for name in imported(path):
            other = name.split(".")[1] if name.count(".") else ""
            if other and other != part and other not in SHARED and other not in LAYERS[part]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


def _strings(tree: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_module_reads_a_config_file_by_its_path():
    """Settings reach the library as arguments from the composed config: no `parents[...]` walks up to the
    repository and no path into conf/ is built in code (docstrings may name the files)."""
    offenders = []
    for path in MODULES:
        text = path.read_text()
        tree = ast.parse(text)
        docs = {ast.get_docstring(n, clean=False) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)}
        code_strings = [s for s in _strings(tree) if s not in docs]
        if "parents[" in text or any(s == "conf" or s.startswith(("conf/", "conf\\")) for s in code_strings):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_module_over_500_lines_and_no_folder_over_a_third():
    lines = {p: len(p.read_text().splitlines()) for p in MODULES}
    assert {str(p.relative_to(ROOT)): n for p, n in lines.items() if n > 500} == {}
    per_folder = Counter()
    for p, n in lines.items():
        per_folder[str(p.parent.relative_to(ROOT))] += n
    total = sum(lines.values())
    assert {f: round(n / total, 3) for f, n in per_folder.items() if n / total >= 0.35} == {}


def test_the_design_contract_names_import_from_a_checkout():
    """DESIGN.md's `from src.lensing.mass import deflection` and `from src.priors.sde import VESDE` work from the
    repository root beside the installed `scorelens`, and are the same code."""
    code = ("import torch\n"
            "from src.lensing.mass import deflection\nfrom src.priors.sde import VESDE\n"
            "from scorelens.lensing.mass import deflection as d2\n"
            "p = dict(theta_E=torch.tensor(1.2), gamma=torch.tensor(1.0), q=torch.tensor(0.7), phi=torch.tensor(0.3),"
            " x0=torch.tensor(0.0), y0=torch.tensor(0.0))\n"
            "x = torch.linspace(-2, 2, 5)\n"
            "assert all(torch.equal(a, b) for a, b in zip(deflection(p, x, x), d2(p, x, x)))\n"
            "print(float(VESDE(1e-3, 100).sigma(torch.tensor(0.5))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) == pytest.approx((1e-3 * 100) ** 0.5)


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_configs(tmp_path):
    """`pip install .` installs `scorelens` with its configs and console scripts; the unpacked wheel imports and
    runs `scorelens-infer --help` from another folder."""
    # built from a copy: setuptools writes build/ beside the sources
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(tree)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "Could not find a version that satisfies" in proc.stderr:
        pytest.skip("no package index to fetch the build backend from")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("scorelens-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert not any(n.startswith("src/") for n in names)
    configs = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert {f"scorelens/conf/{c}" for c in configs} <= names
    for script in ("scorelens-train = scorelens.cli.train:main", "scorelens-infer = scorelens.cli.infer:main",
                   "scorelens-data = scorelens.cli.data:main"):
        assert script in entry_points
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import scorelens, scorelens.priors, scorelens.inference, scorelens.data, scorelens.conf\n"
            "print(scorelens.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(site)
    proc = subprocess.run([sys.executable, "-m", "scorelens.cli.infer", "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lens: " in proc.stdout and "J1430" in proc.stdout and "sampler: default" in proc.stdout
