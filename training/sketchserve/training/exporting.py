"""``sketchserve export``: a run's checkpoint -> the model artifact, with provenance and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sketchserve.training.checkpoint import BEST, CHECKPOINT, load_checkpoint
from sketchserve.training.config import ModelConfig, TrainConfig, config_from_dict
from sketchserve.training.export import export_artifact, export_version
from sketchserve.training.model import SketchRNN


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
