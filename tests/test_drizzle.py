"""Drizzle and resampling: the geometry of the drops, the accumulator, and drizzle 2x on an
undersampled capture recovering detail beyond the sensor's Nyquist limit (closer to a 2x
truth than the 1x stack resampled), offline and live."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from live_stack.apgrid import APGrid, APParams
from live_stack.drizzle import (
    DrizzleParams,
    DrizzleSums,
    crop_output,
    downscale,
    fine_shape,
    make_sums,
    scale_box,
    scale_points,
    upscale,
)
from live_stack.io.images import read_image
from live_stack.io.ser import SerWriter
from live_stack.live import LiveParams, LiveStacker
from live_stack.pipeline import PipelineParams, run
from live_stack.reprocess_cli import main
from live_stack.simulate import (
    canvas_margin,
    global_offsets,
    iter_frames,
    render_scene,
    seeing_params,
    truth_view,
)
from live_stack.simulate.score import score
from live_stack.stack import Blend, PatchSums

#: The undersampled capture: sensor frames, frames, and the scale of the truth.
SENSOR = (96, 128)
FRAMES = 60
TRUTH_SCALE = 2
#: Sharp seeing (sigmas in truth pixels, half a sensor pixel), plenty of sub-pixel jitter,
#: little photon noise: the sensor's pixels are what limits the detail.
SEEING = {"blur_median": 0.5, "blur_min": 0.3, "blur_max": 3.0, "blur_spread": 0.2,
          "jitter_rms": 3.0, "warp_rms": 0.4, "full_well": 50000.0}
AP = APParams(size=32, search=6)
#: Drizzle 2x must beat the resampled 1x stack by this much against the 2x truth (dB).
DRIZZLE_GAIN_DB = 0.15
SEEDS = (0, 1, 2)
#: The sensor's Nyquist frequency in cycles per truth pixel, the band above it checked
#: (from a little above it, past Lanczos's transition, to BAND_TOP), and how well drizzle
#: must reproduce the truth there (correlation), absolutely and against resampling.
SENSOR_NYQUIST = 0.5 / TRUTH_SCALE
BAND_MARGIN = 1.08
BAND_TOP = 0.45
BAND_CORRELATION = 0.6
BAND_GAIN = 0.2


def _grid(centres, size: int = 16, search: int = 4, shape=(64, 64)) -> APGrid:
    return APGrid(centres=np.array(centres, dtype=np.intp).reshape(-1, 2), size=size,
                  search=search, shape=shape)


def test_params_and_accumulator_choice() -> None:
    grid = _grid([[32, 32]])
    assert isinstance(make_sums(grid, 1, DrizzleParams()), PatchSums)
    assert isinstance(make_sums(grid, 3, DrizzleParams(scale=2.0, method="resample")),
                      PatchSums)
    assert isinstance(make_sums(grid, 3, DrizzleParams(scale=1.5)), DrizzleSums)
    for kwargs, match in (({"scale": 2.5}, "drizzle_scale"), ({"method": "nearest"},
                          "drizzle_method"), ({"pixfrac": 0.0}, "drizzle_pixfrac")):
        with pytest.raises(ValueError, match=match):
            DrizzleParams(**kwargs)


def test_quarter_pixel_shifts_fill_the_fine_grid_exactly() -> None:
    """With scale 2 and pixfrac 0.5 a drop is one fine pixel; frames displaced by
    +-0.25 px land exactly on the four phases of the fine grid."""
    grid = _grid([[30, 34]])
    n, search, size = grid.fft_size, grid.search, grid.size
    sums = DrizzleSums(grid, 1, DrizzleParams(scale=2.0, pixfrac=0.5))
    rng = np.random.default_rng(0)
    expected = np.zeros((2 * size, 2 * size), np.float32)
    for a, dy in enumerate((0.25, -0.25)):
        for b, dx in enumerate((0.25, -0.25)):
            patch = rng.random((1, 1, n, n)).astype(np.float32)
            sums.add(np.array([0]), sums.prepare(np.array([0]), patch, [dy], [dx]), [dy], [dx])
            expected[a::2, b::2] = patch[0, 0, search : search + size, search : search + size]
    out = sums.mean_patches()
    assert out.shape == (1, 1, 2 * size, 2 * size)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-5)
    assert sums.fine_grid(grid).centres.tolist() == [[60, 68]]


@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("pixfrac", [0.2, 0.5, 1.0])
def test_a_flat_field_stays_flat(scale, pixfrac) -> None:
    """Whatever the shifts, scale and drop size (holes included), a constant comes out."""
    grid = _grid([[21, 23], [33, 35]])
    sums = DrizzleSums(grid, 3, DrizzleParams(scale=scale, pixfrac=pixfrac))
    rng = np.random.default_rng(1)
    n = grid.fft_size
    for _ in range(3):
        dy, dx = rng.uniform(-2, 2, 2), rng.uniform(-2, 2, 2)
        patches = np.broadcast_to(np.float32([0.2, 0.5, 0.7])[None, :, None, None],
                                  (2, 3, n, n)).copy()
        aps = np.arange(2)
        sums.add(aps, sums.prepare(aps, patches, dy, dx), dy, dx)
    out = sums.mean_patches()
    assert out.shape == (2, 3, sums.box, sums.box) and np.isfinite(out).all()
    for c, value in enumerate((0.2, 0.5, 0.7)):
        np.testing.assert_allclose(out[:, c], value, atol=1e-4)


def test_taking_a_frame_out_again() -> None:
    grid = _grid([[21, 23], [33, 35]])
    sums = DrizzleSums(grid, 1, DrizzleParams(scale=2.0))
    rng = np.random.default_rng(2)
    aps = np.arange(2)
    patches = rng.random((2, 1, grid.fft_size, grid.fft_size)).astype(np.float32)
    first = sums.prepare(aps, patches, [0.3, -0.2], [0.1, 0.4])
    sums.add(aps, first, [0.3, -0.2], [0.1, 0.4])
    kept = sums.sums.copy()
    other = sums.prepare(aps[:1], patches[:1] * 0.5, [1.2], [-0.7])
    sums.add(aps[:1], other, [1.2], [-0.7])
    sums.add(aps[:1], other, [1.2], [-0.7], sign=-1)
    np.testing.assert_allclose(sums.sums, kept, atol=1e-6)
    assert sums.counts.tolist() == [1, 1]
    np.testing.assert_allclose(sums.shift_sums, [[0.3, 0.1], [-0.2, 0.4]])
    assert np.isnan(DrizzleSums(grid, 1, DrizzleParams(scale=2.0)).mean_patches()).all()
    with pytest.raises(ValueError, match="repeat"):
        sums.add(np.array([0, 0]), np.concatenate([other, other]), [0, 0], [0, 0])
    with pytest.raises(ValueError, match="sign"):
        sums.add(aps[:1], other, [0], [0], sign=2)
    with pytest.raises(ValueError, match="patches must be"):
        sums.prepare(aps, patches[:, :, :8, :8], [0, 0], [0, 0])


def test_scaling_helpers() -> None:
    assert fine_shape((101, 60), 1.5) == (151, 90)
    assert scale_box((3, 4, 99, 58), 1.5) == (5, 6, 148, 87)
    assert scale_box((3, 4, 99, 58), 1.0) == (3, 4, 99, 58)
    assert scale_points(np.array([[10, 20]]), (3, 4, 99, 58), 2.0).tolist() == [[14, 32]]
    ramp = np.tile(np.arange(40, dtype=np.float32), (30, 1))
    up = upscale(ramp, 2.0)
    assert up.shape == (60, 80)
    # fine pixel X covers sensor [X/2, (X+1)/2): its centre is at (X + 0.5) / 2 - 0.5
    centres = (np.arange(80) + 0.5) / 2 - 0.5
    # (Lanczos reproduces a ramp to ~0.015 px, alternating; a misplaced grid would be off by
    # a quarter of a pixel everywhere)
    np.testing.assert_allclose(up[30, 8:-8], centres[8:-8], atol=0.02)
    assert abs(float(np.mean(up[30, 8:-8] - centres[8:-8]))) < 1e-3
    np.testing.assert_allclose(downscale(up, ramp.shape)[:, 4:-4], ramp[:, 4:-4], atol=2e-3)


def _undersampled(seed: int, scene: str = "moon"):
    """Frames of a scene rendered at twice the sensor's resolution, seen through the
    simulator's seeing there, then integrated over 2x2 truth pixels by the sensor."""
    h, w = SENSOR
    params = seeing_params("good", **SEEING)
    offsets = global_offsets(frames=FRAMES, params=params, seed=seed)
    margin = canvas_margin(offsets, params)
    s = TRUTH_SCALE
    canvas = render_scene(scene, width=s * w + 2 * margin, height=s * h + 2 * margin, seed=seed,
                          scale=s * h)
    frames = []
    for fine in iter_frames(canvas, frames=FRAMES, params=params, seed=seed,
                            frame_shape=(s * h, s * w)):
        binned = fine.astype(np.float32).reshape(h, s, w, s).mean(axis=(1, 3))
        frames.append(np.rint(binned).astype(np.uint8))
    return frames, truth_view(canvas, (s * h, s * w))


