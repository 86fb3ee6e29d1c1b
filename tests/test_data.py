"""The loaders on the real Quick, Draw! files and on every kind of malformed input."""

from __future__ import annotations

import collections
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sketchserve import strokes
from sketchserve.data import (
    DataFormatError,
    DrawingRecord,
    SkipCounter,
    deterministic_split,
    iter_drawings,
)

NPZ_COUNTS = {
    "face": {"train": 1700, "valid": 150, "test": 150},
    "pig": {"train": 2000, "valid": 250, "test": 250},
    "radio": {"train": 2000, "valid": 250, "test": 250},
    "alarm clock": {"train": 2000, "valid": 250, "test": 250},
}
SIMPLIFIED_PER_FILE = 25


def split_counts(records: list[DrawingRecord]) -> dict[str, int]:
    return dict(collections.Counter(r.split for r in records))


# --- the real files --------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(NPZ_COUNTS))
def test_npz_split_counts(data_dir: Path, category: str) -> None:
    path = data_dir / "sketchrnn" / f"{category}.npz"
    records = list(iter_drawings(path))
    assert split_counts(records) == NPZ_COUNTS[category]
    assert {r.word for r in records} == {category}
    assert records[0].source == f"{path}:train[0]"


def test_npz_records_are_canonical_and_raw_on_request(data_dir: Path) -> None:
    path = data_dir / "sketchrnn" / "face.npz"
    stored = np.load(path, encoding="latin1", allow_pickle=True)["valid"]
    raw = list(iter_drawings(path, split="valid", canonical=False))
    assert len(raw) == len(stored)
    assert all(np.array_equal(r.stroke3, s) and r.stroke3.dtype == np.float32 for r, s in zip(raw, stored))
    canonical = list(iter_drawings(path, split="valid"))
    assert [r.source for r in canonical] == [f"{path}:valid[{i}]" for i in range(len(stored))]
    for record, s3 in zip(canonical, stored):
        assert np.array_equal(record.stroke3, strokes.preprocess(strokes.stroke3_to_drawing(s3)))
        points = np.concatenate(strokes.stroke3_to_drawing(record.stroke3))
        extent = points.max(axis=0) - points.min(axis=0)
        assert extent.max() <= strokes.CANONICAL_SIZE
        assert record.recognized is None and record.key_id is None and record.split == "valid"


@pytest.mark.slow
def test_several_files_and_categories_in_one_call(data_dir: Path) -> None:
    paths = [data_dir / "sketchrnn" / "face.npz", data_dir / "sketchrnn" / "pig.npz", data_dir / "simplified"]
    records = list(iter_drawings(paths, split="train", categories=["face", "pig"]))
    by_word = collections.Counter((r.word, r.source.split(":")[0].endswith(".npz")) for r in records)
    assert by_word[("face", True)] == 1700 and by_word[("pig", True)] == 2000
    assert 0 < by_word[("face", False)] < SIMPLIFIED_PER_FILE
    assert 0 < by_word[("pig", False)] < SIMPLIFIED_PER_FILE
    assert len(by_word) == 4 and all(r.split == "train" for r in records)


@pytest.mark.slow
def test_simplified_files_have_25_drawings_with_metadata(data_dir: Path) -> None:
    files = sorted((data_dir / "simplified").glob("*.ndjson"))
    records = list(iter_drawings(data_dir / "simplified"))
    per_file = collections.Counter(r.source.rsplit(":", 1)[0] for r in records)
    assert len(per_file) == len(files) and set(per_file.values()) == {SIMPLIFIED_PER_FILE}
    first = records[0]
    assert first.source == f"{files[0]}:1"
    assert isinstance(first.recognized, bool) and first.key_id and first.countrycode and first.timestamp
    assert all(r.split in ("train", "valid", "test") for r in records)
    assert all(r.stroke3.dtype == np.float32 and r.stroke3[-1, 2] == 1 for r in records)


def test_raw_files_load_with_timestamps(data_dir: Path) -> None:
    path = data_dir / "raw" / "face.ndjson"
    with path.open() as handle:
        lines = [json.loads(line) for line in handle]
    assert len(lines[0]["drawing"][0]) == 3  # x, y, t
    records = list(iter_drawings(path))
    assert [r.key_id for r in records] == [line["key_id"] for line in lines]
    expected = strokes.preprocess(strokes.drawing_from_xy([(s[0], s[1]) for s in lines[0]["drawing"]]))
    assert np.array_equal(records[0].stroke3, expected)
    raw = next(iter_drawings(path, canonical=False))
    assert np.abs(raw.stroke3[:, :2]).max() > strokes.CANONICAL_SIZE or raw.stroke3.shape != expected.shape


# --- deterministic split -----------------------------------------------------------


def test_deterministic_split_is_stable_and_proportional() -> None:
    keys = [str(5_000_000_000_000_000 + 7919 * i) for i in range(20_000)]
    first = [deterministic_split(k) for k in keys]
    assert first == [deterministic_split(k) for k in keys]
    share = collections.Counter(first)
    assert abs(share["train"] / len(keys) - 0.85) < 0.02
    assert abs(share["valid"] / len(keys) - 0.075) < 0.01
    assert {deterministic_split(k, (0, 0, 1)) for k in keys[:100]} == {"test"}


def test_deterministic_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="fractions"):
        deterministic_split("k", (0.5, 0.5))


# --- malformed input -----------------------------------------------------------


