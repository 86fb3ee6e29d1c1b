"""The training loop, nanoGPT style: one process or many under ``torchrun`` (DDP).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every process trains on its own
batches of ``batch_size // world_size`` sketches (its share of each epoch, ``EpochShards``)
and DistributedDataParallel
averages the gradients (gloo on CPU, nccl on GPU); only rank 0 evaluates, logs
metrics and writes checkpoints, which hold every rank's random state (a resumed run
draws, on every rank, the batches an uninterrupted one draws). Runs are repeatable
on CPU for a given seed.

The run directory holds ``ckpt.pt`` (latest, for ``--resume``; every
``checkpoint_every`` steps and when the run stops), ``best.pt`` (best validation
loss among the evaluations every ``eval_every`` steps, what ``export`` uses),
``metrics.jsonl`` and ``loss.png``. A directory that already holds a run is
refused unless the run is resumed (``--resume``) or replaced (``--overwrite``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from sketchserve.progress import Progress
from sketchserve.training.checkpoint import (
    BEST,
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from sketchserve.training.config import ConfigError, ModelConfig, TrainConfig, config_from_dict
from sketchserve.training.dataset import (
    Batch,
    Dataset,
    EpochShards,
    RecordFilter,
    augmented_batch,
    fixed_batches,
    load_dataset,
    scale_factor,
)
from sketchserve.training.distributed import Dist, any_rank, gather_to_main, leave_distributed, setup_distributed
from sketchserve.training.model import SketchRNN

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# What a run writes into its directory; --overwrite removes exactly these.
RUN_FILES = (CHECKPOINT, BEST, METRICS_FILE, LOSS_PLOT)
EVAL_SEED = 1234  # fixed z noise for evaluation: metrics comparable between evaluations
DRY_RUN_STEPS = 3  # steps timed by --dry-run
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
    # Replace a run already in out_dir (its checkpoints and metrics go) instead of refusing.
    overwrite: bool = False
    max_minutes: float | None = None
    dry_run: bool = False
    threads: int | None = None
    device: str = "auto"
    command: str = ""
    filter_description: str | None = None
    # --init-from / --fine-tune: start from this artifact's weights and scale factor instead of from scratch.
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


class Draw(NamedTuple):
    """One step's random inputs on one rank: the training-set indices, their augmented batch, the z noise."""

    picks: np.ndarray
    batch: Batch
    eps: torch.Tensor


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The paper's decay: ``(lr - min_lr) * decay^step + min_lr``."""
    return (cfg.learning_rate - cfg.min_lr) * cfg.lr_decay**step + cfg.min_lr


def kl_weight_at(step: int, cfg: TrainConfig) -> float:
    """The paper's KL annealing: ``w - (w - w_start) * rate^step``."""
    return cfg.kl_weight - (cfg.kl_weight - cfg.kl_weight_start) * cfg.kl_decay_rate**step


def total_loss(recon: torch.Tensor, kl: torch.Tensor, kl_weight: float, kl_tolerance: float) -> torch.Tensor:
    return recon + kl_weight * torch.clamp(kl, min=kl_tolerance)


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


@dataclass
class RunState:
    """What a run carries from step to step, and what its checkpoint restores."""

    step: int = 0
    wall_before: float = 0.0  # seconds spent by earlier sessions of this run (before --resume)
    best_loss: float = math.inf
    best_step: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)  # the best evaluation's
    last_metrics: dict[str, Any] = field(default_factory=dict)  # the latest evaluation's


def held_step(out_dir: Path) -> int | None:
    """The step of the run ``out_dir`` holds (-1: files of a run but no readable checkpoint); None if none."""
    if not any((out_dir / name).exists() for name in RUN_FILES):
        return None
    try:
        return int(load_checkpoint(out_dir / CHECKPOINT)["step"])
    except CheckpointError:
        return -1


def check_out_dir(spec: RunSpec) -> None:
    """Refuse a directory that holds a run unless the run is resumed or replaced (``--overwrite``)."""
    if spec.resume or spec.dry_run or spec.overwrite:
        return
    step = held_step(spec.out_dir)
    if step is not None:
        held = f"a run at step {step}" if step >= 0 else "a run's files but no readable checkpoint"
        raise ConfigError(
            f"{spec.out_dir} already holds {held}: continue it with --resume or replace it with --overwrite"
        )


def clear_out_dir(spec: RunSpec) -> None:
    """``--overwrite``: remove the files of the run ``out_dir`` holds, so the new one starts clean."""
    step = held_step(spec.out_dir)
    if step is None:
        return
    for name in RUN_FILES:
        (spec.out_dir / name).unlink(missing_ok=True)
    logger.info("--overwrite: removed the run at step %d in %s", step, spec.out_dir)


