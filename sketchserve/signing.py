"""Optional ed25519 signatures of a model artifact: ``manifest.sig`` signs ``manifest.json``'s bytes.

The manifest holds the sha256 of every payload file, so a valid signature over it
vouches for the whole artifact. Keys are PEM files (``openssl genpkey -algorithm
ed25519 -out key.pem``; public half: ``openssl pkey -in key.pem -pubout -out
key.pub``). ``manifest.sig`` holds the 64 raw signature bytes. ``cryptography``
(the server and train extras) is imported only here, and only when a key is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sketchserve.artifact import MANIFEST, SIGNATURE_FILE, ArtifactError, read_manifest_bytes, verify_checksums


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as err:
        raise ArtifactError("signatures need the `cryptography` package (pip install 'sketchserve[server]')") from err
    return serialization


def _key(path: Path, private: bool) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    serialization = _crypto()
    try:
        data = Path(path).read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (OSError, ValueError, TypeError) as err:
        raise ArtifactError(f"{path}: not a readable PEM {'private' if private else 'public'} key ({err})") from err
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ArtifactError(f"{path}: not an ed25519 key")
    return key


def sign_manifest(model_dir: Path | str, private_key: Path) -> Path:
    """Write ``MODEL_DIR/manifest.sig``, the detached signature of the (verified) manifest's bytes; returns its path."""
    model_dir = Path(model_dir)
    verify_checksums(model_dir)  # sign only an artifact that verifies
    signature = _key(private_key, private=True).sign(read_manifest_bytes(model_dir))
    out = model_dir / SIGNATURE_FILE
    out.write_bytes(signature)
    return out


def verify_signature(model_dir: Path, manifest_bytes: bytes, public_key: Path) -> None:
    """``ArtifactError`` unless ``manifest.sig`` is the trusted key's signature of ``manifest_bytes``."""
    from cryptography.exceptions import InvalidSignature

    key = _key(public_key, private=False)
    sig_path = model_dir / SIGNATURE_FILE
    if not sig_path.is_file():
        raise ArtifactError(f"{sig_path}: missing (a trusted key was given, so the artifact must be signed)")
    try:
        key.verify(sig_path.read_bytes(), manifest_bytes)
    except InvalidSignature as err:
        raise ArtifactError(f"{sig_path}: not a valid signature of {MANIFEST} by the trusted key {public_key}") from err


def sign_main(argv: list[str]) -> int:
    """Entry point of ``sketchserve sign MODEL_DIR --key PRIVATE.pem``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="sketchserve sign", description="Sign an artifact's manifest (ed25519).")
    parser.add_argument("model_dir", type=Path, help="artifact directory (manifest.sig is written into it)")
    parser.add_argument("--key", type=Path, required=True, help="ed25519 private key, PEM (PKCS#8)")
    args = parser.parse_args(argv)
    try:
        out = sign_manifest(args.model_dir, args.key)
    except ArtifactError as err:
        sys.stderr.write(f"sketchserve sign: {err}\n")
        return 2
    sys.stdout.write(f"wrote {out}\n")
    return 0
