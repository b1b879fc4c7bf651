"""The kernel layer sits at the bottom: nothing under kernels/ imports videogpt_fast (the package
above it), and the references beside the kernels import neither Triton nor the package.
Imports are read with ``ast`` (every ``import``/``from`` statement, at any depth)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

KERNELS = REPO / "kernels"


def _imports(path: Path):
    """(module imported, line) for every import statement of a file; relative imports resolved
    against the package ``videogpt_fast.kernels`` that kernels/ is installed as."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "videogpt_fast.kernels" + (f".{node.module}" if node.module else ""), node.lineno
            else:
                yield node.module, node.lineno


def _is_package_above(name: str) -> bool:
    top = name.split(".")
    return top[0] == "videogpt_fast" and top[:2] != ["videogpt_fast", "kernels"]


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_nothing_from_the_package_above(path):
    bad = [(name, line) for name, line in _imports(path) if _is_package_above(name)]
    assert not bad, f"{path.name} imports the package above the kernels: {bad}"


@pytest.mark.parametrize("name", ["reference.py", "_interpreter.py", "__init__.py"])
def test_bottom_modules_import_no_triton_at_module_level(name):
    """ops (and so every model) imports these: they must load where Triton is not installed."""
    tree = ast.parse((KERNELS / name).read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "triton"], f"{name} imports triton at module level"


def test_the_check_sees_a_violation(tmp_path):
    """The parser finds an upward import however it is written (guards against a vacuous pass)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from videogpt_fast.ops import decode_attention\nimport videogpt_fast.backends as b\n")
    assert {n for n, _ in _imports(bad) if _is_package_above(n)} == {"videogpt_fast.ops", "videogpt_fast.backends"}
    ok = tmp_path / "ok.py"
    ok.write_text("from .reference import attention_reference\nimport videogpt_fast.kernels.tuning\n")
    assert not [n for n, _ in _imports(ok) if _is_package_above(n)]