def _prepare(spec: RunSpec, record_filter: RecordFilter | None) -> tuple[RunSpec, Dataset, dict[str, Any] | None]:
    """Resolve ``--resume`` (config and data come from the checkpoint) and load the data."""
    ckpt = None
    if spec.resume:
        ckpt = load_checkpoint(spec.out_dir / CHECKPOINT)
        train_cfg = replace(config_from_dict(TrainConfig, ckpt["train_config"]), max_steps=spec.train.max_steps)
        spec = replace(
            spec,
            model=config_from_dict(ModelConfig, ckpt["model_config"]),
            train=train_cfg.validate(),
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
    check_out_dir(spec)
    spec, data, ckpt = _prepare(spec, record_filter)
    dist = setup_distributed(spec.device)
    try:
        if spec.overwrite and not spec.dry_run and dist.main:
            clear_out_dir(spec)
        trainer = Trainer(spec, data, ckpt, dist)
        return trainer.dry_run() if spec.dry_run else trainer.run()
    finally:
        leave_distributed(dist)


def _initial_weights(spec: RunSpec, model: SketchRNN) -> float | None:
    """Load ``--init-from``'s weights into ``model``; returns its scale factor (None without one)."""
    if spec.init_from is None:
        return None
    from sketchserve.training.init_from import artifact_weights

    init = artifact_weights(spec.init_from)
    try:
        missing, unexpected = model.load_state_dict(init.state_dict, strict=False)
    except RuntimeError as exc:  # a size mismatch: a model flag changed a weight's shape
        raise ConfigError(
            f"{spec.init_from}: its weights do not fit this model: {str(exc).splitlines()[-1].strip()}"
        ) from None
    if missing or unexpected:
        raise ConfigError(
            f"{spec.init_from}: its weights do not fit this model (missing {missing}, unexpected {unexpected})"
        )
    return init.scale


class Trainer:
    """One run on one rank: the model, its optimizer, the data, this rank's random state and the ``RunState``.

    ``run`` is the loop; ``draw`` and ``step`` are one step's two halves (what a test
    needs to see which sketches a rank drew and what one step did to the weights).
    """

    def __init__(self, spec: RunSpec, data: Dataset, ckpt: dict[str, Any] | None, dist: Dist) -> None:
        self.spec, self.data, self.dist = spec, data, dist
        self.cfg, self.tcfg = spec.model, spec.train
        torch.manual_seed(self.tcfg.seed)  # the same initial weights on every rank
        self.model = SketchRNN(self.cfg)
        init_scale = _initial_weights(spec, self.model) if ckpt is None else None
        scale = ckpt["scale_factor"] if ckpt else (init_scale or scale_factor(data.train))
        self.model.set_scale(scale)
        self.model.set_typical_length(float(np.median([len(s) for s in data.train])))
        self.model.to(dist.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.tcfg.learning_rate)
        self.state = RunState()
        self.rng = np.random.default_rng([self.tcfg.seed, dist.rank])  # this rank's batches and augmentation
        torch.manual_seed(self.tcfg.seed + dist.rank)  # this rank's z noise
        if ckpt:
            self._restore(ckpt)
        self.ddp_model: nn.Module = self.model
        if dist.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.device] if dist.device.type == "cuda" else None
            )
        self.local_batch = max(1, self.tcfg.batch_size // dist.world)
        self.shards = (
            EpochShards(len(data.train), self.tcfg.seed, dist.rank, dist.world, self.local_batch)
            if dist.world > 1
            else None
        )
        self.log = MetricsLog(spec.out_dir / METRICS_FILE if dist.main else None)
        self.start = time.monotonic()  # of this session's training (reset by run)
        if dist.main:
            logger.info(
                "%d parameters; %d/%d/%d train/valid/test sketches; scale factor %.3f; %d process(es) x batch %d",
                sum(p.numel() for p in self.model.parameters()),
                len(data.train),
                len(data.valid),
                len(data.test),
                scale,
                dist.world,
                self.local_batch,
            )

    def _restore(self, ckpt: dict[str, Any]) -> None:
        rngs = ckpt["rng"]
        if len(rngs) != self.dist.world:
            raise ConfigError(
                f"{self.spec.out_dir / CHECKPOINT} was written by {len(rngs)} process(es): resume it with as many "
                f"(this run has {self.dist.world}), or each rank would draw other batches than the run it continues"
            )
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.state = RunState(
            step=ckpt["step"],
            wall_before=ckpt["wall_seconds"],
            best_loss=ckpt["best_loss"],
            best_step=ckpt["best_step"],
            metrics=ckpt.get("best_metrics", ckpt.get("metrics", {})),
            last_metrics=ckpt.get("metrics", {}),
        )
        self.rng.bit_generator.state = rngs[self.dist.rank]["numpy"]
        torch.set_rng_state(rngs[self.dist.rank]["torch"])

    def draw(self, step: int | None = None) -> Draw:
        """This rank's sketches, augmented, and z noise for ``step`` (default: the next); advances its random state.

        One process draws sketches with replacement (the paper's sampling, as the published runs did);
        under torchrun the ranks split each epoch (``EpochShards``), so no two train on the same sketch."""
        step = self.state.step if step is None else step
        if self.shards is None:
            picks = self.rng.integers(0, len(self.data.train), size=self.local_batch)
        else:
            picks = self.shards.picks(step)
        batch = augmented_batch(
            self.data.train, picks, self.rng, self.tcfg.random_scale_factor, self.tcfg.augment_stroke_prob
        )
        return Draw(picks, batch, torch.randn(self.local_batch, self.cfg.latent_size))

    def step(self, draw: Draw) -> dict[str, float]:
        """One optimizer step on ``draw`` (gradients averaged over the ranks); advances nothing else."""
        step, cfg, device = self.state.step, self.tcfg, self.dist.device
        lr = lr_at(step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        kl_w = kl_weight_at(step, cfg)
        terms = self.ddp_model(draw.batch.x.to(device), draw.batch.lengths.to(device), draw.eps.to(device))
        loss = total_loss(terms.recon, terms.kl, kl_w, cfg.kl_tolerance)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        return {"loss": loss.item(), "recon": terms.recon.item(), "kl": terms.kl.item(), "kl_weight": kl_w, "lr": lr}

    def run(self) -> TrainResult:
        spec, tcfg, dist, state = self.spec, self.tcfg, self.dist, self.state
        if dist.main:
            spec.out_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        deadline = self.start + spec.max_minutes * SECONDS_PER_MINUTE if spec.max_minutes else math.inf
        self.model.train()
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
            while state.step < tcfg.max_steps and not any_rank(
                time.monotonic() >= deadline or stop.requested.is_set(), dist
            ):
                stats = self.step(self.draw())
                state.step += 1
                elapsed = time.monotonic() - self.start
                rate = (state.step - first_step) / max(elapsed, 1e-9)
                if dist.main and state.step == first_step + 1:
                    logger.info("step %d done (%.2f s since start)", state.step, elapsed)
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
                    self.log.write(
                        {"kind": "train", "step": state.step, **stats, "steps_per_s": rate, "elapsed": elapsed}
                    )
                self.checkpoint(
                    evaluate=state.step % tcfg.eval_every == 0, save=state.step % tcfg.checkpoint_every == 0
                )
        wall = time.monotonic() - self.start
        if state.step > first_step:  # the stop's own checkpoint (and evaluation), unless the last step made them
            self.checkpoint(evaluate=state.step % tcfg.eval_every != 0, save=state.step % tcfg.checkpoint_every != 0)
        if dist.main:
            from sketchserve.training.plots import plot_loss_curve

            plot_loss_curve(spec.out_dir / METRICS_FILE, spec.out_dir / LOSS_PLOT)
        return TrainResult(
            steps=state.step,
            wall_seconds=state.wall_before + wall,
            steps_per_second=(state.step - first_step) / max(wall, 1e-9),
            best_step=state.best_step,
            metrics=state.metrics,
        )

    def checkpoint(self, *, evaluate: bool, save: bool) -> None:
        """Evaluate (rank 0; ``best.pt`` when validation improves) and/or write ``ckpt.pt``.

        Every rank calls it at the same steps: each hands rank 0 its random state."""
        if not (evaluate or save):
            return
        rngs = gather_to_main({"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()}, self.dist)
        if not self.dist.main:
            return
        improved = self._evaluate() if evaluate else False
        payload = self._payload(rngs)
        if save:
            save_checkpoint(payload, self.spec.out_dir / CHECKPOINT)
        if improved:
            save_checkpoint(payload, self.spec.out_dir / BEST)

    def _evaluate(self) -> bool:
        """Evaluate the valid and test splits, log them; returns whether the run's best improved."""
        state = self.state
        metrics = evaluate_splits(self.model, self.data, self.tcfg, self.dist.device)
        state.last_metrics = metrics
        valid = metrics["valid"]
        record = {f"{k}_{m}": v for k, d in metrics.items() for m, v in d.items()}
        self.log.write({"kind": "eval", "step": state.step, **record})
        if valid:
            logger.info(
                "step %d: valid L_R %.4f KL %.4f loss %.4f", state.step, valid["recon"], valid["kl"], valid["loss"]
            )
        score = valid["loss"] if valid else -state.step
        if score >= state.best_loss:
            return False
        state.best_loss, state.best_step, state.metrics = score, state.step, metrics
        return True

    def _payload(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        spec, state = self.spec, self.state
        return {
            "model_config": asdict(spec.model),
            "train_config": asdict(spec.train),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": state.step,
            "scale_factor": self.model.scale_factor,
            "wall_seconds": state.wall_before + time.monotonic() - self.start,
            "best_loss": state.best_loss,
            "best_step": state.best_step,
            "metrics": state.last_metrics,  # what `export` reports for this checkpoint
            "best_metrics": state.metrics,
            "rng": rngs,  # one per rank, in rank order
            "data": self.data.provenance,
            "spec": {
                "data": list(spec.data),
                "categories": list(spec.categories),
                "command": spec.command,
                "filter_description": spec.filter_description,
            },
        }

    def dry_run(self) -> TrainResult:
        """Time a few real steps, write nothing: what a budget buys (``--dry-run``)."""
        self.model.train()
        start = time.monotonic()
        stats: dict[str, float] = {}
        for _ in range(DRY_RUN_STEPS):
            stats = self.step(self.draw())
            self.state.step += 1
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
