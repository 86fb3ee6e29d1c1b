"""The stroke formats: conversions, canonical preprocessing, validation, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agreement import compare_drawings, raw_simplified_pairs, read_xy
from bench_canonical import zigzag
from hypothesis import given, settings
from hypothesis import strategies as st

from sketchserve import strokes
from sketchserve.strokes import InvalidDrawingError

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)
FACE_MAX_LEN = 128  # models/face's max_seq_len
COORD = st.integers(min_value=-2000, max_value=2000)


@st.composite
def drawings(draw: st.DrawFn, min_points: int = 1) -> strokes.Drawing:
    """Drawings of integer points, as Quick, Draw! records them."""
    n_strokes = draw(st.integers(min_value=1, max_value=5))
    result = []
    for _ in range(n_strokes):
        n = draw(st.integers(min_value=min_points, max_value=25))
        points = draw(st.lists(st.tuples(COORD, COORD), min_size=n, max_size=n))
        result.append(np.array(points, dtype=np.float64))
    return result


@st.composite
def stroke3s(draw: st.DrawFn, coord: st.SearchStrategy = COORD) -> np.ndarray:
    """Stroke-3 arrays (integer offsets unless told) whose last row lifts the pen (what conversions produce)."""
    n = draw(st.integers(min_value=1, max_value=60))
    offsets = draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n))
    pens = draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
    pens[-1] = 1
    return np.column_stack([np.array(offsets), np.array(pens)]).astype(np.float32)


def drawings_equal(a: strokes.Drawing, b: strokes.Drawing) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


# --- conversions ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(drawings())
def test_drawing_stroke3_round_trip(drawing: strokes.Drawing) -> None:
    s3 = strokes.drawing_to_stroke3(drawing)
    assert s3.dtype == np.float32 and s3.shape[1] == 3
    assert s3[-1, 2] == 1
    back = strokes.stroke3_to_drawing(s3, origin=tuple(drawing[0][0]))
    if len(drawing[0]) == 1:
        # A first stroke of one point is written as a dot of two equal points.
        assert np.array_equal(back[0], np.repeat(drawing[0], 2, axis=0))
        assert drawings_equal(back[1:], drawing[1:])
    else:
        assert drawings_equal(back, drawing)


@PROPERTY_SETTINGS
@given(stroke3s())
def test_stroke3_drawing_round_trip(s3: np.ndarray) -> None:
    drawing = strokes.stroke3_to_drawing(s3)
    assert sum(len(stroke) for stroke in drawing) == len(s3) + 1
    assert np.array_equal(strokes.drawing_to_stroke3(drawing), s3)


@PROPERTY_SETTINGS
@given(stroke3s(), st.integers(min_value=0, max_value=10))
def test_stroke5_round_trip(s3: np.ndarray, extra: int) -> None:
    max_len = len(s3) + extra
    s5 = strokes.stroke3_to_stroke5(s3, max_len)
    assert s5.shape == (max_len, 5) and s5.dtype == np.float32
    assert np.array_equal(s5[: len(s3), 2] + s5[: len(s3), 3], np.ones(len(s3)))
    assert (s5[len(s3) :] == np.array(strokes.END_ROW, dtype=np.float32)).all()
    assert np.array_equal(strokes.stroke5_to_stroke3(s5), s3)


def test_stroke5_matches_magenta_layout() -> None:
    s3 = np.array([[1, 2, 0], [3, 4, 1]], dtype=np.float32)
    s5 = strokes.stroke3_to_stroke5(s3, 4)
    expected = [[1, 2, 1, 0, 0], [3, 4, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
    assert s5.tolist() == expected
    assert strokes.START_TOKEN == (0.0, 0.0, 1.0, 0.0, 0.0)


def test_stroke5_to_stroke3_stops_at_first_end_and_reads_soft_pen_states() -> None:
    s5 = np.array([[1, 1, 0.8, 0.1, 0.1], [2, 2, 0.2, 0.7, 0.1], [9, 9, 0, 0, 1], [5, 5, 1, 0, 0]], dtype=np.float32)
    assert strokes.stroke5_to_stroke3(s5).tolist() == [[1, 1, 0], [2, 2, 1]]


def test_stroke3_to_stroke5_rejects_too_long() -> None:
    with pytest.raises(ValueError, match="more than max_len=2"):
        strokes.stroke3_to_stroke5(np.zeros((3, 3), dtype=np.float32), 2)


def test_one_point_drawing_is_a_dot() -> None:
    s3 = strokes.drawing_to_stroke3([np.array([[5.0, 7.0]])])
    assert s3.tolist() == [[0, 0, 1]]
    back = strokes.stroke3_to_drawing(s3, origin=(5.0, 7.0))
    assert [b.tolist() for b in back] == [[[5, 7], [5, 7]]]


def test_single_point_strokes_in_the_middle_keep_their_pen_lift() -> None:
    drawing = [np.array([[0.0, 0.0], [4.0, 0.0]]), np.array([[9.0, 9.0]]), np.array([[1.0, 1.0], [2.0, 3.0]])]
    s3 = strokes.drawing_to_stroke3(drawing)
    assert s3.tolist() == [[4, 0, 1], [5, 9, 1], [-8, -8, 0], [1, 2, 1]]
    assert drawings_equal(strokes.stroke3_to_drawing(s3), drawing)


# --- canonical preprocessing ---------------------------------------------------


@PROPERTY_SETTINGS
@given(
    drawings(),
    st.tuples(st.integers(-5000, 5000), st.integers(-5000, 5000)),
    st.sampled_from([0.3, 3.0, 0.01, 7.25]),
)
def test_canonical_form_ignores_position_and_size(
    drawing: strokes.Drawing, shift: tuple[int, int], scale: float
) -> None:
    reference = strokes.preprocess(drawing)
    for moved in (
        [s + np.array(shift) for s in drawing],
        [s * scale for s in drawing],
        [(s + np.array([shift[0] * 0.37, shift[1] * 1.7])) * scale for s in drawing],
    ):
        assert np.array_equal(strokes.preprocess(moved), reference)


@PROPERTY_SETTINGS
@given(drawings())
def test_canonical_form_is_integer_in_the_0_255_box(drawing: strokes.Drawing) -> None:
    canonical = strokes.canonicalize(drawing)
    points = np.concatenate(canonical)
    assert len(canonical) == len(drawing)
    assert all(len(stroke) >= 2 for stroke in canonical)
    assert np.array_equal(points, np.round(points))
    assert points.min() >= 0 and points.max() <= strokes.CANONICAL_SIZE
    assert np.isfinite(points).all()


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(st.lists(drawings(), min_size=1, max_size=8))
def test_batch_gives_the_same_result_as_one_by_one(batch: list[strokes.Drawing]) -> None:
    together = strokes.preprocess_many(batch)
    assert all(np.array_equal(a, strokes.preprocess(d)) for a, d in zip(together, batch))


@st.composite
def rectangles(draw: st.DrawFn) -> strokes.Drawing:
    """Axis-aligned rectangles with integer corners and sides >= 3, spanning 0..255."""
    result = [np.array([[0.0, 0.0], [strokes.CANONICAL_SIZE, 0.0]])]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        x0 = draw(st.integers(0, 240))
        y0 = draw(st.integers(0, 240))
        x1 = draw(st.integers(x0 + 3, 255))
        y1 = draw(st.integers(y0 + 3, 255))
        result.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64))
    return result


@PROPERTY_SETTINGS
@given(rectangles())
def test_canonicalize_is_idempotent_where_resampling_hits_every_vertex(drawing: strokes.Drawing) -> None:
    """An integer drawing in the 0-255 box that is already simplified is its own canonical form."""
    once = strokes.canonicalize(drawing)
    assert drawings_equal(once, drawing)
    assert drawings_equal(strokes.canonicalize(once), once)


def test_canonicalize_simplifies_a_dense_line() -> None:
    xs = np.linspace(0, 1000, 501)
    line = [np.column_stack([xs, 0.5 * xs + np.sin(xs) * 0.1])]
    assert [s.tolist() for s in strokes.canonicalize(line)] == [[[0, 0], [255, 128]]]


@pytest.mark.parametrize(
    ("drawing", "expected"),
    [
        ([np.array([[3.0, 4.0]])], [[[0, 0], [0, 0]]]),
        ([np.array([[3.0, 4.0], [3.0, 4.0]]), np.array([[3.0, 4.0]])], [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]),
        ([np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[5.0, 5.0]])], [[[0, 0], [255, 0]], [[128, 128], [128, 128]]]),
    ],
    ids=["single-point", "zero-extent", "one-point-stroke"],
)
def test_degenerate_drawings(drawing: strokes.Drawing, expected: list[list[list[int]]]) -> None:
    assert [s.tolist() for s in strokes.canonicalize(drawing)] == expected


# --- agreement with Google's simplified data -----------------------------------


def test_canonical_raw_agrees_with_googles_simplified_twin(data_dir: Path) -> None:
    """Measured on the 266 raw drawings whose simplified twin (same key_id) is in
    ../shared/data: 257 (96.6%) have the twin's point count in every stroke, 239
    (89.8%) are identical to it, and matched points lie 0.017 units apart on
    average (0-255 frame). The differences are RDP decisions on points within
    float noise of epsilon. The bounds leave room for another numpy's rounding
    but fail on any real change of the algorithm: a different RDP distance
    (segment instead of line) drops count agreement to 32%; skipping the
    resampling, or scaling to 256, leaves 0 of the 266 identical."""
    pairs = raw_simplified_pairs(data_dir)
    assert len(pairs.raws) >= 200, f"expected the raw/simplified pairs, found {len(pairs.raws)}"
    agreement = compare_drawings(strokes.canonicalize_many(pairs.raws), pairs.twins)
    assert agreement.same_count_rate >= 0.95
    assert agreement.identical_rate >= 0.85
    assert agreement.mean_distance <= 0.1


def test_compare_drawings_counts_and_distances() -> None:
    a = [np.array([[0.0, 0.0], [3.0, 4.0]])]
    b = [np.array([[0.0, 0.0], [0.0, 0.0]])]
    c = [np.array([[0.0, 0.0]])]
    agreement = compare_drawings([a, a, a], [a, b, c])
    assert (agreement.pairs, agreement.same_counts, agreement.identical) == (3, 2, 1)
    assert agreement.mean_distance == pytest.approx(1.25)
    with pytest.raises(ValueError, match="2 drawings but 1 references"):
        compare_drawings([a, a], [a])


# --- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("drawing", "field"),
    [
        ([], "strokes"),
        ([np.zeros((0, 2))], "strokes[0]"),
        ([np.zeros((3, 2)), np.zeros((2, 3))], "strokes[1]"),
        ([np.zeros((3, 2)), np.array([[0.0, 1.0], [np.nan, 2.0]])], "strokes[1].x"),
        ([np.array([[0.0, np.inf]])], "strokes[0].y"),
        ([[["a", "b"]]], "strokes[0]"),
    ],
    ids=["no-strokes", "empty-stroke", "wrong-shape", "nan", "inf", "not-numbers"],
)
def test_validate_drawing_names_the_field(drawing: list, field: str) -> None:
    with pytest.raises(InvalidDrawingError) as info:
        strokes.validate_drawing(drawing)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert info.value.message in str(info.value)


@pytest.mark.parametrize(
    ("xy", "field"),
    [
        ([], "strokes"),
        ([([1, 2], [3, 4]), ([1, 2, 3], [3, 4])], "strokes[1].y"),
        ([([], [])], "strokes[0]"),
        ([([1.0, float("nan")], [3, 4])], "strokes[0].x"),
        ([([1.0], [[3.0]])], "strokes[0].y"),
    ],
    ids=["no-strokes", "length-mismatch", "no-points", "nan", "nested"],
)
def test_drawing_from_xy_validates(xy: list, field: str) -> None:
    with pytest.raises(InvalidDrawingError) as info:
        strokes.drawing_from_xy(xy)
    assert info.value.field == field


def test_batch_errors_carry_the_drawing_index() -> None:
    good = [np.array([[0.0, 0.0], [1.0, 1.0]])]
    bad = [np.array([[0.0, 0.0], [np.nan, 1.0]])]
    with pytest.raises(InvalidDrawingError) as info:
        strokes.preprocess_many([good, good, bad])
    assert (info.value.index, info.value.field) == (2, "strokes[0].x")
    assert str(info.value).startswith("drawing 2: strokes[0].x:")


def test_drawing_from_xy_builds_points() -> None:
    drawing = strokes.drawing_from_xy([([1, 2], [3, 4])])
    assert drawing[0].tolist() == [[1, 3], [2, 4]] and drawing[0].dtype == np.float64


def test_segmented_cumsum_paths_agree_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    lengths = np.array([1, 7, 300, 2, 45])
    values = rng.random(int(lengths.sum())) * 10
    table = strokes._segmented_cumsum(values, lengths)
    loop = strokes._segmented_cumsum(values, lengths, max_table=10)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    alone = np.concatenate([np.cumsum(values[a : a + n]) for a, n in zip(starts, lengths)])
    assert np.array_equal(table, alone) and np.array_equal(loop, alone)


def test_one_huge_stroke_is_processed_without_a_huge_table() -> None:
    t = np.linspace(0, 40 * np.pi, strokes.MAX_STROKE_POINTS)
    spiral = np.column_stack([t * np.cos(t), t * np.sin(t)])
    small = [np.array([[0.0, 0.0], [1.0, 1.0]])] * 300
    out = strokes.canonicalize_many([[spiral]] + [small] * 8)
    assert len(out) == 9 and len(out[0][0]) > 100
    assert drawings_equal(out[0], strokes.canonicalize([spiral]))


# --- one canonical form (issue 17) and bounded cost (issue 14) -------------------


# decoder outputs turned back into drawings: float32 offsets of a few units
FLOAT_OFFSET = st.floats(min_value=-60.0, max_value=60.0, allow_nan=False, width=32)


@PROPERTY_SETTINGS
@given(st.one_of(drawings(), stroke3s(FLOAT_OFFSET).map(strokes.stroke3_to_drawing), rectangles()))
def test_canonicalize_is_a_projection(drawing: strokes.Drawing) -> None:
    once = strokes.canonicalize(drawing)
    assert drawings_equal(strokes.canonicalize(once), once)


@PROPERTY_SETTINGS
@given(
    st.one_of(drawings(), stroke3s(FLOAT_OFFSET).map(strokes.stroke3_to_drawing)),
    st.floats(min_value=0.01, max_value=100.0),
    st.tuples(st.floats(-5000, 5000), st.floats(-5000, 5000)),
)
def test_copies_of_a_canonical_form_are_that_form(drawing: strokes.Drawing, scale: float, shift: tuple) -> None:
    """Shifted, scaled (any factor in [0.01, 100]) and float32-rounded, a canonical form
    reaches the model unchanged (stroke-3 drops the position)."""
    canonical = strokes.canonicalize(drawing)
    copy = [((s + np.array(shift)) * scale).astype(np.float32).astype(np.float64) for s in canonical]
    assert np.array_equal(strokes.preprocess(copy), strokes.preprocess(canonical))


@pytest.mark.slow
def test_canonicalize_is_a_projection_on_real_drawings(data_dir: Path) -> None:
    simplified = [
        strokes.drawing_from_xy(xy)
        for path in sorted((data_dir / "simplified").glob("*.ndjson"))
        for _, xy in read_xy(path)
    ]
    once = strokes.canonicalize_many(simplified)
    assert all(drawings_equal(a, b) for a, b in zip(strokes.canonicalize_many(once), once))


def test_the_zigzag_is_refused_before_any_work() -> None:
    with pytest.raises(InvalidDrawingError, match=r"drawing 0: strokes\[0\]: has 100000 points") as caught:
        strokes.preprocess_many([zigzag(100_000)])
    assert caught.value.index == 0 and caught.value.field == "strokes[0]"
    too_many = zigzag(strokes.MAX_STROKE_POINTS) * (strokes.MAX_DRAWING_POINTS // strokes.MAX_STROKE_POINTS + 1)
    with pytest.raises(InvalidDrawingError, match=f"more than the {strokes.MAX_DRAWING_POINTS} accepted"):
        strokes.preprocess_many([too_many])


def test_the_zigzag_at_the_cap_keeps_nearly_every_corner() -> None:
    """The worst accepted stroke (its cost is measured in bench/bench_canonical.py): RDP keeps
    nearly every corner (507 of 511 rows: resampling cuts a few corners to within epsilon)."""
    s3 = strokes.preprocess(zigzag(strokes.MAX_STROKE_POINTS))
    assert strokes.MAX_STROKE_POINTS * 0.9 < len(s3) < strokes.MAX_STROKE_POINTS


# --- copies of integer drawings (issue 17 item 2) -------------------------------

LATTICE_COORD = st.integers(min_value=0, max_value=strokes.MAX_LATTICE_EXTENT)


@PROPERTY_SETTINGS
@given(
    st.lists(st.lists(st.tuples(LATTICE_COORD, LATTICE_COORD), min_size=1, max_size=25), min_size=1, max_size=5),
    st.floats(min_value=0.01, max_value=100.0),
    st.tuples(st.floats(-5000, 5000), st.floats(-5000, 5000)),
)
def test_float32_copies_of_an_integer_drawing_are_that_drawing(points: list, scale: float, shift: tuple) -> None:
    """Any integer drawing of extent <= MAX_LATTICE_EXTENT, shifted, scaled by a factor in
    [0.01, 100] and rounded to float32, has the drawing's own canonical stroke-3."""
    drawing = [np.array(stroke, dtype=np.float64) for stroke in points]
    copy = [((s + np.array(shift)) * scale).astype(np.float32).astype(np.float64) for s in drawing]
    assert np.array_equal(strokes.preprocess(copy), strokes.preprocess(drawing))


