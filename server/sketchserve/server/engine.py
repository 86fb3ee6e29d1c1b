"""The serving engine: drawings and latents in, numpy results out, through the batchers.

Three batchers, each with its own worker thread: preprocessing, encoding and
decoding. Canonical preprocessing (``preprocess_many``) is batched too: one
call for 30 drawings costs a fraction of 30 calls, and on its own thread it
overlaps the model instead of queueing behind it. The decode batcher runs two
kinds of work, each its own batch group (a ``DecodeGroup``): sampling at one
temperature (the decoder takes one temperature per call) and teacher-forced
likelihood for scoring. The model itself is ``sketchserve.runtime.SketchRuntime``;
the batch functions here run on the batchers' worker threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from sketchserve.runtime import SketchRuntime, collate_stroke3, kl_divergence, sketch_seed
from sketchserve.server.admission import DECODE, ENCODE, PREPROCESS, Admission, Ticket
from sketchserve.server.batching import Batcher, BatchItem, BatchObserver
from sketchserve.server.config import TOO_LONG_SIMPLIFY, ServerConfig
from sketchserve.server.results import Encoded, SketchScore, SketchTooLong
from sketchserve.strokes import Drawing, Fitted, fit_stroke3_many, preprocess_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeGroup:
    """The decode batcher's batch group: teacher-forced likelihood, or sampling at one temperature."""

    kind: Literal["sample", "nll"]
    temperature: float = 0.0


GROUP_NLL = DecodeGroup("nll")


@dataclass(frozen=True)
class ModelSpec:
    """What the service needs to know about the model, from the manifest."""

    name: str
    version: str
    latent_size: int
    max_seq_len: int
    device: str


@runtime_checkable
class FurtherObserver(Protocol):
    """Counts sketches simplified further to fit the model (ServerMetrics)."""

    def on_simplified_further(self, count: int) -> None: ...


@dataclass(frozen=True)
class _AdmissionObserver:
    """Feeds each batch's cost to the admission rule, then passes every observation on (metrics)."""

    admission: Admission
    then: BatchObserver | None

    def on_batch(self, batcher: str, size: int, seconds: float, cpu_seconds: float) -> None:
        self.admission.observe(batcher, size, seconds)
        if self.then is not None:
            self.then.on_batch(batcher, size, seconds, cpu_seconds)

    def on_dropped(self, batcher: str, reason: str, count: int) -> None:
        if self.then is not None:
            self.then.on_dropped(batcher, reason, count)


@dataclass(frozen=True)
class _SampleJob:
    z: np.ndarray
    seed: int
    max_points: int
    target: int  # points to draw for a length-conditioned decoder; 0: its typical length


@dataclass(frozen=True)
class _NllJob:
    z: np.ndarray
    stroke3: np.ndarray


