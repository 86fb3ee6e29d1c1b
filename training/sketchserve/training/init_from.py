"""Start training from an artifact instead of from scratch (``--init-from MODEL_DIR``, ``--fine-tune``).

``artifact_model_config`` reads the ``ModelConfig`` an artifact was trained with (its manifest's
hparams; the command line's model flags override it); ``artifact_weights`` gives its TorchScript
weights as a ``SketchRNN`` state dict with its offset scale, which the run starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sketchserve.artifact import load_artifact, read_manifest
from sketchserve.training.config import ModelConfig, config_from_dict


@dataclass(frozen=True)
class InitialWeights:
    """What --init-from and --fine-tune start from: the artifact's model config, weights and offset scale."""

    model: ModelConfig
    state_dict: dict[str, Any]
    scale: float


def artifact_model_config(model_dir: Path) -> ModelConfig:
    """The ModelConfig an artifact was trained with (its manifest's hparams)."""
    return config_from_dict(ModelConfig, dict(read_manifest(model_dir).hparams))


def artifact_weights(model_dir: Path) -> InitialWeights:
    """The artifact's TorchScript weights as a SketchRNN state dict (keys `encoder.*`, `decoder.*`)."""
    artifact = load_artifact(model_dir, "cpu")
    state = {f"encoder.{k}": v for k, v in artifact.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in artifact.decoder.state_dict().items()})
    return InitialWeights(
        model=artifact_model_config(model_dir), state_dict=state, scale=artifact.manifest.scale_factor
    )