GOOD = {"word": "cat", "key_id": "1", "recognized": True, "drawing": [[[0, 10, 20], [0, 5, 0]]]}


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"word": "cat", "drawing": [[[0, 1]', "invalid JSON: the line ends at column 36 before the object does"),
        ('{"word": "cat", "drawing": [[[0, x]]]}', "invalid JSON (Expecting value at column 34)"),
        ("[1, 2]", "expected a JSON object"),
        ({"word": "cat"}, "missing key 'drawing'"),
        ({"drawing": [[[0], [0]]]}, "missing key 'word'"),
        ({"word": "cat", "drawing": [[[0, 1, 2], [0, 1]]]}, "strokes[0].y: has 2 values but x has 3"),
        ({"word": "cat", "drawing": [[[0, 1]]]}, "strokes[0]: expected [xs, ys]"),
        ({"word": "cat", "drawing": "abc"}, "'drawing' must be a list"),
        ({"word": "cat", "drawing": []}, "drawing has no strokes"),
        ({"word": "cat", "drawing": [[[], []]]}, "stroke has no points"),
        ({"word": "cat", "drawing": [[[0, 1], [0, 1], [0]]]}, "strokes[0].t"),
        ({"word": "cat", "drawing": [[["a", 1], [0, 1]]]}, "strokes[0]"),
        ({"word": "cat", "recognized": "yes", "drawing": [[[0], [0]]]}, "'recognized' must be true or false"),
        ({"word": 3, "drawing": [[[0], [0]]]}, "'word' must be a string"),
    ],
    ids=[
        "truncated-json",
        "bad-json",
        "not-object",
        "no-drawing",
        "no-word",
        "xy-mismatch",
        "no-y",
        "drawing-not-list",
        "no-strokes",
        "empty-stroke",
        "t-mismatch",
        "not-numbers",
        "bad-recognized",
        "bad-word",
    ],
)
def test_bad_ndjson_line_names_file_and_line(tmp_path: Path, bad_line: object, message: str) -> None:
    path = write_lines(tmp_path / "cats.ndjson", [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(DataFormatError) as info:
        list(iter_drawings(path))
    assert info.value.location == 3 and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)

    skipped = SkipCounter()
    records = list(iter_drawings(path, on_error="skip", skipped=skipped))
    assert [r.source for r in records] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    assert skipped.count == 1 and message in skipped.examples[0]


def test_lines_before_an_error_are_yielded_first(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "cats.ndjson", [GOOD, "oops"])
    records = iter_drawings(path)
    assert next(records).source == f"{path}:1"
    with pytest.raises(DataFormatError, match=":2: invalid JSON"):
        next(records)


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "cats.ndjson", [GOOD, "", "   ", GOOD])
    assert [r.source for r in iter_drawings(path)] == [f"{path}:1", f"{path}:4"]


def test_non_utf8_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "cats.ndjson"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"cats.ndjson:2: not UTF-8"):
        list(iter_drawings(path))


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="nope.npz: no such file"):
        list(iter_drawings(tmp_path / "nope.npz", on_error="skip"))
    other = tmp_path / "cats.csv"
    other.write_text("x\n")
    with pytest.raises(DataFormatError, match="unknown file type '.csv'"):
        list(iter_drawings(other))


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        list(iter_drawings(tmp_path, on_error="ignore"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        list(iter_drawings(tmp_path, split="training"))


def test_unreadable_npz(tmp_path: Path) -> None:
    path = tmp_path / "cat.npz"
    path.write_text("not a zip file")
    with pytest.raises(DataFormatError, match=r"cat.npz: not a readable sketch-rnn .npz"):
        list(iter_drawings(path))
    skipped = SkipCounter()
    assert list(iter_drawings(path, on_error="skip", skipped=skipped)) == []
    assert skipped.count == 1


def test_truncated_npz(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, train=np.array([np.zeros((3, 3), np.int16)], dtype=object))
    path = tmp_path / "cat.npz"
    path.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataFormatError, match="cat.npz: not a readable"):
        list(iter_drawings(path))


def test_npz_without_split_keys(tmp_path: Path) -> None:
    path = tmp_path / "cat.npz"
    np.savez(path, other=np.zeros(3))
    with pytest.raises(DataFormatError, match="none of the keys"):
        list(iter_drawings(path))


def test_npz_bad_drawings_name_split_and_index(tmp_path: Path) -> None:
    good = np.array([[1, 2, 0], [3, 4, 1]], dtype=np.int16)
    drawings = np.empty(4, dtype=object)
    drawings[:] = [good, np.zeros((2, 2), np.int16), np.zeros((0, 3), np.int16), good]
    nan_drawing = np.empty(1, dtype=object)
    nan_drawing[0] = np.array([[np.nan, 0, 1]])
    path = tmp_path / "cat.npz"
    np.savez(path, train=drawings, valid=nan_drawing)
    with pytest.raises(DataFormatError) as info:
        list(iter_drawings(path))
    assert str(info.value).startswith(f"{path}:train[1]: expected an (N, 3) stroke-3 array")
    skipped = SkipCounter()
    records = list(iter_drawings(path, on_error="skip", skipped=skipped))
    assert [r.source for r in records] == [f"{path}:train[0]", f"{path}:train[3]"]
    assert skipped.count == 3
    assert any("valid[0]: holds NaN" in example for example in skipped.examples)
    assert any("train[2]: empty drawing" in example for example in skipped.examples)


def test_npz_must_be_one_dimensional(tmp_path: Path) -> None:
    path = tmp_path / "cat.npz"
    np.savez(path, train=np.zeros((2, 3, 3), np.int16))
    with pytest.raises(DataFormatError, match="cat.npz:train: expected a 1-D array"):
        list(iter_drawings(path))


def test_zip_is_not_confused_with_npz(tmp_path: Path) -> None:
    path = tmp_path / "cat.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.npy", b"garbage")
    with pytest.raises(DataFormatError, match="not a readable"):
        list(iter_drawings(path))
