"""Stacking and blending: patch sums, exact Fourier shifts, mean positions, smooth weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft as sfft

from live_stack.apgrid import APParams, lay_grid
from live_stack.stack import (
    BlendParams,
    PatchSums,
    blend,
    bump,
    frame_patches,
    frame_spectra,
    open_sides,
    shifted_spectra,
)

H, W = 240, 320
N = 40  # patch side of the PatchSums tests
BOX = 24  # box side (patch less a margin of 8 on each side)


def _patches(k: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((k, channels, N, N)).astype(np.float32)


# ---------------------------------------------------------------- patch sums
def test_add_then_subtract_returns_to_zero() -> None:
    sums = PatchSums(aps=5, channels=3, size=N)
    aps = [np.array([0, 2, 4]), np.array([1, 2]), np.array([4])]
    parts = []
    for i, a in enumerate(aps):
        spec = shifted_spectra(_patches(len(a), 3, seed=i), np.full(len(a), 0.3 * i),
                               np.full(len(a), -0.7))
        parts.append((a, spec, np.full(len(a), 0.3 * i), np.full(len(a), -0.7)))
        sums.add(a, spec, parts[-1][2], parts[-1][3])
    assert list(sums.counts) == [1, 1, 2, 0, 2]
    assert np.abs(sums.spectra).max() > 1.0
    for a, spec, dy, dx in reversed(parts):
        sums.add(a, spec, dy, dx, sign=-1)
    assert np.all(sums.counts == 0)
    assert np.abs(sums.spectra).max() < 1e-4
    assert np.allclose(sums.shift_sums, 0.0)
    assert np.isnan(sums.mean_patches(BOX)).all()  # empty APs give NaN patches


def test_add_rejects_repeated_aps_and_bad_sign() -> None:
    sums = PatchSums(aps=3, channels=1, size=N)
    spec = shifted_spectra(_patches(2), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="aps"):
        sums.add(np.array([1, 1]), spec, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="sign"):
        sums.add(np.array([0, 1]), spec, np.zeros(2), np.zeros(2), sign=2)


def _band_limited(k: int, seed: int = 0) -> np.ndarray:
    """Random patches without content near the Nyquist frequency (which a real FFT
    cannot shift by a fraction of a pixel)."""
    spec = sfft.rfft2(_patches(k, seed=seed))
    fy = np.abs(sfft.fftfreq(N))[:, None]
    fx = sfft.rfftfreq(N)[None, :]
    spec[..., (fy > 0.3) | (fx > 0.3)] = 0
    return sfft.irfft2(spec, s=(N, N)).astype(np.float32)


def test_fourier_shift_of_a_patch_undone_exactly() -> None:
    p = _band_limited(1)
    # whole-pixel displacement (circular): undoing (3, -2) gives the original back
    q = np.roll(p, (3, -2), axis=(2, 3))
    back = sfft.irfft2(shifted_spectra(q, np.array([3.0]), np.array([-2.0])), s=(N, N))
    assert np.allclose(back, p, atol=1e-5)
    # sub-pixel: displace by (+0.4, -1.3) in the Fourier domain, then undo
    there = sfft.irfft2(shifted_spectra(p, np.array([-0.4]), np.array([1.3])), s=(N, N))
    assert not np.allclose(there, p, atol=1e-2)
    again = sfft.irfft2(shifted_spectra(there.astype(np.float32), np.array([0.4]),
                                        np.array([-1.3])), s=(N, N))
    assert np.allclose(again, p, atol=1e-4)


def test_mean_patches_places_patches_at_the_mean_position() -> None:
    """Frames show a patch displaced by d_i; each is undone, the mean d is put back."""
    p = _patches(1)[0]
    shifts = np.array([(1.0, 2.0), (3.0, -2.0), (2.0, 3.0)])  # mean (2, 1)
    sums = PatchSums(aps=2, channels=1, size=N)
    for dy, dx in shifts:
        shown = np.roll(p, (int(dy), int(dx)), axis=(1, 2))[None]  # displaced by +d
        sums.add(np.array([1]), shifted_spectra(shown, np.array([dy]), np.array([dx])),
                 np.array([dy]), np.array([dx]))
    out = sums.mean_patches(BOX)
    assert out.shape == (2, 1, BOX, BOX)
    assert np.isnan(out[0]).all()
    mg = (N - BOX) // 2
    expected = np.roll(p, (2, 1), axis=(1, 2))[:, mg : mg + BOX, mg : mg + BOX]
    assert np.allclose(out[1], expected, atol=1e-5)


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255), (np.uint16, 65535),
                                            (np.float32, 1.0)])
def test_frame_patches_scale_to_unit_range(dtype, top) -> None:
    frame = np.full((64, 64), top, dtype=dtype)
    frame[10, 12] = 0
    patches = frame_patches(frame, np.array([[16, 16], [40, 40]]), 16)
    assert patches.shape == (2, 1, 16, 16) and patches.dtype == np.float32
    assert patches[1].min() == pytest.approx(1.0)
    assert patches[0, 0, 2, 4] == 0.0  # (10, 12) in the patch cut from (8, 8)
    rgb = np.stack([frame] * 3, axis=-1)
    assert frame_patches(rgb, np.array([[16, 16]]), 16).shape == (1, 3, 16, 16)


def test_frame_spectra_is_patches_then_shift() -> None:
    frame = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    centres = np.array([[20, 20], [40, 44]])
    dy, dx = np.array([0.5, -1.0]), np.array([0.25, 2.0])
    a = frame_spectra(frame, centres, 16, dy, dx)
    b = shifted_spectra(frame_patches(frame, centres, 16), dy, dx)
    assert np.allclose(a, b)


# ---------------------------------------------------------------- blending
def test_bump_is_a_smooth_window() -> None:
    for size in (16, 32, 48):
        b = bump(size)
        assert b.shape == (size, size) and b.max() <= 1.0 and b.min() >= 0.0
        assert np.allclose(b, b.T) and np.allclose(b, b[::-1, ::-1])
        # zero at the box edge (to second order): no step where the box ends
        assert b[0].max() < (math.pi / size) ** 2
        assert b[size // 2, size // 2] > 0.95
    # bumps half a box apart add up to a constant (sin^2 + cos^2)
    size = 32
    row = np.zeros(4 * size)
    for start in range(0, 3 * size + 1, size // 2):
        row[start : start + size] += np.sqrt(np.diag(bump(size)))  # the 1-D profile
    assert np.allclose(row[size : 3 * size], 1.0, atol=1e-6)


@pytest.mark.parametrize(("size", "step"), [(64, 48), (48, 36), (40, 30), (32, 16)])
def test_grid_bumps_add_up_to_one(size, step) -> None:
    """Boxes ``step`` apart, ramping over their overlap: weights sum to exactly 1."""
    from live_stack.stack import bump as bump_

    profile = np.sqrt(np.diag(bump_(size, size - step)))
    row = np.zeros(6 * size)
    for start in range(0, 5 * size, step):
        row[start : start + size] += profile
    assert np.allclose(row[size : 4 * size], 1.0, atol=1e-6)
    assert profile[0] < (math.pi / (size - step)) ** 2  # still zero at the box edge


@pytest.fixture(scope="module")
def grids(scene_canvas):
    moon = scene_canvas("moon", W, H)
    flat_right = moon.copy()
    flat_right[:, 200:] = 0.6  # some APs dropped: the reference fills there
    return {
        "full32": lay_grid(moon, APParams(size=32)),
        "full48": lay_grid(moon, APParams(size=48)),
        "holes48": lay_grid(flat_right, APParams(size=48)),
    }


@pytest.mark.parametrize("name", ["full32", "full48", "holes48"])
def test_constant_image_blends_to_itself(grids, name) -> None:
    grid = grids[name]
    value = 0.37
    patches = np.full((len(grid), 1, grid.size, grid.size), value, np.float32)
    patches[::5] = np.nan  # APs without frames are skipped
    out = blend(patches, grid, np.full((H, W), value, np.float32))
    assert out.image.shape == (H, W)
    assert np.allclose(out.image, value, atol=1e-5)
    rgb = blend(np.repeat(patches, 3, axis=1), grid, np.full((H, W, 3), value, np.float32))
    assert rgb.image.shape == (H, W, 3) and np.allclose(rgb.image, value, atol=1e-5)


def _normalised_weights(grid) -> list[np.ndarray]:
    """Each AP's share of the blended image, and the reference's, by blending indicators."""
    zero = np.zeros((len(grid), 1, grid.size, grid.size), np.float32)
    maps = []
    for a in range(len(grid)):
        p = zero.copy()
        p[a] = 1.0
        maps.append(blend(p, grid, np.zeros((H, W), np.float32)).image.astype(np.float64))
    maps.append(blend(zero, grid, np.ones((H, W), np.float32)).image.astype(np.float64))
    return maps


def _largest_step(image: np.ndarray) -> float:
    return max(np.abs(np.diff(image, axis=0)).max(), np.abs(np.diff(image, axis=1)).max())


@pytest.mark.parametrize("name", ["full32", "full48", "holes48"])
def test_blend_weights_have_no_step(grids, name) -> None:
    """Every weight is continuous: its change per pixel is bounded by the bump's slope
    (pi / (2 * ramp), the ramp spanning the boxes' overlap) times the largest gain of the
    normalisation (4, where the reference's weight reaches zero); a seam would be a jump
    of the order of the weight itself."""
    grid = grids[name]
    maps = _normalised_weights(grid)
    total = np.sum(maps, axis=0)
    assert np.allclose(total, 1.0, atol=1e-5)  # the weights are a partition of unity
    slope = math.pi / (2 * (grid.size - grid.step))
    bound = 4 * slope
    assert max(_largest_step(m) for m in maps) < bound
    raw = blend(np.zeros((len(grid), 1, grid.size, grid.size), np.float32), grid,
                np.zeros((H, W), np.float32))
    # the summed AP weight itself is as smooth as two bumps (neighbouring boxes may be a
    # pixel nearer than the step, so two ramps may be a pixel apart; the blend divides by
    # the sum, so that does not show)
    assert _largest_step(raw.ap_weight.astype(np.float64)) < 2.2 * slope
    # the frame's edges, where no crop is said: the boxes fade out, the reference fills
    assert raw.reference_weight.max() == pytest.approx(1.0, abs=1e-3)
    assert raw.reference_weight[raw.ap_weight >= BlendParams().full_coverage].max() == 0.0


@pytest.mark.parametrize("name", ["full32", "full48", "holes48"])
def test_boxes_at_the_edge_of_the_crop_do_not_fade_out(grids, name) -> None:
    """The grid's rim boxes reach the edge of the area; blended for an output cropped to
    it, they do not fade out towards it: inside the crop the reference gets no weight
    but where APs were dropped, and every weight is still continuous there."""
    grid = grids[name]
    crop = (0, 0, H, W)  # lay_grid's area: the whole image
    zero = np.zeros((len(grid), 1, grid.size, grid.size), np.float32)
    raw = blend(zero, grid, np.zeros((H, W), np.float32), crop=crop)
    sides = open_sides(grid, crop)
    assert sides.any(axis=0).sum() == (4 if name.startswith("full") else 3)  # on the edges
    half = grid.size // 2
    covered = np.zeros((H, W), bool)
    for cy, cx in grid.centres:
        covered[cy - half : cy + half, cx - half : cx + half] = True
    if name.startswith("full"):
        assert covered.all() and raw.reference_weight.max() == 0.0
        assert raw.ap_weight.min() >= 0.99
    else:  # the flat right half has no APs: there the reference takes over, smoothly
        assert raw.reference_weight[:, -1].min() == pytest.approx(1.0)
        assert raw.reference_weight[~covered].min() == pytest.approx(1.0)
    slope = math.pi / (2 * (grid.size - grid.step))
    for a in (0, len(grid) // 2, len(grid) - 1):
        p = zero.copy()
        p[a] = 1.0
        share = blend(p, grid, np.zeros((H, W), np.float32), crop=crop).image
        assert _largest_step(share.astype(np.float64)) < 4 * slope
    # a crop inside the area: only boxes that reach past it are open towards it
    inner = (40, 40, H - 40, W - 40)
    cy, cx = grid.centres[:, 0], grid.centres[:, 1]
    within = ((cy - half > 40) & (cy + half < H - 40) & (cx - half > 40) & (cx + half < W - 40))
    assert within.any() and not open_sides(grid, inner)[within].any()
    assert open_sides(grid, inner)[~within].any(axis=1).all()


def test_blend_puts_each_patch_at_its_ap(grids) -> None:
    grid = grids["full48"]
    a = len(grid) // 2
    patches = np.zeros((len(grid), 1, grid.size, grid.size), np.float32)
    patches[a, 0, grid.size // 2, grid.size // 2] = 1.0  # a dot at the AP's centre
    out = blend(patches, grid, np.zeros((H, W), np.float32)).image
    assert np.unravel_index(np.argmax(out), out.shape) == tuple(grid.centres[a])


def test_blend_rejects_mismatched_patches(grids) -> None:
    grid = grids["full32"]
    with pytest.raises(ValueError, match="patches"):
        blend(np.zeros((len(grid), 1, 16, 16), np.float32), grid, np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="patches"):
        blend(np.zeros((len(grid), 1, 32, 32), np.float32), grid,
              np.zeros((H, W, 3), np.float32))


@pytest.mark.parametrize("value", [0.0, -1.0, 5.0])
def test_blend_params_validation_names_the_field(value) -> None:
    with pytest.raises(ValueError, match="blend_full_coverage"):
        BlendParams(full_coverage=value)
