"""``sketchserve train``, ``export`` and ``sample``: argument parsing and one-line errors.

Every hyperparameter of ``ModelConfig`` and ``TrainConfig`` is a flag
(``--dec-hidden 256``, ``--kl-weight 1.0``, ...).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

from sketchserve.artifact import ArtifactError
from sketchserve.data import DataFormatError
from sketchserve.training.checkpoint import CheckpointError
from sketchserve.training.config import CHOICES, ConfigError, ModelConfig, TrainConfig, field_reasons
from sketchserve.training.dataset import DataError, RecordFilter

USER_ERRORS = (ArtifactError, CheckpointError, ConfigError, DataError, DataFormatError, FileNotFoundError)
EXIT_USAGE = 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per config field; its help is the field's reason comment, its default the config's
    (flags left out keep the base config's value: the defaults, --init-from's or the checkpoint's)."""
    group = parser.add_argument_group(title)
    defaults = cls()
    reasons = field_reasons(cls)
    for f in fields(cls):
        value = getattr(defaults, f.name)
        reason = reasons.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        group.add_argument(
            _flag(f.name),
            type=type(value),
            default=None,
            choices=CHOICES.get(f.name),
            help=f"{reason} (default {value!r})",
        )


def _config_from_args(cls: type, args: argparse.Namespace, base: Any | None = None) -> Any:
    values = {f.name: getattr(base or cls(), f.name) for f in fields(cls)}
    values.update({f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None})
    return cls(**values).validate()


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fail(command: str, err: BaseException) -> int:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    sys.stderr.write(f"sketchserve {command}: error: {message}\n")
    return EXIT_USAGE


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sketchserve train", description="Train a Sketch-RNN VAE on drawing files.")
    parser.add_argument("--data", nargs="+", default=[], metavar="FILE", help=".npz/.ndjson files or directories")
    parser.add_argument("--categories", nargs="+", default=[], metavar="WORD", help="only these categories")
    parser.add_argument("--out", type=Path, default=Path("runs/default"), help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints, metrics and plot are deleted)",
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    parser.add_argument("--dry-run", action="store_true", help="load data, time a few steps, write nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available, else cpu"
    )
    parser.add_argument(
        "--from-cluster", metavar="MODEL_DIR:K", default=None, help="only the drawings MODEL_DIR puts in its cluster K"
    )
    parser.add_argument("--fine-tune", action="store_true", help="with --from-cluster: start from MODEL_DIR's weights")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="start from this artifact's weights and config (model flags override the config, but not "
        "the weights' shapes)",
    )
    _add_config_flags(parser, ModelConfig, "model")
    _add_config_flags(parser, TrainConfig, "training")
    return parser


class Selection(NamedTuple):
    """Which records to train on (``None``: all) and how the run's provenance describes it."""

    record_filter: RecordFilter | None
    description: str | None


def record_filter_from_args(args: argparse.Namespace) -> Selection:
    """The subset of records to train on (``--from-cluster``); all by default."""
    if args.from_cluster is None:
        return Selection(None, None)
    from sketchserve.training.from_cluster import ClusterFilter, parse_cluster_ref

    selection = ClusterFilter(parse_cluster_ref(args.from_cluster))
    return Selection(selection, selection.description)


def train_main(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    _setup_logging()
    try:
        return _train(args, argv)
    except USER_ERRORS as err:
        return _fail("train", err)


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from sketchserve.training.from_cluster import fine_tune_source
    from sketchserve.training.init_from import artifact_model_config
    from sketchserve.training.train import RunSpec, train

    if not args.data and not args.resume:
        raise ConfigError("--data is required (one or more .npz/.ndjson files or directories)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ConfigError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.resume and args.overwrite:
        raise ConfigError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if args.init_from is not None and args.fine_tune:
        raise ConfigError("give --fine-tune (start from the --from-cluster model) or --init-from MODEL_DIR, not both")
    record_filter, description = record_filter_from_args(args)
    init_from = args.init_from or fine_tune_source(args.from_cluster, args.fine_tune)
    spec = RunSpec(
        out_dir=args.out,
        data=tuple(args.data),
        categories=tuple(args.categories),
        model=_config_from_args(ModelConfig, args, artifact_model_config(init_from) if init_from else None),
        train=_config_from_args(TrainConfig, args),
        resume=args.resume,
        overwrite=args.overwrite,
        max_minutes=args.max_minutes,
        dry_run=args.dry_run,
        threads=args.threads,
        device=args.device,
        command=shlex.join(["sketchserve", "train", *argv]),
        filter_description=description,
        init_from=init_from,
    )
    result = train(spec, record_filter)
    if args.dry_run:
        budget = (
            f"; {result.steps_per_second * 60 * args.max_minutes:.0f} steps in {args.max_minutes} min"
            if args.max_minutes
            else ""
        )
        sys.stdout.write(
            f"dry run: {result.steps_per_second:.3f} steps/s{budget}; loss {result.metrics['train']['loss']:.4f}\n"
        )
        return 0
    test = result.metrics.get("test", {})
    summary = f"trained {result.steps} steps in {result.wall_seconds:.0f} s; best step {result.best_step}"
    if test:
        summary += f"; test L_R {test['recon']:.4f} KL {test['kl']:.4f}"
    sys.stdout.write(summary + f"; run in {args.out}\n")
    return 0


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sketchserve export", description="Export a run as a TorchScript artifact.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--name", default=None, help="model name (default: the run directory's name)")
    parser.add_argument(
        "--version", default=None, help="version label; the version is [LABEL-]<step>-<weights hash> (always distinct)"
    )
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--force", action="store_true", help="replace the artifact in a non-empty --out")
    parser.add_argument("--sign-key", type=Path, default=None, help="ed25519 private key (PEM): write manifest.sig")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        from sketchserve.training.export import export_run

        out = export_run(
            args.run_dir,
            args.out,
            name=args.name or args.run_dir.name,
            label=args.version,
            which=args.checkpoint,
            force=args.force,
            sign_key=args.sign_key,
        )
    except USER_ERRORS as err:
        return _fail("export", err)
    sys.stdout.write(f"{out}\n")
    return 0


def sample_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sketchserve sample", description="Draw new sketches from an artifact.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--n", type=int, default=16, help="sketches to draw (per --around sketch)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="randomness of the decoder's draws: 0 is greedy, 1 the model's own distribution (default %(default)s)",
    )
    parser.add_argument("--around", type=Path, default=None, help="draw around the sketches of this file")
    parser.add_argument("--limit", type=int, default=8, help="at most this many --around sketches")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the prior draws and the decoder's noise (default %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=Path("samples"), help="writes OUT.ndjson and OUT.png")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        from sketchserve.training.sampling import sample_command

        written = sample_command(args.model_dir, args.n, args.temperature, args.around, args.limit, args.seed, args.out)
    except USER_ERRORS as err:
        return _fail("sample", err)
    sys.stdout.write("".join(f"{path}\n" for path in written))
    return 0
