"""The one artifact runtime: a verified artifact on a device that encodes, decodes and scores in batches.

The server's engine and every training tool (cluster, gallery, sample, train
--from-cluster) compute through ``SketchRuntime``; ``sketchserve.artifact`` holds
the file-level rules and the loader. Inputs are CPU tensors (pinned and copied
with ``non_blocking`` when the device is CUDA); outputs come back as CPU tensors
or numpy arrays; everything runs under ``torch.inference_mode``. Decoding noise
is made per sketch from its own seeded CPU ``torch.Generator`` (``sketch_noise``),
so a sketch's output depends on its seed and never on its batch or the device.

At load the modules are checked against the manifest with one tiny encode and
decode: the latent size, the scale factor and the decoder condition (a
length-conditioned decoder has a ``typical_length`` buffer) must match, so a
mismatched artifact fails at load, not at every request.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sketchserve.artifact import DECODER_FILE, ENCODER_FILE, ArtifactError, LoadedArtifact, Manifest, load_artifact
from sketchserve.clusters import ClusterTable
from sketchserve.progress import Progress
from sketchserve.strokes import fit_stroke3_many, pad_stroke5, stroke5_to_stroke3

# Decoder.sample's noise holds 4 draws a step: component (uniform), 2 standard normals, pen (uniform).
NOISE_CHANNELS = 4
# 256 sketches a batch: one encoder call's padding and memory stay small on a CPU.
DEFAULT_BATCH_SIZE = 256
# Greedy decoding: most likely mixture component, its mean, most likely pen state.
GREEDY_TEMPERATURE = 0.0
# Warm-up runs each TorchScript method this often: the profiling executor optimizes on the 2nd/3rd call.
WARMUP_ROUNDS = 3
# Warm-up decodes this many steps: enough to exercise the loop, cheap on a CPU.
WARMUP_DECODE_STEPS = 8
# Warm-up sketch: a short zig-zag of this many stroke-5 points.
WARMUP_POINTS = 16
# The load-time check decodes this many steps: enough to run the decoder's loop once past its start.
CHECK_DECODE_STEPS = 2
# The modules' scale buffer is float32; the manifest records it as a float64.
SCALE_RTOL = 1e-6


class Posterior(NamedTuple):
    mu: Tensor
    sigma: Tensor


class Stroke5Batch(NamedTuple):
    x: Tensor
    lengths: Tensor


class Samples(NamedTuple):
    strokes5: Tensor
    lengths: Tensor


def sketch_seed(request_seed: int, index: int) -> int:
    """The noise seed of sketch ``index`` of a seeded request: a SeedSequence mix of both, 64 bits."""
    words = np.random.SeedSequence([request_seed, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32) | int(words[1])


def sketch_noise(seed: int, steps: int) -> Tensor:
    """``[steps, NOISE_CHANNELS]`` decoding noise of one sketch (a CPU tensor), a pure function of seed and steps.

    The one definition that the server (Reconstruct) and ``sketchserve sample`` share,
    so a seed draws the same sketch in both. Draw order (fixed, part of the
    reproducibility promise): ``steps x 2`` uniforms (component, pen), then
    ``steps x 2`` standard normals, from one CPU ``torch.Generator``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    uniform = torch.rand(steps, 2, generator=gen)
    normal = torch.randn(steps, 2, generator=gen)
    return torch.cat([uniform[:, :1], normal, uniform[:, 1:]], dim=1)


def collate_stroke3(sketches: Sequence[np.ndarray]) -> Stroke5Batch:
    """Stroke-3 sketches -> stroke-5 ``[B, T, 5]`` padded to the longest, and their lengths."""
    padded = pad_stroke5(sketches)
    return Stroke5Batch(torch.from_numpy(padded.x), torch.from_numpy(padded.lengths))


def warmup_batch(batch: int) -> Stroke5Batch:
    """A zig-zag stroke-5 batch of ``batch`` identical sketches."""
    x = torch.zeros(batch, WARMUP_POINTS, 5)
    x[:, :, 0] = 4.0
    x[:, :, 1] = torch.tensor([(-1.0) ** i * 4.0 for i in range(WARMUP_POINTS)])
    x[:, :, 2] = 1.0
    x[:, -1, 2], x[:, -1, 3] = 0.0, 1.0
    return Stroke5Batch(x, torch.full((batch,), WARMUP_POINTS, dtype=torch.int64))


