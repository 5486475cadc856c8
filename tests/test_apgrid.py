"""The AP grid: sky and flat areas left out, inside the box, neighbour table."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from live_stack.apgrid import (
    DETAIL_BAND,
    APGrid,
    APParams,
    detail_to_noise,
    lay_grid,
    neighbour_table,
)

H, W = 240, 320


def _boxes(grid: APGrid) -> list[tuple[slice, slice]]:
    return [(slice(y0, y1), slice(x0, x1)) for y0, x0, y1, x1 in grid.boxes.astype(int)]


@pytest.fixture(scope="module")
def planet(scene_canvas):
    return scene_canvas("planet", W, H)


@pytest.fixture(scope="module")
def moon(scene_canvas):
    return scene_canvas("moon", W, H)


@pytest.mark.parametrize("size", [32, 48])
def test_planet_grid_leaves_out_the_sky(planet, size) -> None:
    grid = lay_grid(planet, APParams(size=size, dense_under=0))  # the usual step
    sky_level = 0.02 * float(planet.max())
    disk = planet > 0.1 * float(planet.max())
    assert len(grid) >= 4
    assert grid.dropped_dim > 0
    for box in _boxes(grid):
        assert planet[box].max() > sky_level  # no AP box is all dark sky
        assert disk[box].any()  # every AP overlaps the disk
    # the kept APs sit on the disk, the sky's corners get none
    cy, cx = grid.centres[:, 0], grid.centres[:, 1]
    assert np.all(disk[cy, cx] | (np.hypot(cy - H / 2, cx - W / 2) < 0.3 * H))


def test_flat_boxes_are_dropped(moon) -> None:
    image = moon.copy()
    image[:, W // 2 :] = 0.6  # bright but featureless right half
    grid = lay_grid(image, APParams(size=32))
    assert grid.dropped_flat > 0 and grid.dropped_dim == 0
    assert np.all(grid.boxes[:, 1] < W // 2)  # no kept AP lies wholly in the flat half
    # the threshold is a parameter: with none, the flat APs are kept
    everything = lay_grid(image, APParams(size=32, min_structure=0.0))
    assert len(everything) == len(grid) + grid.dropped_flat


def test_a_small_moon_gets_an_ap_and_a_hot_pixel_does_not() -> None:
    # a planet-like disk, a 7-pixel moon on the black sky beside it, and a hot pixel
    yy, xx = np.mgrid[:H, :W]
    image = np.where(np.hypot(yy - 120, xx - 100) < 60, 0.5, 0.0).astype(np.float32)
    image += (0.05 * np.sin(yy / 3.0) * (image > 0)).astype(np.float32)  # bands
    image[np.hypot(yy - 120, xx - 250) < 3.6] = 0.9  # the moon
    image[40, 280] = 1.0  # the hot pixel
    grid = lay_grid(image, APParams(size=32, step=16))
    on_moon = [box for box in _boxes(grid) if image[box].max() >= 0.9 and
               image[box][image[box] >= 0.9].size >= 16]
    assert on_moon, "no AP covers the moon"
    for y0, x0, y1, x1 in grid.boxes.astype(int):
        assert not (y0 <= 40 < y1 and x0 <= 280 < x1 and image[y0:y1, x0:x1].sum() < 2)
    # judged by the mean of the box (as once), the moon's boxes were all dim
    moon_boxes = (grid.boxes[:, 1] > 200)
    assert moon_boxes.any()
    means = [float(image[box].mean()) for box in _boxes(grid)]
    assert min(m for m, keep in zip(means, moon_boxes, strict=True) if keep) < 0.1 * 0.9


def test_dim_threshold_is_a_parameter(planet) -> None:
    loose = lay_grid(planet, APParams(size=32, min_brightness=0.0, min_structure=0.0))
    strict = lay_grid(planet, APParams(size=32, min_brightness=0.3))
    assert loose.dropped_dim == 0 and strict.dropped_dim > 0
    assert len(strict) < len(loose)


@pytest.mark.parametrize("box", [(20, 30, 200, 290), (0, 0, H, W), (50, 60, 190, 230)])
def test_grid_stays_inside_the_box(moon, box) -> None:
    params = APParams(size=32, search=6)
    grid = lay_grid(moon, params, box=box)
    y0, x0, y1, x1 = box
    half = grid.size // 2  # the boxes stay inside (their search margins may reach past)
    assert len(grid) > 0
    assert np.all(grid.centres[:, 0] - half >= y0) and np.all(grid.centres[:, 0] + half <= y1)
    assert np.all(grid.centres[:, 1] - half >= x0) and np.all(grid.centres[:, 1] + half <= x1)
    # and reach its edges (where the moon's structure leaves an AP there)
    assert (grid.centres[:, 0] - half).min() == y0 and (grid.centres[:, 1] - half).min() == x0
    assert grid.shape == (H, W) and grid.size == 32 and grid.search == 6
    assert grid.fft_size == 32 + 2 * 6


def test_grid_spacing_and_empty_box(moon) -> None:
    params = APParams(size=40, min_structure=0.0, min_brightness=0.0)
    grid = lay_grid(moon, params)
    assert params.spacing == 30  # three quarters of the box
    ys, xs = np.unique(grid.centres[:, 0]), np.unique(grid.centres[:, 1])
    # the boxes reach the edges of the area (their search margins beyond it), at most a
    # step apart and evenly spread (whole pixels: two gaps differ by at most one)
    half = grid.size // 2
    for pos, side in ((ys, H), (xs, W)):
        gaps = np.diff(pos)
        assert gaps.max() - gaps.min() <= 1 and gaps.max() <= 30
        lo, hi = half, side - half  # the rim boxes' outer sides on the area's edges
        assert pos[0] == lo and pos[-1] == hi
        assert len(gaps) == -(-(hi - lo) // 30)  # no more APs than that needs
    assert grid.steps == (int(np.diff(ys).max()), int(np.diff(xs).max()))
    assert grid.step == max(grid.steps)
    assert len(grid) == len(ys) * len(xs)  # a full rectangular grid
    tiny = lay_grid(moon, params, box=(0, 0, 39, 39))  # smaller than one box
    assert len(tiny) == 0 and tiny.centres.shape == (0, 2)


def test_neighbour_table_of_a_full_grid(moon) -> None:
    params = APParams(size=32, step=24, min_structure=0.0, min_brightness=0.0)
    grid = lay_grid(moon, params)
    table = grid.neighbours
    assert table.shape == (len(grid), 8)
    pos = grid.centres.astype(float)
    for a in range(len(grid)):
        d = np.hypot(*(pos - pos[a]).T)
        expected = set(np.flatnonzero((d > 0) & (d <= 1.5 * 24)))
        got = set(table[a][table[a] >= 0])
        assert got == expected
        for b in got:  # symmetric
            assert a in table[b]
    counts = (table >= 0).sum(axis=1)
    assert counts.min() == 3 and counts.max() == 8  # corners and the interior


def test_neighbour_table_single_ap() -> None:
    assert (neighbour_table(np.array([[10, 10]]), 8) == -1).all()
    assert neighbour_table(np.zeros((0, 2), np.intp), 8).shape == (0, 8)


def test_grid_with_a_few_aps(planet) -> None:
    """2..8 APs: fewer candidates than table columns (once an IndexError)."""
    t = neighbour_table(np.array([[10, 10], [10, 18], [10, 100]]), 8)
    assert list(t[0][t[0] >= 0]) == [1] and list(t[2][t[2] >= 0]) == []
    grid = lay_grid(planet, APParams(size=64, step=64))
    assert 2 <= len(grid) <= 8
    assert grid.neighbours.shape == (len(grid), 8)


def test_lay_grid_rejects_a_colour_reference(moon) -> None:
    with pytest.raises(ValueError, match="reference"):
        lay_grid(np.stack([moon] * 3, axis=-1))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"size": 15}, "ap_size"), ({"size": 47}, "ap_size"), ({"size": 600}, "ap_size"),
    ({"step": 2}, "ap_step"), ({"step": 100}, "ap_step"), ({"search": 0}, "ap_search"),
    ({"size": 32, "search": 17}, "ap_search"), ({"min_brightness": 1.0}, "ap_min_brightness"),
    ({"min_structure": -0.1}, "ap_min_structure"),
    ({"dense_below": -1.0}, "ap_dense_below"), ({"dense_below": float("nan")}, "ap_dense_below"),
    ({"dense_under": -1}, "ap_dense_under"), ({"dense_under": 2.5}, "ap_dense_under"),
    ({"dense_under": True}, "ap_dense_under"),
])
def test_params_validation_names_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        APParams(**kwargs)


def _expected_detail_to_noise(reference, centres, size, sigma):
    """The ratio worked out from its definition, independently: the reference's windowed
    power in the band over white noise of ``sigma`` through the same window."""
    h = size // 2
    win = np.outer(np.hanning(size), np.hanning(size))
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    band = (f >= DETAIL_BAND[0]) & (f < DETAIL_BAND[1])
    ratios = []
    for y, x in centres:
        box = reference[y - h : y + h, x - h : x + h].astype(np.float64)
        power = np.abs(np.fft.rfft2((box - box.mean()) * win)[band]) ** 2
        ratios.append(power.sum() / (sigma**2 * (win**2).sum() * band.sum()))
    return float(np.median(ratios))


@pytest.fixture(scope="module")
def seeing_moon(moon):
    """The moon as the seeing leaves it (blurred 2 px): nothing left but noise in the
    corner of the spectrum, where the noise is measured."""
    return cv2.GaussianBlur(moon, (0, 0), 2.0)


@pytest.mark.parametrize("sigma", [0.002, 0.01, 0.05])
def test_detail_to_noise_is_the_band_power_over_the_noise(seeing_moon, sigma) -> None:
    """Known answer: a noise-free reference, and a frame that is the reference moved by a
    whole-pixel shift plus white noise of known standard deviation."""
    moon = seeing_moon
    rng = np.random.default_rng(7)
    centres = np.array([[y, x] for y in (60, 120, 180) for x in (60, 160, 260)])
    shift = (5, -3)
    frame = np.roll(moon, shift, axis=(0, 1)) + rng.normal(0, sigma, moon.shape)
    got = detail_to_noise(moon, frame.astype(np.float32), centres, 48, frame_shift=shift)
    want = _expected_detail_to_noise(moon, centres, 48, sigma)
    assert got == pytest.approx(want, rel=0.15)


def test_detail_to_noise_of_a_flat_reference_and_of_boxes_outside() -> None:
    rng = np.random.default_rng(1)
    flat = np.full((200, 200), 0.5, np.float32)
    frame = (flat + rng.normal(0, 0.02, flat.shape)).astype(np.float32)
    assert detail_to_noise(flat, frame, np.array([[100, 100], [60, 60]]), 64) < 0.05
    # no box inside both images: not measured
    assert np.isnan(detail_to_noise(flat, frame, np.array([[10, 10]]), 64))
    with pytest.raises(ValueError, match="2-D"):
        detail_to_noise(flat, np.stack([frame] * 3, axis=-1), np.array([[100, 100]]), 64)


def test_a_grid_twice_as_dense_where_the_detail_is_under_the_noise(seeing_moon) -> None:
    """The step follows the frame's detail-to-noise (ap_step 0): a frame as clean as the
    reference gets the usual grid, a frame whose noise buries its detail one twice as
    dense; a step given, or ``dense_below`` 0, is kept whatever the noise."""
    moon = seeing_moon
    rng = np.random.default_rng(2)
    params = APParams(size=48, min_structure=0.0, min_brightness=0.0)
    clean = (moon + rng.normal(0, 1e-4, moon.shape)).astype(np.float32)
    noisy = (moon + rng.normal(0, 0.2, moon.shape)).astype(np.float32)
    usual = lay_grid(moon, params, frame=clean)
    dense = lay_grid(moon, params, frame=noisy)
    assert usual.detail > params.dense_below > dense.detail
    assert not usual.dense and dense.dense
    assert dense.faint and not usual.faint  # its APs' frames: by the coarser measure
    assert usual.step <= params.spacing == 36 and (usual.step, usual.steps) == (
        lay_grid(moon, params).step, lay_grid(moon, params).steps)
    assert dense.step <= params.spacing_at(dense.detail) == 18
    assert len(dense) > 3 * len(usual)
    assert np.isnan(lay_grid(moon, params).detail)  # no frame: not measured
    given = lay_grid(moon, APParams(size=48, step=36, min_structure=0.0, min_brightness=0.0),
                     frame=noisy)
    never = lay_grid(moon, APParams(size=48, dense_below=0.0, min_structure=0.0,
                                    min_brightness=0.0), frame=noisy)
    for grid in (given, never):
        assert not grid.dense and np.array_equal(grid.centres, usual.centres)
    with pytest.raises(ValueError, match="frame"):
        lay_grid(moon, params, frame=np.stack([noisy] * 3, axis=-1))


def test_a_grid_of_a_few_aps_is_laid_twice_as_dense(planet) -> None:
    """A small disk keeps few APs on the usual grid: it gets one twice as dense (more APs
    reach its limb, each chosen more locally), unless ``dense_under`` is 0 or a step is
    given; a grid that keeps enough is left as it is."""
    usual = lay_grid(planet, APParams(size=64, dense_under=0))
    assert 2 <= len(usual) < 16 and not usual.dense
    few = lay_grid(planet, APParams(size=64))
    assert few.dense and few.step <= APParams(size=64).dense_spacing == 24
    assert not few.faint  # dense for its few APs, not for noise: the fine measure chooses
    assert len(few) > 2 * len(usual)
    assert f"keeps {len(usual)} APs" in few.dense_reason and "ap_dense_under" in few.dense_reason
    given = lay_grid(planet, APParams(size=64, step=48))
    assert not given.dense and np.array_equal(given.centres, usual.centres)
    disk = planet > 0.1 * float(planet.max())
    assert all(disk[box].any() for box in _boxes(few))  # still no box of sky alone
    enough = lay_grid(planet, APParams(size=64, dense_under=len(usual)))
    assert not enough.dense and np.array_equal(enough.centres, usual.centres)
