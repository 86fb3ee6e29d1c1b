"""Training-time augmentation (sketchserve.training.augment): property tests over random stroke-3 drawings."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from test_strokes import PROPERTY_SETTINGS, stroke3s

from sketchserve import strokes
from sketchserve.training.augment import augment_stroke3


@PROPERTY_SETTINGS
@given(stroke3s(), st.integers(min_value=0, max_value=2**32 - 1))
def test_augment_drops_only_inner_points(s3: np.ndarray, seed: int) -> None:
    out = augment_stroke3(s3, np.random.default_rng(seed), scale_factor=0.0, drop_prob=0.5)
    assert out.dtype == np.float32 and out.shape[1] == 3
    original = strokes.stroke3_to_drawing(s3)
    augmented = strokes.stroke3_to_drawing(out)
    assert len(augmented) == len(original)
    for a, o in zip(augmented, original):
        assert np.array_equal(a[[0, -1]], o[[0, -1]])
        assert min(len(o), 3) <= len(a) <= len(o)
        assert all((o == point).all(axis=1).any() for point in a)


def test_augment_scales_within_bounds_and_is_seeded() -> None:
    s3 = np.array([[10, 20, 0], [10, 20, 1]], dtype=np.float32)
    first = augment_stroke3(s3, np.random.default_rng(1), scale_factor=0.15, drop_prob=0.0)
    again = augment_stroke3(s3, np.random.default_rng(1), scale_factor=0.15, drop_prob=0.0)
    assert np.array_equal(first, again)
    ratio = first[:, :2] / s3[:, :2]
    assert np.all((ratio >= 0.85 - 1e-6) & (ratio <= 1.15 + 1e-6))
    assert not np.allclose(ratio[:, 0], ratio[:, 1])


def test_augment_drop_merges_offsets_into_the_next_point() -> None:
    s3 = np.array([[1, 0, 0]] * 9 + [[1, 0, 1]], dtype=np.float32)
    out = augment_stroke3(s3, np.random.default_rng(0), scale_factor=0.0, drop_prob=1.0)
    assert out[:, 0].sum() == s3[:, 0].sum()
    assert out[:2].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert out[-2:].tolist() == [[7, 0, 0], [1, 0, 1]]