class SketchEngine:
    """Owns the model and its three batchers; safe to call from one asyncio event loop."""

    def __init__(self, model: SketchRuntime, cfg: ServerConfig, observer: BatchObserver | None = None) -> None:
        self.model = model
        manifest = model.manifest
        self.spec = ModelSpec(
            name=manifest.name,
            version=manifest.version,
            latent_size=manifest.latent_size,
            max_seq_len=manifest.max_seq_len,
            device=str(model.device),
        )
        self.simplify_too_long = cfg.too_long == TOO_LONG_SIMPLIFY
        self.simplified_further = observer.on_simplified_further if isinstance(observer, FurtherObserver) else None
        delay_s = cfg.max_delay_ms / 1000.0
        # One admission decision per call (server/admission.py); the batchers' own bound is the same
        # max_queue, which admitted work never exceeds, so no stage refuses work already paid for.
        self.admission = Admission((PREPROCESS, ENCODE, DECODE), cfg.max_queue)
        batch_observer = _AdmissionObserver(self.admission, observer)

        def batcher(name: str, run_batch: Callable[[Hashable, list[Any]], list[Any]]) -> Batcher:
            return Batcher(
                name,
                run_batch,
                max_batch_size=cfg.max_batch_size,
                max_delay_s=delay_s,
                max_queue=cfg.max_queue,
                observer=batch_observer,
            )

        self.preprocessor: Batcher[Drawing, Fitted] = batcher(PREPROCESS, self._preprocess_batch)
        self.encoder: Batcher[np.ndarray, Encoded] = batcher(ENCODE, self._encode_batch)
        self.decoder: Batcher[Any, Any] = batcher(DECODE, self._decode_batch)

    @property
    def batchers(self) -> tuple[Batcher, ...]:
        return (self.preprocessor, self.encoder, self.decoder)

    def start(self) -> None:
        for batcher in self.batchers:
            batcher.start()

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.close()

    @contextmanager
    def without_delay(self) -> Iterator[None]:
        """Batches start as soon as the worker is free (``--max-delay-ms`` 0) inside the block: the warm-up
        probe of an engine that serves no client yet waits for no company; the configured delays after."""
        delays = [batcher.max_delay_s for batcher in self.batchers]
        for batcher in self.batchers:
            batcher.set_max_delay(0.0)
        try:
            yield
        finally:
            for batcher, delay in zip(self.batchers, delays):
                batcher.set_max_delay(delay)

    def join(self, timeout: float | None = None) -> bool:
        return all([batcher.join(timeout) for batcher in self.batchers])

    def admit(self, sketches: int, stages: Sequence[str], timeout: float | None) -> Ticket:
        """Admit a call of ``sketches`` sketches through ``stages`` once, before any of its work, or raise
        ``admission.Overloaded`` (RESOURCE_EXHAUSTED). A call that spans several engine methods (Reconstruct
        from sketches, Score) is admitted for all of them here and hands the ticket to each."""
        return self.admission.admit(dict.fromkeys(stages, sketches), timeout)

    def _held(
        self, ticket: Ticket | None, sketches: int, stages: Sequence[str], timeout: float | None
    ) -> AbstractContextManager[Ticket]:
        """The caller's ticket (the caller releases it), or one admitted here for this method's stages alone."""
        return nullcontext(ticket) if ticket is not None else self.admit(sketches, stages, timeout)

    async def encode(
        self, drawings: Sequence[Drawing], timeout: float | None = None, ticket: Ticket | None = None
    ) -> list[Encoded]:
        """Each validated drawing preprocessed and encoded, in order.

        A drawing longer than the model's ``max_seq_len`` after preprocessing is simplified
        further to fit (``fit_stroke3_many``), or, with ``--too-long refuse``, raises
        SketchTooLong (naming the first such drawing) before any encoding. Without a ``ticket``
        the call is admitted here (``admit``).
        """
        with self._held(ticket, len(drawings), (PREPROCESS, ENCODE), timeout) as held:
            deadline = None if timeout is None else time.monotonic() + timeout
            items = [BatchItem(d, cost=sum(len(stroke) for stroke in d)) for d in drawings]
            fitted: list[Fitted] = await self.preprocessor.submit(items, timeout=timeout)
            held.finish(PREPROCESS)
            strokes3 = [f.stroke3 for f in fitted]
            for index, s3 in enumerate(strokes3):
                if len(s3) > self.spec.max_seq_len:
                    raise SketchTooLong(index, len(s3), self.spec.max_seq_len)
            further = sum(f.further for f in fitted)
            if further:
                limit = self.spec.max_seq_len
                log.debug("simplified %d of %d sketches further to fit max_seq_len=%d", further, len(fitted), limit)
                if self.simplified_further is not None:
                    self.simplified_further(further)
            remaining = None if deadline is None else deadline - time.monotonic()
            encoded = await self.encoder.submit([BatchItem(s3, cost=len(s3)) for s3 in strokes3], timeout=remaining)
            held.finish(ENCODE)
            return encoded

    async def sample(
        self,
        latents: np.ndarray,
        *,
        temperature: float,
        max_points: int,
        seed: int,
        targets: Sequence[int] | None = None,
        timeout: float | None = None,
        ticket: Ticket | None = None,
    ) -> list[np.ndarray]:
        """Decode each latent ``[n, Nz]`` into a stroke-3 of at most ``max_points`` rows.

        Sketch ``i`` draws its noise from ``sketch_seed(seed, i)``: the output depends on
        the seed, the latent, the temperature, ``max_points`` and its target, never on other
        requests. ``targets[i]``: the point count a length-conditioned decoder draws
        (Reconstruct passes the input sketch's); ``None`` or 0: the decoder's typical length.
        """
        group = DecodeGroup("sample", float(temperature))
        goals = [0] * len(latents) if targets is None else [int(t) for t in targets]
        items = [
            BatchItem(
                _SampleJob(np.asarray(z, dtype=np.float32), sketch_seed(seed, i), max_points, goal), max_points, group
            )
            for i, (z, goal) in enumerate(zip(latents, goals))
        ]
        with self._held(ticket, len(items), (DECODE,), timeout) as held:
            drawn = await self.decoder.submit(items, timeout=timeout)
            held.finish(DECODE)
        return drawn

    async def score(
        self, encoded: Sequence[Encoded], timeout: float | None = None, ticket: Ticket | None = None
    ) -> list[SketchScore]:
        """Reconstruction NLL given the sketch's own ``mu``, and the posterior's KL from the prior."""
        items = [BatchItem(_NllJob(e.mu, e.stroke3), len(e.stroke3), GROUP_NLL) for e in encoded]
        with self._held(ticket, len(items), (DECODE,), timeout) as held:
            nlls = await self.decoder.submit(items, timeout=timeout)
            held.finish(DECODE)
        mu = torch.from_numpy(np.stack([e.mu for e in encoded]))
        sigma = torch.from_numpy(np.stack([e.sigma for e in encoded]))
        kls = kl_divergence(mu, sigma).tolist()
        return [SketchScore(float(n), float(k)) for n, k in zip(nlls, kls)]

    def _preprocess_batch(self, _group: Hashable, drawings: list[Drawing]) -> list[Fitted]:
        strokes3 = preprocess_many(drawings)
        if self.simplify_too_long:
            return fit_stroke3_many(strokes3, self.spec.max_seq_len)
        return [Fitted(s3, False) for s3 in strokes3]

    def _encode_batch(self, _group: Hashable, strokes3: list[np.ndarray]) -> list[Encoded]:
        batch = collate_stroke3(strokes3)
        posterior = self.model.encode(batch.x, batch.lengths)
        mu, sigma = posterior.mu.numpy(), posterior.sigma.numpy()
        return [Encoded(s3, mu[row].copy(), sigma[row].copy()) for row, s3 in enumerate(strokes3)]

    def _decode_batch(self, group: Hashable, jobs: list) -> list:
        if not isinstance(group, DecodeGroup):
            raise TypeError(f"decode batch group {group!r} is not a DecodeGroup")
        if group.kind == "nll":
            return self._nll_batch(jobs)
        return self._sample_batch(group.temperature, jobs)

    def _nll_batch(self, jobs: list[_NllJob]) -> list[float]:
        batch = collate_stroke3([j.stroke3 for j in jobs])
        z = torch.from_numpy(np.stack([j.z for j in jobs]))
        return self.model.nll(z, batch.x, batch.lengths).tolist()

    def _sample_batch(self, temperature: float, jobs: list[_SampleJob]) -> list[np.ndarray]:
        return self.model.decode(
            np.stack([j.z for j in jobs]),
            temperature,
            seeds=[j.seed for j in jobs],
            max_points=[j.max_points for j in jobs],
            targets=[j.target for j in jobs],
        )
