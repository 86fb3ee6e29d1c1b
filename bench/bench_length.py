"""Does a length-conditioned decoder draw the point count it is told?

    .venv/bin/python bench/bench_length.py --model DIR [DIR ...] [--split test] [--every 4]

For each artifact trained with ``--decoder-condition latent+length``: the
``--split`` drawings of the four clustering categories (every ``--every``-th)
are encoded, and their ``mu`` decoded greedily twice: once told each drawing's
own point count (what Reconstruct does), once at the decoder's typical length
(what decoding a bare latent does). Prints a markdown table: how often the
drawing has exactly the target's point count, how often within
``NEAR_POINTS``, and the median gap, for both. `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from bench_clustering import CATEGORIES, DEFAULT_DATA_DIR

# A drawing this many points off its target still counts as near.
NEAR_POINTS = 2

log = logging.getLogger("bench_length")


@dataclass(frozen=True)
class Adherence:
    model: str
    drawings: int
    typical_length: int
    exact: float  # share of drawings with exactly their own point count
    near: float  # share within NEAR_POINTS of it
    median_gap: float  # median |drawn - own| points
    typical_median_gap: float  # the same, decoded at the typical length instead


def adherence(model_dir: Path, sketches: list[np.ndarray]) -> Adherence:
    from sketchserve.runtime import SketchRuntime

    runtime = SketchRuntime.load(model_dir, "cpu", with_clusters=False)
    if not runtime.manifest.length_conditioned:
        raise SystemExit(f"{model_dir}: not a length-conditioned model (hparams.decoder_condition)")
    codes = runtime.encode_stroke3(sketches, progress=False)
    own = np.array([len(s) for s in sketches])
    told = np.array([len(d) for d in runtime.decode(codes, targets=own.tolist())])
    free = np.array([len(d) for d in runtime.decode(codes)])
    return Adherence(
        model=model_dir.name,
        drawings=len(sketches),
        typical_length=int(runtime.decoder.typical_length),
        exact=float(np.mean(told == own)),
        near=float(np.mean(np.abs(told - own) <= NEAR_POINTS)),
        median_gap=float(np.median(np.abs(told - own))),
        typical_median_gap=float(np.median(np.abs(free - own))),
    )


def table(rows: list[Adherence]) -> str:
    lines = [
        f"| model | drawings | exact point count | within {NEAR_POINTS} points | median gap "
        "| median gap at the typical length |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.drawings} | {r.exact:.3f} | {r.near:.3f} | {r.median_gap:.0f} "
            f"| {r.typical_median_gap:.0f} (typical {r.typical_length}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="length-conditioned artifact directories")
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with the four sketch-rnn .npz files"
    )
    parser.add_argument("--split", default="test", help="which split's drawings")
    parser.add_argument("--every", type=int, default=1, help="take every N-th drawing (a quicker run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from sketchserve.data import iter_drawings

    torch.set_num_threads(args.threads)
    paths = [str(args.data_dir / f"{c}.npz") for c in CATEGORIES]
    sketches = [r.stroke3 for r in iter_drawings(paths, split=args.split)][:: max(1, args.every)]
    log.info("%d %s drawings (%s)", len(sketches), args.split, ", ".join(CATEGORIES))
    rows = []
    for model_dir in args.model:
        rows.append(adherence(model_dir, sketches))
        log.info("%s: exact %.3f", model_dir, rows[-1].exact)
    sys.stdout.write(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
