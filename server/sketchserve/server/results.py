"""What the engine returns to the servicer, and raises (numpy only, so the servicer needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """A drawing's canonical stroke-3 and its posterior."""

    stroke3: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


class SketchTooLong(ValueError):
    """Drawing ``index`` of a request is longer than the model accepts after preprocessing."""

    def __init__(self, index: int, points: int, max_points: int) -> None:
        super().__init__(f"{points} points after simplification, the model accepts at most {max_points}")
        self.index = index


@dataclass(frozen=True)
class SketchScore:
    reconstruction_nll: float
    kl: float
