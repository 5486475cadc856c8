"""Atmospheric dispersion correction (``--rgb-align``): known red and blue offsets are
measured and removed to 0.1 px, on images and on stacks (offline and live)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from live_stack.apgrid import APParams
from live_stack.dispersion import (
    ChannelOffsets,
    RGBAlignParams,
    measure_offsets,
    remove_offsets,
    rgb_align,
)
from live_stack.io.images import read_image
from live_stack.io.ser import SerWriter
from live_stack.live import LiveParams, LiveStacker
from live_stack.reprocess_cli import main
from live_stack.simulate import (
    canvas_margin,
    global_offsets,
    iter_frames,
    render_scene,
    seeing_params,
    truth_view,
)
from live_stack.simulate.score import psnr

#: The offsets put in: red up and left, blue down and right (as dispersion does, roughly).
RED = (0.7, -1.3)
BLUE = (-0.45, 0.9)
#: Required precision of the measured offsets, pixels.
TOLERANCE = 0.1
NOISE = 0.01
SIZE = (168, 200)
FRAMES = 60
#: AP size for the small planet capture (a dozen APs on the disk).
AP_SIZE = 32


def _fourier_shift(channel: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``out(y, x) = channel(y - dy, x - dx)`` (circular, exact)."""
    h, w = channel.shape
    fy, fx = sfft.fftfreq(h)[:, None], sfft.rfftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return sfft.irfft2(sfft.rfft2(channel.astype(np.float64)) * ramp, s=(h, w))


def _disperse(canvas: np.ndarray) -> np.ndarray:
    out = canvas.astype(np.float64).copy()
    out[..., 0] = _fourier_shift(canvas[..., 0], *RED)
    out[..., 2] = _fourier_shift(canvas[..., 2], *BLUE)
    return out


def _assert_offsets(offsets: ChannelOffsets | dict, red=RED, blue=BLUE) -> None:
    if isinstance(offsets, dict):
        got_red, got_blue = offsets["red"], offsets["blue"]
    else:
        got_red, got_blue = offsets.red, offsets.blue
    np.testing.assert_allclose(got_red, red, atol=TOLERANCE)
    np.testing.assert_allclose(got_blue, blue, atol=TOLERANCE)


@pytest.mark.parametrize("scene", ["planet", "moon", "sun"])
def test_known_offsets_are_measured_and_removed(scene) -> None:
    h, w = SIZE
    canvas = render_scene(scene, width=w + 32, height=h + 32, seed=1, colour=True, scale=160)
    clean = canvas[16:-16, 16:-16]
    rng = np.random.default_rng(0)
    image = (_disperse(canvas)[16:-16, 16:-16] + rng.normal(0, NOISE, clean.shape)).astype(
        np.float32)
    offsets = measure_offsets(image)
    _assert_offsets(offsets)
    assert min(offsets.strength) > 0.5
    fixed = remove_offsets(image, offsets)
    np.testing.assert_array_equal(fixed[..., 1], image[..., 1])  # green is the reference
    _assert_offsets(measure_offsets(fixed), red=(0, 0), blue=(0, 0))
    inner = (slice(8, -8), slice(8, -8))
    for c in (0, 2):
        assert psnr(fixed[inner][..., c], clean[inner][..., c]) > psnr(
            image[inner][..., c], clean[inner][..., c]) + 6.0


def test_off_by_default_and_mono_untouched() -> None:
    image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    assert rgb_align(image)[0] is image and rgb_align(image)[1] is None
    mono = image[..., 0]
    assert rgb_align(mono, RGBAlignParams(enabled=True)) == (mono, None)


def test_a_weak_measurement_leaves_the_channel() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((64, 64, 3)).astype(np.float32)  # unrelated channels
    offsets = ChannelOffsets(red=(1.0, 1.0), blue=(0.5, 0.0), strength=(0.01, 0.9))
    out = remove_offsets(image, offsets)
    np.testing.assert_array_equal(out[..., 0], image[..., 0])
    assert not np.array_equal(out[..., 2], image[..., 2])


@pytest.mark.parametrize(("call", "match"), [
    (lambda: measure_offsets(np.zeros((32, 32), np.float32)), "colour image"),
    (lambda: measure_offsets(np.zeros((8, 32, 3), np.float32)), "too small"),
    (lambda: RGBAlignParams(max_shift=0.1), "rgbalign_max_shift"),
])
def test_bad_arguments(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture(scope="module")
def dispersed_capture(tmp_path_factory):
    """A simulated colour planet capture whose red and blue images are displaced."""
    h, w = SIZE
    params = seeing_params("good")
    offsets = global_offsets(frames=FRAMES, params=params, seed=4)
    margin = canvas_margin(offsets, params)
    canvas = render_scene("planet", width=w + 2 * margin, height=h + 2 * margin, seed=4,
                          colour=True, scale=h)
    dispersed = np.clip(_disperse(canvas), 0, 1).astype(np.float32)
    frames = list(iter_frames(dispersed, frames=FRAMES, params=params, seed=4, frame_shape=(h, w)))
    path = tmp_path_factory.mktemp("disp") / "planet.ser"
    with SerWriter(path, width=w, height=h, layout="rgb") as writer:
        for f in frames:
            writer.write(f)
    return path, frames, truth_view(canvas, (h, w))


def test_reprocess_rgb_align(dispersed_capture, tmp_path, capsys) -> None:
    path, _, _ = dispersed_capture
    plain, fixed = tmp_path / "plain.tif", tmp_path / "fixed.tif"
    assert main([str(path), "-o", str(plain), "--ap-size", str(AP_SIZE), "-q"]) == 0
    assert main([str(path), "-o", str(fixed), "--ap-size", str(AP_SIZE), "--rgb-align",
                 "-q"]) == 0
    plain_img, plain_meta = read_image(plain)
    fixed_img, meta = read_image(fixed)
    assert plain_meta["finish"] == {} and meta["parameters"]["rgbalign"]["enabled"] is True
    _assert_offsets(meta["finish"]["rgb_offsets"])
    _assert_offsets(measure_offsets(plain_img))
    _assert_offsets(measure_offsets(fixed_img), red=(0, 0), blue=(0, 0))


def test_live_rgb_align(dispersed_capture) -> None:
    _, frames, _ = dispersed_capture
    st = LiveStacker(LiveParams(buffer_size=40, warmup=20, ap=APParams(size=AP_SIZE)))
    st.set_param("rgbalign_enabled", "true")
    for f in frames:
        st.add(f)
    snap = st.snapshot()
    assert snap is not None
    _assert_offsets(snap.stats["finish"]["rgb_offsets"])
    _assert_offsets(measure_offsets(snap.image), red=(0, 0), blue=(0, 0))
    st.set_param("rgbalign_enabled", False)
    assert "finish" not in st.snapshot().stats
