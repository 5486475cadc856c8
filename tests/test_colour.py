"""Colour: demosaicing, the debayering frame source, and Bayer captures stacked in colour
offline (reprocess) and live (frames debayered before the live stacker)."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.colour import (
    ColourParams,
    DebayeredSource,
    channel_masks,
    debayer,
    debayer_frame,
    debayer_source,
    mosaic,
    source_pattern,
)
from live_stack.io import BAYER_PATTERNS, open_source
from live_stack.io.images import read_image
from live_stack.io.ser import SerWriter
from live_stack.live import LiveParams, LiveStacker
from live_stack.pipeline import PipelineParams, run
from live_stack.reprocess_cli import main
from live_stack.simulate.score import psnr, score

#: A colour no channel shares with another, on the [0, 1] scale.
COLOUR = (0.8, 0.45, 0.12)
#: Demosaicing reproduces a smooth image to within this PSNR (dB), away from the border.
SMOOTH_PSNR = 40.0
#: A Bayer capture's stack is at most this much (dB) below the stack of the same capture
#: recorded in full RGB (the mosaic keeps a third of the samples).
BAYER_LOSS_DB = 1.5
#: ... and reproduces the colour balance (R/G and B/G of the RGB stack) to this share.
BALANCE_TOLERANCE = 0.02
BORDER = 4
DTYPES = ("uint8", "uint16", "float32")


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [0.5 + 0.3 * np.sin(x / 9.0 + c) * np.cos(y / 11.0 - c) for c in range(3)]
    return np.stack(planes, axis=-1)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize(("method", "dtype"), [
    (m, d) for m in ("bilinear", "vng", "ea") for d in DTYPES
    if m != "vng" or d == "uint8"])  # VNG is 8-bit only (an error, tested below)
def test_debayer_recovers_a_flat_colour(as_dtype, pattern, method, dtype) -> None:
    rgb = np.broadcast_to(np.array(COLOUR), (32, 40, 3))
    raw = mosaic(as_dtype(rgb, dtype), pattern)
    assert raw.shape == (32, 40) and raw.dtype == np.dtype(dtype)
    out = debayer(raw, pattern, method)
    assert out.shape == (32, 40, 3)
    assert out.dtype == (np.float32 if dtype == "float32" else np.dtype(dtype))
    inner = out[BORDER:-BORDER, BORDER:-BORDER].astype(np.float64)
    scale = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[dtype]
    np.testing.assert_allclose(inner / scale, np.broadcast_to(COLOUR, inner.shape), atol=2e-3)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("method", ["bilinear", "vng", "ea"])
def test_debayer_of_a_smooth_image(as_dtype, pattern, method) -> None:
    rgb = _smooth_rgb()
    out = debayer(mosaic(as_dtype(rgb, "uint8"), pattern), pattern, method) / 255.0
    b = BORDER
    assert psnr(out[b:-b, b:-b], rgb[b:-b, b:-b]) > SMOOTH_PSNR


def test_mosaic_keeps_each_colour_where_the_pattern_says() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    assert mosaic(rgb, "RGGB")[:2, :2].tolist() == [[10, 20], [20, 30]]
    assert mosaic(rgb, "BGGR")[:2, :2].tolist() == [[30, 20], [20, 10]]
    assert mosaic(rgb, "GRBG")[:2, :2].tolist() == [[20, 10], [30, 20]]
    masks = channel_masks("GBRG", (4, 6))
    assert (masks.sum(axis=0) == 1).all()
    assert masks[1].sum() == 2 * masks[0].sum() == 2 * masks[2].sum() == 12


@pytest.mark.parametrize(("call", "match"), [
    (lambda: debayer(np.zeros((16, 16, 3), np.uint8), "RGGB"), "2-D raw mosaic"),
    (lambda: debayer(np.zeros((16, 16), np.uint8), "RGBG"), "pattern"),
    (lambda: debayer(np.zeros((16, 16), np.uint8), "RGGB", "cubic"), "method"),
    (lambda: debayer(np.zeros((16, 16), np.uint16), "RGGB", "vng"), "uint8"),
    (lambda: debayer(np.zeros((16, 16), np.int32), "RGGB"), "dtype"),
    (lambda: mosaic(np.zeros((16, 16)), "RGGB"), "rgb must be"),
    (lambda: ColourParams(debayer="nearest"), "colour_debayer"),
    (lambda: ColourParams(bayer="rggb"), "colour_bayer"),
])
def test_bad_arguments_are_named(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_debayer_frame_follows_the_layout() -> None:
    raw = mosaic((_smooth_rgb() * 255).astype(np.uint8), "GRBG")
    np.testing.assert_array_equal(debayer_frame(raw, "GRBG"), debayer(raw, "GRBG"))
    assert debayer_frame(raw, "mono") is raw
    assert debayer_frame(raw, "GRBG", ColourParams(bayer="none")) is raw
    forced = debayer_frame(raw, "mono", ColourParams(bayer="GRBG", debayer="vng"))
    np.testing.assert_array_equal(forced, debayer(raw, "GRBG", "vng"))
    rgb = debayer(raw, "GRBG")
    assert debayer_frame(rgb, "rgb") is rgb
    with pytest.raises(ValueError, match="RGB already"):
        debayer_frame(rgb, "rgb", ColourParams(bayer="RGGB"))


@pytest.fixture(scope="module")
def colour_capture(sim_capture):
    """A simulated colour capture (RGB frames and truth)."""
    return sim_capture("moon", frames=60, colour=True)


@pytest.fixture(scope="module")
def bayer_ser(colour_capture, tmp_path_factory):
    """The colour capture re-recorded as a raw RGGB Bayer SER, with timestamps."""
    path = tmp_path_factory.mktemp("bayer") / "bayer.ser"
    h, w = colour_capture.truth.shape[:2]
    with SerWriter(path, width=w, height=h, layout="RGGB") as writer:
        for frame, t in zip(colour_capture.frames, colour_capture.info.timestamps, strict=True):
            writer.write(mosaic(frame, "RGGB"), float(t))
    return path


def test_debayered_source(bayer_ser, colour_capture) -> None:
    with open_source(bayer_ser) as raw:
        assert raw.info.layout == "RGGB" and raw[0].ndim == 2
        src = debayer_source(raw, ColourParams(debayer="ea"))
        assert isinstance(src, DebayeredSource) and src.raw is raw
        assert src.info.layout == "rgb" and src.info.shape == raw.info.shape + (3,)
        assert len(src) == len(raw) == len(colour_capture.frames)
        np.testing.assert_array_equal(src[5], debayer(raw[5], "RGGB", "ea"))
        np.testing.assert_array_equal(src.timestamps(), raw.timestamps())
        assert src.info.metadata["debayer"] == {"pattern": "RGGB", "method": "ea"}
        # "none" keeps the raw mosaic; a forced pattern overrides the file's
        assert debayer_source(raw, ColourParams(bayer="none")) is raw
        assert source_pattern(raw.info, ColourParams(bayer="GRBG")) == "GRBG"
        src.close()
        with pytest.raises(ValueError, match="closed"):
            raw[0]


def test_rgb_and_mono_sources_are_left_alone(colour_capture, sim_capture) -> None:
    with open_source(colour_capture.info.video) as src:
        assert debayer_source(src) is src
        with pytest.raises(ValueError, match="RGB already"):
            debayer_source(src, ColourParams(bayer="RGGB"))
        with pytest.raises(ValueError, match="RGB already"):
            DebayeredSource(src, "RGGB")
    with open_source(sim_capture("moon").info.video) as mono:
        assert debayer_source(mono) is mono
        # a raw mosaic recorded as mono (e.g. in an AVI) can be debayered by force
        forced = debayer_source(mono, ColourParams(bayer="BGGR"))
        assert forced.info.layout == "rgb" and forced[0].shape == mono[0].shape + (3,)


def _balance(image: np.ndarray) -> np.ndarray:
    means = image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    return means[[0, 2]] / means[1]


def test_bayer_capture_stacks_to_colour(bayer_ser, colour_capture, tmp_path, capsys) -> None:
    out = tmp_path / "bayer.tif"
    assert main([str(bayer_ser), "-o", str(out), "-q"]) == 0
    image, meta = read_image(out)
    assert image.shape[2] == 3
    assert meta["input_layout"] == "RGGB" and meta["colour"]["debayered"] is True
    result = run(colour_capture.frames, PipelineParams())
    rgb = result.stacks[0].image
    truth = colour_capture.truth
    s_bayer, s_rgb = score(image, truth), score(rgb, truth)
    assert s_bayer.psnr > s_rgb.psnr - BAYER_LOSS_DB
    best = colour_capture.frames[int(result.ranking.order[0])]
    assert s_bayer.psnr > score(debayer(mosaic(best, "RGGB"), "RGGB"), truth).psnr
    np.testing.assert_allclose(_balance(image), _balance(rgb), rtol=BALANCE_TOLERANCE)
    # keeping the mosaic stacks a mono image
    mono_out = tmp_path / "raw.tif"
    assert main([str(bayer_ser), "-o", str(mono_out), "--colour-bayer", "none", "-q"]) == 0
    assert read_image(mono_out)[0].ndim == 2


def test_vng_on_a_16_bit_bayer_capture_is_a_clear_error(tmp_path, capsys) -> None:
    path = tmp_path / "raw16.ser"
    with SerWriter(path, width=32, height=24, layout="GBRG", bit_depth=12) as writer:
        for _ in range(3):
            writer.write(np.full((24, 32), 1000, np.uint16))
    assert main([str(path), "--colour-debayer", "vng", "-q"]) == 1
    err = capsys.readouterr().err
    assert "raw16.ser" in err and "vng" in err and len(err.strip().splitlines()) == 1


def test_live_stacker_stacks_colour(colour_capture) -> None:
    """RGB frames stack in colour live; so do raw frames debayered before add()."""
    params = LiveParams(buffer_size=40, warmup=20, stack_size="50%")
    truth = colour_capture.truth
    ranking = run(colour_capture.frames, PipelineParams()).ranking
    best = score(colour_capture.frames[int(ranking.order[0])], truth).psnr
    psnrs = []
    for raw in (False, True):
        st = LiveStacker(params)
        for frame in colour_capture.frames:
            st.add(debayer_frame(mosaic(frame, "RGGB"), "RGGB") if raw else frame)
        snap = st.snapshot()
        assert snap is not None and snap.image.ndim == 3 and snap.image.shape[2] == 3
        assert snap.image.dtype == np.float32
        psnrs.append(score(snap.image, truth).psnr)
        assert psnrs[-1] > best + 1.0
    assert psnrs[1] > psnrs[0] - BAYER_LOSS_DB
