"""The model artifact: a directory of TorchScript modules described by ``manifest.json``.

See docs/contracts.md ("Model artifact"). This module holds the
file-level rules (the typed ``Manifest``, hashing, write/verify, the one loader
``load_artifact``); ``sketchserve.runtime`` computes with a loaded artifact. torch
is imported only inside functions, so reading and checking manifests needs only
the base install.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sketchserve.clusters import CLUSTERS_FILE, ClusterFileError, ClusterTable, parse_clusters

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.pt"
DECODER_FILE = "decoder.pt"
# Detached ed25519 signature over the manifest's bytes (sketchserve.signing); optional.
SIGNATURE_FILE = "manifest.sig"
REQUIRED_FILES = (ENCODER_FILE, DECODER_FILE)
REQUIRED_KEYS = ("format_version", "name", "version", "latent_size", "max_seq_len", "scale_factor", "files")
HASH_CHUNK = 1 << 20
# hparams.decoder_condition of a decoder whose sample() takes the point count to draw.
LENGTH_CONDITION = "latent+length"
# The decoder conditions a manifest may name; absent means the paper's decoder, conditioned on z only.
DEFAULT_CONDITION = "latent"
DECODER_CONDITIONS = (DEFAULT_CONDITION, LENGTH_CONDITION)
# Ranges a manifest's sizes must fall in: a point count no drawing reaches, a latent no model needs.
MAX_SEQ_LEN = 10_000
MAX_LATENT_SIZE = 65_536
SHA256_HEX = 64
HEX_DIGITS = frozenset("0123456789abcdef")
DOC_SUFFIX = ".md"
TEMP_SUFFIX = ".tmp"


class ArtifactError(RuntimeError):
    """A model directory that cannot be used (one line: which file, which field, what is wrong)."""


def _require(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise ArtifactError(f"{path}: {message}")


def _integer(document: Mapping[str, Any], key: str, low: int, high: int, path: Path) -> int:
    value = document[key]
    _require(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        path,
        f"{key} must be an integer in {low}..{high}, got {value!r}",
    )
    return int(value)


def _text(document: Mapping[str, Any], key: str, path: Path) -> str:
    value = document[key]
    _require(isinstance(value, str) and value.strip() != "", path, f"{key} must be a non-empty string, got {value!r}")
    return str(value)


def _object(document: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = document.get(key, {})
    _require(isinstance(value, Mapping), path, f"{key} must be an object, got {type(value).__name__}")
    return dict(value)


def check_file_name(name: Any, path: Path) -> str:
    """A ``files`` entry: a plain file name inside the model directory (no folder, no ``..``)."""
    _require(
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST, SIGNATURE_FILE)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name,
        path,
        f"files: {name!r} is not a plain file name inside the model directory (refused, not read)",
    )
    return str(name)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, parsed and checked once (``Manifest.parse``); every field typed and ranged."""

    name: str
    version: str
    latent_size: int
    max_seq_len: int
    scale_factor: float
    decoder_condition: str
    files: Mapping[str, str]
    hparams: Mapping[str, Any]
    data: Mapping[str, Any]
    metrics: Mapping[str, Any]
    training: Mapping[str, Any]
    document: Mapping[str, Any] = field(repr=False)

    @property
    def length_conditioned(self) -> bool:
        """Whether the decoder is told the point count to draw (``decoder_condition`` 'latent+length')."""
        return self.decoder_condition == LENGTH_CONDITION

    @classmethod
    def parse(cls, document: Any, path: Path) -> Manifest:
        """Check a decoded manifest.json; ``ArtifactError`` naming ``path`` and the field otherwise."""
        _require(isinstance(document, Mapping), path, f"expected a JSON object, got {type(document).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in document]
        _require(not missing, path, f"missing {', '.join(missing)}")
        version = document["format_version"]
        _require(version == FORMAT_VERSION, path, f"format_version {version!r} (this build reads {FORMAT_VERSION})")
        scale = document["scale_factor"]
        _require(
            isinstance(scale, int | float) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0,
            path,
            f"scale_factor must be a finite number > 0, got {scale!r}",
        )
        hparams = _object(document, "hparams", path)
        condition = hparams.get("decoder_condition", DEFAULT_CONDITION)
        _require(
            condition in DECODER_CONDITIONS,
            path,
            f"hparams.decoder_condition must be one of {', '.join(DECODER_CONDITIONS)}, got {condition!r}",
        )
        files = document["files"]
        _require(isinstance(files, Mapping), path, f"files must be an object, got {type(files).__name__}")
        for name, digest in files.items():
            check_file_name(name, path)
            _require(
                isinstance(digest, str) and len(digest) == SHA256_HEX and all(c in HEX_DIGITS for c in digest),
                path,
                f"files[{name!r}] must be a sha256 hex digest, got {digest!r}",
            )
        for name in REQUIRED_FILES:
            _require(name in files, path, f"files lists no {name}")
        manifest = cls(
            name=_text(document, "name", path),
            version=_text(document, "version", path),
            latent_size=_integer(document, "latent_size", 1, MAX_LATENT_SIZE, path),
            max_seq_len=_integer(document, "max_seq_len", 1, MAX_SEQ_LEN, path),
            scale_factor=float(scale),
            decoder_condition=str(condition),
            files=dict(files),
            hparams=hparams,
            data=_object(document, "data", path),
            metrics=_object(document, "metrics", path),
            training=_object(document, "training", path),
            document=dict(document),
        )
        for key in ("latent_size", "max_seq_len"):
            stated = hparams.get(key, getattr(manifest, key))
            _require(
                stated == getattr(manifest, key),
                path,
                f"hparams.{key} {stated!r} disagrees with {key} {getattr(manifest, key)}",
            )
        return manifest


@dataclass(frozen=True)
class LoadedArtifact:
    directory: Path
    encoder: Any
    decoder: Any
    manifest: Manifest
    clusters: ClusterTable | None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unsigned(name: str) -> bool:
    """Files the manifest does not list: itself, its signature and documentation (``*.md``, e.g.
    MODEL_CARD.md, which may be edited without re-signing the model)."""
    return name in (MANIFEST, SIGNATURE_FILE) or Path(name).suffix == DOC_SUFFIX


def _artifact_files(model_dir: Path) -> list[str]:
    """The files ``write_manifest`` checksums: all but the unsigned ones and temporaries."""
    return sorted(
        p.name for p in model_dir.iterdir() if p.is_file() and not _unsigned(p.name) and p.suffix != TEMP_SUFFIX
    )


def read_manifest_bytes(model_dir: Path | str) -> bytes:
    """The raw ``manifest.json`` (what ``manifest.sig`` signs); ``ArtifactError`` when absent."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest (is {model_dir} a model directory?)")
    return path.read_bytes()


def parse_manifest(raw: bytes, path: Path) -> Manifest:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from err
    return Manifest.parse(document, path)


def read_manifest(model_dir: Path | str) -> Manifest:
    """The checked ``manifest.json``; raises ``ArtifactError`` if missing, malformed or out of range."""
    return parse_manifest(read_manifest_bytes(model_dir), Path(model_dir) / MANIFEST)


def check_payload(model_dir: Path, manifest: Manifest) -> None:
    """Every listed file is a regular file inside ``model_dir`` with its sha256; nothing else is there.

    Names are checked before any file is opened; a listed file that is a link out of the
    directory is refused; an unlisted file (other than the manifest, its signature and
    ``*.md`` documentation) is refused."""
    root = model_dir.resolve()
    for name in sorted(manifest.files):
        path = model_dir / name
        if not path.exists():
            raise ArtifactError(f"{path}: listed in the manifest's files but missing")
        if path.resolve().parent != root or not path.is_file():
            raise ArtifactError(f"{path}: listed in the manifest's files but not a regular file inside {model_dir}")
    for entry in sorted(model_dir.iterdir()):
        if entry.name not in manifest.files and not _unsigned(entry.name):
            raise ArtifactError(f"{entry}: not listed in {MANIFEST}'s files (an artifact holds only what it lists)")
    for name, expected in sorted(manifest.files.items()):
        actual = sha256_file(model_dir / name)
        if actual != expected:
            raise ArtifactError(
                f"{model_dir / name}: sha256 {actual[:12]}... does not match "
                f"the manifest's files[{name!r}] {expected[:12]}..."
            )


def verify_checksums(model_dir: Path | str, trusted_key: Path | None = None) -> Manifest:
    """Check the signature (when ``trusted_key`` is given), the manifest and every file; returns the manifest."""
    model_dir = Path(model_dir)
    raw = read_manifest_bytes(model_dir)
    if trusted_key is not None:
        from sketchserve.signing import verify_signature

        verify_signature(model_dir, raw, trusted_key)
    manifest = parse_manifest(raw, model_dir / MANIFEST)
    check_payload(model_dir, manifest)
    return manifest


def write_manifest(model_dir: Path | str, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` with ``files`` recomputed from the directory, checked before it is written;
    a ``manifest.sig`` of the old manifest is removed (it no longer matches). Returns its path."""
    model_dir = Path(model_dir)
    out = dict(manifest.document if isinstance(manifest, Manifest) else manifest)
    out["format_version"] = FORMAT_VERSION
    out["files"] = {name: sha256_file(model_dir / name) for name in _artifact_files(model_dir)}
    path = model_dir / MANIFEST
    Manifest.parse(out, path)
    tmp = path.with_suffix(".json" + TEMP_SUFFIX)
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    (model_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    return path


def read_cluster_table(model_dir: Path, manifest: Manifest, *, check_encoder: bool = True) -> ClusterTable | None:
    """The artifact's checked clusters (None without clusters.json); one ``ArtifactError`` line otherwise.

    ``check_encoder``: refuse clusters recorded with another encoder (``encoder_sha256``)."""
    path = model_dir / CLUSTERS_FILE
    if CLUSTERS_FILE not in manifest.files:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return parse_clusters(document, manifest.latent_size, manifest.files[ENCODER_FILE] if check_encoder else None)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from err
    except ClusterFileError as err:
        raise ArtifactError(f"{path}: {err}") from err


def jit_load(path: Path, device: Any) -> Any:
    """``torch.jit.load`` with only its TorchScript DeprecationWarning silenced."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def load_artifact(
    model_dir: Path | str, device: Any = "cpu", *, trusted_key: Path | None = None, with_clusters: bool = True
) -> LoadedArtifact:
    """The one loader: signature (with ``trusted_key``), manifest, payload, clusters, then both modules
    (eval mode) on ``device``. ``with_clusters=False`` skips clusters.json (``sketchserve cluster``
    replaces it)."""
    import torch

    model_dir = Path(model_dir)
    manifest = verify_checksums(model_dir, trusted_key)
    clusters = read_cluster_table(model_dir, manifest) if with_clusters else None
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
    return LoadedArtifact(directory=model_dir, encoder=encoder, decoder=decoder, manifest=manifest, clusters=clusters)
