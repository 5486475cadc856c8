"""Frame quality: sharp above blurred, noise robustness, per-cell sums, box lookups."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from live_stack.quality import (
    MAX_SCRATCH_BUFFERS,
    METHODS,
    QualityParams,
    Scratch,
    box_quality,
    detail_response,
    quality_map,
    rank,
    with_faint_maps,
)

H, W = 240, 320
DTYPES = ["uint8", "uint16", "float32"]
#: Noise (fraction of full scale) of the noise-robustness test: strong enough to fool an
#: unfiltered Laplacian (checked below), as in a short-exposure planetary frame.
STRONG_NOISE = 0.04


@pytest.fixture(scope="module")
def moon(scene_canvas):
    return scene_canvas("moon", W, H)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_blurred_frame_ranks_below_its_sharp_original(moon, as_dtype, method, dtype) -> None:
    params = QualityParams(method=method)
    frames = [as_dtype(_blur(moon, s), dtype) for s in (2.5, 0.6, 1.5, 1.0)]
    ranking = rank(frames, params, threads=1)
    # sharper is better: sigma 0.6, 1.0, 1.5, 2.5
    assert list(ranking.order) == [1, 3, 2, 0]
    assert np.all(np.diff(ranking.quality[ranking.order]) < 0)


@pytest.mark.parametrize("method", METHODS)
def test_noise_robust_with_default_params(moon, method) -> None:
    """Noise does not pass for detail: the default pre-blur keeps a noisy
    sharp frame above a clean blurred one, and a noisy blurred one below a clean sharp
    one."""
    params = QualityParams(method=method)
    sharp, blurred = _blur(moon, 0.7), _blur(moon, 2.0)
    q = {name: quality_map(img, params).quality for name, img in {
        "sharp": sharp, "blurred": blurred,
        "sharp_noisy": _noisy(sharp, STRONG_NOISE, 1),
        "blurred_noisy": _noisy(blurred, STRONG_NOISE, 2)}.items()}
    assert q["sharp_noisy"] > 1.5 * q["blurred"]
    assert q["sharp"] > 1.5 * q["blurred_noisy"]
    # the noise moves the measure little (at full resolution a little more than with the
    # old 2x downsampling, which gave up ranking accuracy on bright captures for it)
    assert q["blurred_noisy"] == pytest.approx(q["blurred"], rel=0.2)


def test_unfiltered_laplacian_is_fooled_by_noise(moon) -> None:
    """The counter-example that makes the test above meaningful: without pre-blur and
    downsampling, noise outweighs the detail."""
    raw = QualityParams(method="laplacian", downsample=1, blur=1)
    sharp, blurred = _blur(moon, 0.7), _blur(moon, 2.0)
    assert quality_map(_noisy(blurred, STRONG_NOISE, 2), raw).quality > \
        quality_map(sharp, raw).quality


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_give_the_same_quality(moon, as_dtype, dtype) -> None:
    """The scale is that of the float32 [0, 1] frame whatever the dtype (8-bit rounding in
    the integer filters adds a little energy in the flattest cells only)."""
    ref = quality_map(as_dtype(moon, "float32"), QualityParams())
    qm = quality_map(as_dtype(moon, dtype), QualityParams())
    assert qm.quality == pytest.approx(ref.quality, rel=0.02)
    assert np.corrcoef(qm.cells.ravel(), ref.cells.ravel())[0, 1] > 0.999


def test_colour_frames_use_the_luminance(moon) -> None:
    rgb = np.repeat(moon[:, :, None], 3, axis=2)
    a = quality_map(rgb, QualityParams()).cells
    b = quality_map(moon, QualityParams()).cells
    assert np.allclose(a, b, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize(("downsample", "cell"), [(2, 8), (1, 16), (3, 5)])
def test_cells_are_sums_of_the_detail_response(moon, downsample, cell) -> None:
    params = QualityParams(downsample=downsample, cell=cell)
    qm = quality_map(moon, params)
    resp = detail_response(moon, params).astype(np.float64)
    rows, cols = resp.shape[0] // cell, resp.shape[1] // cell
    direct = resp[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).sum(axis=(1, 3))
    assert qm.cells.shape == (rows, cols)
    assert qm.scale == downsample * cell
    assert np.allclose(qm.cells, direct, rtol=1e-4, atol=1e-9)
    assert qm.quality == pytest.approx(direct.mean() / qm.scale**2, rel=1e-4)


def test_box_quality_matches_whole_cells() -> None:
    rng = np.random.default_rng(4)
    scale = 16
    maps = rng.random((3, 10, 12))
    boxes = np.array([[16, 32, 64, 96], [0, 0, 160, 192], [48, 160, 80, 192]], float)
    out = box_quality(maps, scale, boxes)
    for f in range(3):
        for b, (y0, x0, y1, x1) in enumerate(boxes.astype(int) // scale):
            direct = maps[f, y0:y1, x0:x1].sum() / ((y1 - y0) * (x1 - x0) * scale**2)
            assert out[f, b] == pytest.approx(direct, rel=1e-9)
    # per-frame offsets move the looked-up box: frame 1 sees the box one cell further
    off = np.array([[0, 0], [16, -32], [0, 0]], float)
    moved = box_quality(maps, scale, boxes[:1], off)
    assert moved[1, 0] == pytest.approx(maps[1, 2:5, 0:4].sum() / (3 * 4 * scale**2))
    assert moved[0, 0] == pytest.approx(out[0, 0])


def test_box_quality_interpolates_partial_cells() -> None:
    maps = np.zeros((1, 4, 4))
    maps[0, 1, 1] = 64.0  # one cell of 8x8 px holding energy 64: density 1 per px
    # a box covering the left half of that cell, and a box twice its size around it
    out = box_quality(maps, 8, np.array([[8, 8, 16, 12], [4, 4, 20, 20]], float))
    assert out[0, 0] == pytest.approx(1.0)
    assert out[0, 1] == pytest.approx(64.0 / 256.0)


def test_box_quality_rejects_bad_maps() -> None:
    with pytest.raises(ValueError, match="maps"):
        box_quality(np.zeros((4, 4)), 8, np.zeros((1, 4)))


def test_rank_order_best_and_normalized(moon) -> None:
    frames = [_blur(moon, s) for s in (1.8, 0.8, 3.0)]
    calls = []
    r = rank(frames, progress=lambda done, total: calls.append((done, total)), threads=2)
    assert list(r.order) == [1, 0, 2]
    assert list(r.best(2)) == [1, 0]
    assert list(r.best(0)) == [1]  # at least one
    assert r.normalized.max() == pytest.approx(1.0)
    assert r.maps.shape[0] == 3 and r.scale == QualityParams().downsample * QualityParams().cell
    assert calls and calls[-1] == (3, 3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scratch_buffers_give_the_same_cells(moon, as_dtype, method, dtype) -> None:
    """Work buffers reused across frames of different content and sizes change nothing,
    and the downsampled and unblurred paths use them as well."""
    scratch = Scratch()
    for params in (QualityParams(method=method), QualityParams(method=method, blur=1),
                   QualityParams(method=method, downsample=2, blur=5, cell=8)):
        for frame in (as_dtype(moon, dtype), as_dtype(_blur(moon, 1.5), dtype),
                      as_dtype(moon[:200, :288], dtype), as_dtype(moon, dtype)):
            fresh = quality_map(frame, params).cells
            reused = quality_map(frame, params, scratch=scratch).cells
            np.testing.assert_array_equal(reused, fresh)


def test_scratch_keeps_a_bounded_number_of_buffers(moon) -> None:
    scratch = Scratch()
    for side in range(40, 120, 8):  # frames of ten sizes through one Scratch
        quality_map(moon[:side, :side], QualityParams(), scratch=scratch)
    assert len(scratch._buffers) <= MAX_SCRATCH_BUFFERS


def test_rank_in_threads_equals_one_thread(moon) -> None:
    """Each worker thread keeps its own buffers: two threads rank as one does."""
    frames = [_noisy(_blur(moon, s), 0.01, seed) for seed, s in enumerate(
        (0.6, 2.5, 1.0, 1.5, 0.8, 2.0, 1.2, 3.0))]
    one, two = rank(frames, threads=1), rank(frames, threads=2)
    np.testing.assert_array_equal(one.maps, two.maps)
    assert list(one.order) == list(two.order)


def test_rank_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        rank([])


def test_quality_map_rejects_a_too_small_frame() -> None:
    with pytest.raises(ValueError, match="too small"):
        quality_map(np.zeros((20, 20), np.uint8), QualityParams(downsample=2, cell=16))


@pytest.mark.parametrize(("field", "value"), [
    ("method", "fft"), ("downsample", 0), ("downsample", 9), ("blur", 4), ("blur", 33),
    ("cell", 1), ("cell", 65), ("faint_blur", 4), ("faint_blur", 33),
    ("faint_downsample", 0), ("faint_downsample", 9),
])
def test_params_validation_names_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"quality_{field}"):
        QualityParams(**{field: value})


def test_faint_cells_too_large_name_the_field() -> None:
    with pytest.raises(ValueError, match="quality_faint_downsample"):
        QualityParams(downsample=8, cell=64, faint_downsample=3)  # 512 px cells, undivided


@pytest.mark.parametrize("dtype", DTYPES)
def test_faint_measure_is_the_coarse_measure_on_the_same_cells(moon, as_dtype, dtype) -> None:
    """The second layer is exactly the coarser measure's own cells, on the same 16-px
    grid; with ``faint_blur=0`` there is none."""
    frame = as_dtype(moon, dtype)
    params = QualityParams()
    qm = quality_map(frame, params, scratch=Scratch())
    coarse = quality_map(frame, QualityParams(downsample=2, blur=5, cell=8, faint_blur=0))
    assert params.faint == QualityParams(downsample=2, blur=5, cell=8, faint_blur=0)
    assert qm.faint is not None and qm.scale == coarse.scale == 16
    np.testing.assert_array_equal(qm.faint, coarse.cells)
    assert qm.layers.shape == (2,) + qm.cells.shape
    none = quality_map(frame, QualityParams(faint_blur=0))
    assert none.faint is None and none.layers.shape == (1,) + none.cells.shape
    np.testing.assert_array_equal(none.cells, qm.cells)


def test_faint_downsample_that_does_not_divide_the_cells_falls_back_to_full_size() -> None:
    params = QualityParams(downsample=3, cell=5)  # 15-px cells: measured at full size
    assert params.faint == QualityParams(downsample=1, blur=5, cell=15, faint_blur=0)


def test_faint_maps_are_a_second_pass_and_selection_picks_one(moon) -> None:
    """rank() takes the fine measure only; with_faint_maps() adds the coarser one's cells
    (what quality_map() gives live), on the same cells."""
    frames = [_noisy(_blur(moon, s), 0.01, seed) for seed, s in enumerate((0.6, 2.5, 1.0))]
    fine = rank(frames, threads=2)
    assert fine.faint_maps is None and fine.selection_maps(True) is fine.maps
    r = with_faint_maps(fine, frames, threads=2)
    np.testing.assert_array_equal(r.maps, fine.maps)
    assert with_faint_maps(r, frames) is r
    assert r.faint_maps is not None and r.faint_maps.shape == r.maps.shape
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(r.faint_maps[i], quality_map(f, QualityParams()).faint)
    assert r.selection_maps(True) is r.faint_maps and r.selection_maps(False) is r.maps
    plain = rank(frames, QualityParams(faint_blur=0), threads=1)
    assert with_faint_maps(plain, frames) is plain and plain.selection_maps(True) is plain.maps
    with pytest.raises(ValueError, match="frames has 2 frames"):
        with_faint_maps(fine, frames[:2])
