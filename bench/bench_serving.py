"""Serving benchmark: throughput and latency of the gRPC server against its limits.

    .venv/bin/python bench/bench_serving.py [--model DIR] [--device cuda] [--quick] [--out FILE.md]

In one run, side by side:

- the server (`sketchserve serve` subprocess on 127.0.0.1, default batching) under
  a closed-loop load generator in a separate process (bench/serving_load.py):
  calls/s, sketches/s, p50/p99 latency and the mean batch size the server
  formed (from its Prometheus metrics), for Encode and Reconstruct at each
  concurrency and sketches-per-call;
- Encode on that server in three forms: packed, readable, and the same sketches
  sent to the Open Inference Protocol's ``sketch-encoder`` (form ``oip``: ModelInfer
  with raw ``points``/``lengths``, as tritonclient sends them);
- the same server with batching off (`--max-batch-size 1`), same grid;
- the limit: the artifact called in-process (bench/serving_inprocess.py) at the
  batch size the server formed at the highest concurrency, and at batch 1.

It prints a markdown table and the goal ratios of issue 5 (served/in-process,
batched/unbatched, p50 at concurrency 1 minus the in-process single-sketch
time). The model is ``--model``, else the bundled ``models/face``, else a
random artifact of the default size (same compute as a trained one).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from results import Table, finish, new_result
from serving_load import ENCODE, FORMS, PACKED, RECONSTRUCT, CellResult, CellSpec, run_cell
from serving_server import BatchTotals, CpuPerCall, ServerProcess

from sketchserve import data, strokes
from sketchserve.artifact import read_manifest
from sketchserve.client.convert import sketch_to_pb
from sketchserve.client.types import Sketch

log = logging.getLogger("bench_serving")

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO / "models" / "face"
DATA_FILE = REPO.parent / "shared" / "data" / "sketchrnn" / "face.npz"
DATA_ENV = "SKETCHSERVE_DATA"
POOL_SKETCHES = 256  # distinct drawings the requests are made of
SYNTHETIC_POINTS = 40  # points of a synthetic zig-zag drawing when no real data is present
METHODS = (ENCODE, RECONSTRUCT)
BATCHER = {ENCODE: "encode", RECONSTRUCT: "decode"}  # the batcher whose batch size a method's row reports
CELL_TIMEOUT_SLACK_S = 60.0  # the worker process's answer may take this long past its window
# The goals of the serving issue (13), each a ratio within one run:
GOALS_SERVED_VS_LIMIT = {1: 0.8, 32: 0.95}  # sketches per call -> served/in-process goal (Encode, top concurrency)
GOAL_BATCHING = {ENCODE: 2.5, RECONSTRUCT: 8.0}  # batched/unbatched sketches/s at the top concurrency
GOAL_P50_EXTRA_MS = {ENCODE: 0.5, RECONSTRUCT: 1.0}  # p50 at concurrency 1 minus the in-process single-sketch time
GOAL_CPU_OUTSIDE_MODEL_MS = 0.3  # server CPU per one-sketch Encode call outside the model, at concurrency 1


@dataclass(frozen=True)
class BenchConfig:
    model: Path | None  # None: models/face, else a random default-size artifact
    concurrency: tuple[int, ...]
    sketches_per_call: tuple[int, ...]
    warmup_s: float
    duration_s: float
    max_calls: int
    max_points: int  # Reconstruct output length: the figures are for 100-step decodes
    max_round_s: float  # longest wait for a cell's first round of completions (steady state)
    torch_threads: int  # server and in-process alike (the server's default is 1)
    device: str  # server and in-process alike: cpu, cuda or cuda:N
    out: Path | None
    json: Path | None  # the result file (bench/results.py) the docs render from


@dataclass(frozen=True)
class Row:
    server: str  # "batched" or "unbatched"
    method: str
    concurrency: int
    sketches_per_call: int
    result: CellResult
    mean_batch: float
    form: str = PACKED  # how the requests carried their sketches
    cpu: CpuPerCall | None = None  # the server's CPU per finished call over the whole cell


@dataclass(frozen=True)
class Goal:
    """One ratio of the report. ``met`` only when there is a goal and every cell it uses ran clean."""

    name: str
    measured: float
    rule: str | None  # the goal as the report writes it, e.g. ">= 0.8"; None: reported, no goal
    passes: bool  # the measured value is on the goal's side of the target
    clean: bool  # every cell it uses was in steady state with no errors

    @property
    def met(self) -> bool:
        return self.rule is not None and self.clean and self.passes

    @property
    def verdict(self) -> str:
        if self.rule is None:
            return "(no goal)"
        if not self.clean:
            return "not measured (a cell had errors or was not in steady state)"
        return "yes" if self.passes else "no"


def _clean(*rows: Row) -> bool:
    return all(r.result.steady and not r.result.errors for r in rows)


def parse_args(argv: Sequence[str]) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="artifact directory (default: models/face or random)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.05 s warm-up, 0.2 s windows")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of load before each window (default 1)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per cell (default 4)")
    parser.add_argument("--max-calls", type=int, default=None, help="calls per cell at most (default 100000)")
    parser.add_argument(
        "--max-round", type=float, default=None, help="longest wait for steady state per cell (default 30 s)"
    )
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated (default %(default)s)")
    parser.add_argument("--sketches-per-call", default="1,32", help="comma-separated (default %(default)s)")
    parser.add_argument("--max-points", type=int, default=100, help="Reconstruct output points (default %(default)s)")
    parser.add_argument("--torch-threads", type=int, default=1, help="server and in-process (default %(default)s)")
    parser.add_argument(
        "--device", default="cpu", help="server and in-process: cpu, cuda or cuda:N (default %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result file here (bench/results.py)")
    args = parser.parse_args(list(argv))
    quick = args.quick
    config = BenchConfig(
        model=args.model,
        concurrency=_ints(args.concurrency, "--concurrency"),
        sketches_per_call=_ints(args.sketches_per_call, "--sketches-per-call"),
        warmup_s=args.warmup if args.warmup is not None else (0.05 if quick else 1.0),
        duration_s=args.duration if args.duration is not None else (0.2 if quick else 4.0),
        max_calls=args.max_calls if args.max_calls is not None else (200 if quick else 100_000),
        max_points=args.max_points,
        max_round_s=args.max_round if args.max_round is not None else (2.0 if quick else 30.0),
        torch_threads=args.torch_threads,
        device=args.device,
        out=args.out,
        json=args.json,
    )
    if config.duration_s <= 0 or config.warmup_s < 0 or config.max_calls < 1 or config.max_points < 1:
        parser.error("--duration and --max-calls and --max-points must be positive, --warmup >= 0")
    return config


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise SystemExit(f"bench_serving: {flag} takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise SystemExit(f"bench_serving: {flag} needs positive integers, got {text!r}")
    return values


def _data_file() -> Path:
    override = os.environ.get(DATA_ENV)
    return Path(override) / "sketchrnn" / "face.npz" if override else DATA_FILE


def _zigzag(index: int) -> np.ndarray:
    """A synthetic stroke-3 drawing (used only where the real data is absent)."""
    rng = np.random.default_rng(index)
    s3 = np.zeros((SYNTHETIC_POINTS, 3), dtype=np.float32)
    s3[:, :2] = rng.normal(0.0, 10.0, size=(SYNTHETIC_POINTS, 2))
    s3[SYNTHETIC_POINTS // 2 - 1 :: SYNTHETIC_POINTS // 2, 2] = 1.0
    return s3


@dataclass(frozen=True)
class Drawings:
    sketches: list[Sketch]  # as sent
    canonical: list[np.ndarray]  # as the model sees them (the server's preprocessing)
    source: str


def load_drawings(max_points: int) -> Drawings:
    """Real faces (all splits) when present, else synthetic ones; those the model accepts (<= max_points)."""
    path = _data_file()
    if path.exists():
        candidates = [Sketch.from_stroke3(r.stroke3) for r in data.iter_drawings([path], canonical=False)]
        source = f"real faces from {path.name}"
    else:
        candidates = [Sketch.from_stroke3(_zigzag(i)) for i in range(POOL_SKETCHES)]
        source = "synthetic zig-zags (no real data found)"
    canonical = strokes.preprocess_many([list(s.strokes) for s in candidates])
    kept = [i for i, s3 in enumerate(canonical) if len(s3) <= max_points][:POOL_SKETCHES]
    if not kept:
        raise SystemExit(f"bench_serving: no drawing fits the model's {max_points} points")
    mean_points = np.mean([len(canonical[i]) for i in kept])
    return Drawings(
        [candidates[i] for i in kept],
        [canonical[i] for i in kept],
        f"{len(kept)} {source} (mean {mean_points:.0f} points after preprocessing)",
    )


def resolve_model(config: BenchConfig, scratch: Path) -> Path:
    if config.model is not None:
        return config.model
    if (BUNDLED_MODEL / "manifest.json").exists():
        return BUNDLED_MODEL
    from sketchserve.training.export import make_random_artifact

    log.info("no models/face: making a random artifact of the default size")
    return make_random_artifact(scratch / "random", seed=0, tiny=False)


def run_grid(
    pool: Pool,
    server: ServerProcess,
    name: str,
    config: BenchConfig,
    sketches: tuple[bytes, ...],
    forms: Sequence[str] = (PACKED,),
) -> list[Row]:
    rows = []
    cells = [
        (method, form, concurrency, per_call)
        for method in METHODS
        for form in (forms if method == ENCODE else (PACKED,))  # Reconstruct's cost is the decoder's either way
        for concurrency in config.concurrency
        for per_call in config.sketches_per_call
    ]
    for method, form, concurrency, per_call in cells:
        spec = CellSpec(
            server.target,
            method,
            concurrency,
            per_call,
            sketches,
            config.warmup_s,
            config.duration_s,
            config.max_calls,
            config.max_points,
            config.max_round_s,
            form,
        )
        before = server.snapshot()
        timeout = config.warmup_s + config.max_round_s + config.duration_s + CELL_TIMEOUT_SLACK_S
        result = pool.apply_async(run_cell, (spec,)).get(timeout=timeout)
        after = server.snapshot()
        cpu = CpuPerCall.between(before, after)
        empty = BatchTotals(0.0, 0.0)
        batcher = BATCHER[method]
        mean_batch = after.batches.get(batcher, empty).mean_since(before.batches.get(batcher, empty))
        rows.append(Row(name, method, concurrency, per_call, result, mean_batch, form, cpu))
        log.info(
            "%s %s %s c=%d k=%d: %.1f sketches/s", name, method, form, concurrency, per_call, result.sketches_per_s
        )
    return rows


def served(config: BenchConfig, model_dir: Path, sketches: tuple[bytes, ...]) -> list[Row]:
    # The server exactly as `sketchserve serve` starts it: every setting at its default but the two the
    # benchmark is about (threads and device, whose defaults are 1 and auto anyway). If a load needs another
    # setting to run clean, the default is the bug, and the errors column shows it.
    common = ["--torch-threads", str(config.torch_threads), "--device", config.device]
    rows: list[Row] = []
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(ServerProcess(model_dir, common + extra))
            for name, extra in (("batched", []), ("unbatched", ["--max-batch-size", "1"]))
        }
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(1))
        for name, server in servers.items():
            server.wait_serving()
            log.info("%s server serving on %s", name, server.target)
        for name, server in servers.items():
            # Packed vs readable side by side on the batched server; the unbatched one takes the client's default.
            rows += run_grid(pool, server, name, config, sketches, FORMS if name == "batched" else (PACKED,))
    return rows


def in_process(config: BenchConfig, model_dir: Path, canonical: list[np.ndarray], rows: list[Row]) -> dict:
    """In-process results keyed by (method, batch size): batch 1 and each batch size formed at the top concurrency."""
    from serving_inprocess import load, measure

    model = load(model_dir, config.torch_threads, config.device)
    top = max(config.concurrency)
    results = {}
    for method in METHODS:
        sizes = {1} | {
            max(1, round(r.mean_batch))
            for r in rows
            if r.server == "batched"
            and r.method == method
            and r.form == PACKED
            and r.concurrency == top
            and math.isfinite(r.mean_batch)
        }
        for size in sorted(sizes):
            results[(method, size)] = measure(
                model, method, canonical, size, min_seconds=config.duration_s / 2, max_points=config.max_points
            )
    return results


def _find(rows: list[Row], server: str, method: str, concurrency: int, per_call: int, form: str = PACKED) -> Row | None:
    """The cell of those settings; the goals read the packed cells (what the Python client sends)."""
    key = (server, method, concurrency, per_call, form)
    for row in rows:
        if (row.server, row.method, row.concurrency, row.sketches_per_call, row.form) == key:
            return row
    return None


def goals(config: BenchConfig, rows: list[Row], limits: dict) -> list[Goal]:
    top, low = max(config.concurrency), min(config.concurrency)
    result = []
    for method in METHODS:
        for per_call in config.sketches_per_call:
            row = _find(rows, "batched", method, top, per_call)
            if row is None or not math.isfinite(row.mean_batch):
                continue
            limit = limits[(method, max(1, round(row.mean_batch)))]
            ratio = row.result.sketches_per_s / limit.sketches_per_s
            target = GOALS_SERVED_VS_LIMIT.get(per_call) if method == ENCODE else None
            result.append(
                Goal(
                    f"{method} c={top} k={per_call}: served / in-process at batch {limit.batch_size}",
                    ratio,
                    None if target is None else f">= {target}",
                    target is not None and ratio >= target,
                    _clean(row),
                )
            )
        for per_call in config.sketches_per_call:
            batched = _find(rows, "batched", method, top, per_call)
            unbatched = _find(rows, "unbatched", method, top, per_call)
            if batched is None or unbatched is None or unbatched.result.sketches_per_s == 0:
                continue
            speedup = batched.result.sketches_per_s / unbatched.result.sketches_per_s
            p99_ok = not batched.result.p99_ms > unbatched.result.p99_ms
            result.append(
                Goal(
                    f"{method} c={top} k={per_call}: batched / unbatched (p99 {batched.result.p99_ms:.1f} vs "
                    f"{unbatched.result.p99_ms:.1f} ms)",
                    speedup,
                    f">= {GOAL_BATCHING[method]}, p99 no worse",
                    speedup >= GOAL_BATCHING[method] and p99_ok,
                    _clean(batched, unbatched),
                )
            )
        single = _find(rows, "batched", method, low, 1)
        if method == ENCODE and single is not None and single.cpu is not None:
            result.append(
                Goal(
                    f"{method} c={low} k=1: server CPU per call outside the model (ms)",
                    single.cpu.outside_model_ms,
                    f"<= {GOAL_CPU_OUTSIDE_MODEL_MS} ms",
                    single.cpu.outside_model_ms <= GOAL_CPU_OUTSIDE_MODEL_MS,
                    _clean(single),
                )
            )
        if single is not None:
            extra = single.result.p50_ms - limits[(method, 1)].ms_per_batch
            result.append(
                Goal(
                    f"{method} c={low} k=1: p50 {single.result.p50_ms:.2f} ms minus in-process "
                    f"{limits[(method, 1)].ms_per_batch:.2f} ms",
                    extra,
                    f"<= {GOAL_P50_EXTRA_MS[method]} ms",
                    extra <= GOAL_P50_EXTRA_MS[method],
                    _clean(single),
                )
            )
    return result


def _errors(result: CellResult) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(result.errors.items())) or "0"


def tables(rows: list[Row], limits: dict, goal_list: list[Goal]) -> dict[str, Table]:
    """The three tables of a run: every cell, the in-process limits, the goals."""
    cells = Table(
        [
            "server",
            "method",
            "form",
            "concurrency",
            "sketches/call",
            "calls/s",
            "sketches/s",
            "p50 ms",
            "p99 ms",
            "mean batch",
            "errors",
            "window s",
            "server CPU ms/call",
            "outside the model",
            "of it preprocessing",
        ],
        [
            [
                r.server,
                r.method,
                r.form,
                str(r.concurrency),
                str(r.sketches_per_call),
                f"{r.result.calls_per_s:.1f}",
                f"{r.result.sketches_per_s:.1f}{'' if r.result.steady else ' *'}",
                f"{r.result.p50_ms:.2f}",
                f"{r.result.p99_ms:.2f}",
                f"{r.mean_batch:.1f}",
                _errors(r.result),
                f"{r.result.window_s:.1f}",
                "-" if r.cpu is None else f"{r.cpu.total_ms:.3f}",
                "-" if r.cpu is None else f"{r.cpu.outside_model_ms:.3f}",
                "-" if r.cpu is None else f"{r.cpu.preprocess_ms:.3f}",
            ]
            for r in rows
        ],
    )
    limit_table = Table(
        ["method", "batch", "sketches/s", "ms/batch"],
        [
            [method, str(size), f"{limit.sketches_per_s:.1f}", f"{limit.ms_per_batch:.2f}"]
            for (method, size), limit in sorted(limits.items())
        ],
    )
    goal_table = Table(
        ["ratio", "measured", "goal", "met"],
        [[g.name, f"{g.measured:.2f}", g.rule or "-", g.verdict] for g in goal_list],
    )
    return {"cells": cells, "limits": limit_table, "goals": goal_table}


def unsteady_note(config: BenchConfig) -> str:
    return (
        f"\\* not in steady state: the first round of calls had not come back {config.max_round_s} s after "
        "the warm-up; the window measured the calls that finished first, so latencies are too low."
    )


def report(config: BenchConfig, conditions: list[str], rows: list[Row], parts: dict[str, Table]) -> str:
    lines = [*conditions, "", parts["cells"].markdown()]
    if not all(r.result.steady for r in rows):
        lines += ["", unsteady_note(config)]
    lines += ["", "In-process limit (the artifact, no gRPC):", "", parts["limits"].markdown()]
    lines += ["", "Goals (issue 13):", "", parts["goals"].markdown()]
    return "\n".join(lines) + "\n"


def device_name(device: str) -> str:
    """The device as the report names it: the GPU's model for CUDA devices."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = resolve_model(config, Path(scratch))
        manifest = read_manifest(model_dir)
        model_max = manifest.max_seq_len
        config = replace(config, max_points=min(config.max_points, model_max))
        drawings = load_drawings(model_max)
        log.info("%s", drawings.source)
        pool = tuple(sketch_to_pb(s).SerializeToString() for s in drawings.sketches)
        result = new_result("serving", sys.argv[1:] if argv is None else argv)
        rows = served(config, model_dir, pool)
        log.info("measuring the artifact in-process")
        limits = in_process(config, model_dir, drawings.canonical, rows)
        finish(result)
        machine = result.machine
        setting = (
            f"model {manifest.name} {manifest.version} ({model_dir.name}); {drawings.source}; "
            f"device {device_name(config.device)}; torch threads {config.torch_threads}; server at its defaults "
            f"otherwise; Reconstruct max_points {config.max_points}; warm-up {config.warmup_s} s, window at least "
            f"{config.duration_s} s per cell (two of the slowest calls, up to {config.max_round_s} s)."
        )
        conditions = [
            f"Run {result.date} on {machine['machine']} with {machine['cpus']} CPUs, load average "
            f"{machine['load_before']} before / {machine['load_after']} after; {setting}"
        ]
        result.tables = tables(rows, limits, goals(config, rows, limits))
        result.notes = [setting] + ([unsteady_note(config)] if not all(r.result.steady for r in rows) else [])
        text = report(config, conditions, rows, result.tables)
    sys.stdout.write(text)
    if config.out is not None:
        config.out.write_text(text, encoding="utf-8")
    if config.json is not None:
        result.write(config.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
