"""Export a trained ``SketchRNN`` as the model artifact (docs/contracts.md): ``sketchserve export``.

``export_run`` turns a run's checkpoint into an artifact with its provenance and metrics;
``export_artifact`` is the one place that scripts and saves the modules;
``make_random_artifact`` builds a tiny random-weight artifact for tests.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sketchserve.artifact import DECODER_FILE, DOC_SUFFIX, ENCODER_FILE, ArtifactError, write_manifest
from sketchserve.training.checkpoint import BEST, CHECKPOINT, load_checkpoint
from sketchserve.training.config import ModelConfig, TrainConfig, config_from_dict, hparams
from sketchserve.training.model import SketchRNN

TINY_CONFIG = ModelConfig(enc_hidden=16, dec_hidden=32, latent_size=8, num_mixtures=3, max_seq_len=64)
# A plausible canonical offset std (the face training set's is ~30 units).
TINY_SCALE = 30.0
# Hex digits of the weights' sha256 in an export's version: enough to tell exports of one step apart.
VERSION_HASH_CHARS = 8


def script_module(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` with only its DeprecationWarning silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.script(module)


def _save(module: torch.jit.ScriptModule, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(module, str(path))


def base_manifest(model: SketchRNN, cfg: ModelConfig, train_cfg: TrainConfig | None = None) -> dict[str, Any]:
    """The manifest fields that come from the model itself."""
    return {
        "format_version": 1,
        "name": "sketch-rnn",
        "version": "0",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "latent_size": cfg.latent_size,
        "max_seq_len": cfg.max_seq_len,
        "scale_factor": model.scale_factor,
        "hparams": hparams(cfg, train_cfg),
        "data": {},
        "metrics": {},
        "training": {},
    }


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's state (names and tensor bytes, in name order): what an export's version names."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_version(step: int, model: torch.nn.Module, label: str | None = None) -> str:
    """``[LABEL-]<step>-<first hex digits of the weights' sha256>``: distinct for distinct weights."""
    version = f"{step}-{weights_digest(model)[:VERSION_HASH_CHARS]}"
    return version if not label else f"{label}-{version}"


def prepare_out_dir(out: Path, force: bool) -> None:
    """An empty (or new) ``out``; with ``force``, a non-empty one is emptied of everything but ``*.md``
    documentation, so no stale file (an old clusters.json or manifest.sig) survives the export."""
    out.mkdir(parents=True, exist_ok=True)
    present = sorted(p for p in out.iterdir() if p.suffix != DOC_SUFFIX)
    if present and not force:
        names = ", ".join(p.name for p in present)
        raise ArtifactError(f"{out}: not empty ({names}); pass --force to replace the artifact there")
    for path in present:
        if path.is_dir():
            raise ArtifactError(f"{path}: a folder inside the model directory; remove it by hand")
        path.unlink()


def export_artifact(
    model: SketchRNN,
    cfg: ModelConfig,
    out_dir: Path | str,
    manifest_extra: dict[str, Any] | None = None,
    train_cfg: TrainConfig | None = None,
    force: bool = False,
) -> Path:
    """Script encoder and decoder (CPU, eval mode), save them and the manifest into ``out_dir``
    (``prepare_out_dir``: refused if not empty, unless ``force``)."""
    out = Path(out_dir)
    prepare_out_dir(out, force)
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    _save(script_module(cpu_model.encoder), out / ENCODER_FILE)
    _save(script_module(cpu_model.decoder), out / DECODER_FILE)
    manifest = base_manifest(cpu_model, cfg, train_cfg)
    manifest.update(manifest_extra or {})
    write_manifest(out, manifest)
    return out


def model_from_checkpoint(ckpt: dict[str, Any]) -> SketchRNN:
    """The trained model (eval mode, CPU) a checkpoint describes."""
    cfg = config_from_dict(ModelConfig, ckpt["model_config"])
    model = SketchRNN(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def manifest_from_checkpoint(
    ckpt: dict[str, Any], last: dict[str, Any], name: str, version: str, selected_by: str = "lowest validation loss"
) -> dict[str, Any]:
    metrics = ckpt.get("metrics", {})
    spec = ckpt.get("spec", {})
    return {
        "name": name,
        "version": version,
        "data": ckpt.get("data", {}),
        "metrics": {"valid": metrics.get("valid", {}), "test": metrics.get("test", {})},
        "training": {
            "steps": ckpt["step"],
            "wall_seconds": round(float(ckpt.get("wall_seconds", 0.0)), 1),
            "command": spec.get("command", ""),
            "run_steps": last["step"],
            "run_wall_seconds": round(float(last.get("wall_seconds", 0.0)), 1),
            "selected_by": selected_by,
        },
    }


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    name: str,
    label: str | None = None,
    which: str = "best",
    force: bool = False,
    sign_key: Path | None = None,
) -> Path:
    """Export ``best.pt`` (or ``ckpt.pt`` for ``which="last"``) of ``run_dir`` into ``out_dir``.

    The version is ``[label-]<step>-<weights hash>`` (``export_version``); ``sign_key``: an ed25519
    private key that signs the manifest (``manifest.sig``)."""
    last = load_checkpoint(run_dir / CHECKPOINT)
    best = which == "best" and (run_dir / BEST).is_file()
    ckpt = load_checkpoint(run_dir / BEST) if best else last
    model = model_from_checkpoint(ckpt)
    train_cfg = config_from_dict(TrainConfig, ckpt["train_config"])
    version = export_version(int(ckpt["step"]), model, label)
    manifest = manifest_from_checkpoint(
        ckpt, last, name, version, "lowest validation loss" if best else "last checkpoint"
    )
    out = export_artifact(model, model.cfg, out_dir, manifest, train_cfg, force=force)
    if sign_key is not None:
        from sketchserve.signing import sign_manifest

        sign_manifest(out, sign_key)
    return out


def make_random_artifact(
    out_dir: Path | str,
    *,
    seed: int = 0,
    tiny: bool = True,
    prepare: Callable[[SketchRNN], None] | None = None,
    force: bool = False,
    **model_options: Any,
) -> Path:
    """A randomly initialised artifact (tiny by default) with a complete manifest, for tests.

    ``model_options``: ModelConfig fields to change (``decoder_condition="latent+length"``);
    ``prepare``: called on the model before export (to hand-set weights)."""
    cfg = replace(TINY_CONFIG if tiny else ModelConfig(), **model_options).validate()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SketchRNN(cfg)
    model.set_scale(TINY_SCALE)
    if prepare is not None:
        prepare(model)
    extra: dict[str, Any] = {
        "name": "random-tiny" if tiny else "random",
        "version": f"seed{seed}",
        "data": {"files": [], "categories": [], "counts": {"train": 0, "valid": 0, "test": 0}},
        "metrics": {"valid": {}, "test": {}},
        "training": {"steps": 0, "wall_seconds": 0.0, "command": "make_random_artifact"},
    }
    return export_artifact(model, cfg, out_dir, extra, force=force)
