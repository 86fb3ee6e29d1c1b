"""The served model: the artifact's TorchScript modules on a device, tensors in and out.

No gRPC here. Inputs are CPU tensors (pinned when the device is CUDA, copied
with ``non_blocking``); outputs come back as CPU tensors. Everything runs under
``torch.inference_mode``. Decoding noise is made per sketch from its own seeded
``torch.Generator`` on the CPU (``sketchserve.artifact.sketch_noise``, shared with
``sketchserve sample``), so a sketch's output depends on its seed and never on
the batch it rides in or the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sketchserve.artifact import NOISE_CHANNELS, load_artifact, sample_decoder

log = logging.getLogger(__name__)

# Warm-up runs each TorchScript method this often: the profiling executor optimizes on the 2nd/3rd call.
WARMUP_ROUNDS = 3
# Warm-up decodes this many steps: enough to exercise the loop, cheap on a CPU.
WARMUP_DECODE_STEPS = 8
# Warm-up sketch: a short zig-zag of this many stroke-5 points.
WARMUP_POINTS = 16


class Posterior(NamedTuple):
    mu: Tensor
    sigma: Tensor


class Stroke5Batch(NamedTuple):
    x: Tensor
    lengths: Tensor


class Samples(NamedTuple):
    strokes5: Tensor
    lengths: Tensor


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to know about the model, from the manifest."""

    name: str
    version: str
    latent_size: int
    max_seq_len: int
    device: str


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the first CUDA device when present; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return device


def kl_divergence(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sketch, summed over latent dimensions (nats)."""
    var = sigma.double() ** 2
    mu2 = mu.double() ** 2
    return (0.5 * (var + mu2 - 1.0 - torch.log(var))).sum(dim=-1).float()


class SketchModel:
    """Encoder and decoder of one artifact on one device."""

    def __init__(self, artifact: Any, device: torch.device) -> None:
        self.encoder = artifact.encoder
        self.decoder = artifact.decoder
        self.manifest: dict = artifact.manifest
        self.clusters: dict | None = artifact.clusters
        self.device = device
        self.pin = device.type == "cuda"
        self.spec = ModelSpec(
            name=str(self.manifest.get("name", "")),
            version=str(self.manifest.get("version", "")),
            latent_size=int(self.manifest["latent_size"]),
            max_seq_len=int(self.manifest["max_seq_len"]),
            device=str(device),
        )

    def _in(self, t: Tensor) -> Tensor:
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def encode(self, x: Tensor, lengths: Tensor) -> Posterior:
        """Stroke-5 ``[B,T,5]`` (no start token) and lengths ``[B]`` -> ``mu``, ``sigma`` ``[B,Nz]``."""
        with torch.inference_mode():
            mu, sigma = self.encoder(self._in(x), self._in(lengths))
            return Posterior(mu.float().cpu(), sigma.float().cpu())

    def sample(self, z: Tensor, noise: Tensor, temperature: float, targets: Tensor | None = None) -> Samples:
        """Latents ``[B,Nz]`` and noise ``[B,L,4]`` -> stroke-5 ``[B,L,5]`` and lengths ``[B]``.

        ``targets [B]``: point counts for a length-conditioned decoder (``artifact.sample_decoder``)."""
        with torch.inference_mode():
            strokes5, lengths = sample_decoder(
                self.decoder, self.manifest, self._in(z), self._in(noise), temperature, targets
            )
            return Samples(strokes5.float().cpu(), lengths.cpu())

    def nll(self, z: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
        """Per-sketch mean NLL per step of stroke-5 ``x`` given latent ``z``."""
        with torch.inference_mode():
            return self.decoder.nll(self._in(z), self._in(x), self._in(lengths)).float().cpu()

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run every method a few times at the given batch sizes so the first real call is not slow."""
        for b in batch_sizes:
            x, lengths = warmup_batch(b)
            z = torch.zeros(b, self.spec.latent_size)
            noise = torch.full((b, WARMUP_DECODE_STEPS, NOISE_CHANNELS), 0.5)
            for _ in range(WARMUP_ROUNDS):
                self.encode(x, lengths)
                self.nll(z, x, lengths)
                self.sample(z, noise, 1.0)
                self.sample(z, noise, 0.0)


def warmup_batch(batch: int) -> Stroke5Batch:
    """A zig-zag stroke-5 batch of ``batch`` identical sketches."""
    x = torch.zeros(batch, WARMUP_POINTS, 5)
    x[:, :, 0] = 4.0
    x[:, :, 1] = torch.tensor([(-1.0) ** i * 4.0 for i in range(WARMUP_POINTS)])
    x[:, :, 2] = 1.0
    x[:, -1, 2], x[:, -1, 3] = 0.0, 1.0
    return Stroke5Batch(x, torch.full((batch,), WARMUP_POINTS, dtype=torch.int64))


def load_model(model_dir: Path, device_name: str) -> SketchModel:
    """Verify checksums and load both modules on the device (``load_artifact`` turns TF32 off on CUDA)."""
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return SketchModel(load_artifact(Path(model_dir), device), device)
