"""score(): registration, PSNR and SSIM; gradient_energy()."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from live_stack.simulate.scenes import render_scene
from live_stack.simulate.score import (
    Score,
    gradient_energy,
    noise_evenness,
    psnr,
    register,
    score,
    ssim,
    truth_on,
)

W, H = 200, 150


@pytest.fixture(scope="module")
def moon() -> np.ndarray:
    return render_scene("moon", width=W, height=H, seed=11)


def _shifted_crop(img: np.ndarray, sy: float, sx: float, top: int, left: int, h: int, w: int):
    """crop[y, x] = img(y + top + sy, x + left + sx), by cubic-spline interpolation."""
    if img.ndim == 3:
        moved = np.stack(
            [ndimage.shift(img[..., c], (-sy, -sx), order=3, mode="reflect") for c in range(3)],
            axis=2,
        )
    else:
        moved = ndimage.shift(img, (-sy, -sx), order=3, mode="reflect")
    return moved[top : top + h, left : left + w].astype(np.float32)


def _to_dtype(img: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.float32:
        return img.astype(np.float32)
    full = np.iinfo(dtype).max
    return np.rint(np.clip(img, 0, 1) * full).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_identical_images(moon: np.ndarray, dtype) -> None:
    img = _to_dtype(moon, dtype)
    s = score(img, img)
    assert isinstance(s, Score)
    assert s.psnr == math.inf
    assert s.ssim == pytest.approx(1.0, abs=1e-9)
    assert (s.shift_y, s.shift_x) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert (s.height, s.width) == (H - 32, W - 32)


@pytest.mark.parametrize("scene", ["moon", "sun", "planet"])
@pytest.mark.parametrize(("sy", "sx"), [(0.0, 0.0), (3.3, -7.6), (-12.45, 20.2), (0.5, 0.5)])
def test_shifted_crop_is_registered(scene: str, sy: float, sx: float) -> None:
    img = render_scene(scene, width=W, height=H, seed=2)
    crop = _shifted_crop(img, sy, sx, 20, 25, 110, 150)
    s = score(crop, img)
    assert s.shift_y == pytest.approx(20 + sy, abs=0.1)
    assert s.shift_x == pytest.approx(25 + sx, abs=0.1)
    assert s.psnr > 35 and s.ssim > 0.97


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes_and_colour(dtype) -> None:
    img = render_scene("planet", width=W, height=H, seed=4, colour=True)
    crop = _shifted_crop(img, 2.25, -3.5, 15, 10, 120, 170)
    s = score(_to_dtype(crop, dtype), _to_dtype(img, dtype))
    assert (s.shift_y, s.shift_x) == pytest.approx((17.25, 6.5), abs=0.1)
    assert s.ssim > 0.95


def test_noise_and_blur_lower_the_scores(moon: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    crop = moon[10:140, 12:190]
    scores = [
        score(np.clip(crop + rng.normal(0, sd, crop.shape), 0, 1).astype(np.float32), moon)
        for sd in (0.005, 0.02, 0.05)
    ]
    assert scores[0].psnr > scores[1].psnr > scores[2].psnr
    assert scores[0].ssim > scores[1].ssim > scores[2].ssim
    assert scores[1].psnr == pytest.approx(-20 * math.log10(0.02), abs=0.5)
    blurred = [score(cv2.GaussianBlur(crop, (0, 0), sd), moon) for sd in (0.7, 1.5, 3.0)]
    assert blurred[0].ssim > blurred[1].ssim > blurred[2].ssim
    assert blurred[0].psnr > blurred[1].psnr > blurred[2].psnr
    for s in scores + blurred:
        assert (s.shift_y, s.shift_x) == pytest.approx((10, 12), abs=0.1)


def test_gain_fit(moon: np.ndarray) -> None:
    crop = moon[10:140, 12:190]
    stretched = (0.8 * crop + 0.05).astype(np.float32)
    plain = score(stretched, moon)
    fitted = score(stretched, moon, fit_gain=True)
    assert (fitted.gain, fitted.offset) == pytest.approx((0.8, 0.05), abs=1e-4)
    assert fitted.psnr > 60 > plain.psnr
    assert (plain.gain, plain.offset) == (1.0, 0.0)


def test_psnr_and_ssim_functions(moon: np.ndarray) -> None:
    other = np.clip(moon + 0.01, 0, 1)
    assert psnr(moon, moon) == math.inf
    assert psnr(moon, moon + 0.1) == pytest.approx(20.0, abs=1e-3)
    assert ssim(moon, moon) == pytest.approx(1.0)
    assert ssim(moon, other) == pytest.approx(ssim(other, moon))
    assert ssim(moon, np.zeros_like(moon)) < 0.1
    with pytest.raises(ValueError, match="same shape"):
        psnr(moon, moon[1:])
    with pytest.raises(ValueError, match="same shape"):
        ssim(moon, moon[1:])
    with pytest.raises(ValueError, match="border"):
        ssim(moon, moon, border=H)


def test_register_directly(moon: np.ndarray) -> None:
    crop = _shifted_crop(moon, -0.3, 0.7, 30, 40, 100, 120)
    assert register(crop, moon) == pytest.approx((29.7, 40.7), abs=0.1)


def test_gradient_energy() -> None:
    img = render_scene("sun", width=W, height=H, seed=1)
    sharp = gradient_energy(img)
    assert (
        sharp
        > gradient_energy(cv2.GaussianBlur(img, (0, 0), 1.0))
        > gradient_energy(cv2.GaussianBlur(img, (0, 0), 2.5))
    )
    assert gradient_energy(np.full((64, 64), 0.5, np.float32)) == 0.0
    as_u8 = gradient_energy(np.rint(img * 255).astype(np.uint8))
    assert as_u8 == pytest.approx(sharp, rel=0.02)
    rgb = render_scene("sun", width=W, height=H, seed=1, colour=True)
    assert gradient_energy(rgb) > 0
    with pytest.raises(ValueError, match="sigma"):
        gradient_energy(img, sigma=0)
    with pytest.raises(ValueError, match="image"):
        gradient_energy(np.zeros((4, 4), np.float32))


def test_bad_inputs(moon: np.ndarray) -> None:
    with pytest.raises(ValueError, match="larger than truth"):
        score(np.pad(moon, 4), moon)
    with pytest.raises(ValueError, match="mono or both colour"):
        score(moon, np.dstack([moon] * 3))
    with pytest.raises(ValueError, match="border"):
        score(moon, moon, border=-1)
    with pytest.raises(ValueError, match="too small to compare"):
        score(moon, moon, border=80)
    with pytest.raises(ValueError, match="structure"):
        score(np.full((100, 100), 0.3, np.float32), moon)
    with pytest.raises(ValueError, match="non-finite"):
        score(np.full((100, 100), np.nan, np.float32), moon)
    with pytest.raises(ValueError, match="dtype"):
        score(moon.astype(np.int32), moon)
    with pytest.raises(ValueError, match="too small"):
        score(moon[:10, :10], moon)


# --- noise_evenness ----------------------------------------------------------------------


def _mare(width: int = 256, height: int = 256) -> np.ndarray:
    return render_scene("mare", width=width, height=height, seed=2, scale=256)


def test_noise_evenness_is_small_for_even_noise_and_large_for_a_grainy_box() -> None:
    """Photon-like noise alike everywhere scores at the measure's floor (about 0.12: the
    scatter of each tile's noise estimate); the same with one AP-sized box of twice the
    noise (a box with a quarter of the frames) scores about twice that; the stack's blur
    does not count as noise."""
    truth = _mare()
    rng = np.random.default_rng(0)
    sigma = 0.01 * np.sqrt(truth / truth.mean())
    even = truth + sigma * rng.standard_normal(truth.shape)
    grainy = even.copy()
    box = (slice(96, 160), slice(96, 160))
    grainy[box] += sigma[box] * np.sqrt(3.0) * rng.standard_normal((64, 64))
    e_even = noise_evenness(even.astype(np.float32), truth)
    e_grainy = noise_evenness(grainy.astype(np.float32), truth)
    assert e_even < 0.16
    assert e_grainy > 1.6 * e_even
    blurred = cv2.GaussianBlur(truth, (0, 0), 2.0) + sigma * rng.standard_normal(truth.shape)
    assert noise_evenness(blurred.astype(np.float32), truth) < 0.16


def test_noise_evenness_registers_a_cropped_shifted_stack() -> None:
    truth = _mare()
    rng = np.random.default_rng(1)
    noisy = truth + 0.01 * rng.standard_normal(truth.shape)
    crop = noisy[7:231, 11:240].astype(np.float32)
    assert noise_evenness(crop, truth) < 0.16


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tile": 4}, "tile"), ({"tile": True}, "tile"), ({"border": -1}, "border"),
    ({"tile": 200}, "fewer than two"),
])
def test_noise_evenness_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    truth = _mare()
    with pytest.raises(ValueError, match=message):
        noise_evenness(truth, truth, **kwargs)


def test_noise_evenness_leaves_the_sky_out() -> None:
    """A planet on black sky, blurred as a stack is, with photon noise: the sky tiles
    are left out and the disk's scores at the floor; with only sky there is nothing to
    measure."""
    truth = render_scene("planet", width=256, height=256, seed=3, scale=256)
    rng = np.random.default_rng(2)
    blurred = cv2.GaussianBlur(truth, (0, 0), 2.0)
    noisy = blurred + 0.01 * np.sqrt(blurred) * rng.standard_normal(truth.shape)
    assert noise_evenness(noisy.astype(np.float32), truth) < 0.16
    dark = np.zeros((256, 256), np.float32)
    dark[100:140, 100:140] = truth[100:140, 100:140]
    with pytest.raises(ValueError, match="object"):
        noise_evenness(dark + 0.001 * rng.standard_normal(dark.shape).astype(np.float32),
                       dark, tile=64)


def test_truth_on_is_the_truth_under_the_stack(moon: np.ndarray) -> None:
    """The truth moved onto a crop of itself: the crop again (to the registration's and
    the interpolation's precision), NaN where the truth does not reach."""
    crop = moon[30:130, 40:160].astype(np.float32)
    assert np.abs(truth_on(crop, moon) - crop).max() < 0.01
    frac = _shifted_crop(moon, -0.3, 0.7, 30, 40, 100, 120)
    got = truth_on(frac, moon)
    inner = got[3:-3, 3:-3]
    diff = inner - frac[3:-3, 3:-3]  # Lanczos against the crop's cubic spline
    assert np.isfinite(inner).all() and np.sqrt(np.mean(diff**2)) < 0.005
    assert np.abs(diff).max() < 0.05
    # a stack hanging past the truth's corner: the part outside is NaN
    past = np.zeros((60, 60), np.float32)
    past[10:, 10:] = moon[:50, :50]
    out = truth_on(past, moon)
    assert np.isnan(out[:9, :]).all() and np.isnan(out[:, :9]).all()
    assert np.abs(out[11:, 11:] - moon[1:50, 1:50]).max() < 0.02
