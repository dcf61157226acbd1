"""The layering of ntkdyn (``[tool.importlinter]`` in pyproject.toml) holds.

import-linter checks the contracts: layers from the CLI down to the kernels, training
independent of prediction, no import cycles, private modules kept private.  The AST
check below adds what import-linter cannot see: no module uses a private name (``_x``)
of another ntkdyn module, whether imported (``from .m import _x``) or reached as an
attribute (``m._x`` after ``from . import m``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ntkdyn"


def _lint(extra_config: str | None = None, tmp_path: Path | None = None):
    """Run ``lint-imports`` on this checkout (optionally on a copy with a changed module)."""
    pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")
    root = ROOT if tmp_path is None else tmp_path
    env = dict(os.environ, PYTHONPATH=str(root))
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _contract_count() -> int:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return len(config["tool"]["importlinter"]["contracts"])


def test_import_contracts_are_kept():
    n = _contract_count()
    assert n >= 10  # top-level layers, one per subpackage, training, cycles, private
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{n} kept, 0 broken" in result.stdout, result.stdout


def test_contracts_catch_training_importing_prediction(tmp_path):
    """A copy of the package where the trainer imports the solver breaks that contract
    (the layers allow it: training sits above the dynamics)."""
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "ntkdyn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    train = tmp_path / "ntkdyn" / "training" / "trainer.py"
    train.write_text(train.read_text()
                     + "\n\ndef _bad():\n    from ntkdyn.dynamics.solver import evolve\n")
    result = _lint(tmp_path=tmp_path)
    assert result.returncode != 0
    assert "Training is independent of prediction BROKEN" in result.stdout, result.stdout
    assert f"{_contract_count() - 1} kept, 1 broken" in result.stdout, result.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """Absolute name of the module ``node`` imports from, or None outside ntkdyn."""
    if node.level == 0:
        return node.module if (node.module or "").split(".")[0] == "ntkdyn" else None
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        modules_bound = {}  # local name -> absolute name of an ntkdyn module
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(module, node, path.name == "__init__.py")
            if source is None:
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if _is_module(full):
                    modules_bound[alias.asname or alias.name] = full
                    continue  # a module: private modules are import-linter's job
                if _private(alias.name) and source != module:
                    found.append(f"{module}:{node.lineno} imports {alias.name} from {source}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules_bound and _private(node.attr)):
                found.append(f"{module}:{node.lineno} uses {modules_bound[node.value.id]}."
                             f"{node.attr}")
    return found


def test_no_module_uses_a_private_name_of_another():
    assert private_uses() == []


def test_private_name_check_sees_both_forms(tmp_path, monkeypatch):
    """The AST check finds ``from .m import _x`` and ``m._x`` (it is not vacuous)."""
    pkg = tmp_path / "ntkdyn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _x():\n    pass\n")
    (pkg / "b.py").write_text("from . import a\nfrom .a import _x\n\na._x()\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert private_uses() == ["ntkdyn.b:2 imports _x from ntkdyn.a",
                              "ntkdyn.b:4 uses ntkdyn.a._x"]


#: the longest function body (statements after the docstring) read in one screen
UNIT_MAX_LINES = 60


def long_units(root: Path = PACKAGE) -> list[str]:
    """Functions whose body is longer than :data:`UNIT_MAX_LINES` lines, unless a
    ``# long unit: <why>`` comment sits on the lines just above the definition (or its
    decorators)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if not body:
                continue
            length = node.end_lineno - body[0].lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = "\n".join(lines[max(0, first - 4):first - 1])
            if length > UNIT_MAX_LINES and "# long unit:" not in above:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} "
                             f"({length} lines)")
    return found


def test_units_fit_one_screen():
    assert long_units() == []


def test_long_unit_check_finds_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(UNIT_MAX_LINES + 1))
    (pkg / "m.py").write_text(f'def f():\n    """Doc."""\n{body}\n\n\n'
                              f'# long unit: a reason\ndef g():\n{body}\n')
    assert [u.split()[1] for u in long_units(pkg)] == ["f"]
