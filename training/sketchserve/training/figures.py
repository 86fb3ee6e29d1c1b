"""Pictures of a model's latent space for its model card: test sketches beside their
reconstructions, and interpolations between two sketches.

    python -m sketchserve.training.figures MODEL_DIR --data FILE [--split test] --out-dir docs --prefix face
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sketchserve.data import iter_drawings
from sketchserve.render import render_png
from sketchserve.runtime import SketchRuntime
from sketchserve.training.sampling import decode

RECONSTRUCTIONS = 10  # test sketches shown, one column each (original above, reconstruction below)
INTERPOLATION_STEPS = 8  # decoded points between (and including) the two endpoints
FIGURE_TEMPERATURE = 0.1  # the paper's figures decode at low temperature: close to the mean, not degenerate
FIGURE_SEED = 0


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation, as magenta's sketch-rnn notebook does between latent codes."""
    cos = float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-6:
        return (1.0 - t) * a + t * b
    return (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def make_figures(
    model_dir: Path, data: Path, split: str, out_dir: Path, prefix: str, pair: tuple[int, int]
) -> list[Path]:
    runtime = SketchRuntime.load(model_dir)
    max_len = runtime.manifest.max_seq_len
    sketches = [r.stroke3 for r in iter_drawings([data], split=split) if 0 < len(r.stroke3) <= max_len]
    originals = sketches[:RECONSTRUCTIONS]
    codes = runtime.encode_stroke3(originals, progress=False)
    recons = decode(runtime, codes, FIGURE_TEMPERATURE, FIGURE_SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    recon_png = render_png(originals + recons, out_dir / f"{prefix}_reconstructions.png", columns=len(originals))
    ends = runtime.encode_stroke3([sketches[pair[0]], sketches[pair[1]]], progress=False)
    path = np.stack([slerp(ends[0], ends[1], t) for t in np.linspace(0.0, 1.0, INTERPOLATION_STEPS)])
    middle = decode(runtime, path, FIGURE_TEMPERATURE, FIGURE_SEED)
    row = [sketches[pair[0]], *middle, sketches[pair[1]]]
    interp_png = render_png(row, out_dir / f"{prefix}_interpolation.png", columns=len(row))
    return [recon_png, interp_png]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sketchserve.training.figures", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    parser.add_argument("--prefix", default="face")
    parser.add_argument("--pair", type=int, nargs=2, default=(0, 1), help="indices of the two sketches to interpolate")
    args = parser.parse_args(argv)
    for path in make_figures(args.model_dir, args.data, args.split, args.out_dir, args.prefix, tuple(args.pair)):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
