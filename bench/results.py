"""Benchmark results as files, and the tables the docs render from them.

Every benchmark can write its result as one JSON document (``--json PATH``); the
published figures live in ``bench/results/*.json`` and the markdown tables in
``docs/benchmarks.md``, ``README.md`` and the model card are rendered from them by
``bench/render.py`` (``make figures``), never typed. The format:

```
{
  "benchmark": "serving",                  # which bench/ script
  "command": ".venv/bin/python bench/...", # exactly what ran, from the repository root
  "date": "2026-12-05T03:30:00Z",          # UTC, when it started
  "commit": "fb024f6...",                  # git HEAD of the tree that ran ("+dirty" when it had changes)
  "machine": {"system": ..., "machine": ..., "cpus": 2, "python": ..., "load_before": 0.3, "load_after": 1.1},
  "tables": {"NAME": {"columns": [...], "rows": [[...], ...]}},  # what the docs render
  "notes": ["..."]                         # what a reader must know to read the tables
}
```

A table's cells are strings exactly as rendered (the benchmark formats its numbers once).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
GIT_TIMEOUT_S = 10  # `git rev-parse` answers in milliseconds; this only bounds a hung filesystem


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        """The table as GitHub markdown: a header, a rule, one line a row."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Result:
    benchmark: str
    command: str
    date: str
    commit: str
    machine: dict[str, Any]
    tables: dict[str, Table] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        document = {
            "benchmark": self.benchmark,
            "command": self.command,
            "date": self.date,
            "commit": self.commit,
            "machine": self.machine,
            "tables": {name: {"columns": t.columns, "rows": t.rows} for name, t in self.tables.items()},
            "notes": self.notes,
        }
        return json.dumps(document, indent=1) + "\n"

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path


class ResultError(ValueError):
    """A results file that does not match the format above (names the file and field)."""


def load_result(path: Path) -> Result:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: cannot read ({err})") from err
    for key in ("benchmark", "command", "date", "commit", "machine", "tables"):
        if key not in document:
            raise ResultError(f"{path}: missing {key!r}")
    tables = {}
    for name, table in document["tables"].items():
        columns, rows = table.get("columns"), table.get("rows")
        if not isinstance(columns, list) or not isinstance(rows, list):
            raise ResultError(f"{path}: tables.{name} needs 'columns' and 'rows' lists")
        for index, row in enumerate(rows):
            if len(row) != len(columns):
                raise ResultError(
                    f"{path}: tables.{name}.rows[{index}] has {len(row)} cells for {len(columns)} columns"
                )
        tables[name] = Table([str(c) for c in columns], [[str(c) for c in row] for row in rows])
    return Result(
        benchmark=document["benchmark"],
        command=document["command"],
        date=document["date"],
        commit=document["commit"],
        machine=document["machine"],
        tables=tables,
        notes=list(document.get("notes", [])),
    )


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=GIT_TIMEOUT_S)
    return done.stdout.strip() if done.returncode == 0 else ""


def git_commit() -> str:
    """HEAD of this checkout, with "+dirty" when tracked files have changes ("unknown" outside git)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def new_result(benchmark: str, argv: Sequence[str] | None = None) -> Result:
    """A result stamped with the command line, the time, the commit and the machine (load taken now)."""
    args = list(sys.argv[1:] if argv is None else argv)
    script = os.path.relpath(sys.argv[0], REPO) if sys.argv and sys.argv[0] else f"bench/bench_{benchmark}.py"
    return Result(
        benchmark=benchmark,
        command=" ".join([".venv/bin/python", script, *args]),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        commit=git_commit(),
        machine={
            "system": platform.system(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": round(load_average(), 2),
        },
    )


def finish(result: Result) -> Result:
    """Record the load average at the end of the run (how quiet the machine stayed)."""
    result.machine["load_after"] = round(load_average(), 2)
    return result
