"""The README is the front door: its settings table must list every setting there is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pydantic import BaseModel

from settings import ENV_PREFIX, NESTED_DELIMITER, Settings


def variables(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += variables(annotation, f"{prefix}{name.upper()}{NESTED_DELIMITER}")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in variables(Settings, ENV_PREFIX) if f"`{name}`" not in readme]
    assert missing == []


def test_readme_names_the_two_commands() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_every_module_the_docs_name_exists() -> None:
    """README, docs/ARCHITECTURE.md and the package maps name modules by path or by
    name; after a move or a split, a stale name sends a newcomer nowhere."""
    root = Path(__file__).resolve().parent.parent
    named: set[str] = set()
    for doc in [root / "README.md", root / "docs" / "ARCHITECTURE.md"]:
        named |= set(re.findall(r"\b((?:app|cache|bench)/[\w/]+\.py)\b", doc.read_text()))
    missing = sorted(path for path in named if not (root / path).exists())
    assert named and not missing, missing
    for package in ["app/edge", "app/engine", "app/upstream", "app/ops"]:
        init = (root / package / "__init__.py").read_text()
        docstring = ast.get_docstring(ast.parse(init)) or ""
        listed = set(re.findall(r"``(\w+)``", docstring)) - {"uvicorn", "slicecache"}
        modules = {path.stem for path in (root / package).glob("*.py")} - {"__init__"}
        assert listed and listed <= modules | {"SliceEngine", "ObjectDirectory"}, listed - modules
