"""The artifact: TorchScript round trip, determinism, padding invariance, manifest and checksums."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from server_fixtures import add_test_clusters

from sketchserve.artifact import ArtifactError, load_artifact, read_manifest, verify_checksums, write_manifest
from sketchserve.strokes import stroke3_to_stroke5
from sketchserve.training.export import TINY_CONFIG, export_artifact, export_version, make_random_artifact
from sketchserve.training.model import SketchRNN

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def random_stroke3(rng: np.random.Generator, n: int) -> np.ndarray:
    s3 = np.zeros((n, 3), dtype=np.float32)
    s3[:, :2] = rng.integers(-40, 40, size=(n, 2))
    s3[:, 2] = rng.random(n) < 0.2
    s3[-1, 2] = 1
    return s3


def batch(sketches: list[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([stroke3_to_stroke5(s, width) for s in sketches]))
    return x, torch.tensor([len(s) for s in sketches], dtype=torch.long)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SketchRNN, Path]:
    torch.manual_seed(3)
    model = SketchRNN(TINY_CONFIG).eval()
    model.set_scale(25.0)
    out = export_artifact(model, TINY_CONFIG, tmp_path_factory.mktemp("model"), {"name": "t", "version": "1"})
    return model, out


def test_loaded_modules_equal_eager(exported: tuple[SketchRNN, Path]) -> None:
    model, out = exported
    art = load_artifact(out, "cpu")
    rng = np.random.default_rng(0)
    x, lengths = batch([random_stroke3(rng, n) for n in (30, 7, 19)], 32)
    mu_e, sig_e = model.encoder(x, lengths)
    mu_l, sig_l = art.encoder(x, lengths)
    assert torch.allclose(mu_e, mu_l, atol=TOL) and torch.allclose(sig_e, sig_l, atol=TOL)
    z = mu_e.detach()
    assert torch.allclose(model.decoder.nll(z, x, lengths), art.decoder.nll(z, x, lengths), atol=TOL)
    noise = torch.rand(3, 40, 4)
    noise[..., 1:3] = torch.randn(3, 40, 2)
    for temperature in (0.0, 0.7):
        s_e, l_e = model.decoder.sample(z, noise, temperature)
        s_l, l_l = art.decoder.sample(z, noise, temperature)
        assert torch.equal(l_e, l_l)
        assert torch.allclose(s_e, s_l, atol=TOL)


def test_sampling_is_deterministic_for_given_noise_and_batch_independent(exported: tuple[SketchRNN, Path]) -> None:
    art = load_artifact(exported[1], "cpu")
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, TINY_CONFIG.latent_size, generator=gen)
    noise = torch.rand(4, 30, 4, generator=gen)
    noise[..., 1:3] = torch.randn(4, 30, 2, generator=gen)
    first, len1 = art.decoder.sample(z, noise, 1.0)
    again, len2 = art.decoder.sample(z, noise, 1.0)
    assert torch.equal(first, again) and torch.equal(len1, len2)
    alone, len_alone = art.decoder.sample(z[2:3], noise[2:3], 1.0)
    assert torch.allclose(alone[0], first[2], atol=TOL) and int(len_alone[0]) == int(len1[2])
    # Rows from each sketch's length on are end rows, and lengths point at the first of them.
    for b in range(4):
        n = int(len1[b])
        assert torch.all(first[b, n:, 4] == 1.0) and torch.all(first[b, :n, 4] == 0.0)


def test_padding_and_batch_never_change_mu_or_nll(exported: tuple[SketchRNN, Path]) -> None:
    art = load_artifact(exported[1], "cpu")
    rng = np.random.default_rng(1)
    short = random_stroke3(rng, 9)
    longer = [random_stroke3(rng, n) for n in (50, 61)]
    x1, l1 = batch([short], 9)
    mu_alone, _ = art.encoder(x1, l1)
    xb, lb = batch([longer[0], short, longer[1]], 64)
    xb[1, 9:, :] = torch.randn(55, 5)  # garbage padding must not matter either
    mu_batch, _ = art.encoder(xb, lb)
    assert torch.allclose(mu_alone[0], mu_batch[1], atol=TOL)
    z = torch.cat([mu_batch[:1], mu_alone, mu_batch[2:]])
    nll_alone = art.decoder.nll(mu_alone, x1, l1)
    nll_batch = art.decoder.nll(z, xb, lb)
    assert torch.allclose(nll_alone[0], nll_batch[1], atol=TOL)


def test_manifest_is_complete_and_checksums_catch_tampering(tmp_path: Path) -> None:
    out = make_random_artifact(tmp_path / "m", seed=0, tiny=True)
    manifest = verify_checksums(out)
    for key in ("created", "torch_version", "hparams", "data", "metrics", "training", "scale_factor"):
        assert key in manifest.document
    assert manifest.latent_size == TINY_CONFIG.latent_size and manifest.max_seq_len == TINY_CONFIG.max_seq_len
    assert set(manifest.files) == {"encoder.pt", "decoder.pt"}
    (out / "MODEL_CARD.md").write_text("# card\n")
    write_manifest(out, read_manifest(out))
    (out / "MODEL_CARD.md").write_text("# card, edited\n")
    assert set(verify_checksums(out).files) == {"encoder.pt", "decoder.pt"}
    add_test_clusters(out, manifest.latent_size)
    assert load_artifact(out).clusters is not None
    (out / "clusters.json").write_text(json.dumps({"k": 1}))
    with pytest.raises(ArtifactError, match="clusters.json: sha256"):
        verify_checksums(out)


@pytest.mark.slow
def test_random_artifact_is_reproducible_and_loads_without_project_code(tmp_path: Path) -> None:
    a = make_random_artifact(tmp_path / "a", seed=7)
    b = make_random_artifact(tmp_path / "b", seed=7)
    enc_a, enc_b = load_artifact(a).encoder, load_artifact(b).encoder
    x = torch.zeros(1, 3, 5)
    x[0, :, 2] = 1.0
    lengths = torch.tensor([3])
    assert torch.equal(enc_a(x, lengths)[0], enc_b(x, lengths)[0])
    code = (
        "import torch,sys; e=torch.jit.load(sys.argv[1]+'/encoder.pt'); d=torch.jit.load(sys.argv[1]+'/decoder.pt');"
        "mu,s=e(torch.zeros(1,2,5),torch.tensor([2])); print(d.sample(mu,torch.rand(1,5,4),0.0)[0].shape)"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, str(a)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "torch.Size([1, 5, 5])" in done.stdout


def test_missing_or_broken_artifact_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_export_into_a_non_empty_directory_is_refused_unless_forced_and_leaves_nothing_stale(tmp_path: Path) -> None:
    out = make_random_artifact(tmp_path / "m", seed=0)
    add_test_clusters(out, TINY_CONFIG.latent_size)
    (out / "MODEL_CARD.md").write_text("# card\n")
    with pytest.raises(ArtifactError, match=r"not empty \(clusters.json, decoder.pt.*--force"):
        make_random_artifact(out, seed=1)
    assert load_artifact(out).manifest.version == "seed0"  # untouched
    make_random_artifact(out, seed=1, force=True)
    assert not (out / "clusters.json").exists() and (out / "MODEL_CARD.md").is_file()
    fresh = load_artifact(out)
    assert fresh.manifest.version == "seed1" and fresh.clusters is None
    assert set(fresh.manifest.files) == {"encoder.pt", "decoder.pt"}


def test_every_export_gets_a_distinct_version() -> None:
    torch.manual_seed(0)
    a, b = SketchRNN(TINY_CONFIG), SketchRNN(TINY_CONFIG)
    version = export_version(3250, a)
    assert re.fullmatch(r"3250-[0-9a-f]{8}", version)
    assert export_version(3250, copy.deepcopy(a)) == version  # the same weights: the same version
    assert export_version(3250, b) != version and export_version(3251, a) != version
    assert export_version(3250, a, "face") == f"face-{version}"