def resolve_device(name: str | torch.device) -> torch.device:
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


class SketchRuntime:
    """Encoder and decoder of one verified artifact on one device (``SketchRuntime.load``)."""

    def __init__(self, artifact: LoadedArtifact, device: torch.device) -> None:
        self.directory = artifact.directory
        self.encoder = artifact.encoder
        self.decoder = artifact.decoder
        self.manifest: Manifest = artifact.manifest
        self.clusters: ClusterTable | None = artifact.clusters
        self.device = device
        self.pin = device.type == "cuda"

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        device: str | torch.device = "cpu",
        *,
        trusted_key: Path | None = None,
        with_clusters: bool = True,
    ) -> SketchRuntime:
        """Verify and load the artifact on ``device`` (``auto``: CUDA when present), then check the
        modules against the manifest (``ArtifactError``, one line, on a mismatch)."""
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        artifact = load_artifact(Path(model_dir), resolved, trusted_key=trusted_key, with_clusters=with_clusters)
        runtime = cls(artifact, resolved)
        runtime.check_modules()
        return runtime

    def _in(self, t: Tensor) -> Tensor:
        if self.pin:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def check_modules(self) -> None:
        """One tiny encode and decode: the modules must fit the manifest's latent size, scale and condition."""
        m, where = self.manifest, self.directory
        has_length = hasattr(self.decoder, "typical_length")
        if has_length != m.length_conditioned:
            kind = "is" if has_length else "is not"
            raise ArtifactError(
                f"{where / DECODER_FILE}: the decoder {kind} length-conditioned but the manifest's "
                f"hparams.decoder_condition is {m.decoder_condition!r}"
            )
        for name, module in ((ENCODER_FILE, self.encoder), (DECODER_FILE, self.decoder)):
            scale = float(module.scale) if hasattr(module, "scale") else m.scale_factor
            if not math.isclose(scale, m.scale_factor, rel_tol=SCALE_RTOL):
                raise ArtifactError(
                    f"{where / name}: scale {scale} but the manifest's scale_factor is {m.scale_factor}"
                )
        x, lengths = warmup_batch(1)
        try:
            mu = self.encode(x, lengths).mu
        except RuntimeError as err:
            raise ArtifactError(f"{where / ENCODER_FILE}: cannot encode a sketch ({_first_line(err)})") from err
        if tuple(mu.shape) != (1, m.latent_size):
            raise ArtifactError(
                f"{where / ENCODER_FILE}: codes of shape {tuple(mu.shape)}, "
                f"the manifest's latent_size is {m.latent_size}"
            )
        try:
            z = torch.zeros(1, m.latent_size)
            self.sample(z, torch.zeros(1, CHECK_DECODE_STEPS, NOISE_CHANNELS), GREEDY_TEMPERATURE, torch.ones(1))
        except RuntimeError as err:
            raise ArtifactError(
                f"{where / DECODER_FILE}: cannot decode latent_size {m.latent_size} codes ({_first_line(err)})"
            ) from err

    def encode(self, x: Tensor, lengths: Tensor) -> Posterior:
        """Stroke-5 ``[B,T,5]`` (no start token) and lengths ``[B]`` -> ``mu``, ``sigma`` ``[B,Nz]``."""
        with torch.inference_mode():
            mu, sigma = self.encoder(self._in(x), self._in(lengths))
            return Posterior(mu.float().cpu(), sigma.float().cpu())

    def encode_stroke3(
        self,
        sketches: Sequence[np.ndarray],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = True,
        label: str = "encode",
    ) -> np.ndarray:
        """``mu`` of every stroke-3 sketch (canonical units), ``(n, latent_size)`` float32, input order.

        Batched by length (less padding); a result never depends on its batch (the encoder packs). A sketch
        longer than the model's ``max_seq_len`` is fitted to it first, as the server does
        (``strokes.fit_stroke3_many``), so user files are never dropped or over-long."""
        sketches = [f.stroke3 for f in fit_stroke3_many(sketches, self.manifest.max_seq_len)]
        codes = np.zeros((len(sketches), self.manifest.latent_size), dtype=np.float32)
        order = np.argsort([len(s) for s in sketches], kind="stable")
        stream = None if progress else io.StringIO()
        with Progress(total=len(sketches), desc=label, stream=stream) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate_stroke3([sketches[i] for i in idx])
                codes[idx] = self.encode(batch.x, batch.lengths).mu.numpy()
                bar.update(len(idx))
        return codes

    def sample(self, z: Tensor, noise: Tensor, temperature: float, targets: Tensor | None = None) -> Samples:
        """Latents ``[B,Nz]`` and noise ``[B,L,4]`` -> stroke-5 ``[B,L,5]`` and lengths ``[B]``.

        ``targets [B]`` int64: the point count each sketch should have, used by a
        length-conditioned decoder and ignored by the others; entries <= 0, or
        ``targets=None``, ask for the decoder's ``typical_length`` (its training median)."""
        with torch.inference_mode():
            z_in, noise_in = self._in(z), self._in(noise)
            if targets is None or not self.manifest.length_conditioned:
                strokes5, lengths = self.decoder.sample(z_in, noise_in, float(temperature))
            else:
                goal = torch.as_tensor(targets, dtype=torch.long)
                if bool((goal <= 0).any()):
                    goal = torch.where(goal > 0, goal, torch.full_like(goal, int(self.decoder.typical_length)))
                strokes5, lengths = self.decoder.sample(z_in, noise_in, float(temperature), goal.to(self.device))
            return Samples(strokes5.float().cpu(), lengths.cpu())

    def decode(
        self,
        z: np.ndarray | Tensor,
        temperature: float = GREEDY_TEMPERATURE,
        *,
        seeds: Sequence[int] | None = None,
        max_points: Sequence[int] | None = None,
        targets: Sequence[int] | np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Each latent code ``[n, Nz]`` decoded into a stroke-3 drawing (canonical units).

        ``seeds[i]``: sketch ``i``'s noise seed (``sketch_noise``); ``None``: zero noise (use with
        temperature 0, greedy). ``max_points[i]``: at most this many points (default ``max_seq_len``).
        ``targets[i]``: the point count a length-conditioned decoder draws (0: its typical length)."""
        codes = torch.as_tensor(np.asarray(z, dtype=np.float32))
        n = codes.shape[0]
        limits = [self.manifest.max_seq_len] * n if max_points is None else [int(p) for p in max_points]
        noise = torch.zeros(n, max(limits, default=0), NOISE_CHANNELS)
        if seeds is not None:
            for i, (seed, limit) in enumerate(zip(seeds, limits, strict=True)):
                noise[i, :limit] = sketch_noise(seed, limit)
        goal = None if targets is None else torch.as_tensor(np.asarray(targets, dtype=np.int64))
        samples = self.sample(codes, noise, temperature, goal)
        strokes5 = samples.strokes5.numpy()
        lengths = samples.lengths.tolist()
        return [stroke5_to_stroke3(strokes5[i, : min(int(lengths[i]), limits[i])]) for i in range(n)]

    def nll(self, z: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
        """Per-sketch mean NLL per step of stroke-5 ``x`` given latent ``z``."""
        with torch.inference_mode():
            return self.decoder.nll(self._in(z), self._in(x), self._in(lengths)).float().cpu()

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run every method a few times at the given batch sizes so the first real call is not slow."""
        for b in batch_sizes:
            x, lengths = warmup_batch(b)
            z = torch.zeros(b, self.manifest.latent_size)
            noise = torch.full((b, WARMUP_DECODE_STEPS, NOISE_CHANNELS), 0.5)
            for _ in range(WARMUP_ROUNDS):
                self.encode(x, lengths)
                self.nll(z, x, lengths)
                self.sample(z, noise, 1.0)
                self.sample(z, noise, 0.0)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
