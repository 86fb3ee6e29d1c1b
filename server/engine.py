"""The serving engine: numpy sketches and latents in, numpy results out, through the batchers.

Two batchers share the model: one for encoding, one for decoding. The decode
batcher runs two kinds of work, each its own batch group: sampling at one
temperature (``("sample", temperature)``: the decoder takes one temperature per
call) and teacher-forced likelihood (``("nll",)``) for scoring. The batch
functions here run on the batchers' worker threads.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sketchserve.server.batching import Batcher, BatchItem, BatchObserver
from sketchserve.server.config import ServerConfig
from sketchserve.server.model import (
    NOISE_CHANNELS,
    SketchModel,
    Stroke5Batch,
    kl_divergence,
    sketch_noise,
    sketch_seed,
)
from sketchserve.strokes import stroke3_to_stroke5, stroke5_to_stroke3

ENCODE = "encode"
DECODE = "decode"
GROUP_NLL = ("nll",)
SAMPLE = "sample"


@dataclass(frozen=True)
class Embedding:
    mu: np.ndarray
    sigma: np.ndarray


@dataclass(frozen=True)
class SketchScore:
    reconstruction_nll: float
    kl: float


@dataclass(frozen=True)
class _SampleJob:
    z: np.ndarray
    seed: int
    max_points: int


@dataclass(frozen=True)
class _NllJob:
    z: np.ndarray
    stroke3: np.ndarray


def collate_stroke3(sketches: Sequence[np.ndarray]) -> Stroke5Batch:
    """Stroke-3 sketches -> stroke-5 ``[B, T, 5]`` padded to the longest, and their lengths."""
    lengths = [len(s) for s in sketches]
    padded = np.stack([stroke3_to_stroke5(s, max(lengths)) for s in sketches])
    return Stroke5Batch(torch.from_numpy(padded), torch.tensor(lengths, dtype=torch.int64))


class SketchEngine:
    """Owns the model and its two batchers; safe to call from one asyncio event loop."""

    def __init__(self, model: SketchModel, cfg: ServerConfig, observer: BatchObserver | None = None) -> None:
        self.model = model
        self.spec = model.spec
        delay_s = cfg.max_delay_ms / 1000.0
        self.encoder = Batcher(
            ENCODE, self._encode_batch, max_batch_size=cfg.max_batch_size, max_delay_s=delay_s,
            max_queue=cfg.max_queue, observer=observer,
        )
        self.decoder = Batcher(
            DECODE, self._decode_batch, max_batch_size=cfg.max_batch_size, max_delay_s=delay_s,
            max_queue=cfg.max_queue, observer=observer,
        )

    def start(self) -> None:
        self.encoder.start()
        self.decoder.start()

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()

    def join(self, timeout: float | None = None) -> bool:
        return all([self.encoder.join(timeout), self.decoder.join(timeout)])

    async def encode(self, sketches: Sequence[np.ndarray], timeout: float | None = None) -> list[Embedding]:
        """Posterior of each canonical stroke-3 sketch, in order."""
        items = [BatchItem(s, cost=len(s)) for s in sketches]
        return await self.encoder.submit(items, timeout=timeout)

    async def sample(
        self, latents: np.ndarray, *, temperature: float, max_points: int, seed: int, timeout: float | None = None
    ) -> list[np.ndarray]:
        """Decode each latent ``[n, Nz]`` into a stroke-3 of at most ``max_points`` rows.

        Sketch ``i`` draws its noise from ``sketch_seed(seed, i)``: the output depends on
        the seed, the latent, the temperature and ``max_points``, never on other requests.
        """
        group = (SAMPLE, float(temperature))
        items = [
            BatchItem(_SampleJob(np.asarray(z, dtype=np.float32), sketch_seed(seed, i), max_points), max_points, group)
            for i, z in enumerate(latents)
        ]
        return await self.decoder.submit(items, timeout=timeout)

    async def score(self, sketches: Sequence[np.ndarray], timeout: float | None = None) -> list[SketchScore]:
        """Reconstruction NLL given the sketch's own ``mu``, and the posterior's KL from the prior."""
        embeddings = await self.encode(sketches, timeout)
        items = [BatchItem(_NllJob(e.mu, s), len(s), GROUP_NLL) for e, s in zip(embeddings, sketches)]
        nlls = await self.decoder.submit(items, timeout=timeout)
        mu = torch.from_numpy(np.stack([e.mu for e in embeddings]))
        sigma = torch.from_numpy(np.stack([e.sigma for e in embeddings]))
        kls = kl_divergence(mu, sigma).tolist()
        return [SketchScore(float(n), float(k)) for n, k in zip(nlls, kls)]

    def _encode_batch(self, _group: Hashable, sketches: list[np.ndarray]) -> list[Embedding]:
        batch = collate_stroke3(sketches)
        posterior = self.model.encode(batch.x, batch.lengths)
        mu, sigma = posterior.mu.numpy(), posterior.sigma.numpy()
        return [Embedding(mu[i].copy(), sigma[i].copy()) for i in range(len(sketches))]

    def _decode_batch(self, group: Hashable, jobs: list) -> list:
        if group == GROUP_NLL:
            return self._nll_batch(jobs)
        return self._sample_batch(float(group[1]), jobs)

    def _nll_batch(self, jobs: list[_NllJob]) -> list[float]:
        batch = collate_stroke3([j.stroke3 for j in jobs])
        z = torch.from_numpy(np.stack([j.z for j in jobs]))
        return self.model.nll(z, batch.x, batch.lengths).tolist()

    def _sample_batch(self, temperature: float, jobs: list[_SampleJob]) -> list[np.ndarray]:
        steps = max(j.max_points for j in jobs)
        noise = torch.zeros(len(jobs), steps, NOISE_CHANNELS)
        for i, job in enumerate(jobs):
            noise[i, : job.max_points] = sketch_noise(job.seed, job.max_points)
        z = torch.from_numpy(np.stack([j.z for j in jobs]))
        samples = self.model.sample(z, noise, temperature)
        strokes5 = samples.strokes5.numpy()
        lengths = samples.lengths.tolist()
        return [
            stroke5_to_stroke3(strokes5[i, : min(int(lengths[i]), job.max_points)]) for i, job in enumerate(jobs)
        ]
