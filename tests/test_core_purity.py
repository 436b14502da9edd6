"""The sans-I/O core must not do I/O: no sockets, clocks, files, threads or processes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ftx
import ftx.core

FORBIDDEN = frozenset({"socket", "time", "os", "asyncio", "select", "selectors", "threading", "subprocess"})
CORE = Path(ftx.core.__file__).parent
PACKAGE = Path(ftx.__file__).parent
EXPECTED = {
    "frames.py",
    "checksum.py",
    "ranges.py",
    "manifest.py",
    "messages.py",
    "states.py",
    "connection.py",
    "sender.py",
    "receiver.py",
    "events.py",
    "config.py",
}


def forbidden_imports(source: str, filename: str = "<src>") -> list[str]:
    """Names of forbidden modules that ``source`` imports, in any spelling."""
    bad = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside ftx (checked separately)
                continue
            names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        bad += [f"{n} (line {node.lineno})" for n in names if n.split(".")[0] in FORBIDDEN]
    return bad


def relative_targets(path: Path) -> set[Path]:
    """Files of the ftx package that ``path`` imports relatively."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = node.module.split(".") if node.module else []
            target = base.joinpath(*parts)
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            if not parts:  # "from .. import x": x may be a module or a name in __init__
                candidates += [base / f"{a.name}.py" for a in node.names]
            out |= {c for c in candidates if c.is_file()}
    return out


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_walk_finds_the_core():
    names = {p.name for p in core_files() if p.parent == CORE}
    assert EXPECTED <= names, EXPECTED - names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_does_no_io(path):
    assert forbidden_imports(path.read_text(), str(path)) == []


def test_modules_the_core_imports_from_outside_are_pure_too():
    """e.g. ftx/errors.py and ftx/__init__.py: the core pulls them in."""
    seen: set[Path] = set()
    todo = set(core_files())
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo |= relative_targets(p) - seen
    outside = {p for p in seen if CORE not in p.parents}
    assert PACKAGE / "errors.py" in outside  # the walk really follows imports
    for p in outside:
        assert forbidden_imports(p.read_text(), str(p)) == [], p


@pytest.mark.parametrize(
    "src",
    [
        "import os",
        "import os.path",
        "import time as t",
        "from time import monotonic",
        "from socket import socket",
        "import sys, asyncio",
        "from concurrent import futures\nimport threading",
        "def f():\n    import subprocess",
        "try:\n    import selectors\nexcept ImportError:\n    pass",
        "from select import poll",
        "__import__('os')",
        "import importlib\nimportlib.import_module('socket')",
    ],
)
def test_checker_catches_forbidden_imports(src):
    assert forbidden_imports(src) != []


@pytest.mark.parametrize(
    "src",
    ["import struct", "from .frames import FrameType", "from ..errors import FtxError", "import osx", "import timeit_like"],
)
def test_checker_allows_others(src):
    assert forbidden_imports(src) == []
