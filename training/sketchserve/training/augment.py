"""Training-time augmentation of stroke-3 drawings (Ha & Eck 2017; magenta ``sketch_rnn/utils.py``).

Training only: the server and the client never augment, so this lives in the training layer,
not in the shared stroke format (``sketchserve.strokes``).
"""

from __future__ import annotations

import numpy as np

from sketchserve.strokes import PEN_LIFTED_THRESHOLD, check_stroke3


def augment_stroke3(
    s3: np.ndarray, rng: np.random.Generator, scale_factor: float = 0.15, drop_prob: float = 0.1
) -> np.ndarray:
    """Sketch-RNN training augmentation: independent x/y scaling by ``1 +- scale_factor``
    and, with probability ``drop_prob``, dropping a pen-down point inside a stroke
    (from its third point on, never a stroke's last two), its offset merged into
    the next row, as magenta's ``augment_strokes`` does."""
    array = check_stroke3(s3).astype(np.float64)
    scales = 1.0 + (rng.random(2) - 0.5) * 2.0 * scale_factor
    lifted = array[:, 2] > PEN_LIFTED_THRESHOLD
    row = np.arange(len(array))
    stroke_start = np.maximum.accumulate(np.where(np.concatenate(([True], lifted[:-1])), row, 0))
    next_down = np.concatenate((~lifted[1:], [False]))
    droppable = ~lifted & next_down & (row - stroke_start >= 2)
    drop = droppable & (rng.random(len(array)) < drop_prob)
    positions = np.cumsum(array[:, :2], axis=0)[~drop]
    result = np.empty((len(positions), 3), dtype=np.float32)
    result[:, :2] = np.diff(positions, axis=0, prepend=np.zeros((1, 2))) * scales
    result[:, 2] = array[~drop, 2]
    return result
