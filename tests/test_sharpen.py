"""Sharpening: off by default; the unsharp-mask and wavelet methods raise the gradient
energy, bring a blurred image closer to its truth, and keep noise down when asked."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from live_stack.io.images import read_image
from live_stack.live import LiveParams, LiveStacker
from live_stack.pipeline import PipelineParams
from live_stack.reprocess_cli import main
from live_stack.sharpen import SharpenParams, detail_levels, sharpen
from live_stack.simulate.score import gradient_energy, psnr

BLUR = 1.5  # Gaussian sigma of the blurred test image, pixels
METHODS = ("unsharp", "wavelet")


@pytest.fixture(scope="module")
def sharp_and_blurred(scene_canvas):
    truth = np.asarray(scene_canvas("moon", 160, 120), dtype=np.float32)
    return truth, cv2.GaussianBlur(truth, (0, 0), BLUR)


def test_off_by_default(sharp_and_blurred) -> None:
    _, blurred = sharp_and_blurred
    assert SharpenParams().method == "none" and PipelineParams().sharpen.method == "none"
    assert LiveParams().sharpen.method == "none"
    assert sharpen(blurred) is blurred


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("colour", [False, True])
def test_sharpening_raises_gradient_energy(sharp_and_blurred, method, colour) -> None:
    _, blurred = sharp_and_blurred
    image = np.stack([blurred, 0.8 * blurred, 0.5 * blurred], -1) if colour else blurred
    out = sharpen(image, SharpenParams(method=method, amount=1.5))
    assert out.shape == image.shape and out.dtype == np.float32
    assert gradient_energy(np.clip(out, 0, 1)) > 1.5 * gradient_energy(image)
    stronger = sharpen(image, SharpenParams(method=method, amount=3.0))
    assert gradient_energy(np.clip(stronger, 0, 1)) > gradient_energy(np.clip(out, 0, 1))


@pytest.mark.parametrize("method", METHODS)
def test_sharpening_restores_detail(sharp_and_blurred, method) -> None:
    truth, blurred = sharp_and_blurred
    out = sharpen(blurred, SharpenParams(method=method, amount=1.0, levels=2))
    inner = (slice(8, -8), slice(8, -8))
    assert psnr(out[inner], truth[inner]) > psnr(blurred[inner], truth[inner]) + 1.0


@pytest.mark.parametrize("method", METHODS)
def test_zero_amount_is_the_identity(sharp_and_blurred, method) -> None:
    _, blurred = sharp_and_blurred
    np.testing.assert_allclose(sharpen(blurred, SharpenParams(method=method, amount=0.0)),
                               blurred, atol=1e-7)


def _roughness(image: np.ndarray) -> float:
    """Mean squared pixel-to-pixel difference per unit of variance (high for fine detail)."""
    d = np.diff(image, axis=0) ** 2
    return float((d.mean() + (np.diff(image, axis=1) ** 2).mean()) / image.var())


@pytest.mark.parametrize("method", METHODS)
def test_levels_go_from_fine_to_coarse(sharp_and_blurred, method) -> None:
    truth, _ = sharp_and_blurred
    levels = detail_levels(truth, SharpenParams(method=method, levels=4))
    assert len(levels) == 4
    rough = [_roughness(lv) for lv in levels]
    assert rough == sorted(rough, reverse=True)
    if method == "wavelet":  # the levels and a smooth residual add up to the image
        residual = truth - sum(levels)
        assert _roughness(residual) < rough[-1]


def test_denoise_keeps_noise_down() -> None:
    rng = np.random.default_rng(0)
    noisy = (0.5 + rng.normal(0, 0.02, (96, 96))).astype(np.float32)
    plain = sharpen(noisy, SharpenParams(method="wavelet", amount=2.0))
    quiet = sharpen(noisy, SharpenParams(method="wavelet", amount=2.0, denoise=3.0))
    assert quiet.std() < 0.6 * plain.std()
    assert quiet.std() < 1.2 * noisy.std()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "deconvolve"}, "sharpen_method"),
    ({"amount": -1.0}, "sharpen_amount"),
    ({"levels": 0}, "sharpen_levels"),
    ({"radius": 0.0}, "sharpen_radius"),
    ({"falloff": 3.0}, "sharpen_falloff"),
    ({"denoise": -0.5}, "sharpen_denoise"),
])
def test_params_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SharpenParams(**kwargs)


def test_bad_image() -> None:
    with pytest.raises(ValueError, match="image must be"):
        sharpen(np.zeros((4, 4, 4, 4), np.float32), SharpenParams(method="unsharp"))


def test_reprocess_and_live_sharpening(sim_capture, tmp_path, capsys) -> None:
    cap = sim_capture("moon")
    plain, sharp = tmp_path / "plain.tif", tmp_path / "sharp.tif"
    assert main([cap.info.video, "-o", str(plain), "-q"]) == 0
    assert main([cap.info.video, "-o", str(sharp), "--sharpen-method", "wavelet", "-q"]) == 0
    plain_img, _ = read_image(plain)
    sharp_img, meta = read_image(sharp)
    assert meta["parameters"]["sharpen"]["method"] == "wavelet"
    assert gradient_energy(sharp_img) > 1.3 * gradient_energy(plain_img)
    st = LiveStacker(LiveParams(buffer_size=40, warmup=20))
    for frame in cap.frames[:60]:
        st.add(frame)
    before = st.snapshot().image
    st.set_param("sharpen_method", "unsharp")  # applies to the next snapshot, no restart
    after = st.snapshot().image
    assert st.stats()["admitted"] > 0 and after.shape == before.shape
    assert gradient_energy(after) > 1.3 * gradient_energy(before)
    assert after.min() >= 0.0 and after.max() <= 1.0