def test_integer_multiples_and_copies_of_real_faces_are_the_faces(data_dir: Path) -> None:
    from bench_canonical import face_drawings

    faces = face_drawings(data_dir, ["test"])[:60]
    reference = strokes.preprocess_many(faces)
    shift = np.array([1234.5, -987.25])
    copies = {"3x, integer": [[s * 3.0 for s in face] for face in faces]}
    for scale in (0.01, 0.3, 3.0, 24.0, 100.0):
        copies[f"shift, {scale}x, float32"] = [
            [((s + shift) * scale).astype(np.float32).astype(np.float64) for s in face] for face in faces
        ]
    for name, drawings in copies.items():
        assert all(np.array_equal(a, b) for a, b in zip(strokes.preprocess_many(drawings), reference)), name


def test_a_drawing_off_every_lattice_goes_the_float_way() -> None:
    """A drawing whose coordinates are no integer drawing's scaled copy (an irrational ratio) is
    not snapped to a lattice: it is simplified from its own points, as before."""
    off = [np.array([[0.0, 0.0], [np.sqrt(2.0), 1.0], [np.pi, np.e], [10.0, 3.0]])]
    ratios = off[0].ravel() / 10.0
    assert strokes._lattice_extents(ratios, np.array([8]), np.array([1e-7])).tolist() == [0]
    assert strokes._lattice_extents(np.round(ratios * 997) / 997, np.array([8]), np.array([1e-7])).tolist() == [997]
    flat = strokes._flatten([off])
    assert np.array_equal(strokes._on_lattice(flat), flat.points)