@pytest.fixture(scope="module")
def undersampled():
    return {seed: _undersampled(seed) for seed in SEEDS}


def _beyond_nyquist(image: np.ndarray, truth: np.ndarray, shift: tuple[float, float]) -> float:
    """Correlation of ``image`` with the (registered) truth over the spatial frequencies
    the sensor cannot sample: between its Nyquist limit and :data:`BAND_TOP`."""
    h, w = image.shape
    th, tw = truth.shape
    fy, fx = sfft.fftfreq(th)[:, None], sfft.rfftfreq(tw)[None, :]
    ramp = np.exp(2j * np.pi * (fy * shift[0] + fx * shift[1]))  # truth(y + sy, x + sx)
    moved = sfft.irfft2(sfft.rfft2(truth.astype(np.float64)) * ramp, s=(th, tw))[:h, :w]
    window = np.outer(np.hanning(h), np.hanning(w))
    a = sfft.fft2((image - image.mean()) * window)
    b = sfft.fft2((moved - moved.mean()) * window)
    f = np.hypot(sfft.fftfreq(h)[:, None], sfft.fftfreq(w)[None, :])
    band = (f > SENSOR_NYQUIST * BAND_MARGIN) & (f < BAND_TOP)
    cross = float(np.real((a * np.conj(b))[band].sum()))
    return cross / float(np.sqrt((np.abs(a[band]) ** 2).sum() * (np.abs(b[band]) ** 2).sum()))


