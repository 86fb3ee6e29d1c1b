"""The artifact runtime: batched encode and decode that never depend on the batch; the cluster table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sketchserve.clusters import parse_clusters
from sketchserve.runtime import SketchRuntime, sketch_seed


@pytest.fixture(scope="module")
def runtime(tiny_model: Path) -> SketchRuntime:
    return SketchRuntime.load(tiny_model, "cpu")


def _sketches(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sketches = []
    for n in lengths:
        s3 = np.zeros((n, 3), dtype=np.float32)
        s3[:, :2] = rng.integers(-30, 30, size=(n, 2))
        s3[-1, 2] = 1.0
        sketches.append(s3)
    return sketches


def test_encode_stroke3_keeps_input_order_whatever_the_batch_size(runtime: SketchRuntime) -> None:
    sketches = _sketches(0, [40, 3, 17, 3, 60, 9])
    together = runtime.encode_stroke3(sketches, progress=False)
    small = runtime.encode_stroke3(sketches, batch_size=2, progress=False)
    alone = np.stack([runtime.encode_stroke3([s], progress=False)[0] for s in sketches])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(small, alone, atol=1e-5)


def test_a_seeded_decode_depends_on_the_sketch_never_on_its_batch(runtime: SketchRuntime) -> None:
    z = np.random.default_rng(1).standard_normal((3, runtime.manifest.latent_size)).astype(np.float32)
    seeds = [sketch_seed(5, i) for i in range(3)]
    limits = [7, 30, 64]
    together = runtime.decode(z, 0.8, seeds=seeds, max_points=limits)
    for i in range(3):
        alone = runtime.decode(z[i : i + 1], 0.8, seeds=seeds[i : i + 1], max_points=limits[i : i + 1])[0]
        np.testing.assert_allclose(alone, together[i], atol=1e-5)
        assert len(together[i]) <= limits[i]
    assert len({len(d) for d in together}) > 1 or not np.array_equal(together[1], together[2])


def test_greedy_decoding_needs_no_seed_and_stops_at_each_sketchs_max_points(runtime: SketchRuntime) -> None:
    z = np.random.default_rng(1).standard_normal((3, runtime.manifest.latent_size)).astype(np.float32)
    free = runtime.decode(z)  # the random tiny decoder never ends by itself at temperature 0
    assert [len(d) for d in free] == [runtime.manifest.max_seq_len] * 3
    bounded = runtime.decode(z, max_points=[5, 20, 64])
    assert [len(d) for d in bounded] == [5, 20, 64]
    for short, full in zip(bounded, free, strict=True):
        np.testing.assert_array_equal(short[:-1], full[: len(short) - 1])  # a prefix (the cut ends the stroke)


@settings(max_examples=50, deadline=None)
@given(
    centroids=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)), elements=st.floats(-50, 50)),
    codes=hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.just(3)), elements=st.floats(-50, 50, width=32)),
    top_k=st.integers(-2, 9),
)
def test_nearest_is_sorted_clamped_and_agrees_with_assign(centroids: np.ndarray, codes: np.ndarray, top_k: int) -> None:
    table = parse_clusters({"centroids": centroids.tolist()}, latent_size=3, encoder_sha256=None)
    neighbors = table.nearest(codes, top_k)
    assert all(len(row) == max(1, min(top_k, table.k)) for row in neighbors)
    for row in neighbors:
        assert [n.distance for n in row] == sorted(n.distance for n in row)
    assert [row[0].cluster for row in neighbors] == table.assign(codes).tolist()
    brute = np.linalg.norm(codes[:, None, :].astype(np.float64) - centroids[None], axis=-1).min(axis=1)
    np.testing.assert_allclose([row[0].distance for row in neighbors], brute, rtol=1e-12, atol=1e-12)