# --- fitting to a model's maximum (issue 12 item 2) ------------------------------

MAX_LEN = st.integers(min_value=2, max_value=40)


@PROPERTY_SETTINGS
@given(st.one_of(drawings(), stroke3s(FLOAT_OFFSET).map(strokes.stroke3_to_drawing)), MAX_LEN)
def test_fitting_is_a_projection_onto_canonical_forms_that_fit(drawing: strokes.Drawing, max_len: int) -> None:
    s3 = strokes.preprocess(drawing)
    fitted = strokes.fit_stroke3_many([s3], max_len)[0]
    assert len(fitted.stroke3) <= max_len
    assert fitted.further == (len(s3) > max_len)
    if not fitted.further:
        assert fitted.stroke3 is s3
    again = strokes.preprocess(strokes.stroke3_to_drawing(fitted.stroke3))
    assert np.array_equal(again, fitted.stroke3)
    refit = strokes.fit_stroke3_many([again], max_len)[0]
    assert not refit.further and np.array_equal(refit.stroke3, fitted.stroke3)


def test_fitting_keeps_the_longest_strokes_when_two_points_each_are_too_many() -> None:
    lines = [np.array([[0.0, 10.0 * i], [10.0 + i, 10.0 * i]]) for i in range(20)]
    fitted = strokes.fit_stroke3_many([strokes.preprocess(lines)], 10)[0]
    kept = strokes.stroke3_to_drawing(fitted.stroke3)
    assert fitted.further and len(kept) == 5 and len(fitted.stroke3) <= 10
    widths = np.array([np.ptp(stroke[:, 0]) for stroke in kept])
    assert np.allclose(widths / widths[-1], np.arange(25, 30) / 29, atol=0.03)  # lines 15-19 in order (rounded twice)


