"""Training data: splits of canonical stroke-3 sketches, their provenance, batches and augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchserve.artifact import sha256_file
from sketchserve.data import SPLITS, DrawingRecord, expand_paths, iter_drawings
from sketchserve.strokes import pad_stroke5
from sketchserve.training.augment import augment_stroke3

# Keeps the epochs' shuffles apart from every other random stream seeded by the run's seed.
SHUFFLE_STREAM = 0x5EED

# Hook for training on a subset (e.g. one cluster of a model: `--from-cluster`): records in, records out.
RecordFilter = Callable[[list[DrawingRecord]], list[DrawingRecord]]


class DataError(ValueError):
    """Data that cannot train a model (one line)."""


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # [B, T, 5] canonical stroke-5 without start token, T = longest sketch
    lengths: torch.Tensor  # [B] int64


@dataclass
class Dataset:
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    provenance: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[np.ndarray]:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def _file_entry(path: Path, records: Sequence[DrawingRecord]) -> dict[str, Any]:
    counts = {name: sum(1 for r in records if r.split == name) for name in SPLITS}
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "categories": sorted({r.word for r in records}),
        "counts": counts,
    }


def _source_path(record: DrawingRecord) -> str:
    """``record.source`` is ``path:line`` or ``path:split[i]``; the file is everything before the last colon."""
    return record.source.rsplit(":", 1)[0]


def load_dataset(
    paths: Sequence[str | Path],
    categories: Sequence[str] | None,
    max_seq_len: int,
    record_filter: RecordFilter | None = None,
    filter_description: str | None = None,
) -> Dataset:
    """Read every file (npz splits as stored, ndjson by deterministic split), filter, drop over-long sketches."""
    files = expand_paths(paths)
    if not files:
        raise DataError(f"no .npz or .ndjson files in {', '.join(map(str, paths))}")
    records = list(iter_drawings(files, categories=categories or None))
    if record_filter is not None:
        records = record_filter(records)
    by_file: dict[str, list[DrawingRecord]] = {str(f): [] for f in files}
    splits: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    too_long = 0
    for record in records:
        if len(record.stroke3) > max_seq_len:
            too_long += 1
            continue
        if len(record.stroke3) == 0:
            continue
        splits[record.split or "train"].append(np.asarray(record.stroke3, dtype=np.float32))
        by_file.setdefault(_source_path(record), []).append(record)
    if not splits["train"]:
        wanted = f" of categories {', '.join(categories)}" if categories else ""
        raise DataError(f"no training drawings{wanted} in {', '.join(map(str, files))} (at most {max_seq_len} points)")
    provenance = {
        "files": [_file_entry(Path(p), recs) for p, recs in by_file.items() if Path(p).is_file()],
        "categories": sorted({r.word for recs in by_file.values() for r in recs}),
        "counts": {name: len(items) for name, items in splits.items()},
        "dropped_longer_than_max_seq_len": too_long,
    }
    if filter_description:
        provenance["filter"] = filter_description
    return Dataset(train=splits["train"], valid=splits["valid"], test=splits["test"], provenance=provenance)


def scale_factor(sketches: Sequence[np.ndarray]) -> float:
    """magenta's normalizing scale factor: the std of all x and y offsets of the training set."""
    offsets = np.concatenate([s[:, :2].reshape(-1) for s in sketches])
    std = float(np.std(offsets))
    if not np.isfinite(std) or std <= 0.0:
        raise DataError("training offsets have zero spread; cannot normalize")
    return std


def make_batch(sketches: Sequence[np.ndarray]) -> Batch:
    """Stack stroke-3 sketches into padded stroke-5 (as wide as the longest)."""
    padded = pad_stroke5(sketches)
    return Batch(x=torch.from_numpy(padded.x), lengths=torch.from_numpy(padded.lengths))


def augmented_batch(
    sketches: Sequence[np.ndarray], picks: np.ndarray, rng: np.random.Generator, scale: float, drop_prob: float
) -> Batch:
    """The sketches at ``picks`` with the paper's augmentation (x/y scaling, point dropping), drawn from ``rng``."""
    return make_batch([augment_stroke3(sketches[i], rng, scale, drop_prob) for i in picks])


class EpochShards:
    """Which sketches each rank trains on under ``torchrun``: every epoch is a shuffle of the training set
    (the same on every rank, from the seed and the epoch's number), read in consecutive slices of
    ``world * local_batch`` of which rank ``r`` takes the ``r``-th; so in each epoch the ranks' sketches
    are the training set, none twice. Step ``s`` of rank ``r`` takes the shuffled stream's positions
    ``(s * world + r) * local_batch`` onwards (a step may straddle two epochs); nothing but the step is
    state, so a resumed run draws what an uninterrupted one draws.
    """

    def __init__(self, size: int, seed: int, rank: int, world: int, local_batch: int) -> None:
        self.size, self.seed, self.rank, self.world, self.local_batch = size, seed, rank, world, local_batch
        self._epoch = -1
        self._order = np.arange(size)

    def order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s shuffle of the training set's indices."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, SHUFFLE_STREAM, epoch]).permutation(self.size)
            self._epoch = epoch
        return self._order

    def picks(self, step: int) -> np.ndarray:
        """This rank's training-set indices at ``step``."""
        start = (step * self.world + self.rank) * self.local_batch
        epochs, offsets = np.divmod(np.arange(start, start + self.local_batch), self.size)
        return np.array([self.order(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)


def fixed_batches(sketches: Sequence[np.ndarray], batch_size: int) -> list[Batch]:
    """The whole split in order, in batches (for evaluation)."""
    return [make_batch(sketches[i : i + batch_size]) for i in range(0, len(sketches), batch_size)]
