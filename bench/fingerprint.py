"""Fingerprint of an artifact's outputs: mu and sigma of 128 test faces, greedy and seeded decodes
of 32 codes, and the teacher-forced NLL, hashed (sha256 of the raw arrays).

    PYTHONPATH=.:client:server:training .venv/bin/python bench/fingerprint.py [MODEL_DIR] [FACES_NPZ] [--fixed-inputs]

``--fixed-inputs`` feeds the model the test faces' own stroke-3 rows divided by 8 and rounded instead of
their canonical form, so the fingerprint is the model's alone: it stays put when preprocessing changes
(``models/face``: ``ed733a685241f563``, as on the commit before the 2026-12-05 refactors, f4d0dc8).

Refactors of the runtime must leave the bundled model's fingerprint unchanged
(``model outputs sha 3405dc480260368f`` for models/face, one torch thread, CPU, with
issue 17's canonical preprocessing; preprocessing changes move it through the inputs).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from sketchserve.runtime import NOISE_CHANNELS, SketchRuntime, sketch_noise, sketch_seed
from sketchserve.strokes import pad_stroke5, preprocess_many, stroke3_to_drawing

FACES = 128  # test faces encoded
CODES = 32  # codes decoded, greedily and with seeded noise
SEED = 7  # request seed of the seeded decode
TEMPERATURE = 0.6  # temperature of the seeded decode
DIGITS = 16  # hex digits printed
FIXED_INPUT_DIVISOR = 8.0  # --fixed-inputs: the raw offsets shrunk to the canonical frame's rough scale


def fingerprint(model_dir: Path, faces_npz: Path, fixed_inputs: bool = False) -> tuple[str, str]:
    torch.set_num_threads(1)
    runtime = SketchRuntime.load(model_dir, "cpu")
    faces = np.load(faces_npz, encoding="latin1", allow_pickle=True)["test"][:FACES]
    if fixed_inputs:
        s3 = [(f.astype(np.float32) / FIXED_INPUT_DIVISOR).round() for f in faces]
    else:
        s3 = preprocess_many([stroke3_to_drawing(f.astype(np.float32)) for f in faces])
    x, lengths = (torch.from_numpy(a) for a in pad_stroke5(s3))
    mu, sigma = runtime.encode(x, lengths)
    steps = runtime.manifest.max_seq_len
    greedy = runtime.sample(mu[:CODES], torch.zeros(CODES, steps, NOISE_CHANNELS), 0.0)
    noise = torch.stack([sketch_noise(sketch_seed(SEED, i), steps) for i in range(CODES)])
    seeded = runtime.sample(mu[:CODES], noise, TEMPERATURE)
    nll = runtime.nll(mu, x, lengths)
    digest = hashlib.sha256()
    for t in (mu, sigma, *greedy, *seeded, nll):
        digest.update(t.contiguous().numpy().tobytes())
    inputs = hashlib.sha256(b"".join(a.tobytes() for a in s3)).hexdigest()
    return inputs[:DIGITS], digest.hexdigest()[:DIGITS]


def main(argv: list[str]) -> int:
    fixed = "--fixed-inputs" in argv
    paths = [a for a in argv if a != "--fixed-inputs"]
    model_dir = Path(paths[0]) if paths else Path("models/face")
    faces = Path(paths[1]) if len(paths) > 1 else Path("../shared/data/sketchrnn/face.npz")
    inputs, outputs = fingerprint(model_dir, faces, fixed)
    sys.stdout.write(f"preprocessed sha {inputs}\nmodel outputs sha {outputs}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