def test_fitting_refuses_a_maximum_below_one_line() -> None:
    with pytest.raises(ValueError, match="max_len must be at least 2"):
        strokes.fit_stroke3_many([np.zeros((3, 3), dtype=np.float32)], 1)


@pytest.mark.slow
def test_every_shared_simplified_drawing_fits_the_face_model(data_dir: Path) -> None:
    """Issue 12 item 2: of the 8,600 simplified drawings, 113 are longer than 128 rows
    after preprocessing; fitted, none is, and each is its own fit."""
    simplified = [
        strokes.drawing_from_xy(xy)
        for path in sorted((data_dir / "simplified").glob("*.ndjson"))
        for _, xy in read_xy(path)
    ]
    fitted = strokes.fit_stroke3_many(strokes.preprocess_many(simplified), FACE_MAX_LEN)
    assert sum(f.further for f in fitted) == 113
    assert max(len(f.stroke3) for f in fitted) <= FACE_MAX_LEN
    again = strokes.preprocess_many([strokes.stroke3_to_drawing(f.stroke3) for f in fitted])
    refit = strokes.fit_stroke3_many(again, FACE_MAX_LEN)
    assert not any(f.further for f in refit)
    assert all(np.array_equal(a.stroke3, b.stroke3) for a, b in zip(fitted, refit))