@pytest.mark.parametrize("seed", SEEDS)
def test_drizzle_beats_resampling_beyond_nyquist(undersampled, seed) -> None:
    frames, truth = undersampled[seed]
    psnr, band = {}, {}
    for method in ("resample", "drizzle"):
        params = PipelineParams(stack_sizes=("50%",), ap=AP,
                                drizzle=DrizzleParams(scale=2.0, method=method))
        stack = run(frames, params).stacks[0]
        y0, x0, y1, x1 = stack.box
        assert stack.image.shape == (2 * (y1 - y0), 2 * (x1 - x0))
        assert stack.ap_weight.shape == stack.image.shape
        s = score(stack.image, truth, border=8)
        psnr[method] = s.psnr
        band[method] = _beyond_nyquist(stack.image, truth, (s.shift_y, s.shift_x))
    assert psnr["drizzle"] > psnr["resample"] + DRIZZLE_GAIN_DB
    # the gain is detail the sensor alone cannot resolve
    assert band["drizzle"] > BAND_CORRELATION
    assert band["drizzle"] > band["resample"] + BAND_GAIN


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_other_scales(undersampled, scale) -> None:
    frames, truth = undersampled[SEEDS[0]]
    result = run(frames, PipelineParams(stack_sizes=("50%",), ap=AP,
                                        drizzle=DrizzleParams(scale=scale)))
    stack = result.stacks[0]
    fy0, fx0, fy1, fx1 = scale_box(stack.box, scale)
    assert stack.image.shape == (fy1 - fy0, fx1 - fx0)
    assert np.isfinite(stack.image).all()
    # brought back to the truth's scale, it matches about as well as the 2x drizzle
    small = downscale(stack.image, (round((fy1 - fy0) * 2 / scale),
                                    round((fx1 - fx0) * 2 / scale)))
    assert score(small, truth, border=8).psnr > 22.0


