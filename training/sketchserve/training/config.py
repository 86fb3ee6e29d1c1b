"""Every hyperparameter of the Sketch-RNN VAE and its training, with the reason for each default.

Defaults follow Ha & Eck 2017 / magenta's ``sketch_rnn`` (``get_default_hparams``)
except where this project's budget (1,700 faces, a 2-core CPU, ~50 minutes) calls for
less; each such departure says why.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

FIELD_LINE = re.compile(r"(\w+)\s*:")

CELL_TYPES = ("lstm", "layer_norm")
ENCODER_INPUTS = ("offsets", "offsets+positions")
ENCODER_POOLS = ("last", "last+mean")
DECODER_CONDITIONS = ("latent", "latent+length")
ENCODER_STROKES = ("drawn", "oriented")
# The fields that take one of a fixed set of values (checked by validate, offered as `choices` by the CLI).
CHOICES: dict[str, tuple[str, ...]] = {
    "cell": CELL_TYPES,
    "encoder_input": ENCODER_INPUTS,
    "encoder_strokes": ENCODER_STROKES,
    "encoder_pool": ENCODER_POOLS,
    "decoder_condition": DECODER_CONDITIONS,
}


class ConfigError(ValueError):
    """A hyperparameter that cannot work (one line, names the field)."""


def _require(cfg: Any, names: tuple[str, ...], ok: Callable[[Any], bool], rule: str) -> None:
    """Raise ``ConfigError`` naming the first of ``names`` whose value breaks ``rule``."""
    for name in names:
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"{name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    # Paper: 256 per direction; the encoder runs once per sketch, so its size costs little.
    enc_hidden: int = 256
    # Paper: 512 (2048 for its largest runs); 512 fits the 50-minute CPU budget per step less
    # well than 256, which is what the bundled face model uses (see models/face/MODEL_CARD.md).
    dec_hidden: int = 512
    # Paper: Nz = 128; the server's latent vectors have this size.
    latent_size: int = 128
    # Paper: M = 20 bivariate Gaussians for the pen offsets.
    num_mixtures: int = 20
    # Paper: 250 points; longer sketches are dropped from training, the decoder draws at most this many.
    max_seq_len: int = 250
    # Paper: plain LSTM by default (fused kernel, fastest on CPU); "layer_norm" is the paper's option.
    cell: str = "lstm"
    # Paper: keep probability 0.9 on the decoder's cell input (Semeniuta et al.); needs the "layer_norm" cell
    # because the fused LSTM kernel has no hook for it, so 0 by default.
    recurrent_dropout: float = 0.0
    # Paper: the encoder reads stroke-5 (offsets and pen state). "offsets+positions" also gives it each
    # point's place in the canonical 0-255 frame (what a raster shows at once and an LSTM must otherwise
    # integrate); an option, measured in docs/benchmarks.md ("Clustering"), so the paper's form stays the default.
    encoder_input: str = "offsets"
    # Paper: the encoder reads each stroke as drawn ("drawn"). "oriented" has it read every stroke in one
    # canonical direction (model.oriented_strokes: enclosing strokes anticlockwise, others from the left end),
    # so the code cannot depend on which way a circle or line was drawn, a trait the codes' k-means clusters
    # split on. The decoder still redraws the strokes as drawn. An option measured in docs/benchmarks.md.
    encoder_strokes: str = "drawn"
    # Paper: the encoder's code comes from its two LSTMs' last states ("last"). "last+mean" also gives the
    # code head each direction's mean state over the sketch, a summary of the whole drawing that depends less
    # on how it ends; an option measured in docs/benchmarks.md ("Clustering").
    encoder_pool: str = "last"
    # Paper: the decoder is conditioned on z alone ("latent"). "latent+length" also tells it, at every step,
    # how many points remain (known whenever a drawing is reconstructed; chosen, or the training median,
    # when one is sampled), so z need not spend its main directions on drawing length, which dominated the
    # codes' geometry. An option measured in docs/benchmarks.md ("Clustering").
    decoder_condition: str = "latent"

    def validate(self) -> ModelConfig:
        _require(
            self, ("enc_hidden", "dec_hidden", "latent_size", "num_mixtures", "max_seq_len"), lambda v: v >= 1, ">= 1"
        )
        for name, allowed in CHOICES.items():
            _require(self, (name,), allowed.__contains__, f"one of {', '.join(allowed)}")
        _require(self, ("recurrent_dropout",), lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        if self.recurrent_dropout > 0.0 and self.cell != "layer_norm":
            raise ConfigError("recurrent_dropout > 0 needs cell 'layer_norm' (the fused LSTM has no recurrent dropout)")
        return self


@dataclass(frozen=True)
class TrainConfig:
    # Paper: batch of 100 sketches.
    batch_size: int = 100
    # Paper: Adam at 1e-3.
    learning_rate: float = 1e-3
    # Paper: lr decays as (lr - min_lr) * decay^step + min_lr.
    lr_decay: float = 0.9999
    # Paper: floor of the decayed learning rate.
    min_lr: float = 1e-5
    # Paper: gradients clipped to norm 1.0.
    grad_clip: float = 1.0
    # Paper: w_KL = 0.5 for single-category models (the L_R/KL trade-off of its figure 5).
    kl_weight: float = 0.5
    # Paper: KL annealing starts at w_KL 0.01.
    kl_weight_start: float = 0.01
    # Paper: 0.99995 anneals over ~100k steps; a CPU run has ~5k, so it anneals 10x faster.
    kl_decay_rate: float = 0.9995
    # Paper: the KL term is not pushed below 0.2 (free bits).
    kl_tolerance: float = 0.2
    # Paper: random x/y scaling by up to +-15 %.
    random_scale_factor: float = 0.15
    # Paper: drop a point with probability 0.1 (where the stroke barely bends).
    augment_stroke_prob: float = 0.1
    # Training stops after this many steps (or --max-minutes, whichever first).
    max_steps: int = 10_000
    # Evaluate the validation and test splits every 500 steps (~1 % of a CPU run's time at 150 validation
    # sketches), logging them and keeping the best model by validation loss in best.pt (what export takes).
    eval_every: int = 500
    # Write ckpt.pt (what --resume continues from) every 500 steps, so a crash loses at most that many;
    # a stop (end, signal, --max-minutes) always writes one.
    checkpoint_every: int = 500
    # Metrics/progress every 20 steps: cheap, and enough points for a loss curve.
    log_every: int = 20
    # Fixed seed: repeatable runs on CPU.
    seed: int = 0

    def validate(self) -> TrainConfig:
        _require(
            self, ("batch_size", "max_steps", "eval_every", "checkpoint_every", "log_every"), lambda v: v >= 1, ">= 1"
        )
        _require(self, ("learning_rate", "grad_clip"), lambda v: v > 0, "> 0")
        _require(self, ("lr_decay", "kl_decay_rate"), lambda v: 0.0 < v <= 1.0, "in (0, 1]")
        _require(self, ("min_lr", "kl_weight", "kl_weight_start", "kl_tolerance"), lambda v: v >= 0, ">= 0")
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        _require(
            self,
            ("random_scale_factor", "augment_stroke_prob"),
            lambda v: 0.0 <= v < 1.0,
            "in [0, 1)",
        )
        return self


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a config from a dict (a checkpoint's or manifest's), ignoring unknown keys."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known}).validate()


def hparams(model_cfg: ModelConfig, train_cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Every config field in one flat dict (the manifest's ``hparams``)."""
    out = asdict(model_cfg)
    if train_cfg is not None:
        out.update(asdict(train_cfg))
    return out


def field_reasons(cls: type) -> dict[str, str]:
    """Each field's reason comment (the ``#`` lines right above it in this file), as one line: the
    comments stay the one place a default is explained, and ``--help`` shows them."""
    names = {f.name for f in fields(cls)}
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in inspect.getsourcelines(cls)[0]:
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
            continue
        match = FIELD_LINE.match(text)
        if match and match.group(1) in names and comment:
            reasons[match.group(1)] = " ".join(comment)
        comment = []
    return reasons
