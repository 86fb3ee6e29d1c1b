"""The training loop, nanoGPT style: one process or many under ``torchrun`` (DDP).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process trains on its own
random batches of ``batch_size // world_size`` sketches and DistributedDataParallel
averages the gradients (gloo on CPU, nccl on GPU); only rank 0 evaluates, logs
metrics and writes checkpoints. Runs are repeatable on CPU for a given seed.

The run directory holds ``ckpt.pt`` (latest, for ``--resume``), ``best.pt``
(best validation loss, what ``export`` uses), ``metrics.jsonl`` and ``loss.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sketchserve.progress import Progress
from sketchserve.training.checkpoint import BEST, CHECKPOINT, load_checkpoint, save_checkpoint
from sketchserve.training.config import ConfigError, ModelConfig, TrainConfig
from sketchserve.training.dataset import (
    Batch,
    Dataset,
    RecordFilter,
    Views,
    fixed_batches,
    load_dataset,
    sample_views,
    scale_factor,
)
from sketchserve.training.kmeans import mixture_from_kmeans
from sketchserve.training.model import SketchRNN

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVAL_SEED = 1234  # fixed z noise for evaluation: metrics comparable between evaluations
DRY_RUN_STEPS = 3  # steps timed by --dry-run
PRIOR_PREFIX = "prior."  # state-dict keys of the mixture prior, absent from artifacts trained without one
PRIOR_INIT_BATCH = 256  # sketches per encoder call when initializing the prior
PRIOR_INIT_RESTARTS = 10  # k-means restarts for the prior's start (as in `sketchserve cluster`)
SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs, as parsed from the command line."""

    out_dir: Path
    data: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False
    max_minutes: float | None = None
    dry_run: bool = False
    threads: int | None = None
    device: str = "auto"
    command: str = ""
    filter_description: str | None = None
    # --fine-tune: start from this artifact's weights and scale factor instead of from scratch.
    init_from: Path | None = None


@dataclass(frozen=True)
class EvalMetrics:
    recon: float
    kl: float
    loss: float
    offset: float
    pen: float
    count: int


@dataclass(frozen=True)
class TrainResult:
    steps: int
    wall_seconds: float
    steps_per_second: float
    best_step: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The paper's decay: ``(lr - min_lr) * decay^step + min_lr``."""
    return (cfg.learning_rate - cfg.min_lr) * cfg.lr_decay**step + cfg.min_lr


def kl_weight_at(step: int, cfg: TrainConfig) -> float:
    """The paper's KL annealing: ``w - (w - w_start) * rate^step``."""
    return cfg.kl_weight - (cfg.kl_weight - cfg.kl_weight_start) * cfg.kl_decay_rate**step


def total_loss(recon: torch.Tensor, kl: torch.Tensor, kl_weight: float, kl_tolerance: float) -> torch.Tensor:
    return recon + kl_weight * torch.clamp(kl, min=kl_tolerance)


