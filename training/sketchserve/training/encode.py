"""Batched encoding and greedy decoding with a loaded artifact (TorchScript modules).

The one place the training-side tools (cluster, gallery, --from-cluster) turn
stroke-3 drawings into latent codes and latent codes back into drawings.
Drawings are batched by length (less padding); results are returned in input
order and never depend on the batch (the encoder packs its sequences).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sketchserve.artifact import NOISE_CHANNELS, sample_decoder
from sketchserve.progress import Progress
from sketchserve.strokes import pad_stroke5, stroke5_to_stroke3

# 256 sketches a batch: one encoder call's padding and memory stay small on a CPU.
DEFAULT_BATCH_SIZE = 256
# Greedy decoding: most likely mixture component, its mean, most likely pen state.
GREEDY_TEMPERATURE = 0.0


def _device(artifact: Any) -> torch.device:
    return next(iter(artifact.encoder.parameters())).device


def encode_stroke3(
    artifact: Any,
    sketches: Sequence[np.ndarray],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    label: str = "encode",
) -> np.ndarray:
    """`mu` of every stroke-3 sketch (canonical units), `(n, latent_size)` float32, input order."""
    latent = int(artifact.manifest["latent_size"])
    codes = np.zeros((len(sketches), latent), dtype=np.float32)
    order = np.argsort([len(s) for s in sketches], kind="stable")
    device = _device(artifact)
    stream = None if progress else io.StringIO()
    with torch.inference_mode(), Progress(total=len(sketches), desc=label, stream=stream) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, lengths = pad_stroke5([sketches[i] for i in idx])
            mu, _ = artifact.encoder(torch.from_numpy(x).to(device), torch.from_numpy(lengths).to(device))
            codes[idx] = mu.float().cpu().numpy()
            bar.update(len(idx))
    return codes


def decode_greedy(artifact: Any, codes: np.ndarray, targets: Sequence[int] | None = None) -> list[np.ndarray]:
    """Each latent code decoded at temperature 0 into a stroke-3 drawing (canonical units).

    ``targets``: point counts for a length-conditioned decoder (``sample_decoder``)."""
    steps = int(artifact.manifest["max_seq_len"])
    device = _device(artifact)
    z = torch.from_numpy(np.asarray(codes, dtype=np.float32)).to(device)
    noise = torch.zeros((z.shape[0], steps, NOISE_CHANNELS), dtype=torch.float32, device=device)
    with torch.inference_mode():
        strokes5, lengths = sample_decoder(artifact.decoder, artifact.manifest, z, noise, GREEDY_TEMPERATURE, targets)
    s5 = strokes5.cpu().numpy()
    return [stroke5_to_stroke3(s5[i, : int(n)]) for i, n in enumerate(lengths.cpu().tolist())]
