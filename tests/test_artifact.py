"""The loader refuses every bad artifact at load, in one line naming the file and the field.

Each test tampers with a copy of the tiny model fixture (tests/server_fixtures.py)
and loads it the way the server and every tool do (``SketchRuntime.load``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import add_test_clusters, ed25519_keypair

from sketchserve import artifact
from sketchserve.artifact import MAX_SEQ_LEN, ArtifactError, Manifest, read_manifest, write_manifest
from sketchserve.runtime import SketchRuntime

TRAVERSAL = "../../../../etc/passwd"


def _copy(model: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model, target)
    return target


def _document(model: Path, name: str = "manifest.json") -> Any:
    return json.loads((model / name).read_text())


def _write(model: Path, document: Any, name: str = "manifest.json") -> None:
    """Write a file as given (no checks, no checksums): what a tamperer or a bug would leave."""
    (model / name).write_text(json.dumps(document))


def _edit_manifest(model: Path, hparams: dict[str, Any] | None = None, /, **fields: Any) -> Path:
    """Change manifest fields (and hparams entries) in place, checksums untouched; returns ``model``."""
    document = _document(model)
    document["hparams"].update(hparams or {})
    document.update(fields)
    _write(model, document)
    return model


def refused(model: Path, *needles: str, **options: Any) -> str:
    """Loading ``model`` fails with one ArtifactError line holding every needle."""
    with pytest.raises(ArtifactError) as info:
        SketchRuntime.load(model, "cpu", **options)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_seq_len", 0),
        ("max_seq_len", -5),
        ("max_seq_len", 100_000),
        ("max_seq_len", "64"),
        ("latent_size", 0),
        ("latent_size", True),
        ("scale_factor", math.nan),
        ("scale_factor", math.inf),
        ("scale_factor", -30.0),
        ("scale_factor", "30"),
        ("name", ""),
        ("version", 7),
        ("format_version", 2),
        ("files", []),
        ("hparams", []),
    ],
)
def test_a_manifest_field_out_of_type_or_range_is_refused(
    tiny_model: Path, tmp_path: Path, key: str, value: Any
) -> None:
    refused(_edit_manifest(_copy(tiny_model, tmp_path), **{key: value}), "manifest.json", key)


def test_an_unknown_decoder_condition_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _edit_manifest(_copy(tiny_model, tmp_path), {"decoder_condition": "latent+mood"})
    refused(model, "manifest.json", "hparams.decoder_condition", "latent+mood")


def test_hparams_that_contradict_the_manifest_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _edit_manifest(_copy(tiny_model, tmp_path), max_seq_len=50)  # in range, but trained at 64
    refused(model, "manifest.json", "hparams.max_seq_len")


@pytest.mark.parametrize("name", [TRAVERSAL, "/etc/passwd", "sub/encoder.pt", ".."])
def test_a_file_name_outside_the_model_directory_is_refused_not_hashed(
    tiny_model: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _copy(tiny_model, tmp_path)
    document = _document(model)
    document["files"][name] = "0" * 64
    _write(model, document)
    hashed: list[Path] = []

    def record(path: Path) -> str:
        hashed.append(path)
        return "0" * 64

    monkeypatch.setattr(artifact, "sha256_file", record)
    refused(model, "manifest.json", "files", repr(name))
    assert hashed == []


def test_a_listed_file_that_links_out_of_the_directory_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    outside = tmp_path / "elsewhere.pt"
    shutil.copy(model / "encoder.pt", outside)
    (model / "encoder.pt").unlink()
    (model / "encoder.pt").symlink_to(outside)  # same bytes, same sha256: only the place is wrong
    refused(model, "encoder.pt", "not a regular file inside")


def test_an_unlisted_payload_file_is_refused_but_documentation_is_not(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "NOTES.md").write_text("# notes, not part of the signed payload\n")
    SketchRuntime.load(model)
    (model / "extra.pt").write_bytes(b"smuggled")
    refused(model, "extra.pt", "not listed")


def test_a_listed_file_that_is_missing_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    add_test_clusters(model, 8)
    (model / "clusters.json").unlink()
    refused(model, "clusters.json", "missing")


def _with_clusters(tiny_model: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    model = _copy(tiny_model, tmp_path)
    add_test_clusters(model, read_manifest(model).latent_size)
    return model, _document(model, "clusters.json")


def _rewrite_clusters(model: Path, document: Any) -> None:
    _write(model, document, "clusters.json")
    write_manifest(model, read_manifest(model))  # checksums right: only the content is wrong


@pytest.mark.parametrize(
    ("field", "path", "value"),
    [
        ("centroids[1][3]", ("centroids", 1, 3), math.nan),
        ("centroids[0][0]", ("centroids", 0, 0), math.inf),
        ("exemplars[2][0][1][0]", ("exemplars", 2, 0, 1, 0), math.nan),
        ("prototypes[0][1][2]", ("prototypes", 0, 1, 2), -math.inf),
    ],
)
def test_a_non_finite_cluster_number_is_refused_at_load(
    tiny_model: Path, tmp_path: Path, field: str, path: tuple[Any, ...], value: float
) -> None:
    model, document = _with_clusters(tiny_model, tmp_path)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    _rewrite_clusters(model, document)
    refused(model, "clusters.json", field)


def test_centroids_of_another_latent_size_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    model, document = _with_clusters(tiny_model, tmp_path)
    document["centroids"] = [row[:-1] for row in document["centroids"]]
    _rewrite_clusters(model, document)
    refused(model, "clusters.json", "centroids must be k x 8")


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ([[0.0] * 8], "expected a JSON object"),
        ({"encoder_sha256": "", "centroids": "many"}, "centroids"),
    ],
)
def test_a_malformed_clusters_file_is_one_line(tiny_model: Path, tmp_path: Path, document: Any, needle: str) -> None:
    model, original = _with_clusters(tiny_model, tmp_path)
    if isinstance(document, dict):
        document["encoder_sha256"] = original["encoder_sha256"]
    _rewrite_clusters(model, document)
    refused(model, "clusters.json", needle)


@pytest.mark.parametrize("recorded", ["0" * 64, None])
def test_clusters_of_another_encoder_are_refused_with_how_to_redo_them(
    tiny_model: Path, tmp_path: Path, recorded: str | None
) -> None:
    model, document = _with_clusters(tiny_model, tmp_path)
    if recorded is None:
        del document["encoder_sha256"]
    else:
        document["encoder_sha256"] = recorded
    _rewrite_clusters(model, document)
    refused(model, "clusters.json", "encoder_sha256", "re-run `sketchserve cluster")
    assert SketchRuntime.load(model, with_clusters=False).clusters is None  # what `cluster` itself loads


def test_a_manifest_that_names_the_wrong_decoder_condition_fails_at_load(tiny_model: Path, tmp_path: Path) -> None:
    model = _edit_manifest(_copy(tiny_model, tmp_path), {"decoder_condition": "latent+length"})
    refused(model, "decoder.pt", "is not length-conditioned", "latent+length")


def test_a_length_decoder_under_a_latent_manifest_fails_at_load(tmp_path: Path) -> None:
    from sketchserve.training.export import make_random_artifact

    model = make_random_artifact(tmp_path / "length", decoder_condition="latent+length")
    refused(_edit_manifest(model, {"decoder_condition": "latent"}), "decoder.pt", "is length-conditioned", "'latent'")


def test_modules_of_another_latent_size_fail_at_load(tiny_model: Path, tmp_path: Path) -> None:
    model = _edit_manifest(_copy(tiny_model, tmp_path), {"latent_size": 9}, latent_size=9)
    refused(model, "encoder.pt", "latent_size is 9")


def test_a_scale_factor_that_is_not_the_modules_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _edit_manifest(_copy(tiny_model, tmp_path), scale_factor=12.5)
    refused(model, "encoder.pt", "scale_factor is 12.5")


def test_write_manifest_checks_what_it_writes(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    document = dict(read_manifest(model).document, max_seq_len=0)
    with pytest.raises(ArtifactError, match="max_seq_len"):
        write_manifest(model, document)
    SketchRuntime.load(model)  # the old manifest is still there, whole


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_max_seq_len_is_accepted_exactly_in_its_range(tiny_model: Path, value: int) -> None:
    document = dict(read_manifest(tiny_model).document, max_seq_len=value)
    document["hparams"] = dict(document["hparams"], max_seq_len=value)
    if 1 <= value <= MAX_SEQ_LEN:
        assert Manifest.parse(document, Path("manifest.json")).max_seq_len == value
    else:
        with pytest.raises(ArtifactError, match="max_seq_len must be an integer in 1..10000"):
            Manifest.parse(document, Path("manifest.json"))


def test_the_bundled_model_loads_with_every_check() -> None:
    runtime = SketchRuntime.load(REPO_ROOT / "models" / "face")
    assert runtime.clusters is not None and runtime.clusters.k >= 2
    assert runtime.clusters.encoder_sha256 == runtime.manifest.files["encoder.pt"]


def test_a_signed_artifact_loads_with_its_key_and_nothing_else_does(tiny_model: Path, tmp_path: Path) -> None:
    from sketchserve.cli import main as sketchserve_main

    model = _copy(tiny_model, tmp_path)
    private, public = ed25519_keypair(tmp_path, "operator")
    _, stranger = ed25519_keypair(tmp_path, "stranger")
    refused(model, "manifest.sig", "missing", trusted_key=public)  # unsigned
    assert sketchserve_main(["sign", str(model), "--key", str(private)]) == 0
    SketchRuntime.load(model, trusted_key=public)
    SketchRuntime.load(model)  # no key given: checksums only, the signature is not required
    refused(model, "manifest.sig", "not a valid signature", trusted_key=stranger)
    (model / "manifest.json").write_text((model / "manifest.json").read_text().replace('"random-tiny"', '"renamed"'))
    refused(model, "manifest.sig", "not a valid signature", trusted_key=public)  # a manifest edited after signing


def test_rewriting_the_manifest_drops_its_now_stale_signature(tiny_model: Path, tmp_path: Path) -> None:
    from sketchserve.signing import sign_manifest

    model = _copy(tiny_model, tmp_path)
    private, public = ed25519_keypair(tmp_path, "operator")
    sign_manifest(model, private)
    add_test_clusters(model, 8)  # rewrites the manifest
    assert not (model / "manifest.sig").exists()
    refused(model, "manifest.sig", "missing", trusted_key=public)


def test_a_key_that_is_not_an_ed25519_pem_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "key.pub"
    bad.write_text("not a key\n")
    refused(tiny_model, str(bad), "not a readable PEM public key", trusted_key=bad)
