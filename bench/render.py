"""Render the published tables from the benchmarks' result files (``make figures``); ``--check`` only compares.

A rendered table in a markdown file sits between two markers naming its source:

    <!-- rendered from bench/results/serving.json#goals -->
    ...the table, a line saying when, where and with which command it was measured...
    <!-- end rendered -->

``python bench/render.py`` rewrites every such block in the files it is given
(default: README.md, docs/benchmarks.md, models/face/MODEL_CARD.md) from the
JSON named in its marker (``bench/results.py`` describes the format).
``--check`` rewrites nothing and exits 1 naming each block that no longer
matches its JSON (``make test`` runs it, so a table edited by hand, or a JSON
re-measured without re-rendering, fails the build).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from results import REPO, load_result

log = logging.getLogger("render")

DEFAULT_FILES = ("README.md", "docs/benchmarks.md", "models/face/MODEL_CARD.md")
BLOCK = re.compile(
    r"(?P<open><!-- rendered from (?P<source>[^#\s]+)#(?P<table>[\w-]+) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- end rendered -->)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Stale:
    path: Path
    source: str
    table: str


def render_block(source: str, table: str) -> str:
    """The body of one block: the table, then one line of provenance."""
    result = load_result(REPO / source)
    if table not in result.tables:
        raise KeyError(f"{source} has no table {table!r} (it has {', '.join(sorted(result.tables))})")
    machine = result.machine
    load = f"load average {machine.get('load_before', '?')} before / {machine.get('load_after', '?')} after"
    provenance = (
        f"Measured {result.date} at commit {result.commit[:12]} on {machine.get('machine', '?')} with "
        f"{machine.get('cpus', '?')} CPUs ({load}): `{result.command}`."
    )
    notes = "".join(f"\n{note}\n" for note in result.notes)
    return f"{result.tables[table].markdown()}\n\n{provenance}\n{notes}"


def render_text(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text with every block rendered, and the (source, table) of each block that changed."""
    changed: list[tuple[str, str]] = []

    def replace(match: re.Match[str]) -> str:
        body = render_block(match["source"], match["table"])
        if body != match["body"]:
            changed.append((match["source"], match["table"]))
        return f"{match['open']}{body}{match['close']}"

    return BLOCK.sub(replace, text), changed


def render_files(paths: Sequence[Path], *, check: bool) -> list[Stale]:
    stale: list[Stale] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        new, changed = render_text(text)
        stale += [Stale(path, source, table) for source, table in changed]
        if changed and not check:
            path.write_text(new, encoding="utf-8")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help=f"markdown files (default: {', '.join(DEFAULT_FILES)})")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = args.files or [REPO / name for name in DEFAULT_FILES]
    stale = render_files(paths, check=args.check)
    for item in stale:
        verb = "does not match" if args.check else "rendered from"
        log.info("%s: the table %s %s %s", item.path.relative_to(REPO), item.table, verb, item.source)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
