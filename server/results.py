"""What the engine returns to the servicer (numpy only, so the servicer needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """A drawing's canonical stroke-3 and its posterior."""

    stroke3: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


@dataclass(frozen=True)
class TooLong:
    """A drawing longer than the model's ``max_seq_len`` after preprocessing (not encoded)."""

    points: int


@dataclass(frozen=True)
class SketchScore:
    reconstruction_nll: float
    kl: float