@PROPERTY_SETTINGS
@given(drawings(min_points=3), st.lists(st.floats(min_value=0.0, max_value=3000.0), min_size=1, max_size=5))
def test_one_rdp_tree_serves_every_epsilon(drawing: strokes.Drawing, epsilons: list[float]) -> None:
    """The thresholds of the epsilon-0 tree give RDP's result at any epsilon (what fitting relies on)."""
    flat = strokes._flatten([drawing])
    thresholds = strokes._rdp_thresholds(flat.points, flat.stroke_lengths, 0.0)
    for epsilon in epsilons:
        assert np.array_equal(thresholds > epsilon, strokes._rdp_keep(flat.points, flat.stroke_lengths, epsilon))


def test_a_candidate_that_fits_the_probes_but_not_every_point_is_passed_over() -> None:
    """Probes at 0 and 1 fit every extent; the smallest extent that fits all coordinates is still found."""
    ratios = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 3 / 7])
    assert strokes._lattice_extents(ratios, np.array([len(ratios)]), np.array([1e-9])).tolist() == [7]


def test_fitting_a_sketch_over_the_point_caps() -> None:
    """Fitting to a maximum above the stroke cap must not refuse its own candidates (they have at most
    max_len + 1 points, so their cost is bounded by the model): a stroke-3 of one 900-point stroke."""
    rng = np.random.default_rng(0)
    n = 900
    points = np.column_stack([np.arange(n), (np.arange(n) % 2) * rng.uniform(0, 255, n)])
    s3 = strokes.drawing_to_stroke3([np.round(points)])
    fitted = strokes.fit_stroke3_many([s3], 800)[0]  # its first candidate keeps 594 points of the stroke
    assert fitted.further and len(fitted.stroke3) <= 800  # its candidates had over 512 points: none refused
