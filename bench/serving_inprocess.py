"""The limit of bench_serving.py: the artifact called in-process, no gRPC.

It runs what one server batch runs, at a given batch size, on the same
canonical sketches: stroke-3 to padded stroke-5, the TorchScript encoder, and
for Reconstruct the per-sketch seeded noise and the decoder's sampling.
Canonical preprocessing and protobuf conversion are left out: they are the
server's overhead, which the served/in-process ratio measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sketchserve.runtime import SketchRuntime, collate_stroke3, sketch_seed

MIN_REPEATS = 3  # batches timed at least, however slow
WARMUP_REPEATS = 2  # untimed batches first (allocator, TorchScript profiling)
DISTINCT_BATCHES = 16  # batches cycled, so the time is an average over the drawings the server gets


@dataclass(frozen=True)
class InProcessResult:
    method: str
    batch_size: int
    sketches_per_s: float
    ms_per_batch: float


def load(model_dir: Path, torch_threads: int, device: str = "cpu") -> SketchRuntime:
    """The model as the server loads it, with the server's torch thread count, on the server's device."""
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    return SketchRuntime.load(model_dir, device)


def _encode(model: SketchRuntime, batch: Sequence[np.ndarray], max_points: int, seed: int) -> object:
    x, lengths = collate_stroke3(batch)
    return model.encode(x, lengths)


def _reconstruct(model: SketchRuntime, batch: Sequence[np.ndarray], max_points: int, seed: int) -> object:
    """Encode, then decode ``mu`` with the server's per-sketch noise (seeded by ``seed``, index)."""
    steps = max_points or model.manifest.max_seq_len
    x, lengths = collate_stroke3(batch)
    z = model.encode(x, lengths).mu
    seeds = [sketch_seed(seed, i) for i in range(len(batch))]
    return model.decode(z, 0.0, seeds=seeds, max_points=[steps] * len(batch))


RUNNERS = {"Encode": _encode, "Reconstruct": _reconstruct}


def _time(run: Callable[[int], object], min_seconds: float) -> float:
    """Seconds per call of ``run(i)``: at least MIN_REPEATS calls and ``min_seconds`` in all."""
    for i in range(WARMUP_REPEATS):
        run(i)
    repeats, begin = 0, time.perf_counter()
    while repeats < MIN_REPEATS or time.perf_counter() - begin < min_seconds:
        run(repeats)
        repeats += 1
    return (time.perf_counter() - begin) / repeats


def measure(
    model: SketchRuntime,
    method: str,
    sketches: Sequence[np.ndarray],
    batch_size: int,
    *,
    min_seconds: float,
    max_points: int,
) -> InProcessResult:
    """Throughput of ``method`` ("Encode" or "Reconstruct") at ``batch_size``, over batches cycling the pool."""
    batches = [
        [sketches[(b * batch_size + i) % len(sketches)] for i in range(batch_size)] for b in range(DISTINCT_BATCHES)
    ]
    runner = RUNNERS[method]
    seconds = _time(lambda i: runner(model, batches[i % DISTINCT_BATCHES], max_points, i), min_seconds)
    return InProcessResult(method, batch_size, batch_size / seconds, seconds * 1000.0)
