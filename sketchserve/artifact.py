"""The model artifact: a directory of TorchScript modules described by ``manifest.json``.

See docs/contracts.md ("Model artifact"). This module imports torch only inside
``load_artifact``, so reading and checking manifests needs only the base install.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.pt"
DECODER_FILE = "decoder.pt"
CLUSTERS_FILE = "clusters.json"
REQUIRED_FILES = (ENCODER_FILE, DECODER_FILE)
REQUIRED_KEYS = ("format_version", "name", "version", "latent_size", "max_seq_len", "scale_factor", "files")
HASH_CHUNK = 1 << 20
# Decoder.sample's noise holds 4 draws a step: component (uniform), 2 standard normals, pen (uniform).
NOISE_CHANNELS = 4
# hparams.decoder_condition of a decoder whose sample() takes the point count to draw.
LENGTH_CONDITION = "latent+length"
UNSIGNED_SUFFIXES = (".tmp", ".md")


def sketch_seed(request_seed: int, index: int) -> int:
    """The noise seed of sketch ``index`` of a seeded request: a SeedSequence mix of both, 64 bits."""
    import numpy as np

    words = np.random.SeedSequence([request_seed, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32) | int(words[1])


def sketch_noise(seed: int, steps: int) -> Any:
    """``[steps, NOISE_CHANNELS]`` decoding noise of one sketch (a CPU tensor), a pure function of seed and steps.

    The one definition that the server (Reconstruct) and ``sketchserve sample`` share,
    so a seed draws the same sketch in both. Draw order (fixed, part of the
    reproducibility promise): ``steps x 2`` uniforms (component, pen), then
    ``steps x 2`` standard normals, from one CPU ``torch.Generator``.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    uniform = torch.rand(steps, 2, generator=gen)
    normal = torch.randn(steps, 2, generator=gen)
    return torch.cat([uniform[:, :1], normal, uniform[:, 1:]], dim=1)


def length_conditioned(manifest: dict[str, Any]) -> bool:
    """Whether the artifact's decoder is told the point count to draw (``decoder_condition`` 'latent+length')."""
    return manifest.get("hparams", {}).get("decoder_condition") == LENGTH_CONDITION


def sample_decoder(
    decoder: Any, manifest: dict[str, Any], z: Any, noise: Any, temperature: float, targets: Any = None
) -> Any:
    """``decoder.sample`` for any artifact: ``(strokes5, lengths)``.

    ``targets [B]`` int64: the point count each sketch should have, used by a
    length-conditioned decoder and ignored by the others; entries <= 0, or
    ``targets=None``, ask for the decoder's ``typical_length`` (its training median).
    """
    import torch

    if targets is None or not length_conditioned(manifest):
        return decoder.sample(z, noise, float(temperature))  # a length-conditioned one draws its typical_length
    goal = torch.as_tensor(targets, dtype=torch.long)
    if bool((goal <= 0).any()):
        goal = torch.where(goal > 0, goal, torch.full_like(goal, int(decoder.typical_length)))
    return decoder.sample(z, noise, float(temperature), goal.to(z.device))


class ArtifactError(RuntimeError):
    """A model directory that cannot be used (one line: which file, what is wrong)."""


@dataclass(frozen=True)
class LoadedArtifact:
    directory: Path
    encoder: Any
    decoder: Any
    manifest: dict[str, Any]
    clusters: dict[str, Any] | None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _artifact_files(model_dir: Path) -> list[str]:
    """The files the manifest checksums: all but itself, temporaries and documentation (``*.md``,
    e.g. MODEL_CARD.md, which may be edited without re-signing the model)."""
    return sorted(
        p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST and p.suffix not in UNSIGNED_SUFFIXES
    )


def read_manifest(model_dir: Path | str) -> dict[str, Any]:
    """The parsed ``manifest.json``; raises ``ArtifactError`` if missing, malformed or incomplete."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest (is {model_dir} a model directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {manifest['format_version']} (this build reads {FORMAT_VERSION})")
    return manifest


def verify_checksums(model_dir: Path | str) -> dict[str, Any]:
    """Check every file against the manifest's sha256 (and that the modules exist); returns the manifest."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{model_dir / MANIFEST}: files lists no {name}")
    for name, expected in files.items():
        path = model_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: sha256 {actual[:12]}... does not match the manifest's {str(expected)[:12]}..."
            )
    return manifest


def write_manifest(model_dir: Path | str, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` with ``files`` recomputed from the directory; returns its path."""
    model_dir = Path(model_dir)
    out = dict(manifest)
    out["format_version"] = FORMAT_VERSION
    out["files"] = {name: sha256_file(model_dir / name) for name in _artifact_files(model_dir)}
    path = model_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def jit_load(path: Path, device: Any) -> Any:
    """``torch.jit.load`` with only its TorchScript DeprecationWarning silenced."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def load_artifact(model_dir: Path | str, device: Any = "cpu") -> LoadedArtifact:
    """The one loader: verify checksums, then load both modules (eval mode) and clusters onto ``device``."""
    import torch

    model_dir = Path(model_dir)
    manifest = verify_checksums(model_dir)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        encoder = jit_load(model_dir / ENCODER_FILE, device)
        decoder = jit_load(model_dir / DECODER_FILE, device)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"{model_dir}: cannot load TorchScript modules ({first})") from err
    clusters = None
    clusters_path = model_dir / CLUSTERS_FILE
    if clusters_path.is_file():
        try:
            clusters = json.loads(clusters_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{clusters_path}: not valid JSON ({err})") from err
    return LoadedArtifact(directory=model_dir, encoder=encoder, decoder=decoder, manifest=manifest, clusters=clusters)
