"""The tree's layout rules: a module's import path is its file path, and the import contracts cover the core.

`lint-imports` (run by `make lint`) enforces the contracts themselves; these tests keep
their inputs true as files come and go.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The four portions of the `sketchserve` namespace package: folder -> the root it sits under.
PORTIONS = {
    "core": REPO / "sketchserve",
    "client": REPO / "client" / "sketchserve" / "client",
    "server": REPO / "server" / "sketchserve" / "server",
    "training": REPO / "training" / "sketchserve" / "training",
}
ROOTS = [REPO, REPO / "client", REPO / "server", REPO / "training"]
# Generated protobuf code (make proto): our contract's and the Open Inference Protocol's.
GENERATED = (REPO / "sketchserve" / "pb" / "sketch", REPO / "sketchserve" / "pb" / "inference")
COMPOSITION_ROOT = "sketchserve.cli"


def _modules() -> list[Path]:
    files = [p for folder in PORTIONS.values() for p in folder.rglob("*.py")]
    return sorted(p for p in files if not any(g in p.parents for g in GENERATED) and "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    for root in ROOTS[1:] + ROOTS[:1]:  # the layer roots first: client/sketchserve/... is under REPO too
        if path.is_relative_to(root / "sketchserve"):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(f"{path} is under no root of the sketchserve namespace")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_a_modules_import_path_is_its_file_path(path: Path) -> None:
    name = _dotted(path)
    assert name.replace(".", "/") in path.as_posix()
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").resolve() == path.resolve()


def test_the_namespace_has_no_init_at_its_top() -> None:
    """`sketchserve` is a PEP 420 namespace: an __init__.py would hide the layers' portions."""
    assert not (REPO / "sketchserve" / "__init__.py").exists()
    for layer in ("client", "server", "training"):
        assert not (REPO / layer / "sketchserve" / "__init__.py").exists()


def test_the_core_contract_lists_every_core_module() -> None:
    """The forbidden contract 'The core imports no layer' names each core module; a new one must join it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (core,) = [c for c in contracts if c["name"] == "The core imports no layer"]
    top_level = {
        f"sketchserve.{p.stem}" for p in PORTIONS["core"].glob("*.py") if f"sketchserve.{p.stem}" != COMPOSITION_ROOT
    }
    packages = {f"sketchserve.{p.name}" for p in PORTIONS["core"].iterdir() if (p / "__init__.py").is_file()}
    assert set(core["source_modules"]) == top_level | packages
