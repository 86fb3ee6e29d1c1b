"""The GPU path: the bundled model on CUDA gives the CPU's codes, batch-independent, served and trained.

Every test here needs a CUDA device and skips without one (CI has none);
``bench/gpu_check.sh`` runs them on a lent GPU. Real faces are used where
``../shared/data`` (or ``SKETCHSERVE_DATA``) has them, else synthetic drawings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, shared_data_path
from server_fixtures import CALL_TIMEOUT_S, random_sketches, running_server, server_config
from test_train import TINY_FLAGS

from sketchserve import data, strokes
from sketchserve.artifact import load_artifact, read_manifest
from sketchserve.client.convert import sketch_from_pb
from sketchserve.pb.sketch.v1 import sketch_pb2
from sketchserve.runtime import SketchRuntime, collate_stroke3
from sketchserve.training.cli import export_main, train_main

pytestmark = [
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (CI has none; bench/gpu_check.sh runs these on a GPU)",
    ),
    pytest.mark.timeout(300),
]

BUNDLED = REPO_ROOT / "models" / "face"
# cuDNN's and the CPU's fp32 LSTM kernels sum in different orders (TF32 is off): rounding only.
CPU_GPU_TOLERANCE = 1e-4
# The same sketch alone or among others of other lengths: rounding only (the brief's 1e-5).
BATCH_TOLERANCE = 1e-5
SKETCHES = 64
BIG_BATCH = 48
TINY_TRAIN = [*TINY_FLAGS, "--device", "cuda"]  # test_train's tiny model, on the GPU


def _drawings(count: int) -> list[np.ndarray]:
    """Canonical stroke-3 faces (real where present), at most the bundled model's length."""
    path = shared_data_path() / "sketchrnn" / "face.npz"
    if path.exists():
        drawings = [r.stroke3 for r in data.iter_drawings([path], canonical=True)]
    else:
        drawings = [strokes.preprocess(list(sketch_from_pb(s).strokes)) for s in random_sketches(0, count)]
    limit = read_manifest(BUNDLED).max_seq_len
    return [d for d in drawings if len(d) <= limit][:count]


def test_cuda_codes_match_the_cpu_and_tf32_is_off() -> None:
    sketches = _drawings(SKETCHES)
    batch = collate_stroke3(sketches)
    cpu = SketchRuntime.load(BUNDLED, "cpu").encode(batch.x, batch.lengths)
    gpu_model = SketchRuntime.load(BUNDLED, "cuda")
    assert gpu_model.device.type == "cuda"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    gpu = gpu_model.encode(batch.x, batch.lengths)
    np.testing.assert_allclose(gpu.mu.numpy(), cpu.mu.numpy(), atol=CPU_GPU_TOLERANCE)
    np.testing.assert_allclose(gpu.sigma.numpy(), cpu.sigma.numpy(), atol=CPU_GPU_TOLERANCE)


def test_a_sketchs_code_on_cuda_does_not_depend_on_its_batch() -> None:
    sketches = _drawings(BIG_BATCH)
    model = SketchRuntime.load(BUNDLED, "cuda")
    together = model.encode(*collate_stroke3(sketches)).mu.numpy()
    for i in (0, len(sketches) // 2, len(sketches) - 1):
        alone = model.encode(*collate_stroke3([sketches[i]])).mu.numpy()[0]
        np.testing.assert_allclose(alone, together[i], atol=BATCH_TOLERANCE, err_msg=f"sketch {i}")


def test_the_server_on_cuda_gives_the_cpu_servers_codes() -> None:
    request = sketch_pb2.EncodeRequest(sketches=random_sketches(7, 12))
    replies = {}
    for device in ("cpu", "cuda"):
        with running_server(server_config(BUNDLED, device=device, max_sketches_per_request=16)) as server:
            info = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
            assert info.device.startswith(device)
            replies[device] = server.stub.Encode(request, timeout=CALL_TIMEOUT_S)
    mus = {d: np.array([list(e.mu) for e in r.embeddings]) for d, r in replies.items()}
    np.testing.assert_allclose(mus["cuda"], mus["cpu"], atol=CPU_GPU_TOLERANCE)


def test_training_on_cuda_exports_an_artifact_that_loads_on_the_cpu(tmp_path: Path) -> None:
    faces = shared_data_path() / "sketchrnn" / "face.npz"
    if not faces.exists():
        pytest.skip(f"real faces not found at {faces}")
    run, out = tmp_path / "run", tmp_path / "model"
    assert (
        train_main([*TINY_TRAIN, "--data", str(faces), "--out", str(run), "--max-steps", "30", "--eval-every", "15"])
        == 0
    )
    assert export_main([str(run), "--out", str(out)]) == 0
    artifact = load_artifact(out, torch.device("cpu"))
    assert artifact.manifest.training["steps"] in (15, 30)
    x = collate_stroke3(_drawings(4))
    mu, sigma = artifact.encoder(x.x, x.lengths)
    assert mu.shape == (4, 8) and bool(torch.isfinite(mu).all()) and bool((sigma > 0).all())
