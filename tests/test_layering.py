"""The package layering: a package imports only from its own or lower layers, and the core stays light.

Layers: 0 types, errors, _validation, _atomic, registry, indices; 1 distances < reducers < regularizers;
2 losses, miners; 3 wrappers; 4 evaluation, index; 5 data, samplers, training; 6 apps. The compatibility
aliases (``utils`` and friends) may import anything, and nothing else may import them. Top-level modules
outside the table (``__init__.py``, ``__main__.py``) are exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dmlkit

SRC = Path(dmlkit.__file__).resolve().parent

LAYERS: dict[str, float] = {
    "types": 0,
    "_atomic": 0,
    "errors": 0,
    "_validation": 0,
    "registry": 0,
    "indices": 0,
    "distances": 1.0,
    "reducers": 1.1,
    "regularizers": 1.2,
    "losses": 2,
    "miners": 2,
    "wrappers": 3,
    "evaluation": 4,
    "index": 4,
    "data": 5,
    "samplers": 5,
    "training": 5,
    "apps": 6,
}
#: pytorch-metric-learning import paths: they re-export from anywhere and nothing imports them.
ALIASES = {"utils", "testers", "trainers"}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([root.name, *parts])


def _imported_modules(root: Path, path: Path) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import of the package itself inside ``path``."""
    name = _module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = root.name
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # A package's module-level ``__getattr__`` may lazily re-export a higher layer under PML's import path
    # (``dmlkit.losses.CrossBatchMemory``): nothing is imported until a user asks for that name.
    lazy = set()
    if path.name == "__init__.py":
        for top_node in tree.body:
            if isinstance(top_node, ast.FunctionDef) and top_node.name == "__getattr__":
                lazy |= {id(n) for n in ast.walk(top_node)}
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name == top or a.name.startswith(top + ".")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                full = f"{base}.{node.module}" if node.module else base
            else:
                full = node.module or ""
            if full == top:
                # ``from dmlkit import losses`` / ``from .. import distances``: the names are the targets
                found += [(node.lineno, f"{top}.{a.name}") for a in node.names]
            elif full.startswith(top + "."):
                found.append((node.lineno, full))
    return found


def layering_violations(root: Path) -> list[str]:
    """Every import in the package at ``root`` that breaks the layering, as readable lines."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        owner = rel.parts[0].removesuffix(".py")
        if owner in ALIASES:
            continue
        if owner not in LAYERS:
            if len(rel.parts) == 1:
                continue  # top-level modules such as __init__.py and __main__.py
            problems.append(f"{rel}: package `{owner}` has no layer; add it to the layer table")
            continue
        for line, target in _imported_modules(root, path):
            parts = target.split(".")
            if len(parts) < 2:
                continue
            dest = parts[1]
            if dest in ALIASES:
                problems.append(f"{rel}:{line}: imports the compatibility alias `{target}`")
            elif dest in LAYERS and LAYERS[dest] > LAYERS[owner]:
                problems.append(
                    f"{rel}:{line}: `{owner}` (layer {LAYERS[owner]}) imports `{target}` (layer {LAYERS[dest]})"
                )
    return problems


def test_no_package_imports_a_higher_layer() -> None:
    problems = layering_violations(SRC)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_every_subpackage_has_a_layer() -> None:
    for child in SRC.iterdir():
        if child.is_dir() and (child / "__init__.py").exists():
            assert child.name in LAYERS or child.name in ALIASES, f"dmlkit.{child.name} has no layer"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_finds_violations(tmp_path: Path) -> None:
    root = tmp_path / "dmlkit"
    _write(root, "__init__.py", "from .losses import x\n")
    _write(root, "__main__.py", "from dmlkit.apps import y\n")
    _write(root, "types.py", "from .distances import LpDistance\n")
    _write(root, "distances/__init__.py", "from ..reducers import MeanReducer\nfrom .base import BaseDistance\n")
    _write(root, "reducers/__init__.py", "from ..distances import LpDistance\n")
    _write(root, "reducers/mean.py", "import dmlkit.regularizers\n")
    _write(root, "losses/__init__.py", "from .. import miners, distances, __version__\n")
    _write(root, "losses/base.py", "def f():\n    from dmlkit.evaluation import knn\n")
    _write(root, "losses/__init__.py", "def __getattr__(name):\n    from dmlkit.wrappers import X\n")
    _write(root, "miners/base.py", "from ..utils import loss_and_miner_utils\n")
    _write(root, "utils/__init__.py", "from ..apps import z\n")
    _write(root, "gadgets/__init__.py", "")
    problems = layering_violations(root)
    assert problems == [
        "distances/__init__.py:1: `distances` (layer 1.0) imports `dmlkit.reducers` (layer 1.1)",
        "gadgets/__init__.py: package `gadgets` has no layer; add it to the layer table",
        "losses/base.py:2: `losses` (layer 2) imports `dmlkit.evaluation` (layer 4)",
        "miners/base.py:1: imports the compatibility alias `dmlkit.utils`",
        "reducers/mean.py:1: `reducers` (layer 1.1) imports `dmlkit.regularizers` (layer 1.2)",
        "types.py:1: `types` (layer 0) imports `dmlkit.distances` (layer 1.0)",
    ]


def test_core_imports_cost_torch_only() -> None:
    heavy = ["sklearn", "faiss", "matplotlib", "yaml", "umap", "pandas", "pytorch_metric_learning"]
    code = (
        "import dmlkit.losses, sys; assert 'sklearn' not in sys.modules and 'faiss' not in sys.modules "
        "and 'matplotlib' not in sys.modules\n"
        "import dmlkit.miners, dmlkit.distances, dmlkit.reducers, dmlkit.regularizers\n"
        "import dmlkit.utils.loss_and_miner_utils\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
