"""Published tables are rendered from the benchmarks' result files (bench/render.py) and stay in step with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from render import DEFAULT_FILES, render_files, render_text
from results import REPO, Result, Table, load_result


def _result(tmp_path: Path, value: str) -> Path:
    result = Result("demo", ".venv/bin/python bench/demo.py", "2026-12-05T03:30:00Z", "abc", {"cpus": 2})
    result.tables["speed"] = Table(["measure", "value"], [["sketches/s", value]])
    return result.write(tmp_path / "demo.json")


def _block(source: Path, body: str = "") -> str:
    return f"before\n<!-- rendered from {source}#speed -->\n{body}<!-- end rendered -->\nafter\n"


def test_the_published_tables_match_their_result_files() -> None:
    """Fails when a table was edited by hand or its JSON re-measured without `make figures`."""
    stale = render_files([REPO / name for name in DEFAULT_FILES], check=True)
    assert stale == [], [f"{s.path.name}: {s.table} from {s.source}" for s in stale]


def test_a_block_is_rendered_from_its_json_with_its_provenance(tmp_path: Path) -> None:
    source = _result(tmp_path, "1,234")
    text, changed = render_text(_block(source))
    assert changed == [(str(source), "speed")]
    assert "| sketches/s | 1,234 |" in text and "`.venv/bin/python bench/demo.py`" in text
    assert text.startswith("before\n") and text.endswith("<!-- end rendered -->\nafter\n")
    again, changed_again = render_text(text)
    assert again == text and changed_again == []


def test_a_hand_edited_table_is_stale(tmp_path: Path) -> None:
    source = _result(tmp_path, "1,234")
    text, _ = render_text(_block(source))
    path = tmp_path / "page.md"
    path.write_text(text.replace("1,234", "9,999"))
    (stale,) = render_files([path], check=True)
    assert (stale.source, stale.table) == (str(source), "speed")
    assert "9,999" in path.read_text()  # --check writes nothing
    render_files([path], check=False)
    assert "1,234" in path.read_text()


def test_a_missing_table_or_bad_row_is_named(tmp_path: Path) -> None:
    source = _result(tmp_path, "1")
    with pytest.raises(KeyError, match="no table 'nope'"):
        render_text(_block(source).replace("#speed", "#nope"))
    source.write_text(source.read_text().replace('"1"', '"1", "extra"'))
    with pytest.raises(ValueError, match=r"tables.speed.rows\[0\] has 3 cells for 2 columns"):
        load_result(source)
