"""What ships in the wheel (``reconciler``, ``adapters``) never imports test code, and every
spawned-process handle is typed by the one protocol, ``adapters.runner.Process``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED = ("reconciler", "adapters")


def _modules() -> list[Path]:
    return sorted(p for package in SHIPPED for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_shipped_packages_do_not_import_tests() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] == "tests")
        for path in _modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert not (ROOT / "adapters" / "vmconsole.py").exists()


def test_one_process_protocol() -> None:
    """No module declares its own copy of the spawned-process protocol."""
    copies = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.lstrip("_") == "Process":
                copies.append(str(path.relative_to(ROOT)))
    assert copies == ["adapters/runner.py"]
