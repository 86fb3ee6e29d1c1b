"""Shared fixtures. Real Quick, Draw! data lives outside the repository, in
``../shared/data`` relative to the repository root (``SKETCHSERVE_DATA``
overrides it); tests that need it skip with a reason where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real-server fixtures (tiny_model, shared_server, ...), for every test module by name.
pytest_plugins = ["server_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "SKETCHSERVE_DATA"
# The four roots of the `sketchserve` namespace package (docs/contracts.md, "Package layout").
NAMESPACE_ROOTS = (REPO_ROOT, REPO_ROOT / "client", REPO_ROOT / "server", REPO_ROOT / "training")


def pytest_configure(config: pytest.Config) -> None:
    """Subprocesses the tests start (servers, `sketchserve` commands, torchrun) import this tree's code,
    whatever else is installed: its roots lead PYTHONPATH, as pytest's `pythonpath` does in-process."""
    roots = [str(root) for root in NAMESPACE_ROOTS]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in roots]
    os.environ["PYTHONPATH"] = os.pathsep.join(roots + inherited)


def shared_data_path() -> Path:
    """Where the real data is expected (it may be absent)."""
    override = os.environ.get(DATA_ENV)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory, or a skip naming where it was looked for."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(f"real Quick, Draw! data not found at {path} (set {DATA_ENV} to its location)")
    return path
