"""Calls between the object directory and the slicing engine go one way.

The directory's modules use the engine; the engine's modules never import the
directory's (they report back through the callbacks the directory gives them), and the
classifier of origin answers is pure (no I/O, no engine or directory state).
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "app" / "engine"
DIRECTORY = {"objects", "probe_sharing", "probe", "adoption", "opening"}
ENGINE_SIDE = {"slicer", "fetcher", "inflight", "readers", "fills", "slices", "classify"}


def _engine_imports(module: str) -> set[str]:
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("app.engine."):
                found.add(node.module.removeprefix("app.engine.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("app.engine."):
                    found.add(alias.name.removeprefix("app.engine.").split(".")[0])
    return found


def test_the_engine_never_imports_the_directory() -> None:
    for module in ENGINE_SIDE:
        reached = _engine_imports(module) & DIRECTORY
        assert not reached, f"app/engine/{module}.py imports {sorted(reached)}"


def test_the_classifier_is_pure() -> None:
    assert _engine_imports("classify") <= {"objectmeta"}
    source = (ENGINE / "classify.py").read_text()
    for io in ("asyncio", "await ", "upstream", "store"):
        assert io not in source, f"classify.py mentions {io!r}"


def test_every_module_is_small_or_says_why() -> None:
    root = ENGINE.parent.parent
    for path in [*root.glob("app/**/*.py"), *root.glob("cache/**/*.py")]:
        text = path.read_text()
        lines = text.count("\n")
        if lines > 420:
            head = text.split('"""', 2)[1] if text.startswith('"""') else ""
            assert "lines" in head.lower(), f"{path}: {lines} lines and no reason at its top"
