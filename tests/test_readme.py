"""The README is the front door: its settings table must list every setting there is."""

from __future__ import annotations

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
