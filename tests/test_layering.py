"""The import layering of DESIGN §1: ``datapipes`` never imports ``vl``, ``vl.models`` imports neither Lightning
nor ``datapipes``; and the ``vl data`` command that needs a ``vl`` model reaches ``datapipes.cli`` from the
``vl`` side (``vl.tools.data``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (package folder, top-level packages its modules must not import)
FORBIDDEN = {
    "datapipes": ("vl",),
    "vl/models": ("lightning", "pytorch_lightning", "datapipes"),
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, those inside functions included, and of every
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_the_scan_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom vl.models import x\ndef f():\n    import lightning as L\n"
                      "    importlib.import_module('datapipes.cli')\nfrom . import sibling\n")
    assert imported_packages(source) == [(1, "os"), (2, "vl"), (4, "lightning"), (5, "datapipes")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_forbidden_package(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no module under {package}"
    bad = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in files for line, name in imported_packages(f)
           if name in FORBIDDEN[package]]
    assert not bad, "layering broken (DESIGN §1):\n" + "\n".join(bad)


def test_every_datapipes_module_imports_without_vl():
    """Import every datapipes module in a fresh interpreter where ``import vl`` fails."""
    modules = sorted(f"datapipes.{p.stem}" for p in (ROOT / "datapipes").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\nsys.modules['vl'] = None  # any `import vl...` now raises ImportError\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "assert not [m for m, mod in sys.modules.items() if m.split('.')[0] == 'vl' and mod is not None]\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_vl_data_adds_the_commands_that_need_vl(capsys):
    from datapipes.cli import main as datapipes_main
    from vl.tools.data import main

    assert main(["--help"]) == 0
    assert "vq-targets" in capsys.readouterr().out
    assert main(["vq-targets", "--help"]) == 0  # parsed by vl.tools.vq_targets itself
    assert "--tokenizer" in capsys.readouterr().out
    assert datapipes_main(["vq-targets", "--help"]) == 2  # datapipes alone does not know it
    assert "invalid choice: 'vq-targets'" in capsys.readouterr().err
