"""Normalising the stack: a fixed maximum brightness (the same for a bright and a faint
capture of the same object) and twilight background compensation."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.io.images import read_image
from live_stack.io.ser import SerWriter
from live_stack.live import LiveParams, LiveStacker
from live_stack.normalize import NormalizeParams, fit_background, normalize
from live_stack.reprocess_cli import main

#: A sky plane per channel (a + b*y + c*x): bluish, brighter towards the bottom right.
SKY = np.array([[0.05, 2e-4, 1e-4], [0.08, 3e-4, 1e-4], [0.15, 4e-4, 2e-4]])
H, W = 120, 160
#: 16-bit output quantisation and percentile interpolation leave this much.
LEVEL_TOLERANCE = 2e-3


def _planet(colour: bool = True) -> np.ndarray:
    """A bright limb-darkened disk on black sky."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r = np.hypot(y - H / 2, x - W / 2) / 35.0
    disk = np.where(r < 1, 0.7 * np.sqrt(np.clip(1 - r * r, 0, 1)) + 0.1, 0.0)
    if not colour:
        return disk.astype(np.float32)
    return np.stack([disk, 0.9 * disk, 0.6 * disk], -1).astype(np.float32)


def _sky() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([a + b * y + c * x for a, b, c in SKY], -1).astype(np.float32)


def test_off_by_default() -> None:
    image = _planet()
    out, notes = normalize(image)
    assert out is image and notes == {}
    assert not NormalizeParams().active


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("maximum", [0.5, 0.9])
def test_fixed_maximum_brightness(colour, maximum) -> None:
    image = 0.3 * _planet(colour)
    params = NormalizeParams(enabled=True, maximum=maximum, percentile=99.0)
    out, notes = normalize(image, params)
    lum = out if out.ndim == 2 else out @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.percentile(lum, 99.0) == pytest.approx(maximum, rel=1e-4)
    np.testing.assert_allclose(out, image * notes["gain"], rtol=1e-5)  # one gain for all
    assert image.max() < 0.3  # the input is left as it was


def test_background_compensation() -> None:
    planet = _planet()
    out, notes = normalize(planet + _sky(), NormalizeParams(background=True))
    np.testing.assert_allclose(notes["background"], SKY, rtol=0.02, atol=1e-5)
    np.testing.assert_allclose(out, planet, atol=LEVEL_TOLERANCE)
    # the fit uses the darkest share only: the disk does not pull the sky up
    coeffs = fit_background(planet + _sky(), 0.25)
    np.testing.assert_allclose(coeffs[:, 0], SKY[:, 0], atol=1e-3)


def test_background_then_maximum_on_mono() -> None:
    planet = _planet(colour=False)
    sky = _sky()[..., 0]
    out, notes = normalize(0.5 * planet + sky, NormalizeParams(enabled=True, background=True,
                                                                maximum=0.8, percentile=100.0))
    assert set(notes) == {"background", "gain"}
    assert out.max() == pytest.approx(0.8, rel=1e-3)
    np.testing.assert_allclose(out, planet * 0.8 / planet.max(), atol=LEVEL_TOLERANCE)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"maximum": 0.0}, "normalize_maximum"),
    ({"maximum": 1.5}, "normalize_maximum"),
    ({"percentile": 10.0}, "normalize_percentile"),
    ({"background_share": 0.95}, "normalize_background_share"),
])
def test_params_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        NormalizeParams(**kwargs)


def test_bad_image() -> None:
    with pytest.raises(ValueError, match="image must be"):
        normalize(np.zeros(16, np.float32), NormalizeParams(enabled=True))


def test_bright_and_faint_captures_come_out_equally_bright(sim_capture, tmp_path,
                                                          capsys) -> None:
    frames = sim_capture("moon").frames[:60]
    h, w = frames[0].shape
    outs = []
    for name, gain in (("bright", 1.0), ("faint", 0.4)):
        path = tmp_path / f"{name}.ser"
        with SerWriter(path, width=w, height=h) as writer:
            for f in frames:
                writer.write(np.rint(f * gain).astype(np.uint8))
        out = tmp_path / f"{name}.tif"
        assert main([str(path), "-o", str(out), "--normalize-enabled", "--normalize-maximum",
                     "0.8", "-q"]) == 0
        image, meta = read_image(out)
        assert meta["finish"]["normalize"]["gain"] > 0
        outs.append(image)
    for image in outs:
        assert np.percentile(image, 99.9) == pytest.approx(0.8, abs=LEVEL_TOLERANCE)
    # without normalisation the faint one is much fainter
    plain = tmp_path / "plain.tif"
    assert main([str(tmp_path / "faint.ser"), "-o", str(plain), "-q"]) == 0
    assert np.percentile(read_image(plain)[0], 99.9) < 0.5


def test_live_normalisation(sim_capture) -> None:
    st = LiveStacker(LiveParams(buffer_size=40, warmup=20))
    st.set_param("normalize_enabled", True)
    st.set_param("normalize_maximum", 0.6)
    for f in sim_capture("moon").frames[:50]:
        st.add(f)
    snap = st.snapshot()
    assert np.percentile(snap.image, 99.9) == pytest.approx(0.6, abs=1e-3)
    assert snap.stats["finish"]["normalize"]["gain"] > 0
    with pytest.raises(ValueError, match="normalize_maximum"):
        st.set_param("normalize_maximum", 2.0)
