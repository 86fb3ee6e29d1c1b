"""Self-describing checkpoints (nanoGPT style): model and train config, weights, optimizer, step, RNG, data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "ckpt.pt"
BEST = "best.pt"
REQUIRED = ("model_config", "train_config", "model", "step", "scale_factor")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be used (one line)."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (was the run started with this --out?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a sketchserve checkpoint (missing {', '.join(missing)})")
    return payload
