"""The core in `backendnn/` imports no array library (DESIGN.md, rule 1).

Two checks: every module's source, parsed with `ast` (import statements,
`importlib.import_module` and `__import__` calls with a literal name), and a fresh
interpreter that imports backendnn and builds a NumPy model without loading torch or CuPy.
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import backendnn

FORBIDDEN = ("numpy", "cupy", "torch")
CORE = Path(backendnn.__file__).resolve().parent


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for each import of a FORBIDDEN library (or a submodule) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and _is_dynamic_import(node.func):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = [arg.value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def _is_dynamic_import(func) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_scan_sees_the_core():
    names = {p.relative_to(CORE).as_posix() for p in core_modules()}
    assert {"__init__.py", "model.py", "layers/linear.py", "losses/bce.py"} <= names
    assert not any(n.startswith("backends/") for n in names)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import numpy", ["numpy"]),
        ("import numpy as np", ["numpy"]),
        ("import os, torch.nn as nn", ["torch.nn"]),
        ("from numpy import float32", ["numpy"]),
        ("from numpy.linalg import norm", ["numpy.linalg"]),
        ("from cupy import asnumpy as get", ["cupy"]),
        ("def f():\n    import torch\n", ["torch"]),
        ("try:\n    import cupy\nexcept ImportError:\n    pass\n", ["cupy"]),
        ("import importlib\nimportlib.import_module('torch')", ["torch"]),
        ("__import__('numpy')", ["numpy"]),
        ("from .backends import numpy", []),
        ("from . import torch", []),
        ("import numpydoc, array_api_compat", []),
        ("x = 'import numpy'", []),
    ],
)
def test_the_scan_finds_forbidden_imports(source, expected):
    assert [name for _, name in forbidden_imports(source)] == expected


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_imports_no_array_library(path):
    found = forbidden_imports(path.read_text(encoding="utf-8"))
    where = ", ".join(f"line {line}: {name}" for line, name in found)
    assert not found, (
        f"backendnn/{path.relative_to(CORE).as_posix()} imports {where}; the core uses only "
        "`backend.xp` / array_api_compat, and library code belongs in backends/"
    )


def test_importing_backendnn_loads_neither_torch_nor_cupy():
    code = textwrap.dedent(
        """
        import sys
        import backendnn
        model = backendnn.MLP([3, 2, 1], "relu", "bce")
        assert model.backend.name == "numpy", model.backend
        print(",".join(m for m in ("torch", "cupy") if m in sys.modules) or "none")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "BACKENDNN_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=CORE.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