def test_scale_one_is_todays_stack(undersampled) -> None:
    frames, _ = undersampled[SEEDS[0]]
    base = run(frames, PipelineParams(ap=AP, threads=1)).stacks[0]
    same = run(frames, PipelineParams(ap=AP, threads=1, drizzle=DrizzleParams(
        method="resample", pixfrac=0.9))).stacks[0]
    np.testing.assert_array_equal(base.image, same.image)
    np.testing.assert_array_equal(base.ap_weight, same.ap_weight)


def test_crop_output_resamples(undersampled) -> None:
    frames, _ = undersampled[SEEDS[0]]
    result = run(frames, PipelineParams(ap=AP, stack_sizes=("50%",)))
    one = result.stacks[0]
    # crop_output on the 1x blend with "resample" upscales it
    full = np.zeros(result.alignment.shape, np.float32)
    y0, x0, y1, x1 = one.box
    full[y0:y1, x0:x1] = one.image
    blend = Blend(image=full, ap_weight=np.ones_like(full), reference_weight=np.zeros_like(full))
    image, weight = crop_output(blend, one.box, DrizzleParams(scale=2.0, method="resample"))
    assert image.shape == weight.shape == (2 * (y1 - y0), 2 * (x1 - x0))
    np.testing.assert_array_equal(image, upscale(full, 2.0)[2 * y0 : 2 * y1, 2 * x0 : 2 * x1])
    # and at scale 1 it is the plain crop
    same, _ = crop_output(blend, one.box)
    np.testing.assert_array_equal(same, one.image)


def test_reprocess_drizzle(undersampled, tmp_path, capsys) -> None:
    frames, truth = undersampled[SEEDS[0]]
    h, w = SENSOR
    path = tmp_path / "under.ser"
    with SerWriter(path, width=w, height=h) as writer:
        for f in frames:
            writer.write(f)
    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    common = ["--ap-size", "32", "--ap-search", "6", "--stack", "50%", "-q"]
    assert main([str(path), "-o", str(one)] + common) == 0
    assert main([str(path), "-o", str(two), "--drizzle-scale", "2"] + common) == 0
    img1, _ = read_image(one)
    img2, meta = read_image(two)
    assert meta["parameters"]["drizzle"] == {"scale": 2.0, "method": "drizzle", "pixfrac": 0.5}
    assert img2.shape == (2 * img1.shape[0], 2 * img1.shape[1])
    assert score(img2, truth, border=8).psnr > score(upscale(img1, 2.0), truth, border=8).psnr


def test_live_drizzle(undersampled) -> None:
    frames, truth = undersampled[SEEDS[0]]
    snaps = {}
    for scale in (1.0, 2.0):
        st = LiveStacker(LiveParams(buffer_size=40, warmup=20, stack_size="50%", ap=AP))
        if scale != 1.0:
            st.set_param("drizzle_scale", scale)
        for f in frames:
            st.add(f)
        snaps[scale] = st.snapshot()
    one, two = snaps[1.0], snaps[2.0]
    assert two.box == one.box
    assert two.image.shape == (2 * one.image.shape[0], 2 * one.image.shape[1])
    assert two.ap_size == 2 * one.ap_size == 2 * AP.size
    np.testing.assert_array_equal(two.ap_centres, 2 * one.ap_centres)
    assert score(two.image, truth, border=8).psnr > score(upscale(one.image, 2.0), truth,
                                                          border=8).psnr
