"""The reference: undoing shifts, averaging aligned frames, the covered box."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.align import GlobalAlignment
from live_stack.quality import rank
from live_stack.reference import (
    ReferenceParams,
    build_reference,
    covered_box,
    mean_aligned,
    reference_count,
    shift_frame,
)

H, W = 120, 160
#: Inner area compared (bicubic resampling and the replicated border spoil the rim).
INNER = (slice(20, -20), slice(20, -20))
DTYPES = ["uint8", "uint16", "float32"]


@pytest.fixture(scope="module")
def moon(scene_canvas):
    return scene_canvas("moon", 300, 260)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("dy", "dx"), [(0.0, 0.0), (2.0, -3.0), (1.4, -0.35), (-7.6, 9.25)])
def test_shift_frame_undoes_a_shift(moon, shifted_view, as_dtype, dtype, dy, dx) -> None:
    ref = shifted_view(moon, 0, 0, (H, W))
    frame = as_dtype(shifted_view(moon, dy, dx, (H, W)), dtype)
    out = shift_frame(frame, dy, dx)
    assert out.dtype == np.float32 and out.shape == (H, W)
    err = np.abs(out[INNER] - ref[INNER])
    # bicubic on a scene with sharp crater rims: small errors, larger at the rims only
    assert err.mean() < 0.006 and np.percentile(err, 99) < 0.05
    if (dy, dx) != (0.0, 0.0):  # the wrong direction is far off
        wrong = np.abs(shift_frame(frame, -dy, -dx)[INNER] - ref[INNER]).mean()
        assert err.mean() < 0.3 * wrong


def test_shift_frame_colour(moon, shifted_view) -> None:
    ref = shifted_view(moon, 0, 0, (H, W))
    frame = np.stack([shifted_view(moon, 3.5, -2.5, (H, W))] * 3, axis=-1).astype(np.float32)
    out = shift_frame(frame, 3.5, -2.5)
    assert out.shape == (H, W, 3)
    assert np.abs(out[INNER] - ref[INNER][:, :, None]).mean() < 0.006


def test_mean_aligned_of_shifted_copies_is_the_original(moon, shifted_view, as_dtype) -> None:
    ref = shifted_view(moon, 0, 0, (H, W))
    shifts = np.array([(0.5, 1.5), (-2.25, 3.0), (4.0, -1.75), (0.0, 0.0)])
    frames = [as_dtype(shifted_view(moon, dy, dx, (H, W), noise=0.02, seed=i), "uint16")
              for i, (dy, dx) in enumerate(shifts)]
    mean = mean_aligned(frames, shifts)
    assert mean.dtype == np.float32
    # averaging four frames halves the noise: within about 0.01 of the truth
    assert np.abs(mean[INNER] - ref[INNER]).mean() < 0.012
    single = np.abs(shift_frame(frames[0], *shifts[0])[INNER] - ref[INNER]).mean()
    assert np.abs(mean[INNER] - ref[INNER]).mean() < 0.7 * single


def test_mean_aligned_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError, match="empty"):
        mean_aligned([], np.zeros((0, 2)))
    with pytest.raises(ValueError):
        mean_aligned([np.zeros((16, 16), np.float32)] * 2, np.zeros((3, 2)))


def test_covered_box_known_answer() -> None:
    shifts = np.array([(2.5, -3.0), (-1.0, 4.0), (0.0, 0.0)])
    # frame 0 covers y in [-2.5, 97.5), x in [3, 123); frame 1 y [1, 101), x [-4, 116)
    assert covered_box(shifts, (100, 120)) == (1, 3, 97, 116)
    assert covered_box(np.zeros((0, 2)), (100, 120)) == (0, 0, 100, 120)
    assert covered_box(np.array([[0.2, -0.2]]), (100, 120)) == (0, 1, 99, 120)


def test_covered_box_rejects_frames_without_common_area() -> None:
    with pytest.raises(ValueError, match="no common area"):
        covered_box(np.array([(0.0, 0.0), (95.0, 0.0)]), (100, 120))


@pytest.mark.parametrize(("usable", "params", "expected"), [
    (100, ReferenceParams(), 10),
    (10, ReferenceParams(), 3),  # at least min_frames
    (2, ReferenceParams(), 2),  # never more than there are
    (10_000, ReferenceParams(), 400),  # at most max_frames
    (50, ReferenceParams(fraction=1.0), 50),
])
def test_reference_count(usable, params, expected) -> None:
    assert reference_count(usable, params) == expected


def test_build_reference_averages_the_best_aligned_frames(moon, shifted_view) -> None:
    import cv2

    shifts = np.array([(0.0, 0.0), (1.5, -2.0), (-3.0, 2.5), (4.0, 4.0), (-1.0, -5.0)])
    blur = [2.0, 0.5, 0.8, 0.6, 3.0]  # frames 1, 3, 2 are the sharpest
    frames = [cv2.GaussianBlur(shifted_view(moon, dy, dx, (H, W)).astype(np.float32),
                               (0, 0), b) for (dy, dx), b in zip(shifts, blur, strict=True)]
    ranking = rank(frames)
    ok = np.array([True, True, False, True, True])  # frame 2 failed to align
    alignment = GlobalAlignment(shifts=shifts, strength=np.ones(5), ok=ok, target_index=1,
                                mode="surface", shape=(H, W))
    ref = build_reference(frames, ranking, alignment, ReferenceParams(fraction=0.4,
                                                                     min_frames=1))
    assert list(ref.frames) == [1, 3]  # the best two usable, ascending
    assert ref.box == covered_box(shifts[[1, 3]], (H, W))
    assert ref.image.shape == (H, W) and ref.luminance.shape == (H, W)
    expected = mean_aligned([frames[1], frames[3]], shifts[[1, 3]])
    assert np.allclose(ref.image, expected, atol=1e-6)


def test_build_reference_colour_has_a_luminance(moon, shifted_view) -> None:
    frames = [np.stack([shifted_view(moon, 0, 0, (H, W))] * 3, axis=-1).astype(np.float32)] * 3
    alignment = GlobalAlignment(shifts=np.zeros((3, 2)), strength=np.ones(3),
                                ok=np.ones(3, bool), target_index=0, mode="surface",
                                shape=(H, W))
    ref = build_reference(frames, rank(frames), alignment)
    assert ref.image.shape == (H, W, 3) and ref.luminance.shape == (H, W)
    assert np.allclose(ref.luminance, ref.image[:, :, 0], atol=1e-4)


def test_build_reference_needs_an_aligned_frame(moon, shifted_view) -> None:
    frames = [shifted_view(moon, 0, 0, (H, W)).astype(np.float32)] * 2
    alignment = GlobalAlignment(shifts=np.zeros((2, 2)), strength=np.zeros(2),
                                ok=np.zeros(2, bool), target_index=0, mode="surface",
                                shape=(H, W))
    with pytest.raises(ValueError, match="no frame could be aligned"):
        build_reference(frames, rank(frames), alignment)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"fraction": 0.0}, "reference_fraction"), ({"fraction": 1.5}, "reference_fraction"),
    ({"min_frames": 0}, "reference_min_frames"),
    ({"min_frames": 5, "max_frames": 4}, "reference_max_frames"),
])
def test_params_validation_names_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        ReferenceParams(**kwargs)
