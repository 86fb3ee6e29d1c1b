"""``sketchserve sample``: new drawings from an artifact, from the prior or around given sketches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from sketchserve.data import iter_drawings
from sketchserve.render import render_png
from sketchserve.runtime import SketchRuntime, sketch_seed
from sketchserve.strokes import fit_stroke3_many, stroke3_to_drawing
from sketchserve.training.config import ConfigError

logger = logging.getLogger(__name__)

COORD_DECIMALS = 2  # ndjson coordinates: canonical units to 1/100
GRID_COLUMNS = 8  # prior samples per PNG row


def decode(
    runtime: SketchRuntime, z: np.ndarray, temperature: float, seed: int, targets: np.ndarray | None = None
) -> list[np.ndarray]:
    """Stroke-3 drawings decoded from latent codes ``z [n, Nz]`` at ``temperature``, sketch ``i``
    with the noise of ``sketch_seed(seed, i)`` (as the server's Reconstruct).

    ``targets [n]``: point counts for a length-conditioned decoder."""
    return runtime.decode(z, temperature, seeds=[sketch_seed(seed, i) for i in range(len(z))], targets=targets)


def latent_codes(runtime: SketchRuntime, n: int, around: list[np.ndarray], seed: int) -> np.ndarray:
    """``n`` draws from the standard normal prior, or each ``around`` sketch's ``mu`` ``n`` times (the
    decoder's noise at the chosen temperature then varies them: Ha & Eck's conditional sampling)."""
    size = runtime.manifest.latent_size
    if not around:
        rng = np.random.default_rng([seed, size])
        return rng.standard_normal((n, size)).astype(np.float32)
    return np.repeat(runtime.encode_stroke3(around, progress=False), n, axis=0)


def _ndjson_line(s3: np.ndarray, word: str, source: str, temperature: float) -> str:
    strokes = [np.round(points, COORD_DECIMALS).T.tolist() for points in stroke3_to_drawing(s3)] if len(s3) else []
    return json.dumps({"word": word, "source": source, "temperature": temperature, "drawing": strokes})


def sample_command(
    model_dir: Path, n: int, temperature: float, around: Path | None, limit: int, seed: int, out: Path
) -> list[Path]:
    """Write ``OUT.ndjson`` and ``OUT.png``; returns their paths."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    runtime = SketchRuntime.load(model_dir, "cpu")
    max_len = runtime.manifest.max_seq_len
    word = runtime.manifest.name
    sources = ["prior"] * n
    sketches: list[np.ndarray] = []
    if around is not None:
        records = [r for r in iter_drawings([around]) if len(r.stroke3) > 0][:limit]
        if not records:
            raise ConfigError(f"{around}: no drawing to sample around")
        sketches = [f.stroke3 for f in fit_stroke3_many([r.stroke3 for r in records], max_len)]
        sources = [r.source for r in records for _ in range(n)]
        word = records[0].word
    targets = np.repeat([len(s) for s in sketches], n) if sketches else None
    drawings = decode(runtime, latent_codes(runtime, n, sketches, seed), temperature, seed, targets)
    out.parent.mkdir(parents=True, exist_ok=True)
    ndjson = out.with_suffix(".ndjson")
    ndjson.write_text("".join(_ndjson_line(d, word, s, temperature) + "\n" for d, s in zip(drawings, sources)))
    if sketches:
        grid = [d for i, original in enumerate(sketches) for d in [original, *drawings[i * n : (i + 1) * n]]]
        png = render_png(grid, out.with_suffix(".png"), columns=n + 1)
    else:
        png = render_png(drawings, out.with_suffix(".png"), columns=min(n, GRID_COLUMNS))
    return [ndjson, png]