def setup_distributed(device: str) -> Dist:
    """Join the ``torchrun`` process group if there is one; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        dev = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, device=dev)


@torch.no_grad()
def evaluate(
    model: SketchRNN, sketches: list[np.ndarray], cfg: TrainConfig, device: torch.device
) -> EvalMetrics | None:
    """Mean ``L_R`` (magenta's evaluation form), KL and loss over a split; ``None`` for an empty split."""
    if not sketches:
        return None
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    sums = np.zeros(4)
    for batch in fixed_batches(sketches, cfg.batch_size):
        eps = torch.randn(len(batch.lengths), model.cfg.latent_size, generator=gen).to(device)
        terms = model(batch.x.to(device), batch.lengths.to(device), eps)
        weight = len(batch.lengths)
        sums += weight * np.array([float(terms.recon), float(terms.kl), float(terms.offset), float(terms.pen)])
    model.train(was_training)
    recon, kl, offset, pen = (sums / len(sketches)).tolist()
    loss = recon + cfg.kl_weight * max(kl, cfg.kl_tolerance)
    return EvalMetrics(recon=recon, kl=kl, loss=loss, offset=offset, pen=pen, count=len(sketches))


def evaluate_splits(model: SketchRNN, data: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("valid", "test"):
        metrics = evaluate(model, data.split(name), cfg, device)
        out[name] = asdict(metrics) if metrics else {}
    return out


class MetricsLog:
    """Append-only JSONL of training and evaluation records (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class StopSignals:
    """SIGTERM/SIGINT ask the run to stop after the current step, like the end of ``--max-minutes``.

    The run then evaluates and writes its checkpoint as usual, so a stopped run
    resumes with ``--resume`` and loses no steps. A second signal gets the
    previous handler (Ctrl-C twice interrupts at once). Handlers are installed
    only in the main thread (Python allows no other) and restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        logger.info("%s: stopping after this step and writing a checkpoint", signal.Signals(signum).name)
        self.requested.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():  # empty unless __enter__ ran in the main thread
            signal.signal(sig, handler)
        self._previous = {}


def _stop_agreed(local_stop: bool, dist: Dist) -> bool:
    """All ranks stop together (a time budget may run out on one rank first)."""
    if dist.world == 1:
        return local_stop
    flag = torch.tensor([1.0 if local_stop else 0.0], device=dist.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _train_step(
    ddp_model: nn.Module,
    model: SketchRNN,
    opt: torch.optim.Optimizer,
    views: Views,
    eps: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    lr = lr_at(step, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    kl_w = kl_weight_at(step, cfg)
    batch, view = views
    if view is not None:
        view = Batch(view.x.to(device), view.lengths.to(device))
    terms = ddp_model(batch.x.to(device), batch.lengths.to(device), eps.to(device), view, cfg.contrastive_temperature)
    loss = (
        total_loss(terms.recon, terms.kl, kl_w, cfg.kl_tolerance)
        + cfg.contrastive_weight * terms.contrastive
        + cfg.invariance_weight * terms.invariance
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    stats = {"loss": loss.item(), "recon": terms.recon.item(), "kl": terms.kl.item(), "kl_weight": kl_w, "lr": lr}
    if view is not None:
        stats["contrastive"] = terms.contrastive.item()
        stats["invariance"] = terms.invariance.item()
    return stats


@dataclass
class _State:
    step: int = 0
    wall_before: float = 0.0
    best_loss: float = math.inf
    best_step: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)


def _prepare(spec: RunSpec, record_filter: RecordFilter | None) -> tuple[RunSpec, Dataset, dict[str, Any] | None]:
    """Resolve ``--resume`` (config and data come from the checkpoint) and load the data."""
    ckpt = None
    if spec.resume:
        ckpt = load_checkpoint(spec.out_dir / CHECKPOINT)
        train_cfg = replace(TrainConfig(**ckpt["train_config"]), max_steps=spec.train.max_steps).validate()
        spec = replace(
            spec,
            model=ModelConfig(**ckpt["model_config"]).validate(),
            train=train_cfg,
            data=spec.data or tuple(ckpt["spec"]["data"]),
            categories=spec.categories or tuple(ckpt["spec"]["categories"]),
            filter_description=spec.filter_description or ckpt["spec"].get("filter_description"),
            command=f"{ckpt['spec']['command']} ; {spec.command}" if ckpt["spec"].get("command") else spec.command,
        )
    data = load_dataset(spec.data, spec.categories, spec.model.max_seq_len, record_filter, spec.filter_description)
    return spec, data, ckpt


def train(spec: RunSpec, record_filter: RecordFilter | None = None) -> TrainResult:
    """Train (or resume) a run; returns its final numbers. ``record_filter`` selects a subset of the records."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    spec, data, ckpt = _prepare(spec, record_filter)
    dist = setup_distributed(spec.device)
    try:
        return _train(spec, data, ckpt, dist)
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def init_prior_from_kmeans(model: SketchRNN, sketches: list[np.ndarray], seed: int) -> None:
    """VaDE's start for a mixture prior added to a trained model: k-means on the training
    sketches' ``mu``, each cluster's mean, variance and share becoming one component."""
    if model.prior is None:
        return
    k = model.prior.means.shape[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        codes = np.concatenate(
            [model.encoder.moments(b.x, b.lengths).mu.numpy() for b in fixed_batches(sketches, PRIOR_INIT_BATCH)]
        )
    model.train(was_training)
    mixture = mixture_from_kmeans(codes, k, random_state=seed, n_init=PRIOR_INIT_RESTARTS)
    if mixture.means.shape[0] != k:
        raise ConfigError(
            f"--prior-components {k}: k-means found only {mixture.means.shape[0]} distinct clusters in the codes"
        )
    with torch.no_grad():
        model.prior.means.copy_(torch.from_numpy(mixture.means))
        model.prior.log_var.copy_(torch.from_numpy(mixture.log_var))
        model.prior.logits.copy_(torch.from_numpy(mixture.logits))
    logger.info(
        "mixture prior initialized by k-means on %d training codes: component shares %s",
        len(codes),
        np.round(np.exp(mixture.logits), 3).tolist(),
    )


def _train(spec: RunSpec, data: Dataset, ckpt: dict[str, Any] | None, dist: Dist) -> TrainResult:
    cfg, tcfg = spec.model, spec.train
    torch.manual_seed(tcfg.seed)
    model = SketchRNN(cfg)
    init = None
    if spec.init_from and not ckpt:
        from sketchserve.training.from_cluster import artifact_weights

        init = artifact_weights(spec.init_from)
    scale = ckpt["scale_factor"] if ckpt else (init.scale if init else scale_factor(data.train))
    model.set_scale(scale)
    model.set_typical_length(float(np.median([len(s) for s in data.train])))
    if init:
        try:
            missing, unexpected = model.load_state_dict(init.state_dict, strict=False)
        except RuntimeError as exc:  # a size mismatch: a model flag changed a weight's shape
            raise ConfigError(
                f"{spec.init_from}: its weights do not fit this model: {str(exc).splitlines()[-1].strip()}"
            ) from None
        if unexpected or any(not k.startswith(PRIOR_PREFIX) for k in missing):
            raise ConfigError(
                f"{spec.init_from}: its weights do not fit this model (missing {missing}, unexpected {unexpected})"
            )
        if missing:
            init_prior_from_kmeans(model, data.train, tcfg.seed)
    model.to(dist.device)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.learning_rate)
    state = _State()
    rng = np.random.default_rng([tcfg.seed, dist.rank])
    torch.manual_seed(tcfg.seed + dist.rank)
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = _State(
            ckpt["step"], ckpt["wall_seconds"], ckpt["best_loss"], ckpt["best_step"], ckpt.get("metrics", {})
        )
        rng.bit_generator.state = ckpt["rng"][dist.rank % len(ckpt["rng"])]["numpy"]
        torch.set_rng_state(ckpt["rng"][dist.rank % len(ckpt["rng"])]["torch"])
    ddp_model: nn.Module = model
    if dist.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device] if dist.device.type == "cuda" else None
        )
    local_batch = max(1, tcfg.batch_size // dist.world)
    n_params = sum(p.numel() for p in model.parameters())
    if dist.main:
        logger.info(
            "%d parameters; %d/%d/%d train/valid/test sketches; scale factor %.3f; %d process(es) x batch %d",
            n_params,
            len(data.train),
            len(data.valid),
            len(data.test),
            scale,
            dist.world,
            local_batch,
        )
    if spec.dry_run:
        return _dry_run(ddp_model, model, opt, data, spec, dist, local_batch)
    if dist.main:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(spec.out_dir / METRICS_FILE if dist.main else None)
    start = time.monotonic()
    deadline = start + spec.max_minutes * SECONDS_PER_MINUTE if spec.max_minutes else math.inf
    model.train()
    first_step = state.step
    with (
        StopSignals() as stop,
        Progress(total=tcfg.max_steps - first_step, desc="train") if dist.main else _NoProgress() as bar,
    ):
        if dist.main:
            logger.info(
                "training steps %d to %d; SIGTERM or Ctrl-C stops after the current step, with a checkpoint",
                first_step + 1,
                tcfg.max_steps,
            )
        while state.step < tcfg.max_steps and not _stop_agreed(
            time.monotonic() >= deadline or stop.requested.is_set(), dist
        ):
            views = sample_views(data.train, local_batch, rng, tcfg)
            eps = torch.randn(local_batch, cfg.latent_size)
            stats = _train_step(ddp_model, model, opt, views, eps, state.step, tcfg, dist.device)
            state.step += 1
            elapsed = time.monotonic() - start
            rate = (state.step - first_step) / max(elapsed, 1e-9)
            bar.update(
                1,
                step=state.step,
                loss=stats["loss"],
                L_R=stats["recon"],
                KL=stats["kl"],
                lr=stats["lr"],
                **{"steps/s": rate},
            )
            if state.step % tcfg.log_every == 0:
                log.write({"kind": "train", "step": state.step, **stats, "steps_per_s": rate, "elapsed": elapsed})
            if dist.main and (state.step % tcfg.eval_every == 0 or state.step % tcfg.checkpoint_every == 0):
                _evaluate_and_save(model, opt, data, spec, state, rng, log, start)
    wall = time.monotonic() - start
    if dist.main:
        if state.step % tcfg.eval_every and state.step % tcfg.checkpoint_every:
            _evaluate_and_save(model, opt, data, spec, state, rng, log, start)
        from sketchserve.training.plots import plot_loss_curve

        plot_loss_curve(spec.out_dir / METRICS_FILE, spec.out_dir / "loss.png")
    return TrainResult(
        steps=state.step,
        wall_seconds=state.wall_before + wall,
        steps_per_second=(state.step - first_step) / max(wall, 1e-9),
        best_step=state.best_step,
        metrics=state.metrics,
    )


def _evaluate_and_save(
    model: SketchRNN,
    opt: torch.optim.Optimizer,
    data: Dataset,
    spec: RunSpec,
    state: _State,
    rng: np.random.Generator,
    log: MetricsLog,
    start: float,
) -> None:
    metrics = evaluate_splits(model, data, spec.train, next(model.parameters()).device)
    valid = metrics["valid"]
    log.write({"kind": "eval", "step": state.step, **{f"{k}_{m}": v for k, d in metrics.items() for m, v in d.items()}})
    if valid:
        logger.info("step %d: valid L_R %.4f KL %.4f loss %.4f", state.step, valid["recon"], valid["kl"], valid["loss"])
    score = valid["loss"] if valid else -state.step
    improved = score < state.best_loss
    if improved:
        state.best_loss, state.best_step, state.metrics = score, state.step, metrics
    payload = {
        "model_config": asdict(spec.model),
        "train_config": asdict(spec.train),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": state.step,
        "scale_factor": model.scale_factor,
        "wall_seconds": state.wall_before + time.monotonic() - start,
        "best_loss": state.best_loss,
        "best_step": state.best_step,
        "metrics": metrics,
        "rng": [{"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}],
        "data": data.provenance,
        "spec": {
            "data": list(spec.data),
            "categories": list(spec.categories),
            "command": spec.command,
            "filter_description": spec.filter_description,
        },
    }
    save_checkpoint(payload, spec.out_dir / CHECKPOINT)
    if improved:
        save_checkpoint(payload, spec.out_dir / BEST)


def _dry_run(
    ddp_model: nn.Module,
    model: SketchRNN,
    opt: torch.optim.Optimizer,
    data: Dataset,
    spec: RunSpec,
    dist: Dist,
    local_batch: int,
) -> TrainResult:
    """Time a few real steps, write nothing: what a budget buys (``--dry-run``)."""
    rng = np.random.default_rng([spec.train.seed, dist.rank])
    model.train()
    start = time.monotonic()
    stats: dict[str, float] = {}
    for step in range(DRY_RUN_STEPS):
        views = sample_views(data.train, local_batch, rng, spec.train)
        stats = _train_step(
            ddp_model,
            model,
            opt,
            views,
            torch.randn(local_batch, spec.model.latent_size),
            step,
            spec.train,
            dist.device,
        )
    wall = time.monotonic() - start
    return TrainResult(
        steps=0, wall_seconds=wall, steps_per_second=DRY_RUN_STEPS / wall, best_step=-1, metrics={"train": stats}
    )


class _NoProgress:
    """Stand-in for ``Progress`` on ranks other than 0."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1, **fields: object) -> None:
        return None
