"""The README's Python example runs as written, against a real server (only its address is changed).

Its tritonclient example runs in tests/test_oip_tritonclient.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from server_fixtures import RunningServer

README = Path(__file__).resolve().parents[1] / "README.md"
README_TARGET = "localhost:50051"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_python_example_runs_against_a_real_server(clustered_server: RunningServer) -> None:
    (block,) = [
        b for b in python_blocks(README.read_text(encoding="utf-8")) if README_TARGET in b and "SketchClient" in b
    ]
    namespace: dict[str, object] = {}
    exec(compile(block.replace(README_TARGET, clustered_server.target), str(README), "exec"), namespace)  # noqa: S102
    codes, clusters = np.asarray(namespace["codes"]), np.asarray(namespace["clusters"])
    assert codes.ndim == 2 and codes.shape[0] == 1 and np.isfinite(codes).all()
    assert clusters.shape == (1,) and clusters[0] >= 0
