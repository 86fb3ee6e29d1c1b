"""Throughput of canonical preprocessing on one core, and agreement with Google.

    .venv/bin/python bench/bench_preprocess.py [--data ../shared/data] [--repeats 5]

Pins the process to one CPU and one BLAS/OpenMP thread, loads the simplified
ndjson drawings (8,600 in ../shared/data), and times ``strokes.preprocess_many``
(the batched path the loaders and the server use), ``strokes.preprocess``
one drawing at a time, and ``preprocess_many`` of float32 copies at scale 0.3
(not integers, so they take the lattice search of ``strokes._on_lattice``); the
run with the least CPU time of ``--repeats`` counts.
CPU time (``time.process_time``) is the headline because the development
machine is shared; wall time is shown beside it. Then it measures
how the canonical form of every raw drawing agrees with its simplified twin.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONE_BY_ONE_SAMPLE = 2000  # drawings timed through the single-drawing path
FLOAT32_COPY_SCALE = 0.3  # float32 copies at this scale are no longer integers: they take the lattice search


def _pin_to_one_core() -> None:
    for name in SINGLE_THREAD_ENV:
        os.environ[name] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@dataclass(frozen=True)
class Timing:
    wall_s: float  # best wall-clock time of the repeats
    cpu_s: float  # this process's CPU time in that run: robust to other load on a shared machine


def _best_time(run: Callable[[], object], repeats: int) -> Timing:
    best = Timing(float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
        best = min(best, timing, key=lambda t: t.cpu_s)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SKETCHSERVE_DATA", DEFAULT_DATA)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the result file here (bench/results.py)")
    args = parser.parse_args(argv)
    _pin_to_one_core()
    from agreement import (  # after pinning, so numpy starts single-threaded
        compare_drawings,
        raw_simplified_pairs,
        read_xy,
    )
    from results import Table, finish, new_result

    result = new_result("preprocess", sys.argv[1:] if argv is None else argv)

    from sketchserve import strokes

    simplified = sorted((args.data / "simplified").glob("*.ndjson"))
    if not simplified:
        sys.stderr.write(f"no simplified ndjson under {args.data}\n")
        return 1
    drawings = [strokes.drawing_from_xy(xy) for path in simplified for _, xy in read_xy(path)]
    sample = drawings[:ONE_BY_ONE_SAMPLE]
    batched = _best_time(lambda: strokes.preprocess_many(drawings), args.repeats)
    single = _best_time(lambda: [strokes.preprocess(d) for d in sample], args.repeats)
    copies = [[(s * FLOAT32_COPY_SCALE).astype(np.float32).astype(np.float64) for s in d] for d in drawings]
    copied = _best_time(lambda: strokes.preprocess_many(copies), args.repeats)

    pairs = raw_simplified_pairs(args.data)
    agreement = compare_drawings(strokes.canonicalize_many(pairs.raws), pairs.twins)

    rows = [
        ("drawings (simplified ndjson)", f"{len(drawings)}"),
        ("preprocess_many, drawings per CPU-second", f"{len(drawings) / batched.cpu_s:,.0f}"),
        ("preprocess_many, drawings per wall second", f"{len(drawings) / batched.wall_s:,.0f}"),
        ("preprocess one by one, drawings per CPU-second", f"{len(sample) / single.cpu_s:,.0f}"),
        (
            f"preprocess_many of float32 copies x{FLOAT32_COPY_SCALE}, drawings per CPU-second",
            f"{len(copies) / copied.cpu_s:,.0f}",
        ),
        ("raw/simplified pairs", f"{agreement.pairs}"),
        ("same point count in every stroke", f"{agreement.same_counts} ({agreement.same_count_rate:.1%})"),
        ("identical to Google's simplified", f"{agreement.identical} ({agreement.identical_rate:.1%})"),
        ("mean distance of matched points", f"{agreement.mean_distance:.3f} units (0-255 frame)"),
    ]
    finish(result)
    result.tables["preprocess"] = Table(["measure", "value"], [list(row) for row in rows])
    result.notes.append("One core (affinity and one BLAS thread); speed is the best CPU time of the repeats.")
    if args.json is not None:
        result.write(args.json)
    width = max(len(name) for name, _ in rows)
    out = [f"command: {result.command}"]
    machine = result.machine
    out.append(
        f"machine: {machine['machine']}, python {machine['python']}, 1 core, "
        f"load average {machine['load_before']} before / {machine['load_after']} after"
    )
    out += [f"{name.ljust(width)}  {value}" for name, value in rows]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
